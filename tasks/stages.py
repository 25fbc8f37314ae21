"""The pipeline's catalogue: every stage, the datasets it reads and writes, and its parameters.

Stage names are used as they are in the manifest, the Prefect task names and on the command line;
dataset names are the file names in the run folder and the names of their quality suites.
"""

from __future__ import annotations

from customer_segments.tasks.basket import basket_metrics, basket_stage
from customer_segments.tasks.chaid import chaid_metrics, chaid_stage
from customer_segments.tasks import dask_engine
from customer_segments.tasks.clean import clean_invoices, clean_metrics
from customer_segments.tasks.cluster import cluster_labels, cluster_metrics
from customer_segments.tasks.features import customer_features, feature_metrics
from customer_segments.tasks.ingest import ingest_metrics, read_invoices
from customer_segments.tasks.migration import migration, migration_metrics
from customer_segments.tasks.normalize import normalize_features
from customer_segments.tasks.plots import segment_plots
from customer_segments.tasks.profile import profile, profile_metrics
from customer_segments.tasks.propensity import propensity_metrics, propensity_stage
from customer_segments.tasks.rfm import rfm_metrics, rfm_stage
from customer_segments.tasks.runner import Stage
from customer_segments.tasks.select_k import k_metrics, k_selection
from customer_segments.tasks.stability import segment_stability, stability_metrics

# The line-level stages have a dask version too (tasks/dask_engine.py); the engine is part of
# their keys, since the two write their outputs differently (a file, or a folder of parts).
INGEST = Stage(
    "ingest", read_invoices, outputs=("raw_invoices",),
    params=("input_path", "encoding", "date_format"), key_params=("input_sha256", "encoding", "date_format", "engine"),
    shared=True, retries=2, metrics=ingest_metrics,
    dask_transform=dask_engine.read_invoices, dask_metrics=dask_engine.ingest_metrics,
)
CLEAN = Stage(
    "clean", clean_invoices, inputs=("raw_invoices",), outputs=("clean_invoices",),
    params=("cutoff", "window"), key_params=("cutoff", "window", "engine"), metrics=clean_metrics,
    dask_transform=dask_engine.clean, dask_metrics=dask_engine.clean_metrics,
)
FEATURES = Stage(
    "features", customer_features, inputs=("clean_invoices",), outputs=("customer_features",),
    key_params=("engine",), metrics=feature_metrics, dask_transform=dask_engine.features,
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
    outputs=("segment_profiles", "top_products"), params=("service_codes",), key_params=("service_codes", "engine"),
    metrics=profile_metrics, dask_transform=dask_engine.profile, dask_metrics=dask_engine.profile_metrics,
)
MIGRATION = Stage(
    "migration", migration, inputs=("cluster_labels", "previous_labels"), optional=("previous_labels",),
    outputs=("segment_migration", "movers"), metrics=migration_metrics,
)

# The article's other methods; each can be switched off. Each draws its own chart.
BASKET = Stage(
    "basket", basket_stage, inputs=("clean_invoices", "cluster_labels"),
    outputs=("basket_rules", "recommendations"),
    params=("service_codes", "basket_min_support", "basket_min_baskets", "basket_min_lift", "basket_max_len"),
    metrics=basket_metrics, figures=True,
)
RFM = Stage(
    "rfm", rfm_stage, inputs=("clean_invoices", "cluster_labels"), outputs=("rfm_scores", "rfm_profile"),
    params=("cutoff", "rfm_segments"), metrics=rfm_metrics, figures=True,
)
PROPENSITY = Stage(
    "propensity", propensity_stage, inputs=("clean_invoices",),
    outputs=("propensity_scores", "propensity_deciles", "propensity_coefficients"),
    params=("cutoff", "horizon"), metrics=propensity_metrics, figures=True,
)
CHAID = Stage(
    "chaid", chaid_stage, inputs=("clean_invoices", "cluster_labels"), outputs=("chaid_segments", "chaid_assignment"),
    params=("cutoff", "horizon", "chaid_target", "chaid_max_depth", "chaid_min_parent", "chaid_min_child"),
    metrics=chaid_metrics,
)
PLOTS = Stage("plots", segment_plots, inputs=("k_selection", "cluster_labels", "segment_migration"), figures=True)

STAGES = (INGEST, CLEAN, FEATURES, NORMALIZE, SELECT_K, CLUSTER, STABILITY, PROFILE, MIGRATION,
          BASKET, RFM, PROPENSITY, CHAID, PLOTS)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
BY_NAME = {stage.name: stage for stage in STAGES}
