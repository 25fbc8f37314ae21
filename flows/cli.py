"""The `segment` command line. Heavy libraries load only inside the command that needs them.

Commands that talk to Prefect first make sure there is a server to talk to (`_connect`): the
one PREFECT_API_URL names, or else the local server this package keeps running in the background
(see flows/server/local.py). That happens before Prefect is imported, which reads the URL.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from customer_segments.flows import settings
from customer_segments.flows.options import RunValues, with_run_options
from customer_segments.flows.server import server_app
from customer_segments.tasks import catalogue
from customer_segments.tasks.runtime.graph import pipeline

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")  # Prefect's client-side telemetry (a user's own choice is kept)
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    help="Customer segmentation of retail invoice lines, run as a Prefect flow with versioned artifacts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(server_app, name="server")

ARTIFACTS = catalogue.ARTIFACTS.default
ENGINE = catalogue.ENGINE.default


def graph_order() -> list[str]:
    return pipeline().order()


ArtifactsOption = Annotated[Path, typer.Option("--artifacts", help="Folder holding the run folders.")]
JsonOption = Annotated[bool, typer.Option("--json", help="End stdout with one JSON line describing the run.")]
VerboseOption = Annotated[bool, typer.Option("--verbose", help="Show Prefect's run logs and tracebacks.")]
RefreshOption = Annotated[bool, typer.Option("--refresh", help="Recompute every stage, ignoring cached outputs.")]
FromStageOption = Annotated[Optional[str], typer.Option(
    "--from-stage", help="Recompute this stage and every stage downstream of it: "
                         + ", ".join(graph_order()) + ".")]
DaskAddressOption = Annotated[Optional[str], typer.Option(
    "--dask-address", help="Scheduler of an existing dask cluster, e.g. tcp://HOST:8786 (with --engine dask); "
                           "default: a local cluster of two worker processes.")]
CronOption = Annotated[str, typer.Option("--cron", help="When to run (cron, in --timezone).")]
TimezoneOption = Annotated[str, typer.Option("--timezone", help="IANA time zone of the cron schedule.")]
RunIdArgument = Annotated[str, typer.Argument(help="Run id, as printed by `segment run` and `segment history`.")]
# `serve` and `deploy` name the input the landing path, read by every scheduled run.
LANDING = {"input_path": ("--landing",)}


@app.command()
@with_run_options()
def run(
    run: RunValues,
    dask_address: DaskAddressOption = None,
    refresh: RefreshOption = False,
    from_stage: FromStageOption = None,
    json_out: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Run the segmentation on an invoice export and write a new versioned run folder.

    Stages whose inputs, parameters and code are unchanged reuse their verified cached outputs.
    """
    values = _checked(run, "run")
    _run_flow(dict(values, refresh=refresh, from_stage=from_stage), json_out, verbose, values["engine"], dask_address)


def _checked(run: RunValues, command: str) -> dict:
    """The run's parameters checked by the model; a bad value ends the command with its paragraph.

    A database URL's password is taken out here, before the parameters reach Prefect: it goes to
    this process's environment for libpq (see tasks/runtime/postgres.py) and nowhere else.
    """
    from customer_segments.tasks.errors import PipelineError, UsageError
    from customer_segments.tasks.runtime import parameters, postgres

    try:
        values = parameters.validate(run.values, command).model_dump()
        for key in ("input_path", "export_to"):
            url = values.get(key)
            if postgres.is_url(url):
                if command == "deploy" and postgres.safe_url(url) != url:
                    raise UsageError(command, "a deployment's parameters are stored on the Prefect server, so a "
                                              "database URL must not hold a password: give the workers PGPASSWORD or "
                                              "~/.pgpass")
                values[key] = postgres.take_password(url)
        return values
    except PipelineError as exc:
        typer.echo(f"Error: {postgres.scrub(str(exc))}", err=True)
        raise typer.Exit(exc.exit_code) from None


BASKET_PARAMS = tuple(p.name for p in catalogue.BY_NAME["basket"].params)


