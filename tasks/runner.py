"""The stage runner: everything a stage needs besides its pure transform, done the same way for all.

For one stage it: reads the input datasets, derives the cache key (inputs' hashes, parameters,
code version), reuses a complete cached output whose bytes still hash right, or else calls the
transform, validates every output with its quality suite, writes the files atomically into the
content-addressed cache, links them into the run folder and records the outcome in the manifest.

No Prefect here: flows/ wraps `run_stage` in a task; tests call it directly.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from tasks import gates, storage
from tasks.errors import PipelineError

# Bump when the runner changes what it writes, so every cached output is recomputed once.
RUNNER_VERSION = "1"
FAULT_SWITCH = "SEGMENT_FAULT"
PACKAGE = __name__.split(".")[0]
ENTRY = "entry.json"


@dataclass(frozen=True)
class Stage:
    """A pipeline step: which datasets it reads and writes, and the pure function in between.

    `transform(*input_frames, **params)` returns one DataFrame per output (a tuple when there are
    several), or for a figure stage a dict of matplotlib Figures by file stem.
    """

    name: str
    transform: Callable[..., Any]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    # Parameters that decide the result; defaults to `params`. Ingest keys on the input's hash,
    # not its path, so a moved file is still recognised.
    key_params: tuple[str, ...] | None = None
    metrics: Callable[[Mapping[str, pd.DataFrame], Mapping[str, Any]], dict] | None = None
    figures: bool = False
    # Retries for transient I/O errors (a flaky network share); data errors are never retried.
    retries: int = 0
    # Shared outputs stay in the cache only (the parsed input is the same for every run of a file).
    shared: bool = False

    @cached_property
    def code_version(self) -> str:
        """Hash of the transform's module and the project modules it uses.

        Editing a stage's code therefore invalidates its cached outputs (and, through the
        input hashes, those of every later stage).
        """
        module = inspect.getmodule(self.transform)
        used = {module.__name__: module}
        for value in vars(module).values():
            owner = value if inspect.ismodule(value) else inspect.getmodule(value)
            if owner is not None and owner.__name__.startswith(f"{PACKAGE}."):
                used[owner.__name__] = owner
        digest = hashlib.sha256(RUNNER_VERSION.encode())
        for name in sorted(used):
            digest.update(inspect.getsource(used[name]).encode())
        return digest.hexdigest()[:16]


class QualityError(PipelineError):
    """A critical expectation failed on a stage's output."""

    def __init__(self, stage: str, dataset: str, message: str, report_path: Path | None):
        self.stage, self.dataset, self.report_path = stage, dataset, report_path
        super().__init__(message)


@dataclass
class Run:
    """One run's state: where it writes, its parameters and the datasets produced so far."""

    artifacts: Path
    params: dict[str, Any]
    manifest: dict[str, Any]
    run_dir: Path | None = None
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    refresh: frozenset[str] = frozenset()
    # The quality gate: (dataset, frame, parquet bytes, facts) -> GateOutcome or None.
    validate: Callable[..., Any] | None = gates.check
    # Frames made or read in this process, by sha256, so the next stage need not re-read them.
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def cache_dir(self) -> Path:
        return self.artifacts / "cache"

    @property
    def facts(self) -> dict[str, Any]:
        """Run parameters plus every stage's metrics: what the quality suites may refer to."""
        merged = dict(self.params, run_date=self.manifest.get("started_at"))
        for record in self.manifest.get("stages", {}).values():
            merged.update(record.get("metrics") or {})
        return merged

    def save_manifest(self) -> None:
        if self.run_dir is not None:
            storage.write_json(self.run_dir / "manifest.json", self.manifest)

    def record(self, stage: str, **fields: Any) -> None:
        self.manifest.setdefault("stages", {}).setdefault(stage, {}).update(fields)
        self.save_manifest()

    def frame(self, dataset: str) -> pd.DataFrame:
        ref = self.datasets[dataset]
        cached = self.frames.get(ref["sha256"])
        if cached is None:
            cached = storage.read_parquet(self.artifacts / ref["path"])
            self.frames[ref["sha256"]] = cached
        return cached


