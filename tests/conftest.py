"""Shared fixtures: the real UCI data when present, the committed sample, a real Prefect server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import CHROMIUM, CHROMIUM_ARGS, IN_CI, REAL_PARQUET, REAL_XLSX, SAMPLE, real

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def real_parquet() -> Path:
    return real(REAL_PARQUET)


@pytest.fixture(scope="session")
def real_xlsx() -> Path:
    return real(REAL_XLSX)


@pytest.fixture(scope="session")
def sample() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real server for the session: the product's own local server, in a folder of the tests'.

    Flows in this process and CLI subprocesses report to it through PREFECT_API_URL, and the CLI's
    flow commands are handed to its warm starter (SEGMENT_SERVER_HOME), as a user's would be.
    """
    from customer_segments.flows.server import LocalServer

    server = LocalServer(tmp_path_factory.mktemp("prefect-server"))
    api_url = server.ensure()
    status = server.status()
    previous = os.environ.get("PREFECT_API_URL")
    previous_home = os.environ.get("SEGMENT_SERVER_HOME")
    os.environ["PREFECT_API_URL"] = api_url
    os.environ["SEGMENT_SERVER_HOME"] = str(server.home)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        yield status
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()  # the last run logs reach the server before it stops
    if previous is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = previous
    if previous_home is None:
        os.environ.pop("SEGMENT_SERVER_HOME", None)
    else:
        os.environ["SEGMENT_SERVER_HOME"] = previous_home
    server.stop()


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session (Playwright's sync API allows one instance per thread)."""
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is missing; CI must install Debian's chromium (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed here (apt-get install chromium); CI installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL server for the session (see tests/support/postgres.py)."""
    from support import postgres

    server = postgres.start()
    yield server
    postgres.stop(server)
