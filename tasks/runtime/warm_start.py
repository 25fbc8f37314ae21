"""Warm start: the commands that run flows, started from a process that has imported their libraries.

A `segment run` spends its first 4-5 s of CPU importing pandas, pyarrow, SciPy, scikit-learn,
matplotlib and the libraries Prefect's client is made of, in the process that then runs the
stages, before it can read a line; on the UCI file that is a quarter of the run. While the local
Prefect server runs (flows/server/local.py), a **warm starter** beside it has imported them once.
`segment run`, `resume` and `backfill` then hand their command line, working folder, environment
and standard input, output and error to it over a Unix socket in the server's folder (readable by
its user only), and the starter forks a process that runs the command exactly as `segment` would
have: the same code (the product's own modules are imported afresh from the caller's path, never
kept from the starter), the same settings (Prefect is imported afresh, with the caller's
environment), the same output on the same terminal, and the same exit status. The command that
handed over waits for that status and passes Ctrl-C and termination signals on; if it is killed,
the process it started ends too.

The starter takes a command only when nothing it imported could differ from what the command
would import itself: the same interpreter and interpreter flags, the same values of the variables
read when those libraries load (locale, time zone, thread pools, allocators, `PYTHON*`), every
preloaded library found at the same file on the caller's `sys.path`, none of their files changed
since, and no `matplotlibrc` in the working folder. Otherwise, or when the starter is not there,
the command starts cold, as it always did. SEGMENT_WARM_START=0 turns it off for a command (or,
when the server starts, for the server's life).

The starter is a subreaper: it collects the exit and resource use of every process a command it
started leaves (the run, its validator and worker) and writes one line per process to its log
(`warm-start.log` in the server's folder: pid, exit status, CPU seconds, peak memory; never the
command line, which may hold a database URL), which the benchmarks read.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import threading
from pathlib import Path
from typing import Any

PROTOCOL = 2
MODULE = "customer_segments.tasks.runtime.warm_start"
TITLE = "segment warm starter"
SOCKET_NAME = "warm-start.sock"
LOG_NAME = "warm-start.log"
# A Unix socket's path is at most 107 bytes on Linux; a longer server folder goes without.
MAX_SOCKET_PATH = 100

# The libraries a run's own process imports, other than Prefect (it reads its settings from the
# environment as it loads, so it is imported afresh with the command's) and the product's code
# (which may change between runs). The stages' modules are imported too, for what they import.
PRELOAD = (
    "numpy", "pandas", "pyarrow", "pyarrow.parquet", "pyarrow.compute", "scipy.stats",
    "matplotlib.backends.backend_agg", "jinja2", "python_calamine", "mlxtend.frequent_patterns", "CHAID",
    "threadpoolctl",
    # Prefect's client, settings and command-line libraries
    "anyio", "httpx", "pydantic", "pydantic_settings", "pydantic_extra_types.pendulum_dt", "fastapi",
    "starlette.responses", "typer", "rich.console", "pendulum", "jsonschema", "websockets", "cloudpickle",
    "griffe", "coolname", "orjson", "yaml", "dateutil.parser", "prometheus_client", "opentelemetry.trace",
    "psutil", "graphviz", "humanize", "slugify", "asgi_lifespan", "toml", "dotenv", "setproctitle",
)

# What the validator imports (tasks/runtime/quality): its process is forked from the command's too.
VALIDATOR_PRELOAD = (
    "great_expectations", "great_expectations.execution_engine.pandas_execution_engine",
    "great_expectations.data_context.types.base", "great_expectations.core",
    "great_expectations.render.renderer", "great_expectations.render.renderer.site_builder",
)

# Environment variables read when the interpreter or a preloaded library starts (PYTHONPATH is
# judged by where it makes the libraries be found instead).
STARTUP_VARIABLES = (
    "PYTHON", "LANG", "LANGUAGE", "LC_", "TZ", "HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR",
    "OMP_", "KMP_", "GOMP_", "OPENBLAS_", "GOTO", "MKL_", "BLIS_", "NUMEXPR_", "NUMPY_", "NPY_", "ARROW_",
    "JE_", "MALLOC_", "GLIBC_TUNABLES", "LD_", "SKLEARN_", "SCIPY_", "SSL_CERT_", "REQUESTS_CA_BUNDLE",
    "SPT_",
)  # Great Expectations' GX_ANALYTICS_ENABLED is set by the product itself (quality/validation.py).
_NOT_STARTUP = ("PYTHONPATH", "NUMPY_MADVISE_HUGEPAGE")  # the second is applied after the fork (_become)

# --- the command's side ------------------------------------------------------------------------


def socket_path(home: Path | None = None) -> Path | None:
    """Where this user's warm starter listens: in the local server's folder (None: too long a path)."""
    if home is None:
        from customer_segments.flows.server.local import server_home

        home = server_home()
    path = Path(home) / SOCKET_NAME
    return path if len(os.fsencode(path)) <= MAX_SOCKET_PATH else None


def wanted() -> bool:
    """Whether SEGMENT_WARM_START leaves the warm start on (for a command, or a server starting)."""
    return os.environ.get("SEGMENT_WARM_START", "1").strip().lower() not in ("0", "false", "no", "off")


def delegate(argv: list[str]) -> int | None:
    """Have the warm starter run this command; its exit status, or None: run it here (cold)."""
    if not wanted() or _client is not None:
        return None
    try:
        path = socket_path()
    except OSError:
        return None
    if path is None or not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # It answers within milliseconds (refused, or the pid of the process it forked right before);
    # one that does not answer in a minute is stuck before forking, and the command starts cold.
    sock.settimeout(60)
    try:
        sock.connect(os.fspath(path))
        body = json.dumps(_request(argv)).encode()
        socket.send_fds(sock, [struct.pack("!I", len(body))], [0, 1, 2])
        sock.sendall(body)
        replies = sock.makefile("rb")
        first = json.loads(replies.readline() or b"{}")
    except (OSError, ValueError):  # no starter, a closed standard stream, a starter that died
        sock.close()
        return None
    pid = first.get("pid")
    if not isinstance(pid, int):  # refused: first["refused"] says why
        sock.close()
        return None
    forwarded: list[int] = []

    def forward(signum, frame) -> None:
        forwarded.append(signum)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED:
        if signal.getsignal(signum) != signal.SIG_IGN:  # one ignored here is ignored there too
            signal.signal(signum, forward)
    sock.settimeout(None)
    try:
        for line in replies:
            reply = json.loads(line)
            if "exit" in reply:
                return int(reply["exit"])
    except (OSError, ValueError):
        pass
    if forwarded:
        return 128 + forwarded[-1]
    print(f"segment: the process running this command (pid {pid}, started by the warm starter at {path}) ended "
          "without an exit status; it was killed or crashed. SEGMENT_WARM_START=0 runs commands without it.",
          file=sys.stderr)
    return 1


def _request(argv: list[str]) -> dict[str, Any]:
    umask = os.umask(0o022)
    os.umask(umask)
    return {"protocol": PROTOCOL, "starter": _own_code(), "argv": [sys.argv[0], *argv], "cwd": os.getcwd(), "env": dict(os.environ),
            "executable": sys.executable, "path": list(sys.path), "title": list(sys.orig_argv), "flags": list(sys.flags),
            "warnoptions": list(sys.warnoptions), "umask": umask,
            "ignored": [int(n) for n in FORWARDED if signal.getsignal(n) == signal.SIG_IGN]}


def _own_code() -> str:
    """The sha256 of this file: the starter and the command must speak the same version of it
    (an upgrade of the product while a starter runs gives the command a newer one)."""
    import hashlib

    with open(__file__, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


# Signals the command passes on to the process running it (which ignores those the command ignores).
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# --- the process a command runs in ---------------------------------------------------------------

_client: socket.socket | None = None


def report_exit(code: int) -> None:
    """Give the caller this command's exit status (the last thing before the process exits)."""
    if _client is None:
        return
    try:
        _client.sendall(json.dumps({"exit": int(code)}).encode() + b"\n")
    except OSError:
        pass


