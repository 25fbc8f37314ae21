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
os.environ.setdefault("DO_NOT_TRACK", "1")  # Prefect's client-side telemetry (a user's own choice is kept)

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import PrefectConcurrentFuture, PrefectFuture, as_completed  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.states import Completed  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

import prefect.flow_engine  # noqa: E402

from customer_segments.flows import audit, settings  # noqa: E402
from customer_segments.tasks import catalogue  # noqa: E402
from customer_segments.tasks.errors import ParameterError, PipelineError  # noqa: E402
from customer_segments.tasks.runtime import parameters, postgres, run_folders, worker_processes  # noqa: E402
from customer_segments.tasks.runtime.graph import pipeline as graph  # noqa: E402
from customer_segments.tasks.runtime.manifest import Manifest, RunContext, StageRecord, StageResult  # noqa: E402
from customer_segments.tasks.runtime.stage import Stage  # noqa: E402
from customer_segments.tasks.runtime import stage_runner  # noqa: E402
from customer_segments.tasks.runtime.stage_runner import compute_stage, gate_stage, run_stage  # noqa: E402


def _heartbeats_not_joined(engine, join_on_exit: bool = True):
    """Prefect's flow-run heartbeats, without waiting for their thread when the run ends.

    The heartbeat thread sleeps in one-second steps and checks for the end of the run between
    them; Prefect's synchronous engine joins it when the flow returns, so every flow run (each
    month of a backfill) ended 0-1 s after its work did (0.3-0.6 s measured). The thread stops by
    itself at its next step, and it is a daemon: nothing is lost by not waiting, which is what
    Prefect's asynchronous engine does (`join_on_exit=False`). Heartbeats while the run goes on
    are unchanged.
    """
    return _send_heartbeats(engine, join_on_exit=False)


# Prefect's own function (also when this module is imported again).
_send_heartbeats = getattr(prefect.flow_engine._send_heartbeats, "original", prefect.flow_engine._send_heartbeats)
_heartbeats_not_joined.original = _send_heartbeats
prefect.flow_engine._send_heartbeats = _heartbeats_not_joined


def stage_task(stage: Stage):
    """The Prefect task of a stage: compute it where the catalogue says and return the reference.

    Split (the default), the task computes and writes the outputs; the stage's gate task
    validates them and the flow publishes them. In line (the dask engine), the task does all three.
    """

    def run(context: RunContext, upstream: list[StageResult], inline: bool = False) -> Any:
        if stage.runs_in == "worker":
            result = worker_processes.run_stage_in_worker(stage.name, context, upstream, inline)
        else:
            result = (run_stage if inline else compute_stage)(stage, context, upstream)
        if result.record.status == "cached":
            return Completed(name="Cached", message="reused a verified cached output", data=result)
        return result

    run.__name__ = stage.name
    return task(name=stage.name, **task_options(stage))(run)


class GateFailed(PipelineError):
    """A critical expectation failed on an output; the flow rejects it when the stage would publish."""

    def __init__(self, stage: str, outcomes: dict[str, Any]):
        self.stage, self.outcomes = stage, outcomes
        failed = next(o for o in outcomes.values() if not o.passed)
        super().__init__(f"Stage {stage}: {failed.message}")

    def __reduce__(self):
        return (type(self), (self.stage, self.outcomes))


@dataclass
class Gates:
    """A gate task's result: the outcome per dataset. (An object, not a bare dict: Prefect links
    a dict result to its task by id(), which a later list of the flow may reuse.)"""

    outcomes: dict[str, Any]


def gate_task(stage: Stage):
    """The Prefect task validating what a stage computed, while later stages may compute from it."""

    def run(context: RunContext, computed: StageResult) -> Gates:
        outcomes = gate_stage(stage, context, computed)
        if not all(o.passed for o in outcomes.values()):
            raise GateFailed(stage.name, outcomes)
        return Gates(outcomes)

    run.__name__ = f"{stage.name}_gate"
    return task(name=f"{stage.name}.gate", **task_options(stage))(run)


