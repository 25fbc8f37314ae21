"""The Prefect flow: the segmentation pipeline's table of contents.

Each stage runs as a Prefect task named after it. Tasks pass small references to the datasets
they wrote (path, sha256, rows), never DataFrames, so the run graph shows the data flow and any
stage can run in another process or on another machine that sees the artifacts folder. All the
work of a stage (reading, caching, validating, writing) is the shared stage runner's; the maths
is in tasks/. The flow itself keeps the run's manifest.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import PrefectFuture  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.states import Completed  # noqa: E402

from customer_segments.flows import audit, defaults  # noqa: E402
from customer_segments.tasks import elsewhere, helpers, runs  # noqa: E402
from customer_segments.tasks.errors import ParameterError, PipelineError  # noqa: E402
from customer_segments.tasks.manifest import Manifest, RunContext, StageRecord, StageResult  # noqa: E402
from customer_segments.tasks.runner import Stage, run_stage  # noqa: E402
from customer_segments.tasks.stages import (  # noqa: E402
    BASKET, CHAID, CLEAN, CLUSTER, FEATURES, INGEST, MIGRATION, NORMALIZE, PLOTS, PROFILE, PROPENSITY, RFM, SELECT_K,
    STABILITY, STAGE_NAMES, STAGES,
)


# Stages no later stage waits for and whose work is pure Python, computed in the helper process
# (on the other core): see tasks/elsewhere.py.
ELSEWHERE = frozenset({"propensity", "basket"})


def stage_task(stage: Stage):
    """The Prefect task of a stage: run it, log one line an auditor can read, return the reference."""

    def run(context: RunContext, upstream: list[StageResult]) -> Any:
        if stage.name in ELSEWHERE:
            result = elsewhere.run(stage.name, context, upstream)
        else:
            result = run_stage(stage, context, upstream)
        get_run_logger().info(audit.stage_line(result, upstream))
        if result.record.status == "cached":
            return Completed(name="Cached", message="reused a verified cached output", data=result)
        return result

    run.__name__ = stage.name
    return task(
        name=stage.name, cache_policy=NO_CACHE, persist_result=False,
        retries=stage.retries, retry_delay_seconds=[2 ** n for n in range(stage.retries)] or 0,
        retry_condition_fn=retry_transient_only,
    )(run)


def retry_transient_only(task, task_run, state) -> bool:
    """Retry I/O hiccups; a data-quality or input error would fail the same way again."""
    try:
        state.result()
    except PipelineError:
        return False
    except Exception:
        return True
    return False


TASKS = {stage.name: stage_task(stage) for stage in STAGES}


@task(name="open_run", cache_policy=NO_CACHE, persist_result=False)
def open_run(context: RunContext, ingested: StageResult) -> RunContext:
    """Fix the run's month from the data, create its folder, and name the flow run after it."""
    opened = runs.open_folder(context, ingested.record.metrics.get("last_invoice"))
    label_flow_run(opened)
    get_run_logger().info("Run %s: as-of %s (invoices before %s), folder %s", opened.run_id,
                          opened.params["as_of"], opened.params["cutoff"][:10], opened.run_dir)
    return opened


@task(name="previous_run", cache_policy=NO_CACHE, persist_result=False)
def previous_run(context: RunContext) -> StageResult:
    """Last month's run of the same series, whose segments this month's ids continue."""
    found = runs.previous_run(context.artifacts_dir, context.params["as_of"], context.params)
    if found is None:
        get_run_logger().info("No run of this series for the month before %s: segment ids start anew.",
                              context.params["as_of"])
        return StageResult(stage="previous_run", record=StageRecord(status="completed"), facts={"previous_customers": 0})
    cluster = found.stages["cluster"]
    outputs = {"previous_labels": cluster.outputs["cluster_labels"].model_copy(update={"name": "previous_labels"}),
               "previous_lineage": cluster.outputs["segment_lineage"].model_copy(update={"name": "previous_lineage"})}
    facts = {"previous_run_id": found.run_id, "previous_as_of": found.as_of, "previous_run_dir": found.run_dir,
             "previous_customers": found.customers}
    get_run_logger().info("Segment ids continue those of run %s (%s, %s customers).", found.run_id, found.as_of,
                          f"{found.customers:,}")
    return StageResult(stage="previous_run", record=StageRecord(status="completed", outputs=outputs, metrics=facts),
                       facts=facts)


