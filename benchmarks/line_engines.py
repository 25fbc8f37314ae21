"""Line-level engines: the product's pandas steps against DuckDB, Polars and pyarrow.compute.

    .venv/bin/pip install duckdb polars      # not dependencies of the product
    .venv/bin/python benchmarks/line_engines.py --input PATH [--repeat 3] [--options a,b] [--threads 1,2]
                                                [--skip-check] [--out line_engines.md]

Three steps of the segmentation flow, on one Parquet export:

  1. read + normalize   tasks/inputs/readers.read_invoices: the raw_invoices frame
  2. clean              tasks/segmentation/cleaning.clean_invoices(raw, 2011-12-01)
  3. orders             tasks/segmentation/orders.orders(clean)

Each option produces the same three pandas frames (the product writes every dataset with
storage.parquet_bytes and compares sha256 of those bytes, so a frame counts as identical only when
those bytes are):

  pandas          the product's three functions, as they are (the reference)
  duckdb          SQL over read_parquet / the previous step's Arrow table, fetched as Arrow
  polars          the lazy API, collected, exported as Arrow
  arrow           pyarrow.parquet + pyarrow.compute filters + Table.group_by

and each engine in two variants:

  native          the engine's own aggregation for `value` (the sum of an order's Sales) and its
                  own Arrow chunking; dtypes cast to the product's
  exact           what it takes to be byte-identical: `value` summed the way pandas sums it
                  (see arrow_pandas_group_sum) and every column in one chunk
  value (DuckDB)  `value` summed as pandas does, DuckDB's own chunks: identical on this input, but
                  the Parquet bytes of a string column depend on its chunks

plus `duckdb-e2e`, the reference point: read Parquet, clean and per-customer TotalSales /
OrderCount / AvgOrderValue in one DuckDB query (no per-line frame, no orders frame).

Every measurement is a fresh subprocess per repetition (page cache warm, nothing else shared),
with Arrow's CPU and I/O pools, DuckDB's `threads` and POLARS_MAX_THREADS all set to 1, then 2.
Wall seconds per step (each step includes its conversion to a pandas frame), the total, and the
child's peak RSS (ru_maxrss from os.wait4) are reported as medians. Identity is checked in
separate subprocesses (so hashing does not count towards time or memory): sha256 of
parquet_bytes(frame) against the product's, with a diagnosis of whatever differs.
Results go to --out (markdown) and stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path("line_engines.md")
SCRATCH = Path(tempfile.gettempdir()) / "line_engines"
CUTOFF = "2011-12-01"
DATASETS = ("raw", "clean", "orders")
ID_COLUMNS = ("InvoiceNo", "StockCode", "CustomerID")
# What str.strip() (and pyarrow's utf8_trim_whitespace, which pandas' .str.strip uses) removes.
WHITESPACE = "".join(ch for ch in map(chr, range(0x110000)) if ch.isspace())
# The same set as an RE2 class, for DuckDB: trim(x, characters) with these 29 characters is ten times
# slower than this regular expression, and trim(x) alone strips spaces only.
_WS_CLASS = "[" + "".join(f"\\x{{{ord(ch):x}}}" for ch in WHITESPACE) + "]"
STRIP_RE = f"^{_WS_CLASS}+|{_WS_CLASS}+$"
ORDER_COLUMNS = ["InvoiceNo", "CustomerID", "InvoiceDate", "value", "lines", "items", "Country"]

# option name -> (engine, variant)
OPTIONS = {
    "pandas": ("pandas", "product"),
    "duckdb-native": ("duckdb", "native"),
    "duckdb-exact": ("duckdb", "exact"),
    "duckdb-value": ("duckdb", "value"),
    "polars-native": ("polars", "native"),
    "polars-exact": ("polars", "exact"),
    "arrow-native": ("arrow", "native"),
    "arrow-exact": ("arrow", "exact"),
    "duckdb-e2e": ("duckdb-e2e", "reference"),
}
LABELS = {
    "pandas": "pandas (product)",
    "duckdb-native": "duckdb, native sum",
    "duckdb-exact": "duckdb, exact",
    "duckdb-value": "duckdb, pandas' value sums, DuckDB's chunks",
    "polars-native": "polars, native sum",
    "polars-exact": "polars, exact",
    "arrow-native": "pyarrow compute, native sum",
    "arrow-exact": "pyarrow compute, exact",
    "duckdb-e2e": "DuckDB end-to-end (per-customer totals only)",
}


# --------------------------------------------------------------------------------------------
# The product's float sums, reproduced
# --------------------------------------------------------------------------------------------


def pandas_sum_sorted(values, starts):
    """pandas' groupby sum when the rows are already in key order: np.add.reduceat per segment.

    pandas 3.1.1 as installed here (GroupBy ops._reduceat_aggregate) takes this path when the group
    ids are monotonic and the values have no NaN: each group's sum is its first value plus numpy's
    pairwise sum (8 accumulators from 8 values on) of the rest. Not the sequential sum, not Kahan.
    """
    import numpy as np

    if len(starts) == 0:
        return np.zeros(0, dtype="float64")
    return np.add.reduceat(values, starts)


def pandas_sum_kahan(values, codes, ngroups):
    """pandas' Cython group_sum (the path for unsorted rows or NaN): Kahan in row order, NaN skipped.

    Vectorised over groups: the k-th value of every group in one numpy step, k = 0 .. largest group.
    A non-finite compensation is reset to 0 as pandas does (GH#53606).
    """
    import numpy as np

    order = np.argsort(codes, kind="stable")
    sorted_codes, sorted_values = codes[order], values[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]) if len(codes) else np.zeros(0, int)
    groups = sorted_codes[starts]
    lengths = np.diff(np.r_[starts, len(codes)])
    total = np.zeros(ngroups, dtype="float64")
    comp = np.zeros(ngroups, dtype="float64")
    by_length = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[by_length]
    for k in range(int(lengths.max()) if len(lengths) else 0):
        active = by_length[: int(np.searchsorted(-sorted_lengths, -k, side="left"))]
        val = sorted_values[starts[active] + k]
        keep = val == val
        active, val = active[keep], val[keep]
        g = groups[active]
        y = val - comp[g]
        t = total[g] + y
        c = (t - total[g]) - y
        c[~np.isfinite(c)] = 0.0
        comp[g] = c
        total[g] = t
    return total


def arrow_pandas_group_sum(keys, values):
    """(sorted unique keys as an Arrow array, their sums exactly as pandas' groupby sum gives them)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    if keys.null_count:
        raise NotImplementedError("null group keys (pandas drops them) are not handled here")
    n = len(keys)
    if n > 1:
        prev, nxt = keys.slice(0, n - 1), keys.slice(1)
        monotonic = pc.all(pc.greater_equal(nxt, prev)).as_py()
    else:
        monotonic = True
    if monotonic and not np.isnan(values).any():
        change = pc.not_equal(nxt, prev).to_numpy(zero_copy_only=False) if n > 1 else np.zeros(0, bool)
        starts = np.flatnonzero(np.r_[True, change]) if n else np.zeros(0, int)
        return keys.take(pa.array(starts)), pandas_sum_sorted(values, starts)
    codes = pc.rank(keys, sort_keys="ascending", tiebreaker="dense").to_numpy().astype("int64") - 1
    ngroups = int(codes.max()) + 1 if n else 0
    uniques = pc.unique(keys)
    uniques = uniques.take(pc.sort_indices(uniques))
    return uniques, pandas_sum_kahan(values, codes, ngroups)


# --------------------------------------------------------------------------------------------
# Arrow -> the product's pandas frame
# --------------------------------------------------------------------------------------------


def to_product_frame(table, combine: bool):
    """The product's dtypes: strings as pandas "str" (Arrow large_string), ints int64, dates ns.

    Every option converts the same way: split_blocks=True, so that a column in one chunk without
    nulls becomes a numpy array without a copy (pandas' block layout does not reach the Parquet
    bytes). `combine` (the exact variants) first puts every column into one chunk: Parquet's page
    and dictionary-fallback boundaries follow the chunks a string column arrives in, so the same
    values in other chunks can give other bytes (see the identity findings).
    """
    import pyarrow as pa

    columns = []
    for field, column in zip(table.schema, table.columns):
        if pa.types.is_string(field.type) or pa.types.is_string_view(field.type):
            column = column.cast(pa.large_string())
        if combine and column.num_chunks > 1:
            column = pa.chunked_array([column.combine_chunks()])
        columns.append(column)
    table = pa.Table.from_arrays(columns, names=table.column_names)
    return table.to_pandas(ignore_metadata=True, split_blocks=True)


def check_schema(schema) -> None:
    """The engines implement the typed-Parquet path of read_invoices only (what the input is)."""
    import pyarrow as pa

    want = {"InvoiceNo": "s", "StockCode": "s", "Description": "s", "Quantity": pa.int64(),
            "InvoiceDate": pa.timestamp("ns"), "UnitPrice": pa.float64(), "CustomerID": "s", "Country": "s"}
    for name, kind in want.items():
        t = schema.field(name).type
        ok = (pa.types.is_string(t) or pa.types.is_large_string(t)) if kind == "s" else t == kind
        if not ok:
            raise NotImplementedError(f"{name} is {t}; the engine variants handle the typed Parquet path only")


# --------------------------------------------------------------------------------------------
# Options: each returns the three frames, timing each step (conversion to pandas included)
# --------------------------------------------------------------------------------------------


def float_like_ids(column) -> bool:
    """Whether some stripped id ends in .0 or ,0 (then _id_strings drops trailing zeros)."""
    import pyarrow.compute as pc

    return bool(pc.any(pc.or_(pc.ends_with(column, ".0"), pc.ends_with(column, ",0"))).as_py())


class Timer:
    """Wall seconds per step, the process's CPU seconds per step (all its threads), and the share
    of each step spent building pandas frames."""

    def __init__(self):
        self.steps: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.to_pandas: dict[str, float] = {}
        self._began = (0.0, 0.0)

    def start(self):
        self._began = (time.perf_counter(), time.process_time())

    def stop(self, step):
        self.steps[step] = time.perf_counter() - self._began[0]
        self.cpu[step] = time.process_time() - self._began[1]

    def convert(self, step, fn, *args, **kwargs):
        began = time.perf_counter()
        out = fn(*args, **kwargs)
        self.to_pandas[step] = self.to_pandas.get(step, 0.0) + time.perf_counter() - began
        return out


def run_pandas(path, threads, variant, timer, keep):
    from customer_segments.tasks.inputs.readers import read_invoices
    from customer_segments.tasks.segmentation.cleaning import clean_invoices
    from customer_segments.tasks.segmentation.orders import orders

    timer.start()
    raw = read_invoices(path)
    timer.stop("read")
    timer.start()
    clean = clean_invoices(raw, CUTOFF)
    timer.stop("clean")
    if not keep:  # as the engines do: the raw lines are let go once the clean lines exist
        del raw
    timer.start()
    table = orders(clean)
    timer.stop("orders")
    return {"raw": raw, "clean": clean, "orders": table} if keep else {"clean": clean, "orders": table}


# Rows per Arrow batch fetched from DuckDB: fewer, larger chunks than its default (131,072) cost less
# to combine and convert.
DUCKDB_BATCH = 1 << 20


def _duckdb_connect(threads):
    import duckdb

    return duckdb.connect(config={"threads": threads, "preserve_insertion_order": True,
                                  "arrow_large_buffer_size": True})


def run_duckdb(path, threads, variant, timer, keep):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    con = _duckdb_connect(threads)
    exact = variant == "exact"  # every column in one chunk
    pandas_value = variant in ("exact", "value")  # `value` summed as pandas does
    frames = {}

    # 1. read + normalize: ids stripped (Python's whitespace), "" -> NULL; then, only when some id
    # ends in .0 or ,0 (a spreadsheet's float), the trailing zeros go, as _id_strings does.
    timer.start()
    schema = pq.read_schema(path)
    check_schema(schema)
    names = [n for n in schema.names if not n.startswith("__index_level_")]
    select = [f"nullif(regexp_replace({n}, '{STRIP_RE}', '', 'g'), '') AS {n}" if n in ID_COLUMNS else n
              for n in names]
    raw_t = con.sql(f"SELECT {', '.join(select)} FROM read_parquet('{path}')").to_arrow_table(DUCKDB_BATCH)
    redo = [n for n in ID_COLUMNS if float_like_ids(raw_t.column(n))]
    if redo:
        con.register("stripped", raw_t)
        select = [f"nullif(regexp_replace({n}, '[.,]0+$', ''), '') AS {n}" if n in redo else n for n in names]
        raw_t = con.sql(f"SELECT {', '.join(select)} FROM stripped").to_arrow_table(DUCKDB_BATCH)
        con.unregister("stripped")
    if raw_t.column("Quantity").null_count:
        raise NotImplementedError("Quantity with nulls (the product makes it Int64)")
    frames["raw"] = timer.convert("read", to_product_frame, raw_t, exact)
    timer.stop("read")

    # 2. clean
    timer.start()
    con.register("raw_lines", raw_t)
    clean_t = con.sql(f"""
        SELECT *, CAST(Quantity AS DOUBLE) * UnitPrice AS Sales FROM raw_lines
        WHERE Quantity > 0 AND CustomerID IS NOT NULL AND InvoiceDate < CAST('{CUTOFF}' AS TIMESTAMP_NS)
    """).to_arrow_table(DUCKDB_BATCH)
    frames["clean"] = timer.convert("clean", to_product_frame, clean_t, exact)
    timer.stop("clean")
    if not keep:
        con.unregister("raw_lines")
        del raw_t
        frames.pop("raw")

    # 3. orders
    timer.start()
    lines = clean_t.append_column("rn", pa.array(np.arange(clean_t.num_rows, dtype="int64")))
    con.register("clean_lines", lines)
    value_sql, join = "sum(Sales) AS value,", ""
    if pandas_value:
        # `value` as pandas sums it (np.add.reduceat over the sorted lines), joined per order.
        keys, sums = arrow_pandas_group_sum(clean_t.column("InvoiceNo"), clean_t.column("Sales").to_numpy())
        con.register("order_values", pa.table({"InvoiceNo": keys, "value": sums}))
        value_sql, join = "", "JOIN order_values v USING (InvoiceNo)"
    orders_t = con.sql(f"""
        WITH per_order AS (
            SELECT InvoiceNo, arg_min(CustomerID, rn) AS CustomerID, min(InvoiceDate) AS InvoiceDate,
                   {value_sql} count(*) AS lines, CAST(sum(Quantity) AS BIGINT) AS items
            FROM clean_lines GROUP BY InvoiceNo
        ), countries AS (
            SELECT InvoiceNo, Country, count(*) AS n FROM clean_lines WHERE Country IS NOT NULL
            GROUP BY InvoiceNo, Country
        ), best AS (
            SELECT InvoiceNo, arg_min(Country, (-n, Country)) AS Country FROM countries GROUP BY InvoiceNo
        )
        SELECT InvoiceNo, CustomerID, InvoiceDate, value, lines, items, Country
        FROM per_order {join} LEFT JOIN best USING (InvoiceNo)
        ORDER BY CustomerID, InvoiceDate, InvoiceNo
    """).to_arrow_table(DUCKDB_BATCH)
    frames["orders"] = timer.convert("orders", to_product_frame, orders_t, exact)
    timer.stop("orders")
    if keep:
        frames["_engine"] = {"con": con, "clean": clean_t}
    return frames


def run_polars(path, threads, variant, timer, keep):
    from datetime import datetime as dt

    import numpy as np
    import polars as pl
    import pyarrow.parquet as pq

    exact = variant == "exact"
    frames = {}

    # 1. read + normalize
    timer.start()
    schema = pq.read_schema(path)
    check_schema(schema)
    names = [n for n in schema.names if not n.startswith("__index_level_")]
    # Stripped of Python's whitespace (strip_chars() alone would keep \x1c-\x1f), "" -> null; then
    # trailing zeros dropped only when some id ends in .0 or ,0, as _id_strings does.
    def blank_to_null(text, name):
        return pl.when(text == "").then(None).otherwise(text).alias(name)

    raw_pl = pl.scan_parquet(path).select(
        [blank_to_null(pl.col(n).str.strip_chars(WHITESPACE), n) if n in ID_COLUMNS else pl.col(n) for n in names]
    ).collect()
    flags = raw_pl.select([(pl.col(c).str.ends_with(".0") | pl.col(c).str.ends_with(",0")).any() for c in ID_COLUMNS])
    redo = [c for c, flag in zip(ID_COLUMNS, flags.row(0)) if flag]
    if redo:
        raw_pl = raw_pl.with_columns([blank_to_null(pl.col(c).str.replace(r"[.,]0+$", ""), c) for c in redo])
    if raw_pl["Quantity"].null_count():
        raise NotImplementedError("Quantity with nulls (the product makes it Int64)")
    frames["raw"] = timer.convert("read", lambda: to_product_frame(raw_pl.to_arrow(), exact))
    timer.stop("read")

    # 2. clean
    timer.start()
    cutoff = pl.lit(dt.fromisoformat(CUTOFF)).cast(pl.Datetime("ns"))
    clean_pl = (raw_pl.lazy()
                .filter((pl.col("Quantity") > 0) & pl.col("CustomerID").is_not_null() & (pl.col("InvoiceDate") < cutoff))
                .with_columns(Sales=pl.col("Quantity").cast(pl.Float64) * pl.col("UnitPrice"))
                .collect())
    frames["clean"] = timer.convert("clean", lambda: to_product_frame(clean_pl.to_arrow(), exact))
    timer.stop("clean")
    if not keep:
        del raw_pl
        frames.pop("raw")

    # 3. orders
    timer.start()
    c = clean_pl.lazy()
    aggs = [pl.col("CustomerID").first(ignore_nulls=True), pl.col("InvoiceDate").min(),
            pl.len().cast(pl.Int64).alias("lines"), pl.col("Quantity").sum().cast(pl.Int64).alias("items")]
    if not exact:
        aggs.insert(2, pl.col("Sales").sum().alias("value"))
    per_order = c.group_by("InvoiceNo").agg(aggs)
    if exact:
        inv = clean_pl["InvoiceNo"]
        sales = clean_pl["Sales"].to_numpy()
        monotonic = bool(clean_pl.select((pl.col("InvoiceNo") >= pl.col("InvoiceNo").shift(1)).all()).item())
        if monotonic and not np.isnan(sales).any():
            starts = clean_pl.select(
                pl.arg_where((pl.col("InvoiceNo") != pl.col("InvoiceNo").shift(1)).fill_null(True))).to_series().to_numpy()
            values = pl.DataFrame({"InvoiceNo": inv.gather(starts), "value": pandas_sum_sorted(sales, starts)})
        else:
            codes = clean_pl.select(pl.col("InvoiceNo").rank("dense") - 1).to_series().to_numpy().astype("int64")
            uniques = inv.unique().sort()
            values = pl.DataFrame({"InvoiceNo": uniques, "value": pandas_sum_kahan(sales, codes, len(uniques))})
        per_order = per_order.join(values.lazy(), on="InvoiceNo", how="inner")
    best = (c.filter(pl.col("Country").is_not_null()).group_by(["InvoiceNo", "Country"]).agg(n=pl.len())
            .group_by("InvoiceNo").agg(pl.col("Country").sort_by(["n", "Country"], descending=[True, False]).first()))
    orders_pl = (per_order.join(best, on="InvoiceNo", how="left")
                 .select(ORDER_COLUMNS)
                 .sort(["CustomerID", "InvoiceDate", "InvoiceNo"], nulls_last=True)
                 .collect())
    frames["orders"] = timer.convert("orders", lambda: to_product_frame(orders_pl.to_arrow(), exact))
    timer.stop("orders")
    if keep:
        frames["_engine"] = {"clean": clean_pl}
    return frames


def run_arrow(path, threads, variant, timer, keep):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    exact = variant == "exact"
    frames = {}

    # 1. read + normalize
    timer.start()
    table = pq.read_table(path)
    table = table.drop_columns([c for c in table.column_names if c.startswith("__index_level_")])
    check_schema(table.schema)
    for name in ID_COLUMNS:
        text = pc.utf8_trim_whitespace(table.column(name))
        if pc.any(pc.or_(pc.ends_with(text, ".0"), pc.ends_with(text, ",0"))).as_py():
            text = pc.replace_substring_regex(text, "[.,]0+$", "")
        text = pc.if_else(pc.equal(text, ""), pa.scalar(None, text.type), text)
        table = table.set_column(table.column_names.index(name), name, text)
    if table.column("Quantity").null_count:
        raise NotImplementedError("Quantity with nulls (the product makes it Int64)")
    raw_t = table
    frames["raw"] = timer.convert("read", to_product_frame, raw_t, exact)
    timer.stop("read")

    # 2. clean
    timer.start()
    cutoff = pa.scalar(datetime.fromisoformat(CUTOFF), pa.timestamp("ns"))
    keep_rows = pc.and_(pc.and_(pc.greater(raw_t.column("Quantity"), 0), pc.is_valid(raw_t.column("CustomerID"))),
                        pc.less(raw_t.column("InvoiceDate"), cutoff))
    clean_t = raw_t.filter(keep_rows)
    clean_t = clean_t.append_column("Sales", pc.multiply(pc.cast(clean_t.column("Quantity"), pa.float64()),
                                                         clean_t.column("UnitPrice")))
    frames["clean"] = timer.convert("clean", to_product_frame, clean_t, exact)
    timer.stop("clean")
    if not keep:
        del raw_t, table
        frames.pop("raw")

    # 3. orders (ordered aggregations such as "first" need use_threads=False in Acero)
    timer.start()
    aggs = [("CustomerID", "first"), ("InvoiceDate", "min"), ("InvoiceNo", "count"), ("Quantity", "sum")]
    if not exact:
        aggs.append(("Sales", "sum"))
    per_order = clean_t.group_by("InvoiceNo", use_threads=False).aggregate(aggs)
    rename = {"CustomerID_first": "CustomerID", "InvoiceDate_min": "InvoiceDate", "InvoiceNo_count": "lines",
              "Quantity_sum": "items", "Sales_sum": "value"}
    per_order = per_order.rename_columns([rename.get(n, n) for n in per_order.column_names])
    if exact:
        keys, sums = arrow_pandas_group_sum(clean_t.column("InvoiceNo"), clean_t.column("Sales").to_numpy())
        per_order = per_order.join(pa.table({"InvoiceNo": keys, "value": sums}), "InvoiceNo", join_type="inner",
                                   use_threads=threads > 1)
    counts = clean_t.select(["InvoiceNo", "Country"]).filter(pc.is_valid(clean_t.column("Country")))
    counts = counts.group_by(["InvoiceNo", "Country"], use_threads=threads > 1).aggregate([([], "count_all")])
    counts = counts.sort_by([("InvoiceNo", "ascending"), ("count_all", "descending"), ("Country", "ascending")])
    best = counts.group_by("InvoiceNo", use_threads=False).aggregate([("Country", "first")])
    best = best.rename_columns(["InvoiceNo", "Country"])
    joined = per_order.join(best, "InvoiceNo", join_type="left outer", use_threads=threads > 1)
    joined = joined.select(ORDER_COLUMNS).cast(pa.schema([
        ("InvoiceNo", joined.schema.field("InvoiceNo").type), ("CustomerID", joined.schema.field("CustomerID").type),
        ("InvoiceDate", pa.timestamp("ns")), ("value", pa.float64()), ("lines", pa.int64()), ("items", pa.int64()),
        ("Country", joined.schema.field("Country").type)]))
    orders_t = joined.sort_by([("CustomerID", "ascending", "at_end"), ("InvoiceDate", "ascending", "at_end"),
                               ("InvoiceNo", "ascending", "at_end")])
    frames["orders"] = timer.convert("orders", to_product_frame, orders_t, exact)
    timer.stop("orders")
    if keep:
        frames["_engine"] = {"clean": clean_t}
    return frames


def run_duckdb_e2e(path, threads, variant, timer, keep):
    con = _duckdb_connect(threads)
    timer.start()
    customers = con.sql(f"""
        WITH clean AS (
            SELECT CustomerID, InvoiceNo, CAST(Quantity AS DOUBLE) * UnitPrice AS Sales FROM read_parquet('{path}')
            WHERE Quantity > 0 AND CustomerID IS NOT NULL AND InvoiceDate < CAST('{CUTOFF}' AS TIMESTAMP_NS)
        ), per_order AS (
            SELECT CustomerID, InvoiceNo, sum(Sales) AS value FROM clean GROUP BY CustomerID, InvoiceNo
        )
        SELECT CustomerID, sum(value) AS TotalSales, count(*) AS OrderCount, sum(value) / count(*) AS AvgOrderValue
        FROM per_order GROUP BY CustomerID ORDER BY CustomerID
    """).df()
    timer.stop("e2e")
    return {"customers": customers}


RUNNERS = {"pandas": run_pandas, "duckdb": run_duckdb, "polars": run_polars, "arrow": run_arrow,
           "duckdb-e2e": run_duckdb_e2e}


# --------------------------------------------------------------------------------------------
# Identity: hashes, and what differs when they differ
# --------------------------------------------------------------------------------------------


def frame_bytes(frame) -> bytes:
    from customer_segments.tasks.runtime.storage import parquet_bytes

    return parquet_bytes(frame)


def sha(data: bytes) -> str:
    from customer_segments.tasks.runtime.storage import sha256_bytes

    return sha256_bytes(data)


def value_diff(values, reference) -> dict:
    """Differing rows, max absolute and max relative difference of two aligned float arrays."""
    import numpy as np

    values, reference = np.asarray(values, dtype="float64"), np.asarray(reference, dtype="float64")
    differ = ~((values == reference) | (np.isnan(values) & np.isnan(reference)))
    absdiff = np.abs(values - reference)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(reference != 0, absdiff / np.abs(reference), np.where(absdiff > 0, np.inf, 0.0))
    return {"rows": int(len(values)), "differ": int(differ.sum()),
            "max_abs": float(np.nanmax(absdiff)) if len(values) else 0.0,
            "max_rel": float(np.nanmax(rel)) if len(values) else 0.0}


def describe_chunks(frame) -> dict:
    out = {}
    for name in frame.columns:
        array = getattr(frame[name].array, "_pa_array", None)
        if array is not None:
            lengths = [len(c) for c in array.chunks]
            out[name] = {"type": str(array.type), "chunks": len(lengths),
                         "lengths": sorted(set(lengths[:-1]))[:6] + ([lengths[-1]] if lengths else [])}
    return out


def diagnose(name: str, frame, data: bytes, ref_path: Path) -> dict:
    """What differs between this frame's Parquet bytes and the product's."""
    import pyarrow.parquet as pq

    import pandas as pd

    ref_bytes = ref_path.read_bytes()
    mine = pq.read_table(io.BytesIO(data))
    ref = pq.read_table(io.BytesIO(ref_bytes))
    found: dict = {"size": len(data), "ref_size": len(ref_bytes)}
    if mine.schema.remove_metadata() != ref.schema.remove_metadata():
        found["arrow_schema"] = {"mine": str(mine.schema.remove_metadata()), "ref": str(ref.schema.remove_metadata())}
    if mine.schema.metadata != ref.schema.metadata:
        found["pandas_metadata"] = {"mine": mine.schema.pandas_metadata, "ref": ref.schema.pandas_metadata}
    ref_frame = pd.read_parquet(io.BytesIO(ref_bytes))
    if frame.dtypes.astype(str).to_dict() != ref_frame.dtypes.astype(str).to_dict():
        found["dtypes"] = {"mine": frame.dtypes.astype(str).to_dict(), "ref": ref_frame.dtypes.astype(str).to_dict()}
    if mine.num_rows != ref.num_rows:
        found["rows"] = {"mine": mine.num_rows, "ref": ref.num_rows}
        return found
    columns = {}
    for column in ref.column_names:
        if column not in mine.column_names:
            columns[column] = "missing"
            continue
        a, b = mine.column(column), ref.column(column)
        if a.type != b.type:
            a = a.cast(b.type)
        if not a.equals(b):
            av, bv = a.to_pandas(), b.to_pandas()
            eq = (av == bv) | (av.isna() & bv.isna())
            columns[column] = {"differ": int((~eq).sum()), "nulls": [int(av.isna().sum()), int(bv.isna().sum())]}
    if columns:
        found["columns"] = columns
    if columns and name == "orders" and set(columns) - {"value"}:
        key = "InvoiceNo"
        a = mine.to_pandas().sort_values(key, kind="stable").reset_index(drop=True)
        b = ref.to_pandas().sort_values(key, kind="stable").reset_index(drop=True)
        same = [c for c in b.columns if c != "value" and a[c].equals(b[c])]
        found["after_sorting_by_InvoiceNo_equal"] = same
    if "value" in columns:
        found["value"] = value_diff(mine.column("value").to_numpy(), ref.column("value").to_numpy())
    if not columns and "arrow_schema" not in found and "pandas_metadata" not in found:
        found["content"] = "equal values, types and metadata: the bytes differ by layout (pages, encodings)"
        meta_a, meta_b = pq.ParquetFile(io.BytesIO(data)).metadata, pq.ParquetFile(io.BytesIO(ref_bytes)).metadata
        found["row_groups"] = [meta_a.num_row_groups, meta_b.num_row_groups]
        pages = {}
        for i in range(min(meta_a.num_columns, meta_b.num_columns)):
            ca, cb = meta_a.row_group(0).column(i), meta_b.row_group(0).column(i)
            if (ca.total_compressed_size, ca.encodings) != (cb.total_compressed_size, cb.encodings):
                pages[ca.path_in_schema] = {"mine": [ca.total_compressed_size, list(ca.encodings)],
                                            "ref": [cb.total_compressed_size, list(cb.encodings)]}
        found["row_group_0_columns_differing"] = pages
    found["chunks"] = describe_chunks(frame)
    return found


def combined(frame):
    """The same frame with every string column in one Arrow chunk."""
    import pyarrow as pa

    return to_product_frame(pa.Table.from_pandas(frame, preserve_index=False), combine=True)


def sum_study(engine: str, frames, threads: int, ref_dir: Path) -> dict:
    """`value` per order from the engine's own sums (and DuckDB's alternatives) against the product's,
    and which summation algorithm each one is (numpy references on the same clean lines)."""
    import math

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ref = pq.read_table(ref_dir / "orders.parquet", columns=["InvoiceNo", "value"]).sort_by("InvoiceNo")
    ref_keys, ref_values = ref.column("InvoiceNo").combine_chunks(), ref.column("value").to_numpy()
    clean = frames["_engine"]["clean"]
    if engine == "polars":
        clean = clean.select(["InvoiceNo", "Sales"]).to_arrow()
    keys = clean.column("InvoiceNo").combine_chunks().cast(pa.large_string())
    sales = clean.column("Sales").to_numpy()
    codes = pc.rank(keys, sort_keys="ascending", tiebreaker="dense").to_numpy().astype("int64") - 1
    uniques = pc.unique(keys)
    uniques = uniques.take(pc.sort_indices(uniques))
    if not uniques.equals(ref_keys):
        return {"error": "the clean lines' invoices are not the product's"}
    sequential = np.zeros(len(uniques))
    np.add.at(sequential, codes, sales)
    order = np.argsort(codes, kind="stable")
    bounds = np.r_[np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0]), len(codes)]
    ordered = sales[order]
    algorithms = {
        "sequential in row order": sequential,
        "Kahan in row order": pandas_sum_kahan(sales, codes, len(uniques)),
        "correctly rounded (math.fsum)": np.array([math.fsum(ordered[bounds[i]:bounds[i + 1]])
                                                  for i in range(len(bounds) - 1)]),
        "first + numpy pairwise of the rest (np.add.reduceat)": arrow_pandas_group_sum(keys, sales)[1],
    }
    out = {}

    def compare(label, got_keys, values):
        got_keys = got_keys.combine_chunks() if isinstance(got_keys, pa.ChunkedArray) else got_keys
        idx = pc.sort_indices(got_keys)
        got_keys, values = got_keys.take(idx).cast(ref_keys.type), np.asarray(values)[idx.to_numpy()]
        if not got_keys.equals(ref_keys):
            out[label] = "keys differ"
            return
        entry = value_diff(values, ref_values)
        entry["same as"] = [name for name, a in algorithms.items() if np.array_equal(a, values)]
        out[label] = entry

    for name, values in algorithms.items():
        compare(f"numpy: {name}", uniques, values)
    orders = frames["orders"]
    compare(f"{engine} orders frame of this variant", pa.array(orders["InvoiceNo"].tolist(), pa.large_string()),
            orders["value"].to_numpy())
    if engine == "duckdb":
        con = frames["_engine"]["con"]
        exprs = {
            "sum(Sales)": "sum(Sales)",
            "fsum(Sales) (Kahan)": "fsum(Sales)",
            "sum(Sales ORDER BY rn)": "sum(Sales ORDER BY rn)",
            "fsum(Sales ORDER BY rn)": "fsum(Sales ORDER BY rn)",
            "list_reduce(list(Sales ORDER BY rn), lambda a, b: a + b)":
                "list_reduce(list(Sales ORDER BY rn), lambda a, b: a + b)",
        }
        got = con.sql("SELECT InvoiceNo, " + ", ".join(f"{sql} AS s{i}" for i, sql in enumerate(exprs.values()))
                      + " FROM clean_lines GROUP BY InvoiceNo").to_arrow_table(DUCKDB_BATCH)
        for i, label in enumerate(exprs):
            compare(f"duckdb {label}", got.column("InvoiceNo"), got.column(f"s{i}").to_numpy())
    elif engine == "polars":
        import polars as pl

        got = frames["_engine"]["clean"].group_by("InvoiceNo").agg(pl.col("Sales").sum()).to_arrow()
        compare("polars eager group_by(InvoiceNo).agg(Sales.sum()) alone", got.column("InvoiceNo"),
                got.column("Sales").to_numpy())
    elif engine == "arrow":
        for use_threads in (False, True):
            got = frames["_engine"]["clean"].group_by("InvoiceNo", use_threads=use_threads).aggregate([("Sales", "sum")])
            compare(f"pyarrow hash_sum (use_threads={use_threads})", got.column("InvoiceNo"),
                    got.column("Sales_sum").to_numpy())
    return out


