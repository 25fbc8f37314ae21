"""Stability: would the same segments come back on slightly different data?

Hennig's (2007) bootstrap Jaccard, as R's fpc::clusterboot computes it: draw a bootstrap resample
of the customers, refit k-means with the same k, and for each original segment take the best
Jaccard index between its resampled members and any new cluster; a segment's stability is the
mean over the resamples. Hennig's reading: >= 0.75 stable, 0.6 to 0.75 doubtful (a pattern, but
which customers belong to it is uncertain), < 0.6 unstable (do not act on it as it is).

Refits run on a fixed random sample of at most `sample` customers, so the cost does not grow with
the customer count; everything is drawn from one seed, so the result is deterministic.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from customer_segments.tasks.segmentation.features import FEATURES
from customer_segments.tasks.segmentation.select_k import chosen_k

RESAMPLES = 20
SAMPLE = 2_000
SEED = 42
# Fewer random starts than select_k's 10: each resample's fit only has to find the structure again.
N_INIT = 2
STABLE, DOUBTFUL = 0.75, 0.6


def segment_stability(normalized: pd.DataFrame, labels: pd.DataFrame, k_selection: pd.DataFrame,
                      resamples: int = RESAMPLES, sample: int = SAMPLE, seed: int = SEED) -> pd.DataFrame:
    """Per segment: bootstrap Jaccard stability and Hennig's reading of it."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    k = chosen_k(k_selection)
    points = normalized[list(FEATURES)].to_numpy()
    original = labels["segment"].to_numpy()
    rng = np.random.RandomState(seed)
    base = np.arange(len(points))
    if len(base) > sample:
        base = np.sort(rng.choice(len(points), sample, replace=False))
    best = np.full((resamples, k), np.nan)
    # One thread: on a few thousand points OpenMP's start-up and synchronisation cost more than the
    # fit itself (the UCI stage: about 0.1 s on one thread, 0.2-0.4 s on both cores of a 2-core
    # machine, over a second when another process holds the other core), and the result no longer
    # depends on the core count.
    with threadpool_limits(limits=1):
        for b in range(resamples):  # a fixed, small number of refits
            drawn = rng.choice(base, size=len(base), replace=True)
            fitted = KMeans(n_clusters=k, n_init=N_INIT, random_state=seed + b).fit(points[drawn]).labels_
            members, first = np.unique(drawn, return_index=True)   # each customer once, with its new label
            best[b] = best_jaccard(original[members], fitted[first], k)
    with np.errstate(invalid="ignore"):
        stability = np.nanmean(best, axis=0)
    segments = labels.drop_duplicates("segment").sort_values("segment")
    table = pd.DataFrame({
        "segment": segments["segment"].to_numpy(),
        "segment_name": segments["segment_name"].to_numpy(),
        "stability": stability[segments["segment"].to_numpy()],
        "reading": [reading(s) for s in stability[segments["segment"].to_numpy()]],
        "resamples": np.int64(resamples),
        "sample_size": np.int64(len(base)),
    })
    if "segment_id" in segments:
        table.insert(1, "segment_id", segments["segment_id"].to_numpy())
    return table


def best_jaccard(original: np.ndarray, fitted: np.ndarray, k: int) -> np.ndarray:
    """For each original segment 0..k-1, the best Jaccard index with any fitted cluster (NaN if absent)."""
    inter = np.zeros((k, fitted.max() + 1))
    np.add.at(inter, (original, fitted), 1)
    sizes_a = inter.sum(axis=1, keepdims=True)
    sizes_b = inter.sum(axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        jaccard = inter / (sizes_a + sizes_b - inter)
    out = jaccard.max(axis=1)
    out[sizes_a[:, 0] == 0] = np.nan  # a segment that no resampled customer belongs to says nothing
    return out


def reading(stability: float) -> str:
    if np.isnan(stability):
        return "unknown"
    return "stable" if stability >= STABLE else "doubtful" if stability >= DOUBTFUL else "unstable"


def stability_metrics(frames, params) -> dict:
    table = frames["segment_stability"]
    key = "segment_id" if "segment_id" in table else "segment"
    return {"stability": {str(s): round(float(v), 4) for s, v in zip(table[key], table["stability"])},
            "unstable_segments": int((table["reading"] == "unstable").sum())}
