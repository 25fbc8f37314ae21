"""Run folders and their manifests: artifacts/<as-of YYYY-MM>/<run_id>/ and the month's `latest`.

A run folder is created once the as-of month is known (after ingest), filled stage by stage and
never touched by another run. `latest` moves only when a run completes. The `RunLedger` keeps a
run's manifest: the flow hands it each stage's result as it comes, and it rewrites
manifest.json atomically every time.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from customer_segments.tasks import storage
from customer_segments.tasks.errors import DiskFullError, ParameterError, PipelineError, disk_full
from customer_segments.tasks.ingest import input_files
from customer_segments.tasks.manifest import InputInfo, Manifest, RunContext, StageRecord, StageResult
from customer_segments.tasks.quality import gate
from customer_segments.tasks.runner import QualityError, link_into_run

MANIFEST = "manifest.json"
LATEST = "latest"
PACKAGES = ("customer-segments", "prefect", "great-expectations", "pandas", "pyarrow", "numpy",
            "scikit-learn", "matplotlib", "kneed", "python-calamine")
# Parameters a run is defined by (besides its input); resume restores them from the manifest.
RUN_PARAMETERS = ("as_of", "window", "k", "k_min", "k_max", "encoding", "date_format", "engine", "methods", "horizon",
                  "basket_min_support", "basket_min_baskets", "basket_min_lift", "basket_max_len",
                  "chaid_target", "chaid_max_depth", "chaid_min_parent", "chaid_min_child")
# What makes two months' runs one series: their segment ids are matched only within it.
SERIES_PARAMETERS = ("window", "k", "k_min", "k_max")


def input_fingerprint(path: Path) -> InputInfo:
    """sha256 of the input: of the file, or of a folder's (name, sha256) list."""
    files = input_files(path)
    if path.is_dir():
        lines = "".join(f"{f.name}\t{storage.sha256_file(f)}\n" for f in files)
        sha = storage.sha256_bytes(lines.encode())
    else:
        sha = storage.sha256_file(path)
    return InputInfo(path=str(path), sha256=sha, files=[f.name for f in files])


def parse_month(value: str | None, option: str = "--as-of"):
    import pandas as pd

    if value in (None, ""):
        return None
    try:
        return pd.Period(str(value)[:7], freq="M")
    except (ValueError, TypeError):
        raise ParameterError("ingest", f"{option} must be a month as YYYY-MM, got {value!r}") from None


def month_range(start: str, end: str) -> list[str]:
    """The months from start to end inclusive, as YYYY-MM."""
    import pandas as pd

    first, last = parse_month(start, "--from"), parse_month(end, "--to")
    if first is None or last is None or last < first:
        raise ParameterError("backfill", f"--from ({start}) and --to ({end}) must be months with --from <= --to")
    return [str(p) for p in pd.period_range(first, last, freq="M")]


def new_run_id(flow_run_id: str | None, now: datetime | None = None) -> str:
    """Sorts by time: UTC timestamp, then the short Prefect flow-run id."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    suffix = (flow_run_id or os.urandom(4).hex()).replace("-", "")[:8]
    return f"{stamp}-{suffix}"


class RunLedger:
    """The manifest of one run, kept by the flow and written after every change."""

    def __init__(self, manifest: Manifest, artifacts: Path):
        self.manifest = manifest
        self.artifacts = artifacts

    @property
    def folder(self) -> Path | None:
        return self.manifest.folder

    def save(self, stage: str = "manifest") -> None:
        if self.folder is None:
            return
        try:
            storage.write_json(self.folder / MANIFEST, self.manifest.to_json())
        except OSError as exc:
            raise disk_full(exc, stage, self.folder, self.manifest.run_id) from None

    def started(self, stage: str) -> None:
        previous = self.manifest.stages.get(stage)
        self.manifest.stages[stage] = StageRecord(status="running", metrics=previous.metrics if previous else {})
        self.save(stage)

    def finished(self, result: StageResult) -> None:
        self.manifest.stages[result.stage] = result.record
        self.save(result.stage)

    def failed(self, stage: str, exc: BaseException) -> None:
        """Record the stage that raised.

        A verdict on the data (a quality gate, an unreadable input, a bad parameter) marks the
        stage failed. Anything else (a crash, a kill, a full disk) leaves it "running", never
        marked complete, with the error beside it; a resume starts again from it.
        """
        current = self.manifest.stages.get(stage) or StageRecord(status="running")
        if isinstance(exc, QualityError) and exc.record is not None:
            record = exc.record
        elif isinstance(exc, PipelineError) and not isinstance(exc, DiskFullError):
            record = StageRecord(status="failed", metrics=current.metrics, error=str(exc))
        else:
            record = current.model_copy(update={"error": str(exc)})
        self.manifest.stages[stage] = record
        self.save(stage)

    def opened(self, context: RunContext) -> None:
        """The run folder exists: record the month, and link in reports made before it."""
        m = self.manifest
        m.as_of, m.cutoff, m.run_dir = context.params["as_of"], context.params["cutoff"], context.run_dir
        m.parameters["as_of"] = m.as_of
        ingest = m.stages.get("ingest")
        if ingest is not None:
            m.input.rows = ingest.metrics.get("rows_raw")
            ingest.outputs = {name: (ref if ref.is_table else link_into_run(ref, context))
                              for name, ref in ingest.outputs.items()}
        self.save()

    def previous(self, result: StageResult) -> None:
        """Record which earlier run this run's segment ids were matched against (None: first month)."""
        facts = result.record.metrics
        self.manifest.previous = {k: facts.get(f"previous_{k}") for k in ("run_id", "as_of", "run_dir")} \
            if facts.get("previous_run_id") else None
        self.save()

    def finish(self, status: str, error: str | None = None) -> Manifest:
        """Close the run: Data Docs of its quality reports, final manifest, and `latest` on success.

        On a failed run every step is best effort: the disk may be full, and the error that
        ended the run is what the user needs to see.
        """
        m = self.manifest
        try:
            if self.folder is not None:
                docs = gate.build_docs(self.folder / "validation", self.artifacts / "cache")
                m.data_docs = None if docs is None else docs.relative_to(self.folder).as_posix()
        except OSError as exc:
            if status == "completed":
                raise disk_full(exc, "data docs", self.folder / "validation", m.run_id) from None
        except Exception:
            if status == "completed":
                raise
        m.status = status
        now = datetime.now(UTC)
        m.finished_at = now.isoformat(timespec="seconds")
        m.seconds = round((now - datetime.fromisoformat(m.started_at)).total_seconds(), 1)
        if error:
            m.error = error
        try:
            self.save()
        except DiskFullError:
            if status == "completed":
                raise
            # The run already failed; manifest.json keeps its last state ("running"), which a
            # resume completes once space is freed.
        if status == "completed" and self.folder is not None:
            point_latest(self.folder)
        return m


