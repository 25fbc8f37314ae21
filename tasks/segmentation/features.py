"""Features: one row per customer with TotalSales, OrderCount and AvgOrderValue, from the orders."""

from __future__ import annotations

import pandas as pd

FEATURES = ("TotalSales", "OrderCount", "AvgOrderValue")


def customer_features(orders: pd.DataFrame) -> pd.DataFrame:
    """Aggregate the orders per CustomerID (sorted by CustomerID): the sum of their values, their number."""
    grouped = orders.groupby("CustomerID", sort=True, observed=True)
    features = grouped.agg(
        TotalSales=("value", "sum"),
        OrderCount=("InvoiceNo", "size"),
    ).reset_index()
    features["OrderCount"] = features["OrderCount"].astype("int64")
    features["AvgOrderValue"] = features["TotalSales"] / features["OrderCount"]
    return features


def feature_metrics(frames, params) -> dict:
    return {"customers": len(frames["customer_features"])}
