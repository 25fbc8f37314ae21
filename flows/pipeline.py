"""The Prefect flow: it walks the stage catalogue (tasks/catalogue.py).

Each stage runs as a Prefect task named after it, started as soon as the datasets it reads exist;
the order comes from the catalogue's dataset names, and no stage is named here. Tasks pass small
references to the datasets they wrote (path, sha256, rows), never DataFrames, so the run graph
shows the data flow and any stage can run in another process or on a Dask worker that sees the
artifacts folder. All the work of a stage (reading, caching, validating, writing) is the shared
stage runner's; the maths is in tasks/. The flow itself keeps the run's manifest.

The flow's parameters are the run-parameters model's (tasks/runtime/parameters.py), plus the few
options of a call (`RUN_OPTIONS`).
"""

from __future__ import annotations

import inspect
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import PrefectFuture, as_completed  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.states import Completed  # noqa: E402

from customer_segments.flows import audit, settings  # noqa: E402
from customer_segments.tasks import catalogue  # noqa: E402
from customer_segments.tasks.errors import ParameterError, PipelineError  # noqa: E402
from customer_segments.tasks.runtime import parameters, postgres, run_folders, worker_processes  # noqa: E402
from customer_segments.tasks.runtime.graph import pipeline as graph  # noqa: E402
from customer_segments.tasks.runtime.manifest import Manifest, RunContext, StageRecord, StageResult  # noqa: E402
from customer_segments.tasks.runtime.stage import Stage  # noqa: E402
from customer_segments.tasks.runtime.stage_runner import run_stage  # noqa: E402


def stage_task(stage: Stage):
    """The Prefect task of a stage: run it where the catalogue says, log one line, return the reference."""

    def run(context: RunContext, upstream: list[StageResult]) -> Any:
        if stage.runs_in == "worker":
            result = worker_processes.run_stage_in_worker(stage.name, context, upstream)
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


TASKS = {stage.name: stage_task(stage) for stage in catalogue.STAGES}


@task(name="open_run", cache_policy=NO_CACHE, persist_result=False)
def open_run(context: RunContext, sources: list[StageResult]) -> RunContext:
    """Fix the run's month from the data, create its folder, and name the flow run after it."""
    newest = next((r.record.metrics["last_invoice"] for r in sources if "last_invoice" in r.record.metrics), None)
    opened = run_folders.open_folder(context, newest)
    label_flow_run(opened)
    get_run_logger().info("Run %s: as-of %s (invoices before %s), folder %s", opened.run_id,
                          opened.params["as_of"], opened.params["cutoff"][:10], opened.run_dir)
    return opened


@task(name=catalogue.PREVIOUS.name, cache_policy=NO_CACHE, persist_result=False)
def previous_run(context: RunContext) -> StageResult:
    """Last month's run of the same series, whose segments this month's ids continue."""
    found = run_folders.previous_run(context.artifacts_dir, context.params["as_of"], context.params)
    if found is None:
        get_run_logger().info("No run of this series for the month before %s: segment ids start anew.",
                              context.params["as_of"])
        return StageResult(stage=catalogue.PREVIOUS.name, record=StageRecord(status="completed"),
                           facts={"previous_customers": 0})
    outputs = {name: found.dataset(stage, dataset).model_copy(update={"name": name})
               for name, (stage, dataset) in catalogue.PREVIOUS.outputs.items()}
    facts = {"previous_run_id": found.run_id, "previous_as_of": found.as_of, "previous_run_dir": found.run_dir,
             "previous_customers": found.customers}
    get_run_logger().info("Segment ids continue those of run %s (%s, %s customers).", found.run_id, found.as_of,
                          f"{found.customers:,}")
    return StageResult(stage=catalogue.PREVIOUS.name,
                       record=StageRecord(status="completed", outputs=outputs, metrics=facts), facts=facts)


