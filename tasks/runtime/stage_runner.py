"""The stage runner: everything a stage needs besides its pure transform, done the same way for all.

A stage goes through three steps, which the flow may run apart:

- **compute** (`compute_stage`): find its input datasets among the upstream stages' results,
  derive the cache key (inputs' hashes, parameters, code and library versions, quality suites),
  reuse a complete cached output whose bytes still hash right, or else read the inputs, call the
  transform and write each output atomically into the content-addressed cache entry;
- **gate** (`gate_stage`): validate each written output with its quality suite;
- **publish** (`publish_stage`): once the gates passed, write the entry file that marks the
  outputs complete (what later runs reuse) and link the files into the run folder. A failed
  gate instead moves the output aside and raises `QualityError`; `discard` removes outputs
  computed from data whose own gate failed, so they are never reused.

Later stages may compute from an output whose gate is still running: the flow publishes a stage
only after its own gates and every stage upstream of it have been published. `run_stage` does the
three in line, for tests, a worker without the flow, and the dask engine. Each returns a small
`StageResult`; the flow records the published one in the run's manifest.

No Prefect here: flows/ wraps these in tasks; tests call them directly.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from customer_segments.tasks.cores import usable_cores
from customer_segments.tasks.errors import PipelineError, disk_full
from customer_segments.tasks.runtime import code_version, storage
from customer_segments.tasks.runtime.manifest import DatasetRef, RunContext, StageRecord, StageResult
from customer_segments.tasks.runtime.quality import gate
from customer_segments.tasks.runtime.stage import Stage

FAULT_SWITCH = "SEGMENT_FAULT"
# With a hang: a file the hanging process writes its pid to; when it exists, the stage does not
# hang again (a retry on another worker after the first one was killed completes).
FAULT_MARKER = "SEGMENT_FAULT_MARKER"
ENTRY = "entry.json"


class QualityError(PipelineError):
    """A critical expectation failed on a stage's output."""

    def __init__(self, stage: str, dataset: str, message: str, report_path: Path | None,
                 record: StageRecord | None = None):
        self.stage, self.dataset, self.report_path, self.record = stage, dataset, report_path, record
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (self.stage, self.dataset, str(self), self.report_path, self.record))


class InjectedFault(RuntimeError):
    """Raised on purpose by the fault-injection switch, to exercise failure and resume."""


def key_values(stage: Stage, context: RunContext) -> dict[str, Any]:
    """The parameters and run facts a stage's result depends on, as its cache key holds them.

    A parameter with `key_as` enters as that fact (the input's sha256, not its path); a stage
    with a dask twin keys on the engine too, since the two write their outputs differently (a
    file, or a folder of parts).
    """
    from customer_segments.tasks.runtime.parameters import declared

    values = {}
    for name in stage.param_names:
        param = declared().get(name)
        key = param.key_as if param is not None and param.key_as else name
        values[key] = context.params.get(key)
    if stage.dask_transform is not None:
        values["engine"] = context.params.get("engine")
    return values


