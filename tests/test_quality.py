"""Quality gates: each suite passes a valid frame and names what is wrong in a broken one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from customer_segments.tasks.runtime.quality import validation
from customer_segments.tasks.runtime.quality.docs import build_data_docs
from customer_segments.tasks.runtime.quality.findings import Finding
from customer_segments.tasks.runtime.quality.suites import SuiteError, suites_dir
from customer_segments.tasks.runtime.quality.validation import required_parameters, validate
from support.frames import k_selection_frame

EXPECTATIONS_DIR = suites_dir()

# Each suite and the run-time parameters it refers to.
DATASETS = {
    "raw_invoices": ("run_date",),
    "clean_invoices": ("cutoff",),
    "customer_features": ("k_max",),
    "normalized_features": ("customers",),
    "k_selection": (),
    "cluster_labels": ("customers", "k"),
    "segment_profiles": ("customers", "k"),
    "top_products": (),
    "segment_lineage": ("k",),
    "segment_stability": ("k",),
    "segment_migration": ("customers", "previous_customers"),
    "movers": (),
    "basket_rules": ("basket_max_len", "basket_min_baskets", "basket_min_lift"),
    "recommendations": ("basket_min_lift",),
    "rfm_scores": ("customers",),
    "rfm_profile": ("customers",),
    "propensity_scores": (),
    "propensity_deciles": (),
    "propensity_coefficients": (),
    "chaid_segments": ("chaid_max_depth", "chaid_min_child"),
    "chaid_assignment": (),
    "orders": ("cutoff",),
    "customer_value": (),
    "segment_value": (),
    "clv_model": (),
    "clv_holdout": (),
    "customer_recommendations": (),
    "segment_model": (),
    "customers": (),
}
RUN = {"run_date": "2011-12-10T00:00:00", "cutoff": "2011-12-01T00:00:00", "k_max": 3}


def text(values) -> pd.Series:
    return pd.Series(values, dtype="str")


def raw_frame(n: int = 20) -> pd.DataFrame:
    invoice = [f"{536365 + i // 4}" for i in range(n)]
    invoice[-1] = "C" + invoice[-1]
    return pd.DataFrame(
        {
            "InvoiceNo": text(invoice),
            "StockCode": text(["85123A", "71053", "84406B", "22752"] * (n // 4)),
            "Description": text(["WHITE HANGING HEART T-LIGHT HOLDER"] * (n - 1) + [None]),
            "Quantity": np.array([6] * (n - 1) + [-6], dtype="int64"),
            "InvoiceDate": pd.to_datetime(["2010-12-01 08:26"] * (n // 2) + ["2011-11-30 17:00"] * (n - n // 2)),
            "UnitPrice": np.full(n, 2.55),
            "CustomerID": text(["17850"] * (n - 2) + [None, "13047"]),
            "Country": text(["United Kingdom"] * n),
        }
    )


def clean_frame() -> pd.DataFrame:
    raw = raw_frame()
    clean = raw[(raw["Quantity"] > 0) & raw["CustomerID"].notna()].reset_index(drop=True)
    clean["Sales"] = clean["Quantity"] * clean["UnitPrice"]
    return clean


def features_frame() -> pd.DataFrame:
    total = np.array([100.0, 250.5, 80.25, 1999.99, 12.0])
    orders = np.array([1, 3, 2, 7, 1], dtype="int64")
    return pd.DataFrame(
        {
            "CustomerID": text(["12346", "12347", "12348", "12349", "12350"]),
            "TotalSales": total,
            "OrderCount": orders,
            "AvgOrderValue": total / orders,
        }
    )


def normalized_frame() -> pd.DataFrame:
    features = features_frame()
    ranks = features[["TotalSales", "OrderCount", "AvgOrderValue"]].rank(method="first")
    normalized = (ranks - ranks.mean()) / ranks.std(ddof=1)
    normalized.insert(0, "CustomerID", features["CustomerID"])
    return normalized


def labels_frame(k: int = 3) -> pd.DataFrame:
    features = features_frame()
    normalized = normalized_frame()
    labels = features.copy()
    for name in ("TotalSales", "OrderCount", "AvgOrderValue"):
        labels[f"{name}_norm"] = normalized[name]
    labels["segment"] = np.array([0, 1, 2, 0, 1], dtype="int64") % k
    labels["segment_name"] = text([f"Segment {s}" for s in labels["segment"]])
    labels["segment_id"] = text([f"S{s + 1}" for s in labels["segment"]])
    return labels


def profiles_frame() -> pd.DataFrame:
    size = np.array([2, 2, 1], dtype="int64")
    return pd.DataFrame(
        {
            "segment": np.array([0, 1, 2], dtype="int64"),
            "segment_name": text(["High value", "Frequent, small orders", "Low value"]),
            "segment_id": text(["S1", "S2", "S4"]),
            "size": size,
            "share": size / size.sum(),
            "transition": text(["survived", "split", "emerged"]),
            "stability": [0.9, 0.7, 0.4],
            "center_TotalSales": [0.9, -0.1, -1.2],
            "mean_TotalSales": [1000.0, 150.0, 12.0],
            "median_TotalSales": [1000.0, 150.0, 12.0],
        }
    )


def top_products_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "segment": np.array([0, 0, 1], dtype="int64"),
            "segment_name": text(["High value", "High value", "Low value"]),
            "rank": np.array([1, 2, 1], dtype="int64"),
            "StockCode": text(["85123A", "22752", "85123A"]),
            "Description": text(["WHITE HANGING HEART T-LIGHT HOLDER", None, "WHITE HANGING HEART T-LIGHT HOLDER"]),
            "orders": np.array([5, 3, 1], dtype="int64"),
            "quantity": np.array([60, 12, 6], dtype="int64"),
            "revenue": [153.0, 30.6, 15.3],
        }
    )


def only(findings: list[Finding], expectation: str, column: str | None) -> Finding:
    hits = [f for f in findings if f.expectation == expectation and f.column == column]
    assert len(hits) == 1, findings
    return hits[0]


# --- the suite files ----------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", DATASETS)
def test_suite_file_is_readable_gx_json(dataset):
    spec = json.loads((EXPECTATIONS_DIR / f"{dataset}.json").read_text("utf-8"))
    assert spec["name"] == dataset
    for entry in spec["expectations"]:
        assert set(entry) <= {"type", "kwargs", "severity", "meta", "notes", "description"}
        assert entry["severity"] in {"critical", "warning", "info"}
        assert entry["meta"]["notes"].strip()
    # Loading builds every expectation, so a typo in a suite fails here.
    assert required_parameters(dataset) == DATASETS[dataset]


@pytest.mark.parametrize(
    "dataset, frame, parameters",
    [
        ("raw_invoices", raw_frame, RUN),
        ("clean_invoices", clean_frame, RUN),
        ("customer_features", features_frame, RUN),
        ("normalized_features", normalized_frame, {"customers": 5}),
        ("k_selection", k_selection_frame, {}),
        ("cluster_labels", labels_frame, {"customers": 5, "k": 3}),
        ("segment_profiles", profiles_frame, {"customers": 5, "k": 3}),
        ("top_products", top_products_frame, {}),
    ],
)
def test_valid_frame_passes(dataset, frame, parameters):
    gate = validate(frame(), dataset, parameters)
    assert gate.success, gate.failed_critical
    assert gate.failed_critical == [] and gate.failed_warning == []
    assert gate.dataset == dataset
    suite = json.loads((EXPECTATIONS_DIR / f"{dataset}.json").read_text("utf-8"))
    # Expectations about an optional column the frame does not have are reported as not applicable.
    skipped = gate.report["meta"]["not_applicable"]
    assert all(any(c in entry for c in suite.get("optional_columns", [])) for entry in skipped)
    assert gate.evaluated == len(suite["expectations"]) - len(skipped)
    json.dumps(gate.report)  # JSON-serialisable as it is


# --- raw_invoices -------------------------------------------------------------------------------


def test_raw_broken_values_are_critical_and_name_the_column():
    df = raw_frame()
    df.loc[0, "InvoiceNo"] = "536365.0"
    df.loc[1, "UnitPrice"] = -11062.06
    df.loc[2, "InvoiceDate"] = pd.Timestamp("2012-01-15 09:00")
    gate = validate(df, "raw_invoices", RUN)

    assert not gate.success
    # An invoice number's form is the shop's convention: worth a warning, not a stop.
    invoice = only(gate.failed_warning, "expect_column_values_to_match_regex", "InvoiceNo")
    assert invoice.unexpected_sample == ["536365.0"]
    assert invoice.observed == "1 of 20 rows (5.0%)"
    price = only(gate.failed_critical, "expect_column_values_to_be_between", "UnitPrice")
    assert price.severity == "critical" and price.unexpected_sample == [-11062.06]
    date = only(gate.failed_critical, "expect_column_values_to_be_between", "InvoiceDate")
    assert date.unexpected_sample == ["2012-01-15T09:00:00"]
    assert "InvoiceNo" not in gate.error_message() and "UnitPrice" in gate.error_message()
    # In the user's words first (the suite's notes), the expectation's name last.
    assert "column UnitPrice: Prices are not negative" in gate.error_message()
    assert "[critical: expect_column_values_to_be_between]" in gate.error_message()


def test_raw_unit_price_tolerates_a_few_negatives():
    df = raw_frame(2000)
    df.loc[5, "UnitPrice"] = -1.0  # 0.05% of rows, under the 0.1% the suite allows
    assert validate(df, "raw_invoices", RUN).success
    df.loc[6:9, "UnitPrice"] = -1.0  # 0.25%
    finding = only(validate(df, "raw_invoices", RUN).failed_critical, "expect_column_values_to_be_between", "UnitPrice")
    assert finding.observed == "5 of 2,000 rows (0.25%)"


def test_raw_missing_customers_are_a_warning_only():
    df = raw_frame()
    df.loc[:9, "CustomerID"] = None  # 11 of 20 missing, more than the 40% allowed
    gate = validate(df, "raw_invoices", RUN)

    assert gate.success
    assert gate.failed_critical == []
    warning = only(gate.failed_warning, "expect_column_values_to_not_be_null", "CustomerID")
    assert warning.severity == "warning"
    assert warning.observed == "11 of 20 rows (55.0%)"
    assert warning.unexpected_sample == [None]
    assert gate.report["success"] is False  # GX's own verdict ignores severity
    assert gate.report["meta"]["gate"]["success"] is True


def test_raw_column_set_is_table_level_and_extra_columns_only_warn():
    df = raw_frame().drop(columns=["InvoiceNo"]).assign(Extra=1)
    gate = validate(df, "raw_invoices", RUN)
    columns = only(gate.failed_critical, "expect_table_columns_to_match_set", None)
    assert "missing: InvoiceNo" in columns.observed
    extra = only(gate.failed_warning, "expect_table_columns_to_match_set", None)
    assert "unexpected: Extra" in extra.observed and extra.unexpected_sample == ["Extra"]
    assert validate(raw_frame().assign(Extra=1), "raw_invoices", RUN).success
    absent = only(gate.failed_critical, "expect_column_values_to_not_be_null", "InvoiceNo")
    assert absent.observed == "column InvoiceNo is missing from the dataset"


def test_an_export_without_products_leaves_their_expectations_out_and_says_so():
    """An order-level export: no StockCode, Description or Country; the value given as Sales."""
    df = raw_frame().drop(columns=["StockCode", "Description", "Country", "UnitPrice"]).assign(Sales=1.5)
    gate = validate(df, "raw_invoices", RUN)
    assert gate.success, gate.failed_critical
    skipped = gate.report["meta"]["not_applicable"]
    assert any("StockCode" in entry for entry in skipped) and any("UnitPrice" in entry for entry in skipped)
    assert not any("InvoiceNo" in entry or "CustomerID" in entry for entry in skipped)
    broken = validate(df.assign(Sales=[None] + [1.5] * 19), "raw_invoices", RUN)
    assert only(broken.failed_critical, "expect_column_values_to_not_be_null", "Sales")


def test_raw_quantity_must_be_integer():
    df = raw_frame().astype({"Quantity": "float64"})
    finding = only(validate(df, "raw_invoices", RUN).failed_critical, "expect_column_values_to_be_in_type_list", "Quantity")
    assert finding.observed == "dtype float64"


def test_run_date_accepts_dates_and_both_datetime_units():
    df = raw_frame()
    for frame in (df, df.assign(InvoiceDate=df["InvoiceDate"].astype("datetime64[ns]"))):
        assert validate(frame, "raw_invoices", {"run_date": "2011-12-10"}).success
        assert validate(frame, "raw_invoices", {"run_date": pd.Timestamp("2011-12-10")}).success
        late = validate(frame, "raw_invoices", {"run_date": "2011-06-01"})
        finding = only(late.failed_critical, "expect_column_values_to_be_between", "InvoiceDate")
        assert finding.observed == "10 of 20 rows (50.0%)"
        assert finding.unexpected_sample == ["2011-11-30T17:00:00"]


def test_datetimes_are_compared_in_ns_without_touching_the_callers_frame():
    df = pd.DataFrame({
        "us": pd.to_datetime(["2011-01-01 10:00"]),
        "aware": pd.to_datetime(["2011-01-01 10:00"]).tz_localize("UTC"),
        "far": pd.to_datetime(["3000-01-01"]).astype("datetime64[s]"),  # beyond the ns range
        0: [1],
    })
    before = df.dtypes.to_dict()
    out = validation.comparable_datetimes(df)
    assert str(out["us"].dtype) == "datetime64[ns]" and str(out["aware"].dtype) == "datetime64[ns, UTC]"
    assert str(out["far"].dtype) == "datetime64[s]"
    assert df.dtypes.to_dict() == before
    assert out["us"].iloc[0] == df["us"].iloc[0]


def test_run_date_defaults_to_now():
    gate = validate(raw_frame(), "raw_invoices", {})
    assert gate.success
    assert gate.report["meta"]["expectation_parameters"]["run_date"].startswith("20")


# --- clean_invoices -----------------------------------------------------------------------------


def test_clean_cutoff_parameter_is_substituted():
    df = clean_frame()
    assert validate(df, "clean_invoices", {"cutoff": "2011-12-01"}).success
    gate = validate(df, "clean_invoices", {"cutoff": "2011-11-30T17:00:00"})  # strictly before
    finding = only(gate.failed_critical, "expect_column_values_to_be_between", "InvoiceDate")
    assert finding.unexpected_sample == ["2011-11-30T17:00:00"]
    assert gate.report["meta"]["expectation_parameters"] == {"cutoff": "2011-11-30T17:00:00"}


def test_clean_sales_must_be_quantity_times_price():
    df = clean_frame()
    df.loc[3, "Sales"] = df.loc[3, "Sales"] * (1 + 1e-6)
    df.loc[4, "Quantity"] = 0
    df.loc[5, "CustomerID"] = None
    gate = validate(df, "clean_invoices", RUN)
    product = only(gate.failed_critical, "expect_multicolumn_product_to_equal_column", "Sales")
    assert product.observed == "2 of 18 rows (11.1%)"  # row 3, and row 4 whose quantity changed
    assert product.unexpected_sample[0]["Sales"] == pytest.approx(15.3 * (1 + 1e-6))
    quantity = only(gate.failed_critical, "expect_column_values_to_be_between", "Quantity")
    assert quantity.unexpected_sample == [0]
    customer = only(gate.failed_critical, "expect_column_values_to_not_be_null", "CustomerID")
    assert customer.observed == "1 of 18 rows (5.6%)"


def test_clean_sales_tolerates_float_rounding():
    df = clean_frame()
    df.loc[3, "Sales"] = df.loc[3, "Sales"] * (1 + 1e-12)
    assert validate(df, "clean_invoices", RUN).success


# --- customer_features --------------------------------------------------------------------------


def test_features_broken():
    df = features_frame()
    df.loc[1, "CustomerID"] = "12346"
    df.loc[2, "OrderCount"] = 0
    df.loc[3, "TotalSales"] = np.inf
    df.loc[4, "AvgOrderValue"] = 13.0
    gate = validate(df, "customer_features", {"k_max": 8})
    failed = gate.failed_critical
    assert only(failed, "expect_column_values_to_be_unique", "CustomerID").unexpected_sample == ["12346"]
    assert only(failed, "expect_column_values_to_be_between", "OrderCount").unexpected_sample == [0]
    finite = only(failed, "expect_column_values_to_be_between", "TotalSales")
    assert finite.observed == "1 of 5 rows (20.0%)"
    product = only(failed, "expect_multicolumn_product_to_equal_column", "TotalSales")
    assert {"AvgOrderValue": 13.0, "OrderCount": 1, "TotalSales": 12.0} in product.unexpected_sample
    rows = only(failed, "expect_table_row_count_to_be_between", None)
    assert rows.observed == "5"


# --- normalized_features ------------------------------------------------------------------------


def test_normalized_broken():
    df = normalized_frame()
    df["OrderCount"] = df["OrderCount"] + 0.01
    df.loc[0, "TotalSales"] = 2.5
    df.loc[1, "AvgOrderValue"] = np.nan
    gate = validate(df, "normalized_features", {"customers": 5})
    failed = gate.failed_critical
    assert only(failed, "expect_column_values_to_be_between", "TotalSales").unexpected_sample == [2.5]
    assert only(failed, "expect_column_mean_to_be_between", "OrderCount").observed == "0.01"
    assert only(failed, "expect_column_values_to_not_be_null", "AvgOrderValue").observed == "1 of 5 rows (20.0%)"
    assert only(failed, "expect_column_stdev_to_be_between", "TotalSales").severity == "critical"


# --- cluster_labels -----------------------------------------------------------------------------


def test_cluster_labels_k_parameter():
    df = labels_frame(k=3)
    assert validate(df, "cluster_labels", {"customers": 5, "k": 3}).success
    gate = validate(df, "cluster_labels", {"customers": 5, "k": 4})  # one segment left empty
    empty = only(gate.failed_critical, "expect_column_unique_value_count_to_be_between", "segment")
    assert empty.observed == "3"
    names = only(gate.failed_warning, "expect_column_unique_value_count_to_be_between", "segment_name")
    assert names.severity == "warning"
    gate = validate(df, "cluster_labels", {"customers": 5, "k": 2})  # segment 2 is out of range
    out = only(gate.failed_critical, "expect_column_values_to_be_between", "segment")
    assert out.unexpected_sample == [2]


def test_cluster_labels_row_count_and_duplicates():
    df = labels_frame()
    df.loc[4, "CustomerID"] = "12346"
    gate = validate(df, "cluster_labels", {"customers": 6, "k": 3})
    assert only(gate.failed_critical, "expect_table_row_count_to_equal", None).observed == "5"
    assert only(gate.failed_critical, "expect_column_values_to_be_unique", "CustomerID").unexpected_sample == ["12346"]


# --- segment_profiles, k_selection, top_products ------------------------------------------------


def test_segment_profiles_sums():
    df = profiles_frame()
    df.loc[2, "share"] = 0.3
    gate = validate(df, "segment_profiles", {"customers": 6, "k": 3})
    assert only(gate.failed_critical, "expect_column_sum_to_be_between", "size").observed == "5"
    assert only(gate.failed_critical, "expect_column_sum_to_be_between", "share").observed == "1.1"
    df = profiles_frame()
    df.loc[2, "size"] = 0
    assert not validate(df, "segment_profiles", {"customers": 4, "k": 3}).success


def test_k_selection_broken():
    df = k_selection_frame()
    df.loc[2, "k"] = 3
    df.loc[2, "chosen"] = True
    gate = validate(df, "k_selection", {})
    assert only(gate.failed_critical, "expect_column_values_to_be_unique", "k").unexpected_sample == [3]
    assert only(gate.failed_critical, "expect_column_sum_to_be_between", "chosen").observed == "2"


def test_top_products_orders_at_least_one():
    df = top_products_frame()
    df.loc[2, "orders"] = 0
    gate = validate(df, "top_products", {})
    assert only(gate.failed_critical, "expect_column_values_to_be_between", "orders").unexpected_sample == [0]


# --- parameters, suites, cache ------------------------------------------------------------------


def test_missing_parameter_is_named():
    with pytest.raises(ValueError, match="needs parameter.*customers"):
        validate(labels_frame(), "cluster_labels", {"k": 3})
    assert required_parameters("cluster_labels") == ("customers", "k")


def test_unknown_suite_and_bad_expectation(tmp_path):
    with pytest.raises(SuiteError, match="no_such_dataset"):
        validate(raw_frame(), "no_such_dataset", suites_dir=tmp_path)
    (tmp_path / "typo.json").write_text(
        json.dumps({"name": "typo", "expectations": [
            {"type": "expect_column_values_to_not_be_nul", "kwargs": {"column": "a"}, "severity": "critical"}
        ]})
    )
    with pytest.raises(SuiteError, match="expectation 1 .*expect_column_values_to_not_be_nul"):
        validate(pd.DataFrame({"a": [1]}), "typo", suites_dir=tmp_path)
    (tmp_path / "sev.json").write_text(
        json.dumps({"name": "sev", "expectations": [
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a"}, "severity": "fatal"}
        ]})
    )
    with pytest.raises(SuiteError, match="severity"):
        validate(pd.DataFrame({"a": [1]}), "sev", suites_dir=tmp_path)


def test_edited_suite_is_reloaded(tmp_path):
    path = tmp_path / "tiny.json"

    def write(severity: str) -> None:
        path.write_text(json.dumps({"name": "tiny", "expectations": [
            {"type": "expect_column_values_to_be_between", "kwargs": {"column": "a", "min_value": 0},
             "severity": severity, "meta": {"notes": "a is not negative"}}
        ]}))

    write("critical")
    df = pd.DataFrame({"a": [1, -1]})
    assert not validate(df, "tiny", suites_dir=tmp_path).success
    write("info")
    gate = validate(df, "tiny", suites_dir=tmp_path)
    assert gate.success and gate.failed_critical == [] and gate.failed_warning == []
    assert gate.report["results"][0]["expectation_config"]["severity"] == "info"


def test_summary_is_small_and_json():
    df = raw_frame()
    df.loc[0, "UnitPrice"] = -5.0
    df.loc[1:3, "UnitPrice"] = -5.0
    gate = validate(df, "raw_invoices", RUN)
    summary = gate.summary()
    assert summary["success"] is False
    # The same negative prices fail the critical "almost all" rule and the warning "all" rule.
    assert (summary["failed_critical"], summary["failed_warning"]) == (1, 1)
    assert summary["findings"][0]["column"] == "UnitPrice"
    assert summary["critical"][0].startswith("column UnitPrice: Prices are not negative")
    assert summary["critical"][0].endswith("[critical: expect_column_values_to_be_between]")
    json.dumps(summary)


# --- Data Docs and side effects -----------------------------------------------------------------


def test_data_docs_name_every_dataset_and_nothing_is_written_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok = validate(raw_frame(), "raw_invoices", RUN)
    bad = clean_frame()
    bad.loc[0, "Sales"] = 0.0
    failed = validate(bad, "clean_invoices", RUN)
    index = build_data_docs({"raw_invoices": ok.report, "clean_invoices": failed.report}, tmp_path / "docs")

    assert index == (tmp_path / "docs" / "index.html").resolve()
    html = index.read_text("utf-8")
    assert "raw_invoices" in html and "clean_invoices" in html
    pages = sorted(p.relative_to(tmp_path / "docs").parts[:2] for p in (tmp_path / "docs" / "validations").rglob("*.html"))
    assert pages == [("validations", "clean_invoices"), ("validations", "raw_invoices")]
    clean_page = next((tmp_path / "docs" / "validations" / "clean_invoices").rglob("*.html")).read_text("utf-8")
    assert "must equal" in clean_page and "Quantity × UnitPrice" in clean_page  # the custom expectation renders

    # A list of GateResults works too, and a rebuild shows only what it was given.
    build_data_docs([ok], tmp_path / "docs2")
    assert [p.parts[-4] for p in (tmp_path / "docs2" / "validations").rglob("*.html")] == ["raw_invoices"]

    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "docs2"]
    assert not (tmp_path / "gx").exists()


def site_files(site: Path) -> list[str]:
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file())


def test_data_docs_pages_rendered_ahead_make_the_same_site_and_a_changed_report_is_built_again(tmp_path):
    """The validator renders each dataset's pages when its report is final (gate._docs_pages) and
    only the index at the end (gate._docs); the site is the one a whole build makes. A report that
    changed after its pages were rendered is not shown stale: the whole site is built again."""
    from customer_segments.tasks.runtime.quality import gate

    ok = validate(raw_frame(), "raw_invoices", RUN)
    bad = clean_frame()
    bad.loc[0, "Sales"] = 0.0
    failed = validate(bad, "clean_invoices", RUN)
    reports = tmp_path / "validation"
    reports.mkdir()
    (reports / "raw_invoices.json").write_text(json.dumps(ok.report))
    (reports / "clean_invoices.json").write_text(json.dumps(failed.report))
    whole = build_data_docs({"raw_invoices": ok.report, "clean_invoices": failed.report}, tmp_path / "whole").parent

    pages, site = tmp_path / "pages", tmp_path / "site"
    gate._docs_pages([str(reports / "raw_invoices.json")], str(pages))
    assert [p.parts[-4] for p in (pages / "validations").rglob("*.html")] == ["raw_invoices"]
    assert not (pages / "index.html").exists()  # the index waits for the end
    gate._docs_pages([str(reports / "clean_invoices.json")], str(pages))
    index = Path(gate._docs([str(p) for p in sorted(reports.glob("*.json"))], str(site), str(pages)))
    assert index == site / "index.html" and not pages.exists()
    assert site_files(site) == site_files(whole)
    assert "clean_invoices" in index.read_text("utf-8") and "raw_invoices" in index.read_text("utf-8")

    # The raw report changes after its pages were rendered (another validation of other data).
    gate._docs_pages([str(reports / "raw_invoices.json")], str(pages))
    again = validate(raw_frame().head(3), "raw_invoices", RUN)
    assert again.report["meta"]["validation_time"] != ok.report["meta"]["validation_time"]
    (reports / "raw_invoices.json").write_text(json.dumps(again.report))
    rebuilt = tmp_path / "rebuilt"
    gate._docs([str(p) for p in sorted(reports.glob("*.json"))], str(rebuilt), str(pages))
    assert not pages.exists()
    raw_pages = [p.relative_to(rebuilt).parts for p in (rebuilt / "validations" / "raw_invoices").rglob("*.html")]
    assert [parts[3] for parts in raw_pages] == [again.report["meta"]["validation_time"]]  # the new one only
    assert len(site_files(rebuilt)) == len(site_files(whole))


def test_fresh_process_imports_gx_lazily_and_writes_nothing(tmp_path):
    code = (
        "import sys, pandas as pd, customer_segments.tasks.runtime.quality.validation as q\n"
        "print('great_expectations' in sys.modules)\n"
        "gate = q.validate(pd.DataFrame({'k': [2, 3], 'sse': [2.0, 1.0], 'silhouette': [0.1, 0.2],"
        " 'chosen': [False, True]}), 'k_selection')\n"
        "print(gate.success, 'great_expectations' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"]
    assert list(tmp_path.iterdir()) == []  # no gx/ folder, no great_expectations.yml


@pytest.mark.real_data
def test_real_raw_invoices_pass_with_known_warnings(real_parquet):
    df = pd.read_parquet(real_parquet)
    ids = df["CustomerID"]
    df["CustomerID"] = ids.dropna().astype("int64").astype("str").reindex(ids.index).astype("str")
    validate(df.head(1000), "raw_invoices", {"run_date": "2011-12-10"})  # warm-up
    gate = validate(df, "raw_invoices", {"run_date": "2011-12-10"})
    assert gate.success, gate.failed_critical
    # Known oddities of the UCI data: 2 bad-debt adjustments with negative prices, 10 manual
    # adjustments above 10,000, and 5 lines of more than 10,000 units.
    warned = sorted((f.column, f.observed.split(" of ")[0]) for f in gate.failed_warning)
    assert warned == [("Quantity", "5"), ("UnitPrice", "10"), ("UnitPrice", "2")]
    price = next(r for r in gate.report["results"] if r["expectation_config"]["kwargs"].get("column") == "UnitPrice"
                 and r["expectation_config"]["type"] == "expect_column_values_to_be_between"
                 and r["expectation_config"]["severity"] == "critical")
    assert price["result"]["unexpected_count"] == 2  # UCI's two bad-debt adjustments


# --- house conventions warn; what breaks the analysis stops ---------------------------------------


def test_invoice_numbers_of_any_length_pass_and_a_c_prefix_keeps_its_meaning():
    df = raw_frame()
    df["InvoiceNo"] = df["InvoiceNo"].str.replace("536", "1536", regex=False)  # seven digits
    gate = validate(df, "raw_invoices", RUN)
    assert gate.success and gate.failed_warning == []
    clean = clean_frame()
    clean.loc[0, "InvoiceNo"] = "C" + clean.loc[0, "InvoiceNo"]  # a "cancellation" with a positive quantity
    warning = only(validate(clean, "clean_invoices", RUN).failed_warning, "expect_column_values_to_not_match_regex",
                   "InvoiceNo")
    assert "starting with C marks a cancellation" in warning.describe()


def test_a_header_only_file_is_described_in_words():
    gate = validate(raw_frame().head(0), "raw_invoices", RUN)
    message = gate.error_message()
    assert "the file has a header but no invoice lines" in message
    assert "expect_table_row_count_to_be_between, observed 0" in message


def test_problem_sentences_take_the_runs_facts():
    gate = validate(features_frame(), "customer_features", {"k_max": 8})
    assert "only 5 customers remain after cleaning, fewer than the 8 segments the run tries" in gate.error_message()
    empty = clean_frame().head(0)
    facts = dict(RUN, cleaning_summary="of 12 lines, 12 have no CustomerID")
    assert "no invoice lines remain after cleaning: of 12 lines, 12 have no CustomerID" in \
        validate(empty, "clean_invoices", facts).error_message()


def test_a_missing_suite_stops_the_run_and_names_the_file(tmp_path, monkeypatch):
    from customer_segments.tasks.errors import PipelineError

    monkeypatch.setenv("SEGMENT_EXPECTATIONS", str(tmp_path))
    with pytest.raises(SuiteError) as err:
        validate(raw_frame(), "raw_invoices", RUN)
    assert isinstance(err.value, PipelineError) and err.value.exit_code == 2
    assert str(tmp_path / "raw_invoices.json") in str(err.value)


def test_suites_ship_inside_the_package():
    import customer_segments.expectations as package

    assert EXPECTATIONS_DIR == Path(package.__file__).parent
    assert sorted(p.stem for p in EXPECTATIONS_DIR.glob("*.json")) == sorted(DATASETS)


def test_column_metrics_see_only_their_column_and_give_the_same_report(monkeypatch):
    """The validator hands a single-column metric only its column (validation.narrow_column_domains);
    GX's own whole-batch domain gives the same verdicts, counts and unexpected samples."""
    from great_expectations.execution_engine.pandas_execution_engine import PandasExecutionEngine

    validation.gx_state()
    narrowed = PandasExecutionEngine.get_compute_domain
    assert narrowed.narrowed
    raw = raw_frame(40)
    raw.loc[[0, 5], "InvoiceNo"] = ["536365.0", "A-1"]
    raw.loc[[1, 2, 3], "CustomerID"] = [None, "12x", None]
    raw.loc[4, "UnitPrice"] = -5.0
    raw.loc[6, "Quantity"] = 20000
    raw.loc[7, "Country"] = None
    clean = clean_frame()
    clean.loc[clean.index[0], "Sales"] = clean["Sales"].iloc[0] + 1.0

    def reports():
        out = []
        for df, dataset in ((raw, "raw_invoices"), (clean, "clean_invoices")):
            report = validate(df, dataset, RUN).report
            out.append([(r["expectation_config"]["type"], r["expectation_config"]["kwargs"], r["success"], r["result"])
                        for r in report["results"]])
        return out

    seen = []

    def counting_columns(self, *args, **kwargs):
        domain = narrowed(self, *args, **kwargs)
        seen.append(domain[0].shape[1])
        return domain

    monkeypatch.setattr(PandasExecutionEngine, "get_compute_domain", counting_columns)
    got = reports()
    assert 1 in seen and max(seen) > 1  # column metrics narrowed, table metrics not
    assert any(not r[2] for r in got[0]) and any(r[3].get("partial_unexpected_list") for r in got[0])
    whole_domain, whole_records = narrowed.whole
    monkeypatch.setattr(PandasExecutionEngine, "get_compute_domain", whole_domain)
    monkeypatch.setattr(PandasExecutionEngine, "get_domain_records", whole_records)
    assert reports() == got


