"""Validating a line-level dataset in partitions and merging the results equals validating it whole."""

from __future__ import annotations

import copy
import json
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
from test_quality import RUN, clean_frame, raw_frame

from customer_segments.tasks.runtime.quality.docs import build_data_docs
from customer_segments.tasks.runtime.quality.merge import merge_reports, merged_gate
from customer_segments.tasks.runtime.quality.validation import validate

# --- frames with planted problems ---------------------------------------------------------------


def raw_broken() -> pd.DataFrame:
    df = raw_frame()
    df.loc[0, "InvoiceNo"] = "536365.0"             # regex mismatch (warning)
    df.loc[3, "InvoiceNo"] = None                   # null invoice (critical)
    df.loc[1, "UnitPrice"] = -11062.06              # negative price (critical and warning)
    df.loc[17, "UnitPrice"] = -1.0
    df.loc[2, "InvoiceDate"] = pd.Timestamp("2012-01-15 09:00")  # after the run date
    df.loc[15, "InvoiceDate"] = pd.Timestamp("2011-12-24 10:00")
    df.loc[[5, 9, 12], "StockCode"] = None
    df.loc[[4, 6, 10, 11, 13, 14, 16], "CustomerID"] = None     # 8 of 20 missing: under 40%
    df.loc[8, "CustomerID"] = "17850.0"
    df.loc[19, "Quantity"] = 80995                  # more than 10,000 units (warning)
    return df


def raw_missing_column() -> pd.DataFrame:
    return raw_frame().drop(columns=["InvoiceNo"]).assign(Extra=1)


def raw_wrong_dtypes() -> pd.DataFrame:
    df = raw_frame().astype({"Quantity": "float64"})
    df["InvoiceDate"] = df["InvoiceDate"].dt.strftime("%Y-%m-%d %H:%M").astype("str")
    return df


def raw_object_quantity() -> pd.DataFrame:
    # GX checks an object column's type value by value: a map result with counts.
    return raw_frame().astype({"Quantity": object})


def raw_empty() -> pd.DataFrame:
    return raw_frame().head(0)


def raw_price_one_half_fails() -> pd.DataFrame:
    # 2 negative prices of 2,000 (0.1%) pass "mostly 0.999"; both in the first half (0.2%) fail
    # there. Customers: 700 missing of 2,000 (35%) pass "mostly 0.6"; all in the first half, 70%.
    df = raw_frame(2000)
    df.loc[[10, 20], "UnitPrice"] = -1.0
    df.loc[:699, "CustomerID"] = None
    return df


def raw_price_crossed_combined() -> pd.DataFrame:
    # 3 negative prices of 2,000 (0.15%) fail; the second half alone (1 of 1,000, 0.1%) passes.
    df = raw_frame(2000)
    df.loc[[10, 20, 1500], "UnitPrice"] = -1.0
    return df


def clean_broken() -> pd.DataFrame:
    df = clean_frame()
    df.loc[3, "Sales"] = df.loc[3, "Sales"] * (1 + 1e-6)       # Sales != Quantity x UnitPrice
    df.loc[4, "Quantity"] = 0                                  # not positive, and Sales is off
    df.loc[[5, 14], "CustomerID"] = None
    df.loc[0, "InvoiceNo"] = "C" + df.loc[0, "InvoiceNo"]      # a cancellation left in (warning)
    df.loc[[7, 16], "UnitPrice"] = 0.0                         # free lines (warning) ...
    df.loc[[7, 16], "Sales"] = 0.0
    df.loc[9, "UnitPrice"] = -2.0                              # ... and a negative price
    df.loc[9, "Sales"] = -12.0
    df.loc[17, "InvoiceDate"] = pd.Timestamp("2011-12-01")     # on the cutoff, not before it
    return df


def clean_missing_sales() -> pd.DataFrame:
    return clean_frame().drop(columns=["Sales"])


def clean_wrong_dtypes() -> pd.DataFrame:
    return clean_frame().astype({"Quantity": "float64", "Sales": "float32"})


def clean_empty() -> pd.DataFrame:
    return clean_frame().head(0)


