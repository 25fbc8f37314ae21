"""Month over month: segment ids that persist, MONIC transitions, migration, stability, backfill."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import OUTPUTS, REAL_PARQUET, SAMPLE, last_json, real, run_cli, snapshot

from customer_segments.tasks.segmentation.identity import assign_ids
from customer_segments.tasks.inputs.readers import read_invoices
from customer_segments.tasks.segmentation.migration import migration
from customer_segments.tasks.segmentation.stability import best_jaccard, reading, segment_stability
from customer_segments.tasks.runtime.storage import sha256_file


def labels_of(groups: dict[int, list[str]], ids: dict[int, str] | None = None) -> pd.DataFrame:
    """cluster_labels-like rows: customers by segment number, features made up, ids when given."""
    rows = [(c, s) for s, members in groups.items() for c in members]
    frame = pd.DataFrame(rows, columns=["CustomerID", "segment"])
    frame["segment_name"] = "segment " + frame["segment"].astype(str)
    frame["TotalSales"] = 10.0 * (frame["segment"] + 1)
    for i, col in enumerate(("TotalSales_norm", "OrderCount_norm", "AvgOrderValue_norm")):
        frame[col] = frame["segment"] * (i + 1.0)
    if ids is not None:
        frame["segment_id"] = frame["segment"].map(ids)
    return frame


def people(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


# --- identities and MONIC transitions on hand-built cases ---------------------------------------


def test_first_month_gets_fresh_ids_in_value_order():
    ids, lineage = assign_ids(labels_of({0: people("a", 5), 1: people("b", 5)}))
    assert ids.to_dict() == {0: "S1", 1: "S2"}
    assert lineage["transition"].tolist() == ["first", "first"] and lineage["issued_up_to"].eq(2).all()


def test_survivors_keep_their_ids_whatever_their_value_rank():
    before = labels_of({0: people("a", 10), 1: people("b", 10)}, {0: "S1", 1: "S2"})
    # The two groups swap value ranks: segment numbers swap, ids stay with their customers.
    now = labels_of({0: people("b", 10), 1: people("a", 9) + ["x"]})
    ids, lineage = assign_ids(now, before, pd.DataFrame({"issued_up_to": [2]}))
    assert ids.to_dict() == {0: "S2", 1: "S1"}
    assert lineage.set_index("segment_id")["transition"].to_dict() == {"S1": "survived", "S2": "survived"}
    assert lineage.set_index("segment_id").loc["S1", "overlap"] == pytest.approx(0.9)  # 9 of a's 10 stayed


def test_a_split_keeps_the_id_on_its_larger_part_and_names_where_the_other_came_from():
    before = labels_of({0: people("a", 20), 1: people("b", 10)}, {0: "S1", 1: "S2"})
    # a splits 12 / 8 (60% and 40%, each >= 0.3, together 100% >= 0.7).
    now = labels_of({0: people("a", 20)[:12], 1: people("a", 20)[12:], 2: people("b", 10)})
    ids, lineage = assign_ids(now, before, pd.DataFrame({"issued_up_to": [2]}))
    assert ids.to_dict() == {0: "S1", 1: "S3", 2: "S2"}  # a new id for the second part, never S2 again
    table = lineage.set_index("segment_id")
    assert table.loc["S1", "transition"] == "split" and table.loc["S3", "transition"] == "split"
    assert table.loc["S3", "came_from"] == "S1" and table.loc["S2", "transition"] == "survived"
    assert lineage["issued_up_to"].eq(3).all()


def test_a_merge_is_an_absorption_and_the_absorbed_id_ends():
    before = labels_of({0: people("a", 10), 1: people("b", 6), 2: people("c", 10)}, {0: "S1", 1: "S2", 2: "S3"})
    now = labels_of({0: people("a", 10) + people("b", 6), 1: people("c", 10)})
    ids, lineage = assign_ids(now, before, pd.DataFrame({"issued_up_to": [3]}))
    assert ids.to_dict() == {0: "S1", 1: "S3"}  # the larger Jaccard (a) passes its id
    table = lineage.set_index("segment_id")
    assert table.loc["S1", "transition"] == "absorbed" and table.loc["S1", "came_from"] == "S1, S2"
    assert pd.isna(table.loc["S2", "segment"]) and table.loc["S2", "transition"] == "absorbed"
    assert table.loc["S2", "went_to"] == "S1"


def test_an_emerged_segment_gets_a_new_id_and_a_scattered_one_disappears():
    before = labels_of({0: people("a", 10), 1: people("b", 9)}, {0: "S1", 1: "S2"})
    # b scatters: 2 each into three segments, 3 lapse; n are new customers forming a new segment.
    now = labels_of({0: people("a", 10) + people("b", 2), 1: people("n", 10) + people("b", 4)[2:],
                     2: people("b", 6)[4:]})
    ids, lineage = assign_ids(now, before, pd.DataFrame({"issued_up_to": [7]}))
    table = lineage.set_index("segment_id")
    assert ids[0] == "S1" and table.loc["S1", "transition"] == "survived"
    assert set(ids[[1, 2]]) == {"S8", "S9"}  # after the highest ever issued (7), not reused
    assert (table.loc[["S8", "S9"], "transition"] == "emerged").all()
    assert table.loc["S2", "transition"] == "disappeared" and pd.isna(table.loc["S2", "segment"])


# --- migration ----------------------------------------------------------------------------------


def test_migration_counts_every_customer_once_on_each_side_with_new_and_lapsed():
    before = labels_of({0: ["p", "q", "r"], 1: ["s", "t"]}, {0: "S1", 1: "S2"})
    now = labels_of({0: ["p", "q", "s"], 1: ["t", "u"]}, {0: "S1", 1: "S2"})  # r lapsed, u new, s moved
    table, movers = migration(now, before)
    cells = table.set_index(["from_segment_id", "to_segment_id"])["customers"].to_dict()
    assert cells == {("S1", "S1"): 2, ("S1", "lapsed"): 1, ("S2", "S1"): 1, ("S2", "S2"): 1, ("new", "S2"): 1}
    assert table.loc[table["from_segment_id"] != "new", "customers"].sum() == len(before)
    assert table.loc[table["to_segment_id"] != "lapsed", "customers"].sum() == len(now)
    assert movers[["CustomerID", "from_segment_id", "to_segment_id"]].values.tolist() == [["s", "S2", "S1"]]
    lapsed = table.set_index(["from_segment_id", "to_segment_id"]).loc[("S1", "lapsed")]
    assert (lapsed["revenue_before"], lapsed["revenue_after"]) == (10.0, 0.0)


# --- stability ----------------------------------------------------------------------------------


def test_best_jaccard_by_hand():
    # Original 0 = {p0, p1, p2}, 1 = {p3}; refit puts p0, p1 in A, p2, p3 in B.
    # Segment 0: J(0, A) = 2/3, J(0, B) = 1/4 -> 2/3. Segment 1: J(1, B) = 1/2.
    assert best_jaccard(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1]), 2).tolist() == pytest.approx([2 / 3, 1 / 2])
    assert (reading(0.8), reading(0.7), reading(0.5)) == ("stable", "doubtful", "unstable")


def test_stability_is_deterministic_high_for_clear_groups_and_low_for_noise():
    rng = np.random.RandomState(0)
    centers = np.array([[-1.2, -1.2, -1.2], [1.2, 1.2, 1.2], [-1.2, 1.2, 0.0]])
    points = np.vstack([c + rng.normal(0, 0.15, (200, 3)) for c in centers])
    normalized = pd.DataFrame(points, columns=["TotalSales", "OrderCount", "AvgOrderValue"])
    normalized.insert(0, "CustomerID", [f"c{i:04d}" for i in range(len(points))])
    labels = normalized[["CustomerID"]].assign(segment=np.repeat([0, 1, 2], 200), segment_name="x")
    k_table = pd.DataFrame({"k": [3], "chosen": [True]})
    first = segment_stability(normalized, labels, k_table)
    assert first.equals(segment_stability(normalized, labels, k_table))
    assert (first["stability"] > 0.95).all() and (first["reading"] == "stable").all()
    noise = normalized.assign(TotalSales=rng.uniform(-1.7, 1.7, 600), OrderCount=rng.uniform(-1.7, 1.7, 600),
                              AvgOrderValue=rng.uniform(-1.7, 1.7, 600))
    noisy = labels.assign(segment=np.arange(600) % 3)  # segments that do not exist in the data
    assert (segment_stability(noise, noisy, k_table)["stability"] < 0.6).all()


# --- the landing folder -------------------------------------------------------------------------


def test_lines_repeated_across_a_folders_files_count_once_but_repeats_within_a_file_stay(tmp_path):
    sample = pd.read_parquet(SAMPLE)
    first = pd.concat([sample[sample["InvoiceDate"] < "2011-11-01"], sample.head(3)])  # 3 repeats in one file
    second = sample[sample["InvoiceDate"] >= "2011-10-01"]                            # October sent again
    first.to_parquet(tmp_path / "2011-10.parquet")
    second.to_parquet(tmp_path / "2011-11.parquet")
    read = read_invoices(tmp_path)
    assert len(read) == len(sample) + 3
    assert read.attrs["rows_read"] == len(first) + len(second) and read.attrs["files"] == 2
    pd.testing.assert_frame_equal(read.drop_duplicates().sort_values(list(read.columns)).reset_index(drop=True),
                                  read_invoices(SAMPLE).sort_values(list(read.columns)).reset_index(drop=True))


# --- the flow, on the sample --------------------------------------------------------------------


@pytest.fixture(scope="module")
def series(prefect_server, tmp_path_factory):
    """A backfill of four months on the sample with a six-month window, from the command line."""
    artifacts = tmp_path_factory.mktemp("series")
    done = run_cli("backfill", "--input", str(SAMPLE), "--from", "2011-09", "--to", "2011-12", "--window", "6",
                   "--artifacts", str(artifacts), "--json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.strip().splitlines()]
    return artifacts, lines


def test_backfill_prints_a_line_per_month_and_a_summary(series):
    _, lines = series
    months, summary = lines[:-1], lines[-1]
    assert [m["as_of"] for m in months] == ["2011-09", "2011-10", "2011-11", "2011-12"]
    assert all(m["status"] == "completed" and m["window"] == 6 and not m["reused"] for m in months)
    assert [m["previous_run_id"] for m in months] == [None] + [m["run_id"] for m in months[:-1]]
    assert summary == summary | {"backfill": "completed", "months": 4, "computed": 4, "reused": 0}


def test_backfill_runs_are_child_flow_runs_named_by_month(series, prefect_server):
    from uuid import UUID

    from prefect.client.orchestration import get_client

    _, lines = series
    with get_client(sync_client=True) as client:
        children = [client.read_flow_run(UUID(m["flow_run_id"])) for m in lines[:-1]]
        # A child flow run hangs off a task run of its parent flow run.
        parents = {client.read_task_run(c.parent_task_run_id).flow_run_id for c in children}
        parent = client.read_flow_run(parents.pop())
    assert [c.name for c in children] == [f"segmentation-{m}" for m in ("2011-09", "2011-10", "2011-11", "2011-12")]
    assert parent.name == "backfill-2011-09..2011-12" and "window:6" in children[0].tags


def test_segment_ids_migration_and_stability_land_in_the_run_folders(series):
    artifacts, lines = series
    months = lines[:-1]
    for before, now in zip(months, months[1:]):
        run_dir = Path(now["run_dir"])
        table = pd.read_parquet(run_dir / "segment_migration.parquet")
        assert table.loc[table["from_segment_id"] != "new", "customers"].sum() == before["customers"]
        assert table.loc[table["to_segment_id"] != "lapsed", "customers"].sum() == now["customers"]
        assert table.loc[table["to_segment_id"] == "lapsed", "customers"].sum() > 0  # the window lets customers lapse
        profiles = pd.read_parquet(run_dir / "segment_profiles.parquet")
        assert profiles["segment_id"].is_unique and profiles["transition"].isin(
            ["survived", "split", "absorbed", "emerged"]).all()
        assert profiles["stability"].between(0, 1).all()
        assert (run_dir / "plots" / "segment_migration.png").stat().st_size > 10_000
        movers = pd.read_parquet(run_dir / "movers.parquet")
        assert len(movers) == now["movers"] and (movers["from_segment_id"] != movers["to_segment_id"]).all()
    first = pd.read_parquet(Path(months[0]["run_dir"]) / "segment_profiles.parquet")
    assert first["transition"].eq("first").all()
    # The planted high-value group keeps its id all along.
    top = {pd.read_parquet(Path(m["run_dir"]) / "segment_profiles.parquet").set_index("segment").loc[0, "segment_id"]
           for m in months}
    assert len(top) == 1


def test_rerunning_the_backfill_keeps_every_month(series, prefect_server):
    artifacts, lines = series
    again = run_cli("backfill", "--input", str(SAMPLE), "--from", "2011-09", "--to", "2011-12", "--window", "6",
                    "--artifacts", str(artifacts), "--json")
    assert again.returncode == 0, again.stderr
    months = [json.loads(line) for line in again.stdout.strip().splitlines()][:-1]
    assert [(m["run_id"], m["reused"]) for m in months] == [(m["run_id"], True) for m in lines[:-1]]


def test_rerunning_an_earlier_month_never_rewrites_later_ones(series, prefect_server):
    artifacts, lines = series
    later = Path(lines[3]["run_dir"])
    before = snapshot(later)
    rerun = run_cli("run", "--input", str(SAMPLE), "--as-of", "2011-11", "--window", "6",
                    "--artifacts", str(artifacts), "--json")
    assert rerun.returncode == 0, rerun.stderr
    rerun = last_json(rerun.stdout)
    # Same input, same previous month: the rerun's outputs are byte for byte the backfill's.
    compared = [name for name in OUTPUTS if (Path(lines[2]["run_dir"]) / name).exists()]
    assert len(compared) > 20
    for name in compared:
        assert sha256_file(Path(rerun["run_dir"]) / name) == sha256_file(Path(lines[2]["run_dir"]) / name), name
    assert snapshot(later) == before  # 2011-12 keeps its ids and files
    history = run_cli("history", "--artifacts", str(artifacts), "--json")
    rows = {row["run_id"]: row for row in map(json.loads, history.stdout.splitlines())}
    assert rows[lines[3]["run_id"]]["lineage"].startswith("stale: 2011-11 has run " + rerun["run_id"])
    assert rows[lines[3]["run_id"]]["segments"] and rows[lines[3]["run_id"]]["movers"] == lines[3]["movers"]


def test_compare_prints_the_migration_between_any_two_runs(series):
    artifacts, lines = series
    shown = run_cli("compare", lines[0]["run_id"], lines[3]["run_id"], "--artifacts", str(artifacts), "--json")
    assert shown.returncode == 0, shown.stderr
    rows = [json.loads(line) for line in shown.stdout.splitlines()]
    assert sum(r["customers"] for r in rows if r["from_segment_id"] != "new") == lines[0]["customers"]
    assert sum(r["customers"] for r in rows if r["to_segment_id"] != "lapsed") == lines[3]["customers"]


# --- the real data ------------------------------------------------------------------------------


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("window", [None, 6], ids=["all history", "window 6"])
def test_uci_backfill_march_to_december(prefect_server, window, tmp_path):
    data = real(REAL_PARQUET)
    args = ["backfill", "--input", str(data), "--from", "2011-03", "--to", "2011-12", "--artifacts", str(tmp_path), "--json"]
    done = run_cli(*(args + (["--window", str(window)] if window else [])), timeout=1800)
    assert done.returncode == 0, done.stderr
    months = [json.loads(line) for line in done.stdout.strip().splitlines()][:-1]
    assert len(months) == 10 and all(m["status"] == "completed" for m in months)
    ids = []
    for before, now in zip([None, *months], months):
        run_dir = Path(now["run_dir"])
        table = pd.read_parquet(run_dir / "segment_migration.parquet")
        assert table.loc[table["from_segment_id"] != "new", "customers"].sum() == (before["customers"] if before else 0)
        assert table.loc[table["to_segment_id"] != "lapsed", "customers"].sum() == now["customers"]
        profiles = pd.read_parquet(run_dir / "segment_profiles.parquet").set_index("segment")
        ids.append(profiles.loc[0, "segment_id"])
    assert len(set(ids)) == 1, ids  # the high-value segment keeps its id from March to December
    if window is None:
        assert months[-1]["customers"] == 4_298  # December with all history: the reference analysis


def test_a_backfill_keeps_a_month_only_when_every_parameter_is_the_same(prefect_server, tmp_path):
    """A month run earlier with --min-lift 3 is not what a default backfill asks for: it is run again."""
    def backfill(*options: str) -> dict:
        done = run_cli("backfill", "--input", str(SAMPLE), "--from", "2011-11", "--to", "2011-11",
                       "--artifacts", str(tmp_path), "--json", "--no-rfm", "--no-propensity", "--no-chaid", *options)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[0])

    lifted = backfill("--min-lift", "3")
    default = backfill()
    assert not default["reused"] and default["run_id"] != lifted["run_id"]
    manifest = json.loads((Path(default["run_dir"]) / "manifest.json").read_text())
    assert manifest["parameters"]["basket_min_lift"] == 1.0
    rules = pd.read_parquet(Path(default["run_dir"]) / "basket_rules.parquet")
    assert rules["lift"].min() < 3 <= pd.read_parquet(Path(lifted["run_dir"]) / "basket_rules.parquet")["lift"].min()
    again = backfill()
    assert again["reused"] and again["run_id"] == default["run_id"]
    assert backfill("--min-lift", "3")["run_id"] == lifted["run_id"]
