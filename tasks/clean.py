"""Clean: the article's three cleaning rules plus the Sales column."""

from __future__ import annotations

import pandas as pd

# Rule names as they appear in the manifest and the run summary, in the order they apply.
RULES = ("cancelled_or_zero_quantity", "missing_customer", "on_or_after_cutoff")


def cleaning_masks(raw: pd.DataFrame, cutoff: pd.Timestamp | str) -> dict[str, pd.Series]:
    """One boolean mask per rule: True where the rule drops the row."""
    cutoff = pd.Timestamp(cutoff)
    return {
        "cancelled_or_zero_quantity": ~(raw["Quantity"] > 0),
        "missing_customer": raw["CustomerID"].isna(),
        "on_or_after_cutoff": ~(raw["InvoiceDate"] < cutoff),
    }


def clean_invoices(raw: pd.DataFrame, cutoff: pd.Timestamp | str) -> pd.DataFrame:
    """Keep positive quantities of known customers before the cutoff; add Sales = Quantity * UnitPrice."""
    masks = cleaning_masks(raw, cutoff)
    keep = ~(masks["cancelled_or_zero_quantity"] | masks["missing_customer"] | masks["on_or_after_cutoff"])
    clean = raw.loc[keep.to_numpy()].reset_index(drop=True)
    clean["Quantity"] = clean["Quantity"].astype("int64")
    clean["Sales"] = clean["Quantity"] * clean["UnitPrice"]
    return clean


def rows_dropped(raw: pd.DataFrame, cutoff: pd.Timestamp | str) -> dict[str, int]:
    """Rows each rule removed, counted in rule order (a row is charged to the first rule that drops it)."""
    remaining = pd.Series(True, index=raw.index)
    dropped = {}
    for rule, mask in cleaning_masks(raw, cutoff).items():
        hit = remaining & mask
        dropped[rule] = int(hit.sum())
        remaining &= ~mask
    return dropped


# How each rule reads in a sentence about the data.
RULE_WORDS = {
    "cancelled_or_zero_quantity": "are cancellations, returns or zero quantities",
    "missing_customer": "have no CustomerID",
    "on_or_after_cutoff": "are dated on or after the cutoff {cutoff}",
}


def clean_metrics(frames, params) -> dict:
    """Rows in, rows dropped per rule, rows kept, and the same in words for messages."""
    raw, clean = frames["raw_invoices"], frames["clean_invoices"]
    dropped = rows_dropped(raw, params["cutoff"])
    return {
        "rows_in": len(raw),
        "rows_dropped": dropped,
        "rows_clean": len(clean),
        "cleaning_summary": cleaning_summary(len(raw), dropped, params["cutoff"]),
    }


def cleaning_summary(rows_in: int, dropped: dict[str, int], cutoff) -> str:
    """E.g. "of 99,602 lines, 1,204 are cancellations, returns or zero quantities and 98,398 have no CustomerID"."""
    day = str(pd.Timestamp(cutoff).date())
    parts = [f"{n:,} {RULE_WORDS[rule].format(cutoff=day)}" for rule, n in dropped.items() if n]
    if not parts:
        return f"of {rows_in:,} lines, none was dropped"
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"of {rows_in:,} lines, {listed}"
