"""The dask engine: the line-level stages on a dask.distributed cluster, with the pandas engine's answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from support import BIN, REAL_PARQUET, REPO, SAMPLE, last_json, real, run_cli

from customer_segments.tasks.runtime.manifest import Manifest
from customer_segments.tasks.runtime.storage import sha256_file

pytestmark = pytest.mark.slow
# Everything a run writes per customer or per segment: the same whichever engine made it.
CUSTOMER_LEVEL = ("customer_features", "normalized_features", "k_selection", "cluster_labels", "segment_lineage",
                  "segment_stability", "segment_profiles", "top_products", "segment_migration", "rfm_scores",
                  "propensity_scores", "chaid_segments", "basket_rules", "recommendations",
                  "customer_recommendations")


def run(input_path: Path, artifacts: Path, *args: str, env: dict | None = None) -> Manifest:
    done = run_cli("run", "--input", str(input_path), "--artifacts", str(artifacts), "--json", *args, env=env,
                   timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return Manifest.model_validate_json((Path(last_json(done.stdout)["run_dir"]) / "manifest.json").read_text())


def assert_same_answers(pandas_run: Manifest, dask_run: Manifest) -> None:
    a, b = Path(pandas_run.run_dir), Path(dask_run.run_dir)
    features = pd.read_parquet(a / "customer_features.parquet"), pd.read_parquet(b / "customer_features.parquet")
    pd.testing.assert_frame_equal(*features, check_exact=False, rtol=1e-9, atol=1e-9)
    labels = pd.read_parquet(a / "cluster_labels.parquet"), pd.read_parquet(b / "cluster_labels.parquet")
    assert labels[0]["CustomerID"].tolist() == labels[1]["CustomerID"].tolist()
    assert labels[0]["segment"].tolist() == labels[1]["segment"].tolist()  # identical, customer by customer
    for name in CUSTOMER_LEVEL:
        if (a / f"{name}.parquet").exists():
            pd.testing.assert_frame_equal(pd.read_parquet(a / f"{name}.parquet"), pd.read_parquet(b / f"{name}.parquet"),
                                          check_exact=False, rtol=1e-9, atol=1e-9, obj=name)
    assert pandas_run.rows_dropped == dask_run.rows_dropped and pandas_run.rows_clean == dask_run.rows_clean


@pytest.fixture(scope="module")
def sample_runs(prefect_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    return run(SAMPLE, root / "pandas"), run(SAMPLE, root / "dask", "--engine", "dask"), root


def test_the_engines_give_the_same_answers_on_the_sample(sample_runs):
    pandas_run, dask_run, _ = sample_runs
    assert dask_run.parameters["engine"] == "dask" and pandas_run.parameters["engine"] == "pandas"
    assert_same_answers(pandas_run, dask_run)


def test_each_stage_computes_where_its_engine_places_it(sample_runs):
    """Dask: the stages with a dask twin on the cluster, the others in the flow's process (as on
    the pandas engine, where the catalogue's worker stages go to the worker process)."""
    from customer_segments.tasks import catalogue

    pandas_run, dask_run, _ = sample_runs
    for stage in catalogue.STAGES:
        if stage.name in dask_run.stages:
            on_dask = dask_run.stages[stage.name].computed_in
            assert on_dask.startswith("dask worker tcp://") if stage.dask_transform else on_dask == "flow process", (
                stage.name, on_dask)
        if stage.name in pandas_run.stages:
            expected = "worker process" if stage.runs_in == "worker" else "flow process"
            assert pandas_run.stages[stage.name].computed_in == expected, stage.name


