"""Section "The segments": one card per segment, the averages per customer, centers and stability.

Shown for the clustering (stage cluster in the catalogue) once the profiles exist: the cards
name each segment, its size and typical customer, how it came from last month's segments (MONIC)
and how far to trust who is in it (Hennig's bootstrap stability).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from customer_segments.flows.report.formatting import (
    DASH, _missing, fmt_int, fmt_money, fmt_num, fmt_pct, fmt_signed,
)
from customer_segments.flows.report.tables import Figure, Segments, _figures, _get, _has, cell, column, table
from customer_segments.tasks.runtime.manifest import Manifest

ANCHOR = "segments"
TITLE = "The segments"
TEMPLATE = "_segments.html.j2"
DATASETS: dict[str, tuple[str, ...] | None] = {
    "segment_profiles": None,
    "segment_stability": None,
}
# The scatter plots of the segments, in the order shown.
FIGURES = ("ordercount_vs_totalsales", "ordercount_vs_avgordervalue", "totalsales_vs_avgordervalue")

# MONIC's transitions (README, "Month over month"), in words; {came_from} is the ids it came from.
TRANSITIONS = {
    "survived": "Survived from last month",
    "absorbed": "Absorbed {came_from}",
    "split": "Split from {came_from}",
    "emerged": "Emerged this month",
    "first": "First month of the series",
}

# Hennig's (2007) reading of the bootstrap Jaccard stability.
STABILITY_TONES = {"stable": "good", "doubtful": "warn", "unstable": "bad"}


def build(m: Manifest, frames: dict[str, pd.DataFrame], figures: dict[str, Figure],
          segs: Segments) -> dict[str, Any] | None:
    profiles = frames.get("segment_profiles")
    if not _has(profiles, "segment", "size"):
        return None
    profiles = profiles.sort_values("segment").reset_index(drop=True)
    stability = _stability_by_segment(profiles, frames.get("segment_stability"))
    total_sales = profiles["total_sales"].sum() if "total_sales" in profiles else None
    cards, averages, centers = [], [], []
    for _, row in profiles.iterrows():
        rank = int(row["segment"])
        share = _get(row, "share")
        stab = stability.get(rank)
        transition = _get(row, "transition")
        came_from = _get(row, "came_from")
        card = {
            "rank": rank, "id": _get(row, "segment_id"), "name": _get(row, "segment_name", f"Segment {rank}"),
            "colour": rank % 10, "customers": fmt_int(row["size"]), "share": fmt_pct(share),
            "share_width": f"{max(0.0, min(1.0, float(share))) * 100:.1f}" if share is not None else None,
            "sales_share": (fmt_pct(_get(row, "total_sales") / total_sales)
                            if total_sales and _get(row, "total_sales") is not None else None),
            "typical": [(label, fmt(_get(row, f"median_{feature}"))) for feature, label, fmt in (
                ("TotalSales", "Sales", fmt_money), ("OrderCount", "Orders", _fmt_count),
                ("AvgOrderValue", "Order value", fmt_money)) if _get(row, f"median_{feature}") is not None],
            "transition": _transition_text(transition, came_from, _get(row, "segment_id")),
            "stability": fmt_num(stab[0], 2) if stab else None,
            "reading": stab[1] if stab else None,
            "reading_tone": STABILITY_TONES.get(stab[1]) if stab else None,
        }
        cards.append(card)
        name_cell = cell(segs.label(rank, card["name"], card["id"]), strong=True)
        averages.append([name_cell, fmt_int(row["size"]), fmt_pct(share), fmt_money(_get(row, "total_sales")),
                         fmt_money(_get(row, "mean_TotalSales")), fmt_money(_get(row, "median_TotalSales")),
                         fmt_num(_get(row, "mean_OrderCount"), 1), _fmt_count(_get(row, "median_OrderCount")),
                         fmt_money(_get(row, "mean_AvgOrderValue")), fmt_money(_get(row, "median_AvgOrderValue"))])
        center_row = [name_cell] + [fmt_signed(_get(row, f"center_{f}")) for f in
                                    ("TotalSales", "OrderCount", "AvgOrderValue")]
        if stability:
            center_row += [fmt_num(stab[0], 2) if stab else DASH,
                           cell(stab[1], tone=STABILITY_TONES.get(stab[1])) if stab else DASH]
        centers.append(center_row)
    average_table = table(
        [column("Segment", wide=True), column("Customers", num=True), column("Share", num=True),
         column("Total sales", num=True), column("Mean", num=True), column("Median", num=True),
         column("Mean", num=True), column("Median", num=True), column("Mean", num=True), column("Median", num=True)],
        averages, groups=[("", 4), ("Sales per customer", 2), ("Orders per customer", 2), ("Order value", 2)])
    center_columns = [column("Segment", wide=True), column("Sales", num=True), column("Orders", num=True),
                      column("Order value", num=True)]
    if stability:
        center_columns += [column("Stability", num=True), column("Reading")]
    has_centers = any(c.startswith("center_") for c in profiles.columns)
    return {
        "cards": cards,
        "averages": average_table,
        "centers": table(center_columns, centers) if has_centers or stability else None,
        "has_stability": bool(stability),
        "unstable": [c for c in cards if c["reading"] == "unstable"],
        "figures": _figures(figures, *FIGURES),
    }


def _fmt_count(value: Any) -> str:
    """Order counts: whole numbers as such, medians of an even count with their half."""
    if _missing(value):
        return DASH
    value = float(value)
    return f"{value:,.0f}" if value.is_integer() else f"{value:,.1f}"


def _transition_text(transition: str | None, came_from: str | None, segment_id: str | None = None) -> str | None:
    if not transition:
        return None
    came_from = ", ".join(part.strip() for part in str(came_from or "").split(",") if part.strip())
    words = TRANSITIONS.get(transition, transition.capitalize())
    if "{came_from}" in words:
        return words.format(came_from=came_from or "earlier segments")
    if transition == "survived" and came_from and came_from != segment_id:
        return f"{words} (was {came_from})"
    return words


def _stability_by_segment(profiles: pd.DataFrame, table_: pd.DataFrame | None) -> dict[int, tuple[float, str]]:
    """Per segment rank, Hennig's stability and its reading, from the profiles or the stability table."""
    from_profiles = {int(r["segment"]): (float(r["stability"]), str(_get(r, "stability_reading") or _reading(r["stability"])))
                     for _, r in profiles.iterrows() if "stability" in profiles and not _missing(r["stability"])}
    if from_profiles:
        return from_profiles
    if _has(table_, "segment", "stability"):
        return {int(r["segment"]): (float(r["stability"]), str(_get(r, "reading") or _reading(r["stability"])))
                for _, r in table_.iterrows() if not _missing(r["stability"])}
    return {}


def _reading(stability: float) -> str:
    # Hennig's thresholds, for a table that records the score without its reading.
    return "stable" if stability >= 0.75 else "doubtful" if stability >= 0.6 else "unstable"
