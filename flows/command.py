"""The `segment` command's entry point.

For the commands that run flows, the helper processes (tasks/runtime/worker_processes.py) start
first thing: their imports (Great Expectations in the validator, scikit-learn and mlxtend in the
worker) then overlap this process's own start-up (the stage catalogue, Typer, Prefect) instead of
following it.

Once a command has finished (its files written and synced, its output printed, its exit
handlers run: Prefect's logs and events delivered, the helpers let go), the process ends without
tearing the interpreter down. Freeing every module and object of pandas, scikit-learn, Prefect
and Great Expectations one by one took 0.7 s of every run, after all of its work was done.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading

FLOW_COMMANDS = ("run", "resume", "backfill")


def main() -> None:
    from customer_segments.tasks.runtime.storage import release_memory_at_once

    release_memory_at_once()  # before pyarrow loads, here and in the helpers
    args = sys.argv[1:]
    if args and args[0] in FLOW_COMMANDS and not {"--help", "-h"} & set(args):
        from customer_segments.tasks.runtime import warm_start, worker_processes

        code = warm_start.delegate(args)
        if code is not None:  # run by a process the warm starter forked, on this terminal
            os._exit(code)

        # Start-up imports objects that live as long as the process; the collector's full passes
        # over them took 0.7 s of a run's start. It is turned back on, with them frozen, once the
        # flow has imported the stages' libraries (storage.freeze_imported).
        gc.disable()

        # On the dask engine the stages run on the cluster's workers: only the validator is of use.
        worker_processes.start(worker="dask" not in args)
    from customer_segments.flows.cli import app

    try:
        app()
    except SystemExit as done:
        _end(done.code)


def _end(code: int | str | None) -> None:
    """Exit now, as the interpreter would after its shutdown: threads joined, exit handlers run,
    output flushed; then without freeing what no one will use again."""
    if isinstance(code, str):  # sys.exit("message") prints it and exits with 1
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # waits for non-daemon threads, as the interpreter's own exit does
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`segment ... | head`): nothing more to say
            pass
    if (warm_start := sys.modules.get("customer_segments.tasks.runtime.warm_start")) is not None:
        warm_start.report_exit(code or 0)  # to the command that handed this one over, if any
    os._exit(code or 0)


if __name__ == "__main__":  # pragma: no cover
    main()
