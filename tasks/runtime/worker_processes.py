"""Helper processes: work beside the run, on the other core, in other Pythons.

- The **validator** answers on channels `gate` and `docs`: it validates datasets with Great
  Expectations (imported once, first thing, while the command starts up) and builds Data Docs
  (each dataset's pages as soon as its report is final, the index at the run's end).
- The **worker** answers on channel `work`: it computes the stages the catalogue places there
  (`runs_in="worker"`: the propensity model, the best sellers and the market basket rules, the
  last two reading millions of lines), which would otherwise hold the run's interpreter (threads
  share one GIL), and reads their input ahead when the flow hands it over. Its own quality
  gates go to the validator too.

The run's threads wait on a socket meanwhile, which leaves their GIL to the stages that go on.
Both are plain `python -c` children rather than a multiprocessing pool: 'spawn' re-runs the
caller's main script in the child (a user's script without a main guard would start itself
again), 'fork' is unsafe once Prefect's threads run, and a pool's worker must be joined at exit
(0.8 s measured). In a run the local server's warm starter forked (warm_start.py), which has its
libraries imported and no thread yet when the helpers start, they are forked from it instead:
the same functions, without importing anything again. A child reads end-of-file when its parent
exits and ends by itself; nobody waits for it. Without a helper (never started, or died), the
same work runs in the caller.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any


class Channel:
    """Requests to a helper over one connection, one at a time."""

    def __init__(self, conn, process: subprocess.Popen | None = None):
        self.conn, self.process = conn, process
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.process is None or self.process.poll() is None

    def call(self, kind: str, *args) -> Any:
        with self.lock:
            self.conn.send((kind, args))
            status, value = self.conn.recv()
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        self.conn.close()


# What this process is to the run: the worker says so when it starts serving.
ROLE = "flow process"

# The channels this process may use, by name ("gate", "work").
_channels: dict[str, Channel] = {}


def channel(name: str) -> Channel | None:
    """The helper answering on `name` when it runs; None: do the work in this process."""
    found = _channels.get(name)
    return found if found is not None and found.alive() else None


def start(worker: bool = True) -> None:
    """Start the validator (and the worker) now, so that their imports overlap the command's start."""
    from multiprocessing.connection import Connection

    if channel("gate") is not None and (channel("work") is not None or not worker):
        return
    stop()
    to_gate, to_docs, to_work, work_to_gate = (socket.socketpair() for _ in range(4))
    # Forked helpers (see _fork) must not keep the other ends: each helper ends on end-of-file.
    validator = _spawn("serve_validator", to_gate[1], work_to_gate[1], to_docs[1],
                       others=(to_gate[0], to_docs[0], to_work[0], to_work[1], work_to_gate[0]))
    _channels["gate"] = Channel(Connection(to_gate[0].detach()), validator)
    # Data Docs on a connection of their own: a page rendered ahead never holds up a gate's request.
    _channels["docs"] = Channel(Connection(to_docs[0].detach()), validator)
    if worker:
        process = _spawn("serve_worker", to_work[1], work_to_gate[0], others=(to_work[0],))
        _channels["work"] = Channel(Connection(to_work[0].detach()), process)
    else:
        for end in (*to_work, work_to_gate[0]):
            end.close()
    atexit.register(stop)


def stop() -> None:
    """Let the helpers go: they see end-of-file and exit by themselves."""
    for name in list(_channels):
        _channels.pop(name).close()


def _spawn(function: str, *theirs: socket.socket, others: tuple[socket.socket, ...] = ()) -> subprocess.Popen | _Forked:
    from customer_segments.tasks.runtime import warm_start
    from customer_segments.tasks.runtime.storage import release_memory_at_once

    release_memory_at_once()  # the child inherits it before it loads pyarrow
    if warm_start.can_fork():  # a copy of this process has the libraries imported already
        return _fork(function, theirs, others)
    fds = [s.fileno() for s in theirs]
    process = subprocess.Popen(_command(function, fds), pass_fds=fds, stdin=subprocess.DEVNULL)
    for s in theirs:
        s.close()
    return process


def _command(function: str, fds: list[int]) -> list[str]:
    return [sys.executable, "-c", f"import sys; from {__name__} import {function}; {function}(*sys.argv[1:])",
            *map(str, fds)]


