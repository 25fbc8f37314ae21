"""Any shop's data: the column mapping, exports with one line per order and no products, a config file.

Through the `segment` command, as a user would: the UCI data under the Online Retail II names, the
CDNOW sample (one line per purchase, no products) with a mapping, a TOML config file, and the
mistakes a mapping invites.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from support import REAL_PARQUET, last_json, real, run_cli

from customer_segments.tasks.runtime.manifest import Manifest
from customer_segments.tasks.runtime.storage import sha256_file

CDNOW = REAL_PARQUET.parent / "cdnow" / "cdnow_sample.csv"
CDNOW_MAPPING = "CustomerID=customer_id,InvoiceDate=date,Quantity=number_of_cds,Sales=dollar_value"
# Published values (Fader, Hardie & Lee 2005; lifetimes' documentation) for the 39-week calibration.
PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426, "p": 6.25, "q": 3.74, "v": 15.44}


def manifest_of(done) -> Manifest:
    run_dir = Path(last_json(done.stdout)["run_dir"])
    return Manifest.model_validate_json((run_dir / "manifest.json").read_text())


@pytest.mark.real_data
@pytest.mark.slow
def test_online_retail_ii_names_give_the_same_features_and_labels(prefect_server, tmp_path):
    original = real(REAL_PARQUET)
    renamed = tmp_path / "online_retail_ii.parquet"
    pd.read_parquet(original).rename(columns={"InvoiceNo": "Invoice", "UnitPrice": "Price",
                                              "CustomerID": "Customer ID"}).to_parquet(renamed, index=False)
    runs = {}
    for name, path in (("original", original), ("renamed", renamed)):
        done = run_cli("run", "--input", str(path), "--artifacts", str(tmp_path / "artifacts"), "--json",
                       "--no-basket", "--no-chaid")
        assert done.returncode == 0, done.stderr
        runs[name] = (done, Path(last_json(done.stdout)["run_dir"]))
    for dataset in ("customer_features.parquet", "cluster_labels.parquet", "orders.parquet"):
        assert sha256_file(runs["original"][1] / dataset) == sha256_file(runs["renamed"][1] / dataset), dataset
    summary = runs["renamed"][0].stdout
    assert "columns read as: Invoice as InvoiceNo, Price as UnitPrice, Customer ID as CustomerID" in summary
    assert "Online Retail II" in summary
    renamed_manifest = manifest_of(runs["renamed"][0])
    assert renamed_manifest.fact("renamed_columns") == {"Invoice": "InvoiceNo", "Price": "UnitPrice",
                                                        "Customer ID": "CustomerID"}
    # The parsed lines are the same, so every stage after ingest is reused.
    assert {s.status for n, s in renamed_manifest.stages.items() if n != "ingest"} == {"cached"}


@pytest.fixture(scope="module")
def cdnow_run(prefect_server, tmp_path_factory):
    """The CDNOW sample through `segment run`: mapping, as-of 1997-10, lifetime value in weeks."""
    artifacts = tmp_path_factory.mktemp("cdnow")
    done = run_cli("run", "--input", str(real(CDNOW)), "--columns", CDNOW_MAPPING, "--as-of", "1997-10",
                   "--clv-time-unit", "W", "--artifacts", str(artifacts), "--json")
    assert done.returncode == 0, done.stderr
    return done, manifest_of(done)


@pytest.mark.real_data
def test_cdnow_runs_end_to_end_and_says_which_stages_had_no_products(cdnow_run):
    done, manifest = cdnow_run
    assert manifest.status == "completed" and manifest.as_of == "1997-10" and manifest.customers == 2_357
    assert manifest.parameters["columns"] == dict(pair.split("=") for pair in CDNOW_MAPPING.split(","))
    assert manifest.fact("generated_invoice_numbers") is True
    assert "each line is one order" in done.stdout
    skipped = manifest.skipped()
    assert set(skipped) == {"best_sellers", "basket"}
    assert all("no StockCode or Description" in reason for reason in skipped.values())
    for stage in skipped:
        assert f"skipped {stage}: the input has no StockCode or Description column" in done.stdout
    # Every other stage ran: segmentation, month over month, RFM, propensity, CHAID, lifetime value.
    ran = {name for name, record in manifest.stages.items() if record.status in ("completed", "cached")}
    assert {"clean", "orders", "features", "cluster", "migration", "rfm", "propensity", "chaid", "clv",
            "customers"} <= ran
    run_dir = Path(manifest.run_dir)
    assert not (run_dir / "top_products.parquet").exists() and not (run_dir / "basket_rules.parquet").exists()
    customers = pd.read_parquet(run_dir / "customers.parquet")
    assert len(customers) == 2_357 and not any(c.startswith("recommended_") for c in customers.columns)
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "Best sellers did not run: the input has no StockCode or Description column." in report


@pytest.mark.real_data
def test_cdnow_reproduces_the_published_lifetime_value_models(cdnow_run):
    """BG/NBD and Gamma-Gamma on CDNOW's 39-week calibration, through `segment run`, within 1%."""
    _, manifest = cdnow_run
    facts = manifest.stages["clv"].metrics
    for name, published in PUBLISHED.items():
        assert facts[name] == pytest.approx(published, rel=0.01), name
    assert facts["bgnbd_log_likelihood"] == pytest.approx(-9582.4, abs=0.5)
    assert facts["gamma_gamma_customers"] == 946
    assert facts["bgnbd_customers"] == 2_357


