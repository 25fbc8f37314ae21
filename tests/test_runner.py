"""The stage runner's own promises: what a cache key depends on, references, reading any Parquet."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pandas as pd
import pytest
from support import SAMPLE

from customer_segments.tasks.runtime import code_version
from customer_segments.tasks.errors import DiskFullError, InputError, ParameterError
from customer_segments.tasks.inputs.readers import read_invoices
from customer_segments.tasks.runtime.manifest import RunContext
from customer_segments.tasks.runtime.stage_runner import QualityError, cache_key, run_stage
from customer_segments.tasks.catalogue import CLUSTER, INGEST, NORMALIZE, STAGES

PACKAGE = "customer_segments.tasks.segmentation"


def test_code_version_follows_imported_constants_transitively():
    # normalize uses FEATURES from features; cluster uses it through select_k and features too.
    assert f"{PACKAGE}.features" in code_version.module_closure(f"{PACKAGE}.normalize")
    closure = code_version.module_closure(f"{PACKAGE}.cluster")
    assert {f"{PACKAGE}.features", f"{PACKAGE}.select_k", f"{PACKAGE}.identity",
            "customer_segments.tasks.errors"} <= closure
    assert f"{PACKAGE}.profile" not in closure


def test_editing_a_constant_in_another_module_changes_the_key(monkeypatch):
    before = code_version.fingerprint([f"{PACKAGE}.normalize"])
    source = code_version._source(f"{PACKAGE}.features")
    edited = source.replace(b'FEATURES = ("TotalSales", "OrderCount", "AvgOrderValue")',
                            b'FEATURES = ("TotalSales", "AvgOrderValue", "OrderCount")')
    assert edited != source
    real_source = code_version._source
    monkeypatch.setattr(code_version, "_source",
                        lambda name: edited if name == f"{PACKAGE}.features" else real_source(name))
    assert code_version.fingerprint([f"{PACKAGE}.normalize"]) != before


def test_library_versions_are_part_of_the_key(monkeypatch):
    before = code_version.fingerprint([f"{PACKAGE}.cluster"])
    versions = dict(code_version.library_versions(), **{"scikit-learn": "0.0.1"})
    monkeypatch.setattr(code_version, "library_versions", lambda: versions)
    assert code_version.fingerprint([f"{PACKAGE}.cluster"]) != before
    assert {"numpy", "pandas", "pyarrow", "scikit-learn"} <= set(versions)


def test_an_edited_quality_suite_changes_the_key(tmp_path, monkeypatch):
    context = RunContext(artifacts=str(tmp_path), run_id="r", started_at="2026-01-01T00:00:00+00:00", params={})
    from customer_segments.tasks.runtime.manifest import DatasetRef
    from customer_segments.tasks.runtime.quality.suites import suites_dir

    inputs = {"customer_features": DatasetRef(name="customer_features", file="x", path="x", sha256="0" * 64)}
    before = cache_key(NORMALIZE, context, inputs)
    edited = tmp_path / "suites"
    edited.mkdir()
    for path in suites_dir().glob("*.json"):
        (edited / path.name).write_bytes(path.read_bytes())
    (edited / "normalized_features.json").write_text((edited / "normalized_features.json").read_text().replace(
        '"min_value": -2, "max_value": 2', '"min_value": -3, "max_value": 3'))
    monkeypatch.setenv("SEGMENT_EXPECTATIONS", str(edited))
    assert cache_key(NORMALIZE, context, inputs) != before


def test_every_stage_keys_on_the_code_of_both_engines_where_it_has_two():
    for stage in STAGES:
        assert len(stage.code_version) == 16
        assert stage.transform.__module__ in code_version.module_closure(stage.transform.__module__)
        if stage.dask_transform is not None:  # each dask twin lives beside its pandas twin
            assert stage.dask_transform.__module__ == stage.transform.__module__
    # A change to a dask twin changes the key of the stages of its module, not the others'.
    assert f"{PACKAGE}.cleaning" not in code_version.module_closure(f"{PACKAGE}.select_k")


def test_parquet_saved_with_its_index_is_read_by_position(tmp_path):
    """`df[df.Country == "France"].to_parquet(path)` keeps pandas' index; ingest ignores it."""
    sample = pd.read_parquet(SAMPLE)
    france = sample[sample["Country"] == "France"]
    assert not france.index.equals(pd.RangeIndex(len(france)))
    france.to_parquet(tmp_path / "france.parquet")
    read = read_invoices(tmp_path / "france.parquet")
    assert len(read) == len(france)
    assert read["InvoiceNo"].notna().all() and read["CustomerID"].notna().sum() == france["CustomerID"].notna().sum()
    assert read["InvoiceNo"].tolist() == france["InvoiceNo"].tolist()
    # A named index is a column that was set aside: it comes back as one.
    france.set_index("InvoiceNo").to_parquet(tmp_path / "indexed.parquet")
    assert read_invoices(tmp_path / "indexed.parquet")["InvoiceNo"].tolist() == france["InvoiceNo"].tolist()