def _run_command(conn: socket.socket) -> None:
    """In the forked process, with the product's modules imported afresh: run the command."""
    global _client
    _client = conn
    conn.settimeout(None)
    from customer_segments.flows import command

    try:
        command.main()  # ends the process itself, through command._end, which reports the status
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    else:
        code = 0
    report_exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# --- the warm starter ----------------------------------------------------------------------------


def serve(home: str, server_pid: str) -> None:
    """Import the libraries, then fork a process for each command handed over, until the server
    (`server_pid`) ends or another starter takes the socket."""
    import gc
    import importlib
    import select
    import time

    from customer_segments.flows.server import processes
    from customer_segments.tasks.runtime import storage

    home_path = Path(home)
    path = socket_path(home_path)
    if path is None:
        return
    # Its own title first: setproctitle's first call needs the environment as the process started
    # with it, and the commands' processes replace theirs.
    process_title([TITLE, str(home_path)])
    _subreaper()
    storage.release_memory_at_once()  # as the command does before pyarrow loads
    os.environ.pop("SEGMENT_WARM_START", None)
    _STARTUP_ENV.update(os.environ)
    global _STARTER_CODE
    _STARTER_CODE = _own_code()
    _preload()
    # What the imports set for themselves (scikit-learn sets KMP_DUPLICATE_LIB_OK, for one): a
    # command's process gets them as it would have by importing the same libraries.
    _SET_BY_IMPORTS.update({name: value for name, value in os.environ.items() if _STARTUP_ENV.get(name) != value})
    library_files = _library_files()
    gc.collect()
    gc.freeze()  # the children's collections never walk what was imported here
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    building = path.with_name(f".{path.name}.{os.getpid()}")
    building.unlink(missing_ok=True)
    old_umask = os.umask(0o177)  # this user only
    try:
        listener.bind(os.fspath(building))
    finally:
        os.umask(old_umask)
    listener.listen(16)
    os.replace(building, path)  # seen only once it answers
    ours = path.stat().st_ino
    _log(f"ready: pid {os.getpid()}, {len(sys.modules)} modules imported")
    # The connection of each command running, by the process running it: when the command goes
    # away without a status (killed), so does that process and every helper of its session.
    callers = _CALLERS
    try:
        while processes.alive(int(server_pid)) and _still_ours(path, ours):
            for pid in _reap():
                for caller in [c for c, p in callers.items() if p == pid]:
                    callers.pop(caller).close()
            for ready in select.select([listener, *callers], [], [], 0.25)[0]:
                if ready is listener:
                    conn, _ = listener.accept()
                    if (pid := _hand_over(conn, listener, library_files)) is not None:
                        callers[conn] = pid
                    else:
                        conn.close()
                elif not _recv_or_eof(ready):
                    _kill_session(callers.pop(ready))
                    ready.close()
    finally:
        if _still_ours(path, ours):
            path.unlink(missing_ok=True)
        _log("stopped")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _children():
            _reap()
            time.sleep(0.05)


