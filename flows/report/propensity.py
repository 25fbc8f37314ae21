"""Section "Who is likely to buy again": the repurchase model and CHAID's rule-described groups.

Shown for stages propensity and chaid (both name this section in the catalogue): the model's
quality on the holdout, its response per decile and what drives the score, and the groups the
CHAID tree found with their response rates. Either part is left out when its stage did not run.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from customer_segments.flows.report.formatting import fmt_int, fmt_num, fmt_pct, fmt_signed, fmt_times
from customer_segments.flows.report.tables import Figure, Segments, _figures, _get, _has, _heat, cell, column, table
from customer_segments.tasks.runtime.manifest import Manifest

ANCHOR = "propensity"
TITLE = "Who is likely to buy again"
TEMPLATE = "_propensity.html.j2"
DATASETS: dict[str, tuple[str, ...] | None] = {
    "propensity_deciles": None,
    "propensity_coefficients": None,
    "chaid_segments": None,
}
FIGURES = ("propensity_gains",)

FEATURES = {
    "recency_days": "Recency (days since the last order)",
    "log1p(frequency)": "Frequency (orders, log scale)",
    "log1p(monetary)": "Monetary (sales, log scale)",
    "log1p(AvgOrderValue)": "Average order value (log scale)",
    "(intercept)": "Baseline (intercept)",
}


def build(m: Manifest, frames: dict[str, pd.DataFrame], figures: dict[str, Figure],
          segs: Segments) -> dict[str, Any] | None:
    """The model and the CHAID groups; `segs` is not used (the signature is every section's)."""
    deciles, coefficients, leaves = (frames.get("propensity_deciles"), frames.get("propensity_coefficients"),
                                     frames.get("chaid_segments"))
    figs = _figures(figures, *FIGURES)
    metrics = m.stages["propensity"].metrics if "propensity" in m.stages else {}
    horizon = metrics.get("horizon_months") or m.parameters.get("horizon")
    model = None
    if metrics.get("roc_auc") is not None or _has(deciles, "decile") or _has(coefficients, "feature") or figs:
        facts = []
        if metrics.get("roc_auc") is not None:
            facts.append({"label": "ROC AUC", "value": fmt_num(metrics["roc_auc"], 3),
                          "note": "0.5 is a coin toss, 1 is perfect"})
        if metrics.get("top_decile_lift") is not None:
            facts.append({"label": "Top-decile lift", "value": fmt_times(metrics["top_decile_lift"]),
                          "note": "the top 10% buy again this many times as often as average"})
        if horizon:
            facts.append({"label": "Horizon", "value": f"{horizon} months"})
        if metrics.get("holdout_customers") is not None:
            facts.append({"label": "Tested on", "value": f"{fmt_int(metrics['holdout_customers'])} customers",
                          "note": f"{fmt_int(metrics.get('holdout_responders'))} bought again"
                          if metrics.get("holdout_responders") is not None else None})
        decile_table = None
        if _has(deciles, "decile"):
            decile_table = table(
                [column("Decile", num=True), column("Customers", num=True), column("Bought again", num=True),
                 column("Response rate", num=True), column("Lift", num=True), column("Cumulative gain", num=True)],
                [[cell(fmt_int(r["decile"]), strong=True), fmt_int(_get(r, "customers")), fmt_int(_get(r, "responders")),
                  fmt_pct(_get(r, "response_rate")), fmt_times(_get(r, "lift")), fmt_pct(_get(r, "cumulative_gain"))]
                 for _, r in deciles.sort_values("decile").iterrows()])
        coefficient_table = None
        if _has(coefficients, "feature"):
            coefficient_table = table(
                [column("Behaviour", wide=True), column("Coefficient", num=True), column("Odds ratio", num=True)],
                [[FEATURES.get(str(r["feature"]), str(r["feature"])), fmt_signed(_get(r, "coefficient")),
                  fmt_times(_get(r, "odds_ratio"))] for _, r in coefficients.iterrows()], compact=True)
        model = {"facts": facts, "note": metrics.get("note"), "deciles": decile_table,
                 "coefficients": coefficient_table, "figures": figs}
    chaid = None
    if _has(leaves, "rule", "customers"):
        target = m.metric("chaid", "chaid_target") or m.parameters.get("chaid_target")
        target_text = {"repurchase": f"buys again within {horizon or 'the next'} months",
                       "segment": "belongs to the most valuable segment"}.get(target, target or "the target")
        sort = ["response_rate", "customers"] if "response_rate" in leaves else ["customers"]
        rows = [[cell(str(r["rule"]), strong=True), fmt_int(r["customers"]), fmt_int(_get(r, "responders")),
                 cell(fmt_pct(_get(r, "response_rate")), heat=_heat(_get(r, "response_rate")))]
                for _, r in leaves.sort_values(sort, ascending=False, kind="stable").iterrows()]
        chaid = {"target": target, "target_text": target_text, "note": m.metric("chaid", "chaid_note"),
                 "table": table([column("Rule", wide=True), column("Customers", num=True), column("Responders", num=True),
                                 column("Response rate", num=True)], rows, row_header=False)}
    if model is None and chaid is None:
        return None
    return {"model": model, "chaid": chaid, "horizon": horizon}
