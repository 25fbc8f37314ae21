"""Run folders and their manifests: artifacts/<as-of YYYY-MM>/<run_id>/ and the month's `latest`.

A run folder is created once the as-of month is known (after ingest), filled stage by stage and
never touched by another run. `latest` moves only when a run completes. The `RunLedger` keeps a
run's manifest: the flow hands it each stage's result as it comes, and it rewrites
manifest.json atomically every time.

Whether a run is still going is not stored but derived: the process working on a run holds an
exclusive lock on its folder's `.lock` file. A manifest that says "running" while nobody holds
the lock belongs to a run that was killed or stopped (SIGKILL, a full disk, a power cut):
`history`, `report` and `resume` show it as "interrupted".
"""

from __future__ import annotations

import fcntl
import os
import platform
import re
import subprocess
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from customer_segments.tasks.errors import DiskFullError, ParameterError, PipelineError, UsageError, disk_full
from customer_segments.tasks.inputs.readers import input_files
from customer_segments.tasks.runtime import parameters, storage
from customer_segments.tasks.runtime.manifest import InputInfo, Manifest, RunContext, StageRecord, StageResult
from customer_segments.tasks.runtime.quality import gate
from customer_segments.tasks.runtime.stage_runner import QualityError, link_into_run

MANIFEST = "manifest.json"
LATEST = "latest"
LOCK = ".lock"
PACKAGES = ("customer-segments", "prefect", "great-expectations", "pandas", "pyarrow", "numpy",
            "scikit-learn", "matplotlib", "kneed", "python-calamine")
# A run id: the UTC start time and 8 hex digits of the Prefect flow-run id (see new_run_id).
RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
INTERRUPTED = "interrupted"


def input_fingerprint(path: Path) -> InputInfo:
    """sha256 of the input: of the file, or of a folder's (name, sha256) list."""
    files = input_files(path)
    if path.is_dir():
        lines = "".join(f"{f.name}\t{storage.sha256_file(f)}\n" for f in files)
        sha = storage.sha256_bytes(lines.encode())
    else:
        sha = storage.sha256_file(path)
    return InputInfo(path=str(path), sha256=sha, files=[f.name for f in files])


def resolve_input(params: dict[str, Any], artifacts: Path, input_sha256: str | None = None
                  ) -> tuple[InputInfo, dict[str, Any]]:
    """What the run reads, fingerprinted, and the parameters its stages see.

    A file or folder is hashed (unless the caller just did: `input_sha256`). A PostgreSQL table
    or query is read into a snapshot in the input cache (or the cached snapshot of that sha256 is
    taken): the stages read the snapshot, the month comes from the table when not given, and
    the manifest records the URL without password and the query as sent.
    """
    from customer_segments.tasks.runtime import postgres

    source = params["input_path"]
    if not postgres.is_url(source):
        path = Path(source)
        info = (input_fingerprint(path) if input_sha256 is None else
                InputInfo(path=str(path), sha256=input_sha256, files=[f.name for f in input_files(path)]))
        return info, params
    from customer_segments.tasks.inputs import database

    cache = artifacts / "cache"
    snapshot = database.cached(cache, input_sha256) if input_sha256 else None
    if snapshot is None:
        taken = database.take(source, cache, as_of=params.get("as_of"), window=params.get("window"),
                              columns=params.get("columns"))
        snapshot, sha, rows, query, as_of = taken.path, taken.sha256, taken.rows, taken.query, taken.as_of
    else:
        import pyarrow.parquet as pq

        sha, rows, query, as_of = input_sha256, pq.ParquetFile(snapshot).metadata.num_rows, None, params.get("as_of")
    info = InputInfo(path=postgres.safe_url(source), sha256=sha, rows=rows, query=query,
                     snapshot=snapshot.resolve().relative_to(artifacts.resolve()).as_posix())
    return info, dict(params, input_path=str(snapshot), as_of=as_of)


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


# Callables told of every change a ledger records: (event, stage or None, manifest). A terminal's
# progress view (flows/progress.py) is one; they only read, and what they raise is ignored.
WATCHERS: list = []


