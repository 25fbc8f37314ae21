"""Section "How many segments": why the run kept the number of segments it did.

Shown for stage select_k: the chosen k and how it was chosen, the silhouette and elbow plots,
and every candidate k with its sum of squared errors and silhouette.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from customer_segments.flows.report.formatting import fmt_num
from customer_segments.flows.report.tables import Figure, Segments, _figures, _get, _has, cell, column, table
from customer_segments.tasks.runtime.manifest import Manifest

ANCHOR = "choosing-k"
TITLE = "How many segments"
TEMPLATE = "_choosing_k.html.j2"
DATASETS: dict[str, tuple[str, ...] | None] = {
    "k_selection": None,
}
FIGURES = ("elbow", "silhouette")


def build(m: Manifest, frames: dict[str, pd.DataFrame], figures: dict[str, Figure],
          segs: Segments) -> dict[str, Any] | None:
    """The chosen k, its facts and the candidates; `segs` is not used (the signature is every section's)."""
    k = m.metric("select_k", "k")
    figs = _figures(figures, *FIGURES)
    selection = frames.get("k_selection")
    if k is None and not figs and not _has(selection, "k"):
        return None
    forced = m.parameters.get("k")
    k_min, k_max = m.parameters.get("k_min"), m.parameters.get("k_max")
    facts = []
    if k is not None:
        how = "set on the command line (--k)" if forced else "the best silhouette"
        facts.append({"label": "Segments", "value": f"{k}", "note": how})
    if m.metric("select_k", "silhouette") is not None:
        facts.append({"label": "Silhouette at that k", "value": fmt_num(m.metric("select_k", "silhouette"), 3),
                      "note": "from −1 to 1; above 0.5 is a clear structure"})
    if m.metric("select_k", "best_silhouette_k") is not None:
        note = f"among k = {k_min} to {k_max}" if k_min and k_max else None
        facts.append({"label": "Best silhouette at", "value": f"k = {m.metric('select_k', 'best_silhouette_k')}",
                      "note": note})
    if m.metric("select_k", "elbow_k") is not None:
        facts.append({"label": "Elbow at", "value": f"k = {m.metric('select_k', 'elbow_k')}"})
    candidates = None
    if _has(selection, "k"):
        rows = []
        for _, r in selection.sort_values("k").iterrows():
            marks = [label for flag, label in (("chosen", "chosen"), ("best_silhouette", "best silhouette"),
                                               ("elbow", "elbow")) if bool(_get(r, flag, False))]
            chosen = bool(_get(r, "chosen", False))
            rows.append([cell(f"{int(r['k'])}", strong=chosen), fmt_num(_get(r, "sse"), 1),
                         fmt_num(_get(r, "silhouette"), 3), ", ".join(marks) or ""])
        candidates = table([column("k", num=True), column("Sum of squared errors", num=True),
                            column("Silhouette", num=True), column("Marked", wide=True)], rows, compact=True)
    return {"facts": facts, "candidates": candidates, "figures": figs}
