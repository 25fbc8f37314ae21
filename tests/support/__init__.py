"""Helpers the tests share: paths, running the flow and the installed command, comparing folders.

Only tests use this package; it is not part of the installed distribution.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from customer_segments.tasks import catalogue
from customer_segments.tasks.runtime import parameters
from customer_segments.tasks.runtime.manifest import Manifest
from customer_segments.tasks.runtime.storage import sha256_file

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
REAL_PARQUET = SHARED_DATA / "online_retail.parquet"
REAL_XLSX = SHARED_DATA / "Online Retail.xlsx"
SAMPLE = REPO / "data" / "sample" / "online_retail_sample.parquet"
BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Debian's Chromium, driven by Playwright (which brings no browser of its own here). The closed
# network refuses Chromium's background connections; these flags keep it quiet.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]

# What a default run writes into its folder, from the catalogue: every dataset of every stage (the
# parsed input stays in the cache), and every figure but the migration heatmap (a series' first
# month has no migration to draw).
PARQUETS = tuple(d for s in catalogue.STAGES if not s.shared for d in s.outputs)
PLOTS = tuple(f.stem for f in catalogue.FIGURES if f.stem != "segment_migration")
OUTPUTS = (*(f"{d}.parquet" for d in PARQUETS), *(f"plots/{p}.png" for p in PLOTS))
# The run parameters' declared defaults.
DEFAULTS = parameters.defaults()


def real(path: Path) -> Path:
    """A file of ../shared/data: always there in CI; outside CI a test without it is skipped."""
    if path.exists():
        return path
    if IN_CI:
        pytest.fail(f"{path} is missing; CI always has ../shared/data beside the clone")
    pytest.skip(f"{path} is absent outside CI (../shared/data is not beside this clone); CI runs this test")


def run_flow(input_path: Path, artifacts: Path, **params) -> Manifest:
    """The flow in this process, against the session's Prefect server."""
    from customer_segments.flows.pipeline import segmentation

    return segmentation(input_path=str(input_path), artifacts=str(artifacts), **params)


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path = REPO,
            command: Path | None = None) -> subprocess.CompletedProcess:
    """The installed `segment` command in a subprocess."""
    return subprocess.run(
        [str(command or BIN / "segment"), *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, cwd=cwd,
    )


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file below a folder with its sha256 and modification time."""
    return {p.relative_to(folder).as_posix(): (sha256_file(p), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_identical_outputs(run_dir: Path, reference: Path) -> None:
    for name in OUTPUTS:
        assert sha256_file(run_dir / name) == sha256_file(reference / name), name
