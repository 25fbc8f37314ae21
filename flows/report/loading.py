"""Reading a run folder: the manifest, the datasets the sections show, the plots, the Data Docs.

What to read comes from the sections (their DATASETS) and the stage catalogue (the figures);
`customer_segments.flows.report.load_run` passes both in. Large tables are read by column so
that a report of a big run stays cheap; a column an older run lacks is skipped. A file that is
missing leaves its section out; one that cannot be read is listed, so that the report says so.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from customer_segments.flows.report.tables import Figure, embed_png
from customer_segments.tasks.runtime.manifest import Manifest

DATA_DOCS = "validation/docs/index.html"


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


def read_run(run_dir: Path, datasets: Mapping[str, tuple[str, ...] | None], stems: Iterable[str]) -> RunFiles:
    """The manifest, those of `datasets` (name -> columns, None: all) and of the plots
    `plots/<stem>.png` the folder holds, and the Data Docs' relative path if they are there."""
    run_dir = Path(run_dir)
    manifest = Manifest.model_validate_json((run_dir / "manifest.json").read_text(encoding="utf-8"))
    files = RunFiles(manifest=manifest)
    for name, columns in datasets.items():
        path = dataset_file(run_dir, manifest, name)
        if path is None:
            continue
        try:
            files.frames[name] = read_dataset(path, columns)
        except Exception:  # noqa: BLE001 - a damaged file leaves its section out; the report still says so
            files.unreadable.append(path.name)
    for name in stems:
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
