"""Validation results in the user's words.

A failed expectation becomes a Finding that says where (table or column), what it means for the
data (the expectation's ``meta.problem`` when the suite gives one, else its ``meta.notes``), what
was found (counts, shares, up to five sample values) and, last, the expectation's own name for
those who want to look it up.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

CRITICAL, WARNING, INFO = "critical", "warning", "info"
SAMPLE_SIZE = 5
_TYPE_EXPECTATIONS = frozenset({"expect_column_values_to_be_of_type", "expect_column_values_to_be_in_type_list"})


@dataclass(frozen=True)
class Finding:
    """One failed expectation, in words an analyst can act on."""

    expectation: str
    column: str | None
    severity: str
    observed: str
    unexpected_sample: list
    notes: str = ""      # why the expectation exists (the suite's meta.notes)
    problem: str = ""    # what the failure means for this data (meta.problem, filled in)

    def describe(self) -> str:
        """One sentence: where, what it means, what was found, and the expectation's name."""
        where = f"column {self.column}" if self.column else "table"
        sample = f"; e.g. {', '.join(_short(v) for v in self.unexpected_sample)}" if self.unexpected_sample else ""
        if self.problem:
            meaning = self.problem + (f" ({_sentence(self.notes)})" if self.notes else "")
            return f"{meaning} [{self.severity}: {self.expectation}, observed {self.observed}{sample}]"
        meaning = f"{_sentence(self.notes)}; " if self.notes else ""
        return f"{where}: {meaning}found {self.observed}{sample} [{self.severity}: {self.expectation}]"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def finding(result: dict, dtypes: Mapping[str, str], facts: Mapping[str, Any]) -> Finding:
    """The Finding for one failed expectation of GX's JSON result."""
    config = result.get("expectation_config") or {}
    kwargs = config.get("kwargs") or {}
    meta = config.get("meta") or {}
    observed = _observed(result)
    column = _column_of(kwargs)
    error = _exception_message(result)
    if config.get("type") in _TYPE_EXPECTATIONS and column in dtypes and not error:
        # GX reports the dtype's scalar type, e.g. "int64" for a nullable Int64 column.
        observed = f"dtype {dtypes[column]}"
    if error:
        # GX's message for an absent column varies by expectation (some say "list index out of
        # range"); say it plainly.
        absent = [c for c in _domain_columns(config.get("type", ""), kwargs) if c not in dtypes]
        if absent:
            observed = f"column {', '.join(absent)} is missing from the dataset"
    details = result.get("result") or {}
    values = dict(facts, observed=observed, observed_value=_format_value(details.get("observed_value")),
                  unexpected_count=details.get("unexpected_count"), column=column)
    return Finding(
        expectation=config.get("type", "?"),
        column=column,
        severity=str(config.get("severity") or CRITICAL),
        observed=observed,
        unexpected_sample=_sample(details),
        notes=str(meta.get("notes") or "").strip(),
        problem=_fill(str(meta.get("problem") or "").strip(), values),
    )


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _fill(template: str, values: Mapping[str, Any]) -> str:
    """The suite's problem sentence with the run's facts filled in; unknown names stay as written."""
    if not template:
        return ""
    formatted = {k: (f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else v) for k, v in values.items()}
    try:
        return string.Formatter().vformat(template, (), _Blank(formatted))
    except (ValueError, IndexError):
        return template


def _sentence(text: str) -> str:
    return text.rstrip(". ")


def _domain_columns(expectation: str, kwargs: Mapping[str, Any]) -> list[str]:
    if expectation.startswith("expect_table_"):
        return []  # their column lists are expected values, not the columns they read
    if kwargs.get("column") is not None:
        return [str(kwargs["column"])]
    if kwargs.get("column_A") is not None:
        return [str(kwargs["column_A"]), str(kwargs.get("column_B"))]
    return [str(c) for c in kwargs.get("column_list") or []]


def _column_of(kwargs: Mapping[str, Any]) -> str | None:
    if kwargs.get("column") is not None:
        return str(kwargs["column"])
    if kwargs.get("product_column") is not None:
        return str(kwargs["product_column"])
    if kwargs.get("column_A") is not None:
        return f"{kwargs['column_A']}, {kwargs.get('column_B')}"
    return None  # table-level (column_list of table expectations is the expected value, not a domain)


def _exception_message(result: dict) -> str | None:
    info = result.get("exception_info") or {}
    if info.get("raised_exception"):
        return info.get("exception_message") or "error"
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return value.get("exception_message") or "error"
    return None


def _observed(result: dict) -> str:
    error = _exception_message(result)
    if error:
        return f"could not be evaluated: {error}"
    details = result.get("result") or {}
    if "observed_value" in details:
        text = _format_value(details["observed_value"])
        return text + _mismatch_text((details.get("details") or {}).get("mismatched"))
    if "unexpected_count" in details:
        unexpected = int(details.get("unexpected_count") or 0)
        total = int(details.get("element_count") or 0)
        text = f"{unexpected:,} of {total:,} rows ({_percent(unexpected, total)})"
        missing = int(details.get("missing_count") or 0)
        if missing:
            text += f"; {missing:,} null rows not checked"
        return text
    return "no observed value"


def _mismatch_text(mismatched: Any) -> str:
    if isinstance(mismatched, dict):
        parts = [
            f"{label}: {', '.join(map(str, mismatched[key]))}"
            for key, label in (("missing", "missing"), ("unexpected", "unexpected"))
            if mismatched.get(key)
        ]
        return f" ({'; '.join(parts)})" if parts else ""
    if isinstance(mismatched, list) and mismatched:
        parts = [
            f"position {m.get('Expected Column Position')}: expected {m.get('Expected') or 'nothing'}, "
            f"found {m.get('Found') or 'nothing'}"
            for m in mismatched[:SAMPLE_SIZE]
            if isinstance(m, dict)
        ]
        return f" ({'; '.join(parts)})" if parts else ""
    return ""


def _sample(details: dict) -> list:
    values = details.get("partial_unexpected_list")
    if values is None:
        mismatched = (details.get("details") or {}).get("mismatched")
        values = mismatched.get("unexpected") if isinstance(mismatched, dict) else None
    sample: list = []
    for value in values or []:
        if value not in sample:  # GX lists the first failing rows; repeats say nothing new
            sample.append(value)
        if len(sample) == SAMPLE_SIZE:
            break
    return sample


def _percent(part: int, whole: int) -> str:
    if whole == 0:
        return "n/a"
    pct = 100.0 * part / whole
    if pct == 0 or pct >= 1:
        return f"{pct:.1f}%"
    return f"{pct:.2g}%"


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) >= 1e4:
            return f"{value:,.0f}"
        return f"{value:.10g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value)
    return str(value)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