def _preload() -> None:
    import importlib

    from customer_segments.tasks import catalogue  # the stages' modules, and what they import
    from customer_segments.tasks.runtime.quality import validation
    from customer_segments.tasks.runtime.stage_runner import SHARED_IMPORTS

    del catalogue
    for name in (*PRELOAD, *SHARED_IMPORTS):
        _import(name)
    # Great Expectations as the validator imports it: what it loads for charts on first use only.
    validation.defer_unused_imports()
    for name in VALIDATOR_PRELOAD:
        _import(name)
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, validation._DeferredImports)]


def _import(name: str) -> None:
    import importlib

    try:
        importlib.import_module(name)
    except Exception:  # an optional library missing here is imported (or missing) in the command
        pass


def can_fork() -> bool:
    """Whether a helper process may be forked from this one instead of started afresh: this runs a
    command the warm starter forked (its libraries are imported) and no other thread runs yet."""
    return _client is not None and threading.active_count() == 1


def forked_helper() -> None:
    """In a helper forked from the command's process: it is not the command, and does not hold the
    caller's connection (which must close when the command's process ends)."""
    global _client
    if _client is not None:
        _client.close()
        _client = None


def _library_files() -> dict[str, int]:
    """The files of the modules imported here (but the product's own) and their modification times."""
    files = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and not _own(name):
            try:
                files[file] = os.stat(file).st_mtime_ns
            except OSError:
                pass
    return files