class Walk:
    """Runs the enabled stages of the catalogue, each as soon as the datasets it reads exist.

    Stages without inputs (ingest) run first, with the run not yet in a folder; once they are
    done the run folder opens (its month comes from the data) and last month's run is looked up;
    every other stage gets the opened run. Each outcome is recorded in the manifest as it comes.
    On a failure nothing new starts; the stages already running finish and are recorded.
    """

    def __init__(self, context: RunContext, ledger: run_folders.RunLedger, stages: list[str]):
        self.context: RunContext | PrefectFuture = context
        self.ledger = ledger
        self.todo = list(stages)
        self.done: dict[str, PrefectFuture] = {}        # producer name -> its finished future
        self.running: dict[str, PrefectFuture] = {}
        self.opened = False

    def run(self) -> None:
        first_error: BaseException | None = None
        while self.todo or self.running:
            if first_error is None:
                try:
                    self._open_when_sources_are_done()
                    for name in [n for n in self.todo if self._ready(n)]:
                        self._submit(name)
                except BaseException as exc:  # the run folder could not be opened
                    first_error = exc
            if not self.running:
                if first_error is not None or not self.todo:
                    break
                raise RuntimeError("no stage can start: " + ", ".join(self.todo))  # the graph tests rule this out
            future = next(as_completed(list(self.running.values())))
            name = next(n for n, f in self.running.items() if f is future)
            del self.running[name]
            try:
                self.ledger.finished(future.result())
                self.done[name] = future
            except BaseException as exc:
                self.ledger.failed(name, exc)
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def _sources(self) -> list[str]:
        return [s.name for s in catalogue.STAGES if not s.inputs]

    def _open_when_sources_are_done(self) -> None:
        sources = self._sources()
        if self.opened or any(n in self.todo or n in self.running for n in sources):
            return
        self.context = open_run.submit(self.context, [self.done[n] for n in sources if n in self.done])
        self.ledger.opened(self.context.result())
        self._skip_what_the_input_cannot_feed([self.done[n].result() for n in sources if n in self.done])
        previous = previous_run.submit(self.context)
        self.ledger.previous(previous.result())
        self.done[catalogue.PREVIOUS.name] = previous
        self.opened = True

    def _skip_what_the_input_cannot_feed(self, sources: list[StageResult]) -> None:
        """Stages needing columns the export lacks (products) are skipped, with those needing their outputs."""
        present = next((r.record.metrics["input_columns"] for r in sources if "input_columns" in r.record.metrics), None)
        if present is None:
            return
        reasons = {}
        for name in self.todo:
            missing = [c for c in catalogue.BY_NAME[name].needs_columns if c not in present]
            if missing:
                reasons[name] = f"the input has no {' or '.join(missing)} column"
        if not reasons:
            return
        kept = graph().runnable([n for n in self.todo if n not in reasons] + list(self.done))
        for name in [n for n in self.todo if n not in kept]:
            reasons.setdefault(name, "it needs the outputs of " + ", ".join(
                p for p in graph().upstream_stages(catalogue.BY_NAME[name]) if p in reasons))
            self.todo.remove(name)
            self.ledger.skipped(name, reasons[name])

    def _ready(self, name: str) -> bool:
        stage = catalogue.BY_NAME[name]
        if stage.inputs and not self.opened:
            return False
        producers = graph().upstream_stages(stage)
        return all(p in self.done or (p not in self.todo and p not in self.running) for p in producers)

    def _submit(self, name: str) -> None:
        stage = catalogue.BY_NAME[name]
        upstream = [self.done[p] for p in graph().upstream_stages(stage) if p in self.done]
        self.todo.remove(name)
        self.ledger.started(name)
        self.running[name] = TASKS[name].submit(self.context, upstream)


# --- the flow's parameters: the model's, and the options of one call ------------------------------

RUN_OPTIONS = (
    inspect.Parameter("refresh", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool),
    inspect.Parameter("from_stage", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=str | None),
    inspect.Parameter("run_id", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=str | None),
    inspect.Parameter("input_sha256", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=str | None),
)


def model_signature(exclude: tuple[str, ...] = (), first: tuple[inspect.Parameter, ...] = (),
                    last: tuple[inspect.Parameter, ...] = ()) -> inspect.Signature:
    """A signature whose keyword parameters are the run-parameters model's fields."""
    fields = parameters.model().model_fields
    derived = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=field.annotation,
                                 default=field.get_default(call_default_factory=True))
               for name, field in fields.items() if name not in exclude]
    return inspect.Signature([*first, *derived, *last], return_annotation=Any)


