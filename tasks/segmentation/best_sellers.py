"""Best sellers: each segment's ten most ordered products (by distinct orders), service codes left out."""

from __future__ import annotations

import numpy as np
import pandas as pd

from customer_segments.tasks.methods.products import codes_of, is_service_code, most_frequent_names

TOP_N = 10


def best_sellers(clean: pd.DataFrame, labels: pd.DataFrame, *, service_codes: list[dict] | None) -> pd.DataFrame:
    """The best_sellers stage: top_products of the clean lines and the segments.

    `service_codes` are the rows of the editable list of non-product codes (data/reference),
    left out of the best sellers.
    """
    codes = pd.DataFrame(service_codes) if service_codes else None
    return top_products(clean, labels, service_codes=codes)


def best_seller_metrics(frames, params) -> dict:
    """How many cleaned lines were service codes (postage, fees, vouchers) left out of best sellers."""
    codes = params.get("service_codes")
    excluded = int(is_service_code(frames["clean_invoices"]["StockCode"], pd.DataFrame(codes)).sum()) if codes else 0
    return {"service_lines_excluded": excluded}


def top_products(
    clean: pd.DataFrame, labels: pd.DataFrame, top_n: int = TOP_N, service_codes: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Each segment's best sellers by number of distinct orders, with quantity and revenue.

    With `service_codes` (see tasks/products.py), postage, fees and other service lines are left
    out before ranking: POSTAGE is on most orders but is not a product anyone chooses.
    """
    # Integer codes and numpy instead of joins and groupbys on the string columns: at millions of
    # lines those dominated the stage. Each line's segment by its customer's position in labels;
    # service lines and lines of customers without a segment are masked out, not copied out.
    position = _positions(clean["CustomerID"], labels["CustomerID"])
    known = position >= 0
    if service_codes is not None:
        known &= ~is_service_code(clean["StockCode"], service_codes).to_numpy()
    segment = labels["segment"].to_numpy()[position[known]]
    item, items = codes_of(clean["StockCode"])
    invoice, invoices = codes_of(clean["InvoiceNo"])
    item, invoice = item[known], invoice[known]
    group = segment.astype("int64") * len(items) + item                     # one number per (segment, item)
    size = (int(segment.max()) + 1 if len(segment) else 0) * len(items)
    quantity = np.bincount(group, weights=clean["Quantity"].to_numpy()[known], minlength=size)
    revenue = np.bincount(group, weights=clean["Sales"].to_numpy()[known], minlength=size)
    # Distinct orders per (segment, item): distinct (invoice, group) pairs, counted per group. An
    # export lists an invoice's lines together, so these keys arrive almost sorted and a stable
    # (run-adaptive) sort makes them distinct faster than hashing.
    pairs = np.sort(invoice.astype("int64") * max(size, 1) + group, kind="stable")
    distinct = pairs[np.r_[True, pairs[1:] != pairs[:-1]]] if len(pairs) else pairs
    orders = np.bincount(distinct % max(size, 1), minlength=size)
    present = np.flatnonzero(orders)
    per_item = pd.DataFrame({
        "segment": present // max(len(items), 1), "StockCode": pd.array(items).take(present % max(len(items), 1)),
        "orders": orders[present], "quantity": np.rint(quantity[present]).astype("int64"), "revenue": revenue[present],
    })
    ranked = rank_top_products(per_item, labels, None, top_n)
    # Descriptions of the listed items only (a few dozen), not of every line's.
    listed = clean.loc[clean["StockCode"].isin(ranked["StockCode"].unique()).to_numpy(), ["StockCode", "Description"]]
    counts = listed.groupby(["StockCode", "Description"], sort=True).size().rename("n").reset_index()
    return ranked.drop(columns="Description").merge(most_frequent_names(counts), on="StockCode", how="left",
                                                    validate="many_to_one")[ranked.columns].astype({"Description": "str"})


def _positions(values: pd.Series, keys: pd.Series) -> np.ndarray:
    """Each value's position in `keys` (-1 when absent), hashed in Arrow's C++ for string columns."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found = pc.index_in(pa.array(values.array), value_set=pa.array(keys.array))
    return found.fill_null(-1).to_numpy().astype("int64")


def rank_top_products(per_item: pd.DataFrame, labels: pd.DataFrame, name_counts: pd.DataFrame | None,
                      top_n: int = TOP_N) -> pd.DataFrame:
    """Each segment's top_n items by distinct orders (then revenue, then code), named and labelled.

    per_item: segment, StockCode, orders, quantity, revenue; name_counts: StockCode, Description,
    n (lines), or None to leave the descriptions blank for the caller. Both engines rank with
    this, from totals they compute their own way.
    """
    keys = ["segment", "segment_name"] + (["segment_id"] if "segment_id" in labels else [])
    names = labels.drop_duplicates("segment").set_index("segment")[keys[1:]]
    per_item = per_item.join(names, on="segment")
    ranked = per_item.sort_values(
        ["segment", "orders", "revenue", "StockCode"], ascending=[True, False, False, True], kind="stable"
    )
    top = ranked.groupby("segment", sort=False).head(top_n).reset_index(drop=True)
    top.insert(len(keys), "rank", top.groupby("segment").cumcount().add(1).astype("int64"))
    if name_counts is None:
        top["Description"] = pd.Series(pd.NA, index=top.index, dtype="str")
    else:
        top = top.merge(most_frequent_names(name_counts), on="StockCode", how="left", validate="many_to_one")
    columns = [*keys, "rank", "StockCode", "Description", "orders", "quantity", "revenue"]
    return top[columns].astype({"segment": "int64", "orders": "int64", "quantity": "int64", "StockCode": "str",
                                "Description": "str"})


# --- the dask twin: the same on a dask.distributed cluster (the dask engine) --------------------


def best_sellers_dask(clean_lines, labels: pd.DataFrame, *, service_codes: list[dict] | None) -> pd.DataFrame:
    """The best sellers from the partitioned lines on the cluster, ranked as on the pandas engine."""
    return top_products_dask(clean_lines, labels, service_codes)


def top_products_dask(clean_lines, labels: pd.DataFrame, service_codes: list[dict] | None = None,
                 top_n: int = TOP_N) -> pd.DataFrame:
    import dask

    codes = pd.DataFrame(service_codes) if service_codes else None
    # The customers' segments go to the workers once, as one piece of data, not inside each task.
    segment_of = dask.delayed(labels.set_index("CustomerID")["segment"], pure=True)

    def tagged(part: pd.DataFrame, segment_of: pd.Series) -> pd.DataFrame:
        if codes is not None:
            part = part.loc[~is_service_code(part["StockCode"], codes).to_numpy()]
        segment = segment_of.reindex(part["CustomerID"]).to_numpy()
        out = part[["StockCode", "InvoiceNo", "Quantity", "Sales"]].assign(segment=segment)
        return out[pd.notna(segment)].astype({"segment": "int64"})

    meta = pd.DataFrame({"StockCode": pd.Series(dtype="str"), "InvoiceNo": pd.Series(dtype="str"),
                         "Quantity": pd.Series(dtype="int64"), "Sales": pd.Series(dtype="float64"),
                         "segment": pd.Series(dtype="int64")})
    lines = clean_lines.map_partitions(tagged, segment_of, meta=meta)
    sums = lines.groupby(["segment", "StockCode"])[["Quantity", "Sales"]].sum()
    # Distinct orders per item: an invoice can span two partitions, so the (item, invoice) pairs
    # are made distinct across the cluster. They travel as two 64-bit hashes, not as strings, which
    # makes that shuffle a fraction of the lines' size; a collision would have to join two
    # invoices holding the same item in the same segment.
    pairs = lines.map_partitions(_item_invoice_pairs, meta=pd.DataFrame({"item": pd.Series(dtype="uint64"),
                                                                         "invoice": pd.Series(dtype="uint64")}))
    orders = pairs.drop_duplicates(split_out=max(1, lines.npartitions // 8)).groupby("item").size()
    names_lines = clean_lines[["StockCode", "Description"]]
    described = names_lines.groupby(["StockCode", "Description"]).size()
    sums, orders, described = dask.compute(sums, orders, described)
    per_item = sums.reset_index()
    per_item["orders"] = orders.reindex(_item_hashes(per_item)).to_numpy()
    per_item = per_item.rename(columns={"Quantity": "quantity", "Sales": "revenue"})
    return rank_top_products(per_item, labels, described.rename("n").reset_index(), top_n)


def _item_hashes(lines: pd.DataFrame) -> np.ndarray:
    """One 64-bit key per (segment, StockCode)."""
    return pd.util.hash_pandas_object(lines[["segment", "StockCode"]].astype({"StockCode": "str"}), index=False).to_numpy()


def _item_invoice_pairs(lines: pd.DataFrame) -> pd.DataFrame:
    pairs = pd.DataFrame({"item": _item_hashes(lines),
                          "invoice": pd.util.hash_pandas_object(lines["InvoiceNo"], index=False).to_numpy()})
    return pairs.drop_duplicates(ignore_index=True)


def best_seller_metrics_dask(frames, params) -> dict:
    codes = params.get("service_codes")
    if not codes:
        return {"service_lines_excluded": 0}
    table = pd.DataFrame(codes)
    counted = frames["clean_invoices"]["StockCode"].map_partitions(
        lambda s: pd.Series([int(is_service_code(s, table).sum())]), meta=(None, "int64")).sum().compute()
    return {"service_lines_excluded": int(counted)}