def _own(name: str) -> bool:
    return name == "customer_segments" or name.startswith("customer_segments.")


def _refusal(request: dict[str, Any], library_files: dict[str, int]) -> str | None:
    """Why a command must start cold instead, or None."""
    import importlib.machinery

    if request.get("protocol") != PROTOCOL or request.get("starter") != _STARTER_CODE:
        return "another version of the product"
    if request.get("executable") != sys.executable:
        return "another interpreter"
    if request.get("flags") != list(sys.flags) or request.get("warnoptions") != list(sys.warnoptions):
        return "other interpreter options"
    # Both as the imports leave them: a variable a library sets for itself when it loads unless
    # it is set (scikit-learn's KMP_DUPLICATE_LIB_OK) is the same whether it was set before or not.
    env = {**_SET_BY_IMPORTS, **(request.get("env") or {})}
    mine = {**_SET_BY_IMPORTS, **_STARTUP_ENV}
    for name in sorted(set(env) | set(mine)):
        if name.startswith(STARTUP_VARIABLES) and name not in _NOT_STARTUP and env.get(name) != mine.get(name):
            return f"another value of {name}"
    if os.path.exists(os.path.join(request.get("cwd", ""), "matplotlibrc")):
        return "a matplotlibrc in the working folder"
    path = request.get("path") or []
    for name, module in list(sys.modules.items()):
        if "." in name or _own(name) or not getattr(module, "__file__", None) or name not in _TOP_LEVEL:
            continue
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.origin != module.__file__:
            return f"{name} found elsewhere on its path"
    for file, mtime in library_files.items():
        try:
            if os.stat(file).st_mtime_ns != mtime:
                return "libraries changed since the starter imported them"
        except OSError:
            return "libraries changed since the starter imported them"
    return None


_TOP_LEVEL: set[str] = set()
_CALLERS: dict[socket.socket, int] = {}
_STARTUP_ENV: dict[str, str] = {}
_STARTER_CODE = ""
_SET_BY_IMPORTS: dict[str, str] = {}


def _hand_over(conn: socket.socket, listener: socket.socket, library_files: dict[str, int]) -> int | None:
    """Take a command's request; the pid of the process forked to run it, or None (refused, broken)."""
    fds: list[int] = []
    try:
        conn.settimeout(5)
        header, fds, _, _ = socket.recv_fds(conn, 4, 3)
        size = struct.unpack("!I", header)[0]
        body = bytearray()
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise OSError("the command hung up")
            body += chunk
        request = json.loads(body)
        if len(fds) != 3:
            raise OSError("no standard streams")
        if not _TOP_LEVEL:
            _TOP_LEVEL.update(name for name in sys.modules if "." not in name and not _own(name)
                              and name not in sys.stdlib_module_names and not name.startswith("_"))
        refusal = _refusal(request, library_files)
        if refusal:
            _log(f"refused a command: {refusal}")
            conn.sendall(json.dumps({"refused": refusal}).encode() + b"\n")
            return None
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:
            try:
                _become(conn, listener, request, fds)
            except BaseException:
                import traceback

                traceback.print_exc()  # on the command's standard error once it has it, else in the log
            finally:
                os._exit(1)
        # The starter answers, not the forked process, so that the command knows at once whether
        # its run was started (it must then never start it itself).
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        _log(f"pid {pid} started")
        conn.setblocking(True)
        return pid
    except (OSError, ValueError, struct.error) as exc:
        _log(f"a command could not be handed over: {exc}")
        return None
    finally:
        for fd in fds:
            os.close(fd)


