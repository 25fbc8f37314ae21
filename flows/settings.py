"""How the pipeline is run and scheduled: flow and deployment names, the schedule, the local dask
cluster. The run's own parameters (input, k range, the methods' settings, ...) are declared in the
stage catalogue (tasks/catalogue.py), not here.

Free of heavy imports: the command line reads these before Prefect is loaded.
"""

FLOW_NAME = "customer-segmentation"
BACKFILL_FLOW_NAME = "customer-segmentation-backfill"

# Without --dask-address the dask engine starts a LocalCluster of DASK_WORKERS processes. Each
# spills to disk past part of DASK_WORKER_MEMORY and pauses near it, so that inputs larger than
# memory stream through (two workers: 10 GiB in all, beside the flow's own process). At 100
# million lines a worker held up to about 3.3 GiB when the per-customer stages ran there (with 4
# GiB each, workers paused at 80% of it); since they compute in the flow's process, 2.9 GiB (the
# basket's encoded partitions).
DASK_WORKERS = 2
DASK_WORKER_MEMORY = "5GiB"
# How the local workers' C allocator (glibc) keeps memory, set before they start. Dask's default
# (MALLOC_TRIM_THRESHOLD_=65536) also pins glibc's mmap threshold at 128 KiB, so every array
# larger than that is mapped afresh and each of its pages faults in when first written: at 100
# million lines the busier worker took 39 million page faults and 94 s of kernel time. Arrays
# under 64 MiB (a column of a 3-million-line partition is 24 MB) now reuse freed memory instead.
# The whole run (with select_k's fits side by side): 315 s against 373 s with those alone, peak of
# all processes 9.24 GiB against 9.02 (one run each; BENCHMARKS.md). A user's own MALLOC_*
# variables win, as dask lets them.
DASK_WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "268435456"}

# The monthly deployment: `segment serve` and `segment deploy` register it under this name.
DEPLOYMENT_NAME = "monthly-segmentation"
DEPLOYMENT_DESCRIPTION = "Monthly customer re-segmentation of the landing folder's invoice exports."
DEPLOYMENT_TAGS = ("segmentation", "monthly")
CRON = "0 6 1 * *"  # 06:00 on the first day of every month
TIMEZONE = "UTC"
# The as-of value a scheduled run passes: the month of the run's scheduled start.
SCHEDULED = "scheduled"
