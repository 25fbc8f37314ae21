"""The stage catalogue: every stage of the pipeline, declared once, and every run parameter.

One entry per stage says which datasets it reads and writes, its pure transform (and its dask
twin), its parameters (type, default, bounds or choices, help), whether a user can switch it
off, where it runs, its figures and its report section. Everything else is derived from here:

- the flow walks the stages in the order their datasets allow (flows/pipeline.py), starting each
  one as soon as its inputs exist;
- the run-parameters model, the flow's parameters and the options of `segment run`, `backfill`,
  `serve` and `deploy` (tasks/runtime/parameters.py, flows/options.py);
- the manifest's parameters, each stage's cache key and the backfill's reuse check;
- the report's sections and figures, and the lists the tests check against.

Stage names are used as they are in the manifest, the Prefect task names and on the command
line; dataset names are the file names in the run folder and the names of their quality suites
(expectations/<dataset>.json). Stages are listed in the order a reader meets their results (the
report's order); the flow runs them in the order their inputs allow.

Adding a stage: its transform (tasks/), its quality suite per output (expectations/), one entry
here, and a report section if people read it (flows/report/ and flows/templates/).
"""

from __future__ import annotations

from customer_segments.tasks.inputs import readers
from customer_segments.tasks.methods import basket, chaid, clv, customers, products, propensity, rfm
from customer_segments.tasks.runtime.stage import FigureSpec, Param, PreviousMonth, Stage
from customer_segments.tasks.inputs import columns as column_names
from customer_segments.tasks.inputs.columns import PRODUCT_COLUMNS as PRODUCTS
from customer_segments.tasks.segmentation import (
    assign, best_sellers, cleaning, cluster, features, migration, normalize, orders, plots, profile, select_k,
    stability,
)

# --- parameters of the run as a whole ------------------------------------------------------------

AS_OF = Param("as_of", str | None, None,
              "Month to segment up to (YYYY-MM); invoices before its first day are used. "
              "Default: the newest invoice's month.", metavar="YYYY-MM")
ARTIFACTS = Param("artifacts", str, "artifacts", "Folder holding the run folders.", changes_results=False,
                  metavar="DIR", path=True)
ENGINE = Param("engine", str, "pandas",
               "Where the line-level stages run: pandas (this machine) or dask (a dask.distributed cluster).",
               choices=("pandas", "dask"))
EXPORT_TO = Param("export_to", str | None, None,
                  "After the run, export its customer table to this .csv or .parquet file or PostgreSQL table "
                  "(postgresql://USER@HOST/DB?table=SCHEMA.TABLE); an export that fails leaves the run complete.",
                  changes_results=False, metavar="TARGET")
THREADS = Param("threads", int | None, None,
                 "Threads each stage's compiled steps (k-means, BLAS, Arrow) may use. Stages already run side by "
                 "side, one per core; default: 1 on a machine of up to 4 cores (measured fastest on 2), else all.",
                 ge=1, changes_results=False, metavar="N")
RUN_PARAMS = (AS_OF, ARTIFACTS, ENGINE, EXPORT_TO, THREADS)

# Facts of a run the runtime provides (not set by users); stages name those they read in `uses`.
RUN_FACTS = {
    "input_sha256": "the sha256 of the input (of a folder's list of files and their hashes)",
    "cutoff": "the first day of the as-of month: invoices before it are used",
    "service_codes": "the editable list of non-product codes (data/reference/service_codes.csv)",
    "rfm_segments": "the editable RFM segment table (data/reference/rfm_segments.csv)",
}
# The editable reference tables, read once per run and handed to the stages as run facts: editing
# one recomputes the stages that use it, and nothing else.
REFERENCE_TABLES = {"service_codes": products.load_service_codes, "rfm_segments": rfm.load_rfm_segments}

# What a run takes from last month's run of its series (none in a series' first month).
PREVIOUS = PreviousMonth("previous_run", {"previous_labels": ("cluster", "cluster_labels"),
                                          "previous_lineage": ("cluster", "segment_lineage")})

# --- the stages ----------------------------------------------------------------------------------

