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


# --- the dask twin: the same on a dask.distributed cluster (the dask engine) --------------------


def customer_features_dask(clean_lines) -> pd.DataFrame:
    """Per customer: TotalSales (a sum of the partitions' sums), OrderCount (distinct invoices)."""
    import dask

    grouped = clean_lines.groupby("CustomerID")
    sales, orders = dask.compute(grouped["Sales"].sum(), grouped["InvoiceNo"].nunique())
    # The pandas engine's function on the per-customer totals, so both give the same frame.
    table = pd.DataFrame({"CustomerID": sales.index.astype("str"), "Sales": sales.to_numpy(),
                          "InvoiceNo": orders.reindex(sales.index).to_numpy()})
    table = table.sort_values("CustomerID", kind="stable").reset_index(drop=True)
    out = table.rename(columns={"Sales": "TotalSales", "InvoiceNo": "OrderCount"})
    out["OrderCount"] = out["OrderCount"].astype("int64")
    out["AvgOrderValue"] = out["TotalSales"] / out["OrderCount"]
    return out[list(customer_features(_empty_clean()).columns)]


def _empty_clean() -> pd.DataFrame:
    return pd.DataFrame({"CustomerID": pd.Series(dtype="str"), "InvoiceNo": pd.Series(dtype="str"),
                         "Sales": pd.Series(dtype="float64")})
