"""Command-line options derived from the run-parameters model (tasks/runtime/parameters.py).

Every parameter declared in the stage catalogue becomes an option of each command that starts
runs (`run`, `backfill`, `serve`, `deploy`), with its flag, help, default and metavar as declared;
every switchable stage becomes a `--no-<stage>` flag. Values are checked by the model, not by
the command line, so a run started from the Prefect UI is checked the same way.

A command declares only its own options; `with_run_options` adds the run's and `--config FILE`,
and the command receives them as one `RunValues`: the values (the model's field names), with those
given on the command line overriding those of the config file (a TOML file whose keys are the
model's field names; see `read_config`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from customer_segments.tasks.runtime import parameters


@dataclass
class RunValues:
    """The run parameters a command received: values by model field name, and those given explicitly."""

    values: dict[str, Any] = field(default_factory=dict)
    given: set[str] = field(default_factory=set)
    config: Path | None = None


def read_config(path: Path, allowed: set[str], command: str) -> dict[str, Any]:
    """The run parameters of a TOML config file, by model field name.

    Keys are the model's names (k_max, basket_min_lift, input_path, methods, columns, ...); a
    misspelt or unknown key is an error naming the closest valid one. Paths (input_path,
    artifacts) are relative to the file's folder. Values are checked later, with the command
    line's, by the model.
    """
    import tomllib

    from customer_segments.tasks.errors import UsageError

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(command, f"the config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(command, f"the config file {path} cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(command, f"the config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - allowed)
    if unknown:
        import difflib

        problems = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
            problems.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise UsageError(command, f"the config file {path} has unknown key(s) {', '.join(problems)}; "
                                  f"the keys are {', '.join(sorted(allowed))}")
    declared = parameters.declared()
    out = dict(data)
    for key, value in data.items():
        param = declared.get(key)
        if param is not None and param.path and isinstance(value, str) and "://" not in value \
                and not Path(value).is_absolute():
            out[key] = str((path.parent / value).resolve())
    return out


def _option_type(param) -> Any:
    """The Python type typer converts the option's text to; None allowed when the default is None."""
    base = param.type
    for candidate in (int, float, str, bool):
        if base is candidate or base == (candidate | None):
            return Optional[candidate] if param.optional else candidate
    return Optional[str] if param.optional else str


def _help(param) -> str:
    if param.choices:
        return f"{param.help} One of: {', '.join(map(str, param.choices))}."
    return param.help


def _switch_name(stage_name: str) -> str:
    return f"no_{stage_name}"


def run_parameters(include: Iterable[str] | None = None, exclude: Iterable[str] = (),
                   aliases: dict[str, tuple[str, ...]] | None = None, switches: bool = True) -> list[inspect.Parameter]:
    """The typer parameters of the run's options (model fields, then the stages' switches)."""
    from customer_segments.tasks import catalogue

    aliases = aliases or {}
    include = None if include is None else set(include)
    out = []
    for name, param in parameters.declared().items():
        if name in exclude or (include is not None and name not in include):
            continue
        option = typer.Option(param.flag, *aliases.get(name, ()), help=_help(param), metavar=param.metavar,
                              show_default=param.default is not None)
        out.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=param.default,
                                     annotation=Annotated[_option_type(param), option]))
    if switches:
        for stage in catalogue.STAGES:
            if stage.switchable:
                option = typer.Option(stage.switch_flag, help=stage.switch)
                out.append(inspect.Parameter(_switch_name(stage.name), inspect.Parameter.KEYWORD_ONLY, default=False,
                                             annotation=Annotated[bool, option]))
    return out


CONFIG = inspect.Parameter(
    "config", inspect.Parameter.KEYWORD_ONLY, default=None,
    annotation=Annotated[Optional[Path], typer.Option(
        "--config", metavar="FILE", help="A TOML file of run parameters, by the names the run records in its "
                                         "manifest (input_path, as_of, k_max, basket_min_lift, columns, methods, ...); "
                                         "options given on the command line override it.")])


# Typer hands the command its context through a parameter of this type: it tells which options
# were given on the command line (they override the config file) and which were left at default.
CONTEXT = inspect.Parameter("typer_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)


def with_run_options(include: Iterable[str] | None = None, exclude: Iterable[str] = (),
                     aliases: dict[str, tuple[str, ...]] | None = None, switches: bool = True,
                     config: bool = True) -> Callable:
    """Decorate a command `f(run: RunValues, **own_options)` with the run's options (or those of
    `include` only) and `--config`. The command's typer signature is the run's options followed
    by its own.
    """
    exclude = tuple(exclude)

    def decorate(command: Callable) -> Callable:
        own = [p for name, p in inspect.signature(command, eval_str=True).parameters.items() if name != "run"]
        derived = run_parameters(include, exclude, aliases, switches) + ([CONFIG] if config else [])
        names = {p.name for p in derived} - {CONFIG.name}

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            context = kwargs.pop(CONTEXT.name, None)
            run = RunValues()
            switched_off = []
            for name in names:
                value = kwargs.pop(name)
                source = context.get_parameter_source(name) if context is not None else None
                explicit = source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
                if name.startswith("no_") and name[3:] in parameters.switchable():
                    if value:
                        switched_off.append(name[3:])
                    if explicit:
                        run.given.add(parameters.METHODS)
                    continue
                run.values[name] = value
                if explicit:
                    run.given.add(name)
            if switches:
                run.values[parameters.METHODS] = [m for m in parameters.switchable() if m not in switched_off]
            config_file = kwargs.pop(CONFIG.name, None)
            if config_file is not None:
                from customer_segments.tasks.errors import PipelineError

                allowed = {n for n in names if not n.startswith("no_")} | ({parameters.METHODS} if switches else set())
                try:
                    from_file = read_config(config_file, allowed, context.info_name if context else "run")
                except PipelineError as exc:
                    typer.echo(f"Error: {exc}", err=True)
                    raise typer.Exit(exc.exit_code) from None
                run.values.update({k: v for k, v in from_file.items() if k not in run.given})
                run.config = config_file
            return command(run, **kwargs)

        signature = inspect.Signature(derived + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
                                      + [CONTEXT])
        wrapper.__signature__ = signature
        wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        del wrapper.__wrapped__  # typer must read the signature above, not the command's own
        return wrapper

    return decorate
