"""A catalogue of malformed inputs: each ends with exit code 2, one clear paragraph, and no damage.

"No damage" means: no stage output of the failing run is marked complete, the run never becomes
`latest`, and an earlier good run in the same artifacts folder is byte-for-byte untouched.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from support import SAMPLE, run_cli, run_flow, snapshot

from customer_segments.tasks.errors import PipelineError
from customer_segments.tasks.runtime.manifest import RunContext
from customer_segments.tasks.runtime import stage_runner
from customer_segments.tasks.runtime.stage_runner import QualityError, run_stage
from customer_segments.tasks.catalogue import CLEAN, FEATURES, INGEST, NORMALIZE, ORDERS
from customer_segments.tasks.runtime.graph import pipeline


@pytest.fixture(scope="module")
def base() -> pd.DataFrame:
    """A small valid export: the sample's first 150 customers and some guest lines."""
    df = pd.read_parquet(SAMPLE)
    keep = df["CustomerID"].isin(sorted(df["CustomerID"].dropna().unique())[:150])
    return pd.concat([df[keep], df[df["CustomerID"].isna()].head(300)]).sort_values("InvoiceDate", kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def good_run(prefect_server, tmp_path_factory):
    """A completed run that every bad run below must leave untouched."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    manifest = run_flow(SAMPLE, artifacts)
    return artifacts, Path(manifest.run_dir), snapshot(Path(manifest.run_dir))


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


def xlsx(path: Path, sheets: dict[str, pd.DataFrame]) -> Path:
    with pd.ExcelWriter(path, engine="openpyxl") as writer:
        for name, frame in sheets.items():
            frame.to_excel(writer, sheet_name=name, index=False)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def folder_without_exports(d: Path) -> Path:
    (d / "exports").mkdir()
    (d / "exports" / "readme.txt").write_text("exports go here")
    return d / "exports"


def future(df):
    out = df.copy()
    out.loc[out.index[:20], "InvoiceDate"] = pd.Timestamp.now() + pd.Timedelta(days=400)
    return out


def bulk_negative_prices(df):
    out = df.copy()
    out.loc[out.index[::10], "UnitPrice"] = -out.loc[out.index[::10], "UnitPrice"]
    return out


def unquoted_separator(df) -> bytes:
    lines = df.head(20).to_csv(index=False, sep=";").splitlines()
    fields = lines[3].split(";")
    fields[2] += "; SET OF 3"  # the Description of line 4 holds the separator, unquoted
    lines[3] = ";".join(fields)
    return ("\n".join(lines) + "\n").encode()


def early_days(df):
    """Only days 1..12 of each month: a date like 03/04/2011 reads either way."""
    return df[df["InvoiceDate"].dt.day <= 12].head(500)


def few_customers(df):
    return df[df["CustomerID"].isin(sorted(df["CustomerID"].dropna().unique())[:6])]


# name -> (make the input file from (base, tmp_path), words the message must contain)
CASES = {
    "missing column": (lambda b, d: write_csv(b.drop(columns="CustomerID"), d / "x.csv"),
                       ["x.csv", "ingest", "CustomerID", "not found", "a run needs CustomerID, InvoiceDate"]),
    "renamed column": (lambda b, d: write_csv(b.rename(columns={"CustomerID": "client_no"}), d / "x.csv"),
                       ["x.csv", "CustomerID", "'client_no'", "--columns CustomerID=client_no"]),
    "empty file": (lambda b, d: write_bytes(d / "x.csv", b""), ["x.csv", "empty"]),
    "header only": (lambda b, d: write_csv(b.head(0), d / "x.csv"),
                    ["x.csv", "ingest", "raw_invoices", "the file has a header but no invoice lines",
                     "expect_table_row_count_to_be_between, observed 0"]),
    "xlsx without the expected sheet, several sheets": (
        lambda b, d: xlsx(d / "x.xlsx", {"Notes": pd.DataFrame({"note": ["exported by hand"]}), "Data": b.head(50)}),
        ["x.xlsx", "sheet 'Notes'", "'Notes', 'Data'", "no sheet named 'Online Retail'", "CustomerID"]),
    "corrupt xlsx bytes": (lambda b, d: write_bytes(d / "x.xlsx", b"PK\x03\x04 this is not a workbook" * 20),
                           ["x.xlsx", "cannot be read as xlsx"]),
    "not a table": (lambda b, d: write_bytes(d / "x.parquet", b"\x89PNG\r\n\x1a\n" + bytes(200)),
                    ["x.parquet", "cannot be read as parquet"]),
    "wrong encoding": (lambda b, d: write_bytes(
        d / "x.csv", b.head(20).assign(Description="CAF\u00c9 MUG").to_csv(index=False).encode("cp1252")),
        ["x.csv", "--encoding cp1252"]),
    "non-numeric Quantity": (lambda b, d: write_csv(b.astype({"Quantity": "object"}).assign(
        Quantity=lambda f: f["Quantity"].where(f.index % 7 != 0, "six")), d / "x.csv"),
        ["x.csv", "column Quantity", "not numbers", "'six'"]),
    "unparsable dates": (lambda b, d: write_csv(b.astype({"InvoiceDate": "object"}).assign(
        InvoiceDate=lambda f: f["InvoiceDate"].where(f.index % 9 != 0, "31/31/2011 25:00")), d / "x.csv"),
        ["x.csv", "column InvoiceDate", "not dates", "'31/31/2011 25:00'"]),
    "every row cancelled": (lambda b, d: write_csv(b.assign(Quantity=-b["Quantity"].abs(), InvoiceNo="C" + b["InvoiceNo"].str.lstrip("C")), d / "x.csv"),
                            ["x.csv", "clean", "clean_invoices", "no invoice lines remain after cleaning: of ",
                             "are cancellations, returns or zero quantities", "expect_table_row_count_to_be_between"]),
    "every CustomerID blank": (lambda b, d: write_csv(b.assign(CustomerID=np.nan), d / "x.csv"),
                               ["clean", "clean_invoices", "no invoice lines remain after cleaning: of ",
                                "have no CustomerID", "observed 0"]),
    "fewer customers than k": (lambda b, d: write_csv(few_customers(b), d / "x.csv"),
                               ["features", "customer_features", "only 6 customers remain after cleaning",
                                "fewer than the 8 segments", "expect_table_row_count_to_be_between"]),
    "negative UnitPrice in bulk": (lambda b, d: write_csv(bulk_negative_prices(b), d / "x.csv"),
                                   ["ingest", "raw_invoices", "column UnitPrice", "Prices are not negative",
                                    "expect_column_values_to_be_between"]),
    "dates in the future": (lambda b, d: write_csv(future(b), d / "x.csv"),
                            ["ingest", "raw_invoices", "column InvoiceDate", "20 of"]),
    "folder without exports": (lambda b, d: folder_without_exports(d),
                               ["exports", "holds no"]),
    "header in one column": (lambda b, d: write_bytes(d / "x.csv", b.head(30).to_csv(index=False, sep=" ").encode()),
                             ["x.csv", "the header has one column", "seems to use ' ' as separator"]),
    "unquoted separator in a description": (lambda b, d: write_bytes(d / "x.csv", unquoted_separator(b)),
                                            ["x.csv", "line 4 has 9 fields but the header has 8",
                                             "Description containing the separator ';' without quotes"]),
    "ambiguous day and month": (lambda b, d: write_bytes(d / "x.csv", early_days(b).to_csv(
        index=False, sep=";", date_format="%d/%m/%Y %H:%M").encode()),
        ["x.csv", "column InvoiceDate", "day-first or month-first", "--date-format '%d/%m/%Y %H:%M'"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_input(case, base, good_run, tmp_path):
    artifacts, good_dir, before = good_run
    make, words = CASES[case]
    path = make(base, tmp_path)
    result = run_cli("run", "--input", str(path), "--artifacts", str(artifacts), "--json")
    assert result.returncode == 2, (result.stdout, result.stderr)
    message = result.stderr.strip()
    assert message.startswith("Error: ") and len(message.splitlines()) == 1, message
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in message, (word, message)
    assert_no_damage(artifacts, good_dir, before)


def assert_no_damage(artifacts: Path, good_dir: Path, before: dict) -> None:
    for manifest_path in artifacts.glob("*/*/manifest.json"):
        if manifest_path.parent == good_dir or manifest_path.parent.is_symlink():
            continue
        manifest = json.loads(manifest_path.read_text())
        assert manifest["status"] == "failed"
        failed = [s for s, r in manifest["stages"].items() if r["status"] not in ("completed", "cached")]
        assert len(failed) == 1  # the failing stage, never marked complete
        for record in manifest["stages"].values():
            if record["status"] not in ("completed", "cached"):
                assert not record.get("outputs")
    assert (good_dir.parent / "latest").resolve() == good_dir.resolve()
    assert snapshot(good_dir) == before


def test_gate_failure_keeps_output_for_inspection_with_report(prefect_server, base, tmp_path):
    result = run_cli("run", "--input", str(write_csv(few_customers(base), tmp_path / "x.csv")),
                     "--artifacts", str(tmp_path / "a"), "--json")
    assert result.returncode == 2
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    run_dir = Path(summary["run_dir"])
    assert summary["status"] == "failed"
    assert (run_dir / "failed" / "customer_features.parquet").exists()
    assert not (run_dir / "customer_features.parquet").exists()
    report = run_dir / "validation" / "customer_features.json"
    assert str(report) in result.stderr
    assert json.loads(report.read_text())["success"] is False
    assert (run_dir / "validation" / "docs" / "index.html").exists()
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    gate = stages["features"]["gates"]["customer_features"]
    assert gate["success"] is False and gate["failed_critical"] >= 1
    # Later stages may have computed from the features while their gate ran: nothing of theirs
    # is recorded, and no file is left in a cache entry that is not complete.
    assert not set(stages) & set(pipeline().downstream("features")) - {"features"}
    for name in pipeline().order():
        for entry_dir in (tmp_path / "a" / "cache" / name).glob("*"):
            assert (entry_dir / "entry.json").exists() or not any(entry_dir.rglob("*.*")), entry_dir


def test_work_on_data_whose_gate_fails_is_discarded_and_never_cached(base, tmp_path):
    """Normalize computes from the features before their gate has judged them (as the flow lets
    it); the features fail their gate, and what normalize computed is discarded, never reused."""
    run_dir = tmp_path / "2011-12" / "r"
    run_dir.mkdir(parents=True)
    context = RunContext(artifacts=str(tmp_path), run_id="r", started_at="2026-01-01T00:00:00+00:00",
                         run_dir=str(run_dir),
                         params={"input_path": str(write_csv(few_customers(base), tmp_path / "x.csv")),
                                 "input_sha256": "s", "cutoff": "2011-12-01T00:00:00", "k_min": 4, "k_max": 8})
    upstream = []
    for step in (INGEST, CLEAN, ORDERS):
        upstream = [run_stage(step, context, upstream)]
    features = stage_runner.compute_stage(FEATURES, context, upstream)
    assert features.record.status == "computed"
    assert not (tmp_path / "cache" / "features" / features.record.cache_key / "entry.json").exists()
    normalized = stage_runner.compute_stage(NORMALIZE, context, [features])  # before the gate
    assert normalized.record.status == "computed"
    outcomes = stage_runner.gate_stage(FEATURES, context, features)
    assert not outcomes["customer_features"].passed
    with pytest.raises(QualityError):
        stage_runner.publish_stage(FEATURES, context, features, outcomes)
    stage_runner.discard(NORMALIZE, context, normalized)
    assert not (tmp_path / "cache" / "normalize" / normalized.record.cache_key).exists()
    assert {p.parent.parent.name for p in (tmp_path / "cache").glob("*/*/entry.json")} == {"ingest", "clean", "orders"}
    assert not (run_dir / "normalized_features.parquet").exists()
    # Computed again, the stage does not reuse the discarded work.
    again = stage_runner.compute_stage(NORMALIZE, context, [features])
    assert again.record.status == "computed"


def stage_with(stage, corrupt):
    """The same stage with its output corrupted after the transform: what a buggy change would do."""
    original = stage.transform

    def transform(*args, **kwargs):
        return corrupt(original(*args, **kwargs))

    return dataclasses.replace(stage, transform=transform)


@pytest.mark.parametrize("stage, words", [
    (stage_with(FEATURES, lambda f: pd.concat([f, f.head(3)], ignore_index=True)),
     ["features", "customer_features", "column CustomerID", "expect_column_values_to_be_unique"]),
    (stage_with(NORMALIZE, lambda f: f.assign(OrderCount=f["OrderCount"].where(f.index % 5 != 0))),
     ["normalize", "normalized_features", "column OrderCount", "expect_column_values_to_not_be_null"]),
], ids=["duplicated customers after features", "NaN in normalized features"])
def test_injected_corruption_stops_at_the_next_gate(stage, words, tmp_path):
    """The stage runner on its own (no Prefect): each stage takes the previous one's result."""
    run_dir = tmp_path / "2011-12" / "r"
    run_dir.mkdir(parents=True)
    context = RunContext(artifacts=str(tmp_path), run_id="r", started_at="2026-01-01T00:00:00+00:00",
                         run_dir=str(run_dir),
                         params={"input_path": str(SAMPLE), "input_sha256": "s", "cutoff": "2011-12-01T00:00:00",
                                 "k_min": 4, "k_max": 8, "k": None})
    order = [INGEST, CLEAN, ORDERS, FEATURES, NORMALIZE]
    upstream = []
    for step in order[: order.index(next(s for s in order if s.name == stage.name))]:
        upstream = [run_stage(step, context, upstream)]
    with pytest.raises(QualityError) as err:
        run_stage(stage, context, upstream)
    assert isinstance(err.value, PipelineError) and err.value.exit_code == 2
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    record = err.value.record
    assert record.status == "failed" and not record.outputs and record.error == str(err.value)
    dataset = stage.outputs[0]
    assert (run_dir / "failed" / f"{dataset}.parquet").exists()
    assert not (run_dir / f"{dataset}.parquet").exists()
    assert not list((tmp_path / "cache" / stage.name).glob("*/entry.json"))


def test_european_excel_csv_reads_like_the_parquet(prefect_server, base, tmp_path):
    """';' separator, decimal comma, day-first dates, a byte-order mark, Windows-1252 text and
    another column order: read unambiguously, it gives exactly the customers of the same data."""
    europe = base[["CustomerID", "InvoiceDate", "InvoiceNo", "StockCode", "Quantity", "UnitPrice", "Country",
                   "Description"]].assign(Description=base["Description"].str.replace("HEART", "C\u0152UR"))
    data = europe.to_csv(index=False, sep=";", decimal=",", date_format="%d/%m/%Y %H:%M").encode("cp1252")
    (tmp_path / "europe.csv").write_bytes(data)
    refused = run_cli("run", "--input", str(tmp_path / "europe.csv"), "--artifacts", str(tmp_path / "a"))
    assert refused.returncode == 2 and "--encoding cp1252" in refused.stderr
    done = run_cli("run", "--input", str(tmp_path / "europe.csv"), "--encoding", "cp1252",
                   "--artifacts", str(tmp_path / "a"), "--json")
    assert done.returncode == 0, done.stderr
    base.to_parquet(tmp_path / "same.parquet")
    reference = run_flow(tmp_path / "same.parquet", tmp_path / "b")
    run_dir = json.loads(done.stdout.strip().splitlines()[-1])["run_dir"]
    pd.testing.assert_frame_equal(pd.read_parquet(Path(run_dir) / "customer_features.parquet"),
                                  pd.read_parquet(Path(reference.run_dir) / "customer_features.parquet"))
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + base.to_csv(index=False).encode())
    assert run_cli("run", "--input", str(tmp_path / "bom.csv"), "--artifacts", str(tmp_path / "c")).returncode == 0
