"""Best sellers: each segment's ten most ordered products (by distinct orders), service codes left out."""

from __future__ import annotations

import numpy as np
import pandas as pd

from customer_segments.tasks.encoding import dictionary_codes, in_several, positions, text_hashes
from customer_segments.tasks.methods.products import (
    most_frequent_names, name_counts, service_lines,
)

TOP_N = 10


def best_sellers(clean: pd.DataFrame, labels: pd.DataFrame, *, service_codes: list[dict] | None) -> pd.DataFrame:
    """The best_sellers stage: top_products of the clean lines and the segments.

    `service_codes` are the rows of the editable list of non-product codes (data/reference),
    left out of the best sellers.
    """
    codes = pd.DataFrame(service_codes) if service_codes else None
    return top_products(clean, labels, service_codes=codes)


def best_seller_metrics(frames, params) -> dict:
    """How many cleaned lines were service codes (postage, fees, vouchers) left out of best sellers:
    counted by top_products (or its dask twin) on its way."""
    return {"service_lines_excluded": frames["top_products"].attrs.get("service_lines_excluded", 0)}


def top_products(
    clean: pd.DataFrame, labels: pd.DataFrame, top_n: int = TOP_N, service_codes: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Each segment's best sellers by number of distinct orders, with quantity and revenue.

    With `service_codes` (see tasks/products.py), postage, fees and other service lines are left
    out before ranking: POSTAGE is on most orders but is not a product anyone chooses. The
    number of lines left out is in the result's `attrs` (for the stage's metrics).
    """
    # Integer codes and numpy instead of joins and groupbys on the string columns: at millions of
    # lines those dominated the stage (see _counted_lines).
    segment_of = _segment_of(labels)
    line_item, items, line_invoice, _, service, known, segment = _counted_lines(clean, segment_of, service_codes)
    item, invoice = line_item[known], line_invoice[known]
    group = segment * len(items) + item                                     # one number per (segment, item)
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
    wanted = items.get_indexer(ranked["StockCode"].unique())
    listed = clean.loc[np.isin(line_item, wanted[wanted >= 0]), ["StockCode", "Description"]]
    counts = listed.groupby(["StockCode", "Description"], sort=True).size().rename("n").reset_index()
    top = ranked.drop(columns="Description").merge(most_frequent_names(counts), on="StockCode", how="left",
                                                   validate="many_to_one")
    top = top[ranked.columns].astype({"Description": "str"})
    top.attrs = {"service_lines_excluded": int(service.sum())}
    return top


def _segment_of(labels: pd.DataFrame) -> pd.Series:
    """Each customer's segment, by CustomerID."""
    return labels.drop_duplicates("CustomerID").set_index("CustomerID")["segment"]