class Pipeline:
    """Submits stage tasks and records each outcome in the run's manifest.

    `run` waits for a stage; `submit` starts one that later stages do not need right away, so that
    it runs beside them (while one thread waits on k-means' compiled code or on a quality gate in
    the validator process, another computes); `wait` records submitted stages' outcomes.
    """

    def __init__(self, context: RunContext, ledger: runs.RunLedger):
        self.context: RunContext | PrefectFuture = context
        self.ledger = ledger
        self.pending: dict[str, PrefectFuture] = {}

    def run(self, stage: Stage, *upstream: PrefectFuture) -> PrefectFuture:
        future = self.submit(stage, *upstream)
        self.wait(future)
        return future

    def submit(self, stage: Stage, *upstream: PrefectFuture) -> PrefectFuture:
        self.ledger.started(stage.name)
        future = TASKS[stage.name].submit(self.context, list(upstream))
        self.pending[stage.name] = future
        return future

    def wait(self, *futures: PrefectFuture | None) -> None:
        """Record the outcome of each given stage (all pending ones when none is given)."""
        chosen = [f for f in futures if f is not None] if futures else list(self.pending.values())
        first_error = None
        for name, future in [(n, f) for n, f in self.pending.items() if any(f is c for c in chosen)]:
            del self.pending[name]
            try:
                self.ledger.finished(future.result())
            except BaseException as exc:
                self.ledger.failed(name, exc)
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def settle(self) -> None:
        """After a failure: let stages still running finish, and record how they ended."""
        try:
            self.wait()
        except BaseException:
            pass

    def open(self, ingested: PrefectFuture) -> None:
        self.context = open_run.submit(self.context, ingested)
        self.ledger.opened(self.context.result())

    def context_value(self, name: str):
        context = self.context.result() if isinstance(self.context, PrefectFuture) else self.context
        return context.params[name]

    def previous(self) -> PrefectFuture:
        future = previous_run.submit(self.context)
        self.ledger.previous(future.result())
        return future


def initial_flow_run_name() -> str:
    """The month is known at start only when given; otherwise the run is renamed after ingest."""
    as_of = flow_run.get_parameters().get("as_of")
    return f"segmentation-{str(as_of)[:7]}" if as_of and as_of != defaults.SCHEDULED else "segmentation-(reading input)"


