"""Progress on a terminal: a line per stage and a live line, on standard error of a real pseudo-terminal;
piped or with --json, nothing but what the command always printed."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import time

from support import BIN, REPO, SAMPLE, last_json, run_cli

from customer_segments.tasks import catalogue

ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def on_a_terminal(*args: str, timeout: float = 600) -> tuple[int, str, str]:
    """The command with its standard error on a pseudo-terminal (as in a person's shell), stdout piped."""
    master, slave = pty.openpty()
    process = subprocess.Popen([str(BIN / "segment"), *args], stdout=subprocess.PIPE, stderr=slave,
                               stdin=subprocess.DEVNULL, cwd=REPO, env={**os.environ, "COLUMNS": "100"})
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal's other side is closed: the command is done with it
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    stdout = process.stdout.read().decode()
    return process.wait(timeout=60), stdout, b"".join(chunks).decode(errors="replace")


def test_a_terminal_sees_each_stage_and_the_elapsed_time(prefect_server, tmp_path):
    code, stdout, terminal = on_a_terminal("run", "--input", str(SAMPLE), "--artifacts", str(tmp_path))
    assert code == 0, terminal
    assert "▸ running: ingest" in terminal                        # the live line
    lines = [ESCAPES.sub("", part).strip() for part in re.split(r"[\r\n]+", terminal)]
    stage_lines = {line.split()[0]: line for line in lines if line and line.split()[0] in catalogue.BY_NAME}
    assert set(stage_lines) == set(catalogue.BY_NAME)               # every stage has its line
    assert re.search(r"^ingest\s+done in \d+\.\d s · gate passed\s+\d+:\d\d$", stage_lines["ingest"])
    assert re.search(r"^clean\s+done in \d+\.\d s · gate passed", stage_lines["clean"])
    assert re.search(r"^plots\s+done in \d+\.\d s\s+\d+:\d\d$", stage_lines["plots"])  # figures only: no gate
    # The summary is on stdout, as without a terminal.
    assert stdout.startswith("Run ") and "completed" in stdout.splitlines()[0]
    # Run again: every stage reused, and the terminal says so.
    code, _, again = on_a_terminal("run", "--input", str(SAMPLE), "--artifacts", str(tmp_path))
    assert code == 0
    lines = [ESCAPES.sub("", part).strip() for part in re.split(r"[\r\n]+", again)]
    assert all(re.search(rf"^{name}\s+cached\s+\d+:\d\d$", "\n".join(lines), re.M) for name in catalogue.BY_NAME)


def test_piped_or_json_output_has_no_progress(prefect_server, tmp_path):
    piped = run_cli("run", "--input", str(SAMPLE), "--artifacts", str(tmp_path))
    assert piped.returncode == 0 and "running:" not in piped.stderr and "\x1b[" not in piped.stderr + piped.stdout
    code, stdout, terminal = on_a_terminal("run", "--input", str(SAMPLE), "--artifacts", str(tmp_path), "--json")
    assert code == 0 and last_json(stdout)["status"] == "completed"
    assert "running:" not in terminal and "\x1b[" not in terminal