def cache_key(stage: Stage, context: RunContext, inputs: Mapping[str, DatasetRef]) -> str:
    payload = {
        "stage": stage.name,
        "code": stage.code_version,
        "suites": {d: code_version.suite_digest(d) for d in stage.outputs},
        "params": key_values(stage, context),
        "inputs": {d: inputs[d].sha256 if d in inputs else None for d in stage.inputs},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def run_stage(stage: Stage, context: RunContext, upstream: Sequence[StageResult] = ()) -> StageResult:
    """Compute (or reuse), validate and publish the stage's outputs, in line; return its result."""
    result = compute_stage(stage, context, upstream)
    return publish_stage(stage, context, result, gate_stage(stage, context, result))


def compute_stage(stage: Stage, context: RunContext, upstream: Sequence[StageResult] = ()) -> StageResult:
    """Reuse a verified cache entry, or compute and write the outputs (not yet validated).

    The result's outputs point at the cache entry's files; its `entry` is what `publish_stage`
    completes (status "cached": already complete, "computed": awaiting its gates).
    """
    started = time.perf_counter()
    inputs = _input_refs(stage, upstream)
    upstream_metrics = {k: v for result in upstream for k, v in result.facts.items()}
    key = cache_key(stage, context, inputs)
    entry_dir = context.cache_dir / stage.name / key
    try:
        entry = None if stage.name in context.refresh else _verified_entry(entry_dir)
        status = "cached"
        if entry is None:
            entry = _compute(stage, context, inputs, entry_dir)
            status = "computed"
        outputs = {name: _reference(context, entry_dir, name, info) for name, info in entry["outputs"].items()}
    except OSError as exc:
        raise _disk_full(exc, stage, context, entry_dir) from None
    record = StageRecord(
        status=status, cache_key=key, outputs=outputs, metrics=entry.get("metrics", {}),
        gates=entry.get("gates", {}), seconds=round(time.perf_counter() - started, 3),
        computed_in=computed_in() if status == "computed" else None,
    )
    return StageResult(stage=stage.name, record=record, facts={**upstream_metrics, **record.metrics}, entry=entry)


def gate_stage(stage: Stage, context: RunContext, result: StageResult) -> dict[str, gate.GateOutcome]:
    """Validate each table a stage computed; stop at the first that fails (nothing for a cached one).

    Reads the written files, so it may run in another process or while later stages compute.
    """
    if result.record.status != "computed" or result.entry is None:
        return {}
    entry_dir = context.cache_dir / stage.name / result.record.cache_key
    facts = {**context.facts(), **result.facts}  # a stage's own facts (the customer count) too
    on_dask = context.params.get("engine") == "dask" and stage.dask_transform is not None
    outcomes: dict[str, gate.GateOutcome] = {}
    for dataset in stage.outputs:
        info = result.entry["outputs"][dataset]
        if info.get("parts"):
            with (dask_client() if on_dask else nullcontext()):
                outcome = gate.check_parts(dataset, [entry_dir / info["file"] / p["file"] for p in info["parts"]], facts)
        else:
            with _FRAMES_LOCK:
                frame = _FRAMES.get(info["sha256"])
            outcome = gate.check(dataset, entry_dir / info["file"], facts, frame=frame)
        outcomes[dataset] = outcome
        if not outcome.passed:
            break
    return outcomes


def publish_stage(stage: Stage, context: RunContext, result: StageResult,
                  outcomes: Mapping[str, gate.GateOutcome]) -> StageResult:
    """Complete a computed stage whose gates passed (or reject it), and link it into the run folder.

    Call it only once every stage upstream of this one is published. A result already published
    (no `entry`) is returned as it is.
    """
    if result.entry is None:
        return result
    started = time.perf_counter()
    key = result.record.cache_key
    entry_dir = context.cache_dir / stage.name / key
    entry = result.entry
    gate_seconds = 0.0
    try:
        if result.record.status == "computed":
            outputs = dict(entry["outputs"])
            gates: dict[str, dict[str, Any]] = {}
            for dataset, outcome in outcomes.items():
                if not outcome.passed:
                    _reject(stage, context, dataset, entry_dir / outputs[dataset]["file"], outcome,
                            entry.get("metrics", {}), key)
            missing = [d for d in stage.outputs if d not in outcomes]
            if missing:
                raise RuntimeError(f"stage {stage.name}: no gate result for {', '.join(missing)}")
            for dataset, outcome in outcomes.items():
                gates[dataset] = outcome.summary
                gate_seconds += float(outcome.summary.get("seconds") or 0)
                relname = f"validation/{dataset}.json"
                storage.write_bytes_atomic(entry_dir / relname, outcome.report)
                outputs[relname] = {"file": relname, "sha256": storage.sha256_bytes(outcome.report), "rows": None,
                                    "columns": None}
            entry = {"stage": stage.name, "outputs": outputs, "metrics": entry.get("metrics", {}), "gates": gates}
            # The entry file is written last: its presence is what marks the outputs complete.
            storage.write_json(entry_dir / ENTRY, entry)
        outputs = {name: _place(stage, context, entry_dir, name, info) for name, info in entry["outputs"].items()}
    except OSError as exc:
        raise _disk_full(exc, stage, context, entry_dir) from None
    seconds = (result.record.seconds or 0) + gate_seconds + (time.perf_counter() - started)
    status = "cached" if result.record.status == "cached" else "completed"
    record = result.record.model_copy(update={"status": status, "outputs": outputs, "gates": entry.get("gates", {}),
                                              "seconds": round(seconds, 3)})
    return result.model_copy(update={"record": record, "entry": None})


def discard(stage: Stage, context: RunContext, result: StageResult) -> None:
    """Remove outputs computed from data that failed a gate upstream: never complete, never reused."""
    if result.record.status != "computed" or result.record.cache_key is None:
        return
    entry_dir = context.cache_dir / stage.name / result.record.cache_key
    if not (entry_dir / ENTRY).exists():  # another run may have completed the same entry meanwhile
        shutil.rmtree(entry_dir, ignore_errors=True)


def _disk_full(exc: OSError, stage: Stage, context: RunContext, entry_dir: Path):
    folder = Path(exc.filename).parent if exc.filename and os.path.isabs(exc.filename) else entry_dir
    return disk_full(exc, stage.name, folder, context.run_id, resumable=context.run_dir is not None)


def _input_refs(stage: Stage, upstream: Sequence[StageResult]) -> dict[str, DatasetRef]:
    available = {name: ref for result in upstream for name, ref in result.record.outputs.items()}
    missing = [d for d in stage.inputs if d not in available and d not in stage.optional]
    if missing:
        raise ValueError(f"stage {stage.name} needs {', '.join(missing)}, which no upstream stage produced")
    return {d: available[d] for d in stage.inputs if d in available}


# Stages run side by side (one per helper process); each may use this many threads in its
# compiled steps unless the run says otherwise (see catalogue.THREADS).
FEW_CORES = 4


def default_threads() -> int:
    cores = usable_cores()
    return 1 if cores <= FEW_CORES else cores


def use_threads(threads: int | None) -> int:
    """Set the threads of BLAS, OpenMP (scikit-learn's k-means) and Arrow in this process for the
    stage about to compute. Set, not restored: stages of one run share the setting, and stages
    computing side by side in one process would otherwise restore each other's."""
    import pyarrow as pa
    from threadpoolctl import threadpool_limits

    storage.tune_memory()
    threads = threads or default_threads()
    if pa.cpu_count() != threads:
        pa.set_cpu_count(threads)
    threadpool_limits(limits=threads)
    return threads


# The compiled libraries stages import when they first compute. Two stages computing side by side
# may both import one of them for the first time; scikit-learn's circular imports then fail in
# one thread ("partially initialized module"). They are imported in one thread while the sources
# are read (`warm_imports`), and later stages wait for it.
SHARED_IMPORTS = ("scipy.optimize", "scipy.sparse", "scipy.special", "sklearn.base", "sklearn.cluster",
                  "sklearn.linear_model", "sklearn.metrics", "sklearn.pipeline", "sklearn.preprocessing",
                  "matplotlib.figure", "matplotlib.colors", "matplotlib.patches", "kneed")
_warming: threading.Thread | None = None


def warm_imports() -> None:
    """Start importing SHARED_IMPORTS in a thread of this process (once)."""
    global _warming
    if _warming is None:
        _warming = threading.Thread(target=_import_shared, name="warm-imports", daemon=True)
        _warming.start()


def _import_shared() -> None:
    import importlib

    for module in SHARED_IMPORTS:
        try:
            importlib.import_module(module)
        except ImportError:  # a stage that needs it says so when it runs
            pass
    storage.freeze_imported()


def computed_in() -> str:
    """This process, as a stage's record names it: a dask worker by its address, else the
    flow's process or the worker process (tasks/runtime/worker_processes.py)."""
    import sys

    from customer_segments.tasks.runtime import worker_processes

    if "distributed" in sys.modules:  # never imported for it: the pandas engine does without
        from distributed import get_worker

        try:
            return f"dask worker {get_worker().address}"
        except ValueError:  # not in a worker
            pass
    return worker_processes.ROLE


def _compute(stage: Stage, context: RunContext, inputs: Mapping[str, DatasetRef], entry_dir: Path) -> dict[str, Any]:
    """Read the inputs, call the transform, write the outputs and figures; the entry to complete."""
    _injected_fault(stage.name, "fail")
    if stage.inputs and _warming is not None:
        _warming.join()
    on_dask = context.params.get("engine") == "dask" and stage.dask_transform is not None
    use_threads(context.params.get("threads"))
    with (dask_client() if on_dask else nullcontext()):
        frames = {d: (load_dask_frame if on_dask and inputs[d].is_partitioned else load_frame)(inputs[d], context.artifacts_dir)
                  if d in inputs else None for d in stage.inputs}
        params = {p: context.params.get(p) for p in stage.param_names}
        result = (stage.dask_transform if on_dask else stage.transform)(*frames.values(), **params)

        # A figure stage returns its tables (if any) and then a dict of figures by file stem.
        parts = result if isinstance(result, tuple) else (result,)
        figures = parts[-1] if stage.figures else {}
        tables = parts[:-1] if stage.figures else parts
        produced = dict(zip(stage.outputs, tables, strict=True))
        files = {f"plots/{stem}.png": _png_bytes(fig) for stem, fig in sorted(figures.items())}
        measure = stage.dask_metrics if on_dask and stage.dask_metrics else stage.metrics
        measured = measure({**frames, **produced}, params) if measure else {}
        # A dask stage's metrics may be lazy, (values, finish): computed with the first partitioned
        # output's writing, in one pass over the partitions they share.
        lazy, finish = measured if isinstance(measured, tuple) else (None, None)
        metrics = {} if lazy is not None else _plain(measured)
        _injected_fault(stage.name, "disk-full")
        outputs = {}
        for dataset, frame in produced.items():
            outputs[dataset], computed = _write_table(stage, dataset, frame, entry_dir,
                                                      also=lazy if storage.is_dask(frame) else None)
            if lazy is not None and storage.is_dask(frame):
                lazy, metrics = None, _plain(finish(computed))
        if lazy is not None:
            import dask

            metrics = _plain(finish(dask.compute(lazy)[0]))
    for relname, data in files.items():
        storage.write_bytes_atomic(entry_dir / relname, data)
        outputs[relname] = {"file": relname, "sha256": storage.sha256_bytes(data), "rows": None, "columns": None}
    return {"stage": stage.name, "outputs": outputs, "metrics": metrics}


def _write_table(stage: Stage, dataset: str, frame, entry_dir: Path, also: Any = None) -> tuple[dict[str, Any], Any]:
    """Write one output: a file, or a folder of parts for a dask DataFrame (computed together with
    the dask values `also`, whose results come back beside the output's record)."""
    if storage.is_dask(frame):
        folder = entry_dir / dataset
        parts, computed = storage.write_partitioned(frame, folder, also=also)
        _injected_fault(stage.name, "hang")
        return {"file": dataset, "sha256": storage.parts_sha256(parts), "rows": sum(p["rows"] for p in parts),
                "columns": [str(c) for c in frame.columns], "parts": parts}, computed
    relname = f"{dataset}.parquet"
    data = storage.parquet_bytes(frame)
    storage.write_bytes_atomic(entry_dir / relname, data)
    _injected_fault(stage.name, "hang")
    sha = storage.sha256_bytes(data)
    remember_frame(sha, frame)
    return {"file": relname, "sha256": sha, "rows": len(frame), "columns": [str(c) for c in frame.columns]}, None


def _reject(stage: Stage, context: RunContext, dataset: str, path: Path, outcome: gate.GateOutcome,
            metrics: dict[str, Any], key: str) -> None:
    """A critical expectation failed: keep the output for inspection, never as complete."""
    where = context.folder or context.cache_dir / "failed" / context.run_id
    report_path = where / "validation" / f"{dataset}.json"
    storage.write_bytes_atomic(report_path, outcome.report)
    failed = where / "failed" / path.name
    failed.parent.mkdir(parents=True, exist_ok=True)
    if failed.is_dir():
        shutil.rmtree(failed)
    os.replace(path, failed)
    message = (
        f"Stage {stage.name} stopped on input {context.params.get('input_path')}: {outcome.message}. "
        f"Full report: {report_path}. The rejected output is kept in {failed.parent} for inspection and "
        "was not marked complete; earlier runs are untouched."
    )
    record = StageRecord(status="failed", cache_key=key, metrics=metrics, gates={dataset: outcome.summary},
                         error=message)
    raise QualityError(stage.name, dataset, message, report_path, record)


def _injected_fault(stage: str, kind: str) -> None:
    """SEGMENT_FAULT=<stage>:<kind> rehearses a failure in that stage.

    fail: the stage raises; hang: it stops after its first output file is written (for a kill;
    once only with SEGMENT_FAULT_MARKER); disk-full: writing its outputs fails as on a full disk.
    Operators use it to rehearse a failed run's retry and resume; the tests use it too.
    """
    if os.environ.get(FAULT_SWITCH, "") != f"{stage}:{kind}":
        return
    if kind == "fail":
        raise InjectedFault(f"stage {stage} failed on purpose ({FAULT_SWITCH}={stage}:fail)")
    if kind == "disk-full":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"({FAULT_SWITCH}={stage}:disk-full)")
    marker = os.environ.get(FAULT_MARKER)
    if marker:  # hang once: the process that hangs leaves its pid in the marker, a retry goes on
        if Path(marker).exists():
            return
        Path(marker).write_text(str(os.getpid()))
    while True:  # until killed: the stage's first output file is written, the entry is not
        time.sleep(1)


