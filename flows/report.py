"""The run's report: one self-contained HTML page for the people who act on the segments.

Marketing and CRM read none of the run's Parquet files, loose PNGs or Data Docs, so each run
folder gets `report.html`: the run's facts, the segments, their best sellers and the other
methods' findings in words and formatted numbers, with the run's plots embedded as data URIs.
The page requests nothing from any host or file (no fonts, scripts or stylesheets from
elsewhere); the only link out is the relative one to the Data Docs beside it.

Three steps, so that the rendering can be tested without files:
- `load_run` reads what exists in a run folder (manifest, the datasets the report shows, plots);
- `report_context` turns them into the template's context (pure: frames and manifest in, plain
  dicts and pre-formatted strings out; a section whose data is missing is None and left out);
- `render_report` renders `templates/report.html.j2`.
`build_report` does all three and writes the file atomically. The same run folder gives the same
bytes: nothing depends on the clock (the run's own finished_at is the date shown).
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from customer_segments.tasks.manifest import Manifest
from customer_segments.tasks.storage import write_bytes_atomic

REPORT_FILE = "report.html"
TEMPLATE = "report.html.j2"
DATA_DOCS = "validation/docs/index.html"

# The article's other methods: stages that can be switched off (--no-basket, ...).
METHODS = {
    "basket": ("Basket rules and recommendations", "--no-basket"),
    "rfm": ("RFM", "--no-rfm"),
    "propensity": ("Repurchase propensity", "--no-propensity"),
    "chaid": ("CHAID", "--no-chaid"),
}

# What the report reads from the run folder, and which columns (None: all). Large tables are
# read by column so that a report of a big run stays cheap; a column an older run lacks is skipped.
DATASETS: dict[str, tuple[str, ...] | None] = {
    "segment_profiles": None,
    "segment_stability": None,
    "k_selection": None,
    "top_products": None,
    "recommendations": ("segment", "StockCode", "best_seller_rank", "recommended_StockCode",
                        "recommended_Description", "lift", "confidence"),
    "basket_rules": ("segment", "segment_name", "segment_id", "antecedents", "consequents", "antecedent_names",
                     "consequent_names", "baskets", "support", "confidence", "lift"),
    "rfm_scores": ("rfm_segment",),
    "rfm_profile": None,
    "propensity_deciles": None,
    "propensity_coefficients": None,
    "chaid_segments": None,
    "segment_migration": None,
}

# The run's plots, in the order and with the words the report shows them.
PLOTS = {
    "ordercount_vs_totalsales": ("Scatter plot of customers by order count (x) and total sales (y), coloured by segment",
                                 "Order count against total sales"),
    "ordercount_vs_avgordervalue": ("Scatter plot of customers by order count (x) and average order value (y), "
                                    "coloured by segment", "Order count against average order value"),
    "totalsales_vs_avgordervalue": ("Scatter plot of customers by total sales (x) and average order value (y), "
                                    "coloured by segment", "Total sales against average order value"),
    "elbow": ("Line chart of the sum of squared errors for each number of segments, with the elbow marked",
              "Elbow: how much tighter the segments get with each extra segment"),
    "silhouette": ("Bar chart of the silhouette score for each candidate number of segments",
                   "Silhouette: how well separated the segments are (higher is better)"),
    "basket_top_rules": ("Horizontal bar chart of the strongest product rules by lift, per segment",
                         "The strongest rules per segment, by lift"),
    "rfm_heatmap": ("Heat map of customers by recency score (rows) and frequency score (columns), "
                    "coloured by mean sales", "Recency × frequency grid, coloured by mean sales per customer"),
    "propensity_gains": ("Cumulative gains curve and lift per decile of the repurchase model",
                         "Gains and lift of the repurchase model on the holdout"),
    "segment_migration": ("Heat map of customers from last month's segments (rows) to this month's (columns)",
                          "Where last month's customers are now"),
}

SECTIONS = (
    ("run", "The run"),
    ("segments", "The segments"),
    ("choosing-k", "How many segments"),
    ("best-sellers", "Best sellers per segment"),
    ("basket-rules", "Products bought together"),
    ("rfm", "RFM: recency, frequency, monetary"),
    ("propensity", "Who is likely to buy again"),
    ("migration", "Since last month"),
    ("data-quality", "Data quality"),
)

CLEANING_RULES = {
    "cancelled_or_zero_quantity": "Cancellations, returns and zero quantities",
    "missing_customer": "No CustomerID",
    "before_window": "Before the window",
    "on_or_after_cutoff": "On or after the cutoff",
}

# MONIC's transitions (README, "Month over month"), in words; {came_from} is the ids it came from.
TRANSITIONS = {
    "survived": "Survived from last month",
    "absorbed": "Absorbed {came_from}",
    "split": "Split from {came_from}",
    "emerged": "Emerged this month",
    "first": "First month of the series",
}

# Hennig's (2007) reading of the bootstrap Jaccard stability.
STABILITY_TONES = {"stable": "good", "doubtful": "warn", "unstable": "bad"}

FEATURES = {
    "recency_days": "Recency (days since the last order)",
    "log1p(frequency)": "Frequency (orders, log scale)",
    "log1p(monetary)": "Monetary (sales, log scale)",
    "log1p(AvgOrderValue)": "Average order value (log scale)",
    "(intercept)": "Baseline (intercept)",
}

TOP_RULES = 5     # rules shown per segment
TOP_PRODUCTS = 10  # best sellers shown per segment
RECOMMENDED = 3   # "other items you might like" per best seller


# --- formatting for people ------------------------------------------------------------------------

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


def embed_png(name: str, data: bytes) -> Figure:
    width, height = png_size(data)
    alt, caption = PLOTS.get(name, (name.replace("_", " "), name.replace("_", " ").capitalize()))
    return Figure(name=name, src="data:image/png;base64," + base64.b64encode(data).decode("ascii"),
                  width=width, height=height, alt=alt, caption=caption)


# --- reading a run folder -------------------------------------------------------------------------

@dataclass
class RunFiles:
    """What a run folder holds for the report."""

    manifest: Manifest
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    data_docs: str | None = None
    unreadable: list[str] = field(default_factory=list)


def read_dataset(path: Path, columns: tuple[str, ...] | None) -> pd.DataFrame:
    """A Parquet file, or a folder of Parquet parts, with those of `columns` it has."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(path, format="parquet")
    if columns is not None:
        columns = [c for c in columns if c in dataset.schema.names]
    return dataset.to_table(columns=columns).to_pandas()


