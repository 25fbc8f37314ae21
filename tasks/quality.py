"""Quality gates: every dataset the pipeline writes is validated by a Great Expectations suite.

Suites are plain JSON files, ``expectations/<dataset>.json``, in GX 1.x ExpectationSuite form
(name, notes, expectations with type / kwargs / severity / meta.notes) so that an analyst can
read and edit them. Run-time values (run_date, cutoff, k_max, customers, k) are referenced with
GX's suite-parameter syntax, ``{"$PARAMETER": "k - 1"}``, and supplied through ``parameters``.

The gate is decided here, not by GX: GX marks a suite failed when any expectation fails, whatever
its ``severity``; a dataset passes its gate unless a *critical* expectation failed. Warnings are
reported and kept in the report but do not stop the pipeline.

Great Expectations is imported lazily (it takes seconds to import) and the in-memory context,
the data source and the parsed suites are kept for the life of the process.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

EXPECTATIONS_DIR = Path(__file__).resolve().parent.parent / "expectations"

# GX reads this when it is imported, which may happen elsewhere first; setting it here (cheap)
# keeps usage statistics off whichever module imports GX.
os.environ["GX_ANALYTICS_ENABLED"] = "false"

CRITICAL, WARNING, INFO = "critical", "warning", "info"
SAMPLE_SIZE = 5
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_SIZE}

# Parameters that are compared with datetime columns. They are normalised to full ISO timestamps:
# GX's pydantic models turn "2011-12-01" into a date but "2011-12-01T00:00:00" into a datetime,
# and a date cannot be compared with a datetime bound or a datetime64 column.
TIMESTAMP_PARAMETERS = frozenset({"run_date", "cutoff"})

# Names the suite-parameter expression language defines itself (see
# great_expectations/core/suite_parameters.py, SuiteParameterParser.fn).
_EXPRESSION_BUILTINS = frozenset(
    {"sin", "cos", "tan", "exp", "abs", "trunc", "round", "sgn", "now", "datetime", "timedelta", "PI", "E"}
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_SITE_NAME = "quality"
_TYPE_EXPECTATIONS = frozenset({"expect_column_values_to_be_of_type", "expect_column_values_to_be_in_type_list"})


class SuiteError(ValueError):
    """A suite file is missing or cannot be understood; names the file and the expectation."""


@dataclass(frozen=True)
class Finding:
    """One failed expectation, in words an analyst can act on."""

    expectation: str
    column: str | None
    severity: str
    observed: str
    unexpected_sample: list

    def describe(self) -> str:
        where = f"column {self.column}" if self.column else "table"
        sample = f"; e.g. {', '.join(_short(v) for v in self.unexpected_sample)}" if self.unexpected_sample else ""
        return f"{self.severity}: {where}: {self.expectation} failed, observed {self.observed}{sample}"


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
        """One paragraph naming every critical failure, or None when the gate passed."""
        if self.success:
            return None
        lines = "; ".join(f.describe() for f in self.failed_critical)
        return f"Dataset {self.dataset} failed its quality gate ({len(self.failed_critical)} critical): {lines}"

    def summary(self) -> dict[str, Any]:
        """Small JSON-able digest for a run manifest (the full report is kept separately).

        Counts and one-line texts for tables; ``findings`` keeps the structured form.
        """
        return {
            "success": self.success,
            "evaluated": self.evaluated,
            "failed_critical": len(self.failed_critical),
            "failed_warning": len(self.failed_warning),
            "critical": [f.describe() for f in self.failed_critical],
            "warnings": [f.describe() for f in self.failed_warning],
            "findings": [_finding_dict(f) for f in self.failed_critical + self.failed_warning],
            "seconds": round(self.seconds, 3),
        }


def validate(
    df: pd.DataFrame,
    dataset: str,
    parameters: Mapping[str, Any] | None = None,
    suites_dir: Path = EXPECTATIONS_DIR,
) -> GateResult:
    """Validate ``df`` with ``suites_dir/<dataset>.json``.

    ``parameters`` may hold more values than the suite uses (e.g. every fact of a run); a value
    the suite refers to but that is missing raises ValueError before anything is evaluated,
    except ``run_date``, which defaults to now.
    """
    state = _gx_state()
    # The one-time GX import and context build are not charged to the first dataset.
    started = time.perf_counter()
    loaded = state.suite(Path(suites_dir) / f"{dataset}.json")
    expectation_parameters = _expectation_parameters(dataset, loaded.required, parameters)
    frame = _comparable_datetimes(df)

    with state.lock:
        batch = state.batch_definition.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(
            loaded.suite, result_format=RESULT_FORMAT, expectation_parameters=expectation_parameters
        )
        report = result.to_json_dict()

    dtypes = {str(c): str(t) for c, t in df.dtypes.items()}
    findings = [_finding(r, dtypes) for r in report["results"] if not r.get("success")]
    failed_critical = [f for f in findings if f.severity == CRITICAL]
    failed_warning = [f for f in findings if f.severity == WARNING]
    success = not failed_critical
    run_time = datetime.now(timezone.utc)
    report["meta"].update(
        {
            "dataset": dataset,
            "suite_file": str(loaded.path),
            "expectation_parameters": expectation_parameters,
            # Data Docs files a result under its run; one run name per dataset keeps them apart.
            "run_id": {"run_name": dataset, "run_time": run_time.isoformat()},
            "validation_time": run_time.strftime("%Y%m%dT%H%M%S.%fZ"),
            "gate": {
                "success": success,
                "failed_critical": len(failed_critical),
                "failed_warning": len(failed_warning),
                "rule": "fails only when an expectation of severity critical fails",
            },
        }
    )
    return GateResult(
        dataset=dataset,
        success=success,
        evaluated=int(report["statistics"]["evaluated_expectations"]),
        failed_critical=failed_critical,
        failed_warning=failed_warning,
        seconds=time.perf_counter() - started,
        report=report,
    )


def required_parameters(dataset: str, suites_dir: Path = EXPECTATIONS_DIR) -> tuple[str, ...]:
    """The run-time parameter names a dataset's suite refers to."""
    return tuple(sorted(_gx_state().suite(Path(suites_dir) / f"{dataset}.json").required))


