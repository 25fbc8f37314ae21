"""The `segment` command line. Heavy libraries load only inside the command that needs them."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

app = typer.Typer(
    help="Customer segmentation of retail invoice lines, run as a Prefect flow with versioned artifacts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ArtifactsOption = Annotated[Path, typer.Option("--artifacts", help="Folder holding the run folders.")]
JsonOption = Annotated[bool, typer.Option("--json", help="End stdout with one JSON line describing the run.")]
VerboseOption = Annotated[bool, typer.Option("--verbose", help="Show Prefect's run logs and tracebacks.")]
RefreshOption = Annotated[bool, typer.Option("--refresh", help="Recompute every stage, ignoring cached outputs.")]
FromStageOption = Annotated[Optional[str], typer.Option(
    "--from-stage", help="Recompute this stage and all after it: ingest, clean, features, normalize, select_k, cluster, profile, plots.")]


@app.command()
def run(
    input: Annotated[Path, typer.Option("--input", help="Invoice export: .xlsx, .csv, .parquet or a folder of them.")] = Path("data/incoming"),
    as_of: Annotated[Optional[str], typer.Option("--as-of", help="Month to segment up to (YYYY-MM); invoices before its first day are used. Default: the newest invoice's month.")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Number of segments; default: best silhouette.")] = None,
    k_min: Annotated[int, typer.Option("--k-min", help="Smallest k scored by silhouette.")] = 4,
    k_max: Annotated[int, typer.Option("--k-max", help="Largest k scored by silhouette.")] = 8,
    artifacts: ArtifactsOption = Path("artifacts"),
    refresh: RefreshOption = False,
    from_stage: FromStageOption = None,
    json_out: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Run the segmentation on an invoice export and write a new versioned run folder.

    Stages whose inputs, parameters and code are unchanged reuse their verified cached outputs.
    """
    _start_validator()
    from flows.pipeline import segmentation

    parameters = dict(input_path=str(input), as_of=as_of, k=k, k_min=k_min, k_max=k_max,
                      artifacts=str(artifacts), refresh=refresh, from_stage=from_stage)
    _finish(lambda: segmentation(**parameters), json_out, verbose)


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="Run id, as printed by `segment run` and `segment history`.")],
    artifacts: ArtifactsOption = Path("artifacts"),
    refresh: RefreshOption = False,
    from_stage: FromStageOption = None,
    json_out: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Complete a failed or interrupted run in its own folder: finished stages are reused."""
    _start_validator()
    from flows.pipeline import segmentation

    _finish(lambda: segmentation(run_id=run_id, artifacts=str(artifacts), refresh=refresh, from_stage=from_stage),
            json_out, verbose)


@app.command()
def history(
    artifacts: ArtifactsOption = Path("artifacts"),
    prefect: Annotated[bool, typer.Option("--prefect", help="List flow runs from the Prefect API instead of the manifests.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per run instead of a table.")] = False,
    limit: Annotated[int, typer.Option("--limit", help="Most recent runs to list (Prefect API).")] = 50,
) -> None:
    """List past runs: month, run id, status, k, customers, input sha256 prefix, duration."""
    from flows import audit

    rows = audit.prefect_history(limit) if prefect else audit.manifest_history(artifacts)
    if json_out:
        for row in rows:
            typer.echo(json.dumps(row))
    else:
        typer.echo(audit.format_table(rows))


@app.command()
def serve(
    cron: Annotated[str, typer.Option("--cron", help="When to run (cron, in --timezone).")] = "0 6 1 * *",
    timezone: Annotated[str, typer.Option("--timezone", help="IANA time zone of the cron schedule.")] = "UTC",
    landing: Annotated[Path, typer.Option("--landing", help="File or folder of exports that scheduled runs read.")] = Path("data/incoming"),
    artifacts: ArtifactsOption = Path("artifacts"),
) -> None:
    """Serve the flow as the deployment "monthly-segmentation" on a cron schedule (runs until stopped)."""
    from flows.deployment import serve_monthly

    serve_monthly(cron=cron, timezone=timezone, landing=str(landing), artifacts=str(artifacts))


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", help="File to write: .parquet, .csv or .xlsx.")],
    customers: Annotated[int, typer.Option("--customers", min=10)] = 2000,
    months: Annotated[int, typer.Option("--months", min=2)] = 13,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Write synthetic invoice lines with planted customer segments."""
    from data.generator import generate as make

    invoices = make(customers=customers, months=months, seed=seed).invoices
    write_table(invoices, out)
    typer.echo(f"Wrote {len(invoices):,} invoice lines of {customers:,} customers to {out}")


