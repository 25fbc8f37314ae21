"""The line-level stages on the dask engine: the same analysis as dask.dataframe work on a cluster.

Invoice lines can outgrow one machine; customers do not (10 million customers x 3 features is
240 MB). So ingest, clean, features and the best sellers run as dask.dataframe graphs on a
dask.distributed cluster, their line-level outputs written as partitioned Parquet datasets, and
every stage from the customer features on works in pandas as on the pandas engine. Wherever it
can, a dask transform applies the pandas engine's own pure function to each partition
(`map_partitions`), so the two engines cannot drift apart; the results are the same to
floating-point rounding (sums of partial sums).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from customer_segments.tasks.clean import RULES, clean_invoices, cleaning_summary, rows_dropped, window_start
from customer_segments.tasks.features import customer_features, feature_metrics
from customer_segments.tasks.ingest import (
    COLUMNS,
    _read_table,
    drop_repeats_across_files,
    input_files,
    normalize_invoices,
)
from customer_segments.tasks.profile import TOP_N, rank_top_products, segment_profiles


def read_invoices(input_path: Path | str, encoding: str | None = None, date_format: str | None = None):
    """One export file or a folder of them as a dask DataFrame of normalised invoice lines.

    Parquet files are read in row-group partitions; a CSV or Excel file is one partition. Lines
    repeated across files are counted once, as on the pandas engine (only lines dated within the
    date range of two or more files can be repeats, so only those are compared).
    """

    files = input_files(Path(input_path))
    frames = [_file_frame(f, encoding, date_format) for f in files]
    if len(frames) == 1:
        return frames[0]
    return _without_repeats(frames)


def _file_frame(path: Path, encoding: str | None, date_format: str | None):
    import dask.dataframe as dd

    if path.suffix.lower() == ".parquet":
        raw = dd.read_parquet(str(path), index=False)
        return raw.map_partitions(_normalized_part, str(path), date_format,
                                  meta=normalize_invoices(_drop_index_columns(raw._meta), str(path)))
    # CSV and Excel: the pandas engine's readers, one partition per file.
    return dd.from_map(_read_whole, [path], encoding=encoding, date_format=date_format)


def _read_whole(path: Path, encoding: str | None = None, date_format: str | None = None) -> pd.DataFrame:
    return normalize_invoices(*_read_table(path, encoding), date_format=date_format)


def _normalized_part(part: pd.DataFrame, source: str, date_format: str | None) -> pd.DataFrame:
    return normalize_invoices(_drop_index_columns(part), source, date_format=date_format)


def _drop_index_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """A pandas index saved with the file is not data (see ingest._read_parquet)."""
    return frame.drop(columns=[c for c in frame.columns if str(c).startswith("__index_level_")])


# Lines dropped as repeats across files, by the name of the dask frame they were dropped from: the
# ingest metrics (computed in the same process, on the same frame) report them.
_REPEATS_DROPPED: dict[str, int] = {}


def _invoice_hashes(numbers: pd.Series) -> np.ndarray:
    return pd.util.hash_pandas_object(numbers, index=False).to_numpy()


def _distinct_invoice_hashes(numbers: pd.Series) -> pd.Series:
    return pd.Series(pd.unique(_invoice_hashes(numbers)))


def _in_shared_invoices(numbers: pd.Series, shared: np.ndarray) -> pd.Series:
    return pd.Series(np.isin(_invoice_hashes(numbers), shared), index=numbers.index)


def _without_repeats(frames: list):
    """The files' lines, with lines repeated across files counted once (see ingest.drop_repeats_across_files).

    A line repeated in two files has the same InvoiceNo in both, so only the lines of invoices
    that appear in two or more files are compared, in pandas; the rest of each file passes as
    it is. A folder partitioned by customer or by month shares no invoice and compares nothing;
    a cumulative export beside last month's compares last month's lines. Invoice numbers are
    compared by a 64-bit hash: a collision only adds lines to the comparison, which is exact.
    """
    import dask
    import dask.dataframe as dd

    # Each partition's distinct invoice numbers (a few per cent of its lines), made distinct per
    # file here: no shuffle.
    per_file = dask.compute(*[f["InvoiceNo"].map_partitions(_distinct_invoice_hashes, meta=("InvoiceNo", "uint64"))
                              for f in frames])
    seen = pd.Series(np.concatenate([np.unique(u.to_numpy(dtype="uint64")) for u in per_file])).value_counts()
    shared = np.sort(seen.index[seen.to_numpy() > 1].to_numpy(dtype="uint64"))
    if not len(shared):
        return dd.concat(frames)
    shared_arg = dask.delayed(shared, pure=True)  # one copy in the graph, not one per partition
    masks = [f["InvoiceNo"].map_partitions(_in_shared_invoices, shared_arg, meta=("InvoiceNo", bool)) for f in frames]
    compared = dask.compute(*[f[m] for f, m in zip(frames, masks)])
    kept = drop_repeats_across_files([c.reset_index(drop=True) for c in compared])
    rest = [f[~m] for f, m in zip(frames, masks)]
    out = dd.concat([*rest, dd.from_pandas(kept, npartitions=1)])
    _REPEATS_DROPPED[out._name] = sum(len(c) for c in compared) - len(kept)
    return out


def ingest_metrics(frames, params) -> dict:
    import dask

    raw = frames["raw_invoices"]
    rows, first, last = dask.compute(raw.shape[0], raw["InvoiceDate"].min(), raw["InvoiceDate"].max())
    files = len(input_files(Path(params["input_path"])))
    repeats = _REPEATS_DROPPED.get(raw._name, 0)
    return {"files": files, "rows_read": int(rows) + repeats, "repeated_across_files": repeats, "rows_raw": int(rows),
            "first_invoice": None if pd.isna(first) else pd.Timestamp(first).isoformat(),
            "last_invoice": None if pd.isna(last) else pd.Timestamp(last).isoformat()}


def clean(raw, cutoff, window: int | None = None):
    """The pandas engine's cleaning, partition by partition (each rule looks at one line at a time)."""
    return raw.map_partitions(clean_invoices, cutoff, window, meta=clean_invoices(raw._meta, cutoff, window))


