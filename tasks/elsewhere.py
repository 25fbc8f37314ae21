"""Stages computed in the worker process, so that they use the other core (see tasks/helpers.py).

Threads cannot run two Python-heavy stages at once (the GIL); the market basket rules (mlxtend's
FP-growth is pure Python) would otherwise hold the run's one interpreter while the segmentation
goes on. The flow hands such a stage's references to the worker and waits on its socket. Without
the worker, the stage runs in this process.
"""

from __future__ import annotations

from collections.abc import Sequence

from customer_segments.tasks import helpers
from customer_segments.tasks.manifest import RunContext, StageResult


def run(stage_name: str, context: RunContext, upstream: Sequence[StageResult]) -> StageResult:
    worker = helpers.channel("work")
    if worker is not None:
        return worker.call("stage", stage_name, context, list(upstream))
    return _run_stage(stage_name, context, upstream)


def _run_stage(stage_name: str, context: RunContext, upstream: Sequence[StageResult]) -> StageResult:
    from customer_segments.tasks.runner import run_stage
    from customer_segments.tasks.stages import BY_NAME

    return run_stage(BY_NAME[stage_name], context, upstream)


def warm_up() -> None:
    """What the stages computed here import, before the first one arrives."""
    import mlxtend.frequent_patterns  # noqa: F401
    import sklearn.linear_model  # noqa: F401

    from customer_segments.tasks import stages  # noqa: F401


HANDLERS = {"stage": _run_stage}