def dataset_file(run_dir: Path, manifest: Manifest, name: str) -> Path | None:
    """Where a dataset is in the run folder: as the manifest names it, else `<name>.parquet`."""
    for record in manifest.stages.values():
        ref = record.outputs.get(name)
        if ref is not None and (run_dir / ref.file).exists():
            return run_dir / ref.file
    path = run_dir / f"{name}.parquet"
    return path if path.exists() else None


def load_run(run_dir: Path) -> RunFiles:
    run_dir = Path(run_dir)
    manifest = Manifest.model_validate_json((run_dir / "manifest.json").read_text(encoding="utf-8"))
    files = RunFiles(manifest=manifest)
    for name, columns in DATASETS.items():
        path = dataset_file(run_dir, manifest, name)
        if path is None:
            continue
        try:
            files.frames[name] = read_dataset(path, columns)
        except Exception:  # noqa: BLE001 - a damaged file leaves its section out; the report still says so
            files.unreadable.append(path.name)
    for name in PLOTS:
        path = run_dir / "plots" / f"{name}.png"
        if not path.is_file():
            continue
        try:
            files.figures[name] = embed_png(name, path.read_bytes())
        except (OSError, ValueError, struct.error):
            files.unreadable.append(f"plots/{path.name}")
    docs = manifest.data_docs or DATA_DOCS
    if not Path(docs).is_absolute() and (run_dir / docs).is_file():
        files.data_docs = Path(docs).as_posix()
    return files


# --- the context ----------------------------------------------------------------------------------

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


def _figures(figures: dict[str, Figure], *names: str) -> list[Figure]:
    return [figures[n] for n in names if n in figures]


def run_section(m: Manifest) -> dict[str, Any]:
    window = m.window
    window_start = m.metric("clean", "window_start")
    if window:
        window_text = f"the {window} months before the cutoff"
        if window_start:
            window_text += f" (from {fmt_date(window_start)})"
    else:
        window_text = "all history before the cutoff"
    facts = [
        {"label": "Input", "value": m.input.path, "mono": True},
        {"label": "Input sha256", "value": m.input.sha256, "mono": True},
    ]
    files = m.metric("ingest", "files")
    if files is not None:
        facts.append({"label": "Files read", "value": fmt_int(files)})
    facts += [
        {"label": "As-of month", "value": f"{fmt_month(m.as_of)} ({m.as_of})" if m.as_of else DASH},
        {"label": "Cutoff", "value": f"invoices before {fmt_date(m.cutoff)}" if m.cutoff else DASH},
        {"label": "Window", "value": window_text},
        {"label": "Run id", "value": m.run_id, "mono": True},
        {"label": "Started", "value": fmt_datetime(m.started_at)},
        {"label": "Finished", "value": fmt_datetime(m.finished_at)},
        {"label": "Duration", "value": fmt_duration(m.seconds)},
    ]
    first, last = m.metric("ingest", "first_invoice"), m.metric("ingest", "last_invoice")
    if first and last:
        facts.insert(3, {"label": "Invoices in the input", "value": f"{fmt_date(first)} to {fmt_date(last)}"})

    rows_read = m.metric("ingest", "rows_read", m.input.rows)
    rows_in = m.metric("clean", "rows_in")
    repeated = m.metric("ingest", "repeated_across_files") or 0
    base = rows_read or rows_in
    rows: list[list[Any]] = []
    if rows_read is not None:
        rows.append([cell("Lines read from the input", strong=True), fmt_int(rows_read), fmt_pct(1 if base else None)])
    if repeated:
        rows.append(["Repeated across files (dropped when read)", fmt_int(repeated), fmt_pct(repeated / base)])
    for rule, count in m.rows_dropped.items():
        rows.append([CLEANING_RULES.get(rule, rule.replace("_", " ").capitalize()), fmt_int(count),
                     fmt_pct(count / base) if base else DASH])
    foot = []
    if m.rows_clean is not None:
        foot = [["Kept for the analysis", fmt_int(m.rows_clean), fmt_pct(m.rows_clean / base) if base else DASH]]
    cleaning = None
    if rows or foot:
        cleaning = table([column("Invoice lines", wide=True), column("Lines", num=True), column("Share", num=True)],
                         rows, foot=foot, compact=True)
    return {"facts": facts, "cleaning": cleaning, "status": m.status,
            "status_tone": {"completed": "good", "failed": "bad"}.get(m.status, "warn"), "error": m.error}