@app.command()
@with_run_options(include=("input_path", "as_of", "encoding", "date_format", *BASKET_PARAMS), switches=False)
def basket(
    run: RunValues,
    country: Annotated[Optional[str], typer.Option("--country", help="Only the invoices of this country.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Rules to print, strongest lift first.")] = 20,
    out: Annotated[Optional[Path], typer.Option("--out", help="Also write every rule to this .csv or .parquet file.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per rule instead of a table.")] = False,
) -> None:
    """Association rules of a whole file (or one country), without segmentation: the classic basket analysis.

    The same cleaning, thresholds and list of service codes (postage, fees, vouchers) as the pipeline.
    """
    from customer_segments.tasks.errors import PipelineError

    values = _checked(run, "basket")
    try:
        rules = _basket_rules(values, country)
    except PipelineError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    if out is not None:
        write_table(rules, out)
    shown = rules.head(top)
    if json_out:
        for row in shown.to_dict(orient="records"):
            typer.echo(json.dumps(row, default=str))
        return
    from customer_segments.flows import audit

    columns = ["antecedent_names", "consequent_names", "support", "confidence", "lift", "baskets"]
    rows = shown[columns].round({"support": 4, "confidence": 3, "lift": 2}).rename(
        columns={"antecedent_names": "if a basket has", "consequent_names": "it also has"}).to_dict(orient="records")
    typer.echo(audit.format_table(rows) if rows else "No rules at these thresholds.")
    typer.echo(f"{len(rules):,} rule(s){f' for {country}' if country else ''}; {min(top, len(rules))} shown.")


def _basket_rules(values: dict, country: str | None):
    import pandas as pd

    from customer_segments.tasks.errors import ParameterError
    from customer_segments.tasks.inputs.readers import read_invoices
    from customer_segments.tasks.methods.basket import basket_table
    from customer_segments.tasks.methods.products import load_service_codes
    from customer_segments.tasks.runtime import run_folders
    from customer_segments.tasks.segmentation.cleaning import clean_invoices

    raw = read_invoices(values["input_path"], encoding=values["encoding"], date_format=values["date_format"])
    month = run_folders.parse_month(values["as_of"]) or pd.Timestamp(raw["InvoiceDate"].max()).to_period("M")
    clean = clean_invoices(raw, month.start_time)
    try:
        return basket_table(clean, load_service_codes(), country, min_share=values["basket_min_support"],
                            min_baskets=values["basket_min_baskets"], min_lift=values["basket_min_lift"],
                            max_len=values["basket_max_len"], sample_error=values["basket_sample_error"])
    except ValueError as exc:
        raise ParameterError("basket", str(exc)) from None


@app.command()
@with_run_options(exclude=("as_of",))
def backfill(
    run: RunValues,
    start: Annotated[str, typer.Option("--from", help="First month to segment (YYYY-MM).")] = ...,
    end: Annotated[str, typer.Option("--to", help="Last month to segment (YYYY-MM).")] = ...,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON line per month, then a summary line.")] = False,
    verbose: VerboseOption = False,
) -> None:
    """Segment every month from --from to --to in order, so that segment ids carry from month to month.

    Months that already have an equivalent completed run (same input, every parameter, same code)
    are kept; rerunning the same command therefore only runs what is missing or out of date.
    """
    values = _checked(run, "backfill")
    values.pop("as_of")  # each month is one of --from..--to
    _helpers().start()
    try:
        _connect()
        from customer_segments.flows import progress
        from customer_segments.flows.pipeline import backfill as backfill_flow
        from customer_segments.tasks.errors import PipelineError

        _quiet_console(verbose)
        started = time.monotonic()
        try:
            with progress.shown(json_out):
                done = backfill_flow(start=start, end=end, **values)
            error = None
        except Exception as exc:
            if verbose:
                import traceback

                traceback.print_exc()
            done, error = getattr(exc, "done", []), exc
        for manifest, reused in done:
            typer.echo(json.dumps(manifest.summary() | {"reused": reused}) if json_out else
                       f"{manifest.as_of}: run {manifest.run_id} {'kept' if reused else manifest.status}, "
                       f"k={manifest.k}, {_sizes_text(manifest)}, movers {manifest.fact('movers')}")
        failed = getattr(error, "manifest", None)
        if error is not None and json_out and failed is not None:
            typer.echo(json.dumps(failed.summary() | {"reused": False, "error": str(error)}))
        summary = {"backfill": "failed" if error else "completed", "from": start, "to": end, "window": values["window"],
                   "months": len(done) + (1 if failed is not None else 0), "computed": sum(not r for _, r in done),
                   "reused": sum(r for _, r in done), "seconds": round(time.monotonic() - started, 1)}
        if json_out:
            typer.echo(json.dumps(summary))
        if error is not None:
            message = str(error) if isinstance(error, PipelineError) else f"{type(error).__name__}: {error}"
            typer.echo(f"Error: {message}", err=True)
            raise typer.Exit(error.exit_code if isinstance(error, PipelineError) else 1)
        if not json_out:
            typer.echo(f"Backfill {start}..{end}: {summary['computed']} month(s) run, {summary['reused']} kept, "
                       f"{summary['seconds']} s.")
    finally:
        _helpers().stop()