def build_data_docs(
    reports: Mapping[str, dict] | Sequence[dict | GateResult],
    out_dir: Path,
    suites_dir: Path | None = EXPECTATIONS_DIR,
) -> Path:
    """Render validation reports as a GX Data Docs site in ``out_dir``; return its index.html.

    ``reports`` maps dataset name to report (``GateResult.report``) or is a list of reports or
    GateResults. The suites of those datasets found in ``suites_dir`` are rendered too.
    """
    state = _gx_state()
    out_dir = Path(out_dir).resolve()
    items = _report_items(reports)

    from great_expectations.core.expectation_validation_result import (
        expectationSuiteValidationResultSchema,
    )
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context import set_context
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    with state.lock:
        # A context of its own: the site shows exactly these reports, even when they were
        # produced by other processes, and nothing from earlier builds.
        context = state.gx.get_context(mode="ephemeral", project_config=_project_config())
        try:
            for dataset, report in items:
                result = expectationSuiteValidationResultSchema.load(
                    {**report, "suite_name": report.get("suite_name") or dataset}
                )
                run = (report.get("meta") or {}).get("run_id") or {}
                run_id = RunIdentifier(
                    run_name=run.get("run_name") or dataset,
                    run_time=run.get("run_time") or datetime.now(timezone.utc),
                )
                key = ValidationResultIdentifier(
                    expectation_suite_identifier=ExpectationSuiteIdentifier(name=result.suite_name),
                    run_id=run_id,
                    batch_identifier=report.get("batch_id") or dataset,
                )
                context.validation_results_store.set(key, result)
                if suites_dir is not None and (Path(suites_dir) / f"{dataset}.json").is_file():
                    suite = state.suite(Path(suites_dir) / f"{dataset}.json").suite
                    if not any(s.name == suite.name for s in context.suites.all()):
                        # Adding binds a suite to the context and gives it ids: add a copy, so
                        # the cached suite used for validation stays unbound.
                        context.suites.add(_copy_suite(suite))

            context.add_data_docs_site(
                site_name=_SITE_NAME,
                site_config={
                    "class_name": "SiteBuilder",
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(out_dir),
                    },
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                    "show_how_to_buttons": False,
                },
            )
            context.build_data_docs(site_names=[_SITE_NAME])
        finally:
            # get_context made the docs context the process's current one; give it back.
            set_context(state.context)
    index = out_dir / "index.html"
    if not index.is_file():
        raise RuntimeError(f"Data Docs build wrote no {index}")
    return index


# --- Great Expectations state, built once per process -------------------------------------------