def segments_section(m: Manifest, frames: dict[str, pd.DataFrame], figures: dict[str, Figure],
                     segs: Segments) -> dict[str, Any] | None:
    profiles = frames.get("segment_profiles")
    if not _has(profiles, "segment", "size"):
        return None
    profiles = profiles.sort_values("segment").reset_index(drop=True)
    stability = _stability_by_segment(profiles, frames.get("segment_stability"))
    total_sales = profiles["total_sales"].sum() if "total_sales" in profiles else None
    cards, averages, centers = [], [], []
    for _, row in profiles.iterrows():
        rank = int(row["segment"])
        share = _get(row, "share")
        stab = stability.get(rank)
        transition = _get(row, "transition")
        came_from = _get(row, "came_from")
        card = {
            "rank": rank, "id": _get(row, "segment_id"), "name": _get(row, "segment_name", f"Segment {rank}"),
            "colour": rank % 10, "customers": fmt_int(row["size"]), "share": fmt_pct(share),
            "share_width": f"{max(0.0, min(1.0, float(share))) * 100:.1f}" if share is not None else None,
            "sales_share": (fmt_pct(_get(row, "total_sales") / total_sales)
                            if total_sales and _get(row, "total_sales") is not None else None),
            "typical": [(label, fmt(_get(row, f"median_{feature}"))) for feature, label, fmt in (
                ("TotalSales", "Sales", fmt_money), ("OrderCount", "Orders", _fmt_count),
                ("AvgOrderValue", "Order value", fmt_money)) if _get(row, f"median_{feature}") is not None],
            "transition": _transition_text(transition, came_from, _get(row, "segment_id")),
            "stability": fmt_num(stab[0], 2) if stab else None,
            "reading": stab[1] if stab else None,
            "reading_tone": STABILITY_TONES.get(stab[1]) if stab else None,
        }
        cards.append(card)
        name_cell = cell(segs.label(rank, card["name"], card["id"]), strong=True)
        averages.append([name_cell, fmt_int(row["size"]), fmt_pct(share), fmt_money(_get(row, "total_sales")),
                         fmt_money(_get(row, "mean_TotalSales")), fmt_money(_get(row, "median_TotalSales")),
                         fmt_num(_get(row, "mean_OrderCount"), 1), _fmt_count(_get(row, "median_OrderCount")),
                         fmt_money(_get(row, "mean_AvgOrderValue")), fmt_money(_get(row, "median_AvgOrderValue"))])
        center_row = [name_cell] + [fmt_signed(_get(row, f"center_{f}")) for f in
                                    ("TotalSales", "OrderCount", "AvgOrderValue")]
        if stability:
            center_row += [fmt_num(stab[0], 2) if stab else DASH,
                           cell(stab[1], tone=STABILITY_TONES.get(stab[1])) if stab else DASH]
        centers.append(center_row)
    average_table = table(
        [column("Segment", wide=True), column("Customers", num=True), column("Share", num=True),
         column("Total sales", num=True), column("Mean", num=True), column("Median", num=True),
         column("Mean", num=True), column("Median", num=True), column("Mean", num=True), column("Median", num=True)],
        averages, groups=[("", 4), ("Sales per customer", 2), ("Orders per customer", 2), ("Order value", 2)])
    center_columns = [column("Segment", wide=True), column("Sales", num=True), column("Orders", num=True),
                      column("Order value", num=True)]
    if stability:
        center_columns += [column("Stability", num=True), column("Reading")]
    has_centers = any(c.startswith("center_") for c in profiles.columns)
    return {
        "cards": cards,
        "averages": average_table,
        "centers": table(center_columns, centers) if has_centers or stability else None,
        "has_stability": bool(stability),
        "unstable": [c for c in cards if c["reading"] == "unstable"],
        "figures": _figures(figures, "ordercount_vs_totalsales", "ordercount_vs_avgordervalue",
                            "totalsales_vs_avgordervalue"),
    }


def _fmt_count(value: Any) -> str:
    """Order counts: whole numbers as such, medians of an even count with their half."""
    if _missing(value):
        return DASH
    value = float(value)
    return f"{value:,.0f}" if value.is_integer() else f"{value:,.1f}"


