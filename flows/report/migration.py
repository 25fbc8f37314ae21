"""Section "Since last month": where last month's customers are now.

Shown for stage migration when the run has a previous month to compare with: the matrix from
last month's segments to this month's (same ids for the same groups of customers), who moved,
and its heat map. A series' first month has none.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from customer_segments.flows.report.formatting import DASH, fmt_int, fmt_money, fmt_month, fmt_pct
from customer_segments.flows.report.tables import Figure, Segments, _figures, _get, _has, _heat, cell, column, table
from customer_segments.tasks.runtime.manifest import Manifest

ANCHOR = "migration"
TITLE = "Since last month"
TEMPLATE = "_migration.html.j2"
DATASETS: dict[str, tuple[str, ...] | None] = {
    "segment_migration": None,
}
FIGURES = ("segment_migration",)


def build(m: Manifest, frames: dict[str, pd.DataFrame], figures: dict[str, Figure],
          segs: Segments) -> dict[str, Any] | None:
    moves = frames.get("segment_migration")
    if not _has(moves, "from_segment_id", "to_segment_id", "customers"):
        return None
    # A series' first month has nothing to compare with: every customer is "new".
    if m.previous is None and (moves["from_segment_id"] == "new").all():
        return None
    frm = sorted({str(s) for s in moves["from_segment_id"]} - {"new"}, key=_id_key) + (
        ["new"] if (moves["from_segment_id"] == "new").any() else [])
    to = sorted({str(s) for s in moves["to_segment_id"]} - {"lapsed"}, key=_id_key) + (
        ["lapsed"] if (moves["to_segment_id"] == "lapsed").any() else [])
    counts = {(str(r["from_segment_id"]), str(r["to_segment_id"])): int(r["customers"]) for _, r in moves.iterrows()}
    row_totals = {f: sum(n for (a, _), n in counts.items() if a == f) for f in frm}
    rows = []
    for f in frm:
        row: list[Any] = [cell(_side_label(f), strong=True)]
        for t in to:
            n = counts.get((f, t), 0)
            share = n / row_totals[f] if row_totals[f] else None
            row.append(cell(fmt_int(n), sub=fmt_pct(share, 0) if n else None, heat=_heat(share) if n else 0))
        row.append(cell(fmt_int(row_totals[f]), strong=True))
        rows.append(row)
    col_totals = [sum(counts.get((f, t), 0) for f in frm) for t in to]
    matrix = table([column("From ↓ to →", wide=True)] +
                   [column(_side_label(t), num=True) for t in to] + [column("Total", num=True)],
                   rows, matrix=True, foot=[[cell("Total", strong=True)] + [fmt_int(n) for n in col_totals] +
                                            [fmt_int(sum(col_totals))]])
    moved = moves[moves["from_segment_id"].astype(str) != moves["to_segment_id"].astype(str)]
    moved = moved.sort_values(["customers", "from_segment_id", "to_segment_id"], ascending=[False, True, True])
    mover_rows = [[cell(_side_label(str(r["from_segment_id"]))), cell(_side_label(str(r["to_segment_id"]))),
                   fmt_int(r["customers"]),
                   fmt_money(_get(r, "revenue_before")), fmt_money(_get(r, "revenue_after"))]
                  for _, r in moved.iterrows()]
    movers_table = table([column("From"), column("To"), column("Customers", num=True),
                          column("Sales before", num=True), column("Sales after", num=True)],
                         mover_rows, row_header=False) if mover_rows else None
    metrics = m.stages["migration"].metrics if "migration" in m.stages else {}
    facts = []
    if m.previous:
        facts.append({"label": "Previous run", "value": str(m.previous.get("run_id", DASH)), "mono": True,
                      "note": fmt_month(m.previous.get("as_of")) if m.previous.get("as_of") else None})
    for key, label in (("previous_customers_seen", "Customers last month"), ("movers", "Changed segment"),
                       ("new_customers", "New customers"), ("lapsed_customers", "Lapsed customers")):
        if metrics.get(key) is not None:
            facts.append({"label": label, "value": fmt_int(metrics[key])})
    legend = [{"id": info["id"], "name": info["name"], "colour": info["colour"]}
              for info in segs.by_rank.values() if info["id"]]
    return {"facts": facts, "matrix": matrix, "movers": movers_table, "legend": legend,
            "figures": _figures(figures, *FIGURES)}


def _id_key(segment_id: str) -> tuple[int, str]:
    digits = "".join(ch for ch in segment_id if ch.isdigit())
    return (int(digits) if digits else 1 << 30, segment_id)


def _side_label(segment_id: str) -> str:
    return {"new": "New customers", "lapsed": "Lapsed"}.get(segment_id, segment_id)
