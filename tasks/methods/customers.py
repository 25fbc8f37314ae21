"""The customer table: one row per customer with everything a campaign is chosen by.

What a marketing team imports into its CRM or email tool: the segment (value rank, lasting id,
name), last month's segment id and whether the customer moved, the RFM segment and score, the
repurchase probability and its decile, the lifetime value, P(alive) and churn risk, and up to
three items to recommend. Columns of stages that did not run (switched off, or without products
to recommend) are absent, not empty; a stage that ran but had no model on this data (too short a
history) leaves its columns empty, so the table keeps its shape from month to month.
"""

from __future__ import annotations

import pandas as pd

PER_CUSTOMER = 3


def customer_table(labels: pd.DataFrame, previous: pd.DataFrame | None = None, rfm: pd.DataFrame | None = None,
                   propensity: pd.DataFrame | None = None, value: pd.DataFrame | None = None,
                   recommended: pd.DataFrame | None = None) -> pd.DataFrame:
    """Join the per-customer outputs of the run on CustomerID (this run's customers, in CustomerID order)."""
    out = labels[["CustomerID", "segment", "segment_id", "segment_name", "TotalSales", "OrderCount",
                  "AvgOrderValue"]].sort_values("CustomerID", kind="stable").reset_index(drop=True)
    if previous is not None:
        before = previous[["CustomerID", "segment_id"]].rename(columns={"segment_id": "previous_segment_id"})
        out = out.merge(before, on="CustomerID", how="left", validate="one_to_one")
        out["moved"] = (out["previous_segment_id"].notna() & (out["previous_segment_id"] != out["segment_id"]))
        out["previous_segment_id"] = out["previous_segment_id"].astype("str")
    if rfm is not None:
        out = out.merge(rfm[["CustomerID", "rfm_segment", "RFM"]].rename(columns={"RFM": "rfm_score"}),
                        on="CustomerID", how="left", validate="one_to_one")
    if propensity is not None:
        scores = propensity[["CustomerID", "probability", "decile"]].rename(
            columns={"probability": "repurchase_probability", "decile": "repurchase_decile"})
        out = out.merge(scores, on="CustomerID", how="left", validate="one_to_one")
        out["repurchase_decile"] = out["repurchase_decile"].astype("Int64")
    if value is not None:
        out = out.merge(value[["CustomerID", "clv", "p_alive", "churn_risk", "expected_purchases"]],
                        on="CustomerID", how="left", validate="one_to_one")
    if recommended is not None:
        wide = recommended[recommended["rank"] <= PER_CUSTOMER].pivot(
            index="CustomerID", columns="rank", values=["StockCode", "Description"])
        for rank in range(1, PER_CUSTOMER + 1):
            for what in ("StockCode", "Description"):
                column = wide[(what, rank)] if (what, rank) in wide.columns else pd.Series(dtype="str")
                out[f"recommended_{what}_{rank}"] = out["CustomerID"].map(column).astype("str")
    return out


def customer_metrics(frames, params) -> dict:
    table = frames["customers"]
    facts = {"customers_exported": len(table), "customer_columns": list(map(str, table.columns))}
    if "moved" in table:
        facts["customers_moved"] = int(table["moved"].sum())
    return facts
