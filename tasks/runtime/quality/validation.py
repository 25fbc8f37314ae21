"""Validating one dataset with its Great Expectations suite, and the gate's verdict.

The gate is decided here, not by GX: GX marks a suite failed when any expectation fails, whatever
its ``severity``; a dataset passes its gate unless a *critical* expectation failed. Warnings are
reported and kept in the report but do not stop the pipeline.

Great Expectations is imported on first use (it takes seconds); the in-memory context, the data
source and the parsed suites are kept for the life of the process.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from customer_segments.tasks.runtime.quality import product_expectation
from customer_segments.tasks.runtime.quality.findings import CRITICAL, SAMPLE_SIZE, WARNING, Finding, finding
from customer_segments.tasks.runtime.quality.suites import (
    SEVERITIES,
    SuiteError,
    expectation_parameters,
    parameter_names,
    suite_path,
)

# GX reads this when it is imported; setting it here (cheap) keeps usage statistics off whichever
# module imports GX first.
os.environ["GX_ANALYTICS_ENABLED"] = "false"

# BASIC, not SUMMARY: the same counts and sample of unexpected values, without counting every
# unexpected value (at 10 million lines, SUMMARY took 8.5 s to validate raw_invoices, BASIC 5.3 s).
RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": SAMPLE_SIZE}


@dataclass(frozen=True)
class GateResult:
    """The outcome of one dataset's gate; ``report`` is GX's own result plus ``meta.gate``."""

    dataset: str
    success: bool
    evaluated: int
    failed_critical: list[Finding]
    failed_warning: list[Finding]
    seconds: float
    report: dict

    def error_message(self) -> str | None:
        """One paragraph naming every critical failure in words, or None when the gate passed."""
        if self.success:
            return None
        lines = "; ".join(f.describe() for f in self.failed_critical)
        return f"dataset {self.dataset} failed its quality gate: {lines}"

    def summary(self) -> dict[str, Any]:
        """Small JSON-able digest for a run manifest (the full report is kept separately)."""
        return {
            "success": self.success,
            "evaluated": self.evaluated,
            "failed_critical": len(self.failed_critical),
            "failed_warning": len(self.failed_warning),
            "critical": [f.describe() for f in self.failed_critical],
            "warnings": [f.describe() for f in self.failed_warning],
            "findings": [f.to_dict() for f in self.failed_critical + self.failed_warning],
            "seconds": round(self.seconds, 3),
        }

    def report_bytes(self) -> bytes:
        return (json.dumps(self.report, indent=1, default=str) + "\n").encode("utf-8")


def validate(
    df: pd.DataFrame,
    dataset: str,
    facts: Mapping[str, Any] | None = None,
    suites_dir: Path | None = None,
) -> GateResult:
    """Validate ``df`` with the dataset's suite, given the run's facts (parameters and metrics)."""
    state = gx_state()
    # The one-time GX import and context build are not charged to the first dataset.
    started = time.perf_counter()
    loaded = state.suite(suite_path(dataset, suites_dir))
    parameters = expectation_parameters(dataset, loaded.required, facts)
    frame = comparable_datetimes(df)

    with state.lock:
        suite, not_applicable = loaded.applicable({str(c) for c in df.columns})
        batch = state.batch_definition.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(suite, result_format=RESULT_FORMAT, expectation_parameters=parameters)
        report = result.to_json_dict()

    dtypes = {str(c): str(t) for c, t in df.dtypes.items()}
    result = gate_result(dataset, report, dtypes, facts, started)
    run_time = datetime.now(timezone.utc)
    report["meta"].update(
        {
            "dataset": dataset,
            "suite_file": str(loaded.path),
            "expectation_parameters": parameters,
            "not_applicable": not_applicable,
            # The frame's dtypes: a merge of partitions' reports names a wrong dtype as this does.
            "dtypes": dtypes,
            # Data Docs files a result under its run; one run name per dataset keeps them apart.
            "run_id": {"run_name": dataset, "run_time": run_time.isoformat()},
            "validation_time": run_time.strftime("%Y%m%dT%H%M%S.%fZ"),
            "gate": {
                "success": result.success,
                "failed_critical": len(result.failed_critical),
                "failed_warning": len(result.failed_warning),
                "rule": "fails only when an expectation of severity critical fails",
            },
        }
    )
    return result


def gate_result(dataset: str, report: dict, dtypes: Mapping[str, str], facts: Mapping[str, Any] | None,
                started: float) -> GateResult:
    """The gate's verdict on a GX report: findings in words, critical ones fail it.

    Shared by `validate` and by the merge of a partitioned dataset's reports (quality/merge.py).
    """
    findings = [finding(r, dtypes, dict(facts or {})) for r in report["results"] if not r.get("success")]
    failed_critical = [f for f in findings if f.severity == CRITICAL]
    failed_warning = [f for f in findings if f.severity == WARNING]
    return GateResult(
        dataset=dataset,
        success=not failed_critical,
        evaluated=int(report["statistics"]["evaluated_expectations"]),
        failed_critical=failed_critical,
        failed_warning=failed_warning,
        seconds=time.perf_counter() - started,
        report=report,
    )


def required_parameters(dataset: str, suites_dir: Path | None = None) -> tuple[str, ...]:
    """The run-time parameter names a dataset's suite refers to."""
    return tuple(sorted(gx_state().suite(suite_path(dataset, suites_dir)).required))


