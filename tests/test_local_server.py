"""The local Prefect server the commands report to: real `prefect server start` processes, no mocks.

Each test has its own SEGMENT_SERVER_HOME under tmp_path. Teardown stops what the test started, and kills any
leftover process group of that folder even if the test failed. This file uses no conftest fixtures.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from customer_segments.flows.server import LocalServer, ServerError, ensure_api_url
from customer_segments.flows.server.local import DEFAULT_START_TIMEOUT

PYTHON = sys.executable
# The warm starter a server starts beside it is tested in test_warm_start.py; here it would only add
# its imports to every one of these starts.
BASE_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GX_ANALYTICS_ENABLED": "false", "SEGMENT_WARM_START": "0"}
# What a user's environment may hold that would change which server is used.
CLEARED = ("PREFECT_API_URL", "PREFECT_UI_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH",
           "SEGMENT_PREFECT_SERVER", "SEGMENT_SERVER_START_TIMEOUT", "SEGMENT_SERVER_HOME")


# --- processes, read from /proc ------------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # [0] state, [2] process group


def _live_pids() -> list[int]:
    """Processes that exist and are not zombies (PID 1 may reap exited servers late)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) and stat[0] not in ("Z", "X"):
            pids.append(int(entry))
    return pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _environ(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def server_pids(home: Path) -> list[int]:
    """`prefect server start` processes whose environment points at this folder."""
    return [pid for pid in _live_pids()
            if "prefect server start" in _cmdline(pid) and f"PREFECT_HOME={home}" in _environ(pid)]


def group_members(pgid: int) -> list[int]:
    return [pid for pid in _live_pids() if (stat := _stat(pid)) and int(stat[2]) == pgid]


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def wait_until_gone(pids: list[int], timeout: float = 10) -> list[int]:
    end = time.monotonic() + timeout
    while (left := [p for p in pids if p in _live_pids()]) and time.monotonic() < end:
        time.sleep(0.1)
    return left


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture
def home(tmp_path, monkeypatch):
    """A server folder for this test, and an environment with no PREFECT_API_URL from anywhere."""
    saved = dict(os.environ)
    for name in CLEARED:
        os.environ.pop(name, None)
    os.environ.update(BASE_ENV)
    folder = tmp_path / "server"
    os.environ["SEGMENT_SERVER_HOME"] = str(folder)
    # The client's Prefect home: no profile of this machine's user is read.
    os.environ["PREFECT_HOME"] = str(tmp_path / "client-prefect-home")
    monkeypatch.chdir(tmp_path)  # no .env or prefect.toml of the repository either
    try:
        yield folder
    finally:
        os.environ.clear()
        os.environ.update(saved)
        try:
            LocalServer(folder).stop(timeout=10)
        finally:
            for pid in server_pids(folder):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            assert not wait_until_gone(server_pids(folder)), "a server of this test survived teardown"


@pytest.fixture
def burners():
    """Two processes keeping both cores busy, stopped in teardown."""
    procs = [subprocess.Popen([PYTHON, "-c", "while True: pass"], start_new_session=True) for _ in range(2)]
    try:
        yield procs
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    return env | extra


# --- tests ---------------------------------------------------------------------------------------

CONCURRENT_START = textwrap.dedent("""
    import os, sys, time
    from customer_segments.flows.server import ensure_api_url
    open(sys.argv[1], "w").close()              # imported, ready
    while not os.path.exists(sys.argv[2]):      # both start at the same moment
        time.sleep(0.005)
    print(ensure_api_url())
""")


@pytest.mark.slow
def test_concurrent_first_starts_share_one_server(home, tmp_path):
    go = tmp_path / "go"
    procs = []
    for i in range(2):
        ready = tmp_path / f"ready{i}"
        procs.append((ready, subprocess.Popen([PYTHON, "-c", CONCURRENT_START, str(ready), str(go)],
                                              env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                              text=True, cwd=tmp_path)))
    try:
        end = time.monotonic() + 60
        while not all(ready.exists() for ready, _ in procs) and time.monotonic() < end:
            time.sleep(0.01)
        go.touch()
        results = [proc.communicate(timeout=400) for _, proc in procs]
    finally:
        for _, proc in procs:
            proc.kill()
    for (_, proc), (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
    urls = [out.strip() for out, _ in results]
    assert urls[0] == urls[1] and urls[0].startswith("http://127.0.0.1:")

    state = json.loads((home / "server.json").read_text())
    assert state["api_url"] == urls[0]
    assert server_pids(home) == [state["pid"]]
    assert healthy(urls[0])
    # One start was attempted at all: the second command waited on the lock, then found the first's server.
    starts = [line for line in (home / "server.log").read_text().splitlines() if line.startswith("--- ")]
    assert len(starts) == 1, starts


@pytest.mark.slow
def test_start_completes_while_both_cores_are_busy(home, burners):
    notes: list[str] = []
    t0 = time.monotonic()
    api_url = LocalServer(home).ensure(progress=notes.append)  # the default budget
    elapsed = time.monotonic() - t0
    assert healthy(api_url)
    assert LocalServer(home).status()["running"]
    assert all(p.poll() is None for p in burners), "the cores were not busy all along"
    # Progress lines come after 5 s, about every 5 s, and name the log.
    if elapsed > 6:
        assert notes and all(str(home / "server.log") in note for note in notes)
    print(f"start with both cores busy: {elapsed:.1f} s, {len(notes)} progress line(s)")


@pytest.mark.slow
def test_killed_server_is_detected_and_replaced(home):
    server = LocalServer(home)
    first_url = server.ensure()
    first = server.status()
    os.killpg(first["pid"], signal.SIGKILL)
    assert not wait_until_gone([first["pid"]])

    after_kill = server.status()
    assert after_kill["running"] is False and after_kill["stale"] is True
    assert not healthy(first_url)
    # A pid file as `prefect server start --background` leaves one must not stop a new start either.
    (home / "prefect-home" / "server.pid").write_text(str(first["pid"]))

    second_url = server.ensure()
    second = server.status()
    assert second["running"] and second["pid"] != first["pid"]
    assert healthy(second_url)
    assert server_pids(home) == [second["pid"]]


@pytest.mark.slow
def test_hung_server_is_given_time_then_replaced(home):
    server = LocalServer(home)
    server.ensure()
    hung = server.status()["pid"]
    os.killpg(hung, signal.SIGSTOP)  # alive, holding its port, not answering
    try:
        status = server.status()
        assert status["running"] is False and status["stale"] is True and "does not answer" in status["problem"]

        notes: list[str] = []
        t0 = time.monotonic()
        api_url = server.ensure(timeout=60, progress=notes.append)  # 10 % of it, 6 s, to recover
        assert time.monotonic() - t0 >= 6
        assert any("not answering" in note for note in notes)
        assert healthy(api_url) and server.status()["pid"] != hung
        assert group_members(hung) == []
        assert server_pids(home) == [server.status()["pid"]]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(hung, signal.SIGKILL)


@pytest.mark.slow
def test_stop_leaves_nothing_running(home):
    server = LocalServer(home)
    server.ensure()
    pid = server.status()["pid"]
    assert group_members(pid)

    assert server.stop() is True
    assert group_members(pid) == []
    assert server_pids(home) == []
    assert not (home / "server.json").exists()
    assert server.status()["running"] is False
    assert server.stop() is False


FLOW_RUN = textwrap.dedent("""
    from customer_segments.flows.server import ensure_api_url
    url = ensure_api_url()
    from prefect import flow

    @flow(name="tiny-local-server-check")
    def tiny(x: int) -> int:
        return x + 1

    state = tiny(41, return_state=True)
    print("RESULT", url, state.state_details.flow_run_id, state.result())
""")

READ_BACK = textwrap.dedent("""
    import sys
    from prefect.client.orchestration import get_client
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(sys.argv[1])
        flow = client.read_flow(run.flow_id)
        print("READ", flow.name, run.state.type.value)
""")


@pytest.mark.slow
def test_flow_run_reports_to_the_local_server(home, tmp_path):
    env = child_env()
    assert "PREFECT_API_URL" not in env
    done = subprocess.run([PYTHON, "-c", FLOW_RUN], env=env, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "temporary server" not in done.stdout + done.stderr
    _, api_url, flow_run_id, result = done.stdout.strip().splitlines()[-1].split()
    assert result == "42"
    assert api_url == LocalServer(home).status()["api_url"]

    read = subprocess.run([PYTHON, "-c", READ_BACK, flow_run_id], env=child_env(PREFECT_API_URL=api_url),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip().splitlines()[-1] == "READ tiny-local-server-check COMPLETED"


@pytest.mark.slow
def test_server_commands(home):
    from typer.testing import CliRunner

    from customer_segments.flows.server import server_app

    runner = CliRunner()
    result = runner.invoke(server_app, ["status", "--json"])
    assert result.exit_code == 3 and json.loads(result.stdout)["running"] is False

    result = runner.invoke(server_app, ["start"])
    assert result.exit_code == 0, result.output
    info = LocalServer(home).status()
    for line in (f"UI:   {info['ui_url']}", f"API:  {info['api_url']}", f"Home: {home}",
                 f"Log:  {home / 'server.log'}"):
        assert line in result.stdout

    result = runner.invoke(server_app, ["status", "--json"])
    assert result.exit_code == 0
    shown = json.loads(result.stdout)
    assert shown["running"] is True and shown["pid"] == info["pid"] and shown["api_url"] == info["api_url"]

    result = runner.invoke(server_app, ["stop"])
    assert result.exit_code == 0 and f"pid {info['pid']}" in result.stdout
    assert group_members(info["pid"]) == []
    result = runner.invoke(server_app, ["stop"])
    assert result.exit_code == 0 and "No local server was running" in result.stdout
    assert runner.invoke(server_app, ["status"]).exit_code == 3


def test_api_url_from_the_environment_or_temporary_mode_starts_nothing(home, tmp_path):
    os.environ["PREFECT_API_URL"] = "http://127.0.0.1:9/api"
    assert ensure_api_url() == "http://127.0.0.1:9/api"
    assert not home.exists() and server_pids(home) == []

    del os.environ["PREFECT_API_URL"]
    os.environ["SEGMENT_PREFECT_SERVER"] = "temporary"
    assert ensure_api_url() is None
    assert "PREFECT_API_URL" not in os.environ
    assert not home.exists() and server_pids(home) == []
    os.environ.pop("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", None)

    # An API URL from the user's active Prefect profile is used as well: Prefect would use that server.
    del os.environ["SEGMENT_PREFECT_SERVER"]
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('active = "mine"\n[profiles.mine]\nPREFECT_API_URL = "http://127.0.0.1:9/api"\n')
    os.environ["PREFECT_PROFILES_PATH"] = str(profiles)
    assert ensure_api_url() == "http://127.0.0.1:9/api"
    assert "PREFECT_API_URL" not in os.environ
    assert not home.exists() and server_pids(home) == []


def _assert_actionable(exc: ServerError, log: Path) -> None:
    message = str(exc)
    assert "\n" not in message
    assert str(log) in message
    assert "export PREFECT_API_URL=http://HOST:PORT/api" in message
    assert exc.exit_code == 2
    assert str(pickle.loads(pickle.dumps(exc))) == message


@pytest.mark.slow
def test_a_server_that_cannot_start_gives_one_actionable_paragraph(home):
    # A real failure: the database file is not SQLite (a damaged file, or something else under that name).
    # Permission bits would not stop root, which runs these tests.
    home.mkdir(parents=True)
    (home / "prefect.db").write_bytes(b"this is not an sqlite database\n" * 200)
    with pytest.raises(ServerError) as caught:
        LocalServer(home).ensure(timeout=120)
    _assert_actionable(caught.value, home / "server.log")
    message = str(caught.value)
    assert "file is not a database" in message
    assert str(home / "prefect.db") in message
    assert "port(s) " in message
    assert server_pids(home) == []
    assert not (home / "server.json").exists()


def test_a_folder_that_cannot_be_created_gives_one_actionable_paragraph(tmp_path, home):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    folder = blocker / "server"
    os.environ["SEGMENT_SERVER_HOME"] = str(folder)
    with pytest.raises(ServerError) as caught:
        ensure_api_url()
    _assert_actionable(caught.value, folder / "server.log")
    assert "PREFECT_API_URL" not in os.environ


@pytest.mark.slow
def test_two_first_runs_on_a_busy_machine_share_one_server_and_both_complete(home, burners, tmp_path):
    """What a new user does: `segment run` with no server anywhere, twice at once, cores taken."""
    sample = Path(__file__).resolve().parent.parent / "data" / "sample" / "online_retail_sample.parquet"
    segment = Path(PYTHON).parent / "segment"
    runs = [subprocess.Popen([str(segment), "run", "--input", str(sample), "--artifacts", str(tmp_path / f"a{i}"),
                              "--json"], env=child_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [(run.communicate(timeout=900), run.returncode) for run in runs]
    for (out, err), code in results:
        assert code == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1])["status"] == "completed"
    assert len(server_pids(home)) == 1
    state = json.loads((home / "server.json").read_text())
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(state["api_url"]) as client:
        names = [fr.name for fr in client.read_flow_runs()]
    assert sorted(names) == ["segmentation-2011-12", "segmentation-2011-12"]  # both are in the UI's history


@pytest.mark.parametrize("own", [None, "45"])
def test_prefects_temporary_server_gets_the_local_servers_start_budget(own):
    """Prefect waits 20 s for its temporary server by default, which a loaded machine exceeded; with
    SEGMENT_PREFECT_SERVER=temporary it waits as long as the local server would (a user's own setting wins)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "SEGMENT_SERVER_START_TIMEOUT"}
    env |= {"SEGMENT_PREFECT_SERVER": "temporary", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if own is not None:
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = own
    code = ("from customer_segments.flows.server.local import ensure_api_url\n"
            "assert ensure_api_url() is None\n"
            "from prefect.settings import get_current_settings\n"
            "print(get_current_settings().server.ephemeral.startup_timeout_seconds)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) == (45 if own else int(DEFAULT_START_TIMEOUT))