def clean_metrics(frames, params) -> dict:
    import dask

    raw, kept = frames["raw_invoices"], frames["clean_invoices"]
    window = params.get("window")
    per_part = raw.map_partitions(lambda p: pd.DataFrame([rows_dropped(p, params["cutoff"], window)]),
                                  meta=pd.DataFrame({rule: pd.Series(dtype="int64") for rule in RULES}))
    dropped, rows_in, rows_clean = dask.compute(per_part.sum(), raw.shape[0], kept.shape[0])
    dropped = {rule: int(dropped[rule]) for rule in RULES}
    start = window_start(params["cutoff"], window)
    return {"rows_in": int(rows_in), "rows_dropped": dropped, "rows_clean": int(rows_clean),
            "window_start": None if start is None else start.isoformat(),
            "cleaning_summary": cleaning_summary(int(rows_in), dropped, params["cutoff"], start)}


def features(clean_lines) -> pd.DataFrame:
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


def profile(labels: pd.DataFrame, clean_lines, lineage: pd.DataFrame | None = None,
            stability: pd.DataFrame | None = None, service_codes: list[dict] | None = None):
    """segment_profiles as on the pandas engine; the best sellers from the lines on the cluster."""
    return segment_profiles(labels, lineage, stability), top_products(clean_lines, labels, service_codes)


def top_products(clean_lines, labels: pd.DataFrame, service_codes: list[dict] | None = None,
                 top_n: int = TOP_N) -> pd.DataFrame:
    import dask

    from customer_segments.tasks.products import is_service_code

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


def profile_metrics(frames, params) -> dict:
    from customer_segments.tasks.products import is_service_code

    codes = params.get("service_codes")
    if not codes:
        return {"service_lines_excluded": 0}
    table = pd.DataFrame(codes)
    counted = frames["clean_invoices"]["StockCode"].map_partitions(
        lambda s: pd.Series([int(is_service_code(s, table).sum())]), meta=(None, "int64")).sum().compute()
    return {"service_lines_excluded": int(counted)}


__all__ = ["COLUMNS", "clean", "clean_metrics", "feature_metrics", "features", "ingest_metrics", "profile",
           "profile_metrics", "read_invoices", "top_products"]
