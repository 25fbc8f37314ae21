"""The customer table, its CSV export read back by a spreadsheet program, and assigning customers.

The CSV is opened by LibreOffice (Debian's headless Calc, as a person's spreadsheet would open it),
converted to xlsx and read back with python-calamine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from support import IN_CI, REAL_PARQUET, SAMPLE, last_json, real, run_cli

from customer_segments.tasks.runtime.exports import csv_bytes, spreadsheet_safe


@pytest.fixture(scope="module")
def sample_run(prefect_server, tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("marketers")
    done = run_cli("run", "--input", str(SAMPLE), "--artifacts", str(artifacts), "--json")
    assert done.returncode == 0, done.stderr
    return artifacts, last_json(done.stdout)


def test_the_customer_table_has_one_row_per_customer_with_what_campaigns_need(sample_run):
    _, summary = sample_run
    run_dir = Path(summary["run_dir"])
    table = pd.read_parquet(run_dir / "customers.parquet")
    labels = pd.read_parquet(run_dir / "cluster_labels.parquet")
    assert len(table) == summary["customers"] and table["CustomerID"].is_unique
    assert set(table["CustomerID"]) == set(labels["CustomerID"])
    expected = {"segment", "segment_id", "segment_name", "rfm_segment", "rfm_score", "repurchase_probability",
                "repurchase_decile", "clv", "p_alive", "churn_risk", "recommended_StockCode_1",
                "recommended_Description_1"}
    assert expected <= set(table.columns)
    # Recommendations: never an item the customer already bought.
    clean = pd.read_parquet(run_dir / "clean_invoices.parquet")
    bought = set(zip(clean["CustomerID"], clean["StockCode"]))
    for rank in (1, 2, 3):
        picks = table[["CustomerID", f"recommended_StockCode_{rank}"]].dropna()
        assert not any((c, s) in bought for c, s in picks.itertuples(index=False))
    assert table["recommended_StockCode_1"].notna().mean() > 0.9
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    assert 'href="customers.parquet"' in report


def test_switched_off_stages_leave_their_columns_out(prefect_server, tmp_path):
    done = run_cli("run", "--input", str(SAMPLE), "--artifacts", str(tmp_path), "--json", "--no-rfm", "--no-clv",
                   "--no-basket")
    assert done.returncode == 0, done.stderr
    table = pd.read_parquet(Path(last_json(done.stdout)["run_dir"]) / "customers.parquet")
    assert not {"rfm_segment", "clv", "p_alive", "churn_risk", "recommended_StockCode_1"} & set(table.columns)
    assert "repurchase_probability" in table.columns


def test_formulas_are_defused_and_everything_else_is_kept():
    table = pd.DataFrame({"CustomerID": ["1", "2", "3", "4"], "segment_name": ["=HYPERLINK(\"x\")", "+1", "-2", "@A"],
                          "clv": [1.5, -2.25, 0.0, 3.0]})
    safe = spreadsheet_safe(table)
    assert safe["segment_name"].tolist() == ["'=HYPERLINK(\"x\")", "'+1", "'-2", "'@A"]
    assert safe["clv"].tolist() == [1.5, -2.25, 0.0, 3.0]   # numbers are numbers, negative ones too
    text = csv_bytes(table).decode("utf-8")
    assert text.splitlines()[0] == "CustomerID,segment_name,clv" and "-2.25" in text


def test_the_csv_opens_in_a_spreadsheet_as_the_same_rows(sample_run, tmp_path):
    """LibreOffice Calc converts the CSV to xlsx; read back, the rows and values are the table's."""
    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    if soffice is None:
        if IN_CI:
            pytest.fail("LibreOffice is missing; .ci/run installs libreoffice-calc-nogui")
        pytest.skip("LibreOffice is not installed here (apt-get install libreoffice-calc-nogui); CI installs it")
    artifacts, summary = sample_run
    run_dir = Path(summary["run_dir"])
    # A description that looks like a formula, as an export from any shop system may carry.
    table = pd.read_parquet(run_dir / "customers.parquet")
    assert "recommended_Description_1" in table.columns
    csv = tmp_path / "customers.csv"
    done = run_cli("export", summary["run_id"], "--to", str(csv), "--artifacts", str(artifacts))
    assert done.returncode == 0, done.stderr
    tricky = tmp_path / "tricky.csv"
    table.loc[0, "recommended_Description_1"] = "=1+1"
    tricky.write_bytes(csv_bytes(table))
    for path in (csv, tricky):
        converted = subprocess.run([soffice, "--headless", "--norestore", f"-env:UserInstallation=file://{tmp_path}/lo",
                                    "--convert-to", "xlsx", "--outdir", str(tmp_path / "xlsx"),
                                    "--infilter=CSV:44,34,76,1", str(path)], capture_output=True, text=True, timeout=300)
        assert converted.returncode == 0, converted.stderr
    from python_calamine import CalamineWorkbook

    def rows(name: str) -> list[list]:
        book = CalamineWorkbook.from_path(str(tmp_path / "xlsx" / name))
        return book.get_sheet_by_index(0).to_python()

    sheet = rows("customers.xlsx")
    header, body = sheet[0], sheet[1:]
    original = pd.read_csv(csv, dtype=str, keep_default_na=False)
    assert header == list(original.columns) and len(body) == len(original) == summary["customers"]
    read = pd.DataFrame(body, columns=header)
    assert read["CustomerID"].astype(str).str.replace(r"\.0$", "", regex=True).tolist() == original["CustomerID"].tolist()
    assert read["segment_id"].tolist() == original["segment_id"].tolist()
    assert read["clv"].astype(float).round(6).tolist() == original["clv"].astype(float).round(6).tolist()
    # The formula-like description stays text: shown with its apostrophe, never evaluated to 2.
    first = rows("tricky.xlsx")[1]
    cell = first[rows("tricky.xlsx")[0].index("recommended_Description_1")]
    assert cell == "'=1+1"


