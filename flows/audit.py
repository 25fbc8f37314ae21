"""Run history, the one-line stage log, and the Prefect artifacts that make each run auditable.

Artifact keys are stable, so the UI's Artifacts page shows each key's history across run_folders.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from customer_segments.tasks import catalogue
from customer_segments.tasks.runtime import run_folders
from customer_segments.tasks.runtime.manifest import Manifest, StageResult

SUMMARY_KEY = "segmentation-summary"
PROFILES_KEY = "segment-profiles"
QUALITY_KEY = "data-quality"
RUN_FOLDER_KEY = "run-folder"
REPORT_KEY = "run-report"
# The summary shows the plots in the catalogue's order: the segmentation's first, then the methods'.
PLOT_ORDER = {figure.stem: i for i, figure in enumerate(catalogue.FIGURES)}


def stage_line(result: StageResult, upstream: Sequence[StageResult]) -> str:
    """One line per stage for the run's log: rows in and out, cached or computed, the gates."""
    record = result.record
    rows_in = sum(ref.rows or 0 for r in upstream for ref in r.record.tables().values())
    outputs = ", ".join(f"{name} {ref.rows:,} rows" for name, ref in record.tables().items())
    figures = [ref for ref in record.outputs.values() if ref.file.startswith("plots/")]
    made = outputs or f"{len(figures)} figure(s)"
    how = "reused from cache" if record.status == "cached" else f"computed in {record.seconds:.2f} s"
    read = record.metrics.get("rows_read")
    taken = (f"{read:,} lines read from {record.metrics.get('files', 1)} file(s)" if not upstream and read is not None
             else f"{rows_in:,} rows in")
    line = f"{result.stage}: {taken} -> {made}; {how}"
    for dataset, gate in record.gates.items():
        line += (f"; gate {dataset}: {gate['evaluated']} expectations, {gate['failed_critical']} critical failed, "
                 f"{gate['failed_warning']} warning(s)")
    return line


def manifest_history(artifacts: Path) -> list[dict[str, Any]]:
    """Past runs from their manifests by month, with their segments by id and their lineage."""
    rows = []
    for m in sorted(run_folders.manifests(artifacts), key=lambda m: (m.as_of or "", m.run_id)):
        sizes = m.fact("segment_sizes") or {}
        rows.append({
            "month": m.as_of,
            "run_id": m.run_id,
            "status": run_folders.status_of(m),
            "window": m.window if m.window is not None else "all",
            "k": m.k,
            "customers": m.customers,
            "segments": " ".join(f"{sid}:{n:,}" for sid, n in sizes.items()),
            "movers": m.fact("movers"),
            "lineage": lineage_note(artifacts, m),
            "input": m.input.sha256[:12],
            "seconds": m.seconds,
            "run_dir": m.run_dir,
        })
    return rows


def lineage_note(artifacts: Path, manifest: Manifest) -> str:
    """Whose ids a run continues, and whether the previous month has been rerun since ("stale")."""
    if manifest.status != "completed" or manifest.as_of is None or manifest.fact("segment_sizes") is None:
        return ""
    recorded = (manifest.previous or {}).get("run_id")
    now = run_folders.previous_run(artifacts, manifest.as_of, manifest.parameters)
    current = now.run_id if now is not None else None
    if recorded == current:
        return f"follows {recorded}" if recorded else "first"
    # Never rewritten silently: the run keeps its ids, and says how to follow the newer month.
    return f"stale: {now.as_of if now else 'the previous month'} has run {current} since; backfill from {manifest.as_of}"


def compare(artifacts: Path, run_a: str, run_b: str) -> list[dict[str, Any]]:
    """The migration between any two runs' segments (run_a before, run_b after)."""
    import pandas as pd

    from customer_segments.tasks.segmentation.migration import migration

    def labels(run_id: str) -> pd.DataFrame:
        frame = pd.read_parquet(run_folders.find_run(artifacts, run_id, "compare") / "cluster_labels.parquet")
        if "segment_id" not in frame:  # a run made before segment ids existed
            frame["segment_id"] = "segment " + frame["segment"].astype("str")
        return frame

    table, _ = migration(labels(run_b), labels(run_a))
    return table.round({"revenue_before": 2, "revenue_after": 2}).to_dict(orient="records")


