"""Ingest: read an invoice export (xlsx, csv, parquet or a folder of them) into typed columns.

Reading is I/O and lives here with the one pure step that matters, `normalize_invoices`, which
names the columns as the product does (tasks/inputs/columns.py: the column mapping) and turns
whatever the file format produced into the raw_invoices types. Excel stores all-digit ids as
numbers (536365, 17850.0), so every id column is normalised to plain strings. An export without
invoice numbers (one line per order) gets one per line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from customer_segments.tasks.encoding import dictionary_codes, in_several, text_hashes
from customer_segments.tasks.errors import InputError
from customer_segments.tasks.inputs import columns as names
from customer_segments.tasks.inputs.columns import CANONICAL as COLUMNS
from customer_segments.tasks.inputs.columns import ID_COLUMNS, TEXT_COLUMNS

PREFERRED_SHEET = "Online Retail"
READABLE_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".csv", ".parquet")

STAGE = "ingest"


def input_files(path: Path) -> list[Path]:
    """The files an input path stands for: itself, or a folder's readable files in name order."""
    if not path.exists():
        raise InputError(path, STAGE, None, "the input path does not exist")
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in READABLE_SUFFIXES
        )
        if not files:
            raise InputError(
                path, STAGE, None,
                f"the folder holds no {', '.join(READABLE_SUFFIXES)} file to read",
            )
        return files
    if path.suffix.lower() not in READABLE_SUFFIXES:
        raise InputError(
            path, STAGE, None,
            f"unsupported file type {path.suffix or '(none)'}; expected one of "
            + ", ".join(READABLE_SUFFIXES),
        )
    return [path]


def read_invoices(input_path: Path | str, encoding: str | None = None, date_format: str | None = None,
                  columns: dict[str, str] | None = None) -> pd.DataFrame:
    """Read and normalise one export file or a folder of them (concatenated in name order).

    `encoding` and `date_format` apply to CSV files (see csv_export); other formats carry both.
    `columns` maps the product's names to the file's ({canonical: source}, see columns.py).
    """
    path = Path(input_path)
    frames = [normalize_invoices(*_read_table(f, encoding, columns), date_format=date_format, columns=columns)
              for f in input_files(path)]
    raw = frames[0] if len(frames) == 1 else drop_repeats_across_files(frames)
    return numbered(raw) if "InvoiceNo" not in raw.columns else raw


def numbered(raw: pd.DataFrame, prefix: str = "L") -> pd.DataFrame:
    """An export without invoice numbers: each line is one order, numbered L1, L2, ... in file order."""
    numbers = pd.Series(np.arange(1, len(raw) + 1), index=raw.index).astype("str")
    out = raw.copy()
    out.insert(0, "InvoiceNo", (prefix + numbers).astype("str"))
    out.attrs = dict(raw.attrs, generated_invoice_numbers=True)
    return out