@pytest.mark.real_data
@pytest.mark.slow
def test_assigning_the_runs_own_lines_reproduces_its_segments(prefect_server, tmp_path):
    artifacts = tmp_path / "artifacts"
    done = run_cli("run", "--input", str(real(REAL_PARQUET)), "--artifacts", str(artifacts), "--json", "--no-basket",
                   "--no-chaid", "--no-clv")
    assert done.returncode == 0, done.stderr
    summary = last_json(done.stdout)
    # The run's lines, and a customer only this file has.
    lines = pd.read_parquet(real(REAL_PARQUET))
    newcomer = lines.iloc[:3].assign(CustomerID=99999.0, InvoiceNo="999999", InvoiceDate=pd.Timestamp("2011-11-20 10:00"))
    new_file = tmp_path / "lines.parquet"
    pd.concat([lines, newcomer], ignore_index=True).to_parquet(new_file, index=False)
    out = tmp_path / "assigned.csv"
    assigned = run_cli("assign", summary["run_id"], "--input", str(new_file), "--out", str(out),
                       "--artifacts", str(artifacts))
    assert assigned.returncode == 0, assigned.stderr
    result = pd.read_csv(out, dtype={"CustomerID": str})
    labels = pd.read_parquet(Path(summary["run_dir"]) / "cluster_labels.parquet")
    both = labels[["CustomerID", "segment_id"]].merge(result[["CustomerID", "segment_id"]], on="CustomerID",
                                                      suffixes=("_run", "_assigned"))
    agreement = (both["segment_id_run"] == both["segment_id_assigned"]).mean()
    assert len(both) == summary["customers"] and agreement >= 0.995, agreement
    new = result[result["CustomerID"] == "99999"]
    assert len(new) == 1 and new["segment_id"].iloc[0] in set(labels["segment_id"]) and not new["in_run"].iloc[0]
    assert {"TotalSales", "TotalSales_norm", "segment", "segment_name", "distance"} <= set(result.columns)
    (tmp_path / "agreement.json").write_text(json.dumps({"agreement": agreement}))


def test_assign_mistakes_are_one_paragraph(sample_run, tmp_path):
    artifacts, summary = sample_run
    lacking = tmp_path / "lacking.csv"
    pd.read_parquet(SAMPLE).drop(columns=["CustomerID"]).to_csv(lacking, index=False)
    cases = [
        (("assign", summary["run_id"], "--input", str(lacking), "--out", str(tmp_path / "o.csv")),
         ["CustomerID not found"]),
        (("assign", "20991231T000000Z-00000000", "--input", str(SAMPLE), "--out", str(tmp_path / "o.csv")),
         ["no run 20991231T000000Z-00000000"]),
        (("assign", summary["run_id"], "--input", str(SAMPLE), "--out", str(tmp_path / "o.xlsx")),
         ["must be a .csv or .parquet file"]),
    ]
    for args, words in cases:
        done = run_cli(*args, "--artifacts", str(artifacts))
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        for word in words:
            assert word in done.stderr, done.stderr
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "o.xlsx").exists()
