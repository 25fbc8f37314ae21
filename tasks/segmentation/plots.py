"""Plots: the k-selection curves and the article's three segment scatter plots.

Pure: every function returns matplotlib Figures; the stage runner writes them as PNG.
"""

from __future__ import annotations

import pandas as pd


# Scatter plots of millions of points are unreadable and slow; a fixed sample shows the same shapes.
SCATTER_SAMPLE = 20_000
SCATTERS = {
    "ordercount_vs_totalsales": ("OrderCount", "TotalSales"),
    "ordercount_vs_avgordervalue": ("OrderCount", "AvgOrderValue"),
    "totalsales_vs_avgordervalue": ("TotalSales", "AvgOrderValue"),
}
LABELS = {"TotalSales": "Total sales", "OrderCount": "Order count", "AvgOrderValue": "Average order value"}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    # A bare Figure (not pyplot) keeps no global state between runs or threads.
    return Figure(figsize=(8, 5.5), dpi=100, layout="constrained")


def elbow_plot(k_selection: pd.DataFrame):
    fig = _figure()
    ax = fig.subplots()
    ax.plot(k_selection["k"], k_selection["sse"], marker="o", color="tab:blue")
    for flag, style, label in (("elbow", "tab:orange", "elbow"), ("chosen", "tab:red", "chosen k")):
        marked = k_selection[k_selection[flag]]
        ax.scatter(marked["k"], marked["sse"], s=160, facecolors="none", edgecolors=style, linewidths=2, label=label, zorder=3)
    ax.set_title("Elbow method: sum of squared errors by number of segments")
    ax.set_xlabel("Number of segments (k)")
    ax.set_ylabel("Sum of squared errors (normalized units)")
    ax.set_xticks(k_selection["k"])
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def silhouette_plot(k_selection: pd.DataFrame):
    scored = k_selection.dropna(subset=["silhouette"])
    fig = _figure()
    ax = fig.subplots()
    ax.bar(scored["k"], scored["silhouette"], color="tab:blue")
    best = scored[scored["best_silhouette"]]
    ax.bar(best["k"], best["silhouette"], color="tab:orange", label="best silhouette")
    for k, s in zip(scored["k"], scored["silhouette"]):
        ax.annotate(f"{s:.3f}", (k, s), ha="center", va="bottom")
    ax.set_title("Silhouette score by number of segments (higher is better)")
    ax.set_xlabel("Number of segments (k)")
    ax.set_ylabel("Mean silhouette coefficient")
    ax.set_xticks(scored["k"])
    ax.legend()
    return fig


def scatter_plot(labels: pd.DataFrame, x: str, y: str):
    points = labels if len(labels) <= SCATTER_SAMPLE else labels.sample(SCATTER_SAMPLE, random_state=0)
    fig = _figure()
    ax = fig.subplots()
    for (segment, name), group in points.groupby(["segment", "segment_name"], sort=True):
        ax.scatter(group[f"{x}_norm"], group[f"{y}_norm"], s=8, alpha=0.6, label=f"{segment}: {name}", color=f"C{segment % 10}")
    ax.set_title(f"Segments: {LABELS[y]} vs. {LABELS[x]}")
    ax.set_xlabel(f"{LABELS[x]} (rank, normalized)")
    ax.set_ylabel(f"{LABELS[y]} (rank, normalized)")
    ax.legend(title="Segment", loc="best", fontsize="small", markerscale=2)
    return fig


def migration_heatmap(migration: pd.DataFrame):
    """Customers from last month's segments (rows) to this month's (columns), with row shares."""
    import numpy as np

    matrix = migration.pivot_table(index="from_segment_id", columns="to_segment_id", values="customers",
                                   aggfunc="sum", fill_value=0)
    rows = sorted((r for r in matrix.index if r != "new"), key=_id_order) + (["new"] if "new" in matrix.index else [])
    cols = sorted((c for c in matrix.columns if c != "lapsed"), key=_id_order) + (
        ["lapsed"] if "lapsed" in matrix.columns else [])
    matrix = matrix.reindex(index=rows, columns=cols, fill_value=0)
    shares = matrix.div(matrix.sum(axis=1).replace(0, np.nan), axis=0).fillna(0.0)
    fig = _figure()
    ax = fig.subplots()
    image = ax.imshow(shares.to_numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            share = shares.iat[i, j]
            ax.text(j, i, f"{matrix.iat[i, j]:,}\n{share:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if share > 0.6 else "black")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("This month's segment")
    ax.set_ylabel("Last month's segment")
    ax.set_title("Where customers moved since last month (count and share of the row)")
    fig.colorbar(image, ax=ax, label="share of last month's segment")
    return fig


def _id_order(segment_id: str) -> tuple[int, str]:
    digits = "".join(ch for ch in segment_id if ch.isdigit())
    return (int(digits) if digits else 0, segment_id)


def segment_plots(k_selection: pd.DataFrame, labels: pd.DataFrame, migration: pd.DataFrame | None = None) -> dict:
    """The segmentation's plots, by file stem; the migration heatmap when there is a previous month.

    The other methods' charts are drawn by their own stages.
    """
    figures = {"elbow": elbow_plot(k_selection), "silhouette": silhouette_plot(k_selection)}
    for stem, (x, y) in SCATTERS.items():
        figures[stem] = scatter_plot(labels, x, y)
    if migration is not None and (migration["from_segment_id"] != "new").any():
        figures["segment_migration"] = migration_heatmap(migration)
    return figures
