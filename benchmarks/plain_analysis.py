"""The segmentation analysis as one plain pandas script, the way a notebook does it.

This is the baseline that benchmarks/bench.py times the pipeline against, so it deliberately
does the same analysis without any of the pipeline's machinery (no validation, no caching, no
orchestration, no type normalisation): read, clean, aggregate, rank-normalise, score k, cluster,
plot, list best sellers, write the labels.

    python benchmarks/plain_analysis.py INPUT OUTDIR

INPUT is the UCI "Online Retail" export as .xlsx (read with pandas' default engine, openpyxl)
or .parquet.
"""

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.metrics import silhouette_score  # noqa: E402

# The pipeline's k-means settings (tasks/select_k.py), so both compute the same segments.
N_INIT = 10
RANDOM_STATE = 42
K = 4
FEATURES = ["TotalSales", "OrderCount", "AvgOrderValue"]

started = time.perf_counter()
input_path, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
out_dir.mkdir(parents=True, exist_ok=True)

# --- Read -------------------------------------------------------------------------------------
if input_path.suffix.lower() == ".parquet":
    df = pd.read_parquet(input_path)
else:
    # No engine argument: what a notebook gets, pandas' default (openpyxl in pandas 3.1).
    df = pd.read_excel(input_path, sheet_name="Online Retail")
print(f"read {len(df):,} rows in {time.perf_counter() - started:.1f} s")

# --- Clean --------------------------------------------------------------------------------------
df = df.loc[df["Quantity"] > 0]
df = df[pd.notnull(df["CustomerID"])]
df = df.loc[df["InvoiceDate"] < "2011-12-01"]
df["Sales"] = df["Quantity"] * df["UnitPrice"]
print(f"{len(df):,} invoice lines after cleaning")

# --- Per-customer features ----------------------------------------------------------------------
customer_df = df.groupby("CustomerID").agg(
    TotalSales=("Sales", "sum"),
    OrderCount=("InvoiceNo", "nunique"),
)
customer_df["AvgOrderValue"] = customer_df["TotalSales"] / customer_df["OrderCount"]
print(f"{len(customer_df):,} customers")

# --- Rank-based z-scores (sample standard deviation) -----------------------------------------
rank_df = customer_df.rank(method="first")
normalized_df = (rank_df - rank_df.mean()) / rank_df.std()
points = normalized_df[FEATURES]

# --- How many segments: silhouette for k = 4..8 ---------------------------------------------
for n_cluster in range(4, 9):
    kmeans = KMeans(n_clusters=n_cluster, n_init=N_INIT, random_state=RANDOM_STATE).fit(points)
    silhouette_avg = silhouette_score(points, kmeans.labels_)
    print(f"Silhouette Score for {n_cluster} Clusters: {silhouette_avg:.4f}")

# --- ... and the elbow: SSE for k = 2..10 --------------------------------------------------------
sse = {}
for n_cluster in range(2, 11):
    kmeans = KMeans(n_clusters=n_cluster, n_init=N_INIT, random_state=RANDOM_STATE).fit(points)
    sse[n_cluster] = kmeans.inertia_

plt.figure(figsize=(8, 5.5))
plt.plot(list(sse.keys()), list(sse.values()), marker="o")
plt.title("Elbow method: sum of squared errors by number of clusters")
plt.xlabel("Number of clusters (k)")
plt.ylabel("Sum of squared errors")
plt.grid(alpha=0.3)
plt.savefig(out_dir / "elbow.png")
plt.close()

# --- Four segments -------------------------------------------------------------------------
kmeans = KMeans(n_clusters=K, n_init=N_INIT, random_state=RANDOM_STATE).fit(points)
four_cluster_df = points.copy(deep=True)
four_cluster_df["Cluster"] = kmeans.labels_

print("Cluster centers (normalized TotalSales, OrderCount, AvgOrderValue):")
print(pd.DataFrame(kmeans.cluster_centers_, columns=FEATURES))
print(four_cluster_df.groupby("Cluster").size().rename("customers"))

colors = ["blue", "red", "orange", "green"]
for name, (x, y) in {
    "ordercount_vs_totalsales": ("OrderCount", "TotalSales"),
    "ordercount_vs_avgordervalue": ("OrderCount", "AvgOrderValue"),
    "totalsales_vs_avgordervalue": ("TotalSales", "AvgOrderValue"),
}.items():
    plt.figure(figsize=(8, 5.5))
    for cluster in range(K):
        members = four_cluster_df.loc[four_cluster_df["Cluster"] == cluster]
        plt.scatter(members[x], members[y], c=colors[cluster], s=8, alpha=0.6, label=f"Cluster {cluster}")
    plt.title(f"{y} vs. {x} Clusters")
    plt.xlabel(x)
    plt.ylabel(y)
    plt.legend()
    plt.grid()
    plt.savefig(out_dir / f"{name}.png")
    plt.close()

# --- Best sellers per segment: top 10 items by number of distinct orders ---------------------
for cluster in range(K):
    members = four_cluster_df.index[four_cluster_df["Cluster"] == cluster]
    orders = df.loc[df["CustomerID"].isin(members)].groupby("Description")["InvoiceNo"].nunique()
    print(f"\nCluster {cluster}: best-selling items (distinct orders)")
    print(orders.nlargest(10).to_string())

# --- Labels ------------------------------------------------------------------------------------
labels = customer_df.join(normalized_df.add_suffix("_norm")).join(four_cluster_df[["Cluster"]]).reset_index()
labels.to_parquet(out_dir / "labels.parquet", index=False)
print(f"\nwrote {len(labels):,} labels to {out_dir / 'labels.parquet'} in {time.perf_counter() - started:.1f} s")
