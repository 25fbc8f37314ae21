"""The local Prefect server that the `segment` commands report to.

Without PREFECT_API_URL, Prefect starts a temporary server inside every command. On an idle machine that adds
8-13 s to each run. On a busy one the run fails once Prefect's start-up budget runs out ("Timed out while
attempting to connect to ephemeral Prefect API server"). Instead, the commands share one `prefect server start`
on a free loopback port. It starts the first time a command needs it, keeps running in the background, and every
later command reuses it, so only the first run pays for the start. Its database, log and Prefect home are kept
in one folder (see `server_home()`).

Environment variables:

- PREFECT_API_URL: if set, that server is used and nothing is started here. The same holds when Prefect's own
  configuration sets an API URL: the active profile, or .env, prefect.toml or pyproject.toml in the working
  directory.
- SEGMENT_PREFECT_SERVER=temporary: use Prefect's own temporary server in each command, as before, so nothing is
  left running. The value "local" is the default.
- SEGMENT_SERVER_HOME: the folder holding the server's state. The default is
  $XDG_DATA_HOME/customer-segments/prefect-server.
- SEGMENT_SERVER_START_TIMEOUT: how many seconds to wait for a starting server to answer. The default is 300.
- SEGMENT_WARM_START=0: no warm starter beside a server started now, and a command does not hand itself to one.
  By default the server has a warm starter (tasks/runtime/warm_start.py): a process that has imported the
  libraries of a run once, which `segment run`, `resume` and `backfill` hand themselves over to, so that a run
  starts without importing them (4-5 s of CPU each). It ends with the server.

Prefect is not imported here. Prefect reads its settings when it is imported, so commands call
`ensure_api_url()` before importing it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from customer_segments.flows.server import processes
from customer_segments.tasks.runtime import warm_start
from customer_segments.tasks.errors import PipelineError

HOST = "127.0.0.1"
DEFAULT_START_TIMEOUT = 300.0
# A failed start is retried on another port; a second identical error means the port was not the cause.
START_ATTEMPTS = 3
PROGRESS_AFTER = 5.0
PROGRESS_EVERY = 5.0
# Short enough that a hung server doesn't stall every command. Long enough for a busy machine to answer.
HEALTH_TIMEOUT = 3.0
# The share of the start budget that a running but unresponsive server gets to answer before it is replaced.
UNRESPONSIVE_SHARE = 0.1
# Rotate the log before a start once it is this big. A long-lived server only ever appends to it.
LOG_ROTATE_BYTES = 10 * 1024 * 1024

Progress = Callable[[str], None]


def free_port() -> int:
    """A loopback TCP port that is free right now. Another process may take it before it is used."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_home() -> Path:
    """The folder holding the local server's database, log, state file, start lock and Prefect home."""
    if home := os.environ.get("SEGMENT_SERVER_HOME"):
        return Path(home).expanduser().absolute()
    data = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec says to ignore a relative value.
    base = Path(data) if data and Path(data).is_absolute() else Path.home() / ".local" / "share"
    return base / "customer-segments" / "prefect-server"


class ServerError(PipelineError):
    """The local Prefect server could not be started. The message is one paragraph the user can act on."""

    def __init__(self, problem: str, ports: list[int] | tuple[int, ...] = (), database: str = "",
                 log: str = "", log_tail: str = ""):
        self.problem, self.ports, self.database, self.log, self.log_tail = (
            problem, list(ports), str(database), str(log), log_tail)
        tried = f"tried port(s) {', '.join(map(str, self.ports))} on {HOST}" if self.ports else "no port was tried"
        if log_tail:
            ending = f'; the log ends with: "{log_tail}"'
        elif self.ports:
            ending = "; the log shows no error"
        else:
            ending = ""
        message = (
            f"Could not start the local Prefect server: {problem} ({tried}; database {self.database}; "
            f"log {self.log}{ending}). To use a Prefect server that is already running, run "
            "`export PREFECT_API_URL=http://HOST:PORT/api` with its address and repeat the command. "
            "To use Prefect's temporary server inside each command, set SEGMENT_PREFECT_SERVER=temporary."
        )
        super().__init__(_one_line(message))

    def __reduce__(self):
        return (type(self), (self.problem, self.ports, self.database, self.log, self.log_tail))


