"""Select k: silhouette over k_min..k_max and the SSE elbow over 2..10, each k fitted once."""

from __future__ import annotations

import numpy as np
import pandas as pd

from customer_segments.tasks.cores import usable_cores
from customer_segments.tasks.errors import ParameterError
from customer_segments.tasks.segmentation.features import FEATURES

RANDOM_STATE = 42
N_INIT = 10
ELBOW_RANGE = range(2, 11)
# Silhouette is quadratic in the number of points; beyond this many customers it is estimated
# on one fixed random sample (the same customers for every k), which bounds its time and the
# distance matrix (5,000² float64 = 200 MB) and keeps it deterministic.
SILHOUETTE_SAMPLE = 5_000


def fit_kmeans(points: np.ndarray, k: int):
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=N_INIT, random_state=RANDOM_STATE).fit(points)


def fitted_labels(points: np.ndarray, ks: list[int]) -> dict[int, np.ndarray]:
    """Each k's k-means labels, the fits side by side on the cores the calling thread's OpenMP
    setting leaves free (two single-threaded fits on two cores).

    The fits are independent and scikit-learn's k-means leaves the interpreter lock while it
    iterates, so threads of this process run them at once. Each uses as many OpenMP threads as
    the caller (a new thread would otherwise start from OpenMP's default, all cores), so every
    fit computes exactly as it would alone: the labels do not depend on how many run at once.
    Largest k first: those take longest. At 1.33 million customers a fit takes seconds; running
    them one after another left a core idle whenever no other stage was computing.
    """
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info, threadpool_limits

    threads = min((lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "openmp"), default=1)
    side_by_side = max(1, min(len(ks), usable_cores() // max(threads, 1)))

    def fit(k: int) -> np.ndarray:
        with threadpool_limits(limits=threads, user_api="openmp"):
            return fit_kmeans(points, k).labels_

    if side_by_side == 1:
        return {k: fit(k) for k in ks}
    with ThreadPoolExecutor(max_workers=side_by_side, thread_name_prefix="k-means") as pool:
        fitted = dict(zip(sorted(ks, reverse=True), pool.map(fit, sorted(ks, reverse=True))))
    return {k: fitted[k] for k in ks}


def sum_of_squares(points: np.ndarray, labels: np.ndarray) -> float:
    """SSE around each cluster's mean, computed from the labels (independent of thread count)."""
    frame = pd.DataFrame(points)
    centers = frame.groupby(labels).transform("mean").to_numpy()
    return float(((points - centers) ** 2).sum())


def silhouettes(points: np.ndarray, labels_by_k: dict[int, np.ndarray]) -> dict[int, float]:
    """Mean silhouette per k, from one distance matrix shared by every k."""
    from sklearn.metrics import pairwise_distances, silhouette_score

    rows = np.arange(len(points))
    if len(points) > SILHOUETTE_SAMPLE:
        rows = np.sort(np.random.RandomState(RANDOM_STATE).choice(len(points), SILHOUETTE_SAMPLE, replace=False))
    distances = pairwise_distances(points[rows])
    return {
        k: float(silhouette_score(distances, labels[rows], metric="precomputed"))
        for k, labels in labels_by_k.items()
    }


def k_selection(normalized: pd.DataFrame, *, k_min: int, k_max: int, k: int | None) -> pd.DataFrame:
    """One row per k tried: sse, silhouette (k_min..k_max only), and which k is chosen / the elbow."""
    if not 2 <= k_min <= k_max:
        raise ParameterError("select_k", f"k-min ({k_min}) must be at least 2 and at most k-max ({k_max})")
    customers = len(normalized)
    if customers <= k_max:
        raise ParameterError(
            "select_k",
            f"only {customers:,} customers remain after cleaning; trying up to k-max={k_max} "
            "segments needs more customers than that",
        )
    if k is not None and not 2 <= k < customers:
        raise ParameterError("select_k", f"k={k} must be between 2 and the number of customers ({customers:,})")
    points = normalized[list(FEATURES)].to_numpy()
    ks = sorted({*ELBOW_RANGE, *range(k_min, k_max + 1)} | ({k} if k else set()))
    ks = [n for n in ks if n < customers]
    labels = fitted_labels(points, ks)
    scored = silhouettes(points, {n: labels[n] for n in ks if k_min <= n <= k_max})
    table = pd.DataFrame({
        "k": ks,
        "sse": [sum_of_squares(points, labels[n]) for n in ks],
        "silhouette": [scored.get(n, np.nan) for n in ks],
    })
    best = int(table.loc[table["silhouette"].idxmax(), "k"])  # idxmax takes the smaller k on ties
    table["best_silhouette"] = table["k"].eq(best)
    table["elbow"] = table["k"].eq(elbow_k(table))
    table["chosen"] = table["k"].eq(k if k is not None else best)
    return table


def elbow_k(table: pd.DataFrame) -> int | None:
    """The knee of SSE over the elbow range, found by kneed; None when the curve has none."""
    from kneed import KneeLocator

    curve = table[table["k"].isin(ELBOW_RANGE)]
    if len(curve) < 3:
        return None
    knee = KneeLocator(
        curve["k"].tolist(), curve["sse"].tolist(), curve="convex", direction="decreasing"
    ).knee
    return int(knee) if knee is not None else None


def chosen_k(table: pd.DataFrame) -> int:
    return int(table.loc[table["chosen"], "k"].iloc[0])


def k_metrics(frames, params) -> dict:
    """The chosen k and what the two methods said, for the manifest and the run summary."""
    table = frames["k_selection"]
    chosen = table[table["chosen"]].iloc[0]
    elbow = table.loc[table["elbow"], "k"]
    return {
        "k": chosen_k(table),
        "silhouette": None if pd.isna(chosen["silhouette"]) else round(float(chosen["silhouette"]), 6),
        "best_silhouette_k": int(table.loc[table["best_silhouette"], "k"].iloc[0]),
        "elbow_k": int(elbow.iloc[0]) if len(elbow) else None,
    }