def test_line_level_outputs_are_partitioned_and_hashed_per_part(sample_runs):
    _, dask_run, root = sample_runs
    clean = dask_run.stages["clean"].outputs["clean_invoices"]
    assert clean.is_partitioned and len(clean.parts) >= 1
    folder = Path(dask_run.run_dir) / "clean_invoices"
    assert sorted(p.name for p in folder.glob("*.parquet")) == [p.file for p in clean.parts]
    for part in clean.parts:
        assert sha256_file(folder / part.file) == part.sha256
    assert sum(p.rows for p in clean.parts) == clean.rows == dask_run.rows_clean
    report = json.loads((Path(dask_run.run_dir) / "validation" / "clean_invoices.json").read_text())
    assert report["meta"]["partitions"] == len(clean.parts) and report["meta"]["rows"] == clean.rows
    assert (Path(dask_run.run_dir) / "report.html").exists()  # later commands read it as any run


def test_later_commands_see_a_dask_run_as_any_run(sample_runs):
    _, dask_run, root = sample_runs
    listed = run_cli("history", "--artifacts", str(root / "dask"), "--json")
    assert [json.loads(line)["run_id"] for line in listed.stdout.splitlines()] == [dask_run.run_id]
    again = run_cli("resume", dask_run.run_id, "--artifacts", str(root / "dask"), "--json", timeout=1800)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = Manifest.model_validate_json((Path(dask_run.run_dir) / "manifest.json").read_text())
    assert {s.status for s in resumed.stages.values()} == {"cached"} and resumed.parameters["engine"] == "dask"


def in_parts(clean: pd.DataFrame, folder: Path) -> list[str]:
    """The clean lines as five Parquet parts, cut at row counts that split invoices between parts."""
    cuts = [0, 10_001, 40_003, 40_004, 97_777, len(clean)]
    assert clean["InvoiceNo"].iloc[10_000] == clean["InvoiceNo"].iloc[10_001]  # an invoice in two parts
    files = []
    for number, (start, end) in enumerate(zip(cuts, cuts[1:])):
        files.append(str(folder / f"part-{number:05d}.parquet"))
        clean.iloc[start:end].to_parquet(files[-1], index=False)
    return files


def test_orders_from_parts_equal_those_of_the_whole_table(sample_runs, tmp_path):
    """Each part's orders on the cluster; an invoice cut between parts is made again from all its lines."""
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    from customer_segments.tasks.segmentation import orders

    pandas_run, _, _ = sample_runs
    clean = pd.read_parquet(Path(pandas_run.run_dir) / "clean_invoices.parquet")
    expected = pd.read_parquet(Path(pandas_run.run_dir) / "orders.parquet")
    files = in_parts(clean, tmp_path)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster):
        got = orders.orders_dask(dd.read_parquet(files, index=False))
    exact = [c for c in got.columns if c != "value"]
    pd.testing.assert_frame_equal(got[exact], expected[exact], check_exact=True)
    # The sums of the same lines, up to the last bits (the pandas engine sums in numpy's buffers).
    pd.testing.assert_series_equal(got["value"], expected["value"], check_exact=False, rtol=1e-13, atol=0)
    assert got["InvoiceNo"].is_unique and len(got) == clean["InvoiceNo"].nunique()


def test_best_sellers_from_parts_equal_those_of_the_whole_table(sample_runs, tmp_path):
    """Totals per part; the orders of an invoice cut between parts counted once."""
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    from customer_segments.tasks.methods import products
    from customer_segments.tasks.segmentation import best_sellers

    pandas_run, _, _ = sample_runs
    done = Path(pandas_run.run_dir)
    clean, labels = pd.read_parquet(done / "clean_invoices.parquet"), pd.read_parquet(done / "cluster_labels.parquet")
    codes = products.load_service_codes().to_dict("records")
    expected = best_sellers.best_sellers(clean, labels, service_codes=codes)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster):
        lines = dd.read_parquet(in_parts(clean, tmp_path), index=False)
        got = best_sellers.best_sellers_dask(lines, labels, service_codes=codes)
        metrics = best_sellers.best_seller_metrics({"clean_invoices": lines, "top_products": got},
                                                   {"service_codes": codes})
    exact = [c for c in got.columns if c != "revenue"]
    pd.testing.assert_frame_equal(got[exact], expected[exact], check_exact=True)
    pd.testing.assert_series_equal(got["revenue"], expected["revenue"], check_exact=False, rtol=1e-12, atol=0)
    assert metrics == best_sellers.best_seller_metrics({"clean_invoices": clean, "top_products": expected},
                                                        {"service_codes": codes})
    assert metrics["service_lines_excluded"] > 0


