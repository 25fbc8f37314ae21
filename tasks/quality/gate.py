"""The quality gate as the stage runner sees it: validate a written output, build Data Docs.

Importing Great Expectations takes seconds. A command therefore starts the validator first
thing (`start_validator`): a one-process pool whose initializer imports GX on the second core
while the run starts up and ingests. Gates then validate there, reading the output file the
runner has just written. Without it (tests calling the runner directly, or a stage running on a
Dask worker) validation runs in-process. Nothing here imports pandas or GX at import time.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor
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
    pool = _pool()
    if pool is not None:
        return pool.submit(_validate_file, dataset, str(path), parameters).result()
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
        pool = _pool()
        args = ([str(p) for p in reports], str(building))
        pool.submit(_docs, *args).result() if pool is not None else _docs(*args)
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
    """The validator's initializer: import GX and build its context before the first gate."""
    from customer_segments.tasks.quality.validation import gx_state

    gx_state()


# --- the validator process ----------------------------------------------------------------------

_executor: ProcessPoolExecutor | None = None
_ready: Future | None = None  # done once the validator has imported GX


def start_validator() -> None:
    """Start the validator now, so that GX is imported by the time the first gate needs it.

    'spawn' rather than fork: the parent may already run threads (Prefect's), which a forked
    child would inherit in an undefined state.
    """
    global _executor, _ready
    if _executor is None:
        _executor = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_warm_up,
        )
        _ready = _executor.submit(int)  # a pool starts its process on the first submission


def stop_validator() -> None:
    """Stop the validator without waiting for Great Expectations' import to finish.

    An idle validator is told to exit (it holds its queue's lock while it waits, so killing it
    would leave that lock to the resource tracker); one still importing GX is terminated.
    """
    global _executor, _ready
    if _executor is None:
        return
    if _ready is not None and not _ready.done():
        for process in list((getattr(_executor, "_processes", None) or {}).values()):
            process.terminate()
    _executor.shutdown(wait=True, cancel_futures=True)
    _executor = _ready = None


def _pool() -> ProcessPoolExecutor | None:
    global _executor
    if _executor is not None and getattr(_executor, "_broken", False):
        _executor = None  # the process died (killed, out of memory): validate in this process
    return _executor
