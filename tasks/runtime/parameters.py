"""The run's parameters as one typed model, built from the catalogue's `Param` declarations.

`RunParameters` is the only definition of what a run accepts: the flow's parameters, the
command-line options, the config file's keys, the manifest's `parameters`, the stages' cache keys
and the backfill's reuse check are all read from it. A bad value is rejected here, naming the
option and what is allowed (`--min-lift must be at least 0, got -1`).
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from customer_segments.tasks.errors import UsageError
from customer_segments.tasks.runtime.stage import Param

METHODS = "methods"


def _catalogue():
    from customer_segments.tasks import catalogue

    return catalogue


@lru_cache(maxsize=1)
def declared() -> dict[str, Param]:
    """Every run parameter by name, in declaration order (run-level first, then by stage)."""
    found: dict[str, Param] = {}
    for param in _catalogue().PARAMS:
        if param.name in found:
            raise ValueError(f"parameter {param.name} is declared twice")
        found[param.name] = param
    return found


def switchable() -> tuple[str, ...]:
    return _catalogue().SWITCHABLE


def _annotation(param: Param) -> Any:
    if param.choices:
        return Literal[param.choices]  # type: ignore[valid-type]
    return param.type


def _bound(value: float | str | None) -> float | None:
    return value if isinstance(value, (int, float)) else None


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="after")
    def _relative_bounds(self):
        """Bounds that name another parameter (k_max >= k_min)."""
        for param in declared().values():
            value = getattr(self, param.name)
            if value is None:
                continue
            for bound, word, fails in ((param.ge, "at least", lambda v, b: v < b), (param.le, "at most", lambda v, b: v > b)):
                if isinstance(bound, str) and getattr(self, bound) is not None and fails(value, getattr(self, bound)):
                    other = declared()[bound]
                    raise ValueError(f"{param.flag} ({value}) must be {word} {other.flag} ({getattr(self, bound)})")
        return self


@lru_cache(maxsize=1)
def model() -> type[BaseModel]:
    """The RunParameters model class (built once from the catalogue)."""
    fields: dict[str, Any] = {}
    for param in declared().values():
        fields[param.name] = (_annotation(param), Field(default=param.default, description=param.help,
                                                         ge=_bound(param.ge), le=_bound(param.le)))
    names = switchable()
    fields[METHODS] = (list[Literal[names]], Field(default_factory=lambda: list(names),  # type: ignore[valid-type]
                                                  description="The switchable stages that run (the others are off)."))
    parsers = {f"parse_{name}": field_validator(name, mode="before")(_parser(param))
               for name, param in declared().items() if param.parse is not None}
    return create_model("RunParameters", __base__=_Base, __validators__=parsers, **fields)


def _parser(param: Param):
    def parse(cls, value):
        return param.parse(value)

    parse.__name__ = f"parse_{param.name}"
    return parse


def defaults() -> BaseModel:
    return model()()


def validate(values: dict[str, Any], command: str = "run") -> BaseModel:
    """The run's parameters, checked; ParameterError in the user's words otherwise."""
    values = dict(values)
    if values.get(METHODS) is not None:
        values[METHODS] = normalized_methods(values[METHODS], command)
    try:
        return model().model_validate(values)
    except ValidationError as exc:
        raise UsageError(command, "; ".join(_explain(error, values) for error in exc.errors())) from None


def normalized_methods(methods, command: str = "run") -> list[str]:
    """The switchable stages that run, in catalogue order; unknown names are an error."""
    names = switchable()
    unknown = sorted(set(methods) - set(names))
    if unknown:
        raise UsageError(command, f"unknown method(s) {', '.join(unknown)}; the methods are {', '.join(names)}")
    return [m for m in names if m in set(methods)]


def _explain(error: dict, values: dict[str, Any]) -> str:
    """One pydantic error as a sentence naming the option."""
    location = [str(part) for part in error.get("loc", ())]
    name = location[0] if location else ""
    param = declared().get(name)
    option = param.flag if param else (f"--{name.replace('_', '-')}" if name else "a parameter")
    got = values.get(name, error.get("input"))
    kind, context = error.get("type", ""), error.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"unknown parameter {name!r}{suggestion(name)}"
    if kind == "greater_than_equal":
        return f"{option} must be at least {context.get('ge')}, got {got!r}"
    if kind == "less_than_equal":
        return f"{option} must be at most {context.get('le')}, got {got!r}"
    if kind == "literal_error":
        allowed = param.choices if param and param.choices else switchable()
        return f"{option} must be one of {', '.join(map(str, allowed))}, got {got!r}"
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"{option} must be a whole number, got {got!r}"
    if kind in ("float_parsing", "float_type"):
        return f"{option} must be a number, got {got!r}"
    if kind in ("string_type",):
        return f"{option} must be text, got {got!r}"
    if kind == "value_error":
        return str(context.get("error") or error.get("msg"))
    return f"{option}: {error.get('msg')} (got {got!r})"


def suggestion(name: str) -> str:
    """'; did you mean k_max?' for a misspelt parameter name, else nothing."""
    close = difflib.get_close_matches(name, [*declared(), METHODS], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# --- what the runtime derives from the model ------------------------------------------------------

def recorded(params: BaseModel) -> dict[str, Any]:
    """The manifest's `parameters`: every parameter that can change a result, as JSON values."""
    kept = [n for n, p in declared().items() if p.changes_results] + [METHODS]
    return params.model_dump(mode="json", include=set(kept))


def compared_for_reuse() -> tuple[str, ...]:
    """What two runs of one month must agree on to be the same run (the backfill's reuse check).

    Every parameter, except those that provably do not change results (`changes_results=False`)
    and the two that identify the run another way: the month (`as_of`) and the input, compared
    by its sha256 rather than its path (`key_as`).
    """
    return tuple(n for n, p in declared().items() if p.changes_results and p.key_as is None and n != "as_of") + (
        METHODS,)


def series() -> tuple[str, ...]:
    """The parameters that make monthly runs one series (segment ids are matched within it)."""
    return tuple(n for n, p in declared().items() if p.series)
