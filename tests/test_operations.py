"""Operations against a real Prefect server: failure and resume, SIGKILL and resume, audit trail."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from uuid import UUID

import pytest

from support import BIN, REPO, assert_identical_outputs, last_json, run_cli, run_flow

from customer_segments.tasks.runtime.storage import sha256_file


def task_states(flow_run_id: str) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))
    return {tr.name.rsplit("-", 1)[0]: tr.state_name for tr in task_runs}


def flow_logs(flow_run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(flow_run_id)])))
    return [log.message for log in logs]


def flow_run(flow_run_id: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(flow_run_id))


@pytest.fixture(scope="module")
def reference(prefect_server, sample, tmp_path_factory):
    """An uninterrupted run to compare resumed runs with, byte for byte."""
    return Path(run_flow(sample, tmp_path_factory.mktemp("reference")).run_dir)


def test_failed_stage_then_resume_recomputes_only_from_the_failure(prefect_server, sample, reference, tmp_path):
    failed = run_cli("run", "--input", str(sample), "--artifacts", str(tmp_path), "--json",
                     env={"SEGMENT_FAULT": "cluster:fail"})
    assert failed.returncode == 1, failed.stderr
    assert "cluster failed on purpose" in failed.stderr and "segment resume" in failed.stderr
    summary = last_json(failed.stdout)
    assert summary["status"] == "failed"
    run_dir = Path(summary["run_dir"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["cluster"]["status"] == "running"  # never marked complete
    assert not (run_dir / "cluster_labels.parquet").exists()
    assert not (run_dir.parent / "latest").exists()
    assert flow_run(summary["flow_run_id"]).state_name == "Failed"

    resumed = run_cli("resume", summary["run_id"], "--artifacts", str(tmp_path), "--json")
    assert resumed.returncode == 0, resumed.stderr
    done = last_json(resumed.stdout)
    assert done["status"] == "completed" and done["run_id"] == summary["run_id"]
    assert done["run_dir"] == summary["run_dir"]
    states = task_states(done["flow_run_id"])
    assert {s: states[s] for s in ("ingest", "clean", "features", "normalize", "select_k")} == dict.fromkeys(
        ("ingest", "clean", "features", "normalize", "select_k"), "Cached")
    assert {s: states[s] for s in ("cluster", "profile", "plots")} == dict.fromkeys(("cluster", "profile", "plots"), "Completed")
    assert flow_run(done["flow_run_id"]).state_name == "Completed"
    # The command ends without tearing its interpreter down, but only once its logs are on the
    # server: the flow's last line is there as soon as the command has exited, without waiting.
    assert any(line.startswith(f"Run {summary['run_id']} completed") for line in flow_logs(done["flow_run_id"]))
    assert any("cluster failed on purpose" in line for line in flow_logs(summary["flow_run_id"]))
    assert_identical_outputs(run_dir, reference)
    assert (run_dir.parent / "latest").resolve() == run_dir.resolve()


def test_sigkill_mid_stage_then_resume_is_byte_identical(prefect_server, sample, reference, tmp_path):
    env = {**os.environ, "SEGMENT_FAULT": "profile:hang"}
    process = subprocess.Popen(
        [str(BIN / "segment"), "run", "--input", str(sample), "--artifacts", str(tmp_path)],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 300
    half_written = []
    published = []
    # profile hangs once its output is written; cluster, which it reads, is published as soon as
    # its gate has passed (profile may compute before that).
    while time.monotonic() < deadline and not (half_written and published):
        half_written = list((tmp_path / "cache" / "profile").glob("*/segment_profiles.parquet"))
        published = list((tmp_path / "cache" / "cluster").glob("*/entry.json"))
        time.sleep(0.2)
    assert half_written, "the profile stage never started"
    assert published, "the cluster stage was never published"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)
    run_dir = next(tmp_path.glob("*/*/manifest.json")).parent
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["stages"]["profile"]["status"] == "running"
    assert not (half_written[0].parent / "entry.json").exists()
    # The manifest still says running, but nobody holds the run: history, report and resume say so.
    listed = run_cli("history", "--artifacts", str(tmp_path))
    assert listed.returncode == 0 and "interrupted" in listed.stdout and "running" not in listed.stdout
    assert f"`segment resume {run_dir.name}` completes it" in listed.stdout
    rows = [json.loads(line) for line in run_cli("history", "--artifacts", str(tmp_path), "--json").stdout.splitlines()]
    assert [r["status"] for r in rows] == ["interrupted"]
    shown = run_cli("report", run_dir.name, "--artifacts", str(tmp_path))
    assert shown.returncode == 0 and "was interrupted" in shown.stderr
    assert "interrupted" in (run_dir / "report.html").read_text(encoding="utf-8")

    resumed = run_cli("resume", run_dir.name, "--artifacts", str(tmp_path), "--json")
    assert resumed.returncode == 0, resumed.stderr
    done = last_json(resumed.stdout)
    states = task_states(done["flow_run_id"])
    assert states["cluster"] == "Cached" and states["profile"] == "Completed"
    assert_identical_outputs(run_dir, reference)


def test_corrupt_cached_output_is_recomputed_not_trusted(prefect_server, sample, tmp_path):
    first = run_flow(sample, tmp_path)
    cached = tmp_path / first.stages["features"].outputs["customer_features"].path
    entry = next((tmp_path / "cache" / "features").glob("*/customer_features.parquet"))
    good = entry.read_bytes()
    entry.write_bytes(good[: len(good) // 2])  # a torn write behind the pipeline's back
    second = run_flow(sample, tmp_path)
    assert second.stages["features"].status == "completed"
    assert second.stages["normalize"].status == "cached"  # same bytes again, so later stages reuse
    assert sha256_file(Path(second.run_dir) / "customer_features.parquet") == first.stages["features"].outputs["customer_features"].sha256
    assert cached.exists()


def test_refresh_and_from_stage_force_recomputation(prefect_server, sample, tmp_path):
    run_flow(sample, tmp_path)
    partial = run_flow(sample, tmp_path, from_stage="cluster")
    statuses = {name: s.status for name, s in partial.stages.items()}
    assert statuses["select_k"] == "cached" and statuses["cluster"] == "completed" and statuses["plots"] == "completed"
    everything = run_flow(sample, tmp_path, refresh=True)
    assert {s.status for s in everything.stages.values()} == {"completed"}


def test_audit_trail_name_tags_artifacts_and_history(prefect_server, sample, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    manifest = run_flow(sample, tmp_path)
    fr = flow_run(manifest.flow_run_id)
    assert fr.name == f"segmentation-{manifest.as_of}"
    assert {f"as-of:{manifest.as_of}", f"input:{manifest.input.sha256[:12]}"} <= set(fr.tags)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[fr.id])))
    by_key = {a.key: a for a in artifacts}
    assert {"segmentation-summary", "segment-profiles", "data-quality", "run-folder"} <= by_key.keys()
    summary = by_key["segmentation-summary"].data
    assert "## Segments" in summary and "High value" in summary and manifest.run_id in summary
    assert "missing customer" in summary and Path(manifest.run_dir).resolve().as_uri() in summary
    profiles = json.loads(by_key["segment-profiles"].data) if isinstance(by_key["segment-profiles"].data, str) else by_key["segment-profiles"].data
    assert sum(row["size"] for row in profiles) == manifest.customers

    listed = run_cli("history", "--artifacts", str(tmp_path), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["run_id"], r["status"], r["k"], r["customers"]) for r in rows] == [
        (manifest.run_id, "completed", manifest.k, manifest.customers)]
    remote = run_cli("history", "--prefect", "--json")
    assert remote.returncode == 0, remote.stderr
    flow_runs = {r["flow_run_id"]: r for r in map(json.loads, remote.stdout.splitlines())}
    assert flow_runs[manifest.flow_run_id]["state"] == "Completed"
    assert flow_runs[manifest.flow_run_id]["month"] == manifest.as_of


def test_full_disk_names_stage_and_folder_marks_the_run_failed_and_resume_completes(prefect_server, sample,
                                                                                   reference, tmp_path):
    """A stand-in for a full disk: the features stage's writes fail with ENOSPC."""
    failed = run_cli("run", "--input", str(sample), "--artifacts", str(tmp_path), "--json",
                     env={"SEGMENT_FAULT": "features:disk-full"})
    assert failed.returncode == 2, failed.stderr
    message = failed.stderr.strip()
    summary = last_json(failed.stdout)
    assert len(message.splitlines()) == 1 and "Traceback" not in message and "Errno" not in message
    assert "Stage features could not write to" in message and str(tmp_path / "cache" / "features") in message
    assert "the disk is full" in message and f"segment resume {summary['run_id']}" in message
    run_dir = Path(summary["run_dir"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["stages"]["features"]["status"] == "running"
    assert not list((tmp_path / "cache" / "features").glob("*/entry.json"))

    resumed = run_cli("resume", summary["run_id"], "--artifacts", str(tmp_path), "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert last_json(resumed.stdout)["status"] == "completed"
    assert_identical_outputs(run_dir, reference)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real filesystem of 1.6 MB: the parsed sample fits, the cleaned lines do not."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the stand-in test above covers the same path")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk_then_space_freed_then_resume(prefect_server, sample, reference, small_tmpfs):
    failed = run_cli("run", "--input", str(sample), "--artifacts", str(small_tmpfs), "--json")
    assert failed.returncode == 2, failed.stderr
    assert "the disk is full" in failed.stderr and "Traceback" not in failed.stderr
    summary = last_json(failed.stdout)
    assert summary["status"] == "failed" and summary["run_dir"]
    assert not list(small_tmpfs.rglob("*.tmp"))  # nothing half-written is left behind

    listed = [json.loads(line) for line in
              run_cli("history", "--artifacts", str(small_tmpfs), "--json").stdout.splitlines()]
    assert [r["status"] for r in listed] in (["failed"], ["interrupted"])  # never "running" forever
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    resumed = run_cli("resume", summary["run_id"], "--artifacts", str(small_tmpfs), "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert_identical_outputs(Path(summary["run_dir"]), reference)


def test_a_run_in_progress_holds_its_folder_and_a_second_resume_is_refused(prefect_server, sample, tmp_path):
    """Liveness is derived from the folder's lock: held while the run's process works on it."""
    from customer_segments.tasks.runtime import run_folders

    env = {**os.environ, "SEGMENT_FAULT": "profile:hang"}
    process = subprocess.Popen([str(BIN / "segment"), "run", "--input", str(sample), "--artifacts", str(tmp_path)],
                               env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list((tmp_path / "cache" / "profile").glob("*/*.parquet")):
            time.sleep(0.2)
        run_dir = next(tmp_path.glob("*/*/manifest.json")).parent
        assert run_folders.is_alive(run_dir)
        rows = [json.loads(line) for line in run_cli("history", "--artifacts", str(tmp_path), "--json").stdout.splitlines()]
        assert [r["status"] for r in rows] == ["running"]
        refused = run_cli("resume", run_dir.name, "--artifacts", str(tmp_path))
        assert refused.returncode == 2 and f"run {run_dir.name} is still running" in refused.stderr
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
    # A run handed to the local server's warm starter runs in a process of the starter's, which
    # kills it as soon as it sees the command gone: the folder is released a moment later.
    deadline = time.monotonic() + 10
    while run_folders.is_alive(run_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not run_folders.is_alive(run_dir)


@pytest.mark.parametrize("command", [("report", "*"), ("resume", "../2011-12"), ("compare", "x", "y"),
                                     ("report", "20991231T000000Z-00000000")])
def test_run_ids_are_checked_and_errors_name_the_command(command, tmp_path):
    done = run_cli(*command, "--artifacts", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"Error: segment {command[0]}: ")
    if command[1] == "20991231T000000Z-00000000":
        assert "no run 20991231T000000Z-00000000 under" in done.stderr
    else:
        assert "is not a run id" in done.stderr and "segment history" in done.stderr


def test_prefect_and_gx_telemetry_are_off_unless_the_user_turns_them_on():
    """The command and the flow module turn off Prefect's server analytics, its client-side
    telemetry (DO_NOT_TRACK) and GX's usage statistics before either library loads."""
    import sys

    check = ("import os, customer_segments.flows.cli, customer_segments.flows.pipeline; "
             "from prefect._internal.analytics.enabled import is_telemetry_enabled; "
             "print(is_telemetry_enabled(), os.environ['DO_NOT_TRACK'], "
             "os.environ['PREFECT_SERVER_ANALYTICS_ENABLED'], os.environ['GX_ANALYTICS_ENABLED'])")
    env = {k: v for k, v in os.environ.items()
           if k not in ("DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED", "GX_ANALYTICS_ENABLED", "CI")}
    out = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "1", "false", "false"]
    out = subprocess.run([sys.executable, "-c", check], env={**env, "DO_NOT_TRACK": "0"}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split()[1] == "0"  # the user's own setting is kept
