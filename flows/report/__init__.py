"""The run's report: one self-contained HTML page for the people who act on the segments.

Marketing and CRM read none of the run's Parquet files, loose PNGs or Data Docs, so each run
folder gets `report.html`: the run's facts, the segments, their best sellers and the other
methods' findings in words and formatted numbers, with the run's plots embedded as data URIs.
The page requests nothing from any host or file (no fonts, scripts or stylesheets from
elsewhere); the only link out is the relative one to the Data Docs beside it.

Three steps, so that the rendering can be tested without files:
- `load_run` reads what exists in a run folder (manifest, the datasets the sections show, plots);
- `report_context` turns them into the template's context (pure: frames and manifest in, plain
  dicts and pre-formatted strings out; a section whose data is missing is None and left out);
- `render_report` renders `templates/report.html.j2`.
`build_report` does all three and writes the file atomically. The same run folder gives the same
bytes: nothing depends on the clock (the run's own finished_at is the date shown).

The page is made of sections, one module each: `run` first, `quality` last, and in between the
sections the stage catalogue names (`Stage.report`, tasks/catalogue.py), in catalogue order; a
section two stages name (propensity and chaid) appears once, where it is first named. A section
module declares
- `ANCHOR`, the section's html id, `TITLE` and `TEMPLATE`, its partial in templates/;
- `DATASETS`, the datasets it reads (name -> columns, None: all), and `FIGURES`, the stems of
  the plots it shows, in order (their words come from the catalogue's FigureSpecs);
- `build(manifest, frames, figures, segments)`, its context, or None when its data is not there
  (`run.build(manifest)` and `quality.build(manifest, data_docs)` take what they need).
Adding a section: its module here, its partial in templates/, and its name on a stage.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from customer_segments.flows.report import loading, quality, run
from customer_segments.flows.report.formatting import fmt_date, fmt_datetime, fmt_int, fmt_money, fmt_month, fmt_pct
from customer_segments.flows.report.loading import RunFiles
from customer_segments.flows.report.tables import Figure, Segments
from customer_segments.tasks.runtime.manifest import Manifest
from customer_segments.tasks.runtime.run_folders import INTERRUPTED, status_of
from customer_segments.tasks.runtime.storage import write_bytes_atomic

__all__ = ["REPORT_FILE", "build_report", "environment", "fmt_money", "fmt_pct", "load_run", "render_report",
           "report_context"]

REPORT_FILE = "report.html"
TEMPLATE = "report.html.j2"


# --- the sections ---------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def sections() -> tuple[ModuleType, ...]:
    """The section modules in page order: run, those the stage catalogue names, quality."""
    from customer_segments.tasks.catalogue import STAGES

    fixed = {section.__name__.rpartition(".")[2] for section in (run, quality)}
    named: list[str] = []
    for stage in STAGES:
        if stage.report and stage.report not in named and stage.report not in fixed:
            named.append(stage.report)
    return (run, *(importlib.import_module(f"{__name__}.{name}") for name in named), quality)


def datasets() -> dict[str, tuple[str, ...] | None]:
    """What the report reads from a run folder: the sections' datasets, with the columns any of them needs."""
    wanted: dict[str, tuple[str, ...] | None] = {}
    for section in sections():
        for name, columns in section.DATASETS.items():
            if name not in wanted:
                wanted[name] = columns
            elif wanted[name] is not None:
                wanted[name] = None if columns is None else wanted[name] + tuple(
                    c for c in columns if c not in wanted[name])
    return wanted


def figure_stems() -> list[str]:
    """The plots the stages of the catalogue draw, in the order the sections show them."""
    from customer_segments.tasks.catalogue import STAGES

    shown = [stem for section in sections() for stem in section.FIGURES]
    drawn = list(dict.fromkeys(spec.stem for stage in STAGES for spec in stage.figures))
    return sorted(drawn, key=lambda stem: shown.index(stem) if stem in shown else len(shown))


def load_run(run_dir: Path) -> RunFiles:
    """What a run folder holds for the report: its manifest, the sections' datasets, the plots."""
    return loading.read_run(Path(run_dir), datasets(), figure_stems())


# --- the context ----------------------------------------------------------------------------------

