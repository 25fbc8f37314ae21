"""Where the quality suites live and how a run's facts become their parameters.

Suites are plain JSON files, one per dataset, in GX 1.x ExpectationSuite form (name, notes,
expectations with type / kwargs / severity / meta.notes), so that an analyst can read and edit
them. They ship inside the package (``customer_segments.expectations``) and are found with
``importlib.resources``; ``SEGMENT_EXPECTATIONS`` points a deployment at an edited copy instead.
A dataset without a readable suite is an error, never a silently skipped gate.

Run-time values (run_date, cutoff, k_max, customers, k) are referenced with GX's
suite-parameter syntax, ``{"$PARAMETER": "k - 1"}``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from customer_segments.tasks.errors import PipelineError

SUITES_PACKAGE = "customer_segments.expectations"
SUITES_ENV = "SEGMENT_EXPECTATIONS"

# Parameters compared with datetime columns. They are normalised to full ISO timestamps: GX's
# pydantic models turn "2011-12-01" into a date but "2011-12-01T00:00:00" into a datetime, and a
# date cannot be compared with a datetime bound or a datetime64 column.
TIMESTAMP_PARAMETERS = frozenset({"run_date", "cutoff"})

# Names the suite-parameter expression language defines itself (see
# great_expectations/core/suite_parameters.py, SuiteParameterParser.fn).
_EXPRESSION_BUILTINS = frozenset(
    {"sin", "cos", "tan", "exp", "abs", "trunc", "round", "sgn", "now", "datetime", "timedelta", "PI", "E"}
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SEVERITIES = ("critical", "warning", "info")


class SuiteError(PipelineError, ValueError):
    """A suite file is missing or cannot be understood; names the file and the expectation."""


def suites_dir() -> Path:
    """The folder of suites: SEGMENT_EXPECTATIONS when set, else the package's own."""
    override = os.environ.get(SUITES_ENV)
    if override:
        return Path(override)
    # The package is installed as plain files (a wheel or an editable checkout), so the
    # resource folder is a real directory that GX and people can read.
    return Path(str(resources.files(SUITES_PACKAGE)))


def suite_path(dataset: str, folder: Path | None = None) -> Path:
    """The suite file of a dataset; SuiteError when there is none."""
    path = (folder or suites_dir()) / f"{dataset}.json"
    if not path.is_file():
        where = f"{SUITES_ENV}={os.environ[SUITES_ENV]}" if os.environ.get(SUITES_ENV) and folder is None else "the package"
        raise SuiteError(
            f"No quality suite for dataset {dataset}: {path} does not exist (suites come from {where}). "
            "Every dataset is validated before the next stage reads it, so the run cannot go on without it; "
            "reinstall the package or restore the file"
        )
    return path


def parameter_names(kwargs: Mapping[str, Any]) -> set[str]:
    """Run-time parameter names used by one expectation's kwargs."""
    names: set[str] = set()
    for value in kwargs.values():
        if isinstance(value, dict) and "$PARAMETER" in value:
            names |= set(_IDENTIFIER.findall(str(value["$PARAMETER"]))) - _EXPRESSION_BUILTINS
    return names


def expectation_parameters(dataset: str, required: frozenset[str], facts: Mapping[str, Any] | None) -> dict[str, Any]:
    """The values of the parameters a suite needs, taken from the run's facts.

    ``facts`` may hold more than the suite uses; a needed value that is missing raises ValueError
    before anything is evaluated, except ``run_date``, which defaults to now.
    """
    import pandas as pd

    given = dict(facts or {})
    if "run_date" in required and given.get("run_date") is None:
        given["run_date"] = datetime.now()
    missing = sorted(name for name in required if given.get(name) is None)
    if missing:
        raise ValueError(
            f"The {dataset} suite needs parameter(s) {', '.join(missing)}; "
            f"given: {', '.join(sorted(given)) or 'none'}"
        )
    used: dict[str, Any] = {}
    for name in sorted(required):
        value = given[name]
        if name in TIMESTAMP_PARAMETERS or isinstance(value, (date, datetime, pd.Timestamp)):
            try:
                stamp = pd.Timestamp(value)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"Parameter {name}={value!r} is not a timestamp: {exc}") from None
            # Invoice dates are naive (ingest drops any zone); an aware bound cannot be compared
            # with them, so it is expressed in UTC without zone.
            value = (stamp.tz_convert(None) if stamp.tzinfo is not None else stamp).isoformat()
        elif hasattr(value, "item") and not isinstance(value, (str, bytes)):
            value = value.item()  # numpy scalars: plain numbers keep the report JSON-able
        used[name] = value
    return used
