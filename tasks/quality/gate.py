"""The quality gate as the stage runner sees it: validate a written output, build Data Docs.

Importing Great Expectations takes seconds. A command therefore starts the validator first
thing (`start_validator`): a child process that imports GX on the second core while the run
starts up and ingests. Gates then validate there, reading the output file the
runner has just written. Without it (tests calling the runner directly, or a stage running on a
Dask worker) validation runs in-process. Nothing here imports pandas or GX at import time.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from customer_segments.tasks import storage

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class GateOutcome:
    """What the runner needs of a validation: a digest, the verdict in words, GX's full report."""

    summary: dict[str, Any]      # what the manifest records: success, counts, findings, seconds
    message: str | None          # one paragraph when a critical expectation failed
    report: bytes                # GX's validation result as JSON

    @property
    def passed(self) -> bool:
        return self.message is None


def check(dataset: str, path: Path, facts: Mapping[str, Any], frame: pd.DataFrame | None = None) -> GateOutcome:
    """Validate the Parquet file of a dataset with its suite, given the run's facts.

    ``frame`` is the same data already in memory, used when validation runs in this process.
    """
    parameters = {k: v for k, v in facts.items() if v is not None}
    worker = _validator()
    if worker is not None:
        return worker.call("validate", dataset, str(path), parameters)
    return _validate(dataset, frame if frame is not None else storage.read_parquet(path), parameters)


def build_docs(validation_dir: Path, cache_dir: Path) -> Path | None:
    """GX Data Docs of a run's validation/ reports, into validation/docs/.

    The site is cached under the sha256 of the reports: a rerun whose stages all came from the
    cache links the same site instead of importing GX to build it again.
    """
    reports = sorted(validation_dir.glob("*.json"))
    if not reports:
        return None
    digest = hashlib.sha256()
    for path in reports:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    cached = cache_dir / "data_docs" / digest.hexdigest()
    target = validation_dir / "docs"
    if not (cached / ".complete").exists():
        building = cached.with_name(f".{cached.name}.{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        worker = _validator()
        args = ([str(p) for p in reports], str(building))
        worker.call("docs", *args) if worker is not None else _docs(*args)
        (building / ".complete").touch()
        shutil.rmtree(cached, ignore_errors=True)
        building.rename(cached)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(cached, target, copy_function=lambda src, dst: storage.link_or_copy(Path(src), Path(dst)),
                    ignore=shutil.ignore_patterns(".complete"))
    return target / "index.html"


# --- the work itself, in whichever process runs it ----------------------------------------------


def _validate(dataset: str, df: pd.DataFrame, parameters: Mapping[str, Any]) -> GateOutcome:
    from customer_segments.tasks.quality.validation import validate

    result = validate(df, dataset, parameters)
    return GateOutcome(summary=result.summary(), message=result.error_message(), report=result.report_bytes())


def _validate_file(dataset: str, path: str, parameters: Mapping[str, Any]) -> GateOutcome:
    return _validate(dataset, storage.read_parquet(Path(path)), parameters)


def _docs(report_paths: list[str], out_dir: str) -> str:
    from customer_segments.tasks.quality.docs import build_data_docs

    reports = {Path(p).stem: json.loads(Path(p).read_text(encoding="utf-8")) for p in report_paths}
    return str(build_data_docs(reports, Path(out_dir)))


def _warm_up() -> None:
    """Import GX and build its context before the first gate asks."""
    from customer_segments.tasks.quality.validation import gx_state

    gx_state()


# --- the validator process ----------------------------------------------------------------------


def serve(fd: int) -> None:
    """The validator process: import GX once, then answer requests until the parent goes away."""
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    _warm_up()
    handlers = {"validate": _validate_file, "docs": _docs}
    while True:
        try:
            kind, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", handlers[kind](*args)))
        except Exception as exc:  # handed back to the caller, who raises it
            conn.send(("error", exc))


class _Validator:
    """A child Python process answering pickled requests over a socket pair.

    A plain `python -c` child rather than a multiprocessing pool: 'spawn' re-runs the caller's
    main script in the child (a user's script without a main guard would start itself again),
    'fork' is unsafe once Prefect's threads run, and a pool's worker must be joined at exit
    (0.8 s measured). This child reads end-of-file when the parent exits and ends by itself.
    """

    def __init__(self):
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"import sys; from {__name__} import serve; serve(int(sys.argv[1]))",
             str(theirs.fileno())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.process.poll() is None

    def call(self, kind: str, *args):
        with self.lock:
            self.conn.send((kind, args))
            status, value = self.conn.recv()
        if status == "error":
            raise value
        return value

    def stop(self) -> None:
        self.conn.close()


_worker: _Validator | None = None


def start_validator() -> None:
    """Start the validator now, so that GX is imported by the time the first gate needs it."""
    global _worker
    if _worker is None or not _worker.alive():
        _worker = _Validator()
        atexit.register(stop_validator)


def stop_validator() -> None:
    """Let the validator go: it sees end-of-file and exits by itself; nobody waits for it."""
    global _worker
    if _worker is not None:
        _worker.stop()
        _worker = None


def _validator() -> _Validator | None:
    """The validator when it runs; None (validate in this process) when it was never started or died."""
    return _worker if _worker is not None and _worker.alive() else None