def _transition_text(transition: str | None, came_from: str | None, segment_id: str | None = None) -> str | None:
    if not transition:
        return None
    came_from = ", ".join(part.strip() for part in str(came_from or "").split(",") if part.strip())
    words = TRANSITIONS.get(transition, transition.capitalize())
    if "{came_from}" in words:
        return words.format(came_from=came_from or "earlier segments")
    if transition == "survived" and came_from and came_from != segment_id:
        return f"{words} (was {came_from})"
    return words


def _stability_by_segment(profiles: pd.DataFrame, table_: pd.DataFrame | None) -> dict[int, tuple[float, str]]:
    """Per segment rank, Hennig's stability and its reading, from the profiles or the stability table."""
    from_profiles = {int(r["segment"]): (float(r["stability"]), str(_get(r, "stability_reading") or _reading(r["stability"])))
                     for _, r in profiles.iterrows() if "stability" in profiles and not _missing(r["stability"])}
    if from_profiles:
        return from_profiles
    if _has(table_, "segment", "stability"):
        return {int(r["segment"]): (float(r["stability"]), str(_get(r, "reading") or _reading(r["stability"])))
                for _, r in table_.iterrows() if not _missing(r["stability"])}
    return {}


def _reading(stability: float) -> str:
    # Hennig's thresholds, for a table that records the score without its reading.
    return "stable" if stability >= 0.75 else "doubtful" if stability >= 0.6 else "unstable"


def choosing_k_section(m: Manifest, frames: dict[str, pd.DataFrame], figures: dict[str, Figure]) -> dict[str, Any] | None:
    k = m.metric("select_k", "k")
    figs = _figures(figures, "elbow", "silhouette")
    selection = frames.get("k_selection")
    if k is None and not figs and not _has(selection, "k"):
        return None
    forced = m.parameters.get("k")
    k_min, k_max = m.parameters.get("k_min"), m.parameters.get("k_max")
    facts = []
    if k is not None:
        how = "set on the command line (--k)" if forced else "the best silhouette"
        facts.append({"label": "Segments", "value": f"{k}", "note": how})
    if m.metric("select_k", "silhouette") is not None:
        facts.append({"label": "Silhouette at that k", "value": fmt_num(m.metric("select_k", "silhouette"), 3),
                      "note": "from −1 to 1; above 0.5 is a clear structure"})
    if m.metric("select_k", "best_silhouette_k") is not None:
        note = f"among k = {k_min} to {k_max}" if k_min and k_max else None
        facts.append({"label": "Best silhouette at", "value": f"k = {m.metric('select_k', 'best_silhouette_k')}",
                      "note": note})
    if m.metric("select_k", "elbow_k") is not None:
        facts.append({"label": "Elbow at", "value": f"k = {m.metric('select_k', 'elbow_k')}"})
    candidates = None
    if _has(selection, "k"):
        rows = []
        for _, r in selection.sort_values("k").iterrows():
            marks = [label for flag, label in (("chosen", "chosen"), ("best_silhouette", "best silhouette"),
                                               ("elbow", "elbow")) if bool(_get(r, flag, False))]
            chosen = bool(_get(r, "chosen", False))
            rows.append([cell(f"{int(r['k'])}", strong=chosen), fmt_num(_get(r, "sse"), 1),
                         fmt_num(_get(r, "silhouette"), 3), ", ".join(marks) or ""])
        candidates = table([column("k", num=True), column("Sum of squared errors", num=True),
                            column("Silhouette", num=True), column("Marked", wide=True)], rows, compact=True)
    return {"facts": facts, "candidates": candidates, "figures": figs}


def best_sellers_section(frames: dict[str, pd.DataFrame], segs: Segments) -> dict[str, Any] | None:
    products = frames.get("top_products")
    if not _has(products, "segment", "Description"):
        return None
    recommendations = frames.get("recommendations")
    also: dict[tuple[int, str], list[str]] = {}
    if _has(recommendations, "segment", "StockCode", "recommended_Description"):
        # Per best seller, the strongest suggestions first.
        order = {c: up for c, up in (("segment", True), ("best_seller_rank", True), ("lift", False))
                 if c in recommendations}
        ranked = recommendations.sort_values(list(order), ascending=list(order.values()), kind="stable")
        for _, r in ranked.iterrows():
            key = (int(r["segment"]), str(r["StockCode"]))
            items = also.setdefault(key, [])
            if len(items) < RECOMMENDED:
                lift = _get(r, "lift")
                items.append(f"{r['recommended_Description']}" + (f" ({fmt_times(lift)})" if lift is not None else ""))
    groups = []
    sort = [c for c in ("segment", "rank") if c in products]
    for rank, part in products.sort_values(sort, kind="stable").groupby("segment", sort=True):
        rows = []
        for i, (_, r) in enumerate(part.head(TOP_PRODUCTS).iterrows(), start=1):
            item = str(_get(r, "Description", "")).strip() or str(_get(r, "StockCode", ""))
            code = _get(r, "StockCode")
            row = [fmt_int(_get(r, "rank", i)), cell(item, sub=f"code {code}" if code else None),
                   fmt_int(_get(r, "orders")), fmt_int(_get(r, "quantity")), fmt_money(_get(r, "revenue"))]
            if also:
                suggested = also.get((int(rank), str(code)), [])
                row.append(cell("", items=suggested) if suggested else DASH)
            rows.append(row)
        first = part.iloc[0]
        columns = [column("#", num=True), column("Product", wide=True), column("Orders", num=True),
                   column("Units", num=True), column("Revenue", num=True)]
        if also:
            columns.append(column("Other items you might like", wide=True))
        groups.append({"title": segs.label(rank, _get(first, "segment_name"), _get(first, "segment_id")),
                       "colour": segs.colour(rank), "table": table(columns, rows, row_header=False)})
    return {"groups": groups, "recommendations": bool(also)}


