"""The typed records of a run: dataset references, stage records, the manifest, the run context.

Everything here is small and serialisable. Prefect tasks pass `RunContext` and `StageResult`
between them (so the run graph shows the data flow and a stage can run in another process),
and `Manifest` is what `manifest.json` holds and what every command reads back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# "computed": outputs written, gates pending (a stage result between compute and publish, never
# in a saved manifest).
StageStatus = Literal["running", "computed", "completed", "cached", "failed", "skipped"]
RunStatus = Literal["running", "completed", "failed"]


class PartRef(BaseModel):
    """One Parquet file of a partitioned dataset."""

    model_config = ConfigDict(frozen=True)

    file: str            # its name inside the dataset's folder
    sha256: str
    rows: int


class DatasetRef(BaseModel):
    """A file a stage wrote: where it is (relative to the artifacts folder) and what it holds.

    Tables have rows and columns; figures and quality reports have neither. A partitioned table
    (the line-level datasets of the dask engine) is a folder of Parquet parts: `parts` lists them
    with their own hashes, and `sha256` is the hash of that list.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    file: str            # its name inside a stage's cache entry and the run folder
    path: str            # relative to the artifacts folder, POSIX separators
    sha256: str
    rows: int | None = None
    columns: list[str] | None = None
    parts: list[PartRef] | None = None

    @property
    def is_table(self) -> bool:
        return self.rows is not None

    @property
    def is_partitioned(self) -> bool:
        return self.parts is not None

    def resolve(self, artifacts: Path | str) -> Path:
        return Path(artifacts) / self.path


class StageRecord(BaseModel):
    """One stage of one run, as the manifest records it."""

    @model_validator(mode="before")
    @classmethod
    def _named_outputs(cls, data: Any) -> Any:
        """Manifests written before references carried their name keep it only as the key."""
        if isinstance(data, dict) and isinstance(data.get("outputs"), dict):
            data = dict(data, outputs={key: ({"name": key, **ref} if isinstance(ref, dict) and "name" not in ref else ref)
                                       for key, ref in data["outputs"].items()})
        return data

    status: StageStatus
    cache_key: str | None = None
    outputs: dict[str, DatasetRef] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    gates: dict[str, dict[str, Any]] = Field(default_factory=dict)
    seconds: float | None = None
    # Where the stage computed: "flow process", "worker process" or "dask worker <address>".
    computed_in: str | None = None
    error: str | None = None
    # Why a stage did not run on this input (status "skipped").
    reason: str | None = None

    def tables(self) -> dict[str, DatasetRef]:
        return {name: ref for name, ref in self.outputs.items() if ref.is_table}


class StageResult(BaseModel):
    """What a stage task returns: its record, and the facts later quality gates may refer to."""

    stage: str
    record: StageRecord
    # The metrics of this stage and of every stage upstream of it: with the run's parameters,
    # what later quality gates may refer to (e.g. the customer count, the chosen k).
    facts: dict[str, Any] = Field(default_factory=dict)
    # Between compute and publish: the cache entry to complete once the gates have passed.
    entry: dict[str, Any] | None = None

    def dataset(self, name: str) -> DatasetRef | None:
        return self.record.outputs.get(name)


class RunContext(BaseModel):
    """What every stage of a run needs to know besides its inputs; immutable and picklable."""

    model_config = ConfigDict(frozen=True)

    artifacts: str                  # absolute path of the artifacts folder
    run_id: str
    started_at: str
    params: dict[str, Any]          # input_path, input_sha256, as_of, cutoff, k, k_min, k_max, ...
    run_dir: str | None = None      # absolute; None until the as-of month is known (after ingest)
    refresh: frozenset[str] = frozenset()

    @property
    def artifacts_dir(self) -> Path:
        return Path(self.artifacts)

    @property
    def cache_dir(self) -> Path:
        return Path(self.artifacts) / "cache"

    @property
    def folder(self) -> Path | None:
        return Path(self.run_dir) if self.run_dir else None

    def facts(self) -> dict[str, Any]:
        return dict(self.params, run_date=self.started_at)


class InputInfo(BaseModel):
    """What a run read: a file or folder (path, sha256), or a database table or query (the URL
    without password, the query as sent, the rows read and the snapshot they were kept in)."""

    path: str
    sha256: str
    rows: int | None = None
    files: list[str] = Field(default_factory=list)
    query: str | None = None
    snapshot: str | None = None     # relative to the artifacts folder