def start(artifacts: Path, params: dict[str, Any], *, flow_run_id: str | None,
          refresh: frozenset[str] = frozenset(), input_sha256: str | None = None) -> tuple[RunContext, RunLedger]:
    """A new run. It has no folder yet: ingest comes first, and the folder needs the as-of month.

    `input_sha256` is the input's hash when the caller has just computed it (a backfill hashes
    the input once for all its months).
    """
    path = Path(params["input_path"])
    info = (input_fingerprint(path) if input_sha256 is None else
            InputInfo(path=str(path), sha256=input_sha256, files=[f.name for f in input_files(path)]))
    params = dict(params, input_sha256=info.sha256, **reference_tables())
    manifest = Manifest(
        run_id=new_run_id(flow_run_id),
        flow_run_id=flow_run_id,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        parameters={k: params.get(k) for k in RUN_PARAMETERS},
        input=info,
        environment=environment(),
    )
    context = RunContext(artifacts=str(artifacts.resolve()), run_id=manifest.run_id,
                         started_at=manifest.started_at, params=params, refresh=refresh)
    return context, RunLedger(manifest, artifacts)


def reopen(run_dir: Path, *, flow_run_id: str | None,
           refresh: frozenset[str] = frozenset()) -> tuple[RunContext, RunLedger]:
    """Continue a run in its own folder (resume, or Prefect's retry of the same flow run).

    Stages whose cached outputs are intact are reused, so only the failed stage and those after
    it are computed. The input must be unchanged, or the folder would mix two inputs.
    """
    manifest = Manifest.model_validate(storage.read_json(run_dir / MANIFEST))
    recorded = manifest.input
    current = input_fingerprint(Path(recorded.path))
    if current.sha256 != recorded.sha256:
        raise ParameterError(
            "resume",
            f"the input {recorded.path} changed since run {manifest.run_id} started "
            f"(sha256 {recorded.sha256[:12]} then, {current.sha256[:12]} now); start a new run instead",
        )
    params = dict(manifest.parameters, input_path=recorded.path, input_sha256=recorded.sha256,
                  cutoff=manifest.cutoff, **reference_tables())
    manifest.status, manifest.finished_at, manifest.error = "running", None, None
    manifest.resumed.append({"flow_run_id": flow_run_id, "at": datetime.now(UTC).isoformat(timespec="seconds")})
    artifacts = run_dir.parent.parent
    context = RunContext(artifacts=str(artifacts.resolve()), run_id=manifest.run_id, started_at=manifest.started_at,
                         params=params, run_dir=str(run_dir.resolve()), refresh=refresh)
    manifest.run_dir = context.run_dir
    ledger = RunLedger(manifest, artifacts)
    ledger.save()
    return context, ledger


def reference_tables() -> dict[str, Any]:
    """The editable reference tables (data/reference) as run parameters.

    As parameters they enter the cache keys of the stages that use them: editing the list of
    service codes recomputes the best sellers, and nothing else.
    """
    from customer_segments.tasks.products import load_service_codes
    from customer_segments.tasks.rfm import load_rfm_segments

    return {"service_codes": load_service_codes().to_dict(orient="records"),
            "rfm_segments": load_rfm_segments().to_dict(orient="records")}