def with_signature(signature: inspect.Signature):
    """Give a `**kwargs` function the signature Prefect (and its UI) shows as the flow's parameters."""

    def apply(function):
        function.__signature__ = signature
        function.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        return function

    return apply


def initial_flow_run_name() -> str:
    """The month is known at start only when given; otherwise the run is renamed after ingest."""
    as_of = flow_run.get_parameters().get("as_of")
    return f"segmentation-{str(as_of)[:7]}" if as_of and as_of != settings.SCHEDULED else "segmentation-(reading input)"


@flow(name=settings.FLOW_NAME, flow_run_name=initial_flow_run_name, persist_result=False, validate_parameters=True)
@with_signature(model_signature(last=RUN_OPTIONS))
def segmentation(**kwargs: Any) -> Manifest:
    """Segment customers from invoice lines; returns the run's manifest.

    With run_id, the other parameters come from that run's manifest and the run is completed in
    its own folder (resume). A retry of the same flow run does the same. input_sha256 spares
    hashing the input again when the caller just did (a backfill's months).
    """
    options = {p.name: kwargs.pop(p.name, p.default) for p in RUN_OPTIONS}
    context, ledger = prepare_run(kwargs, **options)
    # The helpers import Great Expectations and the methods' libraries meanwhile; on the dask engine
    # the stages run on the cluster's workers, and only the validator (Data Docs) is of use here.
    worker_processes.start(worker=context.params.get("engine") != "dask")
    enabled = graph().runnable(stage_switches(context.params))
    try:
        Walk(context, ledger, enabled).run()
        manifest = ledger.finish("completed")
    except BaseException as exc:
        # The caller (CLI, tests) gets the run's state along with the error.
        exc.manifest = ledger.finish("failed", error=str(exc))
        raise
    write_report(manifest)
    if context.params.get("export_to"):
        export_after_run(ledger, context.params["export_to"])
    audit.publish(manifest)
    get_run_logger().info("Run %s completed: %s", manifest.run_id, manifest.run_dir)
    return manifest


def retry_unless_permanent(task, task_run, state) -> bool:
    """Retry an export that failed for a reason that may pass (the server, the network)."""
    try:
        state.result()
    except Exception as exc:
        return bool(getattr(exc, "transient", not isinstance(exc, PipelineError)))
    return False


@task(name="export", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=[2, 8],
      retry_condition_fn=retry_unless_permanent)
def export_customers(run_dir: str, target: str) -> dict:
    """The completed run's customer table to the --export-to target."""
    from customer_segments.tasks.runtime import exports

    done = exports.export_run(Path(run_dir), target)
    get_run_logger().info("Exported %s customers to %s in %s s", f"{done['rows']:,}", done["target"], done["seconds"])
    return done


def export_after_run(ledger: run_folders.RunLedger, target: str) -> None:
    """Export as the flow's last task; a failure leaves the run completed and is recorded, not raised."""
    manifest = ledger.manifest
    try:
        done = export_customers.submit(manifest.run_dir, target).result()
        record = {"target": done["target"], "status": "completed", "rows": done["rows"], "seconds": done["seconds"]}
    except Exception as exc:
        error = postgres.scrub(str(exc))
        get_run_logger().error("The export to %s failed: %s. The run is complete; `segment export %s --to TARGET` "
                               "redoes it.", postgres.safe_url(target), error, manifest.run_id)
        record = {"target": postgres.safe_url(target), "status": "failed", "error": error}
    manifest.exports.append(record)
    ledger.save()


def stage_switches(params: dict[str, Any]) -> list[str]:
    """The stages a run's parameters leave on: every stage, less the switchable ones not chosen."""
    chosen = set(params.get(parameters.METHODS) or ())
    return [s.name for s in catalogue.STAGES if not s.switchable or s.name in chosen]


BACKFILL_FIRST = (
    inspect.Parameter("start", inspect.Parameter.KEYWORD_ONLY, annotation=str),
    inspect.Parameter("end", inspect.Parameter.KEYWORD_ONLY, annotation=str),
)


@flow(name=settings.BACKFILL_FLOW_NAME, flow_run_name="backfill-{start}..{end}", persist_result=False,
      validate_parameters=True)
