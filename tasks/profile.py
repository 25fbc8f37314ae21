"""Profile: what each segment looks like, and what it buys."""

from __future__ import annotations

import pandas as pd

from customer_segments.tasks.cluster import NORMALIZED
from customer_segments.tasks.features import FEATURES
from customer_segments.tasks.products import most_frequent_names, product_lines

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
    # Integer codes instead of a join on the string ids: at millions of lines a merge on
    # CustomerID and a nunique per group dominate the stage.
    position = pd.Index(labels["CustomerID"]).get_indexer(lines["CustomerID"])
    known = position >= 0
    segment = labels["segment"].to_numpy()[position[known]]
    item_code, items = pd.factorize(lines["StockCode"].to_numpy()[known])
    invoice_code, _ = pd.factorize(lines["InvoiceNo"].to_numpy()[known])
    grouped = pd.DataFrame({"segment": segment, "item": item_code,
                            "quantity": lines["Quantity"].to_numpy()[known], "revenue": lines["Sales"].to_numpy()[known]})
    per_item = grouped.groupby(["segment", "item"], sort=False).agg(quantity=("quantity", "sum"), revenue=("revenue", "sum"))
    orders = (pd.DataFrame({"segment": segment, "item": item_code, "invoice": invoice_code})
              .drop_duplicates().groupby(["segment", "item"], sort=False).size())
    per_item = per_item.assign(orders=orders).reset_index()
    per_item["StockCode"] = items[per_item["item"].to_numpy()]
    counts = clean.groupby(["StockCode", "Description"], sort=True).size().rename("n").reset_index()
    return rank_top_products(per_item[["segment", "StockCode", "orders", "quantity", "revenue"]], labels, counts, top_n)


def rank_top_products(per_item: pd.DataFrame, labels: pd.DataFrame, name_counts: pd.DataFrame,
                      top_n: int = TOP_N) -> pd.DataFrame:
    """Each segment's top_n items by distinct orders (then revenue, then code), named and labelled.

    per_item: segment, StockCode, orders, quantity, revenue; name_counts: StockCode, Description,
    n (lines). Both engines rank with this, from totals they compute their own way.
    """
    keys = ["segment", "segment_name"] + (["segment_id"] if "segment_id" in labels else [])
    names = labels.drop_duplicates("segment").set_index("segment")[keys[1:]]
    per_item = per_item.join(names, on="segment")
    ranked = per_item.sort_values(
        ["segment", "orders", "revenue", "StockCode"], ascending=[True, False, False, True], kind="stable"
    )
    top = ranked.groupby("segment", sort=False).head(top_n).reset_index(drop=True)
    top.insert(len(keys), "rank", top.groupby("segment").cumcount().add(1).astype("int64"))
    top = top.merge(most_frequent_names(name_counts), on="StockCode", how="left", validate="many_to_one")
    columns = [*keys, "rank", "StockCode", "Description", "orders", "quantity", "revenue"]
    return top[columns].astype({"orders": "int64", "quantity": "int64", "StockCode": "str", "Description": "str"})
