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
    cache links the same site instead of importing GX to build it again. Pages the validator
    rendered while the run went on (docs_pages) are kept, and only the index is left to build.
    """
    reports = sorted(validation_dir.glob("*.json"))
    pages = _PAGES.finished(validation_dir, cache_dir)
    if not reports or pages is not None and not pages.is_dir():
        _PAGES.forget(pages)
        pages = None
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
        validator = worker_processes.channel("docs")
        args = ([str(p) for p in reports], str(building), str(pages) if pages else None)
        validator.call("docs", *args) if validator is not None else _docs(*args)
        (building / ".complete").touch()
        shutil.rmtree(cached, ignore_errors=True)
        building.rename(cached)
    else:
        _PAGES.forget(pages)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(cached, target, copy_function=lambda src, dst: storage.link_or_copy(Path(src), Path(dst)),
                    ignore=shutil.ignore_patterns(".complete"))
    return target / "index.html"


def docs_pages(validation_dir: Path, cache_dir: Path) -> None:
    """Have the validator render the Data Docs pages of the reports in validation/ now, in the
    background: the run goes on, and its end builds only the index (build_docs).

    Called as each stage is published. Without a validator, nothing happens (build_docs renders
    every page at the end, as before).
    """
    _PAGES.request(validation_dir, cache_dir)


class _PagesAhead:
    """The requests of this process for pages rendered ahead, sent one after the other by a thread
    of their own, so that publishing a stage never waits for a page."""

    def __init__(self):
        import queue
        import threading

        self.queue: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.sites: dict[Path, bool] = {}  # staging folder -> every request so far succeeded
        self.sent: dict[Path, dict[Path, tuple[int, int]]] = {}  # staging -> report -> (mtime, size) sent

    @staticmethod
    def staging(validation_dir: Path, cache_dir: Path) -> Path:
        key = hashlib.sha256(str(validation_dir.resolve()).encode()).hexdigest()[:16]
        return cache_dir / "data_docs" / f".pages-{key}.{os.getpid()}"

    def request(self, validation_dir: Path, cache_dir: Path) -> None:
        import threading

        if worker_processes.channel("docs") is None:
            return
        staging = self.staging(validation_dir, cache_dir)
        with self.lock:
            if staging not in self.sites:
                shutil.rmtree(staging, ignore_errors=True)
                self.sites[staging] = True
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._send, name="data-docs-pages", daemon=True)
                self.thread.start()
        self.queue.put((validation_dir, staging))

    def _send(self) -> None:
        while True:
            validation_dir, staging = self.queue.get()
            try:
                channel = worker_processes.channel("docs")
                if channel is None:
                    raise RuntimeError("the validator is gone")
                sent = self.sent.setdefault(staging, {})
                now = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(validation_dir.glob("*.json"))}
                todo = [p for p, stamp in now.items() if sent.get(p) != stamp]
                if todo:
                    channel.call("docs_pages", [str(p) for p in todo], str(staging))
                    sent.update((p, now[p]) for p in todo)
            except Exception:  # noqa: BLE001 - the end of the run builds the whole site instead
                self.sites[staging] = False
            finally:
                self.queue.task_done()

    def finished(self, validation_dir: Path, cache_dir: Path) -> Path | None:
        """Wait for the requests sent so far; the staging folder of the pages rendered ahead for
        this validation folder, or None (none were, or one request failed)."""
        staging = self.staging(validation_dir, cache_dir)
        with self.lock:
            if staging not in self.sites:
                return None
        self.queue.join()
        with self.lock:
            usable = self.sites.pop(staging)
            self.sent.pop(staging, None)
        if not usable:
            self.forget(staging)
            return None
        return staging

    @staticmethod
    def forget(staging: Path | None) -> None:
        """Let the validator drop the pages rendered ahead in staging (and the folder)."""
        if staging is None:
            return
        validator = worker_processes.channel("docs")
        if validator is not None:
            validator.call("forget_pages", str(staging))
        shutil.rmtree(staging, ignore_errors=True)


_PAGES = _PagesAhead()


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


def _docs(report_paths: list[str], out_dir: str, pages_dir: str | None = None) -> str:
    """The site of these reports in out_dir: the pages rendered ahead in pages_dir and the
    index, or, without them, every page."""
    from customer_segments.tasks.runtime.quality.docs import build_data_docs

    reports = {Path(p).stem: json.loads(Path(p).read_text(encoding="utf-8")) for p in report_paths}
    site = _SITES.pop(pages_dir, None) if pages_dir else None
    if site is not None:
        try:
            site.add(list(reports.items()))
            index = site.finish()
            shutil.rmtree(out_dir, ignore_errors=True)
            Path(pages_dir).rename(out_dir)
            return str(Path(out_dir) / index.relative_to(site.out_dir))
        except Exception:  # noqa: BLE001 - a report changed after its pages were built: all again
            pass
    if pages_dir:
        shutil.rmtree(pages_dir, ignore_errors=True)
    return str(build_data_docs(reports, Path(out_dir)))


# The sites whose pages this process renders ahead, by staging folder (in the validator).
_SITES: dict[str, Any] = {}


def _docs_pages(report_paths: list[str], pages_dir: str) -> None:
    """Render the pages of the reports not rendered yet into pages_dir (see docs_pages)."""
    from customer_segments.tasks.runtime.quality.docs import DocsSite, report_items

    site = _SITES.get(pages_dir)
    if site is None:
        site = _SITES[pages_dir] = DocsSite(Path(pages_dir))
    reports = {Path(p).stem: json.loads(Path(p).read_text(encoding="utf-8")) for p in report_paths}
    site.add(report_items(reports))


def _forget_pages(pages_dir: str) -> None:
    _SITES.pop(pages_dir, None)
    shutil.rmtree(pages_dir, ignore_errors=True)


def warm_up() -> None:
    """Import GX and build its context before the first gate asks."""
    from customer_segments.tasks.runtime.quality.validation import defer_unused_imports, gx_state

    storage.tune_memory()
    defer_unused_imports()
    gx_state()
    storage.freeze_imported()


HANDLERS = {"validate": _validate_file, "docs": _docs, "docs_pages": _docs_pages, "forget_pages": _forget_pages}
