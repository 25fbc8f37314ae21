"""The known facts of the real UCI data, through the whole flow, from the Parquet and the xlsx."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from support import run_flow

from customer_segments.tasks.runtime.manifest import Manifest

pytestmark = pytest.mark.real_data


def reference_features(path: Path) -> pd.DataFrame:
    """The article's analysis written plainly, as the yardstick."""
    df = pd.read_parquet(path)
    df = df.loc[df["Quantity"] > 0]
    df = df[pd.notnull(df["CustomerID"])]
    df = df.loc[df["InvoiceDate"] < "2011-12-01"].copy()
    df["Sales"] = df["Quantity"] * df["UnitPrice"]
    out = df.groupby("CustomerID").agg(TotalSales=("Sales", "sum"), OrderCount=("InvoiceNo", "nunique"))
    out["AvgOrderValue"] = out["TotalSales"] / out["OrderCount"]
    out.index = out.index.astype("int64").astype(str)
    return out


@pytest.fixture(scope="module")
def parquet_run(prefect_server, real_parquet, tmp_path_factory):
    return run_flow(real_parquet, tmp_path_factory.mktemp("real"))


def check_known_facts(manifest: Manifest) -> None:
    assert manifest.as_of == "2011-12" and manifest.cutoff == "2011-12-01T00:00:00"
    assert manifest.metric("ingest", "rows_raw") == 541_909
    assert manifest.rows_clean == 380_620
    assert manifest.customers == 4_298
    assert manifest.metric("select_k", "best_silhouette_k") == 4
    assert manifest.k == 4
    assert manifest.silhouette == pytest.approx(0.41, abs=0.01)
    # The other methods on the same data (their own tests pin the details: test_basket.py,
    # test_methods.py): 1,196 rules for all customers at the default thresholds, 3,052 raw lines
    # of service codes of which 1,577 survive cleaning, ROC AUC 0.740 with horizon 3.
    by_segment = {row["segment"]: row for row in manifest.metric("basket", "rules_by_segment")}
    assert by_segment[-1]["rules"] == 1_196 and by_segment[-1]["baskets"] == 17_626
    assert manifest.metric("best_sellers", "service_lines_excluded") == 1_577
    assert manifest.metric("propensity", "roc_auc") == pytest.approx(0.7404, abs=0.001)
    assert sum(manifest.metric("rfm", "rfm_segments").values()) == 4_298


def test_real_parquet_known_facts(parquet_run):
    check_known_facts(parquet_run)


def test_real_features_equal_plain_groupby(parquet_run, real_parquet):
    features = pd.read_parquet(Path(parquet_run.run_dir) / "customer_features.parquet").set_index("CustomerID")
    expected = reference_features(real_parquet)
    assert features.index.tolist() == sorted(expected.index.tolist())
    pd.testing.assert_frame_equal(features, expected.loc[features.index], check_names=False, rtol=1e-12)


def test_real_xlsx_gives_the_same_segments(prefect_server, real_xlsx, parquet_run, tmp_path):
    manifest = run_flow(real_xlsx, tmp_path)
    check_known_facts(manifest)
    xlsx_dir, parquet_dir = Path(manifest.run_dir), Path(parquet_run.run_dir)
    for name in ("customer_features", "cluster_labels", "segment_profiles"):
        pd.testing.assert_frame_equal(pd.read_parquet(xlsx_dir / f"{name}.parquet"),
                                      pd.read_parquet(parquet_dir / f"{name}.parquet"), check_exact=False, rtol=1e-9)
    raw = pd.read_parquet(tmp_path / manifest.stages["ingest"].outputs["raw_invoices"].path)
    assert raw["InvoiceNo"].str.fullmatch(r"[A-Z]?\d{6}").all()
    assert not raw["CustomerID"].dropna().str.contains(r"\.").any()
    assert raw["StockCode"].isin(["71053", "85123A"]).sum() > 0
