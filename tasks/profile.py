"""Profile: what each segment looks like, and what it buys."""

from __future__ import annotations

import pandas as pd

from customer_segments.tasks.cluster import NORMALIZED
from customer_segments.tasks.features import FEATURES

TOP_N = 10


def profile(labels: pd.DataFrame, clean: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The profile stage's two datasets: segment_profiles and top_products."""
    return segment_profiles(labels), top_products(clean, labels)


def segment_profiles(labels: pd.DataFrame) -> pd.DataFrame:
    """Per segment: size, share, center (normalized), mean and median raw features; by total sales."""
    grouped = labels.groupby(["segment", "segment_name"], sort=True)
    size = grouped.size().rename("size")
    centers = grouped[list(NORMALIZED)].mean()
    centers.columns = [f"center_{f}" for f in FEATURES]
    means = grouped[list(FEATURES)].mean().add_prefix("mean_")
    medians = grouped[list(FEATURES)].median().add_prefix("median_")
    total = grouped["TotalSales"].sum().rename("total_sales")
    profiles = pd.concat([size, centers, means, medians, total], axis=1).reset_index()
    profiles.insert(3, "share", profiles["size"] / profiles["size"].sum())
    profiles["size"] = profiles["size"].astype("int64")
    return profiles.sort_values("total_sales", ascending=False, kind="stable").reset_index(drop=True)


def top_products(clean: pd.DataFrame, labels: pd.DataFrame, top_n: int = TOP_N) -> pd.DataFrame:
    """Each segment's best sellers by number of distinct orders, with quantity and revenue."""
    lines = clean[["CustomerID", "InvoiceNo", "StockCode", "Quantity", "Sales"]].merge(
        labels[["CustomerID", "segment", "segment_name"]], on="CustomerID", how="inner", validate="many_to_one"
    )
    per_item = lines.groupby(["segment", "segment_name", "StockCode"], sort=False).agg(
        orders=("InvoiceNo", "nunique"), quantity=("Quantity", "sum"), revenue=("Sales", "sum")
    ).reset_index()
    ranked = per_item.sort_values(
        ["segment", "orders", "revenue", "StockCode"], ascending=[True, False, False, True], kind="stable"
    )
    top = ranked.groupby("segment", sort=False).head(top_n).reset_index(drop=True)
    top.insert(2, "rank", top.groupby("segment").cumcount().add(1).astype("int64"))
    top = top.merge(product_names(clean), on="StockCode", how="left", validate="many_to_one")
    columns = ["segment", "segment_name", "rank", "StockCode", "Description", "orders", "quantity", "revenue"]
    return top[columns].astype({"orders": "int64", "quantity": "int64"})


def product_names(clean: pd.DataFrame) -> pd.DataFrame:
    """The most frequent description of each StockCode (exports spell some items several ways)."""
    counts = clean.groupby(["StockCode", "Description"], sort=True).size().rename("n").reset_index()
    counts = counts.sort_values(["StockCode", "n"], ascending=[True, False], kind="stable")
    return counts.drop_duplicates("StockCode")[["StockCode", "Description"]]
