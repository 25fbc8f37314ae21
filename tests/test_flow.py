"""The whole flow against a real Prefect server: layout, manifest, data flow, determinism, isolation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from uuid import UUID

import pandas as pd
import pytest
from support import OUTPUTS, PARQUETS, PLOTS, run_cli, run_flow, snapshot

from customer_segments.tasks import catalogue
from customer_segments.tasks.runtime.graph import pipeline
from customer_segments.tasks.runtime.manifest import Manifest
from customer_segments.tasks.runtime.storage import sha256_file

def expected_edges() -> dict[str, set[str]]:
    """Each task and the task runs whose outputs it reads, from the catalogue's dataset names.

    Every stage but the sources reads the opened run (open_run); open_run reads the sources, and
    the previous-month step reads the opened run. Each stage with tables has a gate task
    (`<stage>.gate`) reading what it computed.
    """
    graph = pipeline()
    sources = {s.name for s in catalogue.STAGES if not s.inputs}
    edges = {name: set(graph.upstream_stages(catalogue.BY_NAME[name])) | ({"open_run"} if name not in sources else set())
             for name in graph.order()}
    gates = {f"{name}.gate": {name} | ({"open_run"} if name not in sources else set())
             for name in graph.order() if catalogue.BY_NAME[name].outputs}
    return edges | gates | {"open_run": sources, catalogue.PREVIOUS.name: {"open_run"}}


@pytest.fixture(scope="module")
def sample_run(prefect_server, sample, tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("artifacts")
    return run_flow(sample, artifacts), artifacts


def task_runs(flow_run_id: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))


def test_run_folder_layout(sample_run):
    manifest, artifacts = sample_run
    run_dir = Path(manifest.run_dir)
    assert run_dir.parent.parent == artifacts
    assert run_dir.parent.name == manifest.as_of
    assert run_dir.name == manifest.run_id
    assert manifest.run_id.endswith(manifest.flow_run_id.replace("-", "")[:8])
    files = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert {*OUTPUTS, "manifest.json"} <= files
    assert not [f for f in files if f.endswith(".tmp")]
    assert (run_dir.parent / "latest").resolve() == run_dir.resolve()


def test_data_docs_pages_are_rendered_while_the_run_goes_on_and_none_is_left_behind(sample_run):
    """Each dataset's Data Docs page is rendered once its report is final, not all at the end: the
    raw lines' page is older than the report of the run's last stage. The site has one page per
    report and nothing of the pages' staging is left in the cache."""
    manifest, artifacts = sample_run
    validation = Path(manifest.run_dir) / "validation"
    reports = sorted(validation.glob("*.json"))
    pages = {p.parts[-4]: p for p in (validation / "docs" / "validations").rglob("*.html")}
    assert sorted(pages) == sorted(p.stem for p in reports)
    last = max(reports, key=lambda p: p.stat().st_mtime_ns)
    assert last.stem != "raw_invoices"
    assert pages["raw_invoices"].stat().st_mtime_ns < last.stat().st_mtime_ns
    assert (validation / "docs" / "index.html").stat().st_mtime_ns > last.stat().st_mtime_ns
    staging = [p.name for p in (artifacts / "cache" / "data_docs").iterdir() if p.name.startswith(".")]
    assert staging == []


def test_manifest_is_typed_and_its_hashes_match_the_files(sample_run):
    manifest, artifacts = sample_run
    on_disk = Manifest.model_validate_json((Path(manifest.run_dir) / "manifest.json").read_text())
    assert on_disk.status == "completed"
    assert on_disk.input.sha256 == sha256_file(Path(on_disk.input.path))
    assert on_disk.input.rows > 0
    assert on_disk.cutoff == pd.Period(on_disk.as_of).start_time.isoformat()
    assert on_disk.environment["packages"]["prefect"]
    checked = 0
    reports = set()
    for name, stage in on_disk.stages.items():
        assert stage.status in ("completed", "cached"), name
        assert stage.seconds >= 0
        for dataset, ref in stage.outputs.items():
            path = ref.resolve(artifacts)
            assert sha256_file(path) == ref.sha256, dataset
            if ref.is_table:
                frame = pd.read_parquet(path)
                assert len(frame) == ref.rows and list(frame.columns) == ref.columns
            if ref.file.startswith("validation/"):
                reports.add(dataset)
                assert path.parent == Path(manifest.run_dir) / "validation"
            checked += 1
    # Parquet datasets, plots, the parsed input in the cache and one quality report per table.
    assert checked == len(PARQUETS) + len(PLOTS) + 1 + len(reports)
    assert reports == {f"validation/{d}.json" for d in ("raw_invoices", *PARQUETS)}


def test_tasks_pass_dataset_references_and_the_api_shows_the_data_flow(sample_run):
    """Each stage's task run names, as its inputs, the task runs whose datasets it reads."""
    manifest, _ = sample_run
    runs = task_runs(manifest.flow_run_id)
    name_of = {tr.id: tr.name.rsplit("-", 1)[0] for tr in runs}
    inputs = {name_of[tr.id]: {name_of[i.id] for group in tr.task_inputs.values() for i in group
                               if getattr(i, "input_type", None) == "task_run"}
              for tr in runs}
    assert inputs == expected_edges()


