"""The whole flow against a real Prefect server: layout, manifest, determinism, isolation of runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_cli
from tasks.storage import sha256_file

PARQUETS = ("clean_invoices", "customer_features", "normalized_features", "k_selection",
            "cluster_labels", "segment_profiles", "top_products")
PLOTS = ("elbow", "silhouette", "ordercount_vs_totalsales", "ordercount_vs_avgordervalue",
         "totalsales_vs_avgordervalue")


def run_flow(input_path: Path, artifacts: Path, **params) -> dict:
    from flows.pipeline import segmentation

    return segmentation(input_path=str(input_path), artifacts=str(artifacts), **params)


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.relative_to(folder).as_posix(): (sha256_file(p), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sample_run(prefect_server, sample, tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("artifacts")
    return run_flow(sample, artifacts), artifacts


def test_run_folder_layout(sample_run):
    manifest, artifacts = sample_run
    run_dir = Path(manifest["run_dir"])
    assert run_dir.parent.parent == artifacts
    assert run_dir.parent.name == manifest["as_of"]
    assert run_dir.name == manifest["run_id"]
    assert manifest["run_id"].endswith(manifest["flow_run_id"].replace("-", "")[:8])
    files = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    expected = {f"{d}.parquet" for d in PARQUETS} | {f"plots/{p}.png" for p in PLOTS} | {"manifest.json"}
    assert expected <= files
    assert not [f for f in files if f.endswith(".tmp")]
    assert (run_dir.parent / "latest").resolve() == run_dir.resolve()


def test_manifest_hashes_match_the_files(sample_run):
    manifest, artifacts = sample_run
    on_disk = json.loads((Path(manifest["run_dir"]) / "manifest.json").read_text())
    assert on_disk["status"] == "completed"
    assert on_disk["input"]["sha256"] == sha256_file(Path(on_disk["input"]["path"]))
    assert on_disk["input"]["rows"] > 0
    assert on_disk["cutoff"] == pd.Period(on_disk["as_of"]).start_time.isoformat()
    assert on_disk["environment"]["packages"]["prefect"]
    checked = 0
    reports = set()
    for name, stage in on_disk["stages"].items():
        assert stage["status"] in ("completed", "cached"), name
        assert stage["seconds"] >= 0
        for dataset, info in stage["outputs"].items():
            path = artifacts / info["path"]
            assert sha256_file(path) == info["sha256"], dataset
            if info["rows"] is not None:
                frame = pd.read_parquet(path)
                assert len(frame) == info["rows"] and list(frame.columns) == info["columns"]
            if info["file"].startswith("validation/"):
                reports.add(dataset)
                assert path.parent == Path(manifest["run_dir"]) / "validation"
            checked += 1
    # Parquet datasets, plots, the parsed input in the cache and one quality report per suite.
    assert checked == len(PARQUETS) + len(PLOTS) + 1 + len(reports)
    assert {f"validation/{d}.json" for d in ("raw_invoices", "clean_invoices", "customer_features",
            "normalized_features", "cluster_labels", "segment_profiles")} <= reports


def test_rerun_reuses_every_stage_and_moves_latest(sample_run, sample):
    manifest, artifacts = sample_run
    again = run_flow(sample, artifacts)
    assert again["run_id"] != manifest["run_id"]
    assert {s["status"] for s in again["stages"].values()} == {"cached"}
    assert (Path(again["run_dir"]).parent / "latest").resolve() == Path(again["run_dir"]).resolve()


def test_two_runs_give_byte_identical_outputs(prefect_server, sample_run, sample, tmp_path):
    manifest, _ = sample_run
    fresh = run_flow(sample, tmp_path)  # a separate artifacts folder: nothing cached
    assert {s["status"] for s in fresh["stages"].values()} == {"completed"}
    for name in (*(f"{d}.parquet" for d in PARQUETS), *(f"plots/{p}.png" for p in PLOTS)):
        assert sha256_file(Path(fresh["run_dir"]) / name) == sha256_file(Path(manifest["run_dir"]) / name), name


def test_later_run_leaves_earlier_run_untouched(prefect_server, sample, tmp_path):
    first = run_flow(sample, tmp_path)
    before = snapshot(Path(first["run_dir"]))
    second = run_flow(sample, tmp_path, k=5)
    assert snapshot(Path(first["run_dir"])) == before
    assert pd.read_parquet(Path(second["run_dir"]) / "cluster_labels.parquet")["segment"].nunique() == 5
    assert (Path(second["run_dir"]).parent / "latest").resolve() == Path(second["run_dir"]).resolve()


def test_cli_run_prints_summary_and_json(prefect_server, sample, tmp_path):
    result = run_cli("run", "--input", str(sample), "--artifacts", str(tmp_path), "--k", "4", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"run_id", "run_dir", "as_of", "status", "k", "customers", "silhouette"} <= summary.keys()
    assert summary["status"] == "completed" and summary["k"] == 4
    assert Path(summary["run_dir"]).is_dir() and Path(summary["run_dir"]).parent.parent == tmp_path
    assert "segment 0:" in result.stdout and "Results:" in result.stdout


def test_cli_missing_input_is_one_paragraph_and_exit_2(prefect_server, tmp_path):
    result = run_cli("run", "--input", str(tmp_path / "nope.xlsx"), "--artifacts", str(tmp_path / "a"))
    assert result.returncode == 2
    assert "nope.xlsx" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").glob("*/*/manifest.json"))


@pytest.mark.parametrize("suffix", ["parquet", "csv", "xlsx"])
def test_cli_generate_writes_a_readable_export(suffix, tmp_path):
    from tasks.ingest import COLUMNS, read_invoices

    out = tmp_path / f"export.{suffix}"
    result = run_cli("generate", "--out", str(out), "--customers", "40", "--months", "3", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert f"of 40 customers to {out}" in result.stdout
    invoices = read_invoices(out)
    assert tuple(invoices.columns) == COLUMNS and len(invoices) > 40
    assert invoices["CustomerID"].dropna().nunique() == 40
    assert invoices["InvoiceNo"].str.fullmatch(r"C?\d{6}").all()
