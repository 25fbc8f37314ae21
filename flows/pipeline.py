"""The Prefect flow: the segmentation pipeline's table of contents.

Each stage runs as a Prefect task named after it; all the work of a stage (reading, caching,
validating, writing, recording) is the shared stage runner's, and the maths is in tasks/.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.states import Completed  # noqa: E402
from prefect.utilities.annotations import quote  # noqa: E402

from flows import audit  # noqa: E402
from tasks import gates, runs  # noqa: E402
from tasks.runner import Run, Stage, run_stage  # noqa: E402
from tasks.stages import (  # noqa: E402
    CLEAN, CLUSTER, FEATURES, INGEST, NORMALIZE, PLOTS, PROFILE, SELECT_K, STAGE_NAMES,
)

FLOW_NAME = "customer-segmentation"
# The as-of value a scheduled deployment passes: the month of the run's scheduled start.
SCHEDULED = "scheduled"
DEFAULT_INPUT = "data/incoming"


def stage_task(stage: Stage):
    """The Prefect task for a stage. Its result is the small manifest record, never a DataFrame."""

    def run(run: Run) -> Any:
        record = run_stage(stage, run)
        if record["status"] == "cached":
            return Completed(name="Cached", message="reused a verified cached output", data=record)
        return record

    run.__name__ = stage.name
    return task(
        name=stage.name, cache_policy=NO_CACHE, persist_result=False,
        retries=stage.retries, retry_delay_seconds=[2 ** n for n in range(stage.retries)] or 0,
        retry_condition_fn=retry_transient_only,
    )(run)


def retry_transient_only(task, task_run, state) -> bool:
    """Retry I/O hiccups; a data-quality or input error would fail the same way again."""
    from tasks.errors import PipelineError

    try:
        state.result()
    except PipelineError:
        return False
    except Exception:
        return True
    return False


ingest, clean, features, normalize, select_k, cluster, profile, plots = map(
    stage_task, (INGEST, CLEAN, FEATURES, NORMALIZE, SELECT_K, CLUSTER, PROFILE, PLOTS)
)


def initial_flow_run_name() -> str:
    """The month is known at start only when given; otherwise the run is renamed after ingest."""
    as_of = flow_run.get_parameters().get("as_of")
    return f"segmentation-{str(as_of)[:7]}" if as_of else "segmentation-(reading input)"


@flow(name=FLOW_NAME, flow_run_name=initial_flow_run_name, persist_result=False, validate_parameters=True)
def segmentation(
    input_path: str = DEFAULT_INPUT,
    as_of: str | None = None,
    k: int | None = None,
    k_min: int = 4,
    k_max: int = 8,
    artifacts: str = "artifacts",
    refresh: bool = False,
    from_stage: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Segment customers from invoice lines; returns the run's manifest.

    With run_id, the other parameters come from that run's manifest and the run is completed in
    its own folder (resume). A retry of the same flow run does the same.
    """
    gates.start_validator()  # imports Great Expectations on the other core meanwhile
    run = prepare_run(input_path, as_of, k, k_min, k_max, artifacts, refresh, from_stage, run_id)
    try:
        ingest(quote(run))
        runs.open_folder(run)
        label_flow_run(run)
        clean(quote(run))
        features(quote(run))
        normalize(quote(run))
        select_k(quote(run))
        cluster(quote(run))
        profile(quote(run))
        plots(quote(run))
    except BaseException as exc:
        # The caller (CLI, tests) gets the run's state along with the error.
        exc.manifest = runs.finish(run, "failed", error=str(exc))
        raise
    manifest = runs.finish(run, "completed")
    audit.publish(manifest)
    get_run_logger().info("Run %s completed: %s", manifest["run_id"], run.run_dir)
    return manifest


def label_flow_run(run: Run) -> None:
    """Name the flow run after its month and tag it, so the UI's run list reads as a history."""
    flow_run_id = flow_run.get_id()
    if flow_run_id is None:
        return
    from prefect.client.orchestration import get_client

    tags = sorted({*flow_run.get_tags(), *run_tags(run)})
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run_id, name=f"segmentation-{run.params['as_of']}", tags=tags)


def run_tags(run: Run) -> list[str]:
    return [f"as-of:{run.params['as_of']}", f"input:{run.params['input_sha256'][:12]}"]


def prepare_run(input_path, as_of, k, k_min, k_max, artifacts, refresh, from_stage, run_id) -> Run:
    artifacts_dir = Path(artifacts)
    to_refresh = stages_to_refresh(refresh, from_stage)
    earlier = runs.find_run(artifacts_dir, run_id) if run_id else runs.find_flow_run(artifacts_dir, flow_run.get_id())
    if earlier is not None:
        return runs.reopen(earlier, flow_run_id=flow_run.get_id(), refresh=to_refresh)
    if as_of == SCHEDULED:
        as_of = scheduled_month()
    fingerprint = runs.input_fingerprint(Path(input_path))
    params = {
        "input_path": str(input_path),
        "input_sha256": fingerprint["sha256"],
        "as_of": as_of,
        "k": k,
        "k_min": k_min,
        "k_max": k_max,
    }
    runs.parse_month(as_of)
    return runs.start(
        artifacts_dir, params, run_id=None, flow_run_id=flow_run.get_id(), refresh=to_refresh,
    )


def scheduled_month() -> str:
    """The month of this run's scheduled start, in the deployment schedule's time zone.

    The run scheduled for 2012-01-01 06:00 therefore segments the invoices before 2012-01-01.
    """
    start = flow_run.get_scheduled_start_time()
    from prefect.runtime import deployment

    deployment_id = deployment.get_id()
    zone = "UTC"
    if deployment_id:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            schedules = client.read_deployment(deployment_id).schedules
        zone = next((getattr(s.schedule, "timezone", None) for s in schedules if getattr(s.schedule, "timezone", None)), "UTC")
    from zoneinfo import ZoneInfo

    return start.astimezone(ZoneInfo(zone)).strftime("%Y-%m")


def stages_to_refresh(refresh: bool, from_stage: str | None) -> frozenset[str]:
    if refresh:
        return frozenset(STAGE_NAMES)
    if from_stage is None:
        return frozenset()
    if from_stage not in STAGE_NAMES:
        from tasks.errors import ParameterError

        raise ParameterError(from_stage, f"--from-stage must be one of {', '.join(STAGE_NAMES)}")
    return frozenset(STAGE_NAMES[STAGE_NAMES.index(from_stage):])