def test_each_stage_logs_one_line_for_an_auditor(sample_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    manifest, _ = sample_run
    stages = tuple(catalogue.BY_NAME)
    deadline = time.monotonic() + 30  # logs reach the API in batches, a little after the run
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(manifest.flow_run_id)])))
        lines = [log.message for log in logs]
        if all(any(line.startswith(f"{s}: ") for line in lines) for s in stages) or time.monotonic() > deadline:
            break
        time.sleep(1)
    clean = next(line for line in lines if line.startswith("clean: "))
    ingest = next(line for line in lines if line.startswith("ingest: "))
    assert ingest.startswith(f"ingest: {manifest.input.rows:,} lines read from 1 file(s) -> raw_invoices")
    rows = manifest.stages["clean"]
    assert f"{manifest.input.rows:,} rows in" in clean
    assert f"clean_invoices {rows.outputs['clean_invoices'].rows:,} rows" in clean
    assert "computed in" in clean and "gate clean_invoices:" in clean and "critical failed" in clean
    for stage in stages:
        assert any(line.startswith(f"{stage}: ") for line in lines), stage


def test_rerun_reuses_every_stage_and_moves_latest(sample_run, sample):
    manifest, artifacts = sample_run
    again = run_flow(sample, artifacts)
    assert again.run_id != manifest.run_id
    assert {s.status for s in again.stages.values()} == {"cached"}
    assert (Path(again.run_dir).parent / "latest").resolve() == Path(again.run_dir).resolve()


def test_a_flow_run_ends_without_joining_its_heartbeat_thread_which_stops_by_itself(prefect_server):
    """Prefect sends heartbeats while the run goes on; at its end the thread, sleeping in one-second
    steps, is left to stop by itself instead of being waited for."""
    import inspect
    import threading

    import prefect.flow_engine
    from prefect import flow

    from customer_segments.flows import pipeline as flow_module

    # Prefect's engine looks the function up when a run starts, so the replacement is what runs.
    assert "_send_heartbeats(self)" in inspect.getsource(prefect.flow_engine.FlowRunEngine.run_context)
    assert prefect.flow_engine._send_heartbeats is flow_module._heartbeats_not_joined

    def heartbeat_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate()
                if any(getattr(a, "__name__", "") == "heartbeat_loop" for a in getattr(t, "_args", ()))]

    seen: dict[str, list[threading.Thread]] = {}

    @flow(persist_result=False)
    def beating():
        seen["during"] = heartbeat_threads()

    before = set(heartbeat_threads())
    beating()
    during = [t for t in seen["during"] if t not in before]
    assert len(during) == 1, "the run sends heartbeats"
    during[0].join(timeout=5)
    assert not during[0].is_alive(), "the heartbeat thread stops by itself once the run has ended"


def test_two_runs_give_byte_identical_outputs(prefect_server, sample_run, sample, tmp_path):
    manifest, _ = sample_run
    fresh = run_flow(sample, tmp_path)  # a separate artifacts folder: nothing cached
    assert {s.status for s in fresh.stages.values()} == {"completed"}
    for name in OUTPUTS:
        assert sha256_file(Path(fresh.run_dir) / name) == sha256_file(Path(manifest.run_dir) / name), name


def test_stages_run_in_other_processes_with_the_same_outputs(prefect_server, sample_run, sample, tmp_path):
    """Tasks take and return references only, so a process-based task runner runs them as they are."""
    from prefect.task_runners import ProcessPoolTaskRunner

    from customer_segments.flows.pipeline import segmentation

    manifest, _ = sample_run
    in_processes = segmentation.with_options(task_runner=ProcessPoolTaskRunner(max_workers=2))
    other = in_processes(input_path=str(sample), artifacts=str(tmp_path))
    assert other.status == "completed"
    assert {s.status for s in other.stages.values()} == {"completed"}
    for name in OUTPUTS:
        assert sha256_file(Path(other.run_dir) / name) == sha256_file(Path(manifest.run_dir) / name), name


def test_later_run_leaves_earlier_run_untouched(prefect_server, sample, tmp_path):
    first = run_flow(sample, tmp_path)
    before = snapshot(Path(first.run_dir))
    second = run_flow(sample, tmp_path, k=5)
    assert snapshot(Path(first.run_dir)) == before
    assert pd.read_parquet(Path(second.run_dir) / "cluster_labels.parquet")["segment"].nunique() == 5
    assert (Path(second.run_dir).parent / "latest").resolve() == Path(second.run_dir).resolve()


def test_cli_run_prints_summary_and_json(prefect_server, sample, tmp_path):
    result = run_cli("run", "--input", str(sample), "--artifacts", str(tmp_path), "--k", "4", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"run_id", "run_dir", "as_of", "status", "k", "customers", "silhouette"} <= summary.keys()
    assert summary["status"] == "completed" and summary["k"] == 4
    assert Path(summary["run_dir"]).is_dir() and Path(summary["run_dir"]).parent.parent == tmp_path
    assert "segment 0:" in result.stdout and "Results:" in result.stdout


def test_cli_missing_input_is_one_paragraph_and_exit_2(prefect_server, tmp_path):
    result = run_cli("run", "--input", str(tmp_path / "nope.xlsx"), "--artifacts", str(tmp_path / "a"))
    assert result.returncode == 2
    assert "nope.xlsx" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "a").exists() or not list((tmp_path / "a").glob("*/*/manifest.json"))


@pytest.mark.parametrize("suffix", ["parquet", "csv", "xlsx"])
def test_cli_generate_writes_a_readable_export(suffix, tmp_path):
    from customer_segments.tasks.inputs.readers import COLUMNS, read_invoices

    out = tmp_path / f"export.{suffix}"
    result = run_cli("generate", "--out", str(out), "--customers", "40", "--months", "3", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert f"of 40 customers to {out}" in result.stdout
    invoices = read_invoices(out)
    assert tuple(invoices.columns) == COLUMNS and len(invoices) > 40
    assert invoices["CustomerID"].dropna().nunique() == 40
    assert invoices["InvoiceNo"].str.fullmatch(r"C?\d{6}").all()