def _methods_not_run(m: Manifest) -> list[str]:
    """Why each stage a user can switch off (--no-basket, ...), or the input cannot feed, is missing."""
    from customer_segments.tasks.catalogue import STAGES

    notes = []
    chosen = m.parameters.get("methods")
    for stage in (s for s in STAGES if s.switchable or s.needs_columns):
        label, flag = stage.label or stage.name, stage.switch_flag
        record = m.stages.get(stage.name)
        if record is not None and record.status in ("completed", "cached"):
            continue
        if record is not None and record.status == "skipped":
            notes.append(f"{label} did not run: {record.reason}.")
        elif not stage.switchable:
            continue
        elif record is not None and record.status == "failed":
            notes.append(f"{label} failed in this run.")
        elif record is not None and record.status == "running":
            notes.append(f"{label} did not finish in this run.")
        elif isinstance(chosen, list) and stage.name not in chosen:
            notes.append(f"{label} did not run: switched off ({flag}).")
        else:
            notes.append(f"{label} did not run: this run was made without it.")
    return notes


def report_context(manifest: Manifest, frames: dict[str, pd.DataFrame], figures: dict[str, Figure], *,
                   data_docs: str | None = None, unreadable: list[str] | None = None) -> dict[str, Any]:
    """Everything the template shows, formatted; a section is None when its data is not there."""
    m = manifest
    segs = Segments(frames.get("segment_profiles"))
    built: dict[str, dict[str, Any] | None] = {}
    for section in sections():
        if section is run:
            built[section.ANCHOR] = run.build(m)
        elif section is quality:
            built[section.ANCHOR] = quality.build(m, data_docs)
        else:
            built[section.ANCHOR] = section.build(m, frames, figures, segs)
    present = [section for section in sections() if built[section.ANCHOR] is not None]

    # The notes and the glance speak of the segments and of last month (sections by their ids).
    migration = built.get("migration")
    notes = _methods_not_run(m)
    if m.status == INTERRUPTED:
        notes.insert(0, f"This run was interrupted: its process ended before the run did. "
                        f"`segment resume {m.run_id}` completes it.")
    if m.previous is None and migration is None:
        notes.append("This is the first run of its series: there is no last month to compare with.")
    elif migration is None:
        notes.append("Since last month: the migration table is not in this run folder.")
    if built.get("segments") is None:
        notes.append("The segment profiles are not in this run folder.")
    for name in unreadable or []:
        notes.append(f"{name} could not be read; what it holds is left out.")

    gates = built[quality.ANCHOR]
    glance = []
    if m.customers is not None:
        glance.append({"label": "Customers", "value": fmt_int(m.customers)})
    if m.k is not None:
        glance.append({"label": "Segments", "value": str(m.k)})
    if m.rows_clean is not None:
        glance.append({"label": "Invoice lines used", "value": fmt_int(m.rows_clean)})
    movers = m.metric("migration", "movers")
    if migration is not None and movers is not None:
        glance.append({"label": "Changed segment", "value": fmt_int(movers)})
    if gates and gates["total"]:
        tone = "bad" if gates["failed"] else "warn" if gates["warned"] else "good"
        value = (f"{gates['failed']} failed" if gates["failed"] else
                 f"{gates['warned']} with warnings" if gates["warned"] else "all passed")
        glance.append({"label": f"Quality gates ({gates['total']})", "value": value, "tone": tone})

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
        # The sections on the page, in order: the template includes each one's partial, which
        # reads its data from s[<id>] and its heading from titles[<id>].
        "sections": [{"id": s.ANCHOR, "title": s.TITLE, "template": s.TEMPLATE} for s in present],
        "toc": [{"id": s.ANCHOR, "title": s.TITLE} for s in present],
        "titles": {s.ANCHOR: s.TITLE for s in sections()},
        "s": built,
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
    manifest = files.manifest.model_copy(update={"run_dir": str(run_dir)})
    # Whether the run is still going is derived (its folder's lock), never taken from the manifest.
    manifest = manifest.model_copy(update={"status": status_of(manifest)})
    context = report_context(manifest, files.frames, files.figures, data_docs=files.data_docs,
                             unreadable=files.unreadable)
    target = run_dir / REPORT_FILE
    write_bytes_atomic(target, render_report(context).encode("utf-8"))
    return target