def kahan_self_test() -> dict:
    """pandas_sum_kahan against pandas on shuffled lines (the path unsorted exports take)."""
    import numpy as np

    import pandas as pd

    rng = np.random.default_rng(7)
    n = 300_000
    keys = rng.integers(0, 40_000, n)
    values = np.round(rng.gamma(2.0, 20.0, n) * rng.integers(1, 13, n), 2)
    values[rng.integers(0, n, 50)] = np.nan
    frame = pd.DataFrame({"k": pd.array(keys.astype(str), dtype="str"), "v": values})
    want = frame.groupby("k", sort=True).v.sum()
    import pyarrow as pa

    k, s = arrow_pandas_group_sum(pa.array(frame["k"].astype(object).to_numpy(), pa.large_string()), values)
    ok = k.to_pylist() == want.index.tolist() and np.array_equal(s, want.to_numpy())
    sorted_frame = frame.sort_values("k", kind="stable").dropna()
    want2 = sorted_frame.groupby("k", sort=True).v.sum()
    k2, s2 = arrow_pandas_group_sum(pa.array(sorted_frame["k"].astype(object).to_numpy(), pa.large_string()),
                                    sorted_frame["v"].to_numpy())
    ok2 = k2.to_pylist() == want2.index.tolist() and np.array_equal(s2, want2.to_numpy())
    return {"kahan path (shuffled, with NaN) equals pandas": bool(ok), "reduceat path (sorted) equals pandas": bool(ok2)}