def prefect_history(limit: int = 50) -> list[dict[str, Any]]:
    """Flow runs of the segmentation flow as the Prefect API has them, newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    from customer_segments.flows.settings import FLOW_NAME

    with get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
            sort=FlowRunSort.START_TIME_DESC, limit=limit,
        )
    rows = []
    for fr in flow_runs:
        tags = dict(t.split(":", 1) for t in fr.tags if ":" in t)
        rows.append({
            "month": tags.get("as-of"),
            "flow_run": fr.name,
            "state": fr.state_name,
            "input": tags.get("input"),
            "start": fr.start_time.isoformat(timespec="seconds") if fr.start_time else None,
            "seconds": round(fr.total_run_time.total_seconds(), 1),
            "flow_run_id": str(fr.id),
        })
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No runs yet."
    columns = [c for c in rows[0] if c not in ("run_dir",)]
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def quality_rows(manifest: Manifest) -> list[dict[str, Any]]:
    """One row per quality gate of the run, in stage order."""
    return [{
        "stage": stage,
        "dataset": dataset,
        "success": gate.get("success"),
        "evaluated": gate.get("evaluated"),
        "failed_critical": gate.get("failed_critical"),
        "failed_warning": gate.get("failed_warning"),
        "warnings": "; ".join(gate.get("warnings", [])),
        "seconds": gate.get("seconds"),
    } for stage, dataset, gate in manifest.gates()]


def summary_markdown(manifest: Manifest, profiles: list[dict[str, Any]]) -> str:
    run_dir = Path(manifest.run_dir).resolve()
    lines = [
        f"# Segmentation {manifest.as_of}: run {manifest.run_id}",
        "",
        f"- **Input**: `{manifest.input.path}` (sha256 `{manifest.input.sha256[:12]}`, "
        f"{manifest.input.rows or 0:,} lines)",
        f"- **Cutoff**: invoices before {manifest.cutoff[:10]}",
        f"- **Kept**: {manifest.rows_clean or 0:,} of {manifest.fact('rows_in', 0):,} lines",
    ]
    for rule, n in manifest.rows_dropped.items():
        lines.append(f"  - dropped {n:,}: {rule.replace('_', ' ')}")
    lines += [
        f"- **k** = {manifest.k} (silhouette {manifest.silhouette}; best silhouette at k = "
        f"{manifest.fact('best_silhouette_k')}, elbow at k = {manifest.fact('elbow_k')})",
        "",
        "## Segments",
        "",
        "| segment | name | customers | share | mean sales | mean orders | mean order value |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in profiles:
        lines.append(
            f"| {p['segment']} | {p['segment_name']} | {p['size']:,} | {p['share']:.1%} | "
            f"{p['mean_TotalSales']:,.0f} | {p['mean_OrderCount']:.1f} | {p['mean_AvgOrderValue']:,.0f} |"
        )
    gates = quality_rows(manifest)
    if gates:
        lines += ["", "## Data quality", "", "| dataset | outcome | evaluated | critical failed | warnings |",
                  "| --- | --- | ---: | ---: | --- |"]
        for g in gates:
            outcome = "passed" if g["success"] else "FAILED"
            if g["success"] and g["failed_warning"]:
                outcome = "passed with warnings"
            lines.append(f"| {g['dataset']} | {outcome} | {g['evaluated']} | {g['failed_critical']} | "
                         f"{g['warnings'] or '-'} |")
    for export in manifest.exports:
        lines.append(f"- **Export** to `{export['target']}`: " + (
            f"{export.get('rows', 0):,} customers" if export.get("status") == "completed" else
            f"FAILED ({export.get('error')}); the run is complete, `segment export {manifest.run_id} --to TARGET` "
            "redoes it"))
    report = run_dir / "report.html"
    lines += ["", "## Files", ""]
    if report.exists():
        lines.append(f"- [The run's report]({report.as_uri()}) (one self-contained page)")
    lines.append(f"- [Run folder]({run_dir.as_uri()})")
    docs = run_dir / "validation" / "docs" / "index.html"
    if docs.exists():
        lines.append(f"- [Data Docs]({docs.as_uri()})")
    # The plots themselves, as data URIs: the UI renders them, wherever the run folder lives.
    plots = sorted((run_dir / "plots").glob("*.png"), key=lambda p: (PLOT_ORDER.get(p.stem, len(PLOT_ORDER)), p.stem))
    if plots:
        lines += ["", "## Plots", ""]
        for png in plots:
            title = png.stem.replace("_", " ").capitalize()
            lines += [f"### {title}", "", f"![{title}](data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()})", ""]
    return "\n".join(lines) + "\n"


def publish(manifest: Manifest) -> None:
    """Attach the run's summary, profiles, quality table and folder link to the Prefect flow run."""
    import pandas as pd
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    run_dir = Path(manifest.run_dir)
    profiles = pd.read_parquet(run_dir / "segment_profiles.parquet")
    records = profiles.round(4).to_dict(orient="records")
    description = f"Run {manifest.run_id} (as-of {manifest.as_of})"
    create_markdown_artifact(summary_markdown(manifest, records), key=SUMMARY_KEY, description=description)
    create_table_artifact(records, key=PROFILES_KEY, description=description)
    create_table_artifact(quality_rows(manifest) or [{"note": "no quality gates ran"}], key=QUALITY_KEY,
                          description=description)
    create_link_artifact(run_dir.resolve().as_uri(), link_text=str(run_dir), key=RUN_FOLDER_KEY,
                         description=description)
    report = run_dir / "report.html"
    if report.exists():
        create_link_artifact(report.resolve().as_uri(), link_text=f"Report of run {manifest.run_id}", key=REPORT_KEY,
                             description=description)
