"""Section "Products bought together": the basket stage's association rules, per segment.

Shown for stage basket: the strongest rules by lift for all customers and for each segment, a
set of products bought together shown once, and the chart of the top rules.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from customer_segments.flows.report.formatting import DASH, fmt_int, fmt_pct, fmt_times
from customer_segments.flows.report.tables import Figure, Segments, _figures, _get, _has, column, table
from customer_segments.tasks.runtime.manifest import Manifest

ANCHOR = "basket-rules"
TITLE = "Products bought together"
TEMPLATE = "_basket.html.j2"
DATASETS: dict[str, tuple[str, ...] | None] = {
    "basket_rules": ("segment", "segment_name", "segment_id", "antecedents", "consequents", "antecedent_names",
                     "consequent_names", "baskets", "support", "confidence", "lift"),
}
FIGURES = ("basket_top_rules",)

TOP_RULES = 5     # rules shown per segment


def build(m: Manifest, frames: dict[str, pd.DataFrame], figures: dict[str, Figure],
          segs: Segments) -> dict[str, Any] | None:
    rules = frames.get("basket_rules")
    figs = _figures(figures, *FIGURES)
    usable = _has(rules, "segment", "lift")
    if not usable and not figs:
        return None
    counts = {int(r["segment"]): r for r in (m.metric("basket", "rules_by_segment") or []) if "segment" in r}
    # Groups mined from a sample of their baskets (see tasks/methods/basket.py) say so.
    sampled = {int(g["segment"]): g for g in (m.metric("basket", "basket_sampled_groups") or []) if "segment" in g}
    groups = []
    if usable:
        lhs = "antecedent_names" if "antecedent_names" in rules else "antecedents"
        rhs = "consequent_names" if "consequent_names" in rules else "consequents"
        sort = ["segment", "lift"] + [c for c in ("confidence", "support") if c in rules]
        ranked = rules.sort_values(sort, ascending=[True] + [False] * (len(sort) - 1), kind="stable")
        ranked = _one_direction(ranked)
        # All customers (segment -1) first, then the segments by value.
        for rank, part in ranked.groupby("segment", sort=True):
            first = part.iloc[0]
            rows = []
            for _, r in part.head(TOP_RULES).iterrows():
                rows.append([_items(_get(r, lhs, "")), _items(_get(r, rhs, "")), fmt_int(_get(r, "baskets")),
                             fmt_pct(_get(r, "support")), fmt_pct(_get(r, "confidence"), 0), fmt_times(_get(r, "lift"))])
            info = counts.get(int(rank), {})
            note = None
            if info.get("rules") is not None:
                note = f"{fmt_int(info['rules'])} rules from {fmt_int(info.get('baskets'))} baskets"
                if int(rank) in sampled:
                    drawn = sampled[int(rank)]
                    note = (f"{fmt_int(info['rules'])} rules from a random sample of {fmt_int(drawn['mined'])} "
                            f"of its {fmt_int(drawn['baskets'])} baskets")
            title = ("All customers" if int(rank) < 0
                     else segs.label(rank, _get(first, "segment_name"), _get(first, "segment_id")))
            groups.append({"title": title, "note": note, "colour": segs.colour(rank), "table": table(
                [column("When a basket holds", wide=True), column("it also tends to hold", wide=True),
                 column("Baskets", num=True), column("Support", num=True), column("Confidence", num=True),
                 column("Lift", num=True)], rows, row_header=False)})
    return {"groups": groups, "figures": figs, "top": TOP_RULES, "deduplicated": usable and "antecedents" in rules,
            "total": fmt_int(m.metric("basket", "rules_total")) if m.metric("basket", "rules_total") is not None else None}


def _items(text: Any) -> str:
    return str(text) if text else DASH


def _one_direction(rules: pd.DataFrame) -> pd.DataFrame:
    """Keep one rule per set of products in a segment: the first, i.e. the more confident direction.

    "A → B" and "B → A" have the same lift and support, so the top rules by lift would otherwise
    show every pair twice and only half as many distinct associations.
    """
    if not {"antecedents", "consequents"} <= set(rules.columns):
        return rules
    # Codes of a side are joined with ", " and StockCodes never contain it (tasks/methods/basket.py).
    itemsets = [frozenset(str(a).split(", ")) | frozenset(str(c).split(", "))
                for a, c in zip(rules["antecedents"], rules["consequents"])]
    keys = pd.Series([(s, tuple(sorted(i))) for s, i in zip(rules["segment"], itemsets)], index=rules.index)
    return rules[~keys.duplicated()]