INGEST = Stage(
    "ingest", readers.read_invoices, outputs=("raw_invoices",),
    params=(
        Param("input_path", str, "data/incoming",
              "Invoice export: .xlsx, .csv, .parquet or a folder of them.", option="--input", key_as="input_sha256",
              metavar="PATH", path=True),
        Param("encoding", str | None, None,
              "Text encoding of CSV input, e.g. cp1252 (default UTF-8, with or without BOM)."),
        Param("date_format", str | None, None,
              "strftime format of CSV dates when they are ambiguous, e.g. '%d/%m/%Y %H:%M'."),
        Param("columns", dict[str, str] | None, None,
              "Which column of the export is which: CANONICAL=SOURCE pairs, e.g. "
              "'CustomerID=customer_id,InvoiceDate=created_at,Sales=total'. Names: " + ", ".join(column_names.NAMES)
              + ".", metavar="CANONICAL=SOURCE,...", parse=column_names.parse_mapping),
    ),
    metrics=readers.ingest_metrics, shared=True, retries=2,
    dask_transform=readers.read_invoices_dask, dask_metrics=readers.ingest_metrics_dask,
)
CLEAN = Stage(
    "clean", cleaning.clean_invoices, inputs=("raw_invoices",), outputs=("clean_invoices",),
    params=(Param("window", int | None, None,
                  "Trailing window: features from the invoices of the N months before the cutoff. "
                  "Default: all history before the cutoff.", ge=1, series=True, metavar="N"),),
    uses=("cutoff",), metrics=cleaning.clean_metrics,
    dask_transform=cleaning.clean_invoices_dask, dask_metrics=cleaning.clean_metrics_dask,
)
# One row per order: every per-customer stage reads it instead of the lines.
ORDERS = Stage(
    "orders", orders.orders, inputs=("clean_invoices",), outputs=("orders",), metrics=orders.order_metrics,
    dask_transform=orders.orders_dask,
)
FEATURES = Stage(
    "features", features.customer_features, inputs=("orders",), outputs=("customer_features",),
    metrics=features.feature_metrics,
)
NORMALIZE = Stage(
    "normalize", normalize.normalize_features, inputs=("customer_features",), outputs=("normalized_features",),
)
# previous_labels and previous_lineage are last month's cluster_labels and segment_lineage.
CLUSTER = Stage(
    "cluster", cluster.cluster_labels,
    inputs=("customer_features", "normalized_features", "k_selection", "previous_labels", "previous_lineage"),
    optional=("previous_labels", "previous_lineage"), outputs=("cluster_labels", "segment_lineage"),
    metrics=cluster.cluster_metrics, report="segments",
)
SELECT_K = Stage(
    "select_k", select_k.k_selection, inputs=("normalized_features",), outputs=("k_selection",),
    params=(
        Param("k_min", int, 4, "Smallest k scored by silhouette.", ge=2, series=True),
        Param("k_max", int, 8, "Largest k scored by silhouette.", ge="k_min", series=True),
        Param("k", int | None, None, "Number of segments; default: best silhouette.", ge=2, series=True),
    ),
    metrics=select_k.k_metrics, report="choosing_k",
)
STABILITY = Stage(
    "stability", stability.segment_stability, inputs=("normalized_features", "cluster_labels", "k_selection"),
    outputs=("segment_stability",), metrics=stability.stability_metrics,
)
PROFILE = Stage(
    "profile", profile.segment_profiles, inputs=("cluster_labels", "segment_lineage", "segment_stability"),
    outputs=("segment_profiles",),
)
# The stages that need products are skipped when the export has none (no StockCode, Description).
BEST_SELLERS = Stage(
    "best_sellers", best_sellers.best_sellers, inputs=("clean_invoices", "cluster_labels"), outputs=("top_products",),
    uses=("service_codes",), metrics=best_sellers.best_seller_metrics, needs_columns=PRODUCTS,
    label="Best sellers", report="best_sellers",
    # In the worker beside the basket rules, which read the same lines: only that process holds
    # the clean lines once the orders exist, and the run's process keeps the per-customer methods.
    runs_in="worker",
    dask_transform=best_sellers.best_sellers_dask,
)

