"""What a catalogue entry is: a stage, its parameters and its figures (see tasks/catalogue.py).

A `Stage` is a pure transform between named datasets, with everything the runtime, the flow,
the command line, the manifest and the report need to know about it, declared once. A `Param`
is one run parameter, declared once, by the stage it belongs to: its type, default, bounds or
choices, one line of help and its command-line option all come from here.

Nothing here imports pandas or Prefect: the command line reads the catalogue before it loads
anything heavy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

RunsIn = Literal["flow", "worker"]


@dataclass(frozen=True)
class Param:
    """One run parameter.

    `ge` / `le` are inclusive bounds: a number, or the name of another parameter the value must
    not go below / above (`k_max` is at least `k_min`). `choices` lists the values allowed.
    `option` is the command-line flag (default: `--` and the name with dashes). `series`: part
    of what makes monthly runs one series (their segment ids are matched only within it).
    `changes_results=False`: provably no effect on any stage's output (a location, not a
    setting of the analysis); the backfill's reuse check leaves such parameters out. `key_as`:
    the run fact a stage's cache key uses instead of the value (the input's sha256, not its path).
    """

    name: str
    type: Any
    default: Any
    help: str
    option: str | None = None
    ge: float | str | None = None
    le: float | str | None = None
    choices: tuple[Any, ...] | None = None
    series: bool = False
    changes_results: bool = True
    key_as: str | None = None
    metavar: str | None = None
    # Text (a command-line option, a config value) to the value's type, raising ValueError in the
    # user's words: e.g. the column mapping "CustomerID=customer_id,InvoiceDate=date".
    parse: Callable[[Any], Any] | None = None
    # A file or folder: a relative path in a config file is taken from the config file's folder.
    path: bool = False

    @property
    def flag(self) -> str:
        return self.option or "--" + self.name.replace("_", "-")

    @property
    def optional(self) -> bool:
        """May be left unset (None): the stage then decides, e.g. k from the silhouette."""
        return self.default is None


@dataclass(frozen=True)
class FigureSpec:
    """A chart a stage draws: its file stem under plots/, and how the report shows it."""

    stem: str
    alt: str
    caption: str


@dataclass(frozen=True)
class Stage:
    """A pipeline step: which datasets it reads and writes, the pure function in between, and
    everything else about it the rest of the product derives from this one entry.

    `transform(*input_frames, **params)` returns one DataFrame per output (a tuple when there
    are several); a stage with figures returns them followed by a dict of matplotlib Figures by
    file stem. `metrics(frames, params)` returns the facts the manifest records (and later
    quality gates may refer to). `params` are the parameters this stage declares; `uses` names
    parameters declared by another stage and run facts (`cutoff`, the reference tables) it
    reads too. Both reach the transform as keyword arguments and enter the cache key.
    """

    name: str
    transform: Callable[..., Any]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    # Inputs the stage can do without (last month's labels in a series' first month, the output
    # of a stage switched off): the transform then gets None for them.
    optional: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    uses: tuple[str, ...] = ()
    metrics: Callable[[Mapping[str, Any], Mapping[str, Any]], dict] | None = None
    figures: tuple[FigureSpec, ...] = ()
    # A stage a user can switch off: its flag's help (the flag is --no-<name>), and its name in words.
    switch: str | None = None
    label: str | None = None
    # Columns of the export the stage cannot do without (the products): when the input lacks one,
    # the stage is skipped, and so are the stages that need its outputs; the run says why.
    needs_columns: tuple[str, ...] = ()
    # "worker": computed in the worker process beside the run (pure-Python work no later stage
    # waits for uses the other core there); "flow": in the flow's own process.
    runs_in: RunsIn = "flow"
    # The report section (a module of customer_segments.flows.report) that shows its outputs.
    report: str | None = None
    # Retries for transient I/O errors (a flaky network share); data errors are never retried.
    retries: int = 0
    # Shared outputs stay in the cache only (the parsed input is the same for every run of a file).
    shared: bool = False
    # The same stage on the dask engine: a transform taking partitioned inputs as dask DataFrames
    # and returning dask DataFrames (written as partitioned datasets) or pandas ones, and its metrics:
    # a dict, or (dask values, finish) to compute them in the same pass as the partitioned output's
    # writing, finish(computed values) making the dict.
    dask_transform: Callable[..., Any] | None = None
    dask_metrics: Callable[[Mapping[str, Any], Mapping[str, Any]], dict | tuple] | None = None

    @property
    def switchable(self) -> bool:
        return self.switch is not None

    @property
    def switch_flag(self) -> str | None:
        return f"--no-{self.name.replace('_', '-')}" if self.switchable else None

    @property
    def param_names(self) -> tuple[str, ...]:
        """Every parameter and run fact the transform receives, in declaration order."""
        return tuple(p.name for p in self.params) + tuple(n for n in self.uses if n not in {p.name for p in self.params})

    @cached_property
    def code_version(self) -> str:
        """Hash of every project module the transform and metrics can reach, and the libraries.

        Editing any of them (a constant included) invalidates the stage's cached outputs, and,
        through the input hashes, those of every later stage.
        """
        from customer_segments.tasks.runtime import code_version, storage

        modules = {self.transform.__module__, storage.__name__}
        for function in (self.metrics, self.dask_transform, self.dask_metrics):
            if function is not None:
                modules.add(function.__module__)
        return code_version.fingerprint(sorted(modules), extra=code_version.RUNNER_VERSION)


@dataclass(frozen=True)
class PreviousMonth:
    """Datasets a run takes from last month's run of its series: name -> (stage, its output)."""

    name: str
    outputs: Mapping[str, tuple[str, str]] = field(default_factory=dict)