class LocalServer:
    """One long-lived `prefect server start` for a state folder: started on demand, found again, stopped."""

    def __init__(self, home: Path | None = None):
        self.home = Path(home).expanduser().absolute() if home is not None else server_home()
        self.state_file = self.home / "server.json"
        self.lock_file = self.home / "server.lock"
        self.log = self.home / "server.log"
        self.database = self.home / "prefect.db"
        # The server's own PREFECT_HOME, so neither the user's ~/.prefect profiles nor its files are involved.
        self.prefect_home = self.home / "prefect-home"
        self.warm_log = self.home / warm_start.LOG_NAME

    # --- what is running ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Whether the recorded server is running. If it isn't, `stale` says whether a recorded state was left."""
        info: dict[str, Any] = {
            "running": False, "pid": None, "port": None, "api_url": None, "ui_url": None,
            "home": str(self.home), "log": str(self.log), "database": str(self.database),
            "started_at": None, "prefect_version": None, "stale": False, "problem": None, "warm_start_pid": None,
        }
        state = self._read_state()
        if state is None:
            if self.state_file.exists():
                info.update(stale=True, problem=f"{self.state_file} is unreadable")
            return info
        info.update({key: state.get(key) for key in
                     ("pid", "port", "api_url", "ui_url", "started_at", "prefect_version")})
        problem = self._problem(state)
        info.update(running=problem is None, stale=problem is not None, problem=problem)
        warm = state.get("warm_start_pid")
        if problem is None and isinstance(warm, int) and processes.alive(warm):
            info["warm_start_pid"] = warm
        return info

    def _problem(self, state: dict) -> str | None:
        """Why the recorded server cannot be used, or None if it is running and answering."""
        pid, api_url = state.get("pid"), state.get("api_url")
        if not isinstance(pid, int) or not isinstance(api_url, str):
            return f"{self.state_file} has no pid or api_url"
        if not processes.alive(pid):
            return f"process {pid} is not running"
        if not self._is_our_server(pid):
            return f"process {pid} is not a Prefect server for {self.home} (the pid was reused)"
        if not _healthy(api_url):
            return f"process {pid} does not answer at {api_url}/health"
        if not self._answers_for_us(api_url):
            return f"the server answering at {api_url} belongs to another folder"
        return None

    def _is_alive_server(self, state: dict) -> bool:
        pid = state.get("pid")
        return isinstance(pid, int) and processes.alive(pid) and self._is_our_server(pid)

    def _wait_for_answer(self, state: dict, grace: float, progress: Progress | None) -> str | None:
        """Give a running server that doesn't answer some time before replacing it.

        A busy machine can answer late. Replacing the server would also fail the runs that report to it.
        """
        t0 = time.monotonic()
        next_note = t0
        while (problem := self._problem(state)) is not None and self._is_alive_server(state):
            now = time.monotonic()
            if now - t0 >= grace:
                break
            if progress and now >= next_note:
                progress(f"The local Prefect server (pid {state['pid']}) is not answering; waiting up to "
                         f"{grace:.0f} s before replacing it (log: {self.log})")
                next_note = now + PROGRESS_EVERY
            time.sleep(1)
        return problem

    def _is_our_server(self, pid: int) -> bool:
        cmdline = processes.cmdline(pid)
        if cmdline is None:  # no /proc (not Linux): the pid and the health check are all there is
            return True
        if not processes.looks_like_server(cmdline):
            return False
        home = processes.environ(pid).get("PREFECT_HOME")
        return home is None or Path(home) == self.prefect_home

    def _answers_for_us(self, api_url: str) -> bool:
        """The server on that port uses this folder's Prefect home. A port can be reused by another server."""
        settings = _get_json(f"{api_url}/admin/settings")
        if not isinstance(settings, dict) or "home" not in settings:
            return True  # the endpoint answered with something else; the pid checks have to do
        return Path(str(settings["home"])) == self.prefect_home

    def _server_processes(self) -> list[int]:
        """Pids of `prefect server start` processes for this folder, recorded or not (Linux only)."""
        found = []
        for pid in processes.all_pids():
            cmdline = processes.cmdline(pid)
            if cmdline and processes.looks_like_server(cmdline) and processes.alive(pid) \
                    and processes.environ(pid).get("PREFECT_HOME") == str(self.prefect_home):
                found.append(pid)
        return found

    # --- start ----------------------------------------------------------------------------------

    def ensure(self, timeout: float | None = None, progress: Progress | None = None) -> str:
        """The API URL of this folder's running server. Starts one if none is running.

        Callers are serialised by an exclusive lock on server.lock, so concurrent first calls leave one server:
        the first starts it and the others wait, then find it.
        """
        budget = _start_budget(timeout)
        state = self._read_state()
        if state is not None and self._problem(state) is None and self._same_version(state):
            return state["api_url"]
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            self.prefect_home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServerError(f"its folder cannot be created ({exc})", database=str(self.database),
                              log=str(self.log)) from None
        # A waiter gets the whole start budget of the holder, plus a margin for the holder's own checks.
        with self._lock(wait=budget + 30, progress=progress) as locked:
            if not locked:
                raise ServerError(
                    f"another command held {self.lock_file} for more than {budget + 30:.0f} s while starting it",
                    database=str(self.database), log=str(self.log))
            state = self._read_state()
            if state is not None:
                problem = self._problem(state)
                if problem is not None and self._is_alive_server(state):
                    problem = self._wait_for_answer(state, budget * UNRESPONSIVE_SHARE, progress)
                if problem is None and self._same_version(state):
                    return state["api_url"]
                if problem is None and progress:
                    progress(f"Restarting the local Prefect server: it runs Prefect {state.get('prefect_version')}, "
                             f"this environment has {_prefect_version()}")
                self._clean_up(state)
            # Servers for this folder that nobody recorded, e.g. the command starting one was killed.
            # Under the lock no other command is starting one, so they are orphans.
            for pid in self._server_processes():
                processes.terminate_group(pid, 20)
            return self._start(budget, progress)

    def _start(self, budget: float, progress: Progress | None) -> str:
        t0 = time.monotonic()
        deadline = t0 + budget
        ports: list[int] = []
        previous_tail = None
        tail = ""
        for _ in range(START_ATTEMPTS):
            port = free_port()
            while port in ports:
                port = free_port()
            ports.append(port)
            self._rotate_log()
            offset = self.log.stat().st_size if self.log.exists() else 0
            try:
                process = self._spawn(port)
            except OSError as exc:
                raise ServerError(f"`prefect server start` cannot be run ({exc})", ports,
                                  str(self.database), str(self.log)) from None
            try:
                outcome = self._wait_until_healthy(process, port, t0, deadline, progress)
            except BaseException:  # e.g. Ctrl-C: don't leave a server nobody recorded
                processes.terminate_group(process.pid, 10)
                raise
            if outcome == "ok":
                api_url = f"http://{HOST}:{port}/api"
                self._write_state({
                    "pid": process.pid, "port": port, "api_url": api_url, "ui_url": f"http://{HOST}:{port}",
                    "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "prefect_version": _prefect_version(), "home": str(self.home),
                    "database": str(self.database), "log": str(self.log),
                    "warm_start_pid": self._start_warm(process.pid),
                })
                # Dropped while still running: subprocess reaps it later, and processes.alive() reaps it if it dies.
                return api_url
            processes.terminate_group(process.pid, 10)
            processes.reap(process.pid)
            tail = _log_tail(self.log, offset)
            if outcome == "timeout":
                raise ServerError(
                    f"it did not answer within {budget:.0f} s (SEGMENT_SERVER_START_TIMEOUT sets this budget)",
                    ports, str(self.database), str(self.log), tail)
            if outcome == "exited" and tail and tail == previous_tail and not _port_problem(tail):
                break  # the same error on two ports: another port will not help
            previous_tail = tail
            if time.monotonic() >= deadline:
                break
        what = "lost its port to another server" if outcome == "taken" else "exited before answering"
        raise ServerError(f"`prefect server start` {what}, {len(ports)} time(s)",
                          ports, str(self.database), str(self.log), tail)

    def _spawn(self, port: int) -> subprocess.Popen:
        command = [*_prefect_command(), "server", "start", "--host", HOST, "--port", str(port)]
        with open(self.log, "ab") as log:
            log.write(f"--- {datetime.now(UTC).isoformat(timespec='seconds')} "
                      f"{' '.join(command)}\n".encode())
            log.flush()
            return subprocess.Popen(
                command, env=self._server_env(port), cwd=self.home,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # Its own session: the server outlives this command, and a terminal's Ctrl-C does not reach it.
                start_new_session=True, close_fds=True,
            )

    def _start_warm(self, server_pid: int) -> int | None:
        """Start the warm starter beside the server (it ends by itself when the server does); its pid."""
        if not warm_start.wanted() or warm_start.socket_path(self.home) is None:
            return None
        try:
            with open(self.warm_log, "ab") as log:
                return subprocess.Popen(
                    [sys.executable, "-c", f"import sys; from {warm_start.MODULE} import serve; serve(*sys.argv[1:])",
                     str(self.home), str(server_pid)],
                    cwd=self.home, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True,
                ).pid
        except OSError:  # the commands start cold
            return None

    def _stop_warm(self, state: dict | None) -> None:
        pid = (state or {}).get("warm_start_pid")
        if not (isinstance(pid, int) and processes.alive(pid)):
            return
        command = " ".join(processes.cmdline(pid) or [])
        if warm_start.TITLE in command or warm_start.MODULE in command:  # not another process given its pid since
            processes.terminate_group(pid, 10)

    def _server_env(self, port: int) -> dict[str, str]:
        api_url = f"http://{HOST}:{port}/api"
        database_url = f"sqlite+aiosqlite:///{self.database}"
        env = {key: value for key, value in os.environ.items() if not _dropped_for_server(key)}
        env.update({
            "PREFECT_HOME": str(self.prefect_home),
            # Two names for the same setting. The first one Prefect finds wins, so both are set.
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
            "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_API_HOST": HOST,
            "PREFECT_SERVER_API_PORT": str(port),
            # The UI asks the server for its API's address. On a port other than 4200 it would otherwise say
            # "Can't connect to Server API".
            "PREFECT_SERVER_UI_API_URL": api_url,
            "PREFECT_UI_API_URL": api_url,
            # Never prompt (e.g. to set PREFECT_API_URL in a profile): nobody is there to answer.
            "PREFECT_CLI_PROMPT": "false",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def _wait_until_healthy(self, process: subprocess.Popen, port: int, t0: float, deadline: float,
                            progress: Progress | None) -> str:
        api_url = f"http://{HOST}:{port}/api"
        next_note = t0 + PROGRESS_AFTER
        while True:
            if process.poll() is not None:
                return "exited"
            if _healthy(api_url, timeout=min(HEALTH_TIMEOUT, max(0.5, deadline - time.monotonic()))):
                if process.poll() is not None:
                    return "exited"
                # Another server took the port before ours bound it; ours then exits with "in use".
                return "ok" if self._answers_for_us(api_url) else "taken"
            now = time.monotonic()
            if now >= deadline:
                return "timeout"
            if progress and now >= next_note:
                progress(f"Starting the local Prefect server ({now - t0:.0f} s so far; log: {self.log})")
                next_note = now + PROGRESS_EVERY
            time.sleep(0.25)

    # --- stop -----------------------------------------------------------------------------------

    def stop(self, timeout: float = 20) -> bool:
        """Stop this folder's server and everything in its process group. Returns whether one was running."""
        if not self.home.exists():
            return False
        # A command starting the server holds the lock. Wait for it so the new server is recorded, and stop it.
        # If the lock is not released in time, go ahead without it: stopping must not hang.
        with self._lock(wait=max(timeout, 30.0)):
            pids = set(self._server_processes())
            state = self._read_state()
            if state is not None:
                pid = state.get("pid")
                if isinstance(pid, int) and processes.alive(pid) and self._is_our_server(pid):
                    pids.add(pid)
            for pid in pids:
                processes.terminate_group(pid, timeout)
            self._stop_warm(state)
            self.state_file.unlink(missing_ok=True)
            return bool(pids)

    def _clean_up(self, state: dict) -> None:
        """Remove a recorded server that is dead or not answering, with the rest of its process group."""
        pid = state.get("pid")
        if isinstance(pid, int) and processes.alive(pid) and self._is_our_server(pid):
            processes.terminate_group(pid, 20)
        self._stop_warm(state)
        self.state_file.unlink(missing_ok=True)

    # --- files ----------------------------------------------------------------------------------

    def _read_state(self) -> dict | None:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) else None

    def _write_state(self, state: dict) -> None:
        # Readers don't take the lock, so they must never see a half-written file.
        tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    def _same_version(self, state: dict) -> bool:
        # After Prefect is upgraded, the server should run the new code and migrate its database.
        return state.get("prefect_version") in (None, _prefect_version())

    def _rotate_log(self) -> None:
        with contextlib.suppress(OSError):
            if self.log.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(self.log, self.log.with_name(self.log.name + ".1"))

    @contextlib.contextmanager
    def _lock(self, wait: float, progress: Progress | None = None) -> Iterator[bool]:
        """Hold an exclusive flock on server.lock, waiting up to `wait` seconds. Yields whether it was taken."""
        import fcntl

        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by the server
        try:
            t0 = time.monotonic()
            next_note = t0 + PROGRESS_AFTER
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                    break
                except BlockingIOError:
                    now = time.monotonic()
                    if now - t0 >= wait:
                        locked = False
                        break
                    if progress and now >= next_note:
                        progress(f"Waiting for another command starting the local Prefect server "
                                 f"({now - t0:.0f} s so far; log: {self.log})")
                        next_note = now + PROGRESS_EVERY
                    time.sleep(0.1)
            yield locked
        finally:
            os.close(fd)  # releases the lock


def ensure_api_url(progress: Progress | None = None) -> str | None:
    """Make sure the Prefect API the commands report to is reachable, and return its URL.

    Call this before importing prefect. If PREFECT_API_URL is already set, or Prefect's own configuration sets
    one, nothing changes and that URL is returned. With SEGMENT_PREFECT_SERVER=temporary nothing changes and
    None is returned: Prefect then starts its temporary server inside the command. Otherwise the local server
    is started (or found running), and PREFECT_API_URL and PREFECT_UI_URL are set in os.environ.
    """
    if url := os.environ.get("PREFECT_API_URL"):
        return url
    mode = os.environ.get("SEGMENT_PREFECT_SERVER", "local").strip().lower() or "local"
    if mode == "temporary":
        # Prefect gives up on its temporary server after 20 s; a loaded machine may need longer. It gets the
        # local server's start budget, unless Prefect's own setting says otherwise.
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", f"{_start_budget(None):g}")
        return None
    if mode != "local":
        raise PipelineError(f"SEGMENT_PREFECT_SERVER={mode!r} is not understood: use 'local' (the default, "
                            "a server left running in the background) or 'temporary' (Prefect's own per command).")
    if url := configured_api_url():
        return url
    url = LocalServer().ensure(progress=progress)
    os.environ["PREFECT_API_URL"] = url
    os.environ.setdefault("PREFECT_UI_URL", url.removesuffix("/api"))
    # If prefect was imported anyway, its settings were read at import time. Prefect can re-read them.
    if (context := sys.modules.get("prefect.context")) is not None and \
            hasattr(context, "refresh_global_settings_context"):
        context.refresh_global_settings_context()
    return url


def configured_api_url() -> str | None:
    """PREFECT_API_URL as set in Prefect's configuration files, not the environment. None if it isn't set.

    Prefect would use that server rather than a temporary one, e.g. Prefect Cloud or a server the user runs.
    Redirecting those runs to a local server would be a surprise. This follows Prefect 3's sources
    (prefect/settings/base.py, sources.py) in order: .env, prefect.toml and pyproject.toml in the working
    directory, then the active profile.
    """
    import tomllib

    def toml(path: Path) -> dict:
        try:
            return tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    cwd = Path.cwd()
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in (cwd / ".env").read_text(encoding="utf-8").splitlines():
            key, sep, value = line.strip().removeprefix("export ").partition("=")
            if sep and key.strip() == "PREFECT_API_URL" and value.strip().strip("'\""):
                return value.strip().strip("'\"")
    for table in (toml(cwd / "prefect.toml"), toml(cwd / "pyproject.toml").get("tool", {}).get("prefect", {})):
        api = table.get("api") if isinstance(table, dict) else None
        if isinstance(api, dict) and isinstance(api.get("url"), str) and api["url"]:
            return api["url"]
    if os.environ.get("PREFECT_PROFILES_PATH"):
        profiles_path = Path(os.environ["PREFECT_PROFILES_PATH"]).expanduser()
    elif os.environ.get("PREFECT_HOME"):
        profiles_path = Path(os.environ["PREFECT_HOME"]).expanduser() / "profiles.toml"
    else:
        profiles_path = Path.home() / ".prefect" / "profiles.toml"
    profiles = toml(profiles_path)
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active")
    profile = profiles.get("profiles", {}).get(active, {}) if isinstance(active, str) else {}
    url = profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None
    return url if isinstance(url, str) and url else None


# --- helpers ------------------------------------------------------------------------------------

def _start_budget(timeout: float | None) -> float:
    if timeout is not None:
        return float(timeout)
    raw = os.environ.get("SEGMENT_SERVER_START_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_START_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise PipelineError(f"SEGMENT_SERVER_START_TIMEOUT={raw!r} is not a number of seconds.") from None
    if value <= 0:
        raise PipelineError(f"SEGMENT_SERVER_START_TIMEOUT={raw!r} must be a positive number of seconds.")
    return value


def _prefect_command() -> list[str]:
    """This environment's prefect executable (next to the interpreter), else `python -m prefect`."""
    exe = Path(sys.executable).parent / ("prefect.exe" if os.name == "nt" else "prefect")
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe)]
    return [sys.executable, "-m", "prefect"]