def comparable_datetimes(df: pd.DataFrame) -> pd.DataFrame:
    """Datetime columns in nanosecond unit, so that GX compares them vectorised.

    GX's between-metric takes its fast path only for datetime64[ns] (see
    expectations/metrics/column_map_metrics/column_values_between.py); pandas 3 creates
    datetime64[us] from strings, which falls back to a Python-level map (about 10x slower).
    """
    frame = df
    for position, dtype in enumerate(df.dtypes):
        if not pd.api.types.is_datetime64_any_dtype(dtype):
            continue
        # A tz-aware dtype has .unit; a numpy datetime64 dtype carries it in datetime_data.
        if (getattr(dtype, "unit", None) or np.datetime_data(dtype)[0]) == "ns":
            continue
        try:
            converted = df.iloc[:, position].dt.as_unit("ns")
        except (OverflowError, ValueError):
            continue  # outside the ns range: keep it, the slow path still gives the right answer
        if frame is df:
            frame = df.copy(deep=False)  # never change the caller's frame
        frame.isetitem(position, converted)
    return frame


# --- Great Expectations state, built once per process -------------------------------------------


@dataclass(frozen=True)
class LoadedSuite:
    path: Path
    stamp: tuple[int, int]
    suite: Any
    required: frozenset[str]
    # Columns an export may lack (a sales-only export has no StockCode): an expectation about one
    # the data does not have does not apply, and is reported as such rather than failed.
    optional: frozenset[str] = frozenset()
    entries: tuple[dict, ...] = ()

    def applicable(self, present: set[str]) -> tuple[Any, list[str]]:
        """The suite for data with these columns, and the expectations left out (in words)."""
        absent = self.optional - present
        if not absent:
            return self.suite, []
        from great_expectations.core import ExpectationSuite
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        kept, skipped = [], []
        for entry in self.entries:
            named = sorted(columns_named(entry.get("kwargs") or {}) & absent)
            if named:
                skipped.append(f"{entry['type']} ({', '.join(named)}: the data has no such column)")
            else:
                kept.append(ExpectationConfiguration(**entry).to_domain_obj())
        return ExpectationSuite(name=self.suite.name, expectations=kept, meta=self.suite.meta,
                                notes=self.suite.notes), skipped


def columns_named(kwargs: Mapping[str, Any]) -> set[str]:
    """The columns an expectation's kwargs name (column, column_A/B, column_list, column_set)."""
    named = {kwargs[k] for k in ("column", "column_A", "column_B") if isinstance(kwargs.get(k), str)}
    for key in ("column_list", "column_set"):
        if isinstance(kwargs.get(key), list):
            named |= {c for c in kwargs[key] if isinstance(c, str)}
    return named