class RunLedger:
    """The manifest of one run, kept by the flow and written after every change.

    While it keeps a run that has a folder, it holds the folder's lock: the run is alive.
    """

    def __init__(self, manifest: Manifest, artifacts: Path):
        self.manifest = manifest
        self.artifacts = artifacts
        self.lock: RunLock | None = None
        self._tell("begun")

    def _tell(self, event: str, stage: str | None = None) -> None:
        for watcher in list(WATCHERS):
            try:
                watcher(event, stage, self.manifest)
            except Exception:  # noqa: BLE001 - a display never stops a run
                pass

    @property
    def folder(self) -> Path | None:
        return self.manifest.folder

    def save(self, stage: str = "manifest") -> None:
        if self.folder is None:
            return
        from customer_segments.tasks.runtime.graph import pipeline

        # Stages in the order they can run, whatever order they finished in.
        position = {name: i for i, name in enumerate(pipeline().order())}
        self.manifest.stages = dict(sorted(self.manifest.stages.items(), key=lambda item: position.get(item[0], -1)))
        try:
            storage.write_json(self.folder / MANIFEST, self.manifest.to_json())
        except OSError as exc:
            raise disk_full(exc, stage, self.folder, self.manifest.run_id) from None

    def started(self, stage: str) -> None:
        previous = self.manifest.stages.get(stage)
        self.manifest.stages[stage] = StageRecord(status="running", metrics=previous.metrics if previous else {})
        self.save(stage)
        self._tell("started", stage)

    def skipped(self, stage: str, reason: str) -> None:
        """A stage that cannot run on this input (the export has no products), and why."""
        self.manifest.stages[stage] = StageRecord(status="skipped", reason=reason)
        self.save(stage)
        self._tell("skipped", stage)

    def finished(self, result: StageResult) -> None:
        self.manifest.stages[result.stage] = result.record
        self.save(result.stage)
        if self.folder is not None:  # its reports are final: their Data Docs pages can be rendered
            gate.docs_pages(self.folder / "validation", self.artifacts / "cache")
        self._tell("finished", result.stage)

    def computed(self, stage: str) -> None:
        """The stage's outputs are written; its gates are validating them."""
        self._tell("computed", stage)

    def discarded(self, stage: str) -> None:
        """The stage computed from data that then failed a gate: as if it had never started."""
        self.manifest.stages.pop(stage, None)
        self.save(stage)
        self._tell("discarded", stage)

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
        self._tell("failed", stage)

    def opened(self, context: RunContext) -> None:
        """The run folder exists: hold its lock, record the month, link in reports made before it."""
        m = self.manifest
        if self.lock is None:
            self.lock = RunLock.acquire(Path(context.run_dir), m.run_id)
        m.as_of, m.cutoff, m.run_dir = context.params["as_of"], context.params["cutoff"], context.run_dir
        m.parameters["as_of"] = m.as_of
        m.input.rows = m.fact("rows_raw")
        for record in m.stages.values():  # the stages that ran before the folder existed (ingest)
            record.outputs = {name: (ref if ref.is_table else link_into_run(ref, context))
                              for name, ref in record.outputs.items()}
        self.save()
        self._tell("opened")

    def previous(self, result: StageResult) -> None:
        """Record which earlier run this run's segment ids were matched against (None: first month)."""
        facts = result.record.metrics
        self.manifest.previous = {k: facts.get(f"previous_{k}") for k in ("run_id", "as_of", "run_dir")} \
            if facts.get("previous_run_id") else None
        self.save()

    def finish(self, status: str, error: str | None = None) -> Manifest:
        """Close the run: Data Docs of its quality reports, final manifest, and `latest` on success.

        On a failed run every step is best effort: the disk may be full, and the error that
        ended the run is what the user needs to see. The folder's lock is released last.
        """
        try:
            return self._finish(status, error)
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None
            self._tell("ended")

    def _finish(self, status: str, error: str | None) -> Manifest:
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
            # The run already failed; manifest.json keeps its last state ("running"), which shows
            # as interrupted once this process lets go of the lock, and a resume completes it.
        if status == "completed" and self.folder is not None:
            point_latest(self.folder)
        return m


