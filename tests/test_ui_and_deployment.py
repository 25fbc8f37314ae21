"""What a person sees and schedules: the Prefect UI in headless Chromium, the served deployment,
the scheduled run's month, and prefect.yaml's deployment on a process work pool."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime


from support import BIN, REPO, run_cli, run_flow


def stop_process_group(leader: subprocess.Popen) -> None:
    """Stop a long-running command (`segment serve`, `prefect worker start`) as Ctrl-C would, and
    by force whatever of its process group lingers.

    Prefect's worker forwards the signal to its own process worker and shuts down gracefully, which
    on a busy machine has taken more than 30 s; these tests are about the runs, not the shutdown.
    """
    leader.send_signal(signal.SIGINT)
    try:
        leader.wait(30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(leader.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    leader.wait(30)

SCREENSHOTS = REPO / "artifacts" / "test-screenshots"


def client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def test_flow_run_page_shows_the_run_and_its_artifacts(prefect_server, sample, tmp_path, browser):
    manifest = run_flow(sample, tmp_path)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    blocked = []

    def only_the_server(route):
        # The UI, its API and data: URIs only; anything else would not load on a closed network.
        url = route.request.url
        if url.startswith(("data:", prefect_server["ui_url"])):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    page.route("**/*", only_the_server)
    page.goto(f"{prefect_server['ui_url']}/runs/flow-run/{manifest.flow_run_id}")
    page.get_by_text(f"segmentation-{manifest.as_of}").first.wait_for(timeout=60_000)
    page.get_by_text("Artifacts", exact=True).first.click()
    for key in ("segmentation-summary", "segment-profiles", "data-quality", "run-folder"):
        page.get_by_text(key, exact=True).first.wait_for(timeout=30_000)
    body = page.inner_text("body")
    assert "Completed" in body and f"as-of:{manifest.as_of}" in body
    assert f"input:{manifest.input.sha256[:12]}" in body
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "flow-run-artifacts.png"), full_page=True)

    page.get_by_text("segmentation-summary", exact=True).first.click()
    page.get_by_text("Segments", exact=True).first.wait_for(timeout=30_000)
    summary = page.inner_text("body")
    assert "High value: frequent, big spenders" in summary and manifest.run_id in summary
    assert "The run's report" in summary  # the summary links the report
    # The plots themselves, rendered in the UI (data URIs: nothing to fetch from anywhere).
    page.wait_for_function("Array.from(document.images).filter(i => i.src.startsWith('data:image/png')).length >= 8",
                           timeout=30_000)
    widths = page.evaluate("Array.from(document.images).filter(i => i.src.startsWith('data:image/png'))"
                           ".map(i => i.naturalWidth)")
    assert len(widths) >= 8 and min(widths) > 0
    assert not blocked, blocked
    page.screenshot(path=str(SCREENSHOTS / "segmentation-summary.png"), full_page=True)
    page.close()
    assert (SCREENSHOTS / "flow-run-artifacts.png").stat().st_size > 10_000


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_served_deployment_runs_on_schedule_for_the_scheduled_month(prefect_server, sample, tmp_path):
    from prefect.states import Scheduled

    landing = tmp_path / "incoming"
    landing.mkdir()
    shutil.copy(sample, landing / "export.parquet")
    artifacts = tmp_path / "artifacts"
    server = subprocess.Popen(
        [str(BIN / "segment"), "serve", "--landing", str(landing), "--artifacts", str(artifacts),
         "--timezone", "Europe/London"],
        cwd=REPO, env={**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": "2"},
        stdout=open(tmp_path / "serve.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        def deployment():
            try:
                with client() as c:
                    found = c.read_deployment_by_name("customer-segmentation/monthly-segmentation")
            except Exception:
                return None
            # Another test may have registered the same name; wait for this serve's version.
            return found if found.parameters.get("input_path") == str(landing) else None

        served = wait_for(deployment, 120, "the served deployment")
        schedule = served.schedules[0].schedule
        assert (schedule.cron, schedule.timezone) == ("0 6 1 * *", "Europe/London")
        assert served.parameters["as_of"] == "scheduled" and served.parameters["input_path"] == str(landing)

        # The run the schedule makes for 1 January 2012, 06:00 London time: it must segment
        # the invoices before 2012-01-01.
        start = datetime(2012, 1, 1, 6, 0, tzinfo=UTC)
        with client() as c:
            flow_run = c.create_flow_run_from_deployment(served.id, state=Scheduled(scheduled_time=start))

        def finished():
            with client() as c:
                state = c.read_flow_run(flow_run.id).state
            return state if state.is_final() else None

        state = wait_for(finished, 300, "the scheduled run to finish")
        assert state.is_completed(), (tmp_path / "serve.log").read_text()[-3000:]
        manifest = json.loads(next(artifacts.glob("2012-01/*/manifest.json")).read_text())
        assert manifest["as_of"] == "2012-01" and manifest["cutoff"] == "2012-01-01T00:00:00"
        assert manifest["flow_run_id"] == str(flow_run.id) and manifest["status"] == "completed"
        with client() as c:
            assert c.read_flow_run(flow_run.id).name == "segmentation-2012-01"
    finally:
        stop_process_group(server)


def test_deploy_registers_the_deployment_on_a_process_pool_and_a_worker_runs_it(prefect_server, sample, tmp_path):
    """`segment deploy` registers the installed flow by module path; a worker elsewhere runs it."""
    from prefect.states import Scheduled

    from customer_segments.flows import settings

    landing = tmp_path / "incoming"
    landing.mkdir()
    shutil.copy(sample, landing / "export.parquet")
    created = subprocess.run([str(BIN / "prefect"), "work-pool", "create", "segmentation", "--type", "process"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0 or "already exists" in created.stdout + created.stderr, created.stderr
    deployed = run_cli("deploy", "--pool", "segmentation", "--landing", "incoming", "--artifacts", "artifacts",
                       cwd=tmp_path)
    assert deployed.returncode == 0, deployed.stderr + deployed.stdout
    with client() as c:
        deployment = c.read_deployment_by_name(f"{settings.FLOW_NAME}/{settings.DEPLOYMENT_NAME}")
    assert deployment.work_pool_name == "segmentation"
    assert deployment.entrypoint == "customer_segments.flows.pipeline.segmentation"  # a module path
    assert deployment.schedules[0].schedule.cron == settings.CRON
    assert deployment.parameters == {"input_path": str(landing), "artifacts": str(tmp_path / "artifacts"),
                                     "as_of": settings.SCHEDULED}

    elsewhere = tmp_path / "worker"
    elsewhere.mkdir()
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "segmentation"],
                              cwd=elsewhere, env={**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "2"},
                              stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        with client() as c:
            flow_run = c.create_flow_run_from_deployment(
                deployment.id, state=Scheduled(scheduled_time=datetime(2011, 11, 1, 6, 0, tzinfo=UTC)))

        def finished():
            with client() as c:
                state = c.read_flow_run(flow_run.id).state
            return state if state.is_final() else None

        state = wait_for(finished, 300, "the worker to run the deployment")
        assert state.is_completed(), (tmp_path / "worker.log").read_text()[-3000:]
        manifest = json.loads(next((tmp_path / "artifacts").glob("2011-11/*/manifest.json")).read_text())
        assert manifest["status"] == "completed" and manifest["cutoff"] == "2011-11-01T00:00:00"
    finally:
        stop_process_group(worker)
