"""The pipeline's graph, derived from the catalogue's dataset names (as Kedro derives it from node
inputs and outputs): who produces each dataset, the order stages can run in, what lies downstream.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

from customer_segments.tasks.runtime.stage import PreviousMonth, Stage


class Graph:
    """The stages of a catalogue as a dependency graph over their datasets."""

    def __init__(self, stages: Sequence[Stage], previous: PreviousMonth):
        self.stages = tuple(stages)
        self.by_name = {s.name: s for s in self.stages}
        self.previous = previous
        self.producer: dict[str, str] = {d: previous.name for d in previous.outputs}
        for stage in self.stages:
            for dataset in stage.outputs:
                if dataset in self.producer:
                    raise ValueError(f"dataset {dataset} is produced by both {self.producer[dataset]} and {stage.name}")
                self.producer[dataset] = stage.name

    def problems(self) -> list[str]:
        """What makes the graph unrunnable: inputs nobody produces, and cycles."""
        found = [f"stage {s.name} reads {d}, which no stage produces"
                 for s in self.stages for d in s.inputs if d not in self.producer]
        try:
            self.order()
        except ValueError as exc:
            found.append(str(exc))
        return found

    def upstream_stages(self, stage: Stage) -> list[str]:
        """The stages (and the previous-month step) whose outputs this stage reads, in input order."""
        names = []
        for dataset in stage.inputs:
            producer = self.producer.get(dataset)
            if producer is not None and producer not in names:
                names.append(producer)
        return names

    def order(self, names: Iterable[str] | None = None) -> list[str]:
        """The stages in an order their inputs allow: each time, the first stage in catalogue order
        whose upstream stages have all come (a stable topological sort)."""
        chosen = [s.name for s in self.stages] if names is None else [s.name for s in self.stages if s.name in set(names)]
        remaining = {n: {u for u in self.upstream_stages(self.by_name[n]) if u in chosen} for n in chosen}
        ordered: list[str] = []
        while remaining:
            ready = next((n for n in chosen if n in remaining and not remaining[n]), None)
            if ready is None:
                raise ValueError("the stages " + ", ".join(sorted(remaining)) + " depend on each other in a cycle")
            del remaining[ready]
            ordered.append(ready)
            for waiting in remaining.values():
                waiting.discard(ready)
        return ordered

    def downstream(self, name: str) -> list[str]:
        """The stage and every stage that reads, directly or not, what it writes (in order)."""
        reached = {name}
        for stage in self.order():
            if set(self.upstream_stages(self.by_name[stage])) & reached:
                reached.add(stage)
        return [n for n in self.order() if n in reached]

    def to_hand_over(self, waiting: Iterable[str], enabled: Iterable[str], computed: Iterable[str]
                     ) -> dict[str, list[str]]:
        """The datasets that the worker's stages among `waiting` (not started yet) read and that no
        enabled stage of the run's process still has to read: {dataset: those worker stages}.

        The worker can read them ahead (the clean lines once the orders are computed) and the
        run's process forget them. Only datasets already produced (by a stage in `computed`).
        """
        waiting, enabled, computed = set(waiting), set(enabled), set(computed)
        found: dict[str, list[str]] = {}
        for name in self.order():
            stage = self.by_name[name]
            if name not in waiting or stage.runs_in != "worker":
                continue
            for dataset in stage.inputs:
                if self.producer.get(dataset) not in computed:
                    continue
                readers = [s for s in self.stages if dataset in s.inputs and s.name in enabled]
                if all(s.runs_in == "worker" or s.name in computed for s in readers):
                    found.setdefault(dataset, [s.name for s in readers if s.runs_in == "worker" and s.name in waiting])
        return found

    def runnable(self, enabled: Iterable[str]) -> list[str]:
        """Of the enabled stages, those whose required inputs can all be produced, in order.

        A stage whose required input comes from a stage that does not run does not run either;
        an optional input of a stage that does not run reaches the transform as None.
        """
        enabled = set(enabled)
        running: set[str] = set()
        for name in self.order():
            stage = self.by_name[name]
            if name not in enabled:
                continue
            needed = [self.producer[d] for d in stage.inputs if d not in stage.optional]
            if all(p in running or p == self.previous.name for p in needed):
                running.add(name)
        return [n for n in self.order() if n in running]


@lru_cache(maxsize=1)
def pipeline() -> Graph:
    """The graph of the catalogue's stages."""
    from customer_segments.tasks import catalogue

    return Graph(catalogue.STAGES, catalogue.PREVIOUS)