def basket_section(m: Manifest, frames: dict[str, pd.DataFrame], figures: dict[str, Figure],
                   segs: Segments) -> dict[str, Any] | None:
    rules = frames.get("basket_rules")
    figs = _figures(figures, "basket_top_rules")
    usable = _has(rules, "segment", "lift")
    if not usable and not figs:
        return None
    counts = {int(r["segment"]): r for r in (m.metric("basket", "rules_by_segment") or []) if "segment" in r}
    groups = []
    if usable:
        lhs = "antecedent_names" if "antecedent_names" in rules else "antecedents"
        rhs = "consequent_names" if "consequent_names" in rules else "consequents"
        sort = ["segment", "lift"] + [c for c in ("confidence", "support") if c in rules]
        ranked = rules.sort_values(sort, ascending=[True] + [False] * (len(sort) - 1), kind="stable")
        ranked = _one_direction(ranked)
        # All customers (segment -1) first, then the segments by value.
        for rank, part in ranked.groupby("segment", sort=True):
            first = part.iloc[0]
            rows = []
            for _, r in part.head(TOP_RULES).iterrows():
                rows.append([_items(_get(r, lhs, "")), _items(_get(r, rhs, "")), fmt_int(_get(r, "baskets")),
                             fmt_pct(_get(r, "support")), fmt_pct(_get(r, "confidence"), 0), fmt_times(_get(r, "lift"))])
            info = counts.get(int(rank), {})
            note = None
            if info.get("rules") is not None:
                note = f"{fmt_int(info['rules'])} rules from {fmt_int(info.get('baskets'))} baskets"
            title = ("All customers" if int(rank) < 0
                     else segs.label(rank, _get(first, "segment_name"), _get(first, "segment_id")))
            groups.append({"title": title, "note": note, "colour": segs.colour(rank), "table": table(
                [column("When a basket holds", wide=True), column("it also tends to hold", wide=True),
                 column("Baskets", num=True), column("Support", num=True), column("Confidence", num=True),
                 column("Lift", num=True)], rows, row_header=False)})
    return {"groups": groups, "figures": figs, "top": TOP_RULES, "deduplicated": usable and "antecedents" in rules,
            "total": fmt_int(m.metric("basket", "rules_total")) if m.metric("basket", "rules_total") is not None else None}


def _items(text: Any) -> str:
    return str(text) if text else DASH


def _one_direction(rules: pd.DataFrame) -> pd.DataFrame:
    """Keep one rule per set of products in a segment: the first, i.e. the more confident direction.

    "A → B" and "B → A" have the same lift and support, so the top rules by lift would otherwise
    show every pair twice and only half as many distinct associations.
    """
    if not {"antecedents", "consequents"} <= set(rules.columns):
        return rules
    # Codes of a side are joined with ", " and StockCodes never contain it (tasks/basket.py).
    itemsets = [frozenset(str(a).split(", ")) | frozenset(str(c).split(", "))
                for a, c in zip(rules["antecedents"], rules["consequents"])]
    keys = pd.Series([(s, tuple(sorted(i))) for s, i in zip(rules["segment"], itemsets)], index=rules.index)
    return rules[~keys.duplicated()]


