"""Quality gates between stages: the bridge from the stage runner to the GX suites.

Importing Great Expectations takes seconds. A run therefore starts a validator process first
thing (`start_validator`), which imports GX on the second core while the run starts up and
ingests; the gates then validate there. Without it (tests calling the runner directly, or if the
process is gone) validation runs in-process. Great Expectations is imported only where a
dataset is validated or Data Docs are built.
"""

from __future__ import annotations

import atexit
import hashlib
import io
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

from tasks import storage

if TYPE_CHECKING:  # the CLI starts the validator before pandas is imported
    import pandas as pd

EXPECTATIONS_DIR = Path(__file__).resolve().parent.parent / "expectations"


@dataclass(frozen=True)
class GateOutcome:
    summary: dict[str, Any]      # what the manifest records: success, counts, seconds
    message: str | None          # one paragraph when a critical expectation failed
    report: dict[str, Any]       # GX's full validation result

    def report_bytes(self) -> bytes:
        return (json.dumps(self.report, indent=1, default=str) + "\n").encode("utf-8")


def has_suite(dataset: str) -> bool:
    return (EXPECTATIONS_DIR / f"{dataset}.json").exists()


def check(dataset: str, df: pd.DataFrame, data: bytes, facts: Mapping[str, Any]) -> GateOutcome | None:
    """Validate a stage output with expectations/<dataset>.json; None when it has no suite.

    `data` is the output's Parquet bytes: what the validator process reads instead of a pickle.
    """
    if not has_suite(dataset):
        return None
    parameters = {k: v for k, v in facts.items() if v is not None}
    worker = _validator()
    if worker is not None:
        return worker.call("validate", dataset, data, parameters)
    return _validate(dataset, df, parameters)


def build_docs(validation_dir: Path, cache_dir: Path) -> Path | None:
    """GX Data Docs of a run's validation/ reports, into validation/docs/.

    The site is cached under the sha256 of the reports: a rerun whose stages all came from the
    cache links the same site instead of importing GX to build it again.
    """
    reports = sorted(p for p in validation_dir.glob("*.json"))
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
        if worker is not None:
            worker.call("docs", [str(p) for p in reports], str(building))
        else:
            _docs([str(p) for p in reports], str(building))
        (building / ".complete").touch()
        shutil.rmtree(cached, ignore_errors=True)
        building.rename(cached)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(cached, target, copy_function=lambda src, dst: storage.link_or_copy(Path(src), Path(dst)),
                    ignore=shutil.ignore_patterns(".complete"))
    return target / "index.html"


# --- the work itself, in whichever process runs it ----------------------------------------------


def _validate(dataset: str, df: pd.DataFrame | None, parameters: Mapping[str, Any], data: bytes | None = None) -> GateOutcome:
    import pandas as pd

    from tasks import quality

    if df is None:
        df = pd.read_parquet(io.BytesIO(data))
    result = quality.validate(df, dataset, parameters)
    summary = {k: v for k, v in result.summary().items() if k != "findings"}
    return GateOutcome(summary=summary, message=result.error_message(), report=result.report)


def _docs(report_paths: list[str], out_dir: str) -> str:
    from tasks import quality

    reports = {Path(p).stem: json.loads(Path(p).read_text(encoding="utf-8")) for p in report_paths}
    return str(quality.build_data_docs(reports, Path(out_dir)))


def serve(fd: int) -> None:
    """The validator process: import GX once, then answer requests until the parent goes away."""
    from multiprocessing.connection import Connection

    from tasks import quality

    conn = Connection(fd)
    quality._gx_state()
    handlers = {
        "validate": lambda dataset, data, parameters: _validate(dataset, None, parameters, data),
        "docs": _docs,
    }
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
    """A child Python process speaking pickled requests over a socket pair.

    A plain subprocess rather than multiprocessing's spawn, which would re-run the caller's main
    script in the child. When the parent exits, the child reads end-of-file and exits too: the
    parent never waits for it.
    """

    def __init__(self):
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from tasks.gates import serve; serve(int(sys.argv[1]))",
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
    """Start the validator process now, so that it is ready when the first gate needs it."""
    global _worker
    if _worker is None or not _worker.alive():
        _worker = _Validator()
        atexit.register(stop_validator)


def stop_validator() -> None:
    global _worker
    if _worker is not None:
        _worker.stop()
        _worker = None


def _validator() -> _Validator | None:
    return _worker if _worker is not None and _worker.alive() else None