class _Forked:
    """A helper forked from this process, as a Channel sees it (a Popen's poll)."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 0
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _fork(function: str, theirs: tuple[socket.socket, ...], others: tuple[socket.socket, ...]) -> _Forked:
    """Fork a helper from a command the warm starter started (tasks/runtime/warm_start.py): it then
    needs no imports of its own. Only while this process has no other thread. The copy closes
    the ends that are not its own (`others` and the run's channels), so that each helper still
    reads end-of-file when the run's process ends."""
    from customer_segments.tasks.runtime import warm_start

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            warm_start.forked_helper()
            warm_start.process_title(_command(function, [s.fileno() for s in theirs]))
            for name in list(_channels):
                _channels.pop(name).close()
            for end in others:
                end.close()
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # it ends when the run's process does
            globals()[function](*(str(s.fileno()) for s in theirs))
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    for s in theirs:
        s.close()
    return _Forked(pid)


# --- in the children ----------------------------------------------------------------------------


def serve_validator(from_parent: str, from_worker: str, docs_from_parent: str) -> None:
    """Answer the run's and the worker's gates and the run's Data Docs, each connection in a
    thread of its own."""
    from multiprocessing.connection import Connection

    from customer_segments.tasks.runtime.quality import gate

    gate.warm_up()
    threads = [threading.Thread(target=_serve, args=(Connection(int(fd)), gate.HANDLERS), daemon=True)
               for fd in (from_parent, from_worker, docs_from_parent)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def serve_worker(from_parent: str, to_validator: str) -> None:
    from multiprocessing.connection import Connection

    global ROLE
    ROLE = "worker process"
    _channels["gate"] = Channel(Connection(int(to_validator)))
    _warm_up_worker()
    _serve(Connection(int(from_parent)), {"stage": _run_stage, "preload": _preload})


def _serve(conn, handlers: dict[str, Callable[..., Any]]) -> None:
    """Answer requests until the other end goes away."""
    while True:
        try:
            kind, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", handlers[kind](*args)))
        except Exception as exc:  # handed back to the caller, who raises it
            conn.send(("error", exc))


# --- stages computed in the worker ---------------------------------------------------------------
#
# The stages that read the clean lines (the best sellers, then the basket rules from the same
# frame) are computed here: at ten million lines the run's process then never holds the lines
# once the orders exist (peak memory of all processes 3.4 GiB instead of 4.9), and the two cores
# share the methods (here the propensity model while k is selected, then the lines' stages; in the
# run the other per-customer ones: RFM, lifetime value, CHAID, plots). A stage the catalogue
# places in the worker (`runs_in="worker"`) is handed over as its references; the flow's thread
# waits on the socket.
# Without the worker it runs in this process.


def run_stage_in_worker(stage_name: str, context, upstream: list, inline: bool = True) -> Any:
    """Compute the stage in the worker (and, in line, validate and publish it there too)."""
    worker = channel("work")
    if worker is not None:
        return worker.call("stage", stage_name, context, list(upstream), inline)
    return _run_stage(stage_name, context, upstream, inline)


def hand_over(context, ref) -> threading.Thread | None:
    """Have the worker read a dataset its stages will compute from, now, while this process goes on.

    The run's process then forgets its own copy. The worker reads in a thread of this process's
    (which only waits on the socket); a stage sent meanwhile waits for the read, then finds the
    frame read. Returns the thread waiting for the worker's read; None: no worker (the stage
    reads it in this process when it comes).
    """
    from customer_segments.tasks.runtime.stage_runner import forget_frame

    worker = channel("work")
    if worker is None:
        return None
    forget_frame(ref.sha256)

    def read() -> None:
        try:
            worker.call("preload", context, ref)
        except Exception:  # the stage reads it itself, and says what is wrong if it still is
            pass

    reading = threading.Thread(target=read, name=f"hand-over-{ref.name}", daemon=True)
    reading.start()
    return reading


def _preload(context, ref) -> None:
    from customer_segments.tasks.runtime.stage_runner import preload

    preload(context, ref)


def _run_stage(stage_name: str, context, upstream: list, inline: bool = True) -> Any:
    from customer_segments.tasks.catalogue import BY_NAME
    from customer_segments.tasks.runtime.stage_runner import compute_stage, run_stage

    return (run_stage if inline else compute_stage)(BY_NAME[stage_name], context, upstream)


def _warm_up_worker() -> None:
    """What the stages computed here import, before the first one arrives."""
    from customer_segments.tasks import catalogue

    for stage in catalogue.STAGES:
        if stage.runs_in == "worker":
            __import__(stage.transform.__module__)
    import mlxtend.frequent_patterns  # noqa: F401  (imported lazily by the basket transform)

    from customer_segments.tasks.runtime import storage

    storage.freeze_imported()