def task_options(stage: Stage) -> dict[str, Any]:
    """What a stage's tasks share: no Prefect result caching (the stage runner's cache decides
    reuse), and the stage's retries of transient I/O errors, backing off 1, 2, 4 ... seconds."""
    return dict(cache_policy=NO_CACHE, persist_result=False, retries=stage.retries,
                retry_delay_seconds=[2 ** n for n in range(stage.retries)] or 0,
                retry_condition_fn=retry_transient_only)


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
GATES = {stage.name: gate_task(stage) for stage in catalogue.STAGES}


@task(name="open_run", cache_policy=NO_CACHE, persist_result=False)
def open_run(context: RunContext, sources: list[StageResult]) -> RunContext:
    """Fix the run's month from the data and name the flow run after it (the folder is made when
    the sources' gates have passed)."""
    newest = next((r.record.metrics["last_invoice"] for r in sources if "last_invoice" in r.record.metrics), None)
    decided = run_folders.decide_month(context, newest)
    label_flow_run(decided)
    get_run_logger().info("Run %s: as-of %s (invoices before %s), folder %s", decided.run_id,
                          decided.params["as_of"], decided.params["cutoff"][:10], decided.run_dir)
    return decided


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


# On the dask engine, how many stages without a twin compute at once in the flow's process. At 100
# million lines, with two: 354 s and 9.5 GiB at most over all processes; with one per ready stage
# (up to five): 350 s and 10.3 GiB; on the cluster as before: 365 s and 6.3 GiB (one run each).
HERE_THREADS = 2