def test_each_expectation_configuration_is_built_once_per_validation_with_the_same_report(monkeypatch):
    """The validator keeps an expectation's configuration for the rest of a validation
    (validation.configurations_built_once); building it at every read, as GX does, gives the same
    verdicts, counts and unexpected samples."""
    from great_expectations.expectations import expectation as gx_expectation
    from great_expectations.validator.validator import Validator

    validation.gx_state()
    once = gx_expectation.Expectation.configuration.fget
    assert once.once
    raw = raw_frame(40)
    raw.loc[[0, 5], "InvoiceNo"] = ["536365.0", "A-1"]
    raw.loc[[1, 2, 3], "CustomerID"] = [None, "12x", None]
    raw.loc[4, "UnitPrice"] = -5.0
    clean = clean_frame()
    clean.loc[clean.index[0], "Sales"] = clean["Sales"].iloc[0] + 1.0
    builds = []

    class Counted(gx_expectation.ExpectationConfiguration):  # what the property builds, counted
        def __init__(self, *args, **kwargs):
            builds.append(1)
            super().__init__(*args, **kwargs)

    def reports():
        builds.clear()
        out = []
        for df, dataset in ((raw, "raw_invoices"), (clean, "clean_invoices")):
            report = validate(df, dataset, RUN).report
            out.append([(r["expectation_config"], r["success"], r["result"]) for r in report["results"]])
        return out, len(builds)

    monkeypatch.setattr(gx_expectation, "ExpectationConfiguration", Counted)
    got, built_once = reports()
    assert any(not success for _, success, _ in got[0]) and any(not success for _, success, _ in got[1])
    monkeypatch.setattr(gx_expectation.Expectation, "configuration", property(once.built))
    monkeypatch.setattr(Validator, "graph_validate", Validator.graph_validate.whole)
    expected, built_every_time = reports()
    assert got == expected
    assert built_every_time > 5 * built_once


def test_the_validator_loads_modules_its_gates_do_not_use_only_when_they_are_used():
    """The validator process (gate.warm_up) defers what GX imports for expectations the suites do
    not use; the gates still validate, and the modules work when something does use them."""
    code = """
import sys
from customer_segments.tasks.runtime.quality import gate, validation
gate.warm_up()
pending = sorted(m for m in validation.UNUSED_BY_GATES if type(sys.modules.get(m)).__name__ == "_LazyModule")
from support.frames import k_selection_frame
result = validation.validate(k_selection_frame(), "k_selection", {"k_min": 2, "k_max": 4})
still = sorted(m for m in validation.UNUSED_BY_GATES if type(sys.modules.get(m)).__name__ == "_LazyModule")
from scipy import stats
print(pending, result.success, still, round(float(stats.chi2.sf(3.841458820694124, 1)), 6),
      type(sys.modules["scipy.stats"]).__name__)
"""
    tests_dir = Path(__file__).parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tests_dir,
                         env={**os.environ, "PYTHONPATH": str(tests_dir)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['altair',", "'scipy.stats']", "True", "['altair',", "'scipy.stats']", "0.05",
                                  "module"], out.stdout
