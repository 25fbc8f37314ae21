"""Sending a run's customer table where marketers act: a CSV or Parquet file, or a PostgreSQL table.

`export_run` reads the `customers` dataset of a completed run and writes it to the target:

- a `.csv` file: UTF-8 with a header, one row per customer, a decimal point, ISO dates. A text
  value starting with `=`, `+`, `-`, `@` (or a tab or carriage return) is written with a leading
  apostrophe, so that no spreadsheet evaluates it as a formula (OWASP's advice for CSV injection);
- a `.parquet` file, as the run has it;
- a PostgreSQL table (`postgresql://USER@HOST/DB?table=SCHEMA.TABLE`, default `customer_segments`),
  created when missing with typed columns, `run_id`, `as_of` and `run_finished_at`, primary key
  (run_id, "CustomerID"). A run's rows replace that run's earlier rows in one transaction:
  exporting twice changes nothing, an export killed halfway leaves the table as it was, and two
  exports of different runs at the same time both land (they take turns on an advisory lock).
  The view `<table>_latest` holds the newest completed run of the newest month.

Files are written next to the target and renamed into place: a target is complete or untouched.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from customer_segments.tasks.errors import UsageError
from customer_segments.tasks.runtime import postgres, run_folders, storage
from customer_segments.tasks.runtime.manifest import Manifest

class ExportError(UsageError):
    """An export that failed at the target (the server, the network): worth trying again."""

    transient = True


DATASET = "customers"
DEFAULT_TABLE = "customer_segments"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
FAULT_SWITCH = "SEGMENT_FAULT"


def target_kind(target: str) -> str:
    if postgres.is_url(target):
        return "postgresql"
    suffix = Path(target).suffix.lower()
    if suffix in (".csv", ".parquet"):
        return suffix[1:]
    raise UsageError("export", f"cannot export to {target!r}: give a .csv or .parquet file, or a PostgreSQL URL "
                               f"(postgresql://USER@HOST/DB?table=SCHEMA.TABLE)")


def customer_table(manifest: Manifest, run_dir: Path, command: str = "export") -> pd.DataFrame:
    """The run's customers dataset; UsageError unless the run completed and made one."""
    status = run_folders.status_of(manifest)
    if status != "completed":
        hint = (f"; `segment resume {manifest.run_id}` completes it" if status in ("failed", run_folders.INTERRUPTED)
                else "")
        raise UsageError(command, f"run {manifest.run_id} did not complete (it is {status}), so it has no customer "
                                  f"table to export{hint}")
    for record in manifest.stages.values():
        ref = record.outputs.get(DATASET)
        if ref is not None:
            path = run_dir.parent.parent / ref.path
            if storage.sha256_file(path) != ref.sha256:
                raise UsageError(command, f"the customer table of run {manifest.run_id} ({path}) does not match "
                                          "the hash its manifest recorded; it was changed since the run")
            return storage.read_parquet(path)
    raise UsageError(command, f"run {manifest.run_id} has no customer table (it was made before the product wrote "
                              "one); run the month again to export it")


def export_run(run_dir: Path, target: str, command: str = "export") -> dict[str, Any]:
    """Write the run's customer table to `target`; a summary (target without password, rows, seconds)."""
    started = time.perf_counter()
    manifest = run_folders.read_manifest(run_dir)
    kind = target_kind(target)
    table = customer_table(manifest, run_dir, command)
    if kind == "postgresql":
        where = to_postgres(table, target, manifest, command)
    else:
        path = Path(target)
        data = csv_bytes(table) if kind == "csv" else storage.parquet_bytes(table)
        try:
            storage.write_bytes_atomic(path, data)
        except OSError as exc:
            raise UsageError(command, f"cannot write {path}: {exc.strerror or exc}; nothing was written there") from None
        where = str(path.resolve())
    return {"target": where, "kind": kind, "rows": len(table), "run_id": manifest.run_id,
            "seconds": round(time.perf_counter() - started, 3)}


# --- CSV --------------------------------------------------------------------------------------------


def spreadsheet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """Text values a spreadsheet would take for a formula, with a leading apostrophe."""
    out = table.copy()
    for column in out.columns:
        if pd.api.types.is_string_dtype(out[column]) or out[column].dtype == object:
            text = out[column]
            risky = text.str.startswith(FORMULA_STARTS, na=False)
            if risky.any():
                out[column] = text.where(~risky, "'" + text.astype("str"))
    return out