class RunLock:
    """An exclusive lock on a run folder's `.lock`, held by the process working on the run.

    The operating system releases it when that process ends, however it ends: a run whose
    manifest says running but whose lock is free was interrupted.
    """

    def __init__(self, fd: int):
        self.fd = fd

    @classmethod
    def acquire(cls, run_dir: Path, run_id: str) -> RunLock:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = (run_dir / LOCK).read_text(encoding="utf-8").strip() or "another process"
            os.close(fd)
            raise UsageError("resume", f"run {run_id} is still running (process {holder}); wait for it to end, "
                                       "or stop that process first") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return cls(fd)

    def release(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)


def is_alive(run_dir: Path) -> bool:
    """Whether some process holds the run folder's lock (is working on the run) right now."""
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def status_of(manifest: Manifest) -> str:
    """completed, failed, running (and alive), or interrupted (running, but nobody holds the lock)."""
    if manifest.status == "running" and not (manifest.folder is not None and is_alive(manifest.folder)):
        return INTERRUPTED
    return manifest.status


def interrupted_note(manifest: Manifest) -> str:
    return (f"run {manifest.run_id} was interrupted (its process ended before the run did); "
            f"`segment resume {manifest.run_id}` completes it")


def start(artifacts: Path, params: dict[str, Any], *, flow_run_id: str | None,
          refresh: frozenset[str] = frozenset(), input_sha256: str | None = None) -> tuple[RunContext, RunLedger]:
    """A new run. It has no folder yet: ingest comes first, and the folder needs the as-of month.

    `params` are the run's validated parameters (RunParameters as a dict); `input_sha256` is the
    input's hash when the caller has just computed it (a backfill hashes the input once).
    """
    info, params = resolve_input(params, artifacts, input_sha256)
    recorded = dict(params, input_path=info.path)  # the URL without password, not the snapshot
    manifest = Manifest(
        run_id=new_run_id(flow_run_id),
        flow_run_id=flow_run_id,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        parameters=parameters.recorded(parameters.validate(recorded)),
        input=info,
        environment=environment(),
    )
    params = dict(params, input_sha256=info.sha256, **reference_tables())
    context = RunContext(artifacts=str(artifacts.resolve()), run_id=manifest.run_id,
                         started_at=manifest.started_at, params=params, refresh=refresh)
    return context, RunLedger(manifest, artifacts)


def reopen(run_dir: Path, *, flow_run_id: str | None,
           refresh: frozenset[str] = frozenset()) -> tuple[RunContext, RunLedger]:
    """Continue a run in its own folder (resume, or Prefect's retry of the same flow run).

    Stages whose cached outputs are intact are reused, so only the failed stage and those after
    it are computed. The input must be unchanged, or the folder would mix two inputs. A run
    another process is still working on is refused.
    """
    manifest = Manifest.model_validate(storage.read_json(run_dir / MANIFEST))
    lock = RunLock.acquire(run_dir, manifest.run_id)
    try:
        recorded = manifest.input
        artifacts = run_dir.parent.parent
        if recorded.snapshot is not None:  # a database input: the run goes on with what it read then
            from customer_segments.tasks.inputs import database

            reading = database.cached(artifacts / "cache", recorded.sha256)
            if reading is None:
                raise ParameterError("resume", f"the snapshot of {recorded.path} that run {manifest.run_id} read "
                                               f"({recorded.snapshot}) is no longer in the cache; start a new run")
        else:
            reading = Path(recorded.path)
            current = input_fingerprint(reading)
            if current.sha256 != recorded.sha256:
                raise ParameterError(
                    "resume",
                    f"the input {recorded.path} changed since run {manifest.run_id} started "
                    f"(sha256 {recorded.sha256[:12]} then, {current.sha256[:12]} now); start a new run instead",
                )
        # Parameters a run made before they existed had their defaults then.
        defaults = parameters.recorded(parameters.defaults())
        params = {**defaults, **manifest.parameters, "input_path": str(reading), "input_sha256": recorded.sha256,
                  "cutoff": manifest.cutoff, **reference_tables()}
        manifest.status, manifest.finished_at, manifest.error = "running", None, None
        manifest.resumed.append({"flow_run_id": flow_run_id, "at": datetime.now(UTC).isoformat(timespec="seconds")})
        context = RunContext(artifacts=str(artifacts.resolve()), run_id=manifest.run_id,
                             started_at=manifest.started_at, params=params, run_dir=str(run_dir.resolve()),
                             refresh=refresh)
        manifest.run_dir = context.run_dir
        ledger = RunLedger(manifest, artifacts)
        ledger.lock = lock
        ledger.save()
    except BaseException:
        lock.release()
        raise
    return context, ledger