_DROPPED_FOR_SERVER = {
    "PREFECT_HOME", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH", "PREFECT_UI_URL", "PREFECT_UI_API_URL",
    "PREFECT_SERVER_UI_API_URL", "PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE",
}
_DROPPED_PREFIXES_FOR_SERVER = (
    "PREFECT_API_",              # the client's API URL and key, and old aliases of server settings
    "PREFECT_SERVER_API_",       # host, port, base path and auth of some other server
    "PREFECT_SERVER_DATABASE_",  # some other server's database
    "PREFECT_CLOUD_",
    "PREFECT__",                 # Prefect's internal flags, e.g. PREFECT__SERVER_EPHEMERAL from a temporary server
    "PREFECT_TEST", "PREFECT_UNIT_TEST", "PREFECT_TESTING_",  # test mode ignores PREFECT_HOME's profiles
)


def _dropped_for_server(key: str) -> bool:
    """Variables of the calling environment that would point the server at another server's settings."""
    return key in _DROPPED_FOR_SERVER or key.startswith(_DROPPED_PREFIXES_FOR_SERVER)


def _prefect_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("prefect")
    except metadata.PackageNotFoundError:
        return None


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes via a proxy


def _healthy(api_url: str, timeout: float = HEALTH_TIMEOUT) -> bool:
    try:
        with _NO_PROXY.open(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def _get_json(url: str, timeout: float = HEALTH_TIMEOUT) -> Any:
    try:
        with _NO_PROXY.open(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None



_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_NOISE = ("Traceback", "(Background on this error", "Server stopped!", "Configure Prefect to communicate",
          "prefect config set", "View the API reference", "Check out the dashboard", "--- ", "^", "~")


def _log_tail(log: Path, offset: int, lines: int = 2) -> str:
    """The last lines of this start's part of the log that say something: no banner, no traceback frames."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    kept = []
    for line in _ANSI.sub("", text).splitlines():
        if not line.strip() or line[:1].isspace() or line.startswith(_NOISE) or "___" in line or "|_" in line:
            continue
        kept.append(line.strip())
    return _one_line(" / ".join(kept[-lines:]))[:600]


def _port_problem(tail: str) -> bool:
    return bool(re.search(r"already in use|address in use|Errno 98|EADDRINUSE", tail, re.IGNORECASE))


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()
