"""The pipeline's catalogue: every stage, the datasets it reads and writes, and its parameters.

Stage names are used as they are in the manifest, the Prefect task names and on the command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from tasks.clean import clean_invoices, rows_dropped
from tasks.cluster import cluster_labels
from tasks.features import customer_features
from tasks.ingest import read_invoices
from tasks.normalize import normalize_features
from tasks.plots import segment_plots
from tasks.profile import profile
from tasks.runner import Stage
from tasks.select_k import chosen_k, k_selection

Frames = Mapping[str, pd.DataFrame]


def _clean_metrics(frames: Frames, params: Mapping[str, Any]) -> dict[str, Any]:
    raw = frames["raw_invoices"]
    return {
        "rows_in": len(raw),
        "rows_dropped": rows_dropped(raw, params["cutoff"]),
        "rows_clean": len(frames["clean_invoices"]),
    }


def _k_metrics(frames: Frames, params: Mapping[str, Any]) -> dict[str, Any]:
    table = frames["k_selection"]
    chosen = table[table["chosen"]].iloc[0]
    elbow = table.loc[table["elbow"], "k"]
    return {
        "k": chosen_k(table),
        "silhouette": None if pd.isna(chosen["silhouette"]) else round(float(chosen["silhouette"]), 6),
        "best_silhouette_k": int(table.loc[table["best_silhouette"], "k"].iloc[0]),
        "elbow_k": int(elbow.iloc[0]) if len(elbow) else None,
    }


INGEST = Stage(
    "ingest", read_invoices, outputs=("raw_invoices",),
    params=("input_path",), key_params=("input_sha256",), shared=True, retries=2,
    metrics=lambda frames, params: {"rows_raw": len(frames["raw_invoices"])},
)
CLEAN = Stage(
    "clean", clean_invoices, inputs=("raw_invoices",), outputs=("clean_invoices",),
    params=("cutoff",), metrics=_clean_metrics,
)
FEATURES = Stage(
    "features", customer_features, inputs=("clean_invoices",), outputs=("customer_features",),
    metrics=lambda frames, params: {"customers": len(frames["customer_features"])},
)
NORMALIZE = Stage(
    "normalize", normalize_features, inputs=("customer_features",), outputs=("normalized_features",),
)
SELECT_K = Stage(
    "select_k", k_selection, inputs=("normalized_features",), outputs=("k_selection",),
    params=("k_min", "k_max", "k"), metrics=_k_metrics,
)
CLUSTER = Stage(
    "cluster", cluster_labels, inputs=("customer_features", "normalized_features", "k_selection"),
    outputs=("cluster_labels",),
)
PROFILE = Stage(
    "profile", profile, inputs=("cluster_labels", "clean_invoices"),
    outputs=("segment_profiles", "top_products"),
)
PLOTS = Stage("plots", segment_plots, inputs=("k_selection", "cluster_labels"), figures=True)

STAGES = (INGEST, CLEAN, FEATURES, NORMALIZE, SELECT_K, CLUSTER, PROFILE, PLOTS)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