@app.command()
def report(
    run_id: RunIdArgument,
    artifacts: ArtifactsOption = Path(ARTIFACTS),
    open_it: Annotated[bool, typer.Option("--open", help="Open the report in a web browser too.")] = False,
) -> None:
    """Print the path of a run's report.html (building it first for runs that have none), and open it."""
    from customer_segments.tasks.errors import PipelineError
    from customer_segments.tasks.runtime import run_folders

    try:
        run_dir = run_folders.find_run(artifacts, run_id, "report")
    except PipelineError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    from customer_segments.flows.report import build_report

    path = run_dir / "report.html"
    manifest = run_folders.read_manifest(run_dir)
    status = run_folders.status_of(manifest)
    if not path.exists() or status == run_folders.INTERRUPTED:
        path = build_report(run_dir)
    if status == run_folders.INTERRUPTED:
        typer.echo(f"Note: {run_folders.interrupted_note(manifest)}.", err=True)
    typer.echo(str(path.resolve()))
    if open_it:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            typer.echo(f"(no web browser here: open {path.resolve().as_uri()} yourself)")


@app.command()
def compare(
    run_a: Annotated[str, typer.Argument(help="The earlier run id.")],
    run_b: Annotated[str, typer.Argument(help="The later run id.")],
    artifacts: ArtifactsOption = Path(ARTIFACTS),
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per row instead of a table.")] = False,
) -> None:
    """Print how customers moved between the segments of any two runs."""
    from customer_segments.flows import audit
    from customer_segments.tasks.errors import PipelineError

    try:
        rows = audit.compare(artifacts, run_a, run_b)
    except PipelineError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    if json_out:
        for row in rows:
            typer.echo(json.dumps(row))
    else:
        typer.echo(audit.format_table(rows))


