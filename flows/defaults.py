"""Defaults of running the pipeline, in one place: the CLI, the flow and the deployment read them.

Free of heavy imports: the command line reads them before Prefect is loaded.
"""

from customer_segments.tasks.defaults import (
    BASKET_MAX_LEN,
    BASKET_MIN_BASKETS,
    BASKET_MIN_LIFT,
    BASKET_MIN_SUPPORT,
    CHAID_MAX_DEPTH,
    CHAID_MIN_CHILD,
    CHAID_MIN_PARENT,
    CHAID_TARGET,
    HORIZON,
    K_MAX,
    K_MIN,
    METHODS,
)

FLOW_NAME = "customer-segmentation"
BACKFILL_FLOW_NAME = "customer-segmentation-backfill"
# Where exports land month after month, and where run folders go (relative to the working folder).
INPUT_PATH = "data/incoming"
ARTIFACTS = "artifacts"

# Where the line-level stages run: "pandas" in this process (and its helpers), or "dask" on a
# dask.distributed cluster (a LocalCluster of DASK_WORKERS processes unless --dask-address names one).
ENGINE = "pandas"
ENGINES = ("pandas", "dask")
DASK_WORKERS = 2
# Each local worker spills to disk past part of this and pauses near it, so that inputs larger
# than memory stream through (two workers: 8 GiB in all, beside the flow's own process).
DASK_WORKER_MEMORY = "4GiB"

# The monthly deployment: `segment serve` and `segment deploy` register it under this name.
DEPLOYMENT_NAME = "monthly-segmentation"
DEPLOYMENT_DESCRIPTION = "Monthly customer re-segmentation of the landing folder's invoice exports."
DEPLOYMENT_TAGS = ("segmentation", "monthly")
CRON = "0 6 1 * *"  # 06:00 on the first day of every month
TIMEZONE = "UTC"
# The as-of value a scheduled run passes: the month of the run's scheduled start.
SCHEDULED = "scheduled"

__all__ = ["ARTIFACTS", "BACKFILL_FLOW_NAME", "DASK_WORKER_MEMORY", "DASK_WORKERS", "ENGINE", "ENGINES", "BASKET_MAX_LEN", "BASKET_MIN_BASKETS", "BASKET_MIN_LIFT",
           "BASKET_MIN_SUPPORT", "CHAID_MAX_DEPTH", "CHAID_MIN_CHILD", "CHAID_MIN_PARENT", "CHAID_TARGET", "CRON",
           "DEPLOYMENT_DESCRIPTION", "DEPLOYMENT_NAME", "DEPLOYMENT_TAGS", "FLOW_NAME", "HORIZON", "INPUT_PATH",
           "K_MAX", "K_MIN", "METHODS", "SCHEDULED", "TIMEZONE"]
