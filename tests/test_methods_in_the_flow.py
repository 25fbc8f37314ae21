"""The article's other methods as stages of the flow: switched on and off, recorded, and on their own."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from support import SAMPLE, last_json, run_cli

from customer_segments.tasks.methods.products import is_service_code, load_service_codes
from customer_segments.tasks.runtime.manifest import Manifest


def test_methods_can_be_switched_off_and_their_outputs_are_then_absent(prefect_server, tmp_path):
    done = run_cli("run", "--input", str(SAMPLE), "--artifacts", str(tmp_path), "--no-basket", "--no-chaid", "--json")
    assert done.returncode == 0, done.stderr
    run_dir = Path(last_json(done.stdout)["run_dir"])
    manifest = Manifest.model_validate_json((run_dir / "manifest.json").read_text())
    assert manifest.parameters["methods"] == ["rfm", "clv", "propensity"]
    assert {"rfm", "propensity"} <= set(manifest.stages) and not {"basket", "chaid"} & set(manifest.stages)
    assert not (run_dir / "basket_rules.parquet").exists() and not (run_dir / "plots" / "basket_top_rules.png").exists()
    assert (run_dir / "rfm_scores.parquet").exists() and (run_dir / "plots" / "rfm_heatmap.png").exists()
    facts = manifest.stages["propensity"].metrics
    assert 0.5 < facts["roc_auc"] <= 1 and facts["top_decile_lift"] >= 1 and facts["horizon_months"] == 3


def test_best_sellers_leave_out_service_codes_and_the_manifest_counts_them(prefect_server, tmp_path):
    done = run_cli("run", "--input", str(SAMPLE), "--artifacts", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    run_dir = Path(last_json(done.stdout)["run_dir"])
    manifest = Manifest.model_validate_json((run_dir / "manifest.json").read_text())
    clean = pd.read_parquet(run_dir / "clean_invoices.parquet")
    service = clean["StockCode"].isin(["POST", "DOT", "C2", "M"])
    assert service.sum() > 0  # the generator plants postage and manual lines
    assert manifest.metric("best_sellers", "service_lines_excluded") == int(service.sum())
    top = pd.read_parquet(run_dir / "top_products.parquet")
    assert not top["StockCode"].isin(["POST", "DOT", "C2", "M"]).any()
    rules = pd.read_parquet(run_dir / "basket_rules.parquet")
    assert set(rules["segment_id"]) >= {"all"} and not rules["antecedents"].str.contains("POST").any()
    recommendations = pd.read_parquet(run_dir / "recommendations.parquet")
    assert (recommendations["StockCode"] != recommendations["recommended_StockCode"]).all()
    assert manifest.metric("basket", "rules_total") == len(rules)


def test_segment_basket_prints_the_rules_of_a_file_or_a_country(tmp_path):
    everyone = run_cli("basket", "--input", str(SAMPLE), "--top", "5", "--json")
    assert everyone.returncode == 0, everyone.stderr
    rules = [json.loads(line) for line in everyone.stdout.splitlines()]
    assert len(rules) == 5 and rules[0]["lift"] >= rules[-1]["lift"]
    assert {"antecedent_names", "consequent_names", "support", "confidence", "lift", "leverage", "conviction"} <= rules[0].keys()
    table = run_cli("basket", "--input", str(SAMPLE), "--country", "United Kingdom", "--min-lift", "2",
                    "--out", str(tmp_path / "rules.csv"))
    assert table.returncode == 0, table.stderr
    assert "if a basket has" in table.stdout and "rule(s) for United Kingdom" in table.stdout
    assert pd.read_csv(tmp_path / "rules.csv")["lift"].min() >= 2
    unknown = run_cli("basket", "--input", str(SAMPLE), "--country", "Atlantis")
    assert unknown.returncode == 2 and "Atlantis" in unknown.stderr and "United Kingdom" in unknown.stderr


def test_a_sampled_basket_run_says_so_in_the_manifest_the_summary_and_the_report(prefect_server, tmp_path):
    # --sample-error 0.9 needs 811 baskets at a 1% support: fewer than the sample's groups hold.
    done = run_cli("run", "--input", str(SAMPLE), "--artifacts", str(tmp_path), "--sample-error", "0.9",
                   "--no-chaid", "--no-clv", "--no-propensity", "--no-rfm", "--json")
    assert done.returncode == 0, done.stderr
    run_dir = Path(last_json(done.stdout)["run_dir"])
    manifest = Manifest.model_validate_json((run_dir / "manifest.json").read_text())
    assert manifest.parameters["basket_sample_error"] == 0.9
    sampled = manifest.metric("basket", "basket_sampled_groups")
    assert sampled and all(group["mined"] == 811 < group["baskets"] for group in sampled)
    everyone = next(group for group in sampled if group["segment"] == -1)
    clean = pd.read_parquet(run_dir / "clean_invoices.parquet")
    products = clean[~is_service_code(clean["StockCode"], load_service_codes()).to_numpy()]
    assert everyone["baskets"] == products["InvoiceNo"].nunique()
    note = manifest.metric("basket", "basket_sample_note")
    assert "811 of" in note and "90% of the support threshold at 99% confidence" in note
    assert ("basket", note) in manifest.notes()  # what the run's summary prints after it
    html = (run_dir / "report.html").read_text()
    assert f"from a random sample of 811 of its {everyone['baskets']:,} baskets" in html
