"""The product as it is installed: a wheel in a fresh virtualenv outside the repository.

It must behave exactly like the checkout: the quality gates run (their suites ship inside the
package), a bad input is stopped, and a good one gives the same segments.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from support import REPO, SAMPLE, last_json, run_cli, run_flow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The `segment` command of a wheel built from this checkout, installed into a new virtualenv."""
    root = tmp_path_factory.mktemp("installed")
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(REPO)],
                   check=True, timeout=600, capture_output=True)
    wheel = next(wheels.glob("customer_segments-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                          timeout=1200, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def test_the_wheel_installs_one_package_with_its_suites_and_no_test_code(installed):
    site = site_packages(installed)
    ours = {p.name for p in site.iterdir() if not p.name.endswith((".dist-info", ".pth"))
            and p.name in ("tasks", "flows", "data", "expectations", "tests", "support", "customer_segments")}
    assert ours == {"customer_segments"}
    package = site / "customer_segments"
    assert {p.name for p in package.iterdir() if p.is_dir() and p.name != "__pycache__"} == \
        {"flows", "tasks", "expectations", "data"}
    suites = sorted(p.stem for p in (package / "expectations").glob("*.json"))
    assert suites == sorted(p.stem for p in (REPO / "expectations").glob("*.json"))
    assert (package / "data" / "sample" / "online_retail_sample.parquet").is_file()
    assert not list(package.rglob("test_*.py")) and not (package / "flows" / "support").exists()


def test_installed_command_stops_a_bad_input_at_the_gate(installed, prefect_server, tmp_path):
    """Half the prices negative: the raw_invoices gate must stop it, exactly as in the checkout."""
    bad = pd.read_parquet(SAMPLE).head(20_000)
    bad.loc[bad.index[::2], "UnitPrice"] = -bad.loc[bad.index[::2], "UnitPrice"].abs() - 0.01
    bad.to_csv(tmp_path / "bad.csv", index=False)
    result = run_cli("run", "--input", "bad.csv", "--artifacts", "artifacts", "--json", cwd=tmp_path,
                     command=installed / "bin" / "segment")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "raw_invoices" in result.stderr and "column UnitPrice" in result.stderr
    assert last_json(result.stdout)["status"] == "failed"
    assert not list((tmp_path / "artifacts").glob("*/latest"))


def test_installed_command_gives_the_segments_of_the_checkout(installed, prefect_server, tmp_path):
    result = run_cli("run", "--input", str(SAMPLE), "--artifacts", "artifacts", "--json", cwd=tmp_path,
                     command=installed / "bin" / "segment")
    assert result.returncode == 0, result.stderr
    summary = last_json(result.stdout)
    checkout = run_flow(SAMPLE, tmp_path / "checkout")
    assert (summary["k"], summary["customers"], summary["rows_clean"]) == (checkout.k, checkout.customers, checkout.rows_clean)
    manifest = json.loads((Path(summary["run_dir"]) / "manifest.json").read_text())
    gates = [g for stage in manifest["stages"].values() for g in stage["gates"].values()]
    assert len(gates) == len(list((REPO / "expectations").glob("*.json"))) and all(g["success"] for g in gates)
    for name in ("cluster_labels", "segment_profiles", "top_products"):
        pd.testing.assert_frame_equal(pd.read_parquet(Path(summary["run_dir"]) / f"{name}.parquet"),
                                      pd.read_parquet(Path(checkout.run_dir) / f"{name}.parquet"))
