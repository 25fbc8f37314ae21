"""Profile: what each segment looks like, and what it buys."""

from __future__ import annotations

import pandas as pd

from customer_segments.tasks.cluster import NORMALIZED
from customer_segments.tasks.features import FEATURES
from customer_segments.tasks.products import product_lines, product_names

TOP_N = 10


def profile(labels: pd.DataFrame, clean: pd.DataFrame, lineage: pd.DataFrame | None = None,
            stability: pd.DataFrame | None = None, service_codes: list[dict] | None = None
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The profile stage's two datasets: segment_profiles and top_products.

    `service_codes` are the rows of the editable list of non-product codes (data/reference),
    left out of the best sellers.
    """
    codes = pd.DataFrame(service_codes) if service_codes else None
    return segment_profiles(labels, lineage, stability), top_products(clean, labels, service_codes=codes)


def profile_metrics(frames, params) -> dict:
    """How many cleaned lines were service codes (postage, fees, vouchers) left out of best sellers."""
    from customer_segments.tasks.products import is_service_code

    codes = params.get("service_codes")
    excluded = int(is_service_code(frames["clean_invoices"]["StockCode"], pd.DataFrame(codes)).sum()) if codes else 0
    return {"service_lines_excluded": excluded}


def segment_profiles(labels: pd.DataFrame, lineage: pd.DataFrame | None = None,
                     stability: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per segment: size, share, center (normalized), mean and median raw features; by total sales.

    With the lineage and stability tables: the segment's id, its transition since last month and
    where it came from, and its bootstrap stability with Hennig's reading.
    """
    keys = ["segment", "segment_name"] + (["segment_id"] if "segment_id" in labels else [])
    grouped = labels.groupby(keys, sort=True)
    size = grouped.size().rename("size")
    centers = grouped[list(NORMALIZED)].mean()
    centers.columns = [f"center_{f}" for f in FEATURES]
    means = grouped[list(FEATURES)].mean().add_prefix("mean_")
    medians = grouped[list(FEATURES)].median().add_prefix("median_")
    total = grouped["TotalSales"].sum().rename("total_sales")
    profiles = pd.concat([size, centers, means, medians, total], axis=1).reset_index()
    profiles.insert(len(keys) + 1, "share", profiles["size"] / profiles["size"].sum())
    profiles["size"] = profiles["size"].astype("int64")
    if lineage is not None:
        current = lineage.dropna(subset=["segment"]).astype({"segment": "int64"})
        profiles = profiles.merge(current[["segment", "transition", "came_from"]], on="segment", how="left",
                                  validate="one_to_one")
    if stability is not None:
        profiles = profiles.merge(stability[["segment", "stability", "reading"]].rename(
            columns={"reading": "stability_reading"}), on="segment", how="left", validate="one_to_one")
    return profiles.sort_values("total_sales", ascending=False, kind="stable").reset_index(drop=True)


def top_products(
    clean: pd.DataFrame, labels: pd.DataFrame, top_n: int = TOP_N, service_codes: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Each segment's best sellers by number of distinct orders, with quantity and revenue.

    With `service_codes` (see tasks/products.py), postage, fees and other service lines are left
    out before ranking: POSTAGE is on most orders but is not a product anyone chooses.
    """
    lines = product_lines(clean, service_codes)
    keys = ["segment", "segment_name"] + (["segment_id"] if "segment_id" in labels else [])
    lines = lines[["CustomerID", "InvoiceNo", "StockCode", "Quantity", "Sales"]].merge(
        labels[["CustomerID", *keys]], on="CustomerID", how="inner", validate="many_to_one"
    )
    per_item = lines.groupby([*keys, "StockCode"], sort=False).agg(
        orders=("InvoiceNo", "nunique"), quantity=("Quantity", "sum"), revenue=("Sales", "sum")
    ).reset_index()
    ranked = per_item.sort_values(
        ["segment", "orders", "revenue", "StockCode"], ascending=[True, False, False, True], kind="stable"
    )
    top = ranked.groupby("segment", sort=False).head(top_n).reset_index(drop=True)
    top.insert(len(keys), "rank", top.groupby("segment").cumcount().add(1).astype("int64"))
    top = top.merge(product_names(clean), on="StockCode", how="left", validate="many_to_one")
    columns = [*keys, "rank", "StockCode", "Description", "orders", "quantity", "revenue"]
    return top[columns].astype({"orders": "int64", "quantity": "int64"})
