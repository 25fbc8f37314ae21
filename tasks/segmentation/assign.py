"""Assigning customers to a run's segments without refitting: the segment model and its use.

A run's segments are k-means clusters of rank-normalised features: a customer's normalised value
depends on where their value ranks among the run's customers. The segment model keeps what
placing a new customer needs: each segment's center (the mean normalised features of its
customers) and the run's customers' feature values as the reference distributions.

A customer is placed on each feature by the rank they would have had among the run's customers,
ties broken as the run breaks them (`rank(method="first")` over customers in CustomerID order,
i.e. by value and then CustomerID): a customer of the run gets exactly their rank in the run,
and a new one falls half-way between their neighbours. The rank is normalised as the run's ranks
were, and the customer goes to the nearest center.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from customer_segments.tasks.encoding import is_in
from customer_segments.tasks.segmentation.cluster import NORMALIZED
from customer_segments.tasks.segmentation.features import FEATURES

CENTER, REFERENCE = "center", "reference"
COLUMNS = ("kind", "segment", "segment_id", "segment_name", "CustomerID", *FEATURES)


def segment_model(features: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The segment_model dataset: one `center` row per segment (normalised features) and one
    `reference` row per customer of the run (raw features), in one long table."""
    keys = ["segment", "segment_id", "segment_name"]
    centers = labels.groupby(keys, sort=True)[list(NORMALIZED)].mean().reset_index()
    centers.columns = [*keys, *FEATURES]
    centers.insert(0, "kind", CENTER)
    centers.insert(4, "CustomerID", pd.Series([pd.NA] * len(centers), dtype="str"))
    reference = features[["CustomerID", *FEATURES]].copy()
    reference.insert(0, "kind", REFERENCE)
    reference.insert(1, "segment", pd.array([pd.NA] * len(reference), dtype="Int64"))
    reference.insert(2, "segment_id", pd.Series([pd.NA] * len(reference), dtype="str"))
    reference.insert(3, "segment_name", pd.Series([pd.NA] * len(reference), dtype="str"))
    out = pd.concat([centers.astype({"segment": "Int64"}), reference], ignore_index=True)
    return out[list(COLUMNS)].astype({"kind": "str", "segment": "Int64", "segment_id": "str", "segment_name": "str",
                                      "CustomerID": "str", "TotalSales": "float64", "OrderCount": "float64",
                                      "AvgOrderValue": "float64"})


def model_metrics(frames, params) -> dict:
    model = frames["segment_model"]
    return {"model_centers": int((model["kind"] == CENTER).sum()),
            "model_reference_customers": int((model["kind"] == REFERENCE).sum())}


def normalized_like_the_run(features: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Each feature's rank among the run's customers (ties by CustomerID), normalised as the run's ranks.

    One sort of the run's and the new customers' (value, CustomerID) pairs per feature: a run
    customer's rank is the number of run customers up to and including them; a new customer's
    is half-way after the run customers before them.
    """
    n = len(reference)
    mean, std = (n + 1) / 2, np.sqrt(n * (n + 1) / 12)  # of the ranks 1..n (sample standard deviation)
    ref_ids = reference["CustomerID"].astype("str").to_numpy().astype("U")
    new_ids = features["CustomerID"].astype("str").to_numpy().astype("U")
    ids = np.concatenate([ref_ids, new_ids])
    # At an equal (value, id) the run's customer sorts first: the new one then counts it.
    side = np.concatenate([np.zeros(n, dtype=np.int8), np.ones(len(new_ids), dtype=np.int8)])
    out = pd.DataFrame({"CustomerID": features["CustomerID"].to_numpy()})
    in_run = np.zeros(len(new_ids), dtype=bool)
    for name in FEATURES:
        values = np.concatenate([reference[name].to_numpy(dtype="float64"), features[name].to_numpy(dtype="float64")])
        order = np.lexsort((side, ids, values))
        is_ref = side[order] == 0
        counted = np.cumsum(is_ref)                                   # run customers up to each position
        last_ref = np.maximum.accumulate(np.where(is_ref, np.arange(len(order)), -1))
        mine = ~is_ref
        previous = order[np.maximum(last_ref[mine], 0)]
        same = (last_ref[mine] >= 0) & (values[previous] == values[order[mine]]) & (ids[previous] == ids[order[mine]])
        rank = np.empty(len(new_ids))
        position = order[mine] - n                                    # back to the new customers' order
        rank[position] = np.where(same, counted[mine], counted[mine] + 0.5)
        in_run[position] |= same
        out[f"{name}_norm"] = (rank - mean) / std
    return out


def assign_segments(features: pd.DataFrame, model: pd.DataFrame) -> pd.DataFrame:
    """The customers' features, their values placed on the run's distributions, segment and distance."""
    reference = model[model["kind"] == REFERENCE]
    centers = model[model["kind"] == CENTER].sort_values("segment", kind="stable")
    placed = normalized_like_the_run(features, reference)
    points = placed[list(NORMALIZED)].to_numpy()
    middle = centers[list(FEATURES)].to_numpy(dtype="float64")
    distances = np.sqrt(((points[:, None, :] - middle[None, :, :]) ** 2).sum(axis=2))
    nearest = distances.argmin(axis=1)
    out = features[["CustomerID", *FEATURES]].reset_index(drop=True).copy()
    for name in NORMALIZED:
        out[name] = placed[name].to_numpy()
    out["segment"] = centers["segment"].to_numpy(dtype="int64")[nearest]
    out["segment_id"] = centers["segment_id"].to_numpy()[nearest]
    out["segment_name"] = centers["segment_name"].to_numpy()[nearest]
    out["distance"] = distances[np.arange(len(out)), nearest]
    out["in_run"] = is_in(features["CustomerID"], reference["CustomerID"].unique())
    return out.astype({"segment_id": "str", "segment_name": "str"})
