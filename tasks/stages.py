"""The pipeline's catalogue: every stage, the datasets it reads and writes, and its parameters.

Stage names are used as they are in the manifest, the Prefect task names and on the command line;
dataset names are the file names in the run folder and the names of their quality suites.
"""

from __future__ import annotations

from customer_segments.tasks.clean import clean_invoices, clean_metrics
from customer_segments.tasks.cluster import cluster_labels, cluster_metrics
from customer_segments.tasks.features import customer_features, feature_metrics
from customer_segments.tasks.ingest import ingest_metrics, read_invoices
from customer_segments.tasks.migration import migration, migration_metrics
from customer_segments.tasks.normalize import normalize_features
from customer_segments.tasks.plots import segment_plots
from customer_segments.tasks.profile import profile, profile_metrics
from customer_segments.tasks.runner import Stage
from customer_segments.tasks.select_k import k_metrics, k_selection
from customer_segments.tasks.stability import segment_stability, stability_metrics

INGEST = Stage(
    "ingest", read_invoices, outputs=("raw_invoices",),
    params=("input_path", "encoding"), key_params=("input_sha256", "encoding"), shared=True, retries=2,
    metrics=ingest_metrics,
)
CLEAN = Stage(
    "clean", clean_invoices, inputs=("raw_invoices",), outputs=("clean_invoices",),
    params=("cutoff", "window"), metrics=clean_metrics,
)
FEATURES = Stage(
    "features", customer_features, inputs=("clean_invoices",), outputs=("customer_features",),
    metrics=feature_metrics,
)
NORMALIZE = Stage(
    "normalize", normalize_features, inputs=("customer_features",), outputs=("normalized_features",),
)
SELECT_K = Stage(
    "select_k", k_selection, inputs=("normalized_features",), outputs=("k_selection",),
    params=("k_min", "k_max", "k"), metrics=k_metrics,
)
# previous_labels and previous_lineage are last month's cluster_labels and segment_lineage: the
# run the flow's previous_run task found (none in a series' first month).
CLUSTER = Stage(
    "cluster", cluster_labels,
    inputs=("customer_features", "normalized_features", "k_selection", "previous_labels", "previous_lineage"),
    optional=("previous_labels", "previous_lineage"), outputs=("cluster_labels", "segment_lineage"),
    metrics=cluster_metrics,
)
STABILITY = Stage(
    "stability", segment_stability, inputs=("normalized_features", "cluster_labels", "k_selection"),
    outputs=("segment_stability",), metrics=stability_metrics,
)
PROFILE = Stage(
    "profile", profile, inputs=("cluster_labels", "clean_invoices", "segment_lineage", "segment_stability"),
    outputs=("segment_profiles", "top_products"), params=("service_codes",), metrics=profile_metrics,
)
MIGRATION = Stage(
    "migration", migration, inputs=("cluster_labels", "previous_labels"), optional=("previous_labels",),
    outputs=("segment_migration", "movers"), metrics=migration_metrics,
)
PLOTS = Stage("plots", segment_plots, inputs=("k_selection", "cluster_labels", "segment_migration"), figures=True)

STAGES = (INGEST, CLEAN, FEATURES, NORMALIZE, SELECT_K, CLUSTER, STABILITY, PROFILE, MIGRATION, PLOTS)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
BY_NAME = {stage.name: stage for stage in STAGES}
