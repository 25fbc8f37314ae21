"""Features: one row per customer with TotalSales, OrderCount and AvgOrderValue."""

from __future__ import annotations

import pandas as pd

FEATURES = ("TotalSales", "OrderCount", "AvgOrderValue")


def customer_features(clean: pd.DataFrame) -> pd.DataFrame:
    """Aggregate cleaned invoice lines per CustomerID (sorted by CustomerID)."""
    grouped = clean.groupby("CustomerID", sort=True, observed=True)
    features = grouped.agg(
        TotalSales=("Sales", "sum"),
        OrderCount=("InvoiceNo", "nunique"),
    ).reset_index()
    features["OrderCount"] = features["OrderCount"].astype("int64")
    features["AvgOrderValue"] = features["TotalSales"] / features["OrderCount"]
    return features


def feature_metrics(frames, params) -> dict:
    return {"customers": len(frames["customer_features"])}