def _start_validator() -> None:
    """Before Prefect is even imported: Great Expectations' import then overlaps the start-up."""
    from tasks import gates

    gates.start_validator()


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
        from tasks.errors import PipelineError

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


def _finish(call, json_out: bool, verbose: bool) -> None:
    """Run a flow call and end the command the same way for run and resume: summary, JSON, exit code."""
    from tasks.errors import PipelineError

    _quiet_console(verbose)
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
        if manifest and manifest.get("run_dir") and not isinstance(exc, PipelineError):
            message += f" Run {manifest['run_id']} is kept in {manifest['run_dir']}; after fixing the cause, " \
                       f"`segment resume {manifest['run_id']}` completes it."
        typer.echo(f"Error: {message}", err=True)
        if json_out and manifest:
            typer.echo(json.dumps(run_summary(manifest) | {"error": str(exc)}))
        raise typer.Exit(code) from None
    typer.echo(summary_text(manifest))
    if json_out:
        typer.echo(json.dumps(run_summary(manifest)))


def run_summary(manifest: dict) -> dict:
    stages = manifest.get("stages", {})
    k_facts = stages.get("select_k", {}).get("metrics", {})
    return {
        "run_id": manifest["run_id"],
        "run_dir": manifest.get("run_dir"),
        "as_of": manifest.get("as_of"),
        "status": manifest["status"],
        "k": k_facts.get("k"),
        "silhouette": k_facts.get("silhouette"),
        "customers": stages.get("features", {}).get("metrics", {}).get("customers"),
        "rows_clean": stages.get("clean", {}).get("metrics", {}).get("rows_clean"),
        "input_sha256": manifest.get("input", {}).get("sha256"),
        # A resumed run reports the flow run that completed it.
        "flow_run_id": (manifest.get("resumed") or [manifest])[-1].get("flow_run_id"),
    }


def summary_text(manifest: dict) -> str:
    facts = run_summary(manifest)
    clean = manifest["stages"].get("clean", {}).get("metrics", {})
    lines = [
        f"Run {facts['run_id']} {facts['status']}: as-of {facts['as_of']}, "
        f"{clean.get('rows_clean', 0):,} of {clean.get('rows_in', 0):,} invoice lines kept, "
        f"{facts['customers']:,} customers, k={facts['k']} (silhouette {facts['silhouette']}).",
    ]
    for rule, n in clean.get("rows_dropped", {}).items():
        lines.append(f"  dropped {n:>9,} rows: {rule.replace('_', ' ')}")
    gated = [(d, g) for r in manifest["stages"].values() for d, g in (r.get("gates") or {}).items() if g]
    if gated:
        gates = [g for _, g in gated]
        warnings = [f"{d}: {w}" for d, g in gated for w in g.get("warnings", [])]
        lines.append(f"  quality: {sum(g['success'] for g in gates)} of {len(gates)} gates passed, "
                     f"{sum(g['evaluated'] for g in gates)} expectations, {len(warnings)} warning(s)")
        lines += [f"    {w}" for w in warnings]
    profiles = Path(manifest["run_dir"]) / "segment_profiles.parquet"
    if profiles.exists():
        import pandas as pd

        table = pd.read_parquet(profiles)
        for row in table.itertuples():
            lines.append(
                f"  segment {row.segment}: {row.segment_name:<36} {row.size:>7,} customers ({row.share:.0%}), "
                f"mean sales {row.mean_TotalSales:,.0f}, orders {row.mean_OrderCount:.1f}, order value {row.mean_AvgOrderValue:,.0f}"
            )
    lines.append(f"Results: {manifest['run_dir']}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
