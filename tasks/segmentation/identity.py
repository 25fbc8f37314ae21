"""Segment identities across months: which of this month's segments is which of last month's.

k-means numbers its clusters anew every month, and the value rank `segment` (0 = most valuable)
moves when segments change size. A `segment_id` (S1, S2, ...) is what persists: each month's
segments are matched to the previous month's by member overlap, and each segment's change is
classified with MONIC's transitions (Spiliopoulou et al., 2006).

For a previous segment X and a current segment Y, overlap(X, Y) = |X ∩ Y| / |X|: the share of X's
customers now in Y (customers who lapsed count against it). Then, for each current segment Y:

- **survived**: one previous segment X has overlap(X, Y) >= 0.7, and no other one >= 0.3;
- **absorbed**: two or more previous segments each have overlap >= 0.3 with Y;
- **split**: Y is one of two or more parts of a single X (each part >= 0.3, together >= 0.7);
- **emerged**: none of the above (no previous segment continues in Y);
- **first**: there is no previous month to compare with.

A previous segment that continues in no current one **disappeared**. Ids pass along an optimal
one-to-one assignment (`scipy.optimize.linear_sum_assignment`) of previous to current segments
maximising the Jaccard index of their customer sets, with the distance between their centers
breaking ties: Y inherits the id of its assigned X when X is among Y's sources above. A segment
that inherits no id gets a new one, S<n+1>, never reused: an emerged segment, or the second part
of a split (which keeps "split" as its transition and names where it came from).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SURVIVAL = 0.7  # MONIC's survival threshold (tau_match)
PART = 0.3      # MONIC's split threshold (tau_split), used for absorption too

FIRST, SURVIVED, SPLIT, ABSORBED, EMERGED, DISAPPEARED = (
    "first", "survived", "split", "absorbed", "emerged", "disappeared")
CONTINUES = frozenset({SURVIVED, SPLIT, ABSORBED})
CENTER_COLUMNS = ("TotalSales_norm", "OrderCount_norm", "AvgOrderValue_norm")
LINEAGE_COLUMNS = ("segment_id", "segment", "segment_name", "transition", "came_from", "went_to",
                   "overlap", "jaccard", "issued_up_to")


def assign_ids(labels: pd.DataFrame, previous: pd.DataFrame | None = None,
               previous_lineage: pd.DataFrame | None = None) -> tuple[pd.Series, pd.DataFrame]:
    """The segment_id of each current segment, and the lineage table.

    `labels` and `previous` are cluster_labels (CustomerID, segment, segment_name, the *_norm
    centers' columns; `previous` with segment_id too). `previous_lineage` tells the highest id the
    series has issued, so that an id is never reused. Returns (ids indexed by segment, lineage).
    """
    segments = labels.drop_duplicates("segment").sort_values("segment")[["segment", "segment_name"]]
    k = len(segments)
    issued = int(previous_lineage["issued_up_to"].max()) if previous_lineage is not None and len(previous_lineage) else 0
    if previous is None or previous.empty:
        ids = pd.Series([f"S{issued + n}" for n in range(1, k + 1)], index=segments["segment"].to_numpy())
        lineage = segments.assign(segment_id=ids.to_numpy(), transition=FIRST, came_from="", went_to="",
                                  overlap=np.nan, jaccard=np.nan, issued_up_to=issued + k)
        return ids, _lineage(lineage)

    old_ids = np.sort(previous["segment_id"].unique())
    inter = intersections(previous, labels, old_ids, segments["segment"].to_numpy())
    old_sizes = previous["segment_id"].value_counts().reindex(old_ids).to_numpy()
    new_sizes = labels["segment"].value_counts().reindex(segments["segment"]).to_numpy()
    share = inter / old_sizes[:, None]                             # overlap(X, Y), rows X, columns Y
    jaccard = inter / (old_sizes[:, None] + new_sizes[None, :] - inter)

    new_transition, sources = transitions(share)
    # Optimal one-to-one assignment on Jaccard; the centers' distance (scaled far below any
    # difference in Jaccard) decides between equal overlaps, e.g. when there is none at all.
    distance = center_distances(previous, labels, old_ids, segments["segment"].to_numpy())
    cost = -jaccard + 1e-9 * distance / (distance.max() or 1.0)
    rows, cols = linear_sum_assignment(cost)

    inherited = {}
    for i, j in zip(rows, cols):
        if new_transition[j] in CONTINUES and i in sources[j]:
            inherited[j] = old_ids[i]
    ids = []
    for j in range(k):
        if j in inherited:
            ids.append(inherited[j])
        else:
            issued += 1
            ids.append(f"S{issued}")
    ids = pd.Series(ids, index=segments["segment"].to_numpy())

    current = segments.assign(
        segment_id=ids.to_numpy(),
        transition=new_transition,
        came_from=[", ".join(old_ids[sorted(sources[j])]) for j in range(k)],
        went_to="",
        overlap=[share[sorted(sources[j]), j].max() if sources[j] else np.nan for j in range(k)],
        jaccard=[jaccard[rows[list(cols).index(j)], j] if j in cols else np.nan for j in range(k)],
    )
    gone = [i for i in range(len(old_ids)) if old_ids[i] not in set(ids)]
    ended = pd.DataFrame({
        "segment_id": old_ids[gone],
        "segment": pd.array([pd.NA] * len(gone), dtype="Int64"),
        "segment_name": pd.array([None] * len(gone), dtype="str"),
        "transition": [_fate(share[i], new_transition) for i in gone],
        "came_from": "",
        "went_to": [", ".join(ids.to_numpy()[np.flatnonzero(share[i] >= PART)]) for i in gone],
        "overlap": [share[i].max() if share.shape[1] else 0.0 for i in gone],
        "jaccard": np.nan,
    })
    lineage = pd.concat([current.assign(segment=current["segment"].astype("Int64")), ended], ignore_index=True)
    return ids, _lineage(lineage.assign(issued_up_to=issued))


def transitions(share: np.ndarray) -> tuple[list[str], list[set[int]]]:
    """MONIC's transition of each current segment (columns of `share`) and its source rows."""
    strong = share >= PART
    parts = strong.sum(axis=1)                                   # current segments each X feeds
    split_from = (parts >= 2) & ((share * strong).sum(axis=1) >= SURVIVAL)
    names, sources = [], []
    for j in range(share.shape[1]):
        rows = set(np.flatnonzero(strong[:, j]).tolist())
        if len(rows) >= 2:
            name = ABSORBED
        elif len(rows) == 1:
            (i,) = rows
            name = SURVIVED if share[i, j] >= SURVIVAL else SPLIT if split_from[i] else EMERGED
        else:
            name = EMERGED
        names.append(name)
        sources.append(rows if name != EMERGED else set())
    return names, sources


def _fate(row: np.ndarray, new_transition: list[str]) -> str:
    """What became of a previous segment whose id does not go on."""
    targets = np.flatnonzero(row >= PART)
    if len(targets) == 0 or all(new_transition[j] == EMERGED for j in targets):
        return DISAPPEARED
    return ABSORBED if any(new_transition[j] == ABSORBED for j in targets) else SPLIT


def intersections(previous: pd.DataFrame, labels: pd.DataFrame, old_ids: np.ndarray, new_segments: np.ndarray) -> np.ndarray:
    """|X ∩ Y| for every previous segment X (rows) and current segment Y (columns)."""
    both = previous[["CustomerID", "segment_id"]].merge(labels[["CustomerID", "segment"]], on="CustomerID")
    table = pd.crosstab(both["segment_id"], both["segment"])
    return table.reindex(index=old_ids, columns=new_segments, fill_value=0).to_numpy(dtype="float64")


def center_distances(previous: pd.DataFrame, labels: pd.DataFrame, old_ids: np.ndarray, new_segments: np.ndarray) -> np.ndarray:
    columns = [c for c in CENTER_COLUMNS if c in previous.columns and c in labels.columns]
    if not columns:
        return np.zeros((len(old_ids), len(new_segments)))
    old = previous.groupby("segment_id")[columns].mean().reindex(old_ids).to_numpy()
    new = labels.groupby("segment")[columns].mean().reindex(new_segments).to_numpy()
    return np.sqrt(((old[:, None, :] - new[None, :, :]) ** 2).sum(axis=2))


def linear_sum_assignment(cost: np.ndarray):
    from scipy.optimize import linear_sum_assignment as solve

    return solve(cost)


def _lineage(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame[list(LINEAGE_COLUMNS)].reset_index(drop=True)
    return out.astype({"segment_id": "str", "segment": "Int64", "segment_name": "str", "transition": "str",
                       "came_from": "str", "went_to": "str", "overlap": "float64", "jaccard": "float64",
                       "issued_up_to": "int64"})
