"""One validation result for a dataset validated in partitions.

Line-level datasets (10-100 million lines) are validated one partition at a time, possibly in
other processes or on Dask workers; ``merge_reports`` turns the partitions' GX results into the
result validating the whole dataset at once would have given: the same success per expectation,
the same counts, the first unexpected values in row order, recomputed statistics and gate, in
GX's own JSON form so that Data Docs render it.

A partition's result only holds counts and a sample, so an expectation can be merged only when
its verdict on the whole follows from those. Row-wise checks (each row judged alone: nulls,
ranges, patterns, Sales = Quantity x UnitPrice) add up; the row count adds up; sum, min and max
combine; the schema is the same in every partition. Anything that looks at several rows at once
(uniqueness, order, a mean or median) does not, and merging a suite that has one raises
ValueError naming it, so that such a dataset is validated whole instead of being passed wrongly.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from typing import Any

from customer_segments.tasks.runtime.quality.findings import CRITICAL, WARNING
from customer_segments.tasks.runtime.quality.validation import RESULT_FORMAT, GateResult, gate_result

# Each row is judged on its own values only (GX core map expectations and the project's product
# check), so a partition's unexpected and missing counts are its share of the whole's.
ROW_WISE = frozenset(
    {
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_null",
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_not_be_in_set",
        "expect_column_values_to_match_regex",
        "expect_column_values_to_not_match_regex",
        "expect_column_values_to_match_regex_list",
        "expect_column_values_to_not_match_regex_list",
        "expect_column_values_to_match_like_pattern",
        "expect_column_values_to_not_match_like_pattern",
        "expect_column_values_to_match_like_pattern_list",
        "expect_column_values_to_not_match_like_pattern_list",
        "expect_column_values_to_match_strftime_format",
        "expect_column_values_to_be_dateutil_parseable",
        "expect_column_values_to_be_json_parseable",
        "expect_column_values_to_match_json_schema",
        "expect_column_value_lengths_to_be_between",
        "expect_column_value_lengths_to_equal",
        "expect_column_pair_values_to_be_equal",
        "expect_column_pair_values_a_to_be_greater_than_b",
        "expect_column_pair_values_to_be_in_set",
        "expect_multicolumn_sum_to_equal",
        "expect_multicolumn_values_to_be_equal",
        "expect_select_column_values_to_be_unique_within_record",
        "expect_multicolumn_product_to_equal_column",
    }
)

# GX checks a column's dtype once (observed_value), except for object columns, where it checks
# each value's type (a map result with counts): either way no row depends on another.
TYPE_CHECKS = frozenset({"expect_column_values_to_be_of_type", "expect_column_values_to_be_in_type_list"})

# The same in every partition of one dataset: partitions share the columns and their dtypes.
SCHEMA = frozenset(
    {
        "expect_table_columns_to_match_set",
        "expect_table_columns_to_match_ordered_list",
        "expect_table_column_count_to_equal",
        "expect_table_column_count_to_be_between",
        "expect_column_to_exist",
        "expect_column_type_to_be",
    }
)

ROW_COUNT = frozenset({"expect_table_row_count_to_be_between", "expect_table_row_count_to_equal"})

# The whole column's statistic follows from the partitions' ones.
AGGREGATES = {
    "expect_column_sum_to_be_between": "sum",
    "expect_column_min_to_be_between": "min",
    "expect_column_max_to_be_between": "max",
}

# GX marks every row of a duplicated value (pandas duplicated(keep=False)); a duplicate whose
# rows are in two partitions is invisible to both. Mergeable only when the partitions were split
# by (a subset of) the checked columns, so that all rows of one value share a partition.
UNIQUENESS = frozenset({"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"})

# Why the others cannot be merged; the message tells the caller to validate the dataset whole.
NOT_MERGEABLE = {
    "expect_column_values_to_be_increasing": "compares each row with the previous one, which for a partition's "
    "first row lies in another partition",
    "expect_column_values_to_be_decreasing": "compares each row with the previous one, which for a partition's "
    "first row lies in another partition",
    "expect_column_value_z_scores_to_be_less_than": "judges each value against the whole column's mean and "
    "standard deviation",
    "expect_column_values_to_not_be_outliers": "judges each value against statistics of the whole column",
    "expect_column_mean_to_be_between": "a mean of partition means needs each partition's count of non-null values, "
    "which its result does not hold",
    "expect_column_median_to_be_between": "the median of the whole does not follow from the partitions' medians",
    "expect_column_quantile_values_to_be_between": "quantiles of the whole do not follow from the partitions' quantiles",
    "expect_column_stdev_to_be_between": "the standard deviation of the whole needs each partition's count and mean",
    "expect_column_unique_value_count_to_be_between": "a value may occur in several partitions, so distinct counts "
    "do not add up",
    "expect_column_proportion_of_unique_values_to_be_between": "a value may occur in several partitions, so "
    "distinct counts do not add up",
    "expect_column_proportion_of_non_null_values_to_be_between": "a proportion of proportions needs each "
    "partition's row count, which its result does not hold",
    "expect_column_most_common_value_to_be_in_set": "the most common value of the whole does not follow from the "
    "partitions' most common values",
    "expect_table_row_count_to_equal_other_table": "compares with another table's row count",
}

_MAP_KEYS = frozenset(
    {
        "element_count",
        "unexpected_count",
        "unexpected_percent",
        "partial_unexpected_list",
        "missing_count",
        "missing_percent",
        "unexpected_percent_total",
        "unexpected_percent_nonmissing",
    }
)


def merge_reports(reports: Sequence[dict], dataset: str, *, partitioned_by: Iterable[str] = ()) -> dict:
    """The whole dataset's GX result from its partitions' results (``validate(...).report``).

    ``reports`` are in row order (the sample of unexpected values is the first rows'), all from
    the same suite with the same parameters. ``partitioned_by`` names columns by which the rows
    were split so that rows with equal values in them are always in the same partition (a hash
    partitioning, e.g. Dask's shuffle on them); uniqueness of columns that include them can then
    be merged. Raises ValueError when the reports do not match or an expectation cannot be merged.
    """
    if not reports:
        raise ValueError(f"No partition results to merge for dataset {dataset}")
    _check_same_run(reports, dataset)
    groups = _aligned(reports)
    keys = {partitioned_by} if isinstance(partitioned_by, str) else {str(c) for c in partitioned_by}
    _check_mergeable([group[0]["expectation_config"] for group in groups], keys, dataset)

    results = [_merge_one(group) for group in groups]
    # GX lists first the expectations whose metrics could not be computed (see Validator
    # .graph_validate), the others in suite order; so would the whole's result.
    results.sort(key=lambda r: not _metric_failed(r))

    first = reports[0]
    merged = {key: copy.deepcopy(value) for key, value in first.items() if key != "results"}
    statistics = _statistics(results)
    merged["success"] = statistics["successful_expectations"] == statistics["evaluated_expectations"]
    merged["statistics"] = statistics
    merged["results"] = results
    meta = merged.setdefault("meta", {})
    meta["partitions"] = len(reports)
    schemas = [(r.get("meta") or {}).get("dtypes") for r in reports]
    if all(isinstance(schema, dict) for schema in schemas):
        # A column is in the dataset only when every partition has it.
        meta["dtypes"] = {c: t for c, t in schemas[0].items() if all(c in schema for schema in schemas)}
    rows = _rows(reports)
    if rows is not None:
        meta["rows"] = rows
    meta["gate"] = _gate_meta(results, (first.get("meta") or {}).get("gate") or {})
    return merged


def merged_gate(
    reports: Sequence[dict],
    dataset: str,
    facts: Mapping[str, Any] | None = None,
    *,
    dtypes: Mapping[str, str] | None = None,
    partitioned_by: Iterable[str] = (),
) -> GateResult:
    """The GateResult ``validate`` gives for the whole dataset, from its partitions' results.

    ``dtypes`` (column name to dtype, as ``str(df.dtypes[c])``; a Dask frame's ``dtypes``) lets
    the findings name a wrong dtype and a missing column exactly as ``validate`` does; without
    it, they are taken from ``meta.dtypes`` when the reports hold one, else inferred from the
    results (the observed column list and types), which names a nullable dtype by GX's scalar
    type (``int64`` for ``Int64``).
    """
    started = time.perf_counter()
    report = merge_reports(reports, dataset, partitioned_by=partitioned_by)
    known = dtypes if dtypes is not None else (report.get("meta") or {}).get("dtypes") or _inferred_dtypes(report)
    return gate_result(dataset, report, {str(c): str(t) for c, t in known.items()}, facts, started)


# --- checks -------------------------------------------------------------------------------------


def _check_same_run(reports: Sequence[dict], dataset: str) -> None:
    for number, report in enumerate(reports):
        if not isinstance(report, Mapping) or not isinstance(report.get("results"), list):
            raise ValueError(f"Partition {number} of {dataset}: not a GX validation result (no 'results' list)")
        meta = report.get("meta") or {}
        if meta.get("dataset") not in (None, dataset):
            raise ValueError(f"Partition {number} was validated as dataset {meta['dataset']}, not {dataset}")
        if report.get("suite_name") != reports[0].get("suite_name"):
            raise ValueError(
                f"Partition {number} of {dataset} was validated with suite {report.get('suite_name')}, "
                f"partition 0 with {reports[0].get('suite_name')}"
            )
        parameters = meta.get("expectation_parameters")
        first = (reports[0].get("meta") or {}).get("expectation_parameters")
        if parameters != first:
            # The usual cause: run_date left to default to "now", evaluated once per partition.
            raise ValueError(
                f"Partitions of {dataset} were validated with different parameters: partition 0 with {first}, "
                f"partition {number} with {parameters}; pass the same facts (e.g. a fixed run_date) to every partition"
            )


def _aligned(reports: Sequence[dict]) -> list[list[dict]]:
    """Each expectation's results, one per partition.

    Matched by position; GX lists an expectation whose metric failed first, so a partition where
    one failed (and others did not) is matched by configuration instead. Anything else is an error.
    """
    first = reports[0]["results"]
    first_keys = [_config_key(r) for r in first]
    groups = [[r] for r in first]
    for number, report in enumerate(reports[1:], start=1):
        results = report["results"]
        keys = [_config_key(r) for r in results]
        if keys == first_keys:
            for group, result in zip(groups, results):
                group.append(result)
            continue
        if sorted(keys) != sorted(first_keys) or len(set(keys)) != len(keys):
            raise ValueError(_mismatch(first, results, number))
        by_key = dict(zip(keys, results))
        for group, key in zip(groups, first_keys):
            group.append(by_key[key])
    return groups


def _mismatch(first: list[dict], other: list[dict], number: int) -> str:
    if len(first) != len(other):
        return (
            f"Partition {number} has {len(other)} expectation results, partition 0 has {len(first)}; "
            "partitions must be validated with the same suite"
        )
    theirs = {_config_key(r) for r in other}
    mine = {_config_key(r) for r in first}
    changed = [(position, r) for position, r in enumerate(first) if _config_key(r) not in theirs]
    instead = [r for r in other if _config_key(r) not in mine]
    if changed and instead:
        position, result = changed[0]
        return (
            f"Expectation {position + 1} ({_label(result['expectation_config'])}) differs between partition 0 and "
            f"partition {number}: {_canonical(result['expectation_config'])} vs "
            f"{_canonical(instead[0]['expectation_config'])}"
        )
    return f"Partition {number} lists the same expectations as partition 0 in another order, some of them twice"


def _check_mergeable(configs: list[dict], partitioned_by: set[str], dataset: str) -> None:
    problems = []
    for config in configs:
        kind = config.get("type", "?")
        if kind in ROW_WISE or kind in TYPE_CHECKS or kind in SCHEMA or kind in ROW_COUNT or kind in AGGREGATES:
            continue
        if kind in UNIQUENESS:
            if partitioned_by and partitioned_by <= set(_domain(config)):
                continue
            reason = (
                "a duplicate whose rows are in two partitions is invisible to both (mergeable only with "
                f"partitioned_by naming some of {', '.join(_domain(config))} when the rows were split by them)"
            )
        else:
            reason = NOT_MERGEABLE.get(kind, "no merge rule is known for it")
        problems.append(f"{_label(config)}: {reason}")
    if problems:
        raise ValueError(
            f"The {dataset} suite cannot be checked partition by partition; validate the dataset whole. "
            f"Not mergeable: {'; '.join(problems)}"
        )


# --- one expectation ----------------------------------------------------------------------------


def _merge_one(group: list[dict]) -> dict:
    config = group[0]["expectation_config"]
    kind = config.get("type")
    raised = next((r for r in group if _raised(r)), None)
    if raised is not None:
        # The whole would have raised too (the same code on a superset of the rows): keep GX's
        # own exception, and no counts from the partitions that did not raise.
        merged = copy.deepcopy(raised)
        merged["success"] = False
        return merged
    if kind in ROW_COUNT:
        return _merge_row_count(group, config)
    if kind in AGGREGATES:
        return _merge_aggregate(group, config, AGGREGATES[kind])
    if kind in SCHEMA or (kind in TYPE_CHECKS and not all(_is_map(r) for r in group)):
        return _merge_schema(group)
    return _merge_map(group, config)


def _merge_map(group: list[dict], config: dict) -> dict:
    """Counts add up; percents and success as GX's ``_format_map_output`` and ``_mostly_success``."""
    keys = set(group[0].get("result") or {})
    for result in group:
        if set(result.get("result") or {}) != keys:
            raise ValueError(f"{_label(config)}: partitions' results have different fields; cannot merge")
    if not {"element_count", "unexpected_count"} <= keys or keys - _MAP_KEYS:
        raise ValueError(
            f"{_label(config)}: a map result with fields {sorted(keys)} cannot be merged; partitions must be "
            f"validated with result_format {RESULT_FORMAT['result_format']}"
        )
    element = sum(_count(r, "element_count", config) for r in group)
    unexpected = sum(_count(r, "unexpected_count", config) for r in group)
    sample: list = []
    limit = int(RESULT_FORMAT["partial_unexpected_count"])
    for result in group:
        sample.extend(result["result"].get("partial_unexpected_list") or [])
        if len(sample) >= limit:
            break
    mostly = (config.get("kwargs") or {}).get("mostly")
    mostly = 1.0 if mostly is None else float(mostly)  # GX's default

    out: dict[str, Any] = {"element_count": element, "unexpected_count": unexpected}
    if "missing_count" in keys:
        # ColumnMapExpectation._validate / MulticolumnMapExpectation._validate: only the rows
        # considered (non-null, or not filtered by ignore_row_if) count towards mostly.
        missing = sum(_count(r, "missing_count", config) for r in group)
        considered = element - missing
        total_pct = unexpected / element * 100 if element > 0 else None
        missing_pct = missing / element * 100 if element > 0 else None
        nonmissing_pct = unexpected / considered * 100 if element > 0 and considered > 0 else None
        out["unexpected_percent"] = nonmissing_pct
        if "partial_unexpected_list" in keys:
            out["partial_unexpected_list"] = sample[:limit]
        out.update(
            missing_count=missing,
            missing_percent=missing_pct,
            unexpected_percent_total=total_pct,
            unexpected_percent_nonmissing=nonmissing_pct,
        )
        success = True if element == 0 or considered == 0 else _mostly_success(considered, unexpected, mostly)
    else:
        # expect_column_values_to_(not_)be_null report no missing count: every row is considered.
        out["unexpected_percent"] = unexpected / element * 100 if element > 0 else None
        if "partial_unexpected_list" in keys:
            out["partial_unexpected_list"] = sample[:limit]
        success = True if element == 0 else (element - unexpected) / element >= mostly
    return _with(group[0], success, out)


def _merge_row_count(group: list[dict], config: dict) -> dict:
    observed = sum(_count(r, "observed_value", config) for r in group)
    kwargs = config.get("kwargs") or {}
    if config.get("type") == "expect_table_row_count_to_equal":
        success = observed == _evaluated(kwargs.get("value"), config)
    else:
        success = _between(observed, kwargs, config)
    return _with(group[0], success, {**group[0].get("result", {}), "observed_value": observed})


def _merge_aggregate(group: list[dict], config: dict, how: str) -> dict:
    # An empty or all-null partition has no min or max (None); it adds nothing to the whole.
    values = [r["result"].get("observed_value") for r in group if r["result"].get("observed_value") is not None]
    if not values:
        observed = None
    elif how == "sum":
        observed = sum(values) if all(isinstance(v, int) for v in values) else math.fsum(values)
    else:
        pick = min if how == "min" else max
        observed = pick(values, key=_comparable)
    return _with(group[0], _between(observed, config.get("kwargs") or {}, config),
                 {**group[0].get("result", {}), "observed_value": observed})


def _merge_schema(group: list[dict]) -> dict:
    """Every partition sees the same columns; if they disagree, the failing one speaks."""
    chosen = next((r for r in group if not r.get("success")), group[0])
    return copy.deepcopy(chosen)


def _with(template: dict, success: bool, result: dict) -> dict:
    merged = copy.deepcopy(template)
    merged["success"] = bool(success)
    merged["result"] = result
    return merged


# --- GX's arithmetic ----------------------------------------------------------------------------


def _mostly_success(considered: int, unexpected: int, mostly: float) -> bool:
    # great_expectations/expectations/expectation.py _mostly_success, in floats as there.
    return (float(considered) - float(unexpected)) / float(considered) >= mostly


def _between(value: Any, kwargs: Mapping[str, Any], config: dict) -> bool:
    """BatchExpectation._validate_metric_value_between on an observed value from JSON."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    low = _evaluated(kwargs.get("min_value"), config)
    high = _evaluated(kwargs.get("max_value"), config)
    if isinstance(value, str) or any(isinstance(b, (str, date)) for b in (low, high)):
        # JSON holds a datetime metric as ISO text; GX compares it as a datetime, parsing the bounds.
        value, low, high = (_timestamp(v, config) if v is not None else None for v in (value, low, high))
    above = True if low is None else (value > low if kwargs.get("strict_min") else value >= low)
    below = True if high is None else (value < high if kwargs.get("strict_max") else value <= high)
    return bool(above and below)


def _comparable(value: Any) -> Any:
    if isinstance(value, str):
        import pandas as pd

        try:
            return pd.Timestamp(value)
        except ValueError:
            return value
    return value


def _timestamp(value: Any, config: dict) -> Any:
    import pandas as pd

    try:
        return pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{_label(config)}: cannot compare {value!r} as a timestamp: {exc}") from None


def _evaluated(value: Any, config: dict) -> Any:
    if isinstance(value, dict):
        raise ValueError(f"{_label(config)}: parameter {value} was not evaluated in the partition results")
    return value


def _statistics(results: list[dict]) -> dict:
    # great_expectations/validator/validation_statistics.py calc_validation_statistics
    evaluated = len(results)
    successful = sum(1 for r in results if r.get("success"))
    return {
        "evaluated_expectations": evaluated,
        "successful_expectations": successful,
        "unsuccessful_expectations": evaluated - successful,
        "success_percent": successful / evaluated * 100 if evaluated else None,
    }


# --- report-level helpers -----------------------------------------------------------------------


def _gate_meta(results: list[dict], previous: Mapping[str, Any]) -> dict:
    """meta.gate as validation.validate builds it: failed expectations counted by severity."""
    severities = [_severity(r) for r in results if not r.get("success")]
    critical = severities.count(CRITICAL)
    gate = dict(previous)
    gate.update(success=critical == 0, failed_critical=critical, failed_warning=severities.count(WARNING))
    gate.setdefault("rule", "fails only when an expectation of severity critical fails")
    return gate


def _severity(result: dict) -> str:
    # As findings.finding: an expectation without a severity is critical.
    return str((result.get("expectation_config") or {}).get("severity") or CRITICAL)


def _rows(reports: Sequence[dict]) -> int | None:
    """Rows of the whole, when every partition's result shows its row count."""
    total = 0
    for report in reports:
        count = None
        for result in report["results"]:
            config = result.get("expectation_config") or {}
            details = result.get("result") or {}
            if _raised(result) or (config.get("kwargs") or {}).get("row_condition"):
                continue
            if config.get("type") in ROW_COUNT and isinstance(details.get("observed_value"), int):
                count = details["observed_value"]
            elif config.get("type") in ROW_WISE | TYPE_CHECKS and isinstance(details.get("element_count"), int):
                count = details["element_count"]
            if count is not None:
                break
        if count is None:
            return None
        total += count
    return total


def _inferred_dtypes(report: dict) -> dict[str, str]:
    """Columns the results show to exist, with the dtype GX observed where it checked one.

    A column exists when GX listed it (table column expectations) or evaluated an expectation on
    it without error; this keeps findings from calling a column missing when something else raised.
    """
    dtypes: dict[str, str] = {}
    for result in report["results"]:
        config = result.get("expectation_config") or {}
        details = result.get("result") or {}
        if _raised(result):
            continue
        if config.get("type") in ("expect_table_columns_to_match_ordered_list", "expect_table_columns_to_match_set"):
            for column in details.get("observed_value") or []:
                dtypes.setdefault(str(column), "")
        for column in _domain(config):
            dtypes.setdefault(column, "")
    for result in report["results"]:
        config = result.get("expectation_config") or {}
        column = (config.get("kwargs") or {}).get("column")
        if config.get("type") in TYPE_CHECKS and column is not None and not _raised(result):
            details = result.get("result") or {}
            # GX checks values one by one only for object columns.
            dtypes[str(column)] = str(details["observed_value"]) if "observed_value" in details else "object"
    return dtypes


def _raised(result: dict) -> bool:
    # GX's exception_info is either one record or one per failed metric.
    info = result.get("exception_info") or {}
    if info.get("raised_exception"):
        return True
    return any(isinstance(v, dict) and v.get("raised_exception") for v in info.values())


def _metric_failed(result: dict) -> bool:
    # A failed metric is recorded per metric id; an error in the expectation's own _validate is
    # recorded flat and keeps its place.
    info = result.get("exception_info") or {}
    return any(isinstance(v, dict) and v.get("raised_exception") for v in info.values())


def _is_map(result: dict) -> bool:
    return "unexpected_count" in (result.get("result") or {})


def _count(result: dict, key: str, config: dict) -> int:
    value = (result.get("result") or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{_label(config)}: a partition's {key} is {value!r}, not a count; cannot merge")
    return value


def _domain(config: dict) -> list[str]:
    kwargs = config.get("kwargs") or {}
    if kwargs.get("column") is not None:
        return [str(kwargs["column"])]
    if kwargs.get("column_A") is not None:
        return [str(kwargs["column_A"]), str(kwargs.get("column_B"))]
    if str(config.get("type", "")).startswith("expect_table_"):
        return []  # their column lists are expected values, not columns read
    return [str(c) for c in kwargs.get("column_list") or []]


def _label(config: Mapping[str, Any]) -> str:
    columns = _domain(dict(config))
    where = f" on {', '.join(columns)}" if columns else ""
    return f"{config.get('type', '?')}{where}"


def _config_key(result: dict) -> str:
    return _canonical(result.get("expectation_config"))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
