"""The quality gate as the stage runner sees it: validate a written output, build Data Docs.

Importing Great Expectations takes seconds. A command therefore starts the validator process
first thing (tasks/runtime/worker_processes.py), which imports GX on the second core while the run starts up and
ingests. Gates then validate there, reading the output file the runner has just written.
Without it (tests calling the runner directly, or a stage running on another machine)
validation runs in-process. Nothing here imports pandas or GX at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from customer_segments.tasks.runtime import storage, worker_processes

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
    validator = worker_processes.channel("gate")
    if validator is not None:
        return validator.call("validate", dataset, str(path), parameters)
    return _validate(dataset, frame if frame is not None else storage.read_parquet(path), parameters)


def check_parts(dataset: str, paths: list[Path], facts: Mapping[str, Any]) -> GateOutcome:
    """Validate a partitioned dataset part by part and merge the results into one.

    The parts are validated in parallel on the dask cluster when there is one (a dask stage
    computes inside a client's context), else one after the other here. The merged result has
    the meaning of validating the whole dataset at once (see quality/merge.py).
    """
    from customer_segments.tasks.runtime.quality.merge import merged_gate

    started = time.perf_counter()
    parameters = {k: v for k, v in facts.items() if v is not None}
    client = _dask_client_or_none()
    if client is not None:
        futures = client.map(_part_report, [str(p) for p in paths], dataset=dataset, parameters=parameters,
                             pure=False)
        reports = client.gather(futures)
    else:
        reports = [_part_report(str(p), dataset, parameters) for p in paths]
    result = merged_gate(reports, dataset, parameters)
    summary = result.summary() | {"seconds": round(time.perf_counter() - started, 3)}
    return GateOutcome(summary=summary, message=result.error_message(), report=result.report_bytes())


def _part_report(path: str, dataset: str, parameters: Mapping[str, Any]) -> dict:
    from customer_segments.tasks.runtime.quality.validation import validate

    return validate(storage.read_parquet(Path(path)), dataset, parameters).report


def _dask_client_or_none():
    try:
        from distributed import get_client
    except ImportError:
        return None
    try:
        return get_client()
    except ValueError:  # no client in this process or thread
        return None


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
        validator = worker_processes.channel("gate")
        args = ([str(p) for p in reports], str(building))
        validator.call("docs", *args) if validator is not None else _docs(*args)
        (building / ".complete").touch()
        shutil.rmtree(cached, ignore_errors=True)
        building.rename(cached)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(cached, target, copy_function=lambda src, dst: storage.link_or_copy(Path(src), Path(dst)),
                    ignore=shutil.ignore_patterns(".complete"))
    return target / "index.html"


# --- the work itself, in whichever process runs it ----------------------------------------------


def _validate(dataset: str, df: pd.DataFrame, parameters: Mapping[str, Any]) -> GateOutcome:
    from customer_segments.tasks.runtime.quality.validation import validate

    result = validate(df, dataset, parameters)
    return GateOutcome(summary=result.summary(), message=result.error_message(), report=result.report_bytes())


# Datasets longer than this are validated in slices of row groups, their results merged: GX
# holds copies of what it validates (three times the frame at ten million lines).
SLICE_ROWS = 2_500_000
# Below this many rows a validated frame's memory is not worth handing back to the system.
RELEASE_ROWS = 500_000


def _validate_file(dataset: str, path: str, parameters: Mapping[str, Any]) -> GateOutcome:
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    try:
        if source.metadata.num_rows <= SLICE_ROWS:
            return _validate(dataset, storage.read_parquet(Path(path)), parameters)
        from customer_segments.tasks.runtime.quality.merge import merged_gate
        from customer_segments.tasks.runtime.quality.validation import validate

        started = time.perf_counter()
        reports, schema = [], None
        for groups in _slices(source):
            frame = source.read_row_groups(groups).to_pandas()
            schema = schema or {str(c): str(t) for c, t in frame.dtypes.items()}
            reports.append(validate(frame, dataset, parameters).report)
            del frame
            _release_memory()
        result = merged_gate(reports, dataset, parameters, dtypes=schema)
        summary = result.summary() | {"seconds": round(time.perf_counter() - started, 3)}
        return GateOutcome(summary=summary, message=result.error_message(), report=result.report_bytes())
    finally:
        if source.metadata.num_rows >= RELEASE_ROWS:
            _release_memory()


def _slices(source) -> list[list[int]]:
    """Consecutive row groups of at most about SLICE_ROWS rows each."""
    slices, current, rows = [], [], 0
    for group in range(source.metadata.num_row_groups):
        size = source.metadata.row_group(group).num_rows
        if current and rows + size > SLICE_ROWS:
            slices.append(current)
            current, rows = [], 0
        current.append(group)
        rows += size
    return slices + ([current] if current else [])


def _release_memory() -> None:
    """Give the memory of a validated dataset back to the system before the next one.

    GX's copies of a line-level dataset run to gigabytes at millions of lines; freed, they stay
    with the process's allocator unless it is asked to return them. They are freed as soon as
    validation returns: no garbage collection is needed for that (the validator's memory after
    each of the ten million lines' slices was the same with and without one, which took 0.6 s of
    CPU per run).
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps what it keeps
        pass


def _docs(report_paths: list[str], out_dir: str) -> str:
    from customer_segments.tasks.runtime.quality.docs import build_data_docs

    reports = {Path(p).stem: json.loads(Path(p).read_text(encoding="utf-8")) for p in report_paths}
    return str(build_data_docs(reports, Path(out_dir)))


def warm_up() -> None:
    """Import GX and build its context before the first gate asks."""
    from customer_segments.tasks.runtime.quality.validation import defer_unused_imports, gx_state

    storage.tune_memory()
    defer_unused_imports()
    gx_state()
    storage.freeze_imported()


HANDLERS = {"validate": _validate_file, "docs": _docs}