def _verified_entry(entry_dir: Path) -> dict[str, Any] | None:
    """A cache entry whose files all exist and still hash to what was recorded, else None."""
    try:
        entry = storage.read_json(entry_dir / ENTRY)
        for info in entry["outputs"].values():
            files = [(f"{info['file']}/{p['file']}", p["sha256"]) for p in info["parts"]] if info.get("parts") \
                else [(info["file"], info["sha256"])]
            if any(storage.sha256_file(entry_dir / name) != sha for name, sha in files):
                return None
        return entry
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _reference(context: RunContext, entry_dir: Path, name: str, info: dict[str, Any]) -> DatasetRef:
    """The reference of an output in its cache entry (where later stages read it before it is published)."""
    source = entry_dir / info["file"]
    return DatasetRef(name=name, file=info["file"], path=source.relative_to(context.artifacts_dir).as_posix(),
                      sha256=info["sha256"], rows=info["rows"], columns=info["columns"], parts=info.get("parts"))


def _place(stage: Stage, context: RunContext, entry_dir: Path, name: str, info: dict[str, Any]) -> DatasetRef:
    """The output's reference; links it into the run folder when there is one.

    Shared tables (the parsed input) stay in the cache; their reports are linked into the run
    folder once it exists (see `link_into_run`).
    """
    ref = _reference(context, entry_dir, name, info)
    if context.folder is None or (stage.shared and info["rows"] is not None):
        return ref
    source, target = entry_dir / info["file"], context.folder / info["file"]
    for part in info.get("parts") or [None]:  # a partitioned dataset: each of its parts
        storage.link_or_copy(source / part["file"] if part else source, target / part["file"] if part else target)
    return ref.model_copy(update={"path": target.relative_to(context.artifacts_dir).as_posix()})