def rfm_section(m: Manifest, frames: dict[str, pd.DataFrame], figures: dict[str, Figure],
                segs: Segments) -> dict[str, Any] | None:
    scores, profile = frames.get("rfm_scores"), frames.get("rfm_profile")
    figs = _figures(figures, "rfm_heatmap")
    if _has(scores, "rfm_segment"):
        counts = scores["rfm_segment"].value_counts()
    elif m.metric("rfm", "rfm_segments"):
        counts = pd.Series(m.metric("rfm", "rfm_segments"), dtype="int64")
    else:
        counts = None
    if counts is not None:
        # Largest first; equal counts by name, so the order never depends on the reading order.
        counts = counts.rename_axis("rfm_segment").reset_index(name="n").sort_values(
            ["n", "rfm_segment"], ascending=[False, True]).set_index("rfm_segment")["n"]
    usable_profile = _has(profile, "rfm_segment", "segment", "customers")
    if counts is None and not usable_profile and not figs:
        return None
    count_table = None
    if counts is not None:
        total = counts.sum()
        count_table = table([column("RFM segment", wide=True), column("Customers", num=True), column("Share", num=True)],
                            [[cell(name, strong=True), fmt_int(n), fmt_pct(n / total if total else None)]
                             for name, n in counts.items()], compact=True)
    crosstab = None
    if usable_profile:
        ranks = sorted(int(s) for s in profile["segment"].unique())
        order = list(counts.index) if counts is not None else sorted(profile["rfm_segment"].unique())
        order += [s for s in sorted(profile["rfm_segment"].unique()) if s not in order]
        column_totals = profile.groupby("segment")["customers"].sum()
        cells = {(str(r["rfm_segment"]), int(r["segment"])): r for _, r in profile.iterrows()}
        rows = []
        for name in order:
            row: list[Any] = [cell(name, strong=True)]
            for rank in ranks:
                r = cells.get((name, rank))
                if r is None:
                    row.append(cell(DASH, heat=0))
                    continue
                share = _get(r, "share_of_segment")
                if share is None and column_totals.get(rank):
                    share = r["customers"] / column_totals[rank]
                row.append(cell(fmt_int(r["customers"]), sub=fmt_pct(share, 0) if share is not None else None,
                                heat=_heat(share)))
            rows.append(row)
        columns = [column("RFM segment", wide=True)] + [
            column(segs.by_rank[rank]["id"] or str(rank) if rank in segs.by_rank else str(rank), num=True)
            for rank in ranks]
        crosstab = table(columns, rows, matrix=True,
                         foot=[[cell("Customers", strong=True)] + [fmt_int(column_totals.get(rank)) for rank in ranks]])
    return {"counts": count_table, "crosstab": crosstab, "figures": figs,
            "legend": [{"id": info["id"] or str(rank), "name": info["name"], "colour": info["colour"]}
                       for rank, info in segs.by_rank.items()]}


def _heat(share: Any) -> int:
    """A share (0..1) as one of six shades."""
    if _missing(share) or share <= 0:
        return 0
    return min(5, 1 + int(float(share) * 5))


def propensity_section(m: Manifest, frames: dict[str, pd.DataFrame], figures: dict[str, Figure]) -> dict[str, Any] | None:
    deciles, coefficients, leaves = (frames.get("propensity_deciles"), frames.get("propensity_coefficients"),
                                     frames.get("chaid_segments"))
    figs = _figures(figures, "propensity_gains")
    metrics = m.stages["propensity"].metrics if "propensity" in m.stages else {}
    horizon = metrics.get("horizon_months") or m.parameters.get("horizon")
    model = None
    if metrics.get("roc_auc") is not None or _has(deciles, "decile") or _has(coefficients, "feature") or figs:
        facts = []
        if metrics.get("roc_auc") is not None:
            facts.append({"label": "ROC AUC", "value": fmt_num(metrics["roc_auc"], 3),
                          "note": "0.5 is a coin toss, 1 is perfect"})
        if metrics.get("top_decile_lift") is not None:
            facts.append({"label": "Top-decile lift", "value": fmt_times(metrics["top_decile_lift"]),
                          "note": "the top 10% buy again this many times as often as average"})
        if horizon:
            facts.append({"label": "Horizon", "value": f"{horizon} months"})
        if metrics.get("holdout_customers") is not None:
            facts.append({"label": "Tested on", "value": f"{fmt_int(metrics['holdout_customers'])} customers",
                          "note": f"{fmt_int(metrics.get('holdout_responders'))} bought again"
                          if metrics.get("holdout_responders") is not None else None})
        decile_table = None
        if _has(deciles, "decile"):
            decile_table = table(
                [column("Decile", num=True), column("Customers", num=True), column("Bought again", num=True),
                 column("Response rate", num=True), column("Lift", num=True), column("Cumulative gain", num=True)],
                [[cell(fmt_int(r["decile"]), strong=True), fmt_int(_get(r, "customers")), fmt_int(_get(r, "responders")),
                  fmt_pct(_get(r, "response_rate")), fmt_times(_get(r, "lift")), fmt_pct(_get(r, "cumulative_gain"))]
                 for _, r in deciles.sort_values("decile").iterrows()])
        coefficient_table = None
        if _has(coefficients, "feature"):
            coefficient_table = table(
                [column("Behaviour", wide=True), column("Coefficient", num=True), column("Odds ratio", num=True)],
                [[FEATURES.get(str(r["feature"]), str(r["feature"])), fmt_signed(_get(r, "coefficient")),
                  fmt_times(_get(r, "odds_ratio"))] for _, r in coefficients.iterrows()], compact=True)
        model = {"facts": facts, "note": metrics.get("note"), "deciles": decile_table,
                 "coefficients": coefficient_table, "figures": figs}
    chaid = None
    if _has(leaves, "rule", "customers"):
        target = m.metric("chaid", "chaid_target") or m.parameters.get("chaid_target")
        target_text = {"repurchase": f"buys again within {horizon or 'the next'} months",
                       "segment": "belongs to the most valuable segment"}.get(target, target or "the target")
        sort = ["response_rate", "customers"] if "response_rate" in leaves else ["customers"]
        rows = [[cell(str(r["rule"]), strong=True), fmt_int(r["customers"]), fmt_int(_get(r, "responders")),
                 cell(fmt_pct(_get(r, "response_rate")), heat=_heat(_get(r, "response_rate")))]
                for _, r in leaves.sort_values(sort, ascending=False, kind="stable").iterrows()]
        chaid = {"target": target, "target_text": target_text, "note": m.metric("chaid", "chaid_note"),
                 "table": table([column("Rule", wide=True), column("Customers", num=True), column("Responders", num=True),
                                 column("Response rate", num=True)], rows, row_header=False)}
    if model is None and chaid is None:
        return None
    return {"model": model, "chaid": chaid, "horizon": horizon}


