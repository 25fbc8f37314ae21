"""Section "Best sellers per segment": what each segment's customers buy most.

Shown for stage profile: per segment, the products bought in the most orders (postage, fees and
other service lines left out), and, when the basket stage ran, what the same segment's baskets
often add to each of them.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from customer_segments.flows.report.formatting import DASH, fmt_int, fmt_money, fmt_times
from customer_segments.flows.report.tables import Figure, Segments, _get, _has, cell, column, table
from customer_segments.tasks.runtime.manifest import Manifest

ANCHOR = "best-sellers"
TITLE = "Best sellers per segment"
TEMPLATE = "_best_sellers.html.j2"
# The recommendations are the basket stage's, shown beside the best seller they start from.
DATASETS: dict[str, tuple[str, ...] | None] = {
    "top_products": None,
    "recommendations": ("segment", "StockCode", "best_seller_rank", "recommended_StockCode",
                        "recommended_Description", "lift", "confidence"),
}
FIGURES: tuple[str, ...] = ()

TOP_PRODUCTS = 10  # best sellers shown per segment
RECOMMENDED = 3   # "other items you might like" per best seller


def build(m: Manifest, frames: dict[str, pd.DataFrame], figures: dict[str, Figure],
          segs: Segments) -> dict[str, Any] | None:
    """Per segment, its best sellers; `m` and `figures` are not used (the signature is every section's)."""
    products = frames.get("top_products")
    if not _has(products, "segment", "Description"):
        return None
    recommendations = frames.get("recommendations")
    also: dict[tuple[int, str], list[str]] = {}
    if _has(recommendations, "segment", "StockCode", "recommended_Description"):
        # Per best seller, the strongest suggestions first.
        order = {c: up for c, up in (("segment", True), ("best_seller_rank", True), ("lift", False))
                 if c in recommendations}
        ranked = recommendations.sort_values(list(order), ascending=list(order.values()), kind="stable")
        for _, r in ranked.iterrows():
            key = (int(r["segment"]), str(r["StockCode"]))
            items = also.setdefault(key, [])
            if len(items) < RECOMMENDED:
                lift = _get(r, "lift")
                items.append(f"{r['recommended_Description']}" + (f" ({fmt_times(lift)})" if lift is not None else ""))
    groups = []
    sort = [c for c in ("segment", "rank") if c in products]
    for rank, part in products.sort_values(sort, kind="stable").groupby("segment", sort=True):
        rows = []
        for i, (_, r) in enumerate(part.head(TOP_PRODUCTS).iterrows(), start=1):
            item = str(_get(r, "Description", "")).strip() or str(_get(r, "StockCode", ""))
            code = _get(r, "StockCode")
            row = [fmt_int(_get(r, "rank", i)), cell(item, sub=f"code {code}" if code else None),
                   fmt_int(_get(r, "orders")), fmt_int(_get(r, "quantity")), fmt_money(_get(r, "revenue"))]
            if also:
                suggested = also.get((int(rank), str(code)), [])
                row.append(cell("", items=suggested) if suggested else DASH)
            rows.append(row)
        first = part.iloc[0]
        columns = [column("#", num=True), column("Product", wide=True), column("Orders", num=True),
                   column("Units", num=True), column("Revenue", num=True)]
        if also:
            columns.append(column("Other items you might like", wide=True))
        groups.append({"title": segs.label(rank, _get(first, "segment_name"), _get(first, "segment_id")),
                       "colour": segs.colour(rank), "table": table(columns, rows, row_header=False)})
    return {"groups": groups, "recommendations": bool(also)}
