"""The `segment` command's entry point.

For the commands that run flows, the helper processes (tasks/runtime/worker_processes.py) start
first thing: their imports (Great Expectations in the validator, scikit-learn and mlxtend in the
worker) then overlap this process's own start-up (the stage catalogue, Typer, Prefect) instead of
following it.
"""

from __future__ import annotations

import sys

FLOW_COMMANDS = ("run", "resume", "backfill")


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] in FLOW_COMMANDS and not {"--help", "-h"} & set(args):
        from customer_segments.tasks.runtime import worker_processes

        # On the dask engine the stages run on the cluster's workers: only the validator is of use.
        worker_processes.start(worker="dask" not in args)
    from customer_segments.flows.cli import app

    app()


if __name__ == "__main__":  # pragma: no cover
    main()
