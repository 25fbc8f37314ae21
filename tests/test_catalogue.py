"""The stage catalogue is the one source of truth: what is derived from it agrees with it.

Each list here comes from the catalogue, so a stage or parameter added there is checked without
editing this file.
"""

from __future__ import annotations

import importlib
import inspect

import pytest
import typer.main
from support import DEFAULTS

from customer_segments.flows.cli import app
from customer_segments.tasks import catalogue
from customer_segments.tasks.errors import PipelineError
from customer_segments.tasks.runtime import parameters
from customer_segments.tasks.runtime.graph import Graph, pipeline
from customer_segments.tasks.runtime.quality.suites import suites_dir
from customer_segments.tasks.runtime.stage import Stage

COMMAND = typer.main.get_command(app)
# The commands that start runs, and the parameters each leaves out (a backfill names its months).
RUN_COMMANDS = {"run": set(), "backfill": {"as_of"}, "serve": {"as_of"}, "deploy": {"as_of"}}


def options_of(command: str) -> set[str]:
    return {flag for param in COMMAND.commands[command].params for flag in param.opts}


def test_the_graph_has_no_cycle_and_no_unproduced_input():
    assert pipeline().problems() == []
    order = pipeline().order()
    assert sorted(order) == sorted(catalogue.BY_NAME)
    for name in order:  # every stage after the stages whose outputs it reads
        for upstream in pipeline().upstream_stages(catalogue.BY_NAME[name]):
            assert upstream == catalogue.PREVIOUS.name or order.index(upstream) < order.index(name)


def test_the_graph_check_finds_a_cycle_and_an_unproduced_input():
    def noop(*frames, **params):
        return frames

    broken = Graph([Stage("a", noop, inputs=("y",), outputs=("x",)), Stage("b", noop, inputs=("x",), outputs=("y",)),
                    Stage("c", noop, inputs=("nowhere",), outputs=("z",))], catalogue.PREVIOUS)
    problems = broken.problems()
    assert "stage c reads nowhere, which no stage produces" in problems
    assert any("cycle" in p and "a, b" in p for p in problems)


def test_every_dataset_has_a_quality_suite_and_every_suite_a_dataset():
    outputs = {d for stage in catalogue.STAGES for d in stage.outputs}
    suites = {path.stem for path in suites_dir().glob("*.json")}
    assert outputs == suites


def test_every_parameter_has_its_option_on_every_command_that_starts_runs():
    for command, left_out in RUN_COMMANDS.items():
        options = options_of(command)
        missing = [p.flag for name, p in parameters.declared().items() if name not in left_out and p.flag not in options]
        assert not missing, f"segment {command} lacks {missing}"
        switches = [s.switch_flag for s in catalogue.STAGES if s.switchable]
        assert set(switches) <= options, f"segment {command} lacks a stage switch"
    assert "--max-len" in options_of("run") and "--min-lift" in options_of("backfill")


def test_the_flows_parameters_are_the_models():
    from customer_segments.flows.pipeline import RUN_OPTIONS, backfill, segmentation

    fields = list(parameters.model().model_fields)
    assert list(segmentation.parameters.properties) == fields + [p.name for p in RUN_OPTIONS]
    assert list(backfill.parameters.properties) == ["start", "end"] + [f for f in fields if f != "as_of"]


def test_every_name_a_stage_uses_is_declared():
    declared = set(parameters.declared()) | set(catalogue.RUN_FACTS)
    for stage in catalogue.STAGES:
        assert set(stage.uses) <= declared, stage.name
        # The transform takes every parameter the catalogue hands it, by name.
        accepted = inspect.signature(stage.transform).parameters
        assert set(stage.param_names) <= set(accepted), stage.name


def test_every_report_section_and_figure_exists():
    for stage in catalogue.STAGES:
        if stage.report:
            importlib.import_module(f"customer_segments.flows.report.{stage.report}")
    stems = [f.stem for f in catalogue.FIGURES]
    assert len(stems) == len(set(stems))


def test_defaults_are_valid_and_bad_values_name_the_option():
    assert DEFAULTS.k_min <= DEFAULTS.k_max
    with pytest.raises(PipelineError, match="--min-lift must be at least 0"):
        parameters.validate({"basket_min_lift": -1})
    with pytest.raises(PipelineError, match=r"--k-max \(3\) must be at least --k-min \(4\)"):
        parameters.validate({"k_max": 3})
    with pytest.raises(PipelineError, match="--chaid-target must be one of repurchase, segment"):
        parameters.validate({"chaid_target": "profit"})
    with pytest.raises(PipelineError, match="unknown parameter 'kmax'; did you mean 'k_max'"):
        parameters.validate({"kmax": 3})
    with pytest.raises(PipelineError, match="unknown method"):
        parameters.validate({"methods": ["basket", "astrology"]})


def test_the_reuse_check_compares_every_parameter_that_can_change_a_result():
    compared = set(parameters.compared_for_reuse())
    for name, param in parameters.declared().items():
        assert (name in compared) == (param.changes_results and param.key_as is None and name != "as_of"), name
    assert {"basket_min_lift", "basket_max_len", "chaid_target", "horizon", "methods"} <= compared


def test_the_worker_reads_a_dataset_ahead_once_no_stage_of_the_run_process_needs_it():
    """graph.to_hand_over: the clean lines go to the worker once the orders (their last reader in
    the run's process) are computed, for the worker's stages that have not started."""
    graph = pipeline()
    everything = [s.name for s in catalogue.STAGES]
    workers = [s.name for s in catalogue.STAGES if s.runs_in == "worker" and "clean_invoices" in s.inputs]
    assert workers
    before = ["ingest", "clean"]
    after = ["ingest", "clean", "orders"]
    waiting = [n for n in everything if n not in after]
    assert graph.to_hand_over(waiting, everything, before) == {}  # the orders still read them
    assert graph.to_hand_over(waiting, everything, after) == {"clean_invoices": workers}
    # Only for the worker's stages that run and have not started.
    assert graph.to_hand_over(waiting, [n for n in everything if n != "basket"], after) == {
        "clean_invoices": [n for n in workers if n != "basket"]}
    assert graph.to_hand_over([n for n in waiting if n not in workers], everything, after) == {}
    # The labels wait for every reader in the run's process (profile, plots, rfm, ...).
    computed = after + ["features", "normalize", "select_k", "cluster"]
    assert "cluster_labels" not in graph.to_hand_over([n for n in everything if n not in computed], everything,
                                                      computed)