class Manifest(BaseModel):
    """manifest.json: one run's parameters, input, environment and every stage's record."""

    model_config = ConfigDict(extra="allow")

    run_id: str
    flow_run_id: str | None = None
    status: RunStatus = "running"
    started_at: str
    finished_at: str | None = None
    seconds: float | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    as_of: str | None = None
    cutoff: str | None = None
    input: InputInfo
    environment: dict[str, Any] = Field(default_factory=dict)
    stages: dict[str, StageRecord] = Field(default_factory=dict)
    run_dir: str | None = None
    data_docs: str | None = None
    # The previous month's run whose segments this run's ids continue (None: a series' first month).
    previous: dict[str, Any] | None = None
    resumed: list[dict[str, Any]] = Field(default_factory=list)
    error: str | None = None
    # Exports of the customer table made by the run itself (--export-to): target, status, rows, error.
    exports: list[dict[str, Any]] = Field(default_factory=list)

    # --- the facts commands ask for, in one place ----------------------------------------------

    def metric(self, stage: str, name: str, default: Any = None) -> Any:
        record = self.stages.get(stage)
        return record.metrics.get(name, default) if record else default

    def fact(self, name: str, default: Any = None) -> Any:
        """A metric by name, whichever stage recorded it (metric names are unique across stages)."""
        for record in self.stages.values():
            if name in record.metrics:
                return record.metrics[name]
        return default

    def dataset(self, stage: str, name: str) -> DatasetRef | None:
        record = self.stages.get(stage)
        return record.outputs.get(name) if record else None

    @property
    def k(self) -> int | None:
        return self.fact("k")

    @property
    def window(self) -> int | None:
        return self.parameters.get("window")

    @property
    def silhouette(self) -> float | None:
        return self.fact("silhouette")

    @property
    def customers(self) -> int | None:
        return self.fact("customers")

    @property
    def rows_clean(self) -> int | None:
        return self.fact("rows_clean")

    @property
    def rows_dropped(self) -> dict[str, int]:
        return self.fact("rows_dropped", {}) or {}

    @property
    def last_flow_run_id(self) -> str | None:
        """The flow run that last worked on this run (a resume's, else the first)."""
        return (self.resumed[-1].get("flow_run_id") if self.resumed else None) or self.flow_run_id

    @property
    def folder(self) -> Path | None:
        return Path(self.run_dir) if self.run_dir else None

    def skipped(self) -> dict[str, str]:
        """The stages that did not run on this input, and why."""
        return {name: record.reason or "" for name, record in self.stages.items() if record.status == "skipped"}

    def notes(self) -> list[tuple[str, str]]:
        """(stage, sentence) for what a stage says about its own result: a model it could not fit on
        this data and why (its metrics' `note` or `*_note`), or a caveat (`*_warning`)."""
        return [(name, value) for name, record in self.stages.items() for key, value in (record.metrics or {}).items()
                if (key == "note" or key.endswith(("_note", "_warning"))) and isinstance(value, str) and value]

    def gates(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(stage, dataset, gate summary) for every quality gate of the run, in stage order."""
        return [(stage, dataset, gate) for stage, record in self.stages.items()
                for dataset, gate in record.gates.items() if gate]

    def warnings(self) -> list[str]:
        return [f"{dataset}: {w}" for _, dataset, gate in self.gates() for w in gate.get("warnings", [])]

    def dataset_path(self, name: str, artifacts: Path) -> Path | None:
        for record in self.stages.values():
            if name in record.outputs:
                return record.outputs[name].resolve(artifacts)
        return None

    def summary(self) -> dict[str, Any]:
        """The one JSON line `segment run --json` prints."""
        return {
            "run_id": self.run_id,
            "run_dir": self.run_dir,
            "as_of": self.as_of,
            "window": self.window,
            "status": self.status,
            "k": self.k,
            "silhouette": self.silhouette,
            "customers": self.customers,
            "rows_clean": self.rows_clean,
            "input_sha256": self.input.sha256,
            "previous_run_id": (self.previous or {}).get("run_id"),
            "segment_sizes": self.fact("segment_sizes"),
            "movers": self.fact("movers"),
            "flow_run_id": self.last_flow_run_id,
        }

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