CASES = {
    "raw_valid": ("raw_invoices", raw_frame),
    "raw_broken": ("raw_invoices", raw_broken),
    "raw_missing_column": ("raw_invoices", raw_missing_column),
    "raw_wrong_dtypes": ("raw_invoices", raw_wrong_dtypes),
    "raw_object_quantity": ("raw_invoices", raw_object_quantity),
    "raw_empty": ("raw_invoices", raw_empty),
    "raw_price_one_half_fails": ("raw_invoices", raw_price_one_half_fails),
    "raw_price_crossed_combined": ("raw_invoices", raw_price_crossed_combined),
    "clean_valid": ("clean_invoices", clean_frame),
    "clean_broken": ("clean_invoices", clean_broken),
    "clean_missing_sales": ("clean_invoices", clean_missing_sales),
    "clean_wrong_dtypes": ("clean_invoices", clean_wrong_dtypes),
    "clean_empty": ("clean_invoices", clean_empty),
}


def bounds(n: int, split: str) -> list[tuple[int, int]]:
    """Row ranges of the partitions, in row order."""
    if split == "halves":
        cuts = [0, n // 2, n]
    elif split == "thirds":
        cuts = [0, n // 3, 2 * n // 3, n]
    elif split == "uneven_with_empty":
        first = min(1, n)
        cuts = [0, first, first, max(first, n - 3), n]  # 1 row, none, most, the last 3
    else:
        raise AssertionError(split)
    return list(zip(cuts, cuts[1:]))


SPLITS = ("whole_as_one", "halves", "thirds", "uneven_with_empty")


@lru_cache(maxsize=None)
def frame(case: str) -> pd.DataFrame:
    return CASES[case][1]()


@lru_cache(maxsize=None)
def validated(case: str, start: int | None = None, stop: int | None = None):
    dataset, _ = CASES[case]
    return validate(frame(case).iloc[start:stop], dataset, RUN)


def partition_reports(case: str, split: str) -> list[dict]:
    if split == "whole_as_one":
        return [copy.deepcopy(validated(case).report)]
    return [copy.deepcopy(validated(case, a, b).report) for a, b in bounds(len(frame(case)), split)]


def by_expectation(report: dict) -> dict[str, dict]:
    return {json.dumps(r["expectation_config"], sort_keys=True): r for r in report["results"]}


def exception_message(result: dict) -> str | None:
    info = result["exception_info"]
    if info.get("raised_exception"):
        return info["exception_message"]
    messages = [v["exception_message"] for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]
    return messages[0] if messages else None


def load_with_gx(report: dict):
    from great_expectations.core.expectation_validation_result import expectationSuiteValidationResultSchema

    return expectationSuiteValidationResultSchema.load(report)


# --- merged equals whole ------------------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("case", CASES)
def test_merged_partitions_equal_the_whole(case, split):
    dataset, _ = CASES[case]
    df = frame(case)
    whole = validated(case)
    reports = partition_reports(case, split)
    before = copy.deepcopy(reports)
    merged = merge_reports(reports, dataset)
    assert reports == before  # the partitions' results are left as they were

    # The same expectations in the same order (GX lists those whose metrics failed first).
    assert [r["expectation_config"] for r in merged["results"]] == [r["expectation_config"] for r in whole.report["results"]]
    for key, expected in by_expectation(whole.report).items():
        got = by_expectation(merged)[key]
        label = expected["expectation_config"]["type"], expected["expectation_config"]["kwargs"].get("column")
        assert got["success"] == expected["success"], label
        assert exception_message(got) == exception_message(expected), label
        # Counts, percents, observed values and the first unexpected values in row order.
        assert got["result"] == expected["result"], label

    assert merged["success"] == whole.report["success"]
    assert merged["statistics"] == whole.report["statistics"]
    gate_keys = ("success", "failed_critical", "failed_warning", "rule")
    assert {k: merged["meta"]["gate"][k] for k in gate_keys} == {k: whole.report["meta"]["gate"][k] for k in gate_keys}
    assert merged["meta"]["partitions"] == len(reports)
    assert merged["meta"]["rows"] == len(df)
    assert merged["meta"]["dataset"] == dataset
    json.dumps(merged)  # JSON as it is, like a partition's report

    # GX reads it back as its own result type.
    loaded = load_with_gx(merged)
    assert loaded.success == merged["success"] and len(loaded.results) == len(merged["results"])

    # The gate: verdict and findings in words, with the frame's dtypes and inferred from the results.
    for dtypes in ({str(c): str(t) for c, t in df.dtypes.items()}, None):
        gate = merged_gate(reports, dataset, RUN, dtypes=dtypes)
        assert gate.success == whole.success
        assert gate.evaluated == whole.evaluated
        assert [f.to_dict() for f in gate.failed_critical] == [f.to_dict() for f in whole.failed_critical]
        assert [f.to_dict() for f in gate.failed_warning] == [f.to_dict() for f in whole.failed_warning]
        assert gate.error_message() == whole.error_message()
        assert {k: v for k, v in gate.summary().items() if k != "seconds"} == \
            {k: v for k, v in whole.summary().items() if k != "seconds"}


def test_the_planted_problems_are_seen():
    """The cases above test what they say: verdicts of the whole versus its halves."""
    whole = validated("raw_price_one_half_fails")
    n = len(frame("raw_price_one_half_fails"))
    first_half = validated("raw_price_one_half_fails", 0, n // 2)
    assert whole.success and not first_half.success
    assert {f.column for f in first_half.failed_critical} == {"UnitPrice"}
    assert {f.column for f in first_half.failed_warning} >= {"CustomerID"}

    n = len(frame("raw_price_crossed_combined"))
    assert not validated("raw_price_crossed_combined").success
    assert validated("raw_price_crossed_combined", n // 2, n).success
    merged = merged_gate(partition_reports("raw_price_crossed_combined", "halves"), "raw_invoices", RUN)
    price = [f for f in merged.failed_critical if f.column == "UnitPrice"]
    assert [f.observed for f in price] == ["3 of 2,000 rows (0.15%)"]

    broken = merged_gate(partition_reports("raw_broken", "thirds"), "raw_invoices", RUN)
    assert {f.column for f in broken.failed_critical} == {"InvoiceNo", "StockCode", "UnitPrice", "InvoiceDate"}
    date = next(f for f in broken.failed_critical if f.column == "InvoiceDate")
    assert date.unexpected_sample == ["2012-01-15T09:00:00", "2011-12-24T10:00:00"]

    missing = merged_gate(partition_reports("raw_missing_column", "halves"), "raw_invoices", RUN)
    absent = [f for f in missing.failed_critical if f.expectation == "expect_column_values_to_not_be_null"]
    assert [f.observed for f in absent] == ["column InvoiceNo is missing from the dataset"]

    empty = merged_gate(partition_reports("clean_empty", "thirds"), "clean_invoices", RUN)
    assert not empty.success and [f.expectation for f in empty.failed_critical] == ["expect_table_row_count_to_be_between"]

    product = merged_gate(partition_reports("clean_broken", "uneven_with_empty"), "clean_invoices", RUN)
    sales = next(f for f in product.failed_critical if f.expectation == "expect_multicolumn_product_to_equal_column")
    assert sales.observed == "2 of 18 rows (11.1%)"  # rows 3 and 4, in different partitions


def test_merged_reports_render_in_data_docs(tmp_path):
    raw = merge_reports(partition_reports("raw_broken", "uneven_with_empty"), "raw_invoices")
    clean = merge_reports(partition_reports("clean_missing_sales", "thirds"), "clean_invoices")
    index = build_data_docs({"raw_invoices": raw, "clean_invoices": clean}, tmp_path / "docs")
    assert "raw_invoices" in index.read_text("utf-8") and "clean_invoices" in index.read_text("utf-8")
    raw_page = next((tmp_path / "docs" / "validations" / "raw_invoices").rglob("*.html")).read_text("utf-8")
    assert "536365.0" in raw_page and "-11062.06" in raw_page  # the merged sample of unexpected values
    clean_page = next((tmp_path / "docs" / "validations" / "clean_invoices").rglob("*.html")).read_text("utf-8")
    assert "Quantity × UnitPrice" in clean_page  # the custom expectation renders


# --- what cannot be merged, and mismatched partitions -------------------------------------------


def write_suite(folder, name: str, expectations: list[dict]) -> None:
    for entry in expectations:
        entry.setdefault("severity", "critical")
        entry.setdefault("meta", {"notes": "test"})
    (folder / f"{name}.json").write_text(json.dumps({"name": name, "expectations": expectations}))


def test_uniqueness_and_whole_column_statistics_cannot_be_merged(tmp_path):
    write_suite(tmp_path, "lines", [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "InvoiceNo"}},
        {"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": ["InvoiceNo", "StockCode"]}},
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "UnitPrice", "min_value": 0}},
        {"type": "expect_column_values_to_be_increasing", "kwargs": {"column": "InvoiceDate"}},
    ])
    df = raw_frame()
    df.loc[12, ["InvoiceNo", "StockCode"]] = df.loc[0, ["InvoiceNo", "StockCode"]].to_numpy()
    whole = validate(df, "lines", {}, suites_dir=tmp_path).report
    reports = [validate(part, "lines", {}, suites_dir=tmp_path).report for part in (df.iloc[:10], df.iloc[10:])]
    # Each half alone has no duplicate; the whole has one, split across the halves.
    assert [r["results"][1]["expectation_config"]["type"] for r in reports] == ["expect_compound_columns_to_be_unique"] * 2
    assert [r["results"][1]["success"] for r in reports] == [True, True]
    assert whole["results"][1]["success"] is False

    with pytest.raises(ValueError) as err:
        merge_reports(reports, "lines")
    message = str(err.value)
    assert "cannot be checked partition by partition; validate the dataset whole" in message
    assert "expect_compound_columns_to_be_unique on InvoiceNo, StockCode: a duplicate whose rows are in two " \
           "partitions is invisible to both" in message
    assert "expect_column_mean_to_be_between on UnitPrice" in message
    assert "expect_column_values_to_be_increasing on InvoiceDate" in message
    assert "expect_column_values_to_not_be_null" not in message
    with pytest.raises(ValueError, match="expect_compound_columns_to_be_unique"):
        merged_gate(reports, "lines", {})


