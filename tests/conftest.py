"""Shared fixtures: the real UCI data when present, the committed sample, a real Prefect server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.server import LocalPrefectServer

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
REAL_PARQUET = SHARED_DATA / "online_retail.parquet"
REAL_XLSX = SHARED_DATA / "Online Retail.xlsx"
SAMPLE = REPO / "data" / "sample" / "online_retail_sample.parquet"
BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _real(path: Path) -> Path:
    if path.exists():
        return path
    if IN_CI:
        pytest.fail(f"{path} is missing; CI always has ../shared/data beside the clone")
    pytest.skip(f"{path} is absent outside CI (../shared/data is not beside this clone); CI runs this test")


@pytest.fixture(scope="session")
def real_parquet() -> Path:
    return _real(REAL_PARQUET)


@pytest.fixture(scope="session")
def real_xlsx() -> Path:
    return _real(REAL_XLSX)


@pytest.fixture(scope="session")
def sample() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real server for the session; flows in this process and CLI subprocesses report to it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = LocalPrefectServer(tmp_path_factory.mktemp("prefect-home")).start()
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield server
    if previous is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = previous
    server.stop()


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "segment"), *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, cwd=REPO,
    )