@with_signature(model_signature(exclude=("as_of",), first=BACKFILL_FIRST))
def backfill(start: str, end: str, **kwargs: Any) -> list[tuple[Manifest, bool]]:
    """One segmentation per month from start to end (YYYY-MM), in order: month t's ids need t-1's.

    Each month is a child flow run named segmentation-YYYY-MM. A month that already has an
    equivalent completed run (same input, parameters and code, continuing the ids of the previous
    month's current run) is kept, not run again. Returns (manifest, reused) per month; a failed
    month stops the backfill, its error carrying the months done so far as `done`.
    """
    params = parameters.validate(kwargs, "backfill").model_dump()
    months = run_folders.month_range(start, end)
    artifacts = Path(params["artifacts"])
    # A file is hashed once for all months (each month's ingest is then cached); a database is
    # read per month, each month's lines into its own snapshot.
    info = None if postgres.is_url(params["input_path"]) else run_folders.resolve_input(params, artifacts)[0]
    logger = get_run_logger()
    done: list[tuple[Manifest, bool]] = []
    for month in months:
        if postgres.is_url(params["input_path"]):
            info = run_folders.resolve_input(params | {"as_of": month}, artifacts)[0]
        kept = run_folders.reusable_run(artifacts, month, params | {"as_of": month}, info.sha256)
        if kept is not None:
            logger.info("%s: kept run %s (same input, parameters, code and previous month)", month, kept.run_id)
            done.append((kept, True))
            continue
        try:
            manifest = segmentation(**params | {"as_of": month}, input_sha256=info.sha256)
        except BaseException as exc:
            exc.done = done
            raise
        done.append((manifest, False))
    return done


def write_report(manifest: Manifest) -> None:
    """The run's report.html, for the people who act on the segments (see flows/report/)."""
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


def prepare_run(values: dict[str, Any], *, refresh: bool = False, from_stage: str | None = None,
                run_id: str | None = None, input_sha256: str | None = None) -> tuple[RunContext, run_folders.RunLedger]:
    """A new run from its parameters, or an earlier one reopened (resume, or a retry of this flow run)."""
    to_refresh = stages_to_refresh(refresh, from_stage)
    artifacts = Path(values.get("artifacts") or parameters.declared()["artifacts"].default)
    earlier = (run_folders.find_run(artifacts, run_id) if run_id
               else run_folders.find_flow_run(artifacts, flow_run.get_id()))
    if earlier is not None:
        return run_folders.reopen(earlier, flow_run_id=flow_run.get_id(), refresh=to_refresh)
    params = parameters.validate(values).model_dump()
    if params["as_of"] == settings.SCHEDULED:
        params["as_of"] = scheduled_month()
    run_folders.parse_month(params["as_of"])
    return run_folders.start(artifacts, params, flow_run_id=flow_run.get_id(), refresh=to_refresh,
                             input_sha256=input_sha256)


def scheduled_month() -> str:
    """The month of this run's scheduled start, in the deployment schedule's time zone.

    The run scheduled for 2012-01-01 06:00 therefore segments the invoices before 2012-01-01.
    """
    start = flow_run.get_scheduled_start_time()
    from prefect.runtime import deployment

    deployment_id = deployment.get_id()
    zone = settings.TIMEZONE
    if deployment_id:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            schedules = client.read_deployment(deployment_id).schedules
        zone = next((getattr(s.schedule, "timezone", None) for s in schedules
                     if getattr(s.schedule, "timezone", None)), zone)
    from zoneinfo import ZoneInfo

    return start.astimezone(ZoneInfo(zone)).strftime("%Y-%m")


def stages_to_refresh(refresh: bool, from_stage: str | None) -> frozenset[str]:
    """Every stage with --refresh; with --from-stage, that stage and every stage downstream of it."""
    if refresh:
        return frozenset(catalogue.BY_NAME)
    if from_stage is None:
        return frozenset()
    if from_stage not in catalogue.BY_NAME:
        raise ParameterError("run", f"--from-stage must be one of {', '.join(graph().order())}, got {from_stage!r}")
    return frozenset(graph().downstream(from_stage))