def test_uniqueness_merges_when_rows_were_partitioned_by_the_key(tmp_path):
    write_suite(tmp_path, "keyed", [
        {"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": ["InvoiceNo", "StockCode"]}},
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "InvoiceNo"}},
    ])
    df = raw_frame()
    df.loc[12, ["InvoiceNo", "StockCode"]] = df.loc[0, ["InvoiceNo", "StockCode"]].to_numpy()
    whole = validate(df, "keyed", {}, suites_dir=tmp_path).report
    # Hash-partitioned by InvoiceNo: every row of an invoice in the same partition.
    part = pd.util.hash_pandas_object(df["InvoiceNo"], index=False) % 3
    reports = [validate(df[part == p], "keyed", {}, suites_dir=tmp_path).report for p in range(3)]

    with pytest.raises(ValueError, match="partitioned_by naming some of InvoiceNo, StockCode"):
        merge_reports(reports, "keyed")
    with pytest.raises(ValueError, match="expect_column_values_to_be_unique on InvoiceNo"):
        merge_reports(reports, "keyed", partitioned_by=["StockCode"])  # not a key of the second
    merged = merge_reports(reports, "keyed", partitioned_by=["InvoiceNo"])
    for got, expected in zip(merged["results"], whole["results"]):
        assert got["success"] == expected["success"] is False
        for key in ("element_count", "unexpected_count", "missing_count", "unexpected_percent"):
            assert got["result"][key] == expected["result"][key]
        # A sample, not necessarily the first rows: the partitions are not in row order.
        sample = got["result"]["partial_unexpected_list"]
        assert len(sample) == min(5, expected["result"]["unexpected_count"])
        if expected["result"]["unexpected_count"] <= 5:
            assert sorted(map(json.dumps, sample)) == sorted(map(json.dumps, expected["result"]["partial_unexpected_list"]))


