"""Run folders and their manifests: artifacts/<as-of YYYY-MM>/<run_id>/ and the month's `latest`.

A run folder is created once the as-of month is known (after ingest), filled stage by stage and
never touched by another run. `latest` moves only when a run completes.
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

import pandas as pd

from tasks import gates, storage
from tasks.errors import ParameterError
from tasks.ingest import input_files
from tasks.runner import Run, link_shared_reports

MANIFEST = "manifest.json"
LATEST = "latest"
PACKAGES = ("customer-segments", "prefect", "great-expectations", "pandas", "pyarrow", "numpy",
            "scikit-learn", "matplotlib", "kneed", "python-calamine")


def input_fingerprint(path: Path) -> dict[str, Any]:
    """sha256 of the input: of the file, or of a folder's (name, sha256) list."""
    files = input_files(path)
    if path.is_dir():
        lines = "".join(f"{f.name}\t{storage.sha256_file(f)}\n" for f in files)
        sha = storage.sha256_bytes(lines.encode())
    else:
        sha = storage.sha256_file(path)
    return {"path": str(path), "sha256": sha, "files": [f.name for f in files]}


def parse_month(value: str | None, option: str = "--as-of") -> pd.Period | None:
    if value in (None, ""):
        return None
    try:
        return pd.Period(str(value)[:7], freq="M")
    except (ValueError, TypeError):
        raise ParameterError("ingest", f"{option} must be a month as YYYY-MM, got {value!r}") from None


def new_run_id(flow_run_id: str | None, now: datetime | None = None) -> str:
    """Sorts by time: UTC timestamp, then the short Prefect flow-run id."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    suffix = (flow_run_id or os.urandom(4).hex()).replace("-", "")[:8]
    return f"{stamp}-{suffix}"


def start(artifacts: Path, params: dict[str, Any], *, run_id: str | None, flow_run_id: str | None,
          refresh: frozenset[str] = frozenset()) -> Run:
    """A run that has not yet a folder: ingest comes first, the folder needs the as-of month."""
    manifest = {
        "run_id": run_id or new_run_id(flow_run_id),
        "flow_run_id": flow_run_id,
        "status": "running",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "finished_at": None,
        "parameters": {k: params[k] for k in ("as_of", "k", "k_min", "k_max")},
        "input": {"path": params["input_path"], "sha256": params["input_sha256"]},
        "environment": environment(),
        "stages": {},
    }
    return Run(artifacts=artifacts, params=params, manifest=manifest, refresh=refresh)


def reopen(run_dir: Path, *, flow_run_id: str | None, refresh: frozenset[str] = frozenset()) -> Run:
    """Continue a run in its own folder (resume, or Prefect's retry of the same flow run).

    Stages whose cached outputs are intact are reused, so only the failed stage and those after
    it are computed. The input must be unchanged, or the folder would mix two inputs.
    """
    manifest = storage.read_json(run_dir / MANIFEST)
    recorded = manifest["input"]
    current = input_fingerprint(Path(recorded["path"]))
    if current["sha256"] != recorded["sha256"]:
        raise ParameterError(
            "resume",
            f"the input {recorded['path']} changed since run {manifest['run_id']} started "
            f"(sha256 {recorded['sha256'][:12]} then, {current['sha256'][:12]} now); start a new run instead",
        )
    params = dict(manifest["parameters"], input_path=recorded["path"], input_sha256=recorded["sha256"],
                  cutoff=manifest["cutoff"])
    manifest.update(status="running", finished_at=None)
    manifest.pop("error", None)
    manifest.setdefault("resumed", []).append(
        {"flow_run_id": flow_run_id, "at": datetime.now(UTC).isoformat(timespec="seconds")}
    )
    run = Run(artifacts=run_dir.parent.parent, params=params, manifest=manifest, run_dir=run_dir, refresh=refresh)
    run.save_manifest()
    return run


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


def open_folder(run: Run) -> Path:
    """Fix the as-of month and cutoff from the data when not given, and create the run folder."""
    if run.run_dir is not None:  # a resumed run has its folder and month already
        return run.run_dir
    requested = parse_month(run.params.get("as_of"))
    if requested is None:
        newest = run.frame("raw_invoices")["InvoiceDate"].max()
        if pd.isna(newest):
            raise ParameterError("ingest", "the input has no invoice dates, so no as-of month can be derived")
        requested = pd.Timestamp(newest).to_period("M")
    as_of = str(requested)
    cutoff = requested.start_time.isoformat()
    run.params.update(as_of=as_of, cutoff=cutoff)
    run.manifest["parameters"]["as_of"] = as_of
    run.manifest["as_of"] = as_of
    run.manifest["cutoff"] = cutoff
    run.manifest["input"]["rows"] = run.manifest["stages"]["ingest"]["outputs"]["raw_invoices"]["rows"]
    run.run_dir = run.artifacts / as_of / run.manifest["run_id"]
    run.run_dir.mkdir(parents=True, exist_ok=True)
    run.manifest["run_dir"] = str(run.run_dir)
    link_shared_reports(run)
    run.save_manifest()
    return run.run_dir


def finish(run: Run, status: str, error: str | None = None) -> dict[str, Any]:
    """Close the run: Data Docs of its quality reports, final manifest, and `latest` on success."""
    if run.run_dir is not None:
        try:
            docs = gates.build_docs(run.run_dir / "validation", run.cache_dir)
        except Exception:
            if status == "completed":
                raise
            docs = None  # the run already failed; its reports are still there as JSON
        run.manifest["data_docs"] = None if docs is None else docs.relative_to(run.run_dir).as_posix()
    run.manifest["status"] = status
    run.manifest["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    started = datetime.fromisoformat(run.manifest["started_at"])
    run.manifest["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    if error:
        run.manifest["error"] = error
    run.save_manifest()
    if status == "completed" and run.run_dir is not None:
        point_latest(run.run_dir)
    return run.manifest


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


def manifests(artifacts: Path) -> list[dict[str, Any]]:
    """Every run's manifest under the artifacts folder, oldest first."""
    found = []
    for path in sorted(artifacts.glob(f"*/*/{MANIFEST}")):
        if path.parent.name == LATEST or path.parent.is_symlink():
            continue
        try:
            found.append(storage.read_json(path) | {"run_dir": str(path.parent)})
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda m: m.get("run_id", ""))


def environment() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "packages": versions,
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