def check(option: str, path: Path, threads: int, ref_dir: Path, reference: bool) -> dict:
    engine, variant = OPTIONS[option]
    timer = Timer()
    frames = RUNNERS[engine](str(path), threads, variant, timer, keep=True)
    report: dict = {"steps": timer.steps}
    for name in DATASETS:
        frame = frames[name]
        data = frame_bytes(frame)
        digest = sha(data)
        if reference:
            (ref_dir / f"{name}.parquet").write_bytes(data)
            report[name] = {"sha256": digest, "identical": True, "rows": len(frame),
                            "dtypes": frame.dtypes.astype(str).to_dict(), "chunks": describe_chunks(frame)}
            continue
        ref_digest = sha((ref_dir / f"{name}.parquet").read_bytes())
        entry = {"sha256": digest, "identical": digest == ref_digest}
        if not entry["identical"]:
            entry["diagnosis"] = diagnose(name, frame, data, ref_dir / f"{name}.parquet")
            fixes = {}
            fixed = combined(frame)
            fixes["string columns in one chunk"] = sha(frame_bytes(fixed)) == ref_digest
            if name == "orders":
                import pyarrow as pa

                import pandas as pd

                clean = frames["clean"]
                keys, sums = arrow_pandas_group_sum(
                    pa.chunked_array(clean["InvoiceNo"].array._pa_array.chunks), clean["Sales"].to_numpy())
                exact_value = pd.Series(sums, index=pd.Index(keys.to_pylist()))
                exact_value = exact_value.reindex(frame["InvoiceNo"].tolist()).to_numpy()
                fixes["value as pandas sums it (chunks as they are)"] = (
                    sha(frame_bytes(frame.assign(value=exact_value))) == ref_digest)
                fixes["one chunk + value as pandas sums it"] = (
                    sha(frame_bytes(fixed.assign(value=exact_value))) == ref_digest)
            entry["fixes"] = fixes
        report[name] = entry
    if engine in ("duckdb", "polars", "arrow"):
        report["sums"] = sum_study(engine, frames, threads, ref_dir)
    if reference:
        report["self_test"] = kahan_self_test()
    return report