def load_dask_frame(ref: DatasetRef, artifacts: Path):
    """A partitioned dataset as a dask DataFrame: one partition per part, in order."""
    import dask.dataframe as dd

    folder = ref.resolve(artifacts)
    return dd.read_parquet([str(folder / p.file) for p in ref.parts], index=False)


@contextmanager
def dask_client():
    """The dask.distributed client a dask stage computes with.

    Inside a worker (a Prefect task run by the DaskTaskRunner) a worker client, which leaves
    the worker's slot to the stage's own tasks while it waits; elsewhere the process's default
    client (a LocalCluster a test or a script started).
    """
    from distributed import get_client, get_worker, worker_client

    try:
        get_worker()
    except ValueError:
        yield get_client()
        return
    with worker_client() as client:
        yield client


def link_into_run(ref: DatasetRef, context: RunContext) -> DatasetRef:
    """A reference to the same file inside the run folder (for outputs made before it existed)."""
    target = context.folder / ref.file
    if not target.exists():
        storage.link_or_copy(ref.resolve(context.artifacts_dir), target)
    return ref.model_copy(update={"path": target.relative_to(context.artifacts_dir).as_posix()})


# --- frames made or read in this process, by sha256, so the next stage need not re-read them ---

_FRAMES: OrderedDict[str, pd.DataFrame] = OrderedDict()
_FRAMES_LOCK = threading.Lock()
FRAMES_KEPT = 4
# At millions of lines two line-level frames are gigabytes: beyond this many bytes the oldest
# frames are dropped (a later stage reads them back from their file if it needs them).
FRAMES_BYTES = 1 << 30


