"""Section "The run": where the numbers come from.

The export read, the as-of month, cutoff and window, the run's id and timing, and how many
invoice lines each cleaning rule set aside. Always shown, first: it needs only the manifest.
"""

from __future__ import annotations

from typing import Any

from customer_segments.flows.report.formatting import (
    DASH, fmt_date, fmt_datetime, fmt_duration, fmt_int, fmt_month, fmt_pct,
)
from customer_segments.flows.report.tables import cell, column, table
from customer_segments.tasks.runtime.manifest import Manifest

ANCHOR = "run"
TITLE = "The run"
TEMPLATE = "_run.html.j2"
DATASETS: dict[str, tuple[str, ...] | None] = {}
FIGURES: tuple[str, ...] = ()

CLEANING_RULES = {
    "cancelled_or_zero_quantity": "Cancellations, returns and zero quantities",
    "missing_customer": "No CustomerID",
    "before_window": "Before the window",
    "on_or_after_cutoff": "On or after the cutoff",
}


def build(m: Manifest) -> dict[str, Any]:
    window = m.window
    window_start = m.metric("clean", "window_start")
    if window:
        window_text = f"the {window} months before the cutoff"
        if window_start:
            window_text += f" (from {fmt_date(window_start)})"
    else:
        window_text = "all history before the cutoff"
    facts = [
        {"label": "Input", "value": m.input.path, "mono": True},
        {"label": "Input sha256", "value": m.input.sha256, "mono": True},
    ]
    files = m.metric("ingest", "files")
    if files is not None:
        facts.append({"label": "Files read", "value": fmt_int(files)})
    facts += [
        {"label": "As-of month", "value": f"{fmt_month(m.as_of)} ({m.as_of})" if m.as_of else DASH},
        {"label": "Cutoff", "value": f"invoices before {fmt_date(m.cutoff)}" if m.cutoff else DASH},
        {"label": "Window", "value": window_text},
        {"label": "Run id", "value": m.run_id, "mono": True},
        {"label": "Started", "value": fmt_datetime(m.started_at)},
        {"label": "Finished", "value": fmt_datetime(m.finished_at)},
        {"label": "Duration", "value": fmt_duration(m.seconds)},
    ]
    first, last = m.metric("ingest", "first_invoice"), m.metric("ingest", "last_invoice")
    if first and last:
        facts.insert(3, {"label": "Invoices in the input", "value": f"{fmt_date(first)} to {fmt_date(last)}"})
    if m.input.query:
        facts.insert(2, {"label": "Query as sent", "value": m.input.query, "mono": True,
                         "note": f"{fmt_int(m.input.rows)} lines read into the snapshot {m.input.snapshot}"})
    customers = next((r.outputs["customers"] for r in m.stages.values() if "customers" in r.outputs), None)
    if customers is not None:
        facts.append({"label": "Customer table", "value": customers.file, "href": customers.file, "mono": True,
                      "note": f"{fmt_int(customers.rows)} customers, one row each, for a CRM: "
                              f"segment export {m.run_id} --to FILE.csv (or a PostgreSQL table)"})
    for export in m.exports:
        facts.append({"label": "Exported to", "value": export["target"], "mono": True,
                      "note": f"{fmt_int(export.get('rows'))} customers" if export.get("status") == "completed"
                      else f"failed: {export.get('error')}"})

    rows_read = m.metric("ingest", "rows_read", m.input.rows)
    rows_in = m.metric("clean", "rows_in")
    repeated = m.metric("ingest", "repeated_across_files") or 0
    base = rows_read or rows_in
    rows: list[list[Any]] = []
    if rows_read is not None:
        rows.append([cell("Lines read from the input", strong=True), fmt_int(rows_read), fmt_pct(1 if base else None)])
    if repeated:
        rows.append(["Repeated across files (dropped when read)", fmt_int(repeated), fmt_pct(repeated / base)])
    for rule, count in m.rows_dropped.items():
        rows.append([CLEANING_RULES.get(rule, rule.replace("_", " ").capitalize()), fmt_int(count),
                     fmt_pct(count / base) if base else DASH])
    foot = []
    if m.rows_clean is not None:
        foot = [["Kept for the analysis", fmt_int(m.rows_clean), fmt_pct(m.rows_clean / base) if base else DASH]]
    cleaning = None
    if rows or foot:
        cleaning = table([column("Invoice lines", wide=True), column("Lines", num=True), column("Share", num=True)],
                         rows, foot=foot, compact=True)
    return {"facts": facts, "cleaning": cleaning, "status": m.status,
            "status_tone": {"completed": "good", "failed": "bad"}.get(m.status, "warn"), "error": m.error}