@flow(name=defaults.FLOW_NAME, flow_run_name=initial_flow_run_name, persist_result=False, validate_parameters=True)
def segmentation(
    input_path: str = defaults.INPUT_PATH,
    as_of: str | None = None,
    k: int | None = None,
    k_min: int = defaults.K_MIN,
    k_max: int = defaults.K_MAX,
    window: int | None = None,
    encoding: str | None = None,
    date_format: str | None = None,
    artifacts: str = defaults.ARTIFACTS,
    methods: list[str] = list(defaults.METHODS),
    horizon: int = defaults.HORIZON,
    basket_min_support: float = defaults.BASKET_MIN_SUPPORT,
    basket_min_baskets: int = defaults.BASKET_MIN_BASKETS,
    basket_min_lift: float = defaults.BASKET_MIN_LIFT,
    basket_max_len: int = defaults.BASKET_MAX_LEN,
    chaid_target: str = defaults.CHAID_TARGET,
    chaid_max_depth: int = defaults.CHAID_MAX_DEPTH,
    chaid_min_parent: int = defaults.CHAID_MIN_PARENT,
    chaid_min_child: int = defaults.CHAID_MIN_CHILD,
    refresh: bool = False,
    from_stage: str | None = None,
    engine: str = defaults.ENGINE,
    run_id: str | None = None,
    input_sha256: str | None = None,
) -> Manifest:
    """Segment customers from invoice lines; returns the run's manifest.

    With run_id, the other parameters come from that run's manifest and the run is completed in
    its own folder (resume). A retry of the same flow run does the same. input_sha256 spares
    hashing the input again when the caller just did (a backfill's months).
    """
    # The helpers import Great Expectations and the methods' libraries meanwhile; on the dask engine
    # the stages run on the cluster's workers, and only the validator (Data Docs) is of use here.
    helpers.start(worker=engine != "dask")
    options = {"engine": engine, "methods": list(methods), "horizon": horizon,
               "basket_min_support": basket_min_support, "basket_min_baskets": basket_min_baskets,
               "basket_min_lift": basket_min_lift, "basket_max_len": basket_max_len, "chaid_target": chaid_target,
               "chaid_max_depth": chaid_max_depth, "chaid_min_parent": chaid_min_parent, "chaid_min_child": chaid_min_child}
    context, ledger = prepare_run(input_path, as_of, k, k_min, k_max, window, encoding, date_format, artifacts,
                                  refresh, from_stage, run_id, input_sha256, options)
    pipeline = Pipeline(context, ledger)
    try:
        raw = pipeline.run(INGEST)
        pipeline.open(raw)
        clean = pipeline.run(CLEAN, raw)
        chosen = set(pipeline.context_value("methods"))
        # The other methods run beside the segmentation as soon as their inputs exist.
        propensity = pipeline.submit(PROPENSITY, clean) if "propensity" in chosen else None
        features = pipeline.run(FEATURES, clean)
        normalized = pipeline.run(NORMALIZE, features)
        k_table = pipeline.run(SELECT_K, normalized)
        previous = pipeline.previous()
        labels = pipeline.run(CLUSTER, features, normalized, k_table, previous)
        basket = pipeline.submit(BASKET, clean, labels) if "basket" in chosen else None
        stability = pipeline.run(STABILITY, normalized, labels, k_table)
        pipeline.run(PROFILE, labels, clean, stability)
        migration = pipeline.run(MIGRATION, labels, previous)
        rfm = pipeline.submit(RFM, clean, labels) if "rfm" in chosen else None
        chaid = pipeline.submit(CHAID, clean, labels) if "chaid" in chosen else None
        pipeline.run(PLOTS, k_table, labels, migration)
        pipeline.wait(propensity, rfm, chaid, basket)
        manifest = ledger.finish("completed")
    except BaseException as exc:
        pipeline.settle()
        # The caller (CLI, tests) gets the run's state along with the error.
        exc.manifest = ledger.finish("failed", error=str(exc))
        raise
    write_report(manifest)
    audit.publish(manifest)
    get_run_logger().info("Run %s completed: %s", manifest.run_id, manifest.run_dir)
    return manifest


@flow(name=defaults.BACKFILL_FLOW_NAME, flow_run_name="backfill-{start}..{end}", persist_result=False,
      validate_parameters=True)
def backfill(
    input_path: str,
    start: str,
    end: str,
    window: int | None = None,
    k: int | None = None,
    k_min: int = defaults.K_MIN,
    k_max: int = defaults.K_MAX,
    encoding: str | None = None,
    date_format: str | None = None,
    artifacts: str = defaults.ARTIFACTS,
    methods: list[str] = list(defaults.METHODS),
    horizon: int = defaults.HORIZON,
) -> list[tuple[Manifest, bool]]:
    """One segmentation per month from start to end (YYYY-MM), in order: month t's ids need t-1's.

    Each month is a child flow run named segmentation-YYYY-MM. A month that already has an
    equivalent completed run (same input, parameters and code, continuing the ids of the previous
    month's current run) is kept, not run again. Returns (manifest, reused) per month; a failed
    month stops the backfill, its error carrying the months done so far as `done`.
    """
    months = runs.month_range(start, end)
    info = runs.input_fingerprint(Path(input_path))  # once for all months; each ingest is cached
    params = {"window": window, "k": k, "k_min": k_min, "k_max": k_max, "encoding": encoding,
              "date_format": date_format}
    options = {"methods": list(methods), "horizon": horizon}
    logger = get_run_logger()
    done: list[tuple[Manifest, bool]] = []
    for month in months:
        kept = runs.reusable_run(Path(artifacts), month, params | options, info.sha256)
        if kept is not None:
            logger.info("%s: kept run %s (same input, parameters, code and previous month)", month, kept.run_id)
            done.append((kept, True))
            continue
        try:
            manifest = segmentation(input_path=str(input_path), as_of=month, artifacts=artifacts,
                                    input_sha256=info.sha256, **params, **options)
        except BaseException as exc:
            exc.done = done
            raise
        done.append((manifest, False))
    return done


