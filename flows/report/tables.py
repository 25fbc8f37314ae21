"""The pieces the sections share: table cells and columns, embedded figures, segment labels.

A section's context is plain dicts for the template (`_macros.html.j2` draws them): `table()`
with `column()`s and rows of strings or `cell()`s, and `Figure`s, the run's PNGs as data URIs
with the words the stage catalogue gives them. `Segments` names and colours this run's segments
the same way in every section.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pandas as pd

from customer_segments.flows.report.formatting import _missing
from customer_segments.tasks.runtime.stage import FigureSpec

# --- the pieces the template draws ----------------------------------------------------------------

def cell(text: Any, *, sub: str | None = None, tone: str | None = None, heat: int | None = None,
         strong: bool = False, items: list[str] | None = None) -> dict[str, Any]:
    """A table cell with more than text: a second line, a badge tone, a heat shade (0-5), a list."""
    return {"text": str(text), "sub": sub, "tone": tone, "heat": heat, "strong": strong, "items": items or []}


def column(label: str, *, num: bool = False, wide: bool = False) -> dict[str, Any]:
    return {"label": label, "num": num, "wide": wide}


def table(columns: list[dict[str, Any]], rows: list[list[Any]], *, caption: str | None = None,
          foot: list[list[Any]] | None = None, row_header: bool = True, matrix: bool = False,
          compact: bool = False, groups: list[tuple[str, int]] | None = None) -> dict[str, Any]:
    """A table for the template. `compact`: only as wide as its content (a few short columns
    stretched over the page are hard to read across); `groups`: a header row above the columns,
    as (label, number of columns) pairs."""
    return {"columns": columns, "rows": rows, "caption": caption, "foot": foot or [],
            "row_header": row_header, "matrix": matrix, "compact": compact, "groups": groups or []}


@dataclass(frozen=True)
class Figure:
    """A PNG embedded as a data URI, with its pixel size so the page does not jump while loading."""

    name: str
    src: str
    width: int
    height: int
    alt: str
    caption: str


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG header (IHDR is always the first chunk)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    return struct.unpack(">II", data[16:24])


@lru_cache(maxsize=1)
def figure_specs() -> dict[str, FigureSpec]:
    """Every figure a stage of the catalogue draws, by file stem: its alt text and caption."""
    from customer_segments.tasks.catalogue import STAGES

    return {spec.stem: spec for stage in STAGES for spec in stage.figures}


def embed_png(name: str, data: bytes) -> Figure:
    """A PNG as a Figure; a stem no stage declares is described by its own name."""
    width, height = png_size(data)
    spec = figure_specs().get(name)
    alt, caption = ((spec.alt, spec.caption) if spec is not None
                    else (name.replace("_", " "), name.replace("_", " ").capitalize()))
    return Figure(name=name, src="data:image/png;base64," + base64.b64encode(data).decode("ascii"),
                  width=width, height=height, alt=alt, caption=caption)


def _figures(figures: dict[str, Figure], *names: str) -> list[Figure]:
    """Those of the named figures the run folder holds, in the order named."""
    return [figures[n] for n in names if n in figures]


# --- values from frames, the run's segments, heat shades ------------------------------------------

def _has(frame: pd.DataFrame | None, *columns: str) -> bool:
    return frame is not None and not frame.empty and all(c in frame.columns for c in columns)


def _get(row: Any, name: str, default: Any = None) -> Any:
    value = row.get(name, default) if hasattr(row, "get") else default
    return default if _missing(value) else value


class Segments:
    """This run's segments: labels and colours by value rank, names and ids by either key."""

    def __init__(self, profiles: pd.DataFrame | None):
        self.by_rank: dict[int, dict[str, Any]] = {}
        self.by_id: dict[str, dict[str, Any]] = {}
        if not _has(profiles, "segment"):
            return
        for _, row in profiles.sort_values("segment").iterrows():
            rank = int(row["segment"])
            info = {"rank": rank, "id": _get(row, "segment_id"), "name": _get(row, "segment_name", f"Segment {rank}"),
                    "colour": rank % 10}
            self.by_rank[rank] = info
            if info["id"]:
                self.by_id[str(info["id"])] = info

    def label(self, rank: Any = None, name: Any = None, segment_id: Any = None) -> str:
        info = self.by_rank.get(int(rank)) if not _missing(rank) and int(rank) in self.by_rank else {}
        segment_id = segment_id if not _missing(segment_id) else info.get("id")
        name = name if not _missing(name) else info.get("name", f"Segment {rank}")
        return f"{segment_id} · {name}" if segment_id and segment_id != "all" else str(name)

    def colour(self, rank: Any) -> int | None:
        return None if _missing(rank) or int(rank) < 0 else int(rank) % 10


def _heat(share: Any) -> int:
    """A share (0..1) as one of six shades."""
    if _missing(share) or share <= 0:
        return 0
    return min(5, 1 + int(float(share) * 5))