@app.command()
def resume(
    run_id: RunIdArgument,
    artifacts: ArtifactsOption = Path(ARTIFACTS),
    dask_address: DaskAddressOption = None,
    refresh: RefreshOption = False,
    from_stage: FromStageOption = None,
    json_out: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Complete a failed or interrupted run in its own folder: finished stages are reused."""
    from customer_segments.tasks.errors import PipelineError, UsageError
    from customer_segments.tasks.runtime import run_folders

    try:
        run_dir = run_folders.find_run(artifacts, run_id, "resume")
        manifest = run_folders.read_manifest(run_dir)
        if run_folders.is_alive(run_dir):
            raise UsageError("resume", f"run {run_id} is still running (its folder is held by another process); "
                                       "wait for it to end, or stop that process first")
    except PipelineError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    # The engine the run was made with: it is resumed the same way.
    engine = manifest.parameters.get("engine") or ENGINE
    _run_flow(dict(run_id=run_id, artifacts=str(artifacts), refresh=refresh, from_stage=from_stage), json_out, verbose,
              engine, dask_address)


@app.command()
def history(
    artifacts: ArtifactsOption = Path(ARTIFACTS),
    prefect: Annotated[bool, typer.Option("--prefect", help="List flow runs from the Prefect API instead of the manifests.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per run instead of a table.")] = False,
    limit: Annotated[int, typer.Option("--limit", help="Most recent runs to list (Prefect API).")] = 50,
) -> None:
    """List past runs: month, run id, status, k, customers, input sha256 prefix, duration.

    A run whose process ended before it did shows as interrupted, with the command that completes it.
    """
    if prefect:
        _connect()
    from customer_segments.flows import audit

    rows = audit.prefect_history(limit) if prefect else audit.manifest_history(artifacts)
    if json_out:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    typer.echo(audit.format_table(rows))
    for row in rows:
        if row.get("status") == "interrupted":
            typer.echo(f"Run {row['run_id']} was interrupted: `segment resume {row['run_id']}` completes it.")


@app.command()
@with_run_options(exclude=("as_of",), aliases=LANDING)
def serve(
    run: RunValues,
    cron: CronOption = settings.CRON,
    timezone: TimezoneOption = settings.TIMEZONE,
) -> None:
    """Serve the flow as the monthly deployment on a cron schedule (runs until stopped).

    Scheduled runs read --input (also --landing) and take every other run option given here.
    """
    values = _checked(run, "serve")
    _connect()
    from customer_segments.flows.deployment import serve_monthly

    serve_monthly(values, cron=cron, timezone=timezone)


@app.command()
@with_run_options(exclude=("as_of",), aliases=LANDING)
def deploy(
    run: RunValues,
    pool: Annotated[str, typer.Option("--pool", help="Work pool whose workers run the scheduled runs.")] = ...,
    cron: CronOption = settings.CRON,
    timezone: TimezoneOption = settings.TIMEZONE,
) -> None:
    """Register the monthly deployment on a work pool (run `prefect worker start --pool POOL` beside it)."""
    values = _checked(run, "deploy")
    _connect()
    from customer_segments.flows.deployment import deploy_monthly

    deployment_id = deploy_monthly(pool, values, cron=cron, timezone=timezone)
    typer.echo(f"Deployment {settings.FLOW_NAME}/{settings.DEPLOYMENT_NAME} ({deployment_id}) on work pool {pool!r}: "
               f"cron {cron!r} ({timezone}), landing {Path(values['input_path']).resolve()}, "
               f"artifacts {Path(values['artifacts']).resolve()}.")


@app.command()
def export(
    run_id: RunIdArgument,
    to: Annotated[str, typer.Option("--to", metavar="TARGET", help="A .csv or .parquet file, or a PostgreSQL table: "
                                    "postgresql://USER@HOST:PORT/DB?table=SCHEMA.TABLE (default table "
                                    "customer_segments; the password from PGPASSWORD, ~/.pgpass or the URL).")],
    artifacts: ArtifactsOption = Path(ARTIFACTS),
    json_out: Annotated[bool, typer.Option("--json", help="One JSON line describing the export.")] = False,
) -> None:
    """Export a completed run's customer table (one row per customer) where marketers act."""
    from customer_segments.tasks.errors import PipelineError
    from customer_segments.tasks.runtime import exports, postgres, run_folders

    try:
        target = postgres.take_password(to) if postgres.is_url(to) else to
        done = exports.export_run(run_folders.find_run(artifacts, run_id, "export"), target)
    except PipelineError as exc:
        typer.echo(f"Error: {postgres.scrub(str(exc))}", err=True)
        raise typer.Exit(exc.exit_code) from None
    typer.echo(json.dumps(done) if json_out else
               f"Exported {done['rows']:,} customers of run {run_id} to {done['target']} in {done['seconds']} s.")


@app.command()
def assign(
    run_id: RunIdArgument,
    input: Annotated[Path, typer.Option("--input", help="Invoice lines to assign: a file or folder as `segment run` "
                                                         "reads, with the run's column mapping.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the assigned customers: .csv or .parquet.")],
    as_of: Annotated[Optional[str], typer.Option("--as-of", metavar="YYYY-MM", help="Use the lines before this "
                                                 "month (default: the run's cutoff), with the run's window.")] = None,
    artifacts: ArtifactsOption = Path(ARTIFACTS),
) -> None:
    """Assign the customers of new invoice lines to a run's segments, without refitting.

    Their features come from their lines (the run's cleaning rules and cutoff, or --as-of); each
    is ranked among the run's customers as the run ranked them, and the customer goes to the
    nearest segment center.
    """
    from customer_segments.tasks.errors import PipelineError
    from customer_segments.tasks.runtime import assigning, run_folders

    try:
        done = assigning.assign_file(run_folders.find_run(artifacts, run_id, "assign"), input, out, as_of)
    except PipelineError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    typer.echo(f"Assigned {done['customers']:,} customers ({done['in_run']:,} of them in run {run_id}, "
               f"{done['new']:,} new) to its segments: {done['out']}")


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", help="File to write: .parquet, .csv or .xlsx; with --part-customers, a folder.")],
    customers: Annotated[int, typer.Option("--customers", min=10)] = 2000,
    months: Annotated[int, typer.Option("--months", min=2)] = 13,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    part_customers: Annotated[Optional[int], typer.Option(
        "--part-customers", min=10, help="Write a folder of Parquet parts of this many customers each, one at a "
                                         "time (for inputs larger than memory).")] = None,
) -> None:
    """Write synthetic invoice lines with planted customer segments."""
    from customer_segments.data.generator import generate as make
    from customer_segments.data.generator import generate_parts

    if part_customers:
        parts = generate_parts(out, customers=customers, months=months, seed=seed, part_customers=part_customers)
        import pyarrow.parquet as pq

        lines = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
        typer.echo(f"Wrote {lines:,} invoice lines of {customers:,} customers to {out} ({len(parts)} parts)")
        return
    invoices = make(customers=customers, months=months, seed=seed).invoices
    write_table(invoices, out)
    typer.echo(f"Wrote {len(invoices):,} invoice lines of {customers:,} customers to {out}")


