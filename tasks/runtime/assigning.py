"""`segment assign`: a file of invoice lines placed in a completed run's segments, without refitting.

The lines are read as the run read its input (its column mapping, encoding and date format),
cleaned by the run's rules before the run's cutoff (or the first day of `--as-of`) within the
run's window, summed per order and per customer; then each customer is placed by the segment
model the run saved (tasks/segmentation/assign.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from customer_segments.tasks.errors import UsageError
from customer_segments.tasks.runtime import exports, run_folders, storage

COMMAND = "assign"


def assign_file(run_dir: Path, input_path: Path, out: Path, as_of: str | None = None) -> dict[str, Any]:
    import pandas as pd

    from customer_segments.tasks.inputs.readers import read_invoices
    from customer_segments.tasks.segmentation.assign import assign_segments
    from customer_segments.tasks.segmentation.cleaning import clean_invoices
    from customer_segments.tasks.segmentation.features import customer_features
    from customer_segments.tasks.segmentation.orders import orders

    suffix = Path(out).suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise UsageError(COMMAND, f"--out {out} must be a .csv or .parquet file")
    manifest = run_folders.read_manifest(run_dir)
    if run_folders.status_of(manifest) != "completed":
        raise UsageError(COMMAND, f"run {manifest.run_id} did not complete (it is {run_folders.status_of(manifest)}); "
                                  f"only a completed run's segments can take new customers")
    model_ref = next((r.outputs["segment_model"] for r in manifest.stages.values() if "segment_model" in r.outputs), None)
    if model_ref is None:
        raise UsageError(COMMAND, f"run {manifest.run_id} has no segment model (it was made before runs saved one); "
                                  "run the month again to assign customers to it")
    model = storage.read_parquet(model_ref.resolve(run_dir.parent.parent))
    params = manifest.parameters
    cutoff = run_folders.parse_month(as_of).start_time if as_of else pd.Timestamp(manifest.cutoff)
    raw = read_invoices(input_path, encoding=params.get("encoding"), date_format=params.get("date_format"),
                        columns=params.get("columns"))
    clean = clean_invoices(raw, cutoff, params.get("window"))
    if clean.empty:
        raise UsageError(COMMAND, f"no line of {input_path} is left to assign: none is dated before {cutoff.date()} "
                                  "with a customer and a positive quantity (give --as-of for later lines)")
    assigned = assign_segments(customer_features(orders(clean)), model)
    data = exports.csv_bytes(assigned) if suffix == ".csv" else storage.parquet_bytes(assigned)
    try:
        storage.write_bytes_atomic(Path(out), data)
    except OSError as exc:
        raise UsageError(COMMAND, f"cannot write {out}: {exc.strerror or exc}; nothing was written there") from None
    in_run = int(assigned["in_run"].sum())
    return {"customers": len(assigned), "in_run": in_run, "new": len(assigned) - in_run, "out": str(Path(out).resolve())}
