"""Section "What customers are worth from here on": lifetime value and churn risk per segment.

Shown for stage clv. It leads with what a marketer acts on (the value at stake per segment over
the horizon, with its 90 % interval, and the customers at risk of being lost), then the model's
check on the data itself (predicted against observed purchases in held-out months) and the
fitted parameters.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from customer_segments.flows.report.formatting import fmt_int, fmt_money, fmt_num, fmt_pct
from customer_segments.flows.report.tables import Figure, Segments, _figures, _get, _has, _heat, cell, column, table
from customer_segments.tasks.runtime.manifest import Manifest

ANCHOR = "value"
TITLE = "What customers are worth from here on"
TEMPLATE = "_value.html.j2"
DATASETS: dict[str, tuple[str, ...] | None] = {
    "segment_value": None,
    "customer_value": ("churn_risk", "clv"),
    "clv_holdout": None,
    "clv_model": None,
}
FIGURES = ("clv_by_segment", "clv_holdout", "clv_p_alive")
UNITS = {"D": "days", "W": "weeks", "M": "months"}


def build(m: Manifest, frames: dict[str, pd.DataFrame], figures: dict[str, Figure],
          segs: Segments) -> dict[str, Any] | None:
    record = m.stages.get("clv")
    if record is None or record.status not in ("completed", "cached"):
        return None
    metrics = record.metrics
    horizon = m.parameters.get("clv_horizon")
    if metrics.get("clv_note"):
        return {"note": metrics["clv_note"], "horizon": horizon, "segments": None, "rfm": None, "facts": [],
                "check": None, "parameters": None, "figures": [], "check_figures": [], "warning": None}
    values = frames.get("segment_value")
    kmeans = rfm = None
    if _has(values, "grouping", "segment", "clv_total"):
        kmeans = _segment_table(values[values["grouping"] == "kmeans"], segs, "Segment")
        if (values["grouping"] == "rfm").any():
            rfm = _segment_table(values[values["grouping"] == "rfm"], None, "RFM segment")
    customers = frames.get("customer_value")
    facts = []
    if metrics.get("clv_total") is not None:
        facts.append({"label": f"Value over the next {horizon} months", "value": fmt_money(metrics["clv_total"]),
                      "note": f"discounted at {fmt_pct(m.parameters.get('discount_rate'), 0)} a year"})
    if _has(customers, "churn_risk"):
        high = int((customers["churn_risk"] == "high").sum())
        at_risk = float(customers.loc[customers["churn_risk"] == "high", "clv"].sum()) if "clv" in customers else None
        facts.append({"label": "Customers at high churn risk", "value": fmt_int(high),
                      "note": f"{fmt_pct(high / len(customers))} of customers; P(alive) below 0.3"})
        if at_risk is not None:
            facts.append({"label": "Value of those at high risk", "value": fmt_money(at_risk)})
    holdout = metrics.get("holdout") or {}
    check = None
    if holdout.get("note"):
        check = {"note": holdout["note"], "facts": [], "table": None}
    elif holdout:
        check_facts = [
            {"label": "Held out", "value": f"{holdout.get('holdout_months')} months",
             "note": f"calibrated on the orders before {str(holdout.get('calibration_end', ''))[:10]}"},
            {"label": "Predicted / observed purchases", "value": fmt_num(holdout.get("predicted_over_actual"), 2),
             "note": f"{fmt_num(holdout.get('predicted_total'), 0)} predicted, {fmt_int(holdout.get('actual_total'))} "
                     "observed"},
            {"label": "Mean absolute error per customer", "value": fmt_num(holdout.get("mae"), 3),
             "note": "repeat purchases"},
        ]
        rows = frames.get("clv_holdout")
        check_table = None
        if _has(rows, "calibration_purchases", "actual_mean"):
            check_table = table(
                [column("Repeat purchases before", wide=True), column("Customers", num=True),
                 column("Observed in the holdout", num=True), column("Predicted", num=True)],
                [[cell(str(r["calibration_purchases"]), strong=True), fmt_int(r["customers"]),
                  fmt_num(r["actual_mean"], 2), fmt_num(r["predicted_mean"], 2)] for _, r in rows.iterrows()],
                compact=True)
        check = {"note": None, "facts": check_facts, "table": check_table}
    model = frames.get("clv_model")
    parameters = None
    if _has(model, "model", "parameter", "value"):
        shown = model[model["parameter"].isin(["r", "alpha", "a", "b", "p", "q", "v", "log_likelihood", "customers"])]
        parameters = table([column("Model"), column("Parameter"), column("Value", num=True)],
                           [[{"bgnbd": "BG/NBD", "gamma_gamma": "Gamma-Gamma"}.get(r["model"], r["model"]),
                             r["parameter"], fmt_num(r["value"], 4 if r["parameter"] not in ("customers",) else 0)]
                            for _, r in shown.iterrows()], row_header=False, compact=True)
    return {"note": None, "horizon": horizon, "unit": UNITS.get(m.parameters.get("clv_time_unit"), ""),
            "segments": kmeans, "rfm": rfm, "facts": facts, "check": check, "parameters": parameters,
            "warning": "; ".join(w for w in (metrics.get("clv_warning"), metrics.get("spend_note")) if w) or None,
            "figures": _figures(figures, "clv_by_segment"), "check_figures": _figures(figures, "clv_holdout", "clv_p_alive")}


def _segment_table(rows: pd.DataFrame, segs: Segments | None, label: str):
    rows = rows.sort_values("clv_total", ascending=False, kind="stable")
    body = []
    for _, r in rows.iterrows():
        name = segs.label(None, r["segment_name"], r["segment"]) if segs is not None else str(r["segment"])
        share = _get(r, "high_risk_share")
        low, high = _get(r, "clv_total_low"), _get(r, "clv_total_high")
        interval = f"90%: {fmt_money(low)} – {fmt_money(high)}" if low is not None and high is not None else None
        body.append([cell(name, strong=True), fmt_int(r["customers"]), cell(fmt_money(r["clv_total"]), sub=interval),
                     fmt_money(_get(r, "clv_mean")), fmt_pct(_get(r, "p_alive_mean")),
                     cell(fmt_pct(share), heat=_heat(share))])
    return table([column(label, wide=True), column("Customers", num=True), column("Value at stake", num=True),
                  column("Per customer", num=True), column("Mean P(alive)", num=True),
                  column("At high risk", num=True)], body)
