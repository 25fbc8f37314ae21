"""Run history and the Prefect artifacts that make each run auditable in the UI.

Artifact keys are stable, so the UI's Artifacts page shows each key's history across runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks import runs

SUMMARY_KEY = "segmentation-summary"
PROFILES_KEY = "segment-profiles"
QUALITY_KEY = "data-quality"
RUN_FOLDER_KEY = "run-folder"
HISTORY_COLUMNS = ("month", "run_id", "status", "k", "customers", "input", "seconds")


def manifest_history(artifacts: Path) -> list[dict[str, Any]]:
    """Past runs from their manifests, oldest first."""
    rows = []
    for m in runs.manifests(artifacts):
        stages = m.get("stages", {})
        rows.append({
            "month": m.get("as_of"),
            "run_id": m.get("run_id"),
            "status": m.get("status"),
            "k": stages.get("select_k", {}).get("metrics", {}).get("k"),
            "customers": stages.get("features", {}).get("metrics", {}).get("customers"),
            "input": (m.get("input", {}).get("sha256") or "")[:12],
            "seconds": m.get("seconds"),
            "run_dir": m.get("run_dir"),
        })
    return rows


def prefect_history(limit: int = 50) -> list[dict[str, Any]]:
    """Flow runs of the segmentation flow as the Prefect API has them, newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.pipeline import FLOW_NAME

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


def quality_rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per quality gate of the run, in stage order."""
    rows = []
    for stage, record in manifest.get("stages", {}).items():
        for dataset, gate in (record.get("gates") or {}).items():
            if not gate:
                continue
            rows.append({
                "stage": stage,
                "dataset": dataset,
                "success": gate.get("success"),
                "evaluated": gate.get("evaluated"),
                "failed_critical": gate.get("failed_critical"),
                "failed_warning": gate.get("failed_warning"),
                "warnings": "; ".join(gate.get("warnings", [])),
                "seconds": gate.get("seconds"),
            })
    return rows


def summary_markdown(manifest: dict[str, Any], profiles: list[dict[str, Any]]) -> str:
    stages = manifest["stages"]
    clean = stages.get("clean", {}).get("metrics", {})
    k = stages.get("select_k", {}).get("metrics", {})
    run_dir = Path(manifest["run_dir"]).resolve()
    lines = [
        f"# Segmentation {manifest['as_of']}: run {manifest['run_id']}",
        "",
        f"- **Input**: `{manifest['input']['path']}` (sha256 `{manifest['input']['sha256'][:12]}`, "
        f"{manifest['input'].get('rows', 0):,} lines)",
        f"- **Cutoff**: invoices before {manifest['cutoff'][:10]}",
        f"- **Kept**: {clean.get('rows_clean', 0):,} of {clean.get('rows_in', 0):,} lines",
    ]
    for rule, n in clean.get("rows_dropped", {}).items():
        lines.append(f"  - dropped {n:,}: {rule.replace('_', ' ')}")
    lines += [
        f"- **k** = {k.get('k')} (silhouette {k.get('silhouette')}; best silhouette at k = "
        f"{k.get('best_silhouette_k')}, elbow at k = {k.get('elbow_k')})",
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
    lines += ["", "## Files", "", f"- [Run folder]({run_dir.as_uri()})"]
    for png in sorted((run_dir / "plots").glob("*.png")):
        lines.append(f"- [{png.stem.replace('_', ' ')}]({png.as_uri()})")
    docs = run_dir / "validation" / "docs" / "index.html"
    if docs.exists():
        lines.append(f"- [Data Docs]({docs.as_uri()})")
    return "\n".join(lines) + "\n"


def publish(manifest: dict[str, Any]) -> None:
    """Attach the run's summary, profiles, quality table and folder link to the Prefect flow run."""
    import pandas as pd
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    run_dir = Path(manifest["run_dir"])
    profiles = pd.read_parquet(run_dir / "segment_profiles.parquet")
    records = profiles.round(4).to_dict(orient="records")
    description = f"Run {manifest['run_id']} (as-of {manifest['as_of']})"
    create_markdown_artifact(summary_markdown(manifest, records), key=SUMMARY_KEY, description=description)
    create_table_artifact(records, key=PROFILES_KEY, description=description)
    create_table_artifact(quality_rows(manifest) or [{"note": "no quality gates ran"}], key=QUALITY_KEY,
                          description=description)
    create_link_artifact(run_dir.resolve().as_uri(), link_text=str(run_dir), key=RUN_FOLDER_KEY,
                         description=description)
