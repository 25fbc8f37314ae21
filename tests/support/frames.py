"""Small hand-built datasets that more than one test module validates."""

from __future__ import annotations

import numpy as np
import pandas as pd


def k_selection_frame() -> pd.DataFrame:
    """A valid k_selection dataset: k = 3 chosen by both silhouette and elbow."""
    return pd.DataFrame(
        {
            "k": np.array([2, 3, 4], dtype="int64"),
            "sse": [10.0, 6.0, 5.0],
            "silhouette": [np.nan, 0.41, 0.35],
            "best_silhouette": [False, True, False],
            "elbow": [False, True, False],
            "chosen": [False, True, False],
        }
    )
