"""Linux /proc helpers for the local Prefect server's processes.

Whether a pid is alive, what runs in it, its environment and its process group, and stopping that group. Where
/proc is missing (not Linux), they fall back to what os.kill and os.killpg can tell.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def reap(pid: int) -> None:
    """Collect the exit status if the process is a dead child of this one (else it stays a zombie)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int) -> bool:
    if pid <= 0:
        return False
    reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_state(pid) not in ("Z", "X")


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [0] state, [2] process group."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _proc_state(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[0] if stat else None


def cmdline(pid: int) -> list[str] | None:
    """The process's arguments, or None where /proc is not available."""
    if not Path("/proc/self/cmdline").exists():
        return None
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def looks_like_server(cmdline: list[str]) -> bool:
    """`.../prefect server start ...` or `python -m prefect server start ...`."""
    names = [os.path.basename(arg) for arg in cmdline]
    for i, name in enumerate(names):
        if name in ("prefect", "prefect.exe") and names[i + 1:i + 3] == ["server", "start"]:
            return True
    return False


def all_pids() -> list[int]:
    try:
        return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return []


def _group_members(pgid: int) -> list[int]:
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except OSError:
            return []
    members = []
    for pid in all_pids():
        stat = _proc_stat(pid)
        if stat and stat[0] not in ("Z", "X") and int(stat[2]) == pgid:
            members.append(pid)
    return members


def terminate_group(pid: int, timeout: float) -> None:
    """SIGTERM the process group led by `pid` (the server and any process it started), then SIGKILL it."""
    stat = _proc_stat(pid)
    # The server is started as a session leader, so its group id is its pid. Anything else gets only the pid.
    pgid = pid if stat is None or int(stat[2]) == pid else None
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            if pgid is not None:
                os.killpg(pgid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return
        if sig == signal.SIGTERM:  # a stopped (SIGSTOP) process acts on SIGTERM only once continued
            with contextlib.suppress(OSError):
                if pgid is not None:
                    os.killpg(pgid, signal.SIGCONT)
                else:
                    os.kill(pid, signal.SIGCONT)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            reap(pid)
            if not (_group_members(pgid) if pgid is not None else alive(pid)):
                return
            time.sleep(0.1)