def test_sum_min_max_and_row_count_merge_exactly(tmp_path):
    write_suite(tmp_path, "totals", [
        {"type": "expect_table_row_count_to_equal", "kwargs": {"value": 20}},
        {"type": "expect_column_sum_to_be_between", "kwargs": {"column": "Quantity", "min_value": 108, "max_value": 108}},
        {"type": "expect_column_sum_to_be_between", "kwargs": {"column": "UnitPrice", "max_value": 30}},
        {"type": "expect_column_min_to_be_between", "kwargs": {"column": "Quantity", "min_value": 0}},
        {"type": "expect_column_max_to_be_between", "kwargs": {"column": "UnitPrice", "max_value": 2.55}},
        {"type": "expect_column_max_to_be_between",
         "kwargs": {"column": "InvoiceDate", "max_value": "2011-06-01T00:00:00"}},
        {"type": "expect_column_min_to_be_between",
         "kwargs": {"column": "InvoiceDate", "min_value": "2010-01-01T00:00:00", "strict_min": True}},
    ])
    df = raw_frame()
    df["UnitPrice"] = np.linspace(0.1, 3.0, 20)
    whole = validate(df, "totals", {}, suites_dir=tmp_path).report
    parts = [df.iloc[:7], df.iloc[7:7], df.iloc[7:]]
    merged = merge_reports([validate(p, "totals", {}, suites_dir=tmp_path).report for p in parts], "totals")
    assert [r["success"] for r in merged["results"]] == [r["success"] for r in whole["results"]]
    assert [r["success"] for r in whole["results"]] == [True, True, False, False, False, False, True]
    for got, expected in zip(merged["results"], whole["results"]):
        observed = expected["result"]["observed_value"]
        if isinstance(observed, float):  # partition sums added in another order: equal to rounding
            assert got["result"]["observed_value"] == pytest.approx(observed, rel=1e-12)
        else:
            assert got["result"]["observed_value"] == observed
    assert merged["meta"]["rows"] == 20

    write_suite(tmp_path, "median", [{"type": "expect_column_median_to_be_between",
                                      "kwargs": {"column": "Quantity", "min_value": 0}}])
    reports = [validate(p, "median", {}, suites_dir=tmp_path).report for p in parts]
    with pytest.raises(ValueError, match="expect_column_median_to_be_between on Quantity: the median of the whole"):
        merge_reports(reports, "median")