def migration_section(m: Manifest, frames: dict[str, pd.DataFrame], figures: dict[str, Figure],
                      segs: Segments) -> dict[str, Any] | None:
    moves = frames.get("segment_migration")
    if not _has(moves, "from_segment_id", "to_segment_id", "customers"):
        return None
    # A series' first month has nothing to compare with: every customer is "new".
    if m.previous is None and (moves["from_segment_id"] == "new").all():
        return None
    frm = sorted({str(s) for s in moves["from_segment_id"]} - {"new"}, key=_id_key) + (
        ["new"] if (moves["from_segment_id"] == "new").any() else [])
    to = sorted({str(s) for s in moves["to_segment_id"]} - {"lapsed"}, key=_id_key) + (
        ["lapsed"] if (moves["to_segment_id"] == "lapsed").any() else [])
    counts = {(str(r["from_segment_id"]), str(r["to_segment_id"])): int(r["customers"]) for _, r in moves.iterrows()}
    row_totals = {f: sum(n for (a, _), n in counts.items() if a == f) for f in frm}
    rows = []
    for f in frm:
        row: list[Any] = [cell(_side_label(f), strong=True)]
        for t in to:
            n = counts.get((f, t), 0)
            share = n / row_totals[f] if row_totals[f] else None
            row.append(cell(fmt_int(n), sub=fmt_pct(share, 0) if n else None, heat=_heat(share) if n else 0))
        row.append(cell(fmt_int(row_totals[f]), strong=True))
        rows.append(row)
    col_totals = [sum(counts.get((f, t), 0) for f in frm) for t in to]
    matrix = table([column("From ↓ to →", wide=True)] +
                   [column(_side_label(t), num=True) for t in to] + [column("Total", num=True)],
                   rows, matrix=True, foot=[[cell("Total", strong=True)] + [fmt_int(n) for n in col_totals] +
                                            [fmt_int(sum(col_totals))]])
    moved = moves[moves["from_segment_id"].astype(str) != moves["to_segment_id"].astype(str)]
    moved = moved.sort_values(["customers", "from_segment_id", "to_segment_id"], ascending=[False, True, True])
    mover_rows = [[cell(_side_label(str(r["from_segment_id"]))), cell(_side_label(str(r["to_segment_id"]))),
                   fmt_int(r["customers"]),
                   fmt_money(_get(r, "revenue_before")), fmt_money(_get(r, "revenue_after"))]
                  for _, r in moved.iterrows()]
    movers_table = table([column("From"), column("To"), column("Customers", num=True),
                          column("Sales before", num=True), column("Sales after", num=True)],
                         mover_rows, row_header=False) if mover_rows else None
    metrics = m.stages["migration"].metrics if "migration" in m.stages else {}
    facts = []
    if m.previous:
        facts.append({"label": "Previous run", "value": str(m.previous.get("run_id", DASH)), "mono": True,
                      "note": fmt_month(m.previous.get("as_of")) if m.previous.get("as_of") else None})
    for key, label in (("previous_customers_seen", "Customers last month"), ("movers", "Changed segment"),
                       ("new_customers", "New customers"), ("lapsed_customers", "Lapsed customers")):
        if metrics.get(key) is not None:
            facts.append({"label": label, "value": fmt_int(metrics[key])})
    legend = [{"id": info["id"], "name": info["name"], "colour": info["colour"]}
              for info in segs.by_rank.values() if info["id"]]
    return {"facts": facts, "matrix": matrix, "movers": movers_table, "legend": legend,
            "figures": _figures(figures, "segment_migration")}


def _id_key(segment_id: str) -> tuple[int, str]:
    digits = "".join(ch for ch in segment_id if ch.isdigit())
    return (int(digits) if digits else 1 << 30, segment_id)


def _side_label(segment_id: str) -> str:
    return {"new": "New customers", "lapsed": "Lapsed"}.get(segment_id, segment_id)