# The article's other methods; each can be switched off, and each draws its own chart.
BASKET = Stage(
    "basket", basket.basket_stage, inputs=("clean_invoices", "cluster_labels", "top_products"),
    outputs=("basket_rules", "recommendations", "customer_recommendations"),
    params=(
        Param("basket_min_support", float, 0.01, "Smallest share of baskets an itemset must be in.",
              option="--min-support", ge=0.0, le=1.0),
        Param("basket_min_baskets", int, 10, "Smallest number of baskets an itemset must be in.",
              option="--min-baskets", ge=1),
        Param("basket_min_lift", float, 1.0, "Smallest lift of a rule.", option="--min-lift", ge=0.0),
        Param("basket_max_len", int, 3, "Most items in a rule (antecedents and consequent).", option="--max-len",
              ge=2),
        Param("basket_sample_error", float, 0.1,
              "A segment with more baskets than needed is mined from a random sample, big enough to estimate "
              "the support of a rule at the threshold within this share of it (99% confidence); 0: every basket.",
              option="--sample-error", ge=0.0, le=1.0),
    ),
    uses=("service_codes",), metrics=basket.basket_metrics, needs_columns=PRODUCTS,
    figures=(FigureSpec("basket_top_rules", "Horizontal bar chart of the strongest product rules by lift, per segment",
                        "The strongest rules per segment, by lift"),),
    switch="Skip market basket rules and recommendations.", label="Basket rules and recommendations",
    runs_in="worker", report="basket", dask_transform=basket.basket_stage_dask,
)
RFM = Stage(
    "rfm", rfm.rfm_stage, inputs=("orders", "cluster_labels"), outputs=("rfm_scores", "rfm_profile"),
    uses=("cutoff", "rfm_segments"), metrics=rfm.rfm_metrics,
    figures=(FigureSpec("rfm_heatmap", "Heat map of customers by recency score (rows) and frequency score (columns), "
                                       "coloured by mean sales",
                        "Recency × frequency grid, coloured by mean sales per customer"),),
    switch="Skip RFM scores, their profile and heat map (the lifetime value still sums value per RFM segment).",
    label="RFM", report="rfm",
)
PROPENSITY = Stage(
    "propensity", propensity.propensity_stage, inputs=("orders",),
    outputs=("propensity_scores", "propensity_deciles", "propensity_coefficients"),
    params=(Param("horizon", int, 3, "Months ahead the propensity model (and CHAID's repurchase target) looks.",
                  ge=1),),
    uses=("cutoff",), metrics=propensity.propensity_metrics,
    figures=(FigureSpec("propensity_gains", "Cumulative gains curve and lift per decile of the repurchase model",
                        "Gains and lift of the repurchase model on the holdout"),),
    switch="Skip the repurchase propensity model.", label="Repurchase propensity",
    # In the worker: it needs only the orders, so it runs there while the run's process selects k
    # (beside it, in the run's threads, it slowed that by 1.5-2.5 s at ten million lines).
    runs_in="worker", report="propensity",
)
CHAID = Stage(
    "chaid", chaid.chaid_stage, inputs=("orders", "cluster_labels"), outputs=("chaid_segments", "chaid_assignment"),
    params=(
        Param("chaid_target", str, "repurchase",
              "What CHAID explains: repurchase (within --horizon) or segment (membership of the high-value segment).",
              choices=chaid.TARGETS),
        Param("chaid_max_depth", int, 3, "CHAID tree depth.", ge=1),
        Param("chaid_min_parent", int, 100, "Smallest node CHAID splits.", ge=2),
        Param("chaid_min_child", int, 50, "Smallest node a CHAID split may make.", ge=1),
    ),
    uses=("cutoff", "horizon"), metrics=chaid.chaid_metrics,
    switch="Skip the CHAID tree.", label="CHAID", report="propensity",
)
CLV = Stage(
    "clv", clv.customer_lifetime_value, inputs=("orders", "cluster_labels"),
    outputs=("customer_value", "segment_value", "clv_model", "clv_holdout"),
    params=(
        Param("clv_time_unit", str, "D", "Time unit of the lifetime-value models: days, weeks or months.",
              choices=tuple(clv.TIME_UNITS)),
        Param("clv_horizon", int, 12, "Months ahead the lifetime value counts (and the most its check holds out).",
              ge=1, le=120),
        Param("discount_rate", float, 0.10, "Annual discount rate of the lifetime value.", ge=0.0, le=1.0),
    ),
    # The RFM segments are scored from the orders here too (rfm.rfm_scores), so the models are
    # fitted beside the rfm stage, not after it: at ten million lines the run ended 3 s sooner.
    uses=("cutoff", "rfm_segments"), metrics=clv.clv_metrics,
    figures=(
        FigureSpec("clv_by_segment", "Horizontal bar chart of each segment's expected value over the horizon, with "
                                     "its 90 % interval", "Value at stake per segment over the horizon"),
        FigureSpec("clv_p_alive", "Heat map of the probability a customer is still active, by repeat purchases "
                                  "(rows) and the time of the last purchase (columns)",
                   "Probability a customer is still active, by frequency and recency"),
        FigureSpec("clv_holdout", "Bar chart of mean repeat purchases in the held-out months by repeat purchases "
                                  "in the calibration period, observed beside predicted",
                   "The model's check: predicted against observed purchases in the held-out months"),
    ),
    switch="Skip customer lifetime value and churn risk.", label="Customer lifetime value",
    report="value",
)
# What `segment assign` needs to place new customers in this run's segments without refitting.
SEGMENT_MODEL = Stage(
    "segment_model", assign.segment_model, inputs=("customer_features", "cluster_labels"), outputs=("segment_model",),
    metrics=assign.model_metrics,
)
# One row per customer with everything a campaign is chosen by: what `segment export` sends out.
CUSTOMERS = Stage(
    "customers", customers.customer_table,
    inputs=("cluster_labels", "previous_labels", "rfm_scores", "propensity_scores", "customer_value",
            "customer_recommendations"),
    optional=("previous_labels", "rfm_scores", "propensity_scores", "customer_value", "customer_recommendations"),
    outputs=("customers",), metrics=customers.customer_metrics,
)
MIGRATION = Stage(
    "migration", migration.migration, inputs=("cluster_labels", "previous_labels"), optional=("previous_labels",),
    outputs=("segment_migration", "movers"), metrics=migration.migration_metrics, report="migration",
)
PLOTS = Stage(
    "plots", plots.segment_plots, inputs=("k_selection", "cluster_labels", "segment_migration"),
    figures=(
        FigureSpec("ordercount_vs_totalsales", "Scatter plot of customers by order count (x) and total sales (y), "
                                               "coloured by segment", "Order count against total sales"),
        FigureSpec("ordercount_vs_avgordervalue", "Scatter plot of customers by order count (x) and average order "
                                                  "value (y), coloured by segment",
                   "Order count against average order value"),
        FigureSpec("totalsales_vs_avgordervalue", "Scatter plot of customers by total sales (x) and average order "
                                                  "value (y), coloured by segment",
                   "Total sales against average order value"),
        FigureSpec("elbow", "Line chart of the sum of squared errors for each number of segments, with the elbow "
                            "marked", "Elbow: how much tighter the segments get with each extra segment"),
        FigureSpec("silhouette", "Bar chart of the silhouette score for each candidate number of segments",
                   "Silhouette: how well separated the segments are (higher is better)"),
        FigureSpec("segment_migration", "Heat map of customers from last month's segments (rows) to this month's "
                                        "(columns)", "Where last month's customers are now"),
    ),
)

STAGES = (INGEST, CLEAN, ORDERS, FEATURES, NORMALIZE, CLUSTER, SELECT_K, STABILITY, PROFILE, BEST_SELLERS, PLOTS,
          BASKET, RFM, CLV, PROPENSITY, CHAID, MIGRATION, SEGMENT_MODEL, CUSTOMERS)
BY_NAME = {stage.name: stage for stage in STAGES}
SWITCHABLE = tuple(stage.name for stage in STAGES if stage.switchable)
# The run's parameters: the input first, then the run's own, then each stage's.
PARAMS = INGEST.params[:1] + RUN_PARAMS + tuple(param for stage in STAGES for param in stage.params)[1:]
FIGURES = tuple(figure for stage in STAGES for figure in stage.figures)
