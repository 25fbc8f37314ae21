"""`segment report`: a run's report.html, built on demand for runs made before reports existed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO, SAMPLE, run_cli

# The last commit before reports, segment ids and the other methods: its runs have none of them.
BEFORE_REPORTS = "10ae8ac"


@pytest.fixture(scope="module")
def old_run(prefect_server, tmp_path_factory) -> tuple[Path, str]:
    """A run made by the code as it was at BEFORE_REPORTS (its own checkout, on PYTHONPATH)."""
    root = tmp_path_factory.mktemp("before-reports")
    code = root / "code"
    code.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", BEFORE_REPORTS, "flows", "tasks", "expectations", "data"],
                             cwd=REPO, capture_output=True, timeout=120)
    if archive.returncode != 0:
        pytest.fail(f"commit {BEFORE_REPORTS} is not in this clone's history: {archive.stderr.decode()[-500:]}")
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True, timeout=120)
    artifacts = root / "artifacts"
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, "-c", "from flows.cli import app; app()", "run", "--input", str(SAMPLE),
                           "--artifacts", str(artifacts), "--json"],
                          cwd=code, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout.strip().splitlines()[-1])
    return artifacts, run["run_id"]


def test_report_is_built_for_a_run_made_before_reports(old_run):
    artifacts, run_id = old_run
    run_dir = next(artifacts.glob(f"*/{run_id}"))
    assert not (run_dir / "report.html").exists() and not (run_dir / "segment_lineage.parquet").exists()
    made = run_cli("report", run_id, "--artifacts", str(artifacts))
    assert made.returncode == 0, made.stderr
    path = Path(made.stdout.strip().splitlines()[-1])
    assert path == (run_dir / "report.html").resolve() and path.stat().st_size > 50_000
    html = path.read_text()
    assert "High value: frequent, big spenders" in html and "data:image/png;base64," in html
    # What this old run did not make is said, not shown broken.
    assert "Not in this report" in html and "made without it" in html
    for absent in ("basket_rules", "rfm_scores", "propensity"):
        assert not (run_dir / f"{absent}.parquet").exists()
    again = run_cli("report", run_id, "--artifacts", str(artifacts))
    assert again.returncode == 0 and Path(again.stdout.strip()) == path  # built once, then found


def test_every_run_gets_its_report_and_unknown_runs_are_named(prefect_server, tmp_path):
    done = run_cli("run", "--input", str(SAMPLE), "--artifacts", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout.strip().splitlines()[-1])
    assert (Path(run["run_dir"]) / "report.html").exists()
    shown = run_cli("report", run["run_id"], "--artifacts", str(tmp_path))
    assert shown.returncode == 0 and Path(shown.stdout.strip()) == (Path(run["run_dir"]) / "report.html").resolve()
    missing = run_cli("report", "no-such-run", "--artifacts", str(tmp_path))
    assert missing.returncode == 2 and "no-such-run" in missing.stderr


def test_runs_made_before_are_listed_by_history(old_run):
    artifacts, run_id = old_run
    listed = run_cli("history", "--artifacts", str(artifacts), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["run_id"] for r in rows] == [run_id] and rows[0]["k"] == 4 and rows[0]["status"] == "completed"