@pytest.mark.parametrize("sample_error", [0.9, 0.0])
def test_basket_rules_from_parts_equal_those_of_the_whole_table(sample_runs, tmp_path, sample_error):
    """The dask basket stage never gathers the lines, and draws the same baskets as the pandas one.

    The clean lines are cut into parts at row counts that split invoices between parts; at a 90%
    error every group is mined from a sample of 811 of its baskets, at 0 from all of them.
    """
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    from customer_segments.tasks.methods import basket, products

    pandas_run, _, _ = sample_runs
    done = Path(pandas_run.run_dir)
    clean = pd.read_parquet(done / "clean_invoices.parquet")
    labels, top = pd.read_parquet(done / "cluster_labels.parquet"), pd.read_parquet(done / "top_products.parquet")
    params = {"service_codes": products.load_service_codes().to_dict("records"), "basket_min_support": 0.01,
              "basket_min_baskets": 10, "basket_min_lift": 1.0, "basket_max_len": 3,
              "basket_sample_error": sample_error}
    expected = basket.basket_stage(clean, labels, top, **params)
    files = in_parts(clean, tmp_path)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster):
        got = basket.basket_stage_dask(dd.read_parquet(files, index=False), labels, top, **params)
    for ours, theirs in zip(got[:3], expected[:3]):
        pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    mined = got[0].attrs["mined"]
    assert mined == expected[0].attrs["mined"] and len(mined) == labels["segment"].nunique() + 1
    assert all((group["mined"] < group["baskets"]) == (sample_error > 0) for group in mined)
    assert len(got[0]) > 0 and len(got[2]) > 0


def test_a_folder_of_parts_on_an_existing_cluster(prefect_server, tmp_path):
    """A partitioned input (several Parquet files), on a cluster started here and named by address."""
    from distributed import LocalCluster

    generated = run_cli("generate", "--out", str(tmp_path / "parts"), "--customers", "900", "--months", "6",
                        "--part-customers", "300", "--seed", "5")
    assert generated.returncode == 0, generated.stderr
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        dask_run = run(tmp_path / "parts", tmp_path / "dask", "--engine", "dask", "--dask-address",
                       cluster.scheduler_address, "--no-basket", "--no-chaid")
        assert cluster.scheduler.transition_counter > 0  # the work went through this cluster's scheduler
    pandas_run = run(tmp_path / "parts", tmp_path / "pandas", "--no-basket", "--no-chaid")
    assert dask_run.metric("ingest", "files") == 3 and dask_run.metric("ingest", "rows_raw") == pandas_run.metric(
        "ingest", "rows_raw")
    assert_same_answers(pandas_run, dask_run)


@pytest.mark.parametrize("users_own", [None, "1048576"])
def test_the_local_clusters_workers_start_with_the_allocator_setting_unless_the_user_has_one(monkeypatch, users_own):
    import dask
    from distributed import Client, LocalCluster

    from customer_segments.flows import cli, settings

    key = "distributed.nanny.pre-spawn-environ"
    before = dask.config.get(key)
    # A nanny copies what its workers get into its own process's environment, where the next
    # nanny takes it for the user's: start from a process without any (restored afterwards).
    for name in settings.DASK_WORKER_MALLOC:
        monkeypatch.delenv(name, raising=False)
    if users_own is not None:
        monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", users_own)
    try:
        from customer_segments.flows.pipeline import segmentation

        assert type(cli._with_engine(segmentation, "dask", None).task_runner).__name__ == "DaskTaskRunner"
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            seen = client.run(lambda: {k: os.environ.get(k) for k in settings.DASK_WORKER_MALLOC})
    finally:
        dask.config.set({key: before})
    [environ] = seen.values()
    expected = dict(settings.DASK_WORKER_MALLOC)
    if users_own is not None:
        expected["MALLOC_MMAP_THRESHOLD_"] = users_own
    assert environ == expected