def test_partitions_of_different_runs_or_suites_are_refused():
    df = raw_frame()
    first = validate(df.iloc[:10], "raw_invoices", RUN).report
    later = validate(df.iloc[10:], "raw_invoices", dict(RUN, run_date="2011-12-11")).report
    with pytest.raises(ValueError, match="different parameters.*fixed run_date"):
        merge_reports([first, later], "raw_invoices")
    clean = validate(clean_frame(), "clean_invoices", RUN).report
    with pytest.raises(ValueError, match="validated as dataset clean_invoices, not raw_invoices"):
        merge_reports([first, clean], "raw_invoices")
    with pytest.raises(ValueError, match="not clean_invoices"):
        merge_reports([first], "clean_invoices")
    with pytest.raises(ValueError, match="No partition results"):
        merge_reports([], "raw_invoices")

    # The same suite, but one expectation's configuration differs: named, with both versions.
    edited = copy.deepcopy(validate(df.iloc[10:], "raw_invoices", RUN).report)
    price = next(r for r in edited["results"] if r["expectation_config"]["kwargs"].get("mostly") == 0.999)
    price["expectation_config"]["kwargs"]["mostly"] = 0.99
    with pytest.raises(ValueError, match=r"Expectation \d+ \(expect_column_values_to_be_between on UnitPrice\) differs"):
        merge_reports([first, edited], "raw_invoices")


def test_a_partition_that_raised_makes_the_expectation_fail_with_its_exception():
    df = raw_frame()
    # The second partition lacks a column: GX raises there and lists that expectation first.
    reports = [validate(df.iloc[:10], "raw_invoices", RUN).report,
               validate(df.iloc[10:].drop(columns=["InvoiceNo"]), "raw_invoices", RUN).report]
    assert reports[0]["results"][0]["expectation_config"] != reports[1]["results"][0]["expectation_config"]
    merged = merge_reports(reports, "raw_invoices")
    invoice = merged["results"][0]
    assert invoice["expectation_config"]["kwargs"]["column"] == "InvoiceNo"
    assert invoice["success"] is False and "InvoiceNo" in exception_message(invoice)
    assert invoice["result"] == {}
    columns = [r for r in merged["results"] if r["expectation_config"]["type"] == "expect_table_columns_to_match_set"]
    assert [r["success"] for r in columns] == [False, False]  # the partition that disagrees speaks
    gate = merged_gate(reports, "raw_invoices", RUN)
    assert not gate.success
    critical = [f for f in gate.failed_critical if f.expectation == "expect_table_columns_to_match_set"]
    assert len(critical) == 1 and "missing: InvoiceNo" in critical[0].observed
    assert [f.observed for f in gate.failed_warning if f.column == "InvoiceNo"] == [
        "column InvoiceNo is missing from the dataset"
    ]