def write_table(df, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".parquet":
        df.to_parquet(out, index=False)
    elif suffix == ".csv":
        df.to_csv(out, index=False)
    elif suffix == ".xlsx":
        df.to_excel(out, index=False, sheet_name="Online Retail")
    else:
        raise typer.BadParameter(f"unsupported file type {suffix or '(none)'}; use .parquet, .csv or .xlsx", param_hint="--out")


def _connect() -> None:
    """Point Prefect at a server before it is imported; a server that cannot start ends the command."""
    from customer_segments.flows.server import ensure_api_url
    from customer_segments.tasks.errors import PipelineError

    try:
        ensure_api_url(progress=lambda line: typer.echo(line, err=True))
    except PipelineError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


class _ConsoleFilter(logging.Filter):
    """Keep the terminal for the run's outcome: run logs stay in the Prefect UI and API.

    Without --verbose only errors from outside the flow and task runs reach the console (not
    Prefect's shutdown chatter), and never a pipeline error's traceback: the command prints that
    error as one paragraph.
    """

    RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        from customer_segments.tasks.errors import PipelineError

        if record.exc_info and isinstance(record.exc_info[1], PipelineError):
            return False
        if self.verbose:
            return True
        return record.levelno >= logging.ERROR and not record.name.startswith(self.RUN_LOGGERS)


def _quiet_console(verbose: bool) -> None:
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    setup_logging()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(_ConsoleFilter(verbose))


def _helpers():
    """The helper processes (quality gates, stages computed beside the run): see tasks/runtime/worker_processes.py."""
    from customer_segments.tasks.runtime import worker_processes

    return worker_processes


def _sizes_text(manifest) -> str:
    sizes = manifest.fact("segment_sizes") or {}
    return " ".join(f"{sid}:{n:,}" for sid, n in sizes.items())


def _run_flow(parameters: dict, json_out: bool, verbose: bool, engine: str = ENGINE,
              dask_address: str | None = None) -> None:
    """Run the flow and end the command the same way for run and resume: summary, JSON, exit code."""
    # Before anything else: the helpers' imports then overlap the server and Prefect's start-up.
    _helpers().start(worker=engine != "dask")
    try:
        _connect()
        from customer_segments.flows.pipeline import segmentation

        from customer_segments.flows import progress

        _quiet_console(verbose)
        flow = _with_engine(segmentation, engine, dask_address)

        def call():
            with progress.shown(json_out):
                return flow(**parameters)

        _finish(call, json_out, verbose)
    finally:
        _helpers().stop()


def _with_engine(flow, engine: str, dask_address: str | None):
    """The flow as it runs on the chosen engine: on dask, its tasks go to the cluster's workers."""
    if engine != "dask":
        if dask_address:
            raise typer.BadParameter("--dask-address goes with --engine dask", param_hint="--dask-address")
        return flow
    import dask
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return flow.with_options(task_runner=DaskTaskRunner(address=dask_address))
    # Read by the local cluster's nannies when they start the workers.
    key = "distributed.nanny.pre-spawn-environ"
    dask.config.set({key: {**dask.config.get(key, default={}), **settings.DASK_WORKER_MALLOC}})
    return flow.with_options(task_runner=DaskTaskRunner(
        cluster_kwargs={"n_workers": settings.DASK_WORKERS, "threads_per_worker": 1, "processes": True,
                        "memory_limit": settings.DASK_WORKER_MEMORY, "dashboard_address": None}))


def _finish(call, json_out: bool, verbose: bool) -> None:
    from customer_segments.tasks.errors import PipelineError

    try:
        manifest = call()
    except Exception as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        manifest = getattr(exc, "manifest", None)
        if isinstance(exc, PipelineError):
            message, code = str(exc), exc.exit_code
        else:
            message, code = f"{type(exc).__name__}: {exc} (rerun with --verbose for the traceback)", 1
        from customer_segments.tasks.runtime.postgres import scrub

        message = scrub(message)
        if manifest is not None and manifest.run_dir and not isinstance(exc, PipelineError):
            message += (f" Run {manifest.run_id} is kept in {manifest.run_dir}; after fixing the cause, "
                        f"`segment resume {manifest.run_id}` completes it.")
        typer.echo(f"Error: {message}", err=True)
        if json_out and manifest is not None:
            typer.echo(json.dumps(manifest.summary() | {"error": str(exc)}))
        raise typer.Exit(code) from None
    typer.echo(summary_text(manifest))
    if json_out:
        typer.echo(json.dumps(manifest.summary()))


def summary_text(manifest) -> str:
    window = f"the {manifest.window} months before" if manifest.window else "all invoices before"
    lines = [
        f"Run {manifest.run_id} {manifest.status}: as-of {manifest.as_of} ({window} {(manifest.cutoff or '')[:10]}), "
        f"{manifest.rows_clean or 0:,} of {manifest.fact('rows_in', 0):,} invoice lines kept, "
        f"{manifest.customers or 0:,} customers, k={manifest.k} (silhouette {manifest.silhouette}).",
    ]
    repeated = manifest.fact("repeated_across_files", 0)
    if manifest.fact("files", 1) > 1:
        lines.append(f"  read {manifest.fact('files')} files: {repeated:,} lines repeated across files "
                     "counted once")
    renamed = manifest.fact("renamed_columns") or {}
    if renamed:
        lines.append("  columns read as: " + ", ".join(f"{source} as {name}" for source, name in renamed.items())
                     + (" (the names of UCI's Online Retail II export)" if not manifest.parameters.get("columns")
                        else ""))
    if manifest.fact("generated_invoice_numbers"):
        lines.append("  the input has no invoice numbers: each line is one order")
    for stage, reason in manifest.skipped().items():
        lines.append(f"  skipped {stage}: {reason}")
    for stage, note in manifest.notes():
        lines.append(f"  {stage}: {note}")
    for rule, n in manifest.rows_dropped.items():
        if n or rule != "before_window":
            lines.append(f"  dropped {n:>9,} rows: {rule.replace('_', ' ')}")
    gates = manifest.gates()
    if gates:
        warnings = manifest.warnings()
        lines.append(f"  quality: {sum(g['success'] for _, _, g in gates)} of {len(gates)} gates passed, "
                     f"{sum(g['evaluated'] for _, _, g in gates)} expectations, {len(warnings)} warning(s)")
        lines += [f"    {w}" for w in warnings]
    profiles = Path(manifest.run_dir) / "segment_profiles.parquet"
    if profiles.exists():
        import pandas as pd

        table = pd.read_parquet(profiles)
        for row in table.to_dict(orient="records"):
            lineage = f" [{row['segment_id']}, {row['transition']}" + (
                f" from {row['came_from']}" if row.get("came_from") and row["transition"] != "survived" else "") + (
                f", {row['stability_reading']} {row['stability']:.2f}]" if "stability" in row else "]") \
                if "segment_id" in row else ""
            lines.append(
                f"  segment {row['segment']}: {row['segment_name']:<36} {row['size']:>7,} customers ({row['share']:.0%}), "
                f"mean sales {row['mean_TotalSales']:,.0f}, orders {row['mean_OrderCount']:.1f}, "
                f"order value {row['mean_AvgOrderValue']:,.0f}{lineage}"
            )
    if manifest.previous:
        lines.append(f"  since {manifest.previous['as_of']} (run {manifest.previous['run_id']}): "
                     f"{manifest.fact('movers', 0):,} customers changed segment, "
                     f"{manifest.fact('new_customers', 0):,} new, "
                     f"{manifest.fact('lapsed_customers', 0):,} lapsed")
    for export in getattr(manifest, "exports", []) or []:
        if export.get("status") == "completed":
            lines.append(f"  exported {export.get('rows', 0):,} customers to {export['target']}")
        else:
            lines.append(f"  the export to {export['target']} failed: {export.get('error')}; the run is complete, and "
                         f"`segment export {manifest.run_id} --to TARGET` redoes it")
    lines.append(f"Results: {manifest.run_dir}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