# --------------------------------------------------------------------------------------------
# The child process and the parent
# --------------------------------------------------------------------------------------------


def child(args) -> int:
    import pyarrow as pa

    pa.set_cpu_count(args.threads)
    pa.set_io_thread_count(args.threads)
    began = time.perf_counter()
    engine, variant = OPTIONS[args.child]
    import numpy  # noqa: F401

    import pandas  # noqa: F401
    if engine in ("duckdb", "duckdb-e2e"):
        import duckdb  # noqa: F401
    if engine == "polars":
        import polars as pl

        assert pl.thread_pool_size() == args.threads, pl.thread_pool_size()
    if engine == "pandas":
        import customer_segments.tasks.inputs.readers  # noqa: F401
    imports = time.perf_counter() - began
    if args.mode == "check":
        result = check(args.child, args.input, args.threads, args.ref_dir, args.reference)
    else:
        timer = Timer()
        RUNNERS[engine](str(args.input), args.threads, variant, timer, keep=False)
        result = {"steps": timer.steps, "cpu": timer.cpu, "to_pandas": timer.to_pandas}
    result["imports"] = imports
    args.json.write_text(json.dumps(result, default=str))
    return 0


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy (all processes, /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit: float = 10.0, cores: float = 0.25) -> float:
    """Wait (up to `limit` s) until other processes use under `cores` CPUs over a second; seconds waited."""
    began = time.perf_counter()
    while True:
        before = busy_cpu_seconds()
        time.sleep(1.0)
        if busy_cpu_seconds() - before < cores or time.perf_counter() - began > limit:
            return time.perf_counter() - began


