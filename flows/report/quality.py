"""Section "Data quality": every quality gate of the run and its outcome, and the way to the Data Docs.

Always shown, last, when the run has gates or Data Docs: one row per validated dataset, in the
order the pipeline runs its stages, with what a failed or warning check found.
"""

from __future__ import annotations

from typing import Any

from customer_segments.flows.report.formatting import fmt_int
from customer_segments.tasks.runtime.manifest import Manifest

ANCHOR = "data-quality"
TITLE = "Data quality"
TEMPLATE = "_quality.html.j2"
DATASETS: dict[str, tuple[str, ...] | None] = {}
FIGURES: tuple[str, ...] = ()


def stage_order() -> list[str]:
    """The pipeline's stages in the order they run (their inputs' order, ties in catalogue order)."""
    try:
        from customer_segments.tasks.runtime.graph import pipeline

        return pipeline().order()
    except Exception:  # noqa: BLE001 - the order is a nicety; the manifest's own order is the fallback
        return []


def build(m: Manifest, data_docs: str | None) -> dict[str, Any] | None:
    order = {name: i for i, name in enumerate(stage_order())}
    gates = sorted(enumerate(m.gates()), key=lambda item: (order.get(item[1][0], len(order)), item[0]))
    if not gates and not data_docs:
        return None
    rows = []
    passed = warned = failed = 0
    for _, (stage, dataset, gate) in gates:
        success = gate.get("success")
        critical, warning = gate.get("failed_critical") or 0, gate.get("failed_warning") or 0
        if success is False or critical:
            outcome, tone = "failed", "bad"
            failed += 1
        elif warning:
            outcome, tone = "passed with warnings", "warn"
            warned += 1
        else:
            outcome, tone = "passed", "good"
            passed += 1
        texts = [str(t) for t in (gate.get("critical") or [])] + [str(t) for t in (gate.get("warnings") or [])]
        rows.append({"stage": stage, "dataset": dataset, "outcome": outcome, "tone": tone,
                     "evaluated": fmt_int(gate.get("evaluated")), "critical": fmt_int(critical),
                     "warning": fmt_int(warning), "texts": texts})
    return {"rows": rows, "passed": passed, "warned": warned, "failed": failed, "total": len(rows),
            "data_docs": data_docs}