def remember_frame(sha256: str, frame: pd.DataFrame) -> None:
    with _FRAMES_LOCK:
        _FRAMES[sha256] = frame
        _FRAMES.move_to_end(sha256)
        while len(_FRAMES) > FRAMES_KEPT or (
                len(_FRAMES) > 1 and sum(int(f.memory_usage(index=False).sum()) for f in _FRAMES.values()) > FRAMES_BYTES):
            _FRAMES.popitem(last=False)


def forget_frame(sha256: str) -> None:
    """This process will not read the frame again (another process took it over)."""
    with _FRAMES_LOCK:
        _FRAMES.pop(sha256, None)


def preload(context: RunContext, ref: DatasetRef) -> None:
    """Read a dataset into this process's frames before the stage that needs it arrives."""
    use_threads(context.params.get("threads"))
    load_frame(ref, context.artifacts_dir)


def load_frame(ref: DatasetRef, artifacts: Path) -> pd.DataFrame:
    with _FRAMES_LOCK:
        frame = _FRAMES.get(ref.sha256)
    if frame is None:
        frame = storage.read_parquet(ref.resolve(artifacts))
        if ref.is_partitioned:
            # dask writes its own string dtype (missing values as pd.NA); a stage reads the same
            # frame whichever engine wrote it.
            frame = frame.astype({c: "str" for c, t in frame.dtypes.items()
                                  if isinstance(t, pd.StringDtype) and t.na_value is pd.NA})
        remember_frame(ref.sha256, frame)
    return frame


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics as plain JSON values (numpy scalars and timestamps would not survive a round trip)."""
    return json.loads(json.dumps(metrics, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _png_bytes(figure) -> bytes:
    import io

    buffer = io.BytesIO()
    # No software/date metadata: identical figures give identical bytes.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
