"""RFM: recency, frequency and monetary scores per customer, and the named RFM segments.

Scores are quintiles of the rank, with ties broken the way the pipeline's rank normalization
breaks them (`rank(method="first")` over customers in CustomerID order), so a score never
depends on the order of the invoice lines. The segment names come from an editable table,
data/reference/rfm_segments.csv: one row per named segment with inclusive R and F score
ranges; the first row (in file order) that contains a customer's (R, F) wins, so narrow rules
are listed before broad ones. Every (R, F) pair in 1..5 x 1..5 must match some row.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from customer_segments.tasks.errors import InputError, ParameterError

STAGE = "rfm"
SCORES = ("R", "F", "M")
SEGMENT_COLUMNS = ("segment", "r_min", "r_max", "f_min", "f_max", "description")
BOUNDS = ("r_min", "r_max", "f_min", "f_max")
QUINTILES = 5


def load_rfm_segments(path: Path | str | None = None) -> pd.DataFrame:
    """The segment rules table: the packaged one, or the CSV at `path`. Validated on load."""
    if path is None:
        source = resources.files("customer_segments.data.reference").joinpath("rfm_segments.csv")
        with resources.as_file(source) as file:
            return _read_segments(Path(file))
    return _read_segments(Path(path))


def _read_segments(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, dtype={"segment": str, "description": str}, keep_default_na=False)
    missing = [c for c in SEGMENT_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(path, STAGE, missing[0], f"the RFM segment table needs the columns {', '.join(SEGMENT_COLUMNS)}")
    try:
        segment_grid(table)
    except ParameterError as error:
        raise InputError(path, STAGE, None, error.problem) from None
    return table[list(SEGMENT_COLUMNS)].astype({b: "int64" for b in BOUNDS})


def segment_grid(segments: pd.DataFrame) -> np.ndarray:
    """A 5x5 array of segment names: grid[R - 1, F - 1] is the first row whose ranges hold (R, F)."""
    bounds = segments[list(BOUNDS)]
    numeric = bounds.apply(pd.to_numeric, errors="coerce")
    if numeric.isna().any().any() or not numeric.isin(range(1, QUINTILES + 1)).all().all():
        raise ParameterError(STAGE, "the RFM segment table's r_min, r_max, f_min and f_max must be whole numbers 1 to 5")
    if (numeric["r_min"] > numeric["r_max"]).any() or (numeric["f_min"] > numeric["f_max"]).any():
        raise ParameterError(STAGE, "in the RFM segment table each r_min must be at most r_max and f_min at most f_max")
    scores = np.arange(1, QUINTILES + 1)
    r, f = np.meshgrid(scores, scores, indexing="ij")  # r[i, j] = i + 1, f[i, j] = j + 1
    r, f = r.ravel()[:, None], f.ravel()[:, None]
    # matches[p, s]: (R, F) pair p lies in segment row s; argmax finds the first True per pair.
    matches = (
        (numeric["r_min"].to_numpy() <= r) & (r <= numeric["r_max"].to_numpy())
        & (numeric["f_min"].to_numpy() <= f) & (f <= numeric["f_max"].to_numpy())
    )
    uncovered = ~matches.any(axis=1)
    if uncovered.any():
        pairs = ", ".join(f"R{a}F{b}" for a, b in zip(r[uncovered, 0], f[uncovered, 0]))
        raise ParameterError(STAGE, f"the RFM segment table leaves these score pairs without a segment: {pairs}")
    names = segments["segment"].to_numpy(dtype=object)
    return names[matches.argmax(axis=1)].reshape(QUINTILES, QUINTILES)


def quintile_score(values: pd.Series) -> pd.Series:
    """1..5: ceil(5 * rank / n), rank by value with ties in row (CustomerID) order; higher value, higher score."""
    ranks = values.rank(method="first").to_numpy()
    return pd.Series(np.ceil(QUINTILES * ranks / len(values)).astype("int64"), index=values.index)


def rfm_values(orders: pd.DataFrame, at: pd.Timestamp | str) -> pd.DataFrame:
    """Recency (whole days before `at`), frequency (orders) and monetary (their value) of every customer
    with orders before `at`, from the orders dataset (one row per order)."""
    at = pd.Timestamp(at)
    before = orders.loc[(orders["InvoiceDate"] < at).to_numpy()]
    grouped = before.groupby("CustomerID", sort=True, observed=True)
    values = grouped.agg(
        last=("InvoiceDate", "max"), frequency=("InvoiceNo", "size"), monetary=("value", "sum"),
    ).reset_index()
    # Timedelta.days floors: 2 days 23 hours is 2 whole days.
    values.insert(1, "recency_days", (at - values.pop("last")).dt.days.astype("int64"))
    values["frequency"] = values["frequency"].astype("int64")
    values["monetary"] = values["monetary"].astype("float64")
    return values


def rfm_scores(orders: pd.DataFrame, cutoff: pd.Timestamp | str, segments: pd.DataFrame) -> pd.DataFrame:
    """One row per customer (CustomerID order): recency_days, frequency, monetary, R, F, M, RFM, rfm_segment.

    Orders on or after the cutoff are ignored (a run's orders have none; the guard keeps recency
    non-negative for any input). R is 5 for the most recent fifth: it scores -recency_days, so
    among equal recencies the earlier CustomerID gets the lower rank, as for F and M.
    """
    grid = segment_grid(segments)
    rfm = rfm_values(orders, cutoff)
    rfm["R"] = quintile_score(-rfm["recency_days"])
    rfm["F"] = quintile_score(rfm["frequency"])
    rfm["M"] = quintile_score(rfm["monetary"])
    rfm["RFM"] = rfm["R"].astype(str) + rfm["F"].astype(str) + rfm["M"].astype(str)
    rfm["rfm_segment"] = pd.Series(grid[rfm["R"].to_numpy() - 1, rfm["F"].to_numpy() - 1], dtype=str, index=rfm.index)
    return rfm


def rfm_profile(rfm: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """RFM segment x k-means segment, long form: customers, share of the k-means segment, mean monetary.

    Ordered by k-means segment (0 = most valuable first), then by customers (most first), then
    by RFM segment name, so the order is fixed whatever the input order.
    """
    keys = ["segment", "segment_name", *(["segment_id"] if "segment_id" in labels.columns else [])]
    joined = rfm[["CustomerID", "rfm_segment", "monetary"]].merge(
        labels[["CustomerID", *keys]], on="CustomerID", how="inner", validate="one_to_one"
    )
    table = joined.groupby([*keys, "rfm_segment"], sort=True, observed=True).agg(
        customers=("CustomerID", "size"), mean_monetary=("monetary", "mean"),
    ).reset_index()
    table["customers"] = table["customers"].astype("int64")
    table["share_of_segment"] = table["customers"] / table.groupby("segment")["customers"].transform("sum")
    table = table.sort_values(["segment", "customers", "rfm_segment"], ascending=[True, False, True], kind="stable")
    return table[["rfm_segment", *keys, "customers", "share_of_segment", "mean_monetary"]].reset_index(drop=True)


def rfm_grid(rfm: pd.DataFrame) -> pd.DataFrame:
    """Per (R, F) cell: customers, mean monetary and the segment name (cells without customers absent)."""
    return rfm.groupby(["R", "F"], sort=True).agg(
        customers=("CustomerID", "size"), mean_monetary=("monetary", "mean"), rfm_segment=("rfm_segment", "first"),
    ).reset_index()


def rfm_heatmap(rfm: pd.DataFrame):
    """R (rows, 5 at the top) x F (columns): colour = mean monetary (log scale), count and mean written in."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure

    cells = rfm_grid(rfm)
    scores = list(range(QUINTILES, 0, -1))
    mean = cells.pivot(index="R", columns="F", values="mean_monetary").reindex(index=scores, columns=range(1, 6))
    positive = mean.to_numpy()[np.isfinite(mean.to_numpy())]
    # Mean spend per cell spans orders of magnitude; a log scale keeps the middle cells apart.
    norm = LogNorm() if len(positive) and (positive > 0).all() else Normalize()

    fig = Figure(figsize=(8, 6), dpi=100, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(mean.to_numpy()), cmap="viridis", norm=norm, aspect="auto")
    ax.set_facecolor("0.9")  # cells without customers
    for row in cells.itertuples(index=False):  # at most 25 cells
        y, x = scores.index(row.R), row.F - 1
        shade = image.norm(row.mean_monetary)
        ax.text(x, y, f"{row.rfm_segment}\n{row.customers:,} customers\nmean {row.mean_monetary:,.0f}",
                ha="center", va="center", fontsize=7, color="black" if shade > 0.5 else "white")
    ax.set_xticks(range(5), [str(f) for f in range(1, 6)])
    ax.set_yticks(range(5), [str(r) for r in scores])
    ax.set_xlabel("F score (frequency quintile; 5 = most orders)")
    ax.set_ylabel("R score (recency quintile; 5 = most recent)")
    ax.set_title("RFM grid: customers and mean monetary value per R x F cell")
    fig.colorbar(image, ax=ax, label="Mean monetary (total sales per customer)")
    return fig


def rfm_metrics(frames, params) -> dict:
    """Customers per RFM segment, largest first, for the manifest."""
    counts = frames["rfm_scores"]["rfm_segment"].value_counts(sort=False)
    counts = counts.sort_index().sort_values(ascending=False, kind="stable")
    return {"rfm_segments": {str(k): int(v) for k, v in counts.items()}}


def rfm_stage(orders: pd.DataFrame, labels: pd.DataFrame, *, cutoff, rfm_segments: list[dict]
              ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The rfm stage: scores and named segments per customer, their cross-tab with k-means, the heatmap."""
    scores = rfm_scores(orders, cutoff, pd.DataFrame(rfm_segments))
    return scores, rfm_profile(scores, labels), {"rfm_heatmap": rfm_heatmap(scores)}