@pytest.mark.parametrize("error", [
    InputError("x.csv", "ingest", "UnitPrice", "3 values are not numbers"),
    ParameterError("select_k", "k-min must be at least 2"),
    DiskFullError("clean", "/a/cache/clean", "run-1"),
    QualityError("features", "customer_features", "dataset failed", Path("/r/validation/x.json")),
])
def test_errors_cross_process_boundaries_intact(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error)


def test_the_runner_needs_no_prefect(tmp_path):
    """Stages run by hand, each taking the previous results, give the same references again."""
    context = RunContext(artifacts=str(tmp_path), run_id="r", started_at="2026-01-01T00:00:00+00:00",
                         params={"input_path": str(SAMPLE), "input_sha256": "s"})
    first = run_stage(INGEST, context)
    again = run_stage(INGEST, context)
    assert first.record.status == "completed" and again.record.status == "cached"
    assert first.record.outputs == again.record.outputs
    ref = first.dataset("raw_invoices")
    assert ref.rows == len(pd.read_parquet(ref.resolve(tmp_path))) and ref.path.startswith("cache/ingest/")
    with pytest.raises(ValueError, match="cluster needs customer_features"):
        run_stage(CLUSTER, context, [first])


def test_a_long_dataset_is_validated_in_slices_with_the_same_verdict(tmp_path, monkeypatch):
    """Beyond SLICE_ROWS a file is validated a few row groups at a time and the results merged."""
    from customer_segments.tasks.runtime.quality import gate

    raw = read_invoices(SAMPLE)
    raw.loc[raw.index[::7], "UnitPrice"] = -1.0  # a critical failure spread over every slice
    raw.to_parquet(tmp_path / "raw.parquet", index=False, row_group_size=20_000)
    facts = {"run_date": "2026-01-01T00:00:00"}
    whole = gate._validate("raw_invoices", raw, facts)
    monkeypatch.setattr(gate, "SLICE_ROWS", 50_000)
    sliced = gate._validate_file("raw_invoices", str(tmp_path / "raw.parquet"), facts)
    assert json.loads(sliced.report)["meta"]["partitions"] == 4  # 153,865 rows in slices of 40,000
    assert sliced.message == whole.message and "column UnitPrice" in sliced.message
    strip = lambda summary: {k: v for k, v in summary.items() if k != "seconds"}  # noqa: E731
    assert strip(sliced.summary) == strip(whole.summary)


