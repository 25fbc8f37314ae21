"""The customer table: one row per customer with everything a campaign is chosen by.

What a marketing team imports into its CRM or email tool: the segment (value rank, lasting id,
name), last month's segment id and whether the customer moved, the RFM segment and score, the
repurchase probability and its decile, the lifetime value, P(alive) and churn risk, and up to
three items to recommend. Columns of stages that did not run (switched off, or without products
to recommend) are absent, not empty; a stage that ran but had no model on this data (too short a
history) leaves its columns empty, so the table keeps its shape from month to month.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PER_CUSTOMER = 3


def customer_table(labels: pd.DataFrame, previous: pd.DataFrame | None = None, rfm: pd.DataFrame | None = None,
                   propensity: pd.DataFrame | None = None, value: pd.DataFrame | None = None,
                   recommended: pd.DataFrame | None = None) -> pd.DataFrame:
    """Join the per-customer outputs of the run on CustomerID (this run's customers, in CustomerID order)."""
    out = labels[["CustomerID", "segment", "segment_id", "segment_name", "TotalSales", "OrderCount",
                  "AvgOrderValue"]].sort_values("CustomerID", kind="stable").reset_index(drop=True)
    # The customers hashed once (an Index keeps its hash table), not once per joined table.
    customers = pd.Index(out["CustomerID"])
    if previous is not None:
        before = previous[["CustomerID", "segment_id"]].rename(columns={"segment_id": "previous_segment_id"})
        out = _joined(out, customers, before, "last month's cluster_labels")
        out["moved"] = (out["previous_segment_id"].notna() & (out["previous_segment_id"] != out["segment_id"]))
        out["previous_segment_id"] = out["previous_segment_id"].astype("str")
    if rfm is not None:
        out = _joined(out, customers, rfm[["CustomerID", "rfm_segment", "RFM"]].rename(columns={"RFM": "rfm_score"}),
                      "rfm_scores")
    if propensity is not None:
        scores = propensity[["CustomerID", "probability", "decile"]].rename(
            columns={"probability": "repurchase_probability", "decile": "repurchase_decile"})
        out = _joined(out, customers, scores, "propensity_scores")
        out["repurchase_decile"] = out["repurchase_decile"].astype("Int64")
    if value is not None:
        out = _joined(out, customers, value[["CustomerID", "clv", "p_alive", "churn_risk", "expected_purchases"]],
                      "customer_value")
    if recommended is not None:
        for rank in range(1, PER_CUSTOMER + 1):
            picks = recommended.loc[(recommended["rank"] == rank).to_numpy(), ["CustomerID", "StockCode", "Description"]]
            picks = picks.rename(columns={"StockCode": f"recommended_StockCode_{rank}",
                                          "Description": f"recommended_Description_{rank}"})
            out = _joined(out, customers, picks, "customer_recommendations")
            for column in picks.columns[1:]:
                out[column] = out[column].astype("str")
    return out


def _joined(out: pd.DataFrame, customers: pd.Index, table: pd.DataFrame, name: str) -> pd.DataFrame:
    """`out` (one row per `customers`) with the other columns of `table` beside each customer: a
    left join on CustomerID, `table` holding one row per customer at most (checked), missing
    where it has none. By position: a merge validating both sides took seconds at a million."""
    ids = table["CustomerID"]
    if not ids.is_unique:
        repeated = ids[ids.duplicated()].head(3).tolist()
        raise ValueError(f"{name}: one row per customer expected, CustomerID repeats (e.g. {repeated})")
    at = customers.get_indexer(ids)
    rows = np.full(len(out), -1, dtype="int64")
    found = at >= 0
    rows[at[found]] = np.flatnonzero(found)
    return out.assign(**{column: pd.Series(pd.api.extensions.take(table[column].array, rows, allow_fill=True),
                                           index=out.index, name=column)
                         for column in table.columns if column != "CustomerID"})


def customer_metrics(frames, params) -> dict:
    table = frames["customers"]
    facts = {"customers_exported": len(table), "customer_columns": list(map(str, table.columns))}
    if "moved" in table:
        facts["customers_moved"] = int(table["moved"].sum())
    return facts
