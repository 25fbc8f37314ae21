"""Clean: the article's three cleaning rules, an optional trailing window, and the Sales column.

A return is a line of negative (or zero) quantity; an export without quantities gives each line's
value (Sales) instead, and a line of value zero or below is the return there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Rule names as they appear in the manifest and the run summary, in the order they apply.
RULES = ("cancelled_or_zero_quantity", "missing_customer", "before_window", "on_or_after_cutoff")


def window_start(cutoff: pd.Timestamp | str, window: int | None) -> pd.Timestamp | None:
    """First day of a trailing window of `window` months before the cutoff (None: all history)."""
    if window is None:
        return None
    return pd.Timestamp(cutoff) - pd.DateOffset(months=int(window))


def cleaning_masks(raw: pd.DataFrame, cutoff: pd.Timestamp | str, window: int | None = None) -> dict[str, pd.Series]:
    """One boolean mask per rule: True where the rule drops the row."""
    cutoff = pd.Timestamp(cutoff)
    start = window_start(cutoff, window)
    dates = raw["InvoiceDate"]
    amount = raw["Quantity"] if "Quantity" in raw.columns else raw["Sales"]
    return {
        "cancelled_or_zero_quantity": ~(amount > 0),
        "missing_customer": raw["CustomerID"].isna(),
        "before_window": dates < start if start is not None else pd.Series(False, index=raw.index),
        "on_or_after_cutoff": ~(dates < cutoff),
    }


def clean_invoices(raw: pd.DataFrame, cutoff: pd.Timestamp | str, window: int | None = None) -> pd.DataFrame:
    """Keep positive quantities of known customers before the cutoff (and within the window, if any);
    add Sales = Quantity * UnitPrice unless the export gives each line's value itself."""
    masks = cleaning_masks(raw, cutoff, window)
    keep = ~(masks["cancelled_or_zero_quantity"] | masks["missing_customer"] | masks["before_window"]
             | masks["on_or_after_cutoff"])
    clean = kept_rows(raw, keep.to_numpy())
    if "Quantity" in clean.columns:
        clean["Quantity"] = clean["Quantity"].astype("int64")
    if "Sales" not in clean.columns:
        clean["Sales"] = clean["Quantity"] * clean["UnitPrice"]
    return clean


def kept_rows(frame: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """The rows of `frame` where `keep` is True, renumbered from 0: `frame.loc[keep].reset_index(drop=True)`.

    Column by column: numpy's boolean indexing for numpy columns and Arrow's filter for Arrow-backed
    text, where pandas' general take converts the mask to positions and checks them for every
    column (at ten million lines 1.8-3.1 s against 0.5-1.1 s, the same frame).
    """
    import copy

    import pyarrow as pa
    import pyarrow.compute as pc

    mask = None
    columns = {}
    for name in frame.columns:
        column = frame[name]
        if isinstance(column.dtype, np.dtype):
            columns[name] = pd.Series(column.to_numpy()[keep])
        elif isinstance(column.dtype, pd.StringDtype) and column.dtype.storage == "pyarrow":
            mask = pa.array(keep) if mask is None else mask
            text = pc.filter(pa.array(column.array), mask).to_pandas()
            columns[name] = text if text.dtype == column.dtype else text.astype(column.dtype)
        else:
            columns[name] = pd.Series(column.array[keep])
    out = pd.DataFrame(columns, index=pd.RangeIndex(int(keep.sum())), columns=frame.columns, copy=False)
    out.attrs = copy.deepcopy(frame.attrs)
    return out


def rows_dropped(raw: pd.DataFrame, cutoff: pd.Timestamp | str, window: int | None = None) -> dict[str, int]:
    """Rows each rule removed, counted in rule order (a row is charged to the first rule that drops it)."""
    remaining = pd.Series(True, index=raw.index)
    dropped = {}
    for rule, mask in cleaning_masks(raw, cutoff, window).items():
        hit = remaining & mask
        dropped[rule] = int(hit.sum())
        remaining &= ~mask
    return dropped


# How each rule reads in a sentence about the data.
RULE_WORDS = {
    "cancelled_or_zero_quantity": "are cancellations, returns or zero quantities",
    "missing_customer": "have no CustomerID",
    "before_window": "are dated before the window's start {start}",
    "on_or_after_cutoff": "are dated on or after the cutoff {cutoff}",
}


def clean_metrics(frames, params) -> dict:
    """Rows in, rows dropped per rule, rows kept, and the same in words for messages."""
    raw, clean = frames["raw_invoices"], frames["clean_invoices"]
    window = params.get("window")
    dropped = rows_dropped(raw, params["cutoff"], window)
    start = window_start(params["cutoff"], window)
    return {
        "rows_in": len(raw),
        "rows_dropped": dropped,
        "rows_clean": len(clean),
        "window_start": None if start is None else start.isoformat(),
        "cleaning_summary": cleaning_summary(len(raw), dropped, params["cutoff"], start),
    }


def cleaning_summary(rows_in: int, dropped: dict[str, int], cutoff, start=None) -> str:
    """E.g. "of 99,602 lines, 1,204 are cancellations, returns or zero quantities and 98,398 have no CustomerID"."""
    day = str(pd.Timestamp(cutoff).date())
    first = str(pd.Timestamp(start).date()) if start is not None else ""
    parts = [f"{n:,} {RULE_WORDS[rule].format(cutoff=day, start=first)}" for rule, n in dropped.items() if n]
    if not parts:
        return f"of {rows_in:,} lines, none was dropped"
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"of {rows_in:,} lines, {listed}"


# --- the dask twin: the same on a dask.distributed cluster (the dask engine) --------------------


def clean_invoices_dask(raw, cutoff, window: int | None = None):
    """The pandas engine's cleaning, partition by partition (each rule looks at one line at a time)."""
    return raw.map_partitions(clean_invoices, cutoff, window, meta=clean_invoices(raw._meta, cutoff, window))


def clean_metrics_dask(frames, params):
    """Lazy: the counts are computed with the clean lines' writing (see the stage runner)."""
    raw, kept = frames["raw_invoices"], frames["clean_invoices"]
    window = params.get("window")
    per_part = raw.map_partitions(lambda p: pd.DataFrame([rows_dropped(p, params["cutoff"], window)]),
                                  meta=pd.DataFrame({rule: pd.Series(dtype="int64") for rule in RULES}))

    def finish(computed) -> dict:
        dropped, rows_in, rows_clean = computed
        dropped = {rule: int(dropped[rule]) for rule in RULES}
        start = window_start(params["cutoff"], window)
        return {"rows_in": int(rows_in), "rows_dropped": dropped, "rows_clean": int(rows_clean),
                "window_start": None if start is None else start.isoformat(),
                "cleaning_summary": cleaning_summary(int(rows_in), dropped, params["cutoff"], start)}

    return (per_part.sum(), raw.shape[0], kept.shape[0]), finish
