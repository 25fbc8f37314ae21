"""Section "RFM: recency, frequency, monetary": the RFM names and how they spread over the segments.

Shown for stage rfm: customers per RFM segment, the recency × frequency heat map, and the
cross-tab of RFM segments against this run's segments.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from customer_segments.flows.report.formatting import DASH, fmt_int, fmt_pct
from customer_segments.flows.report.tables import Figure, Segments, _figures, _get, _has, _heat, cell, column, table
from customer_segments.tasks.runtime.manifest import Manifest

ANCHOR = "rfm"
TITLE = "RFM: recency, frequency, monetary"
TEMPLATE = "_rfm.html.j2"
# Of the scores (one row per customer) only the RFM segment is needed, to count them.
DATASETS: dict[str, tuple[str, ...] | None] = {
    "rfm_scores": ("rfm_segment",),
    "rfm_profile": None,
}
FIGURES = ("rfm_heatmap",)


def build(m: Manifest, frames: dict[str, pd.DataFrame], figures: dict[str, Figure],
          segs: Segments) -> dict[str, Any] | None:
    scores, profile = frames.get("rfm_scores"), frames.get("rfm_profile")
    figs = _figures(figures, *FIGURES)
    if _has(scores, "rfm_segment"):
        counts = scores["rfm_segment"].value_counts()
    elif m.metric("rfm", "rfm_segments"):
        counts = pd.Series(m.metric("rfm", "rfm_segments"), dtype="int64")
    else:
        counts = None
    if counts is not None:
        # Largest first; equal counts by name, so the order never depends on the reading order.
        counts = counts.rename_axis("rfm_segment").reset_index(name="n").sort_values(
            ["n", "rfm_segment"], ascending=[False, True]).set_index("rfm_segment")["n"]
    usable_profile = _has(profile, "rfm_segment", "segment", "customers")
    if counts is None and not usable_profile and not figs:
        return None
    count_table = None
    if counts is not None:
        total = counts.sum()
        count_table = table([column("RFM segment", wide=True), column("Customers", num=True), column("Share", num=True)],
                            [[cell(name, strong=True), fmt_int(n), fmt_pct(n / total if total else None)]
                             for name, n in counts.items()], compact=True)
    crosstab = None
    if usable_profile:
        ranks = sorted(int(s) for s in profile["segment"].unique())
        order = list(counts.index) if counts is not None else sorted(profile["rfm_segment"].unique())
        order += [s for s in sorted(profile["rfm_segment"].unique()) if s not in order]
        column_totals = profile.groupby("segment")["customers"].sum()
        cells = {(str(r["rfm_segment"]), int(r["segment"])): r for _, r in profile.iterrows()}
        rows = []
        for name in order:
            row: list[Any] = [cell(name, strong=True)]
            for rank in ranks:
                r = cells.get((name, rank))
                if r is None:
                    row.append(cell(DASH, heat=0))
                    continue
                share = _get(r, "share_of_segment")
                if share is None and column_totals.get(rank):
                    share = r["customers"] / column_totals[rank]
                row.append(cell(fmt_int(r["customers"]), sub=fmt_pct(share, 0) if share is not None else None,
                                heat=_heat(share)))
            rows.append(row)
        columns = [column("RFM segment", wide=True)] + [
            column(segs.by_rank[rank]["id"] or str(rank) if rank in segs.by_rank else str(rank), num=True)
            for rank in ranks]
        crosstab = table(columns, rows, matrix=True,
                         foot=[[cell("Customers", strong=True)] + [fmt_int(column_totals.get(rank)) for rank in ranks]])
    return {"counts": count_table, "crosstab": crosstab, "figures": figs,
            "legend": [{"id": info["id"] or str(rank), "name": info["name"], "colour": info["colour"]}
                       for rank, info in segs.by_rank.items()]}