class GxState:
    def __init__(self) -> None:
        os.environ["GX_ANALYTICS_ENABLED"] = "false"  # again, in case it was changed since
        import great_expectations as gx
        from great_expectations.execution_engine import pandas_execution_engine

        # GX fingerprints every DataFrame batch below this size with an MD5 of all its values
        # (0.14 s at 541,909 lines, seconds at millions). The stage runner hashes every output's
        # bytes already, so the fingerprint only costs time: 0 turns it off.
        pandas_execution_engine.HASH_THRESHOLD = 0
        narrow_column_domains(pandas_execution_engine.PandasExecutionEngine)
        configurations_built_once()
        product_expectation.register()
        self.gx = gx
        self.lock = threading.RLock()
        self.context = gx.get_context(mode="ephemeral", project_config=project_config())
        asset = self.context.data_sources.add_pandas("pipeline").add_dataframe_asset("dataset")
        self.batch_definition = asset.add_batch_definition_whole_dataframe("whole_frame")
        self._suites: dict[Path, LoadedSuite] = {}

    def suite(self, path: Path) -> LoadedSuite:
        """The parsed suite, re-read only when its file changed."""
        path = path.resolve()
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise SuiteError(f"No expectation suite {path} (expected one JSON file per dataset)") from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self.lock:
            cached = self._suites.get(path)
            if cached is None or cached.stamp != stamp:
                cached = load_suite(path, stamp)
                self._suites[path] = cached
            return cached


def narrow_column_domains(engine: type) -> None:
    """Give a single-column metric a frame of its column only, not the whole batch (once).

    GX's pandas engine hands each column-map metric the whole batch, twice (to test the values,
    then to pick the sample of unexpected ones), and each time drops the rows where the column is
    missing by filtering the whole frame: every column copied, twice per such expectation. The
    metric reads only its column (and, with the BASIC result format, no other column of the
    unexpected rows), so the narrowed frame gives the same result; a test compares the reports.
    Validating the ten million raw lines: about 5 s to 2 s.
    """
    from great_expectations.core.metric_domain_types import MetricDomainTypes

    whole_domain, whole_records = engine.get_compute_domain, engine.get_domain_records
    if getattr(whole_domain, "narrowed", False):
        return

    def narrowed(data, column):
        if data.shape[1] < 2 or column not in data.columns or not data.columns.is_unique:
            return data
        return data[column].to_frame()  # a quarter of data[[column]]'s time, called for every metric

    def get_compute_domain(self, domain_kwargs, domain_type, accessor_keys=None):
        data, compute, accessor = whole_domain(self, domain_kwargs, domain_type, accessor_keys)
        column = accessor.get("column")
        if MetricDomainTypes(domain_type) is not MetricDomainTypes.COLUMN or column is None:
            return data, compute, accessor
        # The compute domain comes back with the metric's result; the sample of unexpected values
        # asks for its records again with it, so it names the column for get_domain_records.
        return narrowed(data, column), type(compute)({**compute, _ONLY_COLUMN: column}), accessor

    def get_domain_records(self, domain_kwargs):
        column = domain_kwargs.get(_ONLY_COLUMN)
        if column is None:
            return whole_records(self, domain_kwargs)
        return narrowed(whole_records(self, {k: v for k, v in domain_kwargs.items() if k != _ONLY_COLUMN}), column)

    get_compute_domain.narrowed = True
    get_compute_domain.whole = get_domain_records.whole = (whole_domain, whole_records)
    engine.get_compute_domain, engine.get_domain_records = get_compute_domain, get_domain_records


_ONLY_COLUMN = "_only_column"


def configurations_built_once() -> None:
    """Build each expectation's configuration once per validation, not at every read (once).

    GX's `Expectation.configuration` builds a new configuration from the expectation's model each
    time it is read, and a validation reads it about sixty times per expectation (each of its
    domain, success and runtime settings reads the whole configuration anew): a third of a small
    dataset's validation time. Inside GX's `Validator.graph_validate`, which builds fresh
    expectations from the suite's configurations and validates them, none of them changes, so the
    first configuration built is kept for the rest of that call, and forgotten after it.
    """
    from great_expectations.expectations.expectation import Expectation
    from great_expectations.validator.validator import Validator

    built, whole = Expectation.configuration.fget, Validator.graph_validate
    if getattr(built, "once", False):
        return

    def configuration(self):
        kept = getattr(_BUILT, "by_id", None)
        if kept is None:
            return built(self)
        entry = kept.get(id(self))
        if entry is None or entry[0] is not self:  # the expectation is held, so its id is its own
            entry = kept[id(self)] = (self, built(self))
        return entry[1]

    def graph_validate(self, *args, **kwargs):
        outer = getattr(_BUILT, "by_id", None)
        _BUILT.by_id = {} if outer is None else outer
        try:
            return whole(self, *args, **kwargs)
        finally:
            _BUILT.by_id = outer

    configuration.once = True
    configuration.built = built
    graph_validate.whole = whole
    Expectation.configuration = property(configuration)
    Validator.graph_validate = graph_validate