def open_folder(context: RunContext, newest_invoice: str | None) -> RunContext:
    """Fix the as-of month and cutoff (from the newest invoice when not given); create the folder."""
    if context.run_dir is not None:  # a resumed run has its folder and month already
        return context
    requested = parse_month(context.params.get("as_of"))
    if requested is None:
        if newest_invoice is None:
            raise ParameterError("ingest", "the input has no invoice dates, so no as-of month can be derived")
        import pandas as pd

        requested = pd.Timestamp(newest_invoice).to_period("M")
    as_of = str(requested)
    run_dir = context.artifacts_dir / as_of / context.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    params = dict(context.params, as_of=as_of, cutoff=requested.start_time.isoformat())
    return context.model_copy(update={"params": params, "run_dir": str(run_dir)})


def previous_run(artifacts: Path, as_of: str, params: dict[str, Any]) -> Manifest | None:
    """The previous month's latest successful run of the same series, in the same artifacts folder.

    Same series: the same window and k range (and --k). Only runs that recorded segment ids (made
    since ids exist) qualify. Latest: the one that finished last.
    """
    import pandas as pd

    month = str(pd.Period(as_of, freq="M") - 1)
    candidates = [m for m in manifests(artifacts / month)
                  if m.status == "completed" and m.as_of == month and same_series(m.parameters, params)
                  and {"cluster_labels", "segment_lineage"} <= set(m.stages.get("cluster", StageRecord(status="running")).outputs)]
    return max(candidates, key=lambda m: (m.finished_at or "", m.run_id)) if candidates else None


def reusable_run(artifacts: Path, as_of: str, params: dict[str, Any], input_sha256: str) -> Manifest | None:
    """A completed run of this month that a backfill can keep instead of running the month again.

    It must have read the same input with the same parameters and code, and continued the
    segment ids of the run that is now the previous month's latest of the series: if an earlier
    month was rerun since, its ids may differ, and the month is run again to follow them.
    """
    previous = previous_run(artifacts, as_of, params)
    want_previous = previous.run_id if previous is not None else None
    code = code_fingerprint()
    for m in reversed(manifests(artifacts / as_of)):
        if (m.status == "completed" and m.input.sha256 == input_sha256 and same_series(m.parameters, params)
                and all(m.parameters.get(p) == params.get(p) for p in ("encoding", "date_format", "methods", "horizon"))
                and (m.previous or {}).get("run_id") == want_previous and m.environment.get("code") == code):
            return m
    return None


def same_series(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(p) == b.get(p) for p in SERIES_PARAMETERS)


def find_flow_run(artifacts: Path, flow_run_id: str | None) -> Path | None:
    """The folder an earlier attempt of this same Prefect flow run created, if any (a retry)."""
    if not flow_run_id:
        return None
    short = flow_run_id.replace("-", "")[:8]
    for path in sorted(artifacts.glob(f"*/*-{short}/{MANIFEST}")):
        try:
            if storage.read_json(path).get("flow_run_id") == flow_run_id:
                return path.parent
        except (OSError, ValueError):
            continue
    return None


def point_latest(run_dir: Path) -> None:
    """Atomically repoint <month>/latest at this run (a relative symlink, replaced by rename)."""
    link = run_dir.parent / LATEST
    tmp = run_dir.parent / f".{LATEST}.{os.getpid()}.{time.monotonic_ns()}"
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, link)


def find_run(artifacts: Path, run_id: str) -> Path:
    matches = [p.parent for p in artifacts.glob(f"*/{run_id}/{MANIFEST}")]
    if not matches:
        raise ParameterError("resume", f"no run {run_id!r} under {artifacts}")
    return matches[0]


def manifests(folder: Path) -> list[Manifest]:
    """Every run's manifest under an artifacts folder (or one month's folder of it), oldest first."""
    found = []
    pattern = f"*/{MANIFEST}" if _is_month(folder.name) else f"*/*/{MANIFEST}"
    for path in sorted(folder.glob(pattern)):
        if path.parent.name == LATEST or path.parent.is_symlink():
            continue
        try:
            manifest = Manifest.model_validate(storage.read_json(path))
        except (OSError, ValueError):
            continue
        manifest.run_dir = str(path.parent)
        found.append(manifest)
    return sorted(found, key=lambda m: m.run_id)


def _is_month(name: str) -> bool:
    return len(name) == 7 and name[4] == "-" and name.replace("-", "").isdigit()


def environment() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "packages": versions, "git_commit": _git_commit(),
            "code": code_fingerprint()}


def code_fingerprint() -> str:
    """One hash of every stage's code version: equal only when every stage's would be too."""
    import hashlib

    from customer_segments.tasks.stages import STAGES

    return hashlib.sha256(" ".join(f"{s.name}={s.code_version}" for s in STAGES).encode()).hexdigest()[:16]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