def quality_section(m: Manifest, data_docs: str | None) -> dict[str, Any] | None:
    try:
        from customer_segments.tasks.stages import STAGE_NAMES
    except Exception:  # noqa: BLE001 - the order is a nicety; the manifest's own order is the fallback
        STAGE_NAMES = ()
    order = {name: i for i, name in enumerate(STAGE_NAMES)}
    gates = sorted(enumerate(m.gates()), key=lambda item: (order.get(item[1][0], len(order)), item[0]))
    if not gates and not data_docs:
        return None
    rows = []
    passed = warned = failed = 0
    for _, (stage, dataset, gate) in gates:
        success = gate.get("success")
        critical, warning = gate.get("failed_critical") or 0, gate.get("failed_warning") or 0
        if success is False or critical:
            outcome, tone = "failed", "bad"
            failed += 1
        elif warning:
            outcome, tone = "passed with warnings", "warn"
            warned += 1
        else:
            outcome, tone = "passed", "good"
            passed += 1
        texts = [str(t) for t in (gate.get("critical") or [])] + [str(t) for t in (gate.get("warnings") or [])]
        rows.append({"stage": stage, "dataset": dataset, "outcome": outcome, "tone": tone,
                     "evaluated": fmt_int(gate.get("evaluated")), "critical": fmt_int(critical),
                     "warning": fmt_int(warning), "texts": texts})
    return {"rows": rows, "passed": passed, "warned": warned, "failed": failed, "total": len(rows),
            "data_docs": data_docs}


def _methods_not_run(m: Manifest) -> list[str]:
    notes = []
    chosen = m.parameters.get("methods")
    for stage, (label, flag) in METHODS.items():
        record = m.stages.get(stage)
        if record is not None and record.status in ("completed", "cached"):
            continue
        if record is not None and record.status == "failed":
            notes.append(f"{label} failed in this run.")
        elif record is not None and record.status == "running":
            notes.append(f"{label} did not finish in this run.")
        elif isinstance(chosen, list) and stage not in chosen:
            notes.append(f"{label} did not run: switched off ({flag}).")
        else:
            notes.append(f"{label} did not run: this run was made without it.")
    return notes


def report_context(manifest: Manifest, frames: dict[str, pd.DataFrame], figures: dict[str, Figure], *,
                   data_docs: str | None = None, unreadable: list[str] | None = None) -> dict[str, Any]:
    """Everything the template shows, formatted; a section is None when its data is not there."""
    m = manifest
    segs = Segments(frames.get("segment_profiles"))
    sections = {
        "run": run_section(m),
        "segments": segments_section(m, frames, figures, segs),
        "choosing-k": choosing_k_section(m, frames, figures),
        "best-sellers": best_sellers_section(frames, segs),
        "basket-rules": basket_section(m, frames, figures, segs),
        "rfm": rfm_section(m, frames, figures, segs),
        "propensity": propensity_section(m, frames, figures),
        "migration": migration_section(m, frames, figures, segs),
        "data-quality": quality_section(m, data_docs),
    }
    notes = _methods_not_run(m)
    if m.previous is None and sections["migration"] is None:
        notes.append("This is the first run of its series: there is no last month to compare with.")
    elif sections["migration"] is None:
        notes.append("Since last month: the migration table is not in this run folder.")
    if sections["segments"] is None:
        notes.append("The segment profiles are not in this run folder.")
    for name in unreadable or []:
        notes.append(f"{name} could not be read; what it holds is left out.")

    quality = sections["data-quality"]
    glance = []
    if m.customers is not None:
        glance.append({"label": "Customers", "value": fmt_int(m.customers)})
    if m.k is not None:
        glance.append({"label": "Segments", "value": str(m.k)})
    if m.rows_clean is not None:
        glance.append({"label": "Invoice lines used", "value": fmt_int(m.rows_clean)})
    movers = m.metric("migration", "movers")
    if sections["migration"] is not None and movers is not None:
        glance.append({"label": "Changed segment", "value": fmt_int(movers)})
    if quality and quality["total"]:
        tone = "bad" if quality["failed"] else "warn" if quality["warned"] else "good"
        value = (f"{quality['failed']} failed" if quality["failed"] else
                 f"{quality['warned']} with warnings" if quality["warned"] else "all passed")
        glance.append({"label": f"Quality gates ({quality['total']})", "value": value, "tone": tone})

    title_month = fmt_month(m.as_of) if m.as_of else "run " + m.run_id
    return {
        "title": f"Customer segments, {title_month}",
        "subtitle": f"Invoices before {fmt_date(m.cutoff)}" if m.cutoff else "",
        "run_id": m.run_id,
        "as_of": m.as_of,
        "status": m.status,
        "finished": fmt_datetime(m.finished_at or m.started_at),
        "glance": glance,
        "notes": notes,
        "toc": [{"id": sid, "title": title} for sid, title in SECTIONS if sections.get(sid) is not None],
        "titles": dict(SECTIONS),
        "s": sections,
    }


# --- rendering ------------------------------------------------------------------------------------

def environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=PackageLoader("customer_segments.flows", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,  # a misspelt key fails the test suite instead of rendering blank
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_report(context: dict[str, Any]) -> str:
    return environment().get_template(TEMPLATE).render(**context)


def build_report(run_dir: Path) -> Path:
    """Write `run_dir/report.html` from what the run folder holds, and return its path."""
    run_dir = Path(run_dir)
    files = load_run(run_dir)
    context = report_context(files.manifest, files.frames, files.figures, data_docs=files.data_docs,
                             unreadable=files.unreadable)
    target = run_dir / REPORT_FILE
    write_bytes_atomic(target, render_report(context).encode("utf-8"))
    return target
