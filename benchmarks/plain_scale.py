"""The segmentation analysis as one plain, vectorized pandas script, for inputs of millions of lines.

The yardstick of the scale benchmark (benchmarks/scale.py): the same analysis as the pipeline's
segmentation, with none of its machinery (no validation, caching, orchestration or manifests),
written the way a careful analyst would for a large file: read the needed columns, clean, one
groupby per customer, rank z-scores, k-means for k = 2..10 (n_init 10), silhouette for k = 4..8 on
a fixed 5,000-customer sample (on all customers it is quadratic), the best k, best sellers per
segment, the elbow and scatter plots, labels as Parquet.

    python benchmarks/plain_scale.py INPUT OUTDIR      # INPUT: a .parquet file or a folder of them
"""

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.metrics import silhouette_score  # noqa: E402

FEATURES = ["TotalSales", "OrderCount", "AvgOrderValue"]
COLUMNS = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"]

started = time.perf_counter()
input_path, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
out_dir.mkdir(parents=True, exist_ok=True)
df = pd.read_parquet(input_path, columns=COLUMNS)
print(f"read {len(df):,} rows in {time.perf_counter() - started:.1f} s")

cutoff = df["InvoiceDate"].max().to_period("M").start_time
df = df[(df["Quantity"] > 0) & df["CustomerID"].notna() & (df["InvoiceDate"] < cutoff)]
df = df.assign(Sales=df["Quantity"] * df["UnitPrice"])

customers = df.groupby("CustomerID").agg(TotalSales=("Sales", "sum"), OrderCount=("InvoiceNo", "nunique"))
customers["AvgOrderValue"] = customers["TotalSales"] / customers["OrderCount"]
ranks = customers[FEATURES].rank(method="first")
normalized = (ranks - ranks.mean()) / ranks.std()
points = normalized.to_numpy()
print(f"{len(customers):,} customers")

sample = np.sort(np.random.RandomState(42).choice(len(points), min(5000, len(points)), replace=False))
sse, silhouettes, labels = {}, {}, {}
for k in range(2, 11):
    fitted = KMeans(n_clusters=k, n_init=10, random_state=42).fit(points)
    sse[k], labels[k] = fitted.inertia_, fitted.labels_
    if 4 <= k <= 8:
        silhouettes[k] = silhouette_score(points[sample], fitted.labels_[sample])
best = max(silhouettes, key=silhouettes.get)
print(f"best k = {best} (silhouette {silhouettes[best]:.4f})")
segment = labels[best]

plt.figure(figsize=(8, 5.5))
plt.plot(list(sse), list(sse.values()), marker="o")
plt.savefig(out_dir / "elbow.png")
plt.close()
shown = np.random.RandomState(0).choice(len(points), min(20000, len(points)), replace=False)
for x, y in (("OrderCount", "TotalSales"), ("OrderCount", "AvgOrderValue"), ("TotalSales", "AvgOrderValue")):
    plt.figure(figsize=(8, 5.5))
    plt.scatter(normalized[x].to_numpy()[shown], normalized[y].to_numpy()[shown], c=segment[shown], s=8, alpha=0.6)
    plt.savefig(out_dir / f"{x}_vs_{y}.png")
    plt.close()

lines = df[["CustomerID", "InvoiceNo", "StockCode"]].merge(
    pd.DataFrame({"CustomerID": customers.index, "segment": segment}), on="CustomerID")
best_sellers = (lines.groupby(["segment", "StockCode"])["InvoiceNo"].nunique().rename("orders").reset_index()
                .sort_values(["segment", "orders"], ascending=[True, False]).groupby("segment").head(10))
print(best_sellers.groupby("segment").size().to_string())

customers.join(normalized.add_suffix("_norm")).assign(segment=segment).reset_index().to_parquet(out_dir / "labels.parquet")
print(f"done in {time.perf_counter() - started:.1f} s")
