"""Normalize: rank-based z-scores, so that a few huge accounts do not dominate k-means."""

from __future__ import annotations

import pandas as pd

from customer_segments.tasks.segmentation.features import FEATURES


def normalize_features(features: pd.DataFrame) -> pd.DataFrame:
    """Each feature's rank (ties broken by row order, as the article does), centred and scaled.

    The sample standard deviation (ddof=1) matches the article; the values then lie within
    about +-1.73 whatever the input's skew.
    """
    ranks = features[list(FEATURES)].rank(method="first")
    normalized = (ranks - ranks.mean()) / ranks.std(ddof=1)
    normalized.insert(0, "CustomerID", features["CustomerID"])
    return normalized
