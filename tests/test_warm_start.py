"""The warm starter beside the local server (tasks/runtime/warm_start.py): real servers, real runs.

Each test starts its own local server (and so its own starter) in a folder of its own, and points
the commands at it with SEGMENT_SERVER_HOME.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support import BIN, OUTPUTS, REPO, SAMPLE, last_json, run_cli

from customer_segments.flows.server import LocalServer
from customer_segments.tasks.runtime import run_folders, warm_start
from customer_segments.tasks.runtime.storage import sha256_file


def _ppid(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else int(fields[1])


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is `pid`."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and _ppid(int(e)) == pid]


class Starter:
    """A local server in a folder of the test's, its warm starter, and the commands' environment."""

    def __init__(self, home: Path):
        self.server = LocalServer(home)
        self.api_url = self.server.ensure()
        self.pid = self.server.status()["warm_start_pid"]
        self.env = {"SEGMENT_SERVER_HOME": str(home), "PREFECT_API_URL": self.api_url}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and "ready:" not in self.log():
            time.sleep(0.2)
        assert "ready:" in self.log(), f"the warm starter never got ready:\n{self.log()}"

    def log(self) -> str:
        """What the starter logged since the test began (`since`)."""
        try:
            return self.server.warm_log.read_text()[self.since:]
        except OSError:
            return ""

    since = 0

    def begin(self) -> Starter:
        self.since = 0
        self.since = len(self.log())
        return self

    def handed_over(self) -> int:
        return self.log().count(" started")

    def collected(self, at_least: int, timeout: float = 30) -> list[str]:
        """The "ended" lines of the processes it collected, once there are `at_least` (it collects
        them as they end, just after the command has its status)."""
        deadline = time.monotonic() + timeout
        while True:
            ended = [line for line in self.log().splitlines() if " ended: exit " in line]
            if len(ended) >= at_least or time.monotonic() > deadline:
                return ended
            time.sleep(0.1)


@pytest.fixture(scope="module")
def shared_starter(tmp_path_factory):
    # A short folder: a Unix socket's path has at most 107 bytes.
    started = Starter(tmp_path_factory.mktemp("warm"))
    try:
        yield started
    finally:
        started.server.stop(timeout=10)


@pytest.fixture
def starter(shared_starter):
    return shared_starter.begin()


def parquet_hashes(run_dir: Path) -> dict[str, str]:
    return {name: sha256_file(run_dir / name) for name in OUTPUTS}


def test_a_run_handed_to_the_warm_starter_is_the_run_made_cold_byte_for_byte(starter, tmp_path):
    assert starter.pid is not None and warm_start.socket_path(starter.server.home).exists()
    warm = run_cli("run", "--input", str(SAMPLE), "--artifacts", str(tmp_path / "warm"), "--json", env=starter.env)
    assert warm.returncode == 0, warm.stderr
    # Handed over: the starter forked the run, and it collected the run's process and both helpers,
    # forked from the run's process (none of the three imported the libraries again).
    assert starter.handed_over() == 1
    assert len(starter.collected(3)) == 3, starter.log()
    cold = run_cli("run", "--input", str(SAMPLE), "--artifacts", str(tmp_path / "cold"), "--json",
                   env={**starter.env, "SEGMENT_WARM_START": "0"})
    assert cold.returncode == 0, cold.stderr
    assert starter.handed_over() == 1  # the cold one was not
    warm_summary, cold_summary = last_json(warm.stdout), last_json(cold.stdout)
    assert warm_summary["segment_sizes"] == cold_summary["segment_sizes"]
    assert parquet_hashes(Path(warm_summary["run_dir"])) == parquet_hashes(Path(cold_summary["run_dir"]))
    manifest = json.loads((Path(warm_summary["run_dir"]) / "manifest.json").read_text())
    computed_in = {name: stage["computed_in"] for name, stage in manifest["stages"].items()}
    assert computed_in["basket"] == "worker process" and computed_in["cluster"] == "flow process"
    # What the person at the terminal saw is the same too (but the run's own id and folder).
    def shown(out: str, summary: dict) -> str:
        return out.replace(summary["run_id"], "RUN").replace(summary["run_dir"], "DIR").replace(
            summary["flow_run_id"], "FLOW").replace(str(tmp_path / "warm"), "ART").replace(str(tmp_path / "cold"), "ART")
    assert shown(warm.stdout, warm_summary) == shown(cold.stdout, cold_summary)


def test_bad_input_through_the_starter_gets_the_same_paragraph_and_exit_status(starter, tmp_path):
    bad = tmp_path / "orders.csv"
    bad.write_text("a,b\n1,2\n")
    warm = run_cli("run", "--input", str(bad), "--artifacts", str(tmp_path / "a"), env=starter.env)
    cold = run_cli("run", "--input", str(bad), "--artifacts", str(tmp_path / "b"),
                   env={**starter.env, "SEGMENT_WARM_START": "0"})
    assert starter.handed_over() == 1
    assert warm.returncode == cold.returncode == 2
    assert warm.stderr == cold.stderr.replace(str(tmp_path / "b"), str(tmp_path / "a"))
    assert "column CustomerID" in warm.stderr and "Traceback" not in warm.stderr
    assert not (tmp_path / "a").exists()


def test_a_command_whose_libraries_could_differ_starts_cold(starter, tmp_path):
    bad = tmp_path / "orders.csv"
    bad.write_text("a,b\n1,2\n")
    # Another time zone: a library imported with the starter's would not see it.
    other = "UTC0" if os.environ.get("TZ") != "UTC0" else "EST5"
    done = run_cli("run", "--input", str(bad), "--artifacts", str(tmp_path / "a"), env={**starter.env, "TZ": other})
    assert done.returncode == 2 and "column CustomerID" in done.stderr
    assert starter.handed_over() == 0
    assert "refused a command: another value of TZ" in starter.log()
    assert other not in starter.log()  # names, never values (a value may be a password)


def test_killing_the_command_ends_the_run_it_handed_over(starter, tmp_path):
    process = subprocess.Popen(
        [str(BIN / "segment"), "run", "--input", str(SAMPLE), "--artifacts", str(tmp_path)],
        env={**os.environ, **starter.env, "SEGMENT_FAULT": "profile:hang"}, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list((tmp_path / "cache" / "profile").glob("*/*.parquet")):
        time.sleep(0.2)
    run_dir = next(tmp_path.glob("*/*/manifest.json")).parent
    assert run_folders.is_alive(run_dir)
    running = children_of(starter.pid)
    assert running, "the run is not the starter's"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (run_folders.is_alive(run_dir) or children_of(starter.pid)):
        time.sleep(0.05)
    assert not run_folders.is_alive(run_dir)
    assert not children_of(starter.pid)
    resumed = run_cli("resume", run_dir.name, "--artifacts", str(tmp_path), "--json", env=starter.env)
    assert resumed.returncode == 0, resumed.stderr
    assert last_json(resumed.stdout)["status"] == "completed"


def test_the_starter_ends_with_its_server(tmp_path_factory):
    started = Starter(tmp_path_factory.mktemp("warm"))
    socket_file = warm_start.socket_path(started.server.home)
    assert socket_file.exists() and "segment warm starter" in Path(f"/proc/{started.pid}/cmdline").read_text()
    assert started.server.stop(timeout=10)
    assert _ppid(started.pid) is None and not socket_file.exists()
