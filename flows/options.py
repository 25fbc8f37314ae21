"""Command-line options derived from the run-parameters model (tasks/runtime/parameters.py).

Every parameter declared in the stage catalogue becomes an option of each command that starts
runs (`run`, `backfill`, `serve`, `deploy`), with its flag, help, default and metavar as declared;
every switchable stage becomes a `--no-<stage>` flag. Values are checked by the model, not by
the command line, so a run started from the Prefect UI is checked the same way.

A command declares only its own options; `with_run_options` adds the run's, and the command
receives them as one `RunValues`: the values (the model's field names), and which of them were
given on the command line (a config file supplies the others).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Optional

import typer

from customer_segments.tasks.runtime import parameters


@dataclass
class RunValues:
    """The run parameters a command received: values by model field name, and those given explicitly."""

    values: dict[str, Any] = field(default_factory=dict)
    given: set[str] = field(default_factory=set)


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


def with_run_options(include: Iterable[str] | None = None, exclude: Iterable[str] = (),
                     aliases: dict[str, tuple[str, ...]] | None = None, switches: bool = True) -> Callable:
    """Decorate a command `f(run: RunValues, **own_options)` with the run's options (or those of
    `include` only). The command's typer signature is the run's options followed by its own.
    """
    exclude = tuple(exclude)

    def decorate(command: Callable) -> Callable:
        own = [p for name, p in inspect.signature(command, eval_str=True).parameters.items() if name != "run"]
        derived = run_parameters(include, exclude, aliases, switches)
        names = {p.name for p in derived}

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            import click

            context = click.get_current_context(silent=True)
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
            return command(run, **kwargs)

        signature = inspect.Signature(derived + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own])
        wrapper.__signature__ = signature
        wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        del wrapper.__wrapped__  # typer must read the signature above, not the command's own
        return wrapper

    return decorate