def drop_repeats_across_files(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate a landing folder's exports so that no invoice line counts twice.

    Exports overlap: a cumulative export beside last month's, or a month sent again. A line is
    recognised by the values of the eight invoice columns. Within one file repeated lines are the
    export's own business (UCI has 5,268, which the analysis keeps), so for each distinct line
    the lines of the file that holds it most often are kept (the later file in name order on a
    tie) and its copies in other files are dropped. Lines are compared by a 64-bit hash of their
    values: two different lines would have to collide to be mistaken for each other.
    """
    lines = pd.concat(frames, ignore_index=True)
    file = np.repeat(np.arange(len(frames)), [len(f) for f in frames])
    key = pd.util.hash_pandas_object(lines[[c for c in names.NAMES if c in lines.columns]], index=False).to_numpy()
    counts = pd.DataFrame({"key": key, "file": file}).groupby(["key", "file"], sort=False).size().rename("n").reset_index()
    keeper = counts.sort_values(["key", "n", "file"], kind="stable").drop_duplicates("key", keep="last")
    kept_file = pd.Series(keeper["file"].to_numpy(), index=keeper["key"].to_numpy())
    keep = kept_file.reindex(key).to_numpy() == file
    out = lines.loc[keep].reset_index(drop=True)
    # For the stage's metrics only (Parquet does not keep attrs): what was read before dropping.
    out.attrs = {**frames[0].attrs, "rows_read": len(lines), "files": len(frames)}
    return out


def ingest_metrics(frames, params) -> dict:
    """Rows read, lines repeated across a folder's files, and the invoice dates' range.

    The newest invoice fixes the default as-of month.
    """
    raw = frames["raw_invoices"]
    dates = raw["InvoiceDate"]
    first, last = dates.min(), dates.max()
    read = raw.attrs
    rows_read = read.get("rows_read", len(dates))
    return {
        "files": read.get("files", 1),
        "rows_read": rows_read,
        "repeated_across_files": rows_read - len(dates),
        "rows_raw": len(dates),
        "first_invoice": None if pd.isna(first) else pd.Timestamp(first).isoformat(),
        "last_invoice": None if pd.isna(last) else pd.Timestamp(last).isoformat(),
        **column_facts(raw.columns, read),
    }


def column_facts(present, attrs) -> dict:
    """Which of the product's columns the export has, and what ingest named or made for it."""
    found = [c for c in names.NAMES if c in set(present)]
    facts = {"input_columns": found, "renamed_columns": attrs.get("renamed", {})}
    if attrs.get("generated_invoice_numbers"):
        facts["generated_invoice_numbers"] = True
    return facts


def _read_table(path: Path, encoding: str | None = None,
                columns: dict[str, str] | None = None) -> tuple[pd.DataFrame, str]:
    """The file's table and how to name where it came from in an error message."""
    if path.stat().st_size == 0:
        raise InputError(path, STAGE, None, "the file is empty (0 bytes)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return _read_parquet(path), str(path)
        if suffix == ".csv":
            from customer_segments.tasks.inputs.csv_export import read_csv_export

            return read_csv_export(path, encoding=encoding, columns=columns), str(path)
        return _read_excel(path)
    except InputError:
        raise
    except Exception as exc:  # every reader has its own error types; the user needs one message
        raise InputError(
            path, STAGE, None,
            f"the file cannot be read as {suffix[1:]} ({type(exc).__name__}: {exc})",
        ) from None


def _read_parquet(path: Path) -> pd.DataFrame:
    """The file's columns as they are, ignoring any pandas index stored with them.

    `df[mask].to_parquet(path)` stores the filtered index as a column `__index_level_0__` and
    names it in the file's pandas metadata; restoring it would make ingest align the columns on
    it. Named index levels (e.g. an InvoiceNo index) come back as ordinary columns.
    """
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    table = table.drop_columns([c for c in table.column_names if c.startswith("__index_level_")])
    return table.to_pandas(ignore_metadata=True)


def _read_excel(path: Path) -> tuple[pd.DataFrame, str]:
    from python_calamine import CalamineWorkbook

    workbook = CalamineWorkbook.from_path(str(path))
    sheets = workbook.sheet_names
    if not sheets:
        raise InputError(path, STAGE, None, "the workbook has no sheet")
    if PREFERRED_SHEET in sheets:
        sheet, label = PREFERRED_SHEET, f"{path} (sheet '{PREFERRED_SHEET}')"
    else:
        sheet = sheets[0]
        label = (f"{path} (sheet '{sheet}', the first of {', '.join(repr(s) for s in sheets)}; "
                 f"no sheet named '{PREFERRED_SHEET}')")
    # calamine's rows straight into a frame: about ten times faster than openpyxl, and faster
    # than pandas' calamine engine, whose per-cell type inference normalize_invoices redoes anyway.
    rows = workbook.get_sheet_by_name(sheet).to_python(skip_empty_area=False)
    if not rows:
        raise InputError(label, STAGE, None, "the sheet is empty (no header row)")
    header = [str(c).strip() if c is not None else "" for c in rows[0]]
    return pd.DataFrame(rows[1:], columns=header), label


def normalize_invoices(df: pd.DataFrame, source: Path | str = "input", date_format: str | None = None,
                       columns: dict[str, str] | None = None) -> pd.DataFrame:
    """Name the columns as the product does and give them their types; other columns pass through.

    Pure: the raw_invoices quality suite then judges the content (nulls, ranges, extra columns).
    Columns are matched by name (or by the `columns` mapping), so their order does not matter.
    An export without StockCode, Description, Country, Quantity or UnitPrice has no such column
    (not an empty one); one with Sales (a line's value) keeps it.
    """
    if len(df.columns) == 0:
        raise InputError(source, STAGE, None, "the file holds no table (no columns)")
    # Positions, not index labels: a reader's index (a filtered frame's) must not realign rows.
    df = df.reset_index(drop=True)
    resolved = names.resolve(df.columns, columns, source)
    names.check_minimal(resolved.values(), df.columns, source)
    out = {}
    for column in df.columns:
        col = df[column]
        name = resolved.get(column, column.strip() if isinstance(column, str) else column)
        if name in ID_COLUMNS:
            out[name] = _id_strings(col)
        elif name in TEXT_COLUMNS:
            out[name] = col.astype("str")
        elif name == "Quantity":
            out[name] = _whole_numbers(col, source)
        elif name in ("UnitPrice", names.SALES):
            out[name] = _numbers(col, source, name).astype("float64")
        elif name == "InvoiceDate":
            out[name] = _timestamps(col, source, date_format)
        else:
            out[name] = col
    # Without copying the columns into blocks (copy-on-write keeps the reader's frame safe): at
    # ten million lines the copy was 0.7-1.6 s of memory touched for the first time.
    frame = pd.DataFrame(out, index=pd.RangeIndex(len(df)), copy=False)
    frame.attrs = {"renamed": {str(c): n for c, n in resolved.items() if str(c) != n}}
    return frame


def _id_strings(col: pd.Series) -> pd.Series:
    """536365 / 536365.0 / '17850,0' / ' 536365 ' -> '536365'; blanks stay missing."""
    if pd.api.types.is_float_dtype(col) and (col.dropna() % 1 == 0).all():
        # Whole floats (a numeric CustomerID column with blanks): via integers, ten times faster.
        return col.astype("Int64").astype("str")
    text = col.astype("str").str.strip()
    # A float id written out by a spreadsheet: 17850.0, or 17850,0 with a decimal comma.
    if text.str.endswith((".0", ",0")).any():
        text = text.str.replace(r"[.,]0+$", "", regex=True)
    blank = text.eq("")
    return text.mask(blank) if blank.any() else text


def _numbers(col: pd.Series, source, name: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col
    values = pd.to_numeric(col, errors="coerce")
    bad = values.isna() & col.notna()
    if bad.any():
        raise InputError(
            source, STAGE, name,
            f"{int(bad.sum()):,} value(s) are not numbers, e.g. {_sample(col[bad])}",
        )
    return values


def _whole_numbers(col: pd.Series, source) -> pd.Series:
    if pd.api.types.is_integer_dtype(col) and not isinstance(col.dtype, pd.api.extensions.ExtensionDtype):
        return col.astype("int64")  # integers already, without missing values: nothing to check
    values = _numbers(col, source, "Quantity")
    fractional = values.notna() & (values != values.round())
    if fractional.any():
        raise InputError(
            source, STAGE, "Quantity",
            f"{int(fractional.sum()):,} value(s) are not whole numbers, e.g. {_sample(col[fractional])}",
        )
    # Nulls survive as a nullable integer so that the quality gate can report them.
    return values.astype("Int64" if values.isna().any() else "int64")


def _timestamps(col: pd.Series, source, date_format: str | None = None) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(col):
        values = col
    elif pd.api.types.is_string_dtype(col) or pd.api.types.is_object_dtype(col):
        from customer_segments.tasks.inputs.csv_export import parse_invoice_dates

        values = parse_invoice_dates(col, source, date_format)
    else:
        raise InputError(source, STAGE, "InvoiceDate", f"the values are {col.dtype} numbers, not dates, e.g. {_sample(col)}")
    if getattr(values.dt, "tz", None) is not None:
        values = values.dt.tz_localize(None)
    return values.astype("datetime64[ns]")


def _sample(values: pd.Series, n: int = 5) -> str:
    return ", ".join(repr(v) for v in values.drop_duplicates().head(n).tolist())


# --- the dask twin: the same on a dask.distributed cluster (the dask engine) --------------------


def read_invoices_dask(input_path: Path | str, encoding: str | None = None, date_format: str | None = None,
                       columns: dict[str, str] | None = None):
    """The dask twin of read_invoices: one export file or a folder of them as a dask DataFrame of normalised invoice lines.

    Parquet files are read in row-group partitions; a CSV or Excel file is one partition. Lines
    repeated across files are counted once, as on the pandas engine (only lines dated within the
    date range of two or more files can be repeats, so only those are compared).
    """

    files = input_files(Path(input_path))
    frames = [_file_frame(f, encoding, date_format, columns) for f in files]
    raw = frames[0] if len(frames) == 1 else _without_repeats(
        frames, [_file_invoices(f, frame, columns) for f, frame in zip(files, frames)])
    attrs = dict(frames[0]._meta.attrs, repeats=_REPEATS_DROPPED.pop(raw._name, 0))
    if "InvoiceNo" not in raw.columns:
        # One line per order: numbered per partition (a prefix per partition keeps them unique).
        raw = raw.map_partitions(_numbered_part, meta=numbered(raw._meta))
        attrs = dict(attrs, generated_invoice_numbers=True)
    _READ_FACTS[raw._name] = attrs
    return raw


def _numbered_part(part: pd.DataFrame, partition_info=None) -> pd.DataFrame:
    number = (partition_info or {}).get("number", 0)
    return numbered(part, prefix=f"L{number}-")


def _file_frame(path: Path, encoding: str | None, date_format: str | None, columns: dict[str, str] | None):
    import dask.dataframe as dd

    if path.suffix.lower() == ".parquet":
        raw = dd.read_parquet(str(path), index=False)
        return raw.map_partitions(_normalized_part, str(path), date_format, columns,
                                  meta=normalize_invoices(_drop_index_columns(raw._meta), str(path), columns=columns))
    # CSV and Excel: the pandas engine's readers, one partition per file.
    return dd.from_map(_read_whole, [path], encoding=encoding, date_format=date_format, columns=columns)


def _file_invoices(path: Path, frame, columns: dict[str, str] | None):
    """A file's invoice numbers as ingest gives them (each partition's distinct ones, at least).
    Of a Parquet file only the invoice column is read, and only its distinct values are made
    text as normalize_invoices makes them, not every column of every line normalised."""
    import dask.dataframe as dd

    if path.suffix.lower() == ".parquet":
        source = [c for c, name in names.resolve(_parquet_columns(path), columns, path).items()
                  if name == "InvoiceNo"]
        if source:
            return dd.read_parquet(str(path), columns=source, index=False)[source[0]].map_partitions(
                lambda numbers: _id_strings(pd.Series(pd.unique(numbers))), meta=("InvoiceNo", "str"))
    return frame["InvoiceNo"]


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [c for c in pq.read_schema(path).names if not _is_index_column(c)]


def _read_whole(path: Path, encoding: str | None = None, date_format: str | None = None,
                columns: dict[str, str] | None = None) -> pd.DataFrame:
    return normalize_invoices(*_read_table(path, encoding, columns), date_format=date_format, columns=columns)


def _normalized_part(part: pd.DataFrame, source: str, date_format: str | None,
                     columns: dict[str, str] | None = None) -> pd.DataFrame:
    return normalize_invoices(_drop_index_columns(part), source, date_format=date_format, columns=columns)


def _drop_index_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """A pandas index saved with the file is not data (see ingest._read_parquet)."""
    return frame.drop(columns=[c for c in frame.columns if _is_index_column(c)])


def _is_index_column(column) -> bool:
    return str(column).startswith("__index_level_")


# Lines dropped as repeats across files, by the name of the dask frame they were dropped from, and
# what ingest named or made of the columns, by the name of the frame it returned: the ingest
# metrics (computed in the same process, on the same frame) report them.
_REPEATS_DROPPED: dict[str, int] = {}
_READ_FACTS: dict[str, dict] = {}


def _invoice_hashes(numbers: pd.Series) -> np.ndarray:
    """Each line's invoice number as a 64-bit hash: the distinct numbers hashed, then spread."""
    codes, distinct = dictionary_codes(numbers)
    return _hashed(distinct, missing=True)[codes]


def _distinct_invoice_hashes(numbers: pd.Series) -> pd.Series:
    codes, distinct = dictionary_codes(numbers)
    return pd.Series(_hashed(distinct, missing=bool((codes < 0).any())))


def _hashed(distinct: pd.Index, missing: bool) -> np.ndarray:
    """The hashes of distinct invoice numbers, then (with `missing`) that of a missing one."""
    return text_hashes(distinct.append(pd.Index([None], dtype="str")) if missing else distinct)


def _in_shared_invoices(numbers: pd.Series, shared: np.ndarray) -> pd.Series:
    return pd.Series(np.isin(_invoice_hashes(numbers), shared), index=numbers.index)


def _without_repeats(frames: list, invoices: list):
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
    per_file = dask.compute(*[numbers.map_partitions(_distinct_invoice_hashes, meta=("InvoiceNo", "uint64"))
                              for numbers in invoices])
    # Distinct per file, then the hashes of more than one file (by sorting: numpy's hash-based
    # unique and pandas' value_counts took seconds on the ten million invoices of 100M lines).
    shared = in_several([u.to_numpy(dtype="uint64") for u in per_file])
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


def ingest_metrics_dask(frames, params):
    """Lazy: the counts and dates are computed with the lines' writing (see the stage runner)."""
    raw = frames["raw_invoices"]
    files = len(input_files(Path(params["input_path"])))
    read = _READ_FACTS.get(raw._name, {})
    repeats = read.get("repeats", 0)

    def finish(computed) -> dict:
        rows, first, last = computed
        return {"files": files, "rows_read": int(rows) + repeats, "repeated_across_files": repeats,
                "rows_raw": int(rows), "first_invoice": None if pd.isna(first) else pd.Timestamp(first).isoformat(),
                "last_invoice": None if pd.isna(last) else pd.Timestamp(last).isoformat(),
                **column_facts(raw.columns, read)}

    return (raw.shape[0], raw["InvoiceDate"].min(), raw["InvoiceDate"].max()), finish
