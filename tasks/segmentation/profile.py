"""Profile: what each segment looks like (its size, center, typical customer, lineage and stability)."""

from __future__ import annotations

import pandas as pd

from customer_segments.tasks.segmentation.cluster import NORMALIZED
from customer_segments.tasks.segmentation.features import FEATURES


def segment_profiles(labels: pd.DataFrame, lineage: pd.DataFrame | None = None,
                     stability: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per segment: size, share, center (normalized), mean and median raw features; by total sales.

    With the lineage and stability tables: the segment's id, its transition since last month and
    where it came from, and its bootstrap stability with Hennig's reading.
    """
    keys = ["segment", "segment_name"] + (["segment_id"] if "segment_id" in labels else [])
    grouped = labels.groupby(keys, sort=True)
    size = grouped.size().rename("size")
    centers = grouped[list(NORMALIZED)].mean()
    centers.columns = [f"center_{f}" for f in FEATURES]
    means = grouped[list(FEATURES)].mean().add_prefix("mean_")
    medians = grouped[list(FEATURES)].median().add_prefix("median_")
    total = grouped["TotalSales"].sum().rename("total_sales")
    profiles = pd.concat([size, centers, means, medians, total], axis=1).reset_index()
    profiles.insert(len(keys) + 1, "share", profiles["size"] / profiles["size"].sum())
    profiles["size"] = profiles["size"].astype("int64")
    if lineage is not None:
        current = lineage.dropna(subset=["segment"]).astype({"segment": "int64"})
        profiles = profiles.merge(current[["segment", "transition", "came_from"]], on="segment", how="left",
                                  validate="one_to_one")
    if stability is not None:
        profiles = profiles.merge(stability[["segment", "stability", "reading"]].rename(
            columns={"reading": "stability_reading"}), on="segment", how="left", validate="one_to_one")
    return profiles.sort_values("total_sales", ascending=False, kind="stable").reset_index(drop=True)