def _counted_lines(lines: pd.DataFrame, segment_of: pd.Series, codes: pd.DataFrame | None) -> tuple:
    """The lines' products and invoices as codes (Arrow's dictionary encoding) with the values
    they stand for, which lines are service lines, which count (a customer with a segment, a
    product, not a service line: masked, not copied out) and the segment of each that counts.
    Each distinct customer is looked up and each distinct product judged once, not each line."""
    item, items = dictionary_codes(lines["StockCode"])
    invoice, invoices = dictionary_codes(lines["InvoiceNo"])
    customer, customers = dictionary_codes(lines["CustomerID"])
    position = np.append(positions(customers, segment_of.index), -1)[customer]
    service = np.zeros(len(lines), dtype=bool) if codes is None else service_lines(item, items, codes)
    known = (position >= 0) & (item >= 0) & ~service
    segment = segment_of.to_numpy()[position[known]].astype("int64")
    return item, items, invoice, invoices, service, known, segment


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
    """`top_products` from partitioned lines, each partition reduced where it is.

    Each partition's totals per (segment, item) come back, not its lines: quantity, revenue, and
    the distinct orders holding the item. An invoice whose lines are in two partitions would be
    counted in both, so a first pass finds those invoices (by a 64-bit hash of their numbers: a
    collision only sends more invoices the exact way) and their (segment, item, invoice) triples
    come back to be counted once. The orders and quantities are the pandas engine's; the revenue
    is the same sum added in another order (equal to about 1e-12 of it). The line counts of each
    (StockCode, Description) name the items, and the service lines left out are counted on the
    way (`attrs`, for the metrics).
    """
    import dask
    from distributed import get_client

    client = get_client()
    codes = pd.DataFrame(service_codes) if service_codes else None
    parts = clean_lines[["CustomerID", "InvoiceNo", "StockCode", "Description", "Quantity", "Sales"]].to_delayed()
    shared = in_several(client.gather(client.compute([dask.delayed(_invoice_hashes)(part)
                                                      for part in clean_lines[["InvoiceNo"]].to_delayed()])))
    [segment_of] = client.scatter([_segment_of(labels)], broadcast=True)
    found = client.gather(client.compute([dask.delayed(_item_totals)(part, segment_of, codes, shared)
                                          for part in parts]))
    totals = pd.concat([f["totals"] for f in found], ignore_index=True)
    per_item = totals.groupby(["segment", "StockCode"], sort=True).sum().reset_index()
    triples = pd.concat([f["shared"] for f in found], ignore_index=True).drop_duplicates()
    again = triples.groupby(["segment", "StockCode"], sort=True).size()
    per_item["orders"] += again.reindex(pd.MultiIndex.from_frame(per_item[["segment", "StockCode"]]),
                                        fill_value=0).to_numpy()
    per_item = per_item[per_item["orders"].to_numpy() > 0]
    per_item = per_item.assign(quantity=np.rint(per_item["quantity"].to_numpy()).astype("int64"))
    names = pd.concat([f["names"] for f in found], ignore_index=True)
    names = names.groupby(["StockCode", "Description"], sort=True)["n"].sum().reset_index()
    top = rank_top_products(per_item.reset_index(drop=True), labels, names, top_n)
    top.attrs = {"service_lines_excluded": int(sum(f["service"] for f in found))}
    return top


def _invoice_hashes(part: pd.DataFrame) -> np.ndarray:
    """A partition's distinct invoices, as 64-bit hashes."""
    return text_hashes(dictionary_codes(part["InvoiceNo"])[1])


def _item_totals(part: pd.DataFrame, segment_of: pd.Series, codes: pd.DataFrame | None, shared: np.ndarray) -> dict:
    """A partition's totals per (segment, StockCode), its orders counted without the `shared`
    invoices, whose (segment, StockCode, InvoiceNo) triples come apart; its name counts."""
    item, items, invoice, invoices, service, known, segment = _counted_lines(part, segment_of, codes)
    width = max(len(items), 1)
    group = segment * width + item[known]
    size = (int(segment.max()) + 1 if len(segment) else 0) * width
    quantity = np.bincount(group, weights=part["Quantity"].to_numpy(dtype="float64")[known], minlength=size)
    revenue = np.bincount(group, weights=part["Sales"].to_numpy(dtype="float64")[known], minlength=size)
    apart = np.append(np.isin(text_hashes(invoices), shared), False)[invoice[known]]
    pairs = np.sort(invoice[known][~apart].astype("int64") * max(size, 1) + group[~apart], kind="stable")
    pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]] if len(pairs) else pairs  # distinct, as top_products does
    orders = np.bincount(pairs % max(size, 1), minlength=size)
    present = np.flatnonzero(np.bincount(group, minlength=size))
    totals = pd.DataFrame({"segment": present // width, "StockCode": items.take(present % width),
                           "orders": orders[present], "quantity": quantity[present], "revenue": revenue[present]})
    triples = pd.DataFrame({"segment": segment[apart], "StockCode": items.take(item[known][apart]),
                            "InvoiceNo": invoices.take(invoice[known][apart])})
    names = name_counts(item, items, *dictionary_codes(part["Description"]))
    return {"totals": totals, "shared": triples, "names": names, "service": int(service.sum())}