def reference_tables() -> dict[str, Any]:
    """The catalogue's editable reference tables (data/reference) as run facts.

    As run facts they enter the cache keys of the stages that use them: editing the list of
    service codes recomputes the best sellers, and nothing else.
    """
    from customer_segments.tasks.catalogue import REFERENCE_TABLES

    return {name: load().to_dict(orient="records") for name, load in REFERENCE_TABLES.items()}


def decide_month(context: RunContext, newest_invoice: str | None) -> RunContext:
    """Fix the as-of month and cutoff (from the newest invoice when not given) and the run's folder."""
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
    params = dict(context.params, as_of=as_of, cutoff=requested.start_time.isoformat())
    return context.model_copy(update={"params": params, "run_dir": str(run_dir)})


def open_folder(context: RunContext) -> RunContext:
    """Create the run's folder (its month decided by `decide_month`)."""
    Path(context.run_dir).mkdir(parents=True, exist_ok=True)
    return context


def previous_run(artifacts: Path, as_of: str, params: dict[str, Any]) -> Manifest | None:
    """The previous month's latest successful run of the same series, in the same artifacts folder.

    Same series: the same window and k range (and --k). Only runs that recorded segment ids (made
    since ids exist) qualify. Latest: the one that finished last.
    """
    import pandas as pd

    from customer_segments.tasks.catalogue import PREVIOUS

    month = str(pd.Period(as_of, freq="M") - 1)
    candidates = [m for m in manifests(artifacts / month)
                  if m.status == "completed" and m.as_of == month and same_series(m.parameters, params)
                  and all(m.dataset(stage, dataset) is not None for stage, dataset in PREVIOUS.outputs.values())]
    return max(candidates, key=lambda m: (m.finished_at or "", m.run_id)) if candidates else None


def reusable_run(artifacts: Path, as_of: str, params: dict[str, Any], input_sha256: str) -> Manifest | None:
    """A completed run of this month that a backfill can keep instead of running the month again.

    It must have read the same input with the same parameters (all of them but those that
    provably do not change results: `parameters.compared_for_reuse`) and code, and continued
    the segment ids of the run that is now the previous month's latest of the series: if an
    earlier month was rerun since, its ids may differ, and the month is run again to follow them.
    """
    wanted = parameters.recorded(parameters.validate(params))
    previous = previous_run(artifacts, as_of, wanted)
    want_previous = previous.run_id if previous is not None else None
    code = code_fingerprint()
    compared = parameters.compared_for_reuse()
    for m in reversed(manifests(artifacts / as_of)):
        if (m.status == "completed" and m.input.sha256 == input_sha256
                and all(m.parameters.get(p) == wanted.get(p) for p in compared)
                and (m.previous or {}).get("run_id") == want_previous and m.environment.get("code") == code):
            return m
    return None


def same_series(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(p) == b.get(p) for p in parameters.series())


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


def check_run_id(run_id: str, command: str) -> str:
    """The run id as given, if it has a run id's form (e.g. 20261126T163649Z-f702004f)."""
    if not RUN_ID.match(str(run_id)):
        raise UsageError(command, f"{run_id!r} is not a run id; a run id looks like 20261126T163649Z-f702004f "
                                  "(`segment history` lists them)")
    return run_id


def find_run(artifacts: Path, run_id: str, command: str = "resume") -> Path:
    """The folder of a run, by its id; UsageError naming the command when there is none."""
    check_run_id(run_id, command)
    matches = [p.parent for p in artifacts.glob(f"*/{run_id}/{MANIFEST}")]
    if not matches:
        raise UsageError(command, f"no run {run_id} under {artifacts}")
    return matches[0]


def read_manifest(run_dir: Path) -> Manifest:
    manifest = Manifest.model_validate(storage.read_json(run_dir / MANIFEST))
    manifest.run_dir = str(run_dir)
    return manifest


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

    from customer_segments.tasks.catalogue import STAGES

    return hashlib.sha256(" ".join(f"{s.name}={s.code_version}" for s in STAGES).encode()).hexdigest()[:16]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