def csv_bytes(table: pd.DataFrame) -> bytes:
    """UTF-8, header, comma separated, decimal point, ISO dates, no index."""
    text = spreadsheet_safe(table).to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S", lineterminator="\n")
    return text.encode("utf-8")


# --- PostgreSQL ---------------------------------------------------------------------------------------


def to_postgres(table: pd.DataFrame, url: str, manifest: Manifest, command: str = "export") -> str:
    """Replace the run's rows of the target table in one transaction; return the target without password."""
    import pyarrow as pa

    location, _ = postgres.parse(url, command, default_table=DEFAULT_TABLE)
    if location.table is None:
        raise UsageError(command, f"{location.safe}: an export goes to a table (?table=SCHEMA.TABLE), not a query")
    frame = table.copy()
    frame.insert(0, "run_id", manifest.run_id)
    frame.insert(1, "as_of", pd.Timestamp(str(manifest.as_of) + "-01").date() if manifest.as_of else None)
    frame.insert(2, "run_finished_at", pd.Timestamp(manifest.finished_at).tz_convert("UTC")
                 if manifest.finished_at else pd.NaT)
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    relation = location.relation
    staging = f"segment_export_{manifest.run_id.replace('-', '_').lower()}"
    try:
        connection = postgres.connect(location, command)
    except UsageError as exc:  # the server is down or refuses: worth trying again
        raise ExportError(command, exc.problem) from None
    try:
        with connection.cursor() as cursor:
            # One export of a table at a time; the lock ends with the transaction.
            cursor.execute(f"SELECT pg_advisory_xact_lock(hashtext('{location.table_name}'))")
            cursor.adbc_ingest(staging, arrow, mode="create", temporary=True)
            _create_or_extend(cursor, location, staging)
            columns = ", ".join(postgres.quote_column(c) for c in frame.columns)
            cursor.execute(f"DELETE FROM {relation} WHERE run_id = '{manifest.run_id}'")
            cursor.execute(f"INSERT INTO {relation} ({columns}) SELECT {columns} FROM {postgres.quote_identifier(staging)}")
            cursor.execute(f"DROP TABLE {postgres.quote_identifier(staging)}")
            latest = postgres.quote_identifier(f"{location.table}_latest")
            view = f"{postgres.quote_identifier(location.schema)}.{latest}" if location.schema else latest
            cursor.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM {relation} WHERE run_id = "
                           f"(SELECT run_id FROM {relation} ORDER BY as_of DESC, run_finished_at DESC, run_id DESC "
                           "LIMIT 1)")
            _injected_fault()
        connection.commit()
    except UsageError:
        connection.rollback()
        raise
    except Exception as exc:  # the driver's error types: one paragraph, no password
        connection.rollback()
        raise ExportError(command, f"exporting run {manifest.run_id} to {location.safe} failed and changed nothing: "
                                   f"{postgres.scrub(str(exc)).strip().splitlines()[0]}") from None
    finally:
        connection.close()
    return location.safe


def _create_or_extend(cursor, location, staging: str) -> None:
    """The target table with every column of the staging table (created, or given the new columns)."""
    cursor.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                   f"WHERE attrelid = '{staging}'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum")
    wanted = cursor.fetchall()
    schema = f"'{location.schema}'" if location.schema else "current_schema()"
    cursor.execute(f"SELECT column_name FROM information_schema.columns WHERE table_schema = {schema} "
                   f"AND table_name = '{location.table}'")
    existing = {row[0] for row in cursor.fetchall()}
    relation = location.relation
    if not existing:
        definition = ", ".join(f"{postgres.quote_column(name)} {kind}" for name, kind in wanted)
        cursor.execute(f'CREATE TABLE {relation} ({definition}, PRIMARY KEY (run_id, "CustomerID"))')
        return
    for name, kind in wanted:
        if name not in existing:  # a run with a stage the table's earlier runs did not have
            cursor.execute(f"ALTER TABLE {relation} ADD COLUMN {postgres.quote_column(name)} {kind}")


def _injected_fault() -> None:
    """SEGMENT_FAULT=export:hang stops an export inside its transaction (to rehearse a kill)."""
    if os.environ.get(FAULT_SWITCH) == "export:hang":
        while True:
            time.sleep(1)