@dataclass(frozen=True)
class _LoadedSuite:
    path: Path
    stamp: tuple[int, int]
    suite: Any
    required: frozenset[str]


class _GxState:
    def __init__(self) -> None:
        os.environ["GX_ANALYTICS_ENABLED"] = "false"  # again, in case it was changed since
        import great_expectations as gx

        _register_custom_expectations()
        self.gx = gx
        self.lock = threading.RLock()
        self.context = gx.get_context(mode="ephemeral", project_config=_project_config())
        asset = self.context.data_sources.add_pandas("pipeline").add_dataframe_asset("dataset")
        self.batch_definition = asset.add_batch_definition_whole_dataframe("whole_frame")
        self._suites: dict[Path, _LoadedSuite] = {}

    def suite(self, path: Path) -> _LoadedSuite:
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
                cached = _load_suite(path, stamp)
                self._suites[path] = cached
            return cached


_STATE: _GxState | None = None
_STATE_LOCK = threading.Lock()


def _gx_state() -> _GxState:
    global _STATE
    with _STATE_LOCK:
        if _STATE is None:
            _STATE = _GxState()
        return _STATE


def _project_config():
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


def _load_suite(path: Path, stamp: tuple[int, int]) -> _LoadedSuite:
    from great_expectations.core import ExpectationSuite
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SuiteError(f"Cannot read expectation suite {path}: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("expectations"), list):
        raise SuiteError(f"{path}: a suite is a JSON object with a list 'expectations'")
    if spec.get("name") != path.stem:
        raise SuiteError(f"{path}: suite name {spec.get('name')!r} must equal the file name {path.stem!r}")

    expectations = []
    required: set[str] = set()
    for number, entry in enumerate(spec["expectations"], start=1):
        label = f"{path.name}, expectation {number} ({entry.get('type') if isinstance(entry, dict) else entry!r})"
        if not isinstance(entry, dict) or "type" not in entry:
            raise SuiteError(f"{label}: each expectation needs a 'type' and 'kwargs'")
        # ExpectationSuite() logs and silently drops an expectation it cannot build; building
        # each one here turns a typo in the JSON into an error that names it.
        try:
            config = ExpectationConfiguration(**entry)
            expectations.append(config.to_domain_obj())
        except Exception as exc:  # GX raises several unrelated exception types here
            raise SuiteError(f"{label}: {type(exc).__name__}: {exc}") from None
        required |= _parameter_names(entry.get("kwargs") or {})

    suite = ExpectationSuite(
        name=spec["name"], expectations=expectations, meta=spec.get("meta"), notes=spec.get("notes")
    )
    if len(suite.expectations) != len(expectations):
        raise SuiteError(
            f"{path}: {len(expectations) - len(suite.expectations)} expectation(s) were dropped as "
            "duplicates; every expectation must differ in type or kwargs"
        )
    return _LoadedSuite(path=path, stamp=stamp, suite=suite, required=frozenset(required))


def _copy_suite(suite):
    from great_expectations.core import ExpectationSuite

    return ExpectationSuite(
        name=suite.name,
        expectations=[e.configuration.to_json_dict() for e in suite.expectations],
        meta=dict(suite.meta),
        notes=suite.notes,
    )


def _parameter_names(kwargs: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    for value in kwargs.values():
        if isinstance(value, dict) and "$PARAMETER" in value:
            names |= set(_IDENTIFIER.findall(str(value["$PARAMETER"]))) - _EXPRESSION_BUILTINS
    return names


def _expectation_parameters(
    dataset: str, required: frozenset[str], parameters: Mapping[str, Any] | None
) -> dict[str, Any]:
    given = dict(parameters or {})
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


def _comparable_datetimes(df: pd.DataFrame) -> pd.DataFrame:
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


# --- reading results -----------------------------------------------------------------------------


def _finding(result: dict, dtypes: Mapping[str, str]) -> Finding:
    config = result.get("expectation_config") or {}
    kwargs = config.get("kwargs") or {}
    observed = _observed(result)
    column = _column_of(kwargs)
    if config.get("type") in _TYPE_EXPECTATIONS and column in dtypes and not _exception_message(result):
        # GX reports the dtype's scalar type, e.g. "int64" for a nullable Int64 column.
        observed = f"dtype {dtypes[column]}"
    if _exception_message(result):
        # GX's message for an absent column varies by expectation (some say "list index out of
        # range"); say it plainly.
        absent = [c for c in _domain_columns(config.get("type", ""), kwargs) if c not in dtypes]
        if absent:
            observed = f"column {', '.join(absent)} is missing from the dataset"
    return Finding(
        expectation=config.get("type", "?"),
        column=column,
        severity=str(config.get("severity") or CRITICAL),
        observed=observed,
        unexpected_sample=_sample(result.get("result") or {}),
    )


def _domain_columns(expectation: str, kwargs: Mapping[str, Any]) -> list[str]:
    if expectation.startswith("expect_table_"):
        return []  # their column lists are expected values, not the columns they read
    if kwargs.get("column") is not None:
        return [str(kwargs["column"])]
    if kwargs.get("column_A") is not None:
        return [str(kwargs["column_A"]), str(kwargs.get("column_B"))]
    return [str(c) for c in kwargs.get("column_list") or []]


def _column_of(kwargs: Mapping[str, Any]) -> str | None:
    if kwargs.get("column") is not None:
        return str(kwargs["column"])
    if kwargs.get("product_column") is not None:
        return str(kwargs["product_column"])
    if kwargs.get("column_A") is not None:
        return f"{kwargs['column_A']}, {kwargs.get('column_B')}"
    return None  # table-level (column_list of table expectations is the expected value, not a domain)


def _exception_message(result: dict) -> str | None:
    info = result.get("exception_info") or {}
    if info.get("raised_exception"):
        return info.get("exception_message") or "error"
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return value.get("exception_message") or "error"
    return None


def _observed(result: dict) -> str:
    error = _exception_message(result)
    if error:
        return f"could not be evaluated: {error}"
    details = result.get("result") or {}
    if "observed_value" in details:
        text = _format_value(details["observed_value"])
        return text + _mismatch_text((details.get("details") or {}).get("mismatched"))
    if "unexpected_count" in details:
        unexpected = int(details.get("unexpected_count") or 0)
        total = int(details.get("element_count") or 0)
        text = f"{unexpected:,} of {total:,} rows ({_percent(unexpected, total)})"
        missing = int(details.get("missing_count") or 0)
        if missing:
            text += f"; {missing:,} null rows not checked"
        return text
    return "no observed value"


def _mismatch_text(mismatched: Any) -> str:
    if isinstance(mismatched, dict):
        parts = [
            f"{label}: {', '.join(map(str, mismatched[key]))}"
            for key, label in (("missing", "missing"), ("unexpected", "unexpected"))
            if mismatched.get(key)
        ]
        return f" ({'; '.join(parts)})" if parts else ""
    if isinstance(mismatched, list) and mismatched:
        parts = [
            f"position {m.get('Expected Column Position')}: expected {m.get('Expected') or 'nothing'}, "
            f"found {m.get('Found') or 'nothing'}"
            for m in mismatched[:SAMPLE_SIZE]
            if isinstance(m, dict)
        ]
        return f" ({'; '.join(parts)})" if parts else ""
    return ""


def _sample(details: dict) -> list:
    values = details.get("partial_unexpected_list")
    if values is None:
        mismatched = (details.get("details") or {}).get("mismatched")
        values = mismatched.get("unexpected") if isinstance(mismatched, dict) else None
    sample: list = []
    for value in values or []:
        if value not in sample:  # GX lists the first failing rows; repeats say nothing new
            sample.append(value)
        if len(sample) == SAMPLE_SIZE:
            break
    return sample


def _percent(part: int, whole: int) -> str:
    if whole == 0:
        return "n/a"
    pct = 100.0 * part / whole
    if pct == 0 or pct >= 1:
        return f"{pct:.1f}%"
    return f"{pct:.2g}%"


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) >= 1e4:
            return f"{value:,.0f}"
        return f"{value:.10g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value)
    return str(value)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _finding_dict(finding: Finding) -> dict[str, Any]:
    return {
        "expectation": finding.expectation,
        "column": finding.column,
        "severity": finding.severity,
        "observed": finding.observed,
        "unexpected_sample": finding.unexpected_sample,
    }


def _report_items(reports: Mapping[str, dict] | Sequence[dict | GateResult]) -> list[tuple[str, dict]]:
    if isinstance(reports, Mapping):
        pairs = [(str(name), report.report if isinstance(report, GateResult) else report) for name, report in reports.items()]
    else:
        pairs = []
        for item in reports:
            report = item.report if isinstance(item, GateResult) else item
            name = (report.get("meta") or {}).get("dataset") or report.get("suite_name")
            pairs.append((str(name), report))
    for name, report in pairs:
        if not isinstance(report, Mapping) or "results" not in report:
            raise TypeError(f"Report for {name} is not a GX validation result (no 'results')")
    return pairs


# --- custom expectation: one column equals the product of others ---------------------------------

_CUSTOM_REGISTERED = False


def _register_custom_expectations() -> None:
    """Register ``expect_multicolumn_product_to_equal_column``.

    GX has no built-in row-wise product check (Sales = Quantity * UnitPrice,
    TotalSales = AvgOrderValue * OrderCount). Defining a MulticolumnMapExpectation plus its
    map metric registers both by name, so suites use it like any core expectation and it
    reports unexpected counts, samples and Data Docs like one.
    """
    global _CUSTOM_REGISTERED
    if _CUSTOM_REGISTERED:
        return

    from great_expectations.compatibility import pydantic
    from great_expectations.execution_engine import PandasExecutionEngine
    from great_expectations.expectations.expectation import MulticolumnMapExpectation
    from great_expectations.expectations.metrics.map_metric_provider import (
        MulticolumnMapMetricProvider,
    )
    from great_expectations.expectations.metrics.map_metric_provider.multicolumn_condition_partial import (
        multicolumn_condition_partial,
    )
    from great_expectations.render import RenderedStringTemplateContent
    from great_expectations.render.components import LegacyRendererType
    from great_expectations.render.renderer.renderer import renderer

    class MulticolumnValuesProductMatches(MulticolumnMapMetricProvider):
        condition_metric_name = "multicolumn_values.product_matches"
        condition_domain_keys = (
            "batch_id",
            "table",
            "column_list",
            "row_condition",
            "condition_parser",
            "ignore_row_if",
        )
        condition_value_keys = ("product_column", "rtol", "atol")

        @multicolumn_condition_partial(engine=PandasExecutionEngine)
        def _pandas(cls, column_list, product_column, rtol, atol, **kwargs):
            factors = [c for c in column_list.columns if c != product_column]
            values = column_list[factors].to_numpy(dtype="float64", na_value=np.nan)
            expected = np.prod(values, axis=1)
            actual = column_list[product_column].to_numpy(dtype="float64", na_value=np.nan)
            matches = np.isclose(actual, expected, rtol=float(rtol), atol=float(atol), equal_nan=False)
            return pd.Series(matches, index=column_list.index)

    class ExpectMulticolumnProductToEqualColumn(MulticolumnMapExpectation):
        """Expect product_column to equal the product of the other columns of column_list.

        Row-wise |product_column - product| <= atol + rtol * |product| (numpy.isclose).
        """

        product_column: str = pydantic.Field(description="The column holding the product")
        rtol: float = pydantic.Field(default=1e-9, description="Relative tolerance")
        atol: float = pydantic.Field(default=0.0, description="Absolute tolerance")

        map_metric = "multicolumn_values.product_matches"
        success_keys = ("mostly", "product_column", "rtol", "atol")
        args_keys = ("column_list", "product_column")
        library_metadata = {"maturity": "experimental", "tags": ["pipeline"], "contributors": []}

        @pydantic.root_validator(skip_on_failure=True)
        def _product_column_in_list(cls, values):
            columns = values.get("column_list") or []
            if values.get("product_column") not in columns:
                raise ValueError("product_column must be one of column_list")
            return values

        @classmethod
        @renderer(renderer_type=LegacyRendererType.PRESCRIPTIVE)
        def _prescriptive_renderer(cls, configuration=None, result=None, runtime_configuration=None, **kwargs):
            runtime_configuration = runtime_configuration or {}
            kw = configuration.kwargs if configuration else {}
            product = kw.get("product_column")
            factors = [c for c in kw.get("column_list", []) if c != product]
            return [
                RenderedStringTemplateContent(
                    content_block_type="string_template",
                    string_template={
                        "template": "$product_column must equal $factors (relative tolerance $rtol, absolute $atol).",
                        "params": {
                            "product_column": product,
                            "factors": " × ".join(map(str, factors)),
                            "rtol": kw.get("rtol", 1e-9),
                            "atol": kw.get("atol", 0.0),
                        },
                        "styling": runtime_configuration.get("styling"),
                    },
                )
            ]

    _CUSTOM_REGISTERED = True