def test_a_killed_worker_mid_stage_then_the_run_completes_or_resumes_identically(prefect_server, sample_runs, tmp_path):
    from distributed import LocalCluster

    _, reference, _ = sample_runs
    marker = tmp_path / "hanging-pid"
    env = {"SEGMENT_FAULT": "clean:hang", "SEGMENT_FAULT_MARKER": str(marker)}
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the cluster's workers inherit it: the clean stage hangs once
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            process = subprocess.Popen(
                [str(BIN / "segment"), "run", "--input", str(SAMPLE), "--artifacts", str(tmp_path / "a"), "--json",
                 "--engine", "dask", "--dask-address", cluster.scheduler_address],
                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 300
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert marker.exists(), "the clean stage never started"
            time.sleep(0.5)
            os.kill(int(marker.read_text()), signal.SIGKILL)  # the worker process running the stage
            out, err = process.communicate(timeout=900)
    finally:
        for k, v in previous.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    summary = last_json(out)
    if process.returncode != 0:  # the run failed with the worker: resume completes it
        resumed = run_cli("resume", summary["run_id"], "--artifacts", str(tmp_path / "a"), "--json", timeout=1800)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        summary = last_json(resumed.stdout)
    assert summary["status"] == "completed"
    done = Path(summary["run_dir"])
    for name in ("clean_invoices", "customer_features", "cluster_labels", "segment_profiles", "top_products"):
        ours = sorted(done.glob(f"{name}*")), sorted(Path(reference.run_dir).glob(f"{name}*"))
        assert [p.name for p in ours[0]] == [p.name for p in ours[1]], name
    for path in done.rglob("*.parquet"):
        twin = Path(reference.run_dir) / path.relative_to(done)
        if twin.exists():
            assert sha256_file(path) == sha256_file(twin), path.relative_to(done)


@pytest.mark.real_data
def test_the_engines_give_the_same_answers_on_the_uci_data(prefect_server, tmp_path):
    data = real(REAL_PARQUET)
    fast = ("--no-basket", "--no-chaid")
    pandas_run = run(data, tmp_path / "pandas", *fast)
    dask_run = run(data, tmp_path / "dask", "--engine", "dask", *fast)
    assert dask_run.customers == 4_298 and dask_run.rows_clean == 380_620
    assert_same_answers(pandas_run, dask_run)


def test_lines_repeated_across_files_count_once_as_on_the_pandas_engine(tmp_path):
    """Overlapping exports in a folder: the same lines kept, and the same count of repeats dropped."""
    import dask
    from distributed import Client, LocalCluster

    from customer_segments.data.generator import generate
    from customer_segments.tasks.inputs import readers as ingest

    lines = generate(customers=300, months=6, seed=3).invoices
    half, third = len(lines) // 2, len(lines) // 3
    # A first export, a later one overlapping it by a sixth, and the first 1,000 lines sent again.
    for name, part in {"a": lines.iloc[:half], "b": lines.iloc[third:], "c": lines.iloc[:1000]}.items():
        part.to_parquet(tmp_path / f"{name}.parquet", index=False, row_group_size=5_000)
    expected = ingest.read_invoices(tmp_path)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster):
        frame = ingest.read_invoices_dask(tmp_path)
        lazy, finish = ingest.ingest_metrics_dask({"raw_invoices": frame}, {"input_path": str(tmp_path)})
        metrics = finish(dask.compute(lazy)[0])
        got = frame.compute()
    assert metrics["rows_read"] == expected.attrs["rows_read"] == len(lines) - third + half + 1000
    assert metrics["repeated_across_files"] == expected.attrs["rows_read"] - len(expected) > 0
    order = list(ingest.COLUMNS)
    pd.testing.assert_frame_equal(got.sort_values(order).reset_index(drop=True),
                                  expected.sort_values(order).reset_index(drop=True), check_dtype=False)