def _become(conn: socket.socket, listener: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
    """In the forked process: take on the command's streams, folder and environment; run it."""
    import importlib
    import time

    listener.close()
    for caller in _CALLERS:  # other commands' connections: theirs alone
        caller.close()
    os.setsid()  # its own session: stopping the server does not stop a run
    ignored = set(request.get("ignored") or ())
    for signum, handler in ((signal.SIGCHLD, signal.SIG_DFL), (signal.SIGTERM, signal.SIG_DFL),
                            (signal.SIGHUP, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler)):
        signal.signal(signum, signal.SIG_IGN if int(signum) in ignored else handler)
    for number, fd in enumerate(fds):
        os.dup2(fd, number)
    for fd in set(fds) - {0, 1, 2}:
        os.close(fd)
    os.umask(int(request["umask"]))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for name, value in _SET_BY_IMPORTS.items():
        os.environ.setdefault(name, value)
    if (huge := os.environ.get("NUMPY_MADVISE_HUGEPAGE")) is not None:  # numpy reads it as it loads
        try:
            from numpy._core.multiarray import _set_madvise_hugepage

            _set_madvise_hugepage(int(huge) != 0)  # as numpy/__init__.py reads it
        except (ImportError, ValueError):
            pass
    time.tzset()
    sys.argv = list(request["argv"])
    process_title(request.get("title") or sys.argv)  # as `ps` would show the command run cold
    sys.path[:] = request["path"]
    _standard_streams()
    for name in [name for name in sys.modules if _own(name)]:
        del sys.modules[name]
    importlib.invalidate_caches()
    importlib.import_module(MODULE)._run_command(conn)


def process_title(argv: list[str]) -> None:
    """Show this process under the command line it stands for (ps, top, /proc/PID/cmdline)."""
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(" ".join(argv))


def _standard_streams() -> None:
    """sys.stdin, stdout and stderr on the command's descriptors, as the interpreter makes them."""
    import io

    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))  # -u is among the flags compared
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        old = getattr(sys, name)
        raw = io.FileIO(fd, "r" if fd == 0 else "w", closefd=False)
        if fd == 0:
            stream = io.TextIOWrapper(io.BufferedReader(raw), encoding=old.encoding, errors=old.errors)
        else:
            line = os.isatty(fd) or fd == 2
            stream = io.TextIOWrapper(io.BufferedWriter(raw), encoding=old.encoding, errors=old.errors,
                                      line_buffering=line, write_through=unbuffered)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _subreaper() -> None:
    """Have the processes of the commands started here come back here when their parent ends."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _reap() -> list[int]:
    """Collect every ended child, one log line each (the benchmarks read them); their pids."""
    ended = []
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        ended.append(pid)
        _log(f"pid {pid} ended: exit {os.waitstatus_to_exitcode(status)}, "
             f"cpu {usage.ru_utime + usage.ru_stime:.3f} s, peak {usage.ru_maxrss} KiB")


def _children() -> bool:
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _recv_or_eof(conn: socket.socket) -> bytes:
    try:
        return conn.recv(64)
    except OSError:
        return b""


def _kill_session(pid: int) -> None:
    """End the process running a command and its helpers (its session's process group)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _still_ours(path: Path, inode: int) -> bool:
    try:
        return path.stat().st_ino == inode
    except OSError:
        return False


def _log(message: str) -> None:
    from datetime import UTC, datetime

    print(f"{datetime.now(UTC).isoformat(timespec='milliseconds')} {message}", flush=True)


if __name__ == "__main__":  # pragma: no cover
    serve(*sys.argv[1:])