_BUILT = threading.local()


# Great Expectations imports these when it loads, for expectations and charts the product's suites
# do not use (distribution tests, Altair renderings): about 1 s of the validator's start on the
# second core. In the validator process they load on first use instead (`defer_unused_imports`).
UNUSED_BY_GATES = ("scipy.stats", "altair")


class _DeferredImports(importlib.abc.MetaPathFinder):
    """Imports the named modules lazily: the module object at once, its code on first attribute use."""

    def __init__(self, names: tuple[str, ...]):
        self.names = frozenset(names)

    def find_spec(self, name, path, target=None):
        if name not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)  # where the import would find it
        if spec is None or spec.loader is None:
            return None
        spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


def defer_unused_imports(names: tuple[str, ...] = UNUSED_BY_GATES) -> None:
    """In this process, load `names` when first used rather than when imported (once; before GX).

    Only for the validator process: Python 3.11's lazy loader is not safe when two threads use a
    module for the first time at once, and there nothing uses these modules at all.
    """
    if not any(isinstance(finder, _DeferredImports) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DeferredImports(tuple(n for n in names if n not in sys.modules)))


_STATE: GxState | None = None
_STATE_LOCK = threading.Lock()


def gx_state() -> GxState:
    global _STATE
    with _STATE_LOCK:
        if _STATE is None:
            _STATE = GxState()
        return _STATE


def project_config():
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # In-memory stores and no default docs site: nothing is written anywhere until a docs site
    # is asked for explicitly.
    return DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )


def load_suite(path: Path, stamp: tuple[int, int]) -> LoadedSuite:
    from great_expectations.core import ExpectationSuite
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SuiteError(f"Cannot read quality suite {path}: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("expectations"), list):
        raise SuiteError(f"Quality suite {path}: a suite is a JSON object with a list 'expectations'")
    if spec.get("name") != path.stem:
        raise SuiteError(f"Quality suite {path}: suite name {spec.get('name')!r} must equal the file name {path.stem!r}")
    optional = spec.get("optional_columns", [])
    if not isinstance(optional, list) or not all(isinstance(c, str) for c in optional):
        raise SuiteError(f"Quality suite {path}: optional_columns must be a list of column names")

    expectations = []
    required: set[str] = set()
    for number, entry in enumerate(spec["expectations"], start=1):
        label = f"Quality suite {path}, expectation {number} ({entry.get('type') if isinstance(entry, dict) else entry!r})"
        if not isinstance(entry, dict) or "type" not in entry:
            raise SuiteError(f"{label}: each expectation needs a 'type' and 'kwargs'")
        if entry.get("severity", CRITICAL) not in SEVERITIES:
            raise SuiteError(f"{label}: severity must be one of {', '.join(SEVERITIES)}, not {entry.get('severity')!r}")
        # ExpectationSuite() logs and silently drops an expectation it cannot build; building
        # each one here turns a typo in the JSON into an error that names it.
        try:
            config = ExpectationConfiguration(**entry)
            expectations.append(config.to_domain_obj())
        except Exception as exc:  # GX raises several unrelated exception types here
            raise SuiteError(f"{label}: {type(exc).__name__}: {exc}") from None
        required |= parameter_names(entry.get("kwargs") or {})

    suite = ExpectationSuite(
        name=spec["name"], expectations=expectations, meta=spec.get("meta"), notes=spec.get("notes")
    )
    if len(suite.expectations) != len(expectations):
        raise SuiteError(
            f"Quality suite {path}: {len(expectations) - len(suite.expectations)} expectation(s) were dropped as "
            "duplicates; every expectation must differ in type or kwargs"
        )
    return LoadedSuite(path=path, stamp=stamp, suite=suite, required=frozenset(required), optional=frozenset(optional),
                       entries=tuple(spec["expectations"]))


def copy_suite(suite):
    """An unbound copy of a suite, to add to another context (adding binds it and gives it ids)."""
    from great_expectations.core import ExpectationSuite

    return ExpectationSuite(
        name=suite.name,
        expectations=[e.configuration.to_json_dict() for e in suite.expectations],
        meta=dict(suite.meta),
        notes=suite.notes,
    )