class Walk:
    """Runs the enabled stages of the catalogue, each as soon as the datasets it reads exist.

    A stage goes through three steps: its task computes and writes the outputs into the cache;
    its gate task validates them (in the validator process) while later stages already compute
    from them; the flow publishes it (entry marked complete, files linked into the run folder,
    manifest) once its gates passed and every stage upstream of it is published. A failed gate
    fails its stage as a failed stage would, and what was computed from its data is discarded,
    never published nor reused. With `inline` (the dask engine) a stage's task does all three.

    Stages without inputs (ingest) run first, with the run not yet in a folder; once they are
    computed the run's month is fixed from the data and last month's run looked up; the folder
    opens when their gates have passed. On a failure nothing new starts; the stages already
    running finish and are recorded.

    On the dask engine, the stages with a dask twin run on the cluster (the flow's task runner);
    the others (per-customer tables and models, which compute in one pandas process wherever
    they run) compute here, in threads of the flow's process, as on the pandas engine. On the
    cluster they held a worker's only thread for minutes (at 100 million lines the lifetime
    value 48 s, CHAID 21 s) while the best sellers' partition tasks waited for it.
    """

    def __init__(self, context: RunContext, ledger: run_folders.RunLedger, stages: list[str], inline: bool = False):
        self.context: RunContext = context
        # What tasks get as the context: the open_run future once the month is fixed, so that
        # Prefect links them to open_run instead of searching the context's values.
        self.passed: RunContext | PrefectFuture = context
        self.ledger = ledger
        self.inline = inline
        self.todo = list(stages)
        self.enabled = set(stages)
        self.done: dict[str, PrefectFuture] = {}        # computed: the futures later stages read
        self.computed: dict[str, StageResult] = {}      # computed, not yet published
        self.used: dict[str, RunContext] = {}           # the context each stage computed with
        self.outcomes: dict[str, Any] = {}              # gate results (or the GateFailed) by stage
        self.published: dict[str, StageResult] = {}
        self.running: dict[PrefectFuture, tuple[str, str]] = {}  # future -> ("compute" | "gate", stage)
        self.held: dict[str, BaseException] = {}        # failed before their upstream was published
        self.handed_over: set[str] = set()               # datasets the worker has read ahead
        self.previous: StageResult | None = None
        self.decided = self.opened = False
        # Every task result stays referenced until the run ends: Prefect links results (and the
        # dicts inside them) to their task runs by id(), which a freed object would hand on to
        # an unrelated list passed to a later task.
        self.kept: list[Any] = []
        self.here: ThreadPoolTaskRunner | None = None  # the dask engine's stages without a twin

    def run(self) -> None:
        if not self.inline:
            return self._walk()
        with ThreadPoolTaskRunner(max_workers=HERE_THREADS) as self.here:
            return self._walk()

    def _walk(self) -> None:
        first_error: BaseException | None = None
        while True:
            first_error = self._publish_what_can_be(first_error)
            if first_error is None and not self.held:
                try:
                    self._decide_when_sources_are_computed()
                    for name in [n for n in self.todo if self._ready(n)]:
                        self._submit(name)
                    self._hand_over_to_the_worker()
                except BaseException as exc:  # the run's month could not be fixed
                    first_error = exc
            if not self.running:
                if first_error is not None or self.held or not (self.todo or self.computed):
                    break
                raise RuntimeError("no stage can start: " + ", ".join(self.todo or self.computed))
            future = next(as_completed(list(self.running)))
            kind, name = self.running.pop(future)
            try:
                value = future.result()
                self.kept.append(value)
            except GateFailed as exc:
                value = exc
            except BaseException as exc:
                self.computed.pop(name, None)
                # A stage that failed on data whose gates are still running: its error counts
                # once they pass; if one fails, that failure is the run's (see _publish_what_can_be).
                self.held[name] = exc
                continue
            if kind == "gate":
                self.outcomes[name] = value
            else:
                self._computed(name, future, value)
        for name, result in self.computed.items():  # its data failed a gate upstream
            stage_runner.discard(catalogue.BY_NAME[name], self.used[name], result)
            self.ledger.discarded(name)
        for name in self.held:  # failed on data that failed a gate upstream
            self.ledger.discarded(name)
        if first_error is not None:
            raise first_error

    def _computed(self, name: str, future: PrefectFuture, result: StageResult) -> None:
        self.done[name] = future
        self.computed[name] = result
        if result.record.status == "computed" and catalogue.BY_NAME[name].outputs:
            passed = self.passed if self.used[name] is self.context else self.used[name]
            self.running[GATES[name].submit(passed, future)] = ("gate", name)
            self.ledger.computed(name)
        else:
            self.outcomes[name] = Gates({})

    def _hand_over_to_the_worker(self) -> None:
        """A dataset the worker's stages read moves there once this process's own stages that read
        it are computed (graph.to_hand_over): the worker reads it while they go on (the clean
        lines, while the customers are segmented), and this process drops its copy. Only when
        the worker is idle, once the data passed its gates (the validator has let its copy go:
        at ten million lines reading beside it took all processes to 4.1 GiB at once), and only
        what this run computed: reused data likely feeds reused stages."""
        if self.inline or any(kind == "compute" and catalogue.BY_NAME[name].runs_in == "worker"
                              for kind, name in self.running.values()):
            return
        ready = graph().to_hand_over(self.todo, self.enabled, self.done)
        for dataset, stages in ready.items():
            producer = graph().producer[dataset]
            made = self.published.get(producer)
            if dataset in self.handed_over or made is None or made.record.status == "cached":
                continue
            ref = made.dataset(dataset)
            if ref is not None and ref.is_table and not ref.is_partitioned:
                self.handed_over.add(dataset)
                if worker_processes.hand_over(self.context, ref):
                    get_run_logger().info("%s: read ahead by the worker process for %s", dataset, ", ".join(stages))

    def _publish_what_can_be(self, first_error: BaseException | None) -> BaseException | None:
        """Publish every stage whose gates passed and whose upstream stages are all published."""
        progressed = True
        while progressed:
            progressed = False
            for name in [n for n in self.held if self._upstream_published(n)]:
                exc = self.held.pop(name)
                self.ledger.failed(name, exc)
                first_error = first_error or exc
            for name in [n for n in self.computed if n in self.outcomes and self._upstream_published(n)]:
                stage, result = catalogue.BY_NAME[name], self.computed.pop(name)
                outcome = self.outcomes.pop(name)
                outcomes = outcome.outcomes
                progressed = True
                try:
                    published = stage_runner.publish_stage(stage, self.used[name], result, outcomes)
                except BaseException as exc:
                    self.ledger.failed(name, exc)
                    first_error = first_error or exc
                    continue
                self.published[name] = published
                self.ledger.finished(published)
                get_run_logger().info(audit.stage_line(published, self._upstream_results(stage)))
                try:
                    self._open_when_sources_are_published()
                except BaseException as exc:
                    first_error = first_error or exc
        return first_error

    def _upstream_results(self, stage: Stage) -> list[StageResult]:
        found = {**self.published, **({catalogue.PREVIOUS.name: self.previous} if self.previous else {})}
        return [found[p] for p in graph().upstream_stages(stage) if p in found]

    def _upstream_published(self, name: str) -> bool:
        stage = catalogue.BY_NAME[name]
        if stage.inputs and not self.opened:
            return False
        return all(p in self.published or p == catalogue.PREVIOUS.name or p not in self.enabled
                   for p in graph().upstream_stages(stage))

    def _sources(self) -> list[str]:
        return [s.name for s in catalogue.STAGES if not s.inputs]

    def _decide_when_sources_are_computed(self) -> None:
        sources = self._sources()
        if self.decided or any(n in self.todo or n in self.enabled and n not in self.done for n in sources):
            return
        dated = self.context.run_dir is not None or self.context.params.get("as_of") or any(
            self.computed[n].record.metrics.get("last_invoice") for n in sources if n in self.computed)
        if not dated and any(n in self.enabled and n not in self.published for n in sources):
            return  # nothing to date the run by: the sources' gates say what is wrong first
        decided = open_run.submit(self.context, [self.done[n] for n in sources if n in self.done])
        self.context, self.passed = decided.result(), decided
        self._skip_what_the_input_cannot_feed([(self.published.get(n) or self.computed[n])
                                               for n in sources if n in self.done])
        previous = previous_run.submit(self.passed)
        self.previous = previous.result()
        self.done[catalogue.PREVIOUS.name] = previous
        self.decided = True
        self._open_when_sources_are_published()

    def _open_when_sources_are_published(self) -> None:
        """The run folder exists once the sources' gates passed (a bad input leaves no run folder)."""
        if self.opened or not self.decided or any(n in self.enabled and n not in self.published
                                                  for n in self._sources()):
            return
        opened = run_folders.open_folder(self.context)
        self.ledger.opened(opened)
        self.ledger.previous(self.previous)
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
            self.enabled.discard(name)
            self.ledger.skipped(name, reasons[name])

    def _ready(self, name: str) -> bool:
        stage = catalogue.BY_NAME[name]
        # Split, a stage computes once the run's month is fixed; in line, it also publishes, so
        # it waits for the run folder.
        if stage.inputs and not (self.opened if self.inline else self.decided):
            return False
        producers = graph().upstream_stages(stage)
        return all(p in self.done or p not in self.enabled and p != catalogue.PREVIOUS.name for p in producers)

    def _submit(self, name: str) -> None:
        stage = catalogue.BY_NAME[name]
        upstream = [self.done[p] for p in graph().upstream_stages(stage) if p in self.done]
        self.todo.remove(name)
        self.used[name] = self.context
        self.ledger.started(name)
        if self.here is not None and stage.dask_transform is None:
            future = self.here.submit(TASKS[name], {"context": self.passed, "upstream": upstream, "inline": True})
        else:
            # A future of this process's threads cannot travel to the cluster: its (finished) result does.
            upstream = [f.result() if self.here is not None and isinstance(f, PrefectConcurrentFuture) else f
                        for f in upstream]
            future = TASKS[name].submit(self.passed, upstream, self.inline)
        self.running[future] = ("compute", name)


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
    stage_runner.warm_imports()
    enabled = graph().runnable(stage_switches(context.params))
    try:
        Walk(context, ledger, enabled, inline=context.params.get("engine") == "dask").run()
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