def test_a_config_file_holds_the_run_parameters_and_the_command_line_overrides_it(prefect_server, tmp_path):
    config = tmp_path / "segment.toml"
    config.write_text(f"""
input_path = "{real(CDNOW)}"
as_of = "1997-10"
k = 3
clv_time_unit = "W"
methods = ["rfm", "clv"]

[columns]
CustomerID = "customer_id"
InvoiceDate = "date"
Quantity = "number_of_cds"
Sales = "dollar_value"
""")
    done = run_cli("run", "--config", str(config), "--k", "4", "--artifacts", str(tmp_path / "a"), "--json")
    assert done.returncode == 0, done.stderr
    manifest = manifest_of(done)
    assert manifest.parameters["columns"]["Sales"] == "dollar_value" and manifest.parameters["clv_time_unit"] == "W"
    assert manifest.k == 4  # the command line wins over the file's k = 3
    assert manifest.parameters["methods"] == ["rfm", "clv"] and "chaid" not in manifest.stages


def test_a_misspelt_config_key_names_the_closest(tmp_path):
    config = tmp_path / "segment.toml"
    config.write_text('input_path = "x.csv"\nk_maxx = 6\n')
    done = run_cli("run", "--config", str(config), "--artifacts", str(tmp_path / "a"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "unknown key(s) 'k_maxx' (did you mean 'k_max'?)" in done.stderr and str(config) in done.stderr
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("mapping, words", [
    ("CustomerID=customer,InvoiceDate=date,Sales=dollar_value",
     ["maps CustomerID to 'customer', which the file does not have", "did you mean 'customer_id'",
      "'customer_id', 'date', 'number_of_cds', 'dollar_value'"]),
    ("CustomerID=customer_id,InvoiceDate=date,Sales=customer_id",
     ["maps both CustomerID and Sales to the file's column 'customer_id'"]),
    ("CustomerID=customer_id,InvoiceDate=date",
     ["required column Sales not found", "--columns Sales=dollar_value"]),
    ("Customer=customer_id", ["'Customer' is not a column name of the product", "did you mean CustomerID"]),
], ids=["missing column", "two names one column", "no value column", "unknown name"])
def test_a_bad_mapping_is_one_paragraph_and_exit_2(mapping, words, tmp_path):
    done = run_cli("run", "--input", str(real(CDNOW)), "--columns", mapping, "--artifacts", str(tmp_path))
    assert done.returncode == 2, done.stdout + done.stderr
    message = done.stderr.strip()
    assert message.startswith("Error: ") and len(message.splitlines()) == 1 and "Traceback" not in message
    for word in words:
        assert word in message
    assert not list(tmp_path.glob("*/*/manifest.json")) or all(
        json.loads(p.read_text())["status"] != "completed" for p in tmp_path.glob("*/*/manifest.json"))