@pytest.mark.parametrize("setting, expected", [(None, "False"), ("1", "True"), ("0", "False")])
def test_stages_compute_with_numpy_on_small_pages_unless_the_user_says_otherwise(setting, expected):
    """Large numpy arrays are not marked for transparent huge pages (slow to touch first on
    virtual machines), in this process and those it starts; a user's NUMPY_MADVISE_HUGEPAGE wins."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if setting is not None:
        env["NUMPY_MADVISE_HUGEPAGE"] = setting
    code = ("from customer_segments.tasks.runtime.stage_runner import use_threads; use_threads(1); "
            "from numpy._core.multiarray import _get_madvise_hugepage; import os, subprocess, sys; "
            "child = subprocess.run([sys.executable, '-c', 'from numpy._core.multiarray import "
            "_get_madvise_hugepage as g; print(g())'], capture_output=True, text=True).stdout.strip(); "
            "print(_get_madvise_hugepage(), child)")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == [expected, expected]


def test_a_dataset_handed_over_is_read_by_the_worker_before_its_stage_asks(tmp_path):
    """The worker keeps what it read ahead: its stage then finds the frame in memory (here, after
    the file is gone, which the worker alone could not read again)."""
    from customer_segments.tasks.runtime import worker_processes

    context = RunContext(artifacts=str(tmp_path), run_id="r", started_at="2026-01-01T00:00:00+00:00",
                         params={"input_path": str(SAMPLE), "input_sha256": "s"})
    ref = run_stage(INGEST, context).dataset("raw_invoices")
    path = ref.resolve(tmp_path)
    worker_processes.start()
    reading = worker_processes.hand_over(context, ref)
    reading.join(timeout=120)
    assert not reading.is_alive()
    worker = worker_processes.channel("work")
    path.unlink()
    assert worker.call("preload", context, ref) is None  # from memory: the file is gone
    missing = ref.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(FileNotFoundError):
        worker.call("preload", context, missing)


def test_arrow_gives_freed_memory_back_at_once_in_the_processes_the_command_starts():
    """The next stage should not run beside pages the last one let go (they decay over a second by
    default): with release_memory_at_once before pyarrow loads, a freed table leaves at once."""
    import subprocess
    import sys

    code = ("import os, sys\n"
            "if sys.argv[1] == 'set':\n"
            "    from customer_segments.tasks.runtime.storage import release_memory_at_once\n"
            "    release_memory_at_once()\n"
            "import pyarrow as pa, psutil\n"
            "from customer_segments.tasks.runtime.storage import use_jemalloc\n"
            "use_jemalloc()\n"
            "import pyarrow.parquet as pq\n"
            "tables = [pq.read_table(sys.argv[2]) for _ in range(8)]\n"
            "held = psutil.Process().memory_info().rss\n"
            "del tables\n"
            "print((held - psutil.Process().memory_info().rss) >> 20)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "JE_ARROW_MALLOC_CONF"}
    freed = {mode: int(subprocess.run([sys.executable, "-c", code, mode, str(SAMPLE)], env=env, capture_output=True,
                                      text=True, check=True).stdout) for mode in ("set", "default")}
    assert freed["set"] >= 50, freed  # 8 copies of the sample's lines
    assert freed["default"] < freed["set"] / 2, freed


def test_the_collector_leaves_start_up_objects_out_of_its_passes_but_not_start_up_garbage():
    """The command turns the collector off while it imports; once the stages' libraries are in,
    what is alive is frozen (out of every later full pass), garbage cycles made meanwhile are
    collected first, and the collector is on again."""
    import subprocess
    import sys

    code = ("import gc, weakref\n"
            "gc.disable()\n"
            "class Node: pass\n"
            "node = Node(); node.me = node; probe = weakref.ref(node); del node\n"
            "from customer_segments.tasks.runtime import stage_runner\n"
            "stage_runner.warm_imports(); stage_runner._warming.join()\n"
            "frozen = gc.get_freeze_count()\n"
            "stage_runner.storage.freeze_imported()\n"
            "print(gc.isenabled(), frozen > 100_000, probe() is None, gc.get_freeze_count() == frozen)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True", "True", "True"], done.stdout