def spawn(option: str, threads: int, mode: str, input_path: Path, ref_dir: Path, reference: bool = False) -> dict:
    """Run one child; its result plus wall seconds, peak RSS (bytes) from os.wait4, and how many
    cores other processes kept busy meanwhile (machine busy time minus the child's own CPU time)."""
    env = dict(os.environ, POLARS_MAX_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with tempfile.NamedTemporaryFile(suffix=".json", dir=SCRATCH, delete=False) as handle:
        out = Path(handle.name)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", option, "--threads", str(threads),
           "--mode", mode, "--input", str(input_path), "--ref-dir", str(ref_dir), "--json", str(out)]
    if reference:
        cmd.append("--reference")
    busy = busy_cpu_seconds()
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - began
    others = max(0.0, busy_cpu_seconds() - busy - usage.ru_utime - usage.ru_stime) / wall
    if proc.returncode != 0:
        raise RuntimeError(f"{option} threads={threads} {mode} exited with {proc.returncode}")
    result = json.loads(out.read_text())
    out.unlink()
    result["wall"] = wall
    result["maxrss"] = usage.ru_maxrss * 1024
    result["cpu_total"] = usage.ru_utime + usage.ru_stime
    result["others_cores"] = others
    return result


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("pandas", "numpy", "pyarrow", "duckdb", "polars"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except OSError:
        mem = float("nan")
    return f"{cpu}, {os.cpu_count()} logical cores, {mem:.1f} GiB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, required=True,
                        help="a Parquet export, e.g. the scale benchmark's 10-million-line input "
                             "(segment generate --customers 130000 --months 13 --seed 11)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--options", default=",".join(OPTIONS))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--skip-check", action="store_true", help="timings only")
    parser.add_argument("--render-only", action="store_true",
                        help="render --out from the saved checks and timings, measuring nothing")
    parser.add_argument("--native-threads", help="thread counts for timing the native variants (default: --threads)")
    parser.add_argument("--check-threads", help="thread counts for the identity checks (default: --threads)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the reference frames and identity checks saved by an earlier run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    # child-only
    parser.add_argument("--child", choices=list(OPTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["time", "check"], default="time", help=argparse.SUPPRESS)
    parser.add_argument("--ref-dir", type=Path, default=SCRATCH / "reference", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.threads = int(args.threads)
        return child(args)

    options = [o for o in args.options.split(",") if o]
    thread_counts = [int(t) for t in args.threads.split(",")]
    check_threads = [int(t) for t in (args.check_threads or args.threads).split(",")]
    SCRATCH.mkdir(parents=True, exist_ok=True)
    args.ref_dir.mkdir(parents=True, exist_ok=True)
    saved = SCRATCH / "checks"
    saved.mkdir(exist_ok=True)
    started = datetime.now(UTC)
    checks: dict = {}

    def checked(option, threads, kind, reference=False):
        """One identity check, kept in SCRATCH/checks so that --reuse can skip it next time."""
        path = saved / f"{option}-{threads}-{kind}.json"
        if args.reuse and path.exists():
            checks[(option, threads, kind)] = json.loads(path.read_text())
            return
        if args.reuse and reference and all((args.ref_dir / f"{d}.parquet").exists() for d in DATASETS):
            result = {d: {"sha256": sha((args.ref_dir / f"{d}.parquet").read_bytes()), "identical": True}
                      for d in DATASETS}
            result["self_test"] = kahan_self_test()
            path.write_text(json.dumps(result))
            checks[(option, threads, kind)] = result
            return
        print(f"{kind} {option} threads={threads}", flush=True)
        result = spawn(option, threads, "check", args.input, args.ref_dir, reference=reference)
        path.write_text(json.dumps(result, default=str))
        checks[(option, threads, kind)] = result
        print("   identical:", {d: result[d]["identical"] for d in DATASETS}, flush=True)

    if args.render_only:
        for path in sorted(saved.glob("*.json")):
            option, threads, kind = path.stem.rsplit("-", 2)
            checks[(option, int(threads), kind)] = json.loads(path.read_text())
    elif not args.skip_check:
        checked("pandas", 2, "reference", reference=True)
        for option in options:
            if option == "duckdb-e2e":
                continue
            for threads in check_threads:
                if option == "pandas" and threads == 2:
                    continue
                checked(option, threads, "check")
    native_threads = [int(t) for t in (args.native_threads or args.threads).split(",")]
    configs = [(o, t) for o in options for t in (native_threads if o.endswith("-native") else thread_counts)]
    # Every run is appended to SCRATCH/timings.jsonl as it ends; --reuse keeps earlier runs there,
    # --render-only only renders what is saved.
    log = SCRATCH / "timings.jsonl"
    if not args.reuse and not args.render_only and log.exists():
        log.unlink()
    timings: dict = {}
    if log.exists():
        for line in log.read_text().splitlines():
            run = json.loads(line)
            timings.setdefault((run["option"], run["threads"]), []).append(run)
    if args.render_only:
        options = [o for o in OPTIONS if any(k[0] == o for k in timings)]
        thread_counts = sorted({t for _, t in timings})
        args.repeat = 0
    for rep in range(args.repeat):
        shift = rep % len(configs)
        for option, threads in configs[shift:] + configs[:shift]:
            waited = wait_quiet()
            result = spawn(option, threads, "time", args.input, args.ref_dir)
            result.update(waited=waited, option=option, threads=threads)
            timings.setdefault((option, threads), []).append(result)
            with log.open("a") as handle:
                handle.write(json.dumps(result) + "\n")
            steps = " ".join(f"{k} {v:.2f}" for k, v in result["steps"].items())
            print(f"rep {rep + 1} {option:14} threads={threads}: {steps}  peak {result['maxrss'] / 2**30:.2f} GiB"
                  f"  others {result['others_cores']:.2f} cores (waited {waited:.0f} s)", flush=True)
    report = render(args, started, options, thread_counts, timings, checks)
    args.out.write_text(report)
    (SCRATCH / "raw_results.json").write_text(json.dumps(
        {"timings": {f"{o}|{t}": v for (o, t), v in timings.items()},
         "checks": {"|".join(map(str, k)): v for k, v in checks.items()}}, indent=1, default=str))
    print(report)
    return 0


def med(values):
    return statistics.median(values) if values else float("nan")


def render(args, started, options, thread_counts, timings, checks) -> str:
    v = versions()
    lines = [
        "# Line-level engines: read + normalize, clean, orders",
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC with `.venv/bin/python benchmarks/line_engines.py "
        f"{' '.join(sys.argv[1:])}` on {machine()}; input `{args.input}`.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "Each cell is the median over fresh subprocesses (one per repetition). A step's seconds include "
        "building its pandas frame; *to pandas* is that share summed over the three steps. Total is the sum of "
        "the steps (imports excluded, shown separately), with min–max. *CPU s* is the child's CPU time over the "
        "three steps (all its threads): less sensitive than wall time to other processes on the machine. "
        "*others* is how many cores other processes kept busy during the run (machine busy time minus the "
        "child's). Peak RSS is the child's ru_maxrss (os.wait4), imports included.",
        "",
        "| option | threads | read + normalize s | clean s | orders s | total s | CPU s | of which to pandas s "
        "| imports s | peak RSS GiB | others (cores) | identical raw / clean / orders |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for option in options:
        for threads in thread_counts:
            runs = timings.get((option, threads), [])
            if not runs:
                continue
            def fmt(values):
                values = [v for v in values if v is not None]
                return f"{med(values):.2f}" if values else "–"

            cpu = fmt([sum(r["cpu"].values()) if "cpu" in r else None for r in runs])
            others = med([r["others_cores"] for r in runs])
            rss = med([r["maxrss"] for r in runs]) / 2**30
            imports = fmt([r.get("imports") for r in runs])
            if option == "duckdb-e2e":
                total = med([r["steps"]["e2e"] for r in runs])
                lo, hi = min(r["steps"]["e2e"] for r in runs), max(r["steps"]["e2e"] for r in runs)
                lines.append(f"| {LABELS[option]} | {threads} | – | – | – | {total:.2f} ({lo:.2f}–{hi:.2f}) | "
                             f"{cpu} | – | {imports} | {rss:.2f} | {others:.2f} | n/a |")
                continue
            step = {s: med([r["steps"][s] for r in runs]) for s in ("read", "clean", "orders")}
            total = med([sum(r["steps"].values()) for r in runs])
            conv = "0.00" if option == "pandas" else fmt(
                [sum(r["to_pandas"].values()) if "to_pandas" in r else None for r in runs])
            ident = checks.get((option, threads, "check")) or checks.get((option, threads, "reference"))
            if ident is None:  # checked at another thread count only
                ident = next((v for (o, _t, _k), v in checks.items() if o == option), None)
            mark = " / ".join("yes" if ident[d]["identical"] else "**no**" for d in DATASETS) if ident else "not checked"
            lo, hi = min(sum(r["steps"].values()) for r in runs), max(sum(r["steps"].values()) for r in runs)
            lines.append(f"| {LABELS[option]} | {threads} | {step['read']:.2f} | {step['clean']:.2f} | "
                         f"{step['orders']:.2f} | {total:.2f} ({lo:.2f}–{hi:.2f}) | {cpu} | "
                         f"{conv} | {imports} | {rss:.2f} | {others:.2f} | {mark} |")
    lines += ["", "## Identity findings (generated)", ""]
    for (option, threads, kind), result in checks.items():
        lines.append(f"### {LABELS[option]}, threads={threads} ({kind})")
        lines.append("")
        for d in DATASETS:
            entry = result[d]
            if entry["identical"]:
                lines.append(f"- {d}: identical (sha256 {entry['sha256'][:16]}…)")
            else:
                lines.append(f"- {d}: **differs**; fixes tried: {json.dumps(entry.get('fixes'))}")
                lines.append(f"  - diagnosis: `{json.dumps(entry['diagnosis'], default=str)}`")
        for label, diff in result.get("sums", {}).items():
            lines.append(f"- value from {label}: {json.dumps(diff)}")
        for label, ok in result.get("self_test", {}).items():
            lines.append(f"- self-test: {label}: {ok}")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
