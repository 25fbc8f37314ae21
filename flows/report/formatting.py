"""Numbers, dates and durations in words for people: the report's formatters.

Every section formats its values here, so that the same kind of number reads the same way
everywhere on the page. A missing value (None, NA, NaT, NaN) is shown as a dash.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import pandas as pd

def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    try:
        return isinstance(value, float) and math.isnan(value)
    except TypeError:
        return False


DASH = "–"


def fmt_int(value: Any) -> str:
    return DASH if _missing(value) else f"{int(round(float(value))):,}"


def fmt_money(value: Any) -> str:
    """Thousands separators; whole units from 1,000 up, pence below (0-2 decimals)."""
    if _missing(value):
        return DASH
    value = float(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.2f}"


def fmt_pct(value: Any, decimals: int = 1) -> str:
    """A share (0..1) as a percentage; a tiny non-zero share is not shown as 0%."""
    if _missing(value):
        return DASH
    value = float(value) * 100
    floor = 10 ** -decimals
    if 0 < abs(value) < floor:
        return f"<{floor:g}%"
    return f"{value:,.{decimals}f}%"


def fmt_num(value: Any, decimals: int = 2) -> str:
    return DASH if _missing(value) else f"{float(value):,.{decimals}f}"


def fmt_signed(value: Any, decimals: int = 2) -> str:
    return DASH if _missing(value) else f"{float(value):+.{decimals}f}".replace("-", "−")


def fmt_times(value: Any) -> str:
    """A lift or odds ratio: how many times as often."""
    return DASH if _missing(value) else f"×{float(value):,.2f}"


def fmt_month(as_of: str | None) -> str:
    if not as_of:
        return DASH
    try:
        return datetime.strptime(as_of, "%Y-%m").strftime("%B %Y")
    except ValueError:
        return as_of


def fmt_date(value: str | None) -> str:
    return _fmt_moment(value, lambda moment: f"{moment.day} {moment.strftime('%b %Y')}")


def fmt_datetime(value: str | None) -> str:
    def words(moment: datetime) -> str:
        zone = " UTC" if moment.utcoffset() is not None and moment.utcoffset().total_seconds() == 0 else ""
        return f"{moment.day} {moment.strftime('%b %Y, %H:%M')}{zone}"
    return _fmt_moment(value, words)


def _fmt_moment(value: str | None, words) -> str:
    """An ISO timestamp in words; a value that is not one is shown as it is."""
    if not value:
        return DASH
    try:
        return words(datetime.fromisoformat(value))
    except ValueError:
        return value


def fmt_duration(seconds: Any) -> str:
    if _missing(seconds):
        return DASH
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
