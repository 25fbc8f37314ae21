"""A PostgreSQL table or query as the input: the lines a run needs, kept as a Parquet snapshot.

A run reads only the lines it needs: those dated before its cutoff (and inside `--window`). They
are written, as read, to a Parquet snapshot in the input cache (`cache/inputs/<sha256>.parquet`)
whose sha256 is the input's fingerprint: an unchanged table gives the same snapshot bytes and
every stage is reused; a row added recomputes them. The ingest stage then reads the snapshot like
any Parquet export (with the same column mapping).

The same rows in the same order each time: the lines are read in the table's physical order
(no parallel scan, no synchronised scan that could start mid-table); a query with its own ORDER
BY keeps its order. The run's manifest records the URL (without password), the query as sent,
the rows read and the snapshot's sha256.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from customer_segments.tasks.errors import InputError
from customer_segments.tasks.runtime import postgres, storage

STAGE = "ingest"
SNAPSHOTS = "inputs"


@dataclass(frozen=True)
class Snapshot:
    path: Path
    sha256: str
    rows: int
    query: str
    as_of: str


def take(url: str, cache_dir: Path, *, as_of: str | None, window: int | None,
         columns: dict[str, str] | None) -> Snapshot:
    """Read the run's lines from the table or query at `url` into a snapshot in the input cache."""
    location, _ = postgres.parse(url, "input")
    date = postgres.quote_column((columns or {}).get("InvoiceDate", "InvoiceDate"))
    source = location.relation if location.table else f"({location.query}) AS source"
    connection = postgres.connect(location, "input")
    try:
        with connection.cursor() as cursor:
            # Physical order, every time: no parallel workers, no scan joining another mid-table.
            cursor.execute("SET synchronize_seqscans = off")
            cursor.execute("SET max_parallel_workers_per_gather = 0")
            if as_of is None:
                as_of = _newest_month(cursor, location, source, date, columns)
            cutoff = pd.Period(as_of, freq="M").start_time
            where = f"{date} < TIMESTAMP '{cutoff:%Y-%m-%d %H:%M:%S}'"
            if window is not None:
                start = cutoff - pd.DateOffset(months=int(window))
                where += f" AND {date} >= TIMESTAMP '{start:%Y-%m-%d %H:%M:%S}'"
            sql = f"SELECT * FROM {source} WHERE {where}"
            table = _run(cursor, sql, location, columns)
    finally:
        connection.close()
    if table.num_rows == 0:
        raise InputError(location.safe, STAGE, None,
                         f"the {'table' if location.table else 'query'} has no line dated before {cutoff.date()}"
                         f"{' within the window' if window else ''} (query: {sql})")
    buffer = io.BytesIO()
    import pyarrow.parquet as pq

    pq.write_table(table, buffer, compression=storage.COMPRESSION)
    data = buffer.getvalue()
    sha = storage.sha256_bytes(data)
    path = cache_dir / SNAPSHOTS / f"{sha}.parquet"
    if not (path.exists() and storage.sha256_file(path) == sha):
        storage.write_bytes_atomic(path, data)
    return Snapshot(path=path, sha256=sha, rows=table.num_rows, query=sql, as_of=str(as_of))


def cached(cache_dir: Path, sha256: str) -> Path | None:
    """A snapshot already in the cache whose bytes still hash right (a resumed run reads it again)."""
    path = cache_dir / SNAPSHOTS / f"{sha256}.parquet"
    return path if path.exists() and storage.sha256_file(path) == sha256 else None


def _newest_month(cursor, location, source: str, date: str, columns) -> str:
    cursor.execute(f"SELECT max({date}) FROM {source}")
    newest = _run_scalar(cursor, location, columns)
    if newest is None:
        raise InputError(location.safe, STAGE, None, f"the {'table' if location.table else 'query'} has no lines")
    return str(pd.Timestamp(newest).to_period("M"))


def _run(cursor, sql: str, location, columns):
    try:
        cursor.execute(sql)
        return cursor.fetch_arrow_table()
    except InputError:
        raise
    except Exception as exc:  # the driver's error types; the user needs one paragraph
        raise _read_error(exc, cursor, location, columns) from None


def _run_scalar(cursor, location, columns):
    try:
        return cursor.fetchone()[0]
    except Exception as exc:
        raise _read_error(exc, cursor, location, columns) from None


def _read_error(exc: Exception, cursor, location, columns) -> InputError:
    text = postgres.scrub(str(exc))
    date_column = (columns or {}).get("InvoiceDate", "InvoiceDate")
    what = f"table {location.table_name}" if location.table else "query"
    if "does not exist" in text and "relation" in text:
        problem = f"the table {location.table_name} does not exist in {location.connect}"
        similar = _similar_tables(location)
        if similar:
            problem += f" (tables with a similar name: {', '.join(similar)})"
        return InputError(location.safe, STAGE, None, problem)
    if "does not exist" in text and "column" in text:
        return InputError(location.safe, STAGE, "InvoiceDate",
                          f"the {what} has no column {date_column!r} for the invoice dates; "
                          "map the column that holds them with --columns InvoiceDate=NAME")
    if "operator does not exist" in text or "cannot be" in text or "invalid input syntax" in text:
        return InputError(location.safe, STAGE, "InvoiceDate",
                          f"the {what}'s column {date_column!r} does not hold dates or timestamps "
                          f"({_first_line(text)}); cast it in a ?query=, e.g. SELECT ..., "
                          f"{date_column}::timestamp AS \"InvoiceDate\" FROM ...")
    if "syntax error" in text:
        return InputError(location.safe, STAGE, None, f"the query is not valid SQL: {_first_line(text)}")
    return InputError(location.safe, STAGE, None, f"reading the {what} failed: {_first_line(text)}")


def _similar_tables(location) -> list[str]:
    """Tables whose name matches but for letter case (PostgreSQL folds unquoted names to lower case)."""
    try:
        connection = postgres.connect(location, "input")
    except Exception:
        return []
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT table_schema || '.' || table_name FROM information_schema.tables "
                           f"WHERE lower(table_name) = lower('{location.table}')")
            return [row[0] for row in cursor.fetchall()][:5]
    except Exception:
        return []
    finally:
        connection.close()


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"