def write_report(manifest: Manifest) -> None:
    """The run's report.html, for the people who act on the segments (see flows/report.py)."""
    from customer_segments.flows.report import build_report

    path = build_report(Path(manifest.run_dir))
    get_run_logger().info("Report: %s", path)


def label_flow_run(context: RunContext) -> None:
    """Name the flow run after its month and tag it, so the UI's run list reads as a history."""
    flow_run_id = flow_run.get_id()
    if flow_run_id is None:
        return
    from prefect.client.orchestration import get_client

    tags = sorted({*flow_run.get_tags(), *run_tags(context)})
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run_id, name=f"segmentation-{context.params['as_of']}", tags=tags)


def run_tags(context: RunContext) -> list[str]:
    window = context.params.get("window")
    return [f"as-of:{context.params['as_of']}", f"input:{context.params['input_sha256'][:12]}",
            f"window:{window if window is not None else 'all'}"]


def prepare_run(input_path, as_of, k, k_min, k_max, window, encoding, date_format, artifacts, refresh, from_stage,
                run_id, input_sha256=None, options=None) -> tuple[RunContext, runs.RunLedger]:
    artifacts_dir = Path(artifacts)
    to_refresh = stages_to_refresh(refresh, from_stage)
    earlier = runs.find_run(artifacts_dir, run_id) if run_id else runs.find_flow_run(artifacts_dir, flow_run.get_id())
    if earlier is not None:
        return runs.reopen(earlier, flow_run_id=flow_run.get_id(), refresh=to_refresh)
    if as_of == defaults.SCHEDULED:
        as_of = scheduled_month()
    runs.parse_month(as_of)
    if window is not None and window < 1:
        raise ParameterError("clean", f"--window must be a number of months of at least 1, got {window}")
    options = dict(options or {})
    if options.get("engine", defaults.ENGINE) not in defaults.ENGINES:
        raise ParameterError("run", f"--engine must be one of {', '.join(defaults.ENGINES)}, got {options['engine']!r}")
    unknown = sorted(set(options.get("methods", [])) - set(defaults.METHODS))
    if unknown:
        raise ParameterError("run", f"unknown method(s) {', '.join(unknown)}; the methods are {', '.join(defaults.METHODS)}")
    options["methods"] = [m for m in defaults.METHODS if m in options.get("methods", defaults.METHODS)]
    params = {"input_path": str(input_path), "as_of": as_of, "k": k, "k_min": k_min, "k_max": k_max,
              "window": window, "encoding": encoding, "date_format": date_format, **options}
    return runs.start(artifacts_dir, params, flow_run_id=flow_run.get_id(), refresh=to_refresh,
                      input_sha256=input_sha256)


def scheduled_month() -> str:
    """The month of this run's scheduled start, in the deployment schedule's time zone.

    The run scheduled for 2012-01-01 06:00 therefore segments the invoices before 2012-01-01.
    """
    start = flow_run.get_scheduled_start_time()
    from prefect.runtime import deployment

    deployment_id = deployment.get_id()
    zone = defaults.TIMEZONE
    if deployment_id:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            schedules = client.read_deployment(deployment_id).schedules
        zone = next((getattr(s.schedule, "timezone", None) for s in schedules
                     if getattr(s.schedule, "timezone", None)), zone)
    from zoneinfo import ZoneInfo

    return start.astimezone(ZoneInfo(zone)).strftime("%Y-%m")


def stages_to_refresh(refresh: bool, from_stage: str | None) -> frozenset[str]:
    if refresh:
        return frozenset(STAGE_NAMES)
    if from_stage is None:
        return frozenset()
    if from_stage not in STAGE_NAMES:
        raise ParameterError(from_stage, f"--from-stage must be one of {', '.join(STAGE_NAMES)}")
    return frozenset(STAGE_NAMES[STAGE_NAMES.index(from_stage):])
