"""Cluster: k-means on the normalized features; segments numbered and named by what they are."""

from __future__ import annotations

import numpy as np
import pandas as pd

from customer_segments.tasks.segmentation.features import FEATURES
from customer_segments.tasks.segmentation.identity import assign_ids
from customer_segments.tasks.segmentation.select_k import chosen_k, fit_kmeans

NORMALIZED = tuple(f"{f}_norm" for f in FEATURES)


def cluster_labels(features: pd.DataFrame, normalized: pd.DataFrame, k_selection: pd.DataFrame,
                   previous_labels: pd.DataFrame | None = None,
                   previous_lineage: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per customer (raw and normalized features, segment, its name and id), and the lineage.

    k-means numbers clusters arbitrarily; segments are renumbered by total sales, highest
    first, so segment 0 is always the most valuable whatever the random start. The segment_id
    is matched to the previous month's segments (see identity.py), which gives the lineage table.
    """
    k = chosen_k(k_selection)
    points = normalized[list(FEATURES)].to_numpy()
    raw_labels = fit_kmeans(points, k).labels_
    sales_by_cluster = features.groupby(raw_labels)["TotalSales"].sum()
    order = sales_by_cluster.sort_values(ascending=False, kind="stable").index.to_numpy()
    renumber = np.empty(k, dtype="int64")
    renumber[order] = np.arange(k)
    segment = renumber[raw_labels]

    labels = features[["CustomerID", *FEATURES]].copy()
    for name, norm in zip(FEATURES, NORMALIZED):
        labels[norm] = normalized[name].to_numpy()
    labels["segment"] = segment
    centers = labels.groupby("segment")[list(NORMALIZED)].mean()
    centers.columns = list(FEATURES)
    labels["segment_name"] = segment_names(centers).reindex(segment).to_numpy()
    ids, lineage = assign_ids(labels, previous_labels, previous_lineage)
    labels["segment_id"] = ids.reindex(segment).to_numpy()
    return labels, lineage


def cluster_metrics(frames, params) -> dict:
    """Segment sizes by id, and how this month's segments relate to last month's."""
    labels, lineage = frames["cluster_labels"], frames["segment_lineage"]
    sizes = labels["segment_id"].value_counts()
    current = lineage[lineage["segment"].notna()]
    return {
        "segment_sizes": {sid: int(sizes[sid]) for sid in current["segment_id"]},
        "transitions": dict(zip(lineage["segment_id"], lineage["transition"])),
        "issued_up_to": int(lineage["issued_up_to"].max()),
    }


def segment_names(centers: pd.DataFrame) -> pd.Series:
    """Name each segment from its center (normalized units; 0 is the median customer).

    The article reads the segments this way: high order count and high order value are the
    best customers, low on both the least valuable, and the two mixed cases are the growth
    opportunities. With more than four segments names repeat, so repeats get a rank suffix
    in total-sales order.
    """
    frequent = centers["OrderCount"] > 0
    big = centers["AvgOrderValue"] > 0
    names = pd.Series(
        np.select(
            [frequent & big, ~frequent & ~big, ~frequent & big],
            ["High value: frequent, big spenders", "Low value: rare, small orders", "Big orders, infrequent"],
            default="Frequent, small orders",
        ),
        index=centers.index,
    )
    repeat = names.groupby(names).cumcount() + 1
    duplicated = names.duplicated(keep=False)
    return names.where(~duplicated, names + " (" + repeat.astype(str) + ")")