def cache_key(stage: Stage, run: Run) -> str:
    names = stage.params if stage.key_params is None else stage.key_params
    payload = {
        "stage": stage.name,
        "code": stage.code_version,
        "params": {p: run.params.get(p) for p in names},
        "inputs": {d: run.datasets[d]["sha256"] for d in stage.inputs},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def run_stage(stage: Stage, run: Run) -> dict[str, Any]:
    """Produce (or reuse) the stage's outputs; return the manifest record (small, JSON-able)."""
    started = time.perf_counter()
    key = cache_key(stage, run)
    entry_dir = run.cache_dir / stage.name / key
    run.record(stage.name, status="running", cache_key=key)

    entry = None if stage.name in run.refresh else _verified_entry(entry_dir)
    if entry is not None:
        status = "cached"
    else:
        entry = _compute(stage, run, entry_dir)
        status = "completed"

    outputs = {}
    for dataset, info in entry["outputs"].items():
        outputs[dataset] = dict(info, path=_place(stage, run, entry_dir, info))
        run.datasets[dataset] = outputs[dataset]
    record = {
        "status": status,
        "cache_key": key,
        "outputs": outputs,
        "metrics": entry.get("metrics", {}),
        "gates": entry.get("gates", {}),
        "seconds": round(time.perf_counter() - started, 3),
    }
    run.record(stage.name, **record)
    return {"stage": stage.name, **record}


def _compute(stage: Stage, run: Run, entry_dir: Path) -> dict[str, Any]:
    _injected_fault(stage.name, "fail")
    inputs = {d: run.frame(d) for d in stage.inputs}
    params = {p: run.params.get(p) for p in stage.params}
    result = stage.transform(*inputs.values(), **params)

    if stage.figures:
        files = {f"plots/{stem}.png": _png_bytes(fig) for stem, fig in sorted(result.items())}
        produced: dict[str, pd.DataFrame] = {}
        metrics = stage.metrics({**inputs}, params) if stage.metrics else {}
    else:
        frames = result if isinstance(result, tuple) else (result,)
        produced = dict(zip(stage.outputs, frames, strict=True))
        metrics = stage.metrics({**inputs, **produced}, params) if stage.metrics else {}
        files = {f"{d}.parquet": storage.parquet_bytes(df) for d, df in produced.items()}

    # Facts of this stage (e.g. the customer count) are visible to its own gates.
    run.record(stage.name, metrics=metrics)
    gate_summaries = {}
    for dataset, df in produced.items():
        outcome = _gate(stage, run, dataset, df, files[f"{dataset}.parquet"])
        if outcome is not None:
            gate_summaries[dataset] = outcome.summary
            files[f"validation/{dataset}.json"] = outcome.report_bytes()

    outputs = {}
    for relname, data in files.items():
        sha = storage.sha256_bytes(data)
        storage.write_bytes_atomic(entry_dir / relname, data)
        _injected_fault(stage.name, "hang")
        name = relname.removesuffix(".parquet")
        frame = produced.get(name)
        outputs[name if frame is not None else relname] = {
            "file": relname,
            "sha256": sha,
            "rows": None if frame is None else len(frame),
            "columns": None if frame is None else [str(c) for c in frame.columns],
        }
        if frame is not None:
            run.frames[sha] = frame
    entry = {"stage": stage.name, "outputs": outputs, "metrics": metrics, "gates": gate_summaries}
    # The entry file is written last: its presence is what marks the outputs complete.
    storage.write_json(entry_dir / ENTRY, entry)
    return entry


def _gate(stage: Stage, run: Run, dataset: str, df: pd.DataFrame, data: bytes):
    """Validate one output; on a critical failure keep it for inspection, never as complete."""
    if run.validate is None:
        return None
    outcome = run.validate(dataset, df, data, run.facts)
    if outcome is None or outcome.message is None:
        return outcome
    where = run.run_dir if run.run_dir is not None else run.cache_dir / "failed" / run.manifest["run_id"]
    report_path = where / "validation" / f"{dataset}.json"
    storage.write_bytes_atomic(report_path, outcome.report_bytes())
    storage.write_bytes_atomic(where / "failed" / f"{dataset}.parquet", data)
    message = (
        f"Stage {stage.name} stopped on input {run.params.get('input_path')}: {outcome.message}. "
        f"Full report: {report_path}. The failing output is kept in {where / 'failed'} for inspection and "
        "was not marked complete; earlier runs are untouched."
    )
    run.record(stage.name, status="failed", gates={dataset: outcome.summary}, error=message)
    raise QualityError(stage.name, dataset, message, report_path)


class InjectedFault(RuntimeError):
    """Raised on purpose by the fault-injection switch, to exercise failure and resume."""


def _injected_fault(stage: str, kind: str) -> None:
    """SEGMENT_FAULT=<stage>:fail raises in that stage; <stage>:hang stops it half-written.

    Operators use it to rehearse a failed run's retry and resume; the tests use it too.
    """
    if os.environ.get(FAULT_SWITCH, "") != f"{stage}:{kind}":
        return
    if kind == "fail":
        raise InjectedFault(f"stage {stage} failed on purpose ({FAULT_SWITCH}={stage}:fail)")
    while True:  # until killed: the stage's first output file is written, the entry is not
        time.sleep(1)


def _verified_entry(entry_dir: Path) -> dict[str, Any] | None:
    """A cache entry whose files all exist and still hash to what was recorded, else None."""
    try:
        entry = storage.read_json(entry_dir / ENTRY)
        for info in entry["outputs"].values():
            if storage.sha256_file(entry_dir / info["file"]) != info["sha256"]:
                return None
        return entry
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _place(stage: Stage, run: Run, entry_dir: Path, info: dict[str, Any]) -> str:
    """Where the output is read from, relative to the artifacts folder; links it into the run folder.

    Shared datasets (the parsed input) stay in the cache; their quality reports are linked into
    the run folder once it exists (see `link_shared_reports`).
    """
    source = entry_dir / info["file"]
    if run.run_dir is None or (stage.shared and info["rows"] is not None):
        return source.relative_to(run.artifacts).as_posix()
    target = run.run_dir / info["file"]
    storage.link_or_copy(source, target)
    return target.relative_to(run.artifacts).as_posix()


def link_shared_reports(run: Run) -> None:
    """Give a newly opened run folder the reports of the stages that ran before it existed."""
    for record in run.manifest.get("stages", {}).values():
        for info in record.get("outputs", {}).values():
            if info["rows"] is None and not (run.run_dir / info["file"]).exists():
                source = run.artifacts / info["path"]
                storage.link_or_copy(source, run.run_dir / info["file"])
                info["path"] = (run.run_dir / info["file"]).relative_to(run.artifacts).as_posix()


def _png_bytes(figure) -> bytes:
    import io

    buffer = io.BytesIO()
    # No software/date metadata: identical figures give identical bytes.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
