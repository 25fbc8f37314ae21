"""RFM scores, repurchase propensity and CHAID segments: hand-computed cases, the no-leakage
property of the propensity time split, planted signals, and the known facts of the real data."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from support import DEFAULTS

from customer_segments.tasks.errors import InputError, ParameterError
from customer_segments.tasks.methods import chaid
from customer_segments.tasks.methods import propensity as model
from customer_segments.tasks.methods.chaid import bin_edges, chaid_table, rule_words
from customer_segments.tasks.methods.propensity import decile_of, decile_table, gains_chart, snapshot_dates
from customer_segments.tasks.segmentation.orders import orders
from customer_segments.tasks.methods import rfm as rfm_module
from customer_segments.tasks.methods.rfm import load_rfm_segments, rfm_heatmap, rfm_profile, segment_grid

CUTOFF = pd.Timestamp("2011-12-01")
HORIZON = DEFAULTS.horizon  # the run's default, declared with the propensity stage


# The tests describe clean invoice lines, as people read them; the per-customer methods read the
# orders the pipeline makes of them (one row per invoice), so each call goes through `orders`.


def propensity(clean, cutoff, horizon=HORIZON):
    return model.propensity(orders(clean), cutoff, horizon)


def propensity_facts(clean, scores, deciles, cutoff, horizon=HORIZON):
    return model.propensity_facts(orders(clean), scores, deciles, cutoff, horizon)


def repurchase_table(clean, cutoff, horizon=HORIZON):
    return chaid.repurchase_table(orders(clean), cutoff, horizon)


def rfm_scores(clean, cutoff, segments):
    return rfm_module.rfm_scores(orders(clean), cutoff, segments)


def snapshot(clean, at, horizon_months=None, **given):
    return model.snapshot(orders(clean), at, horizon_months, **given)


def customer_country(clean):
    return chaid.customer_country(orders(clean))


def chaid_segments(table, target, **given):
    sizes = dict(max_depth=DEFAULTS.chaid_max_depth, min_parent_node_size=DEFAULTS.chaid_min_parent,
                 min_child_node_size=DEFAULTS.chaid_min_child)
    return chaid.chaid_segments(table, target, **{**sizes, **given})
REAL_PARQUET = Path(__file__).resolve().parents[2] / "shared" / "data" / "online_retail.parquet"
COLUMNS = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]


def lines(rows) -> pd.DataFrame:
    """Clean invoice lines from (InvoiceNo, CustomerID, date, Sales[, Country]) with Quantity 1."""
    frame = pd.DataFrame(
        [(inv, "85123A", "ITEM", 1, date, sales, cust, rest[0] if rest else "United Kingdom")
         for inv, cust, date, sales, *rest in rows],
        columns=COLUMNS,
    )
    frame["InvoiceDate"] = pd.to_datetime(frame["InvoiceDate"], format="ISO8601").astype("datetime64[ns]")
    frame["CustomerID"] = frame["CustomerID"].astype(str)
    frame["Sales"] = frame["Quantity"] * frame["UnitPrice"]
    return frame


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# RFM on ten customers. Days are counted to the cutoff 2011-12-01 00:00 and floored:
#   customer  last invoice         recency  frequency  monetary
#   12001     2011-11-30 18:00     0        5          200+100+100+50+50 = 500
#   12002     2011-11-29 12:00     1        1          20   (1 day 12 h -> 1)
#   12003     2011-11-25           6        3          300
#   12004     2011-11-20           11       2          60+40 = 100
#   12005     2011-11-20           11       4          100+50+50+50 = 250
#   12006     2011-09-01           91       1          40   (Sep 30 + Oct 31 + Nov 30)
#   12007     2011-06-01           183      2          25+15 = 40
#   12008     2011-03-01           275      6          500+5*100 = 1000
#   12009     2011-01-01           334      1          10
#   12010     2010-12-15           351      1          15
# Score = ceil(5 * rank / 10) = ceil(rank / 2); equal values ranked in CustomerID order.
# --------------------------------------------------------------------------------------------
RFM_LINES = lines([
    ("A1", "12001", "2011-11-30 18:00", 100.0), ("A1", "12001", "2011-11-30 18:00", 100.0),  # one invoice, two lines
    ("A2", "12001", "2011-11-01", 100.0), ("A3", "12001", "2011-10-01", 100.0),
    ("A4", "12001", "2011-08-01", 50.0), ("A5", "12001", "2011-05-01", 50.0),
    ("B1", "12002", "2011-11-29 12:00", 20.0),
    ("C1", "12003", "2011-11-25", 100.0), ("C2", "12003", "2011-09-10", 100.0), ("C3", "12003", "2011-02-01", 100.0),
    ("D1", "12004", "2011-11-20", 60.0), ("D2", "12004", "2011-07-01", 40.0),
    ("E1", "12005", "2011-11-20", 100.0), ("E2", "12005", "2011-10-01", 50.0),
    ("E3", "12005", "2011-06-01", 50.0), ("E4", "12005", "2011-01-10", 50.0),
    ("F1", "12006", "2011-09-01", 40.0),
    ("G1", "12007", "2011-06-01", 25.0), ("G2", "12007", "2011-02-01", 15.0),
    ("H1", "12008", "2011-03-01", 500.0), ("H2", "12008", "2011-02-15", 100.0), ("H3", "12008", "2011-02-01", 100.0),
    ("H4", "12008", "2011-01-15", 100.0), ("H5", "12008", "2011-01-05", 100.0), ("H6", "12008", "2010-12-20", 100.0),
    ("I1", "12009", "2011-01-01", 10.0),
    ("J1", "12010", "2010-12-15", 15.0),
])


@pytest.fixture(scope="module")
def segments() -> pd.DataFrame:
    return load_rfm_segments()


@pytest.fixture(scope="module")
def rfm(segments) -> pd.DataFrame:
    # A line dated exactly at the cutoff is ignored (clean_invoices never passes one on).
    late = lines([("Z1", "12010", "2011-12-01 00:00", 9999.0)])
    return rfm_scores(pd.concat([RFM_LINES, late], ignore_index=True), CUTOFF, segments)


def test_rfm_values_per_customer(rfm):
    assert rfm["CustomerID"].tolist() == [f"120{i:02d}" for i in range(1, 11)]
    assert rfm["recency_days"].tolist() == [0, 1, 6, 11, 11, 91, 183, 275, 334, 351]
    assert rfm["frequency"].tolist() == [5, 1, 3, 2, 4, 1, 2, 6, 1, 1]
    assert rfm["monetary"].tolist() == pytest.approx([500, 20, 300, 100, 250, 40, 40, 1000, 10, 15])
    assert rfm[["recency_days", "frequency", "R", "F", "M"]].dtypes.eq("int64").all()


def test_rfm_quintile_scores_with_ties_in_customer_order(rfm):
    # R ranks -recency ascending: 12010 1, 12009 2, 12008 3, 12007 4, 12006 5, then the tie at
    # 11 days: 12004 rank 6 (R 3) before 12005 rank 7 (R 4); 12003 8, 12002 9, 12001 10.
    assert rfm["R"].tolist() == [5, 5, 4, 3, 4, 3, 2, 2, 1, 1]
    # F: frequency 1 x4 in id order 12002 1, 12006 2, 12009 3, 12010 4 -> F 1, 1, 2, 2 (the tie
    # straddles a quintile edge); 2 x2: 12004 5, 12007 6 -> 3, 3; 12003 7 -> 4; 12005 8 -> 4;
    # 12001 9 -> 5; 12008 10 -> 5.
    assert rfm["F"].tolist() == [5, 1, 4, 3, 4, 1, 3, 5, 2, 2]
    # M: 10 (12009) 1, 15 (12010) 2, 20 (12002) 3, 40 tie: 12006 4 (M 2) before 12007 5 (M 3),
    # 100 (12004) 6, 250 (12005) 7, 300 (12003) 8, 500 (12001) 9, 1000 (12008) 10.
    assert rfm["M"].tolist() == [5, 2, 4, 3, 4, 2, 3, 5, 1, 1]
    assert rfm["RFM"].tolist() == ["555", "512", "444", "333", "444", "312", "233", "255", "121", "121"]


def test_rfm_segment_names(rfm):
    assert rfm["rfm_segment"].tolist() == [
        "Champions",        # R5 F5
        "New Customers",    # R5 F1
        "Champions",        # R4 F4
        "Need Attention",   # R3 F3
        "Champions",        # R4 F4
        "Promising",        # R3 F1
        "Need Attention",   # R2 F3
        "At Risk",          # R2 F5
        "Hibernating",      # R1 F2
        "Hibernating",      # R1 F2
    ]


def test_every_score_pair_has_a_segment_in_the_packaged_table(segments):
    grid = segment_grid(segments)  # raises if any (R, F) matches no row
    assert grid.shape == (5, 5) and all(isinstance(name, str) and name for name in grid.ravel())
    assert set(grid.ravel()) == set(segments["segment"])  # and no row is shadowed entirely
    # The map as the table's row order resolves the overlapping ranges (rows R1..R5, columns F1..F5).
    assert grid.tolist() == [
        ["Lost", "Hibernating", "At Risk", "Can't Lose Them", "Can't Lose Them"],
        ["Hibernating", "Hibernating", "Need Attention", "At Risk", "At Risk"],
        ["Promising", "About To Sleep", "Need Attention", "Loyal Customers", "Loyal Customers"],
        ["New Customers", "Potential Loyalist", "Potential Loyalist", "Champions", "Champions"],
        ["New Customers", "Potential Loyalist", "Potential Loyalist", "Champions", "Champions"],
    ]


def test_segment_table_with_a_gap_is_refused(segments, tmp_path):
    # R1 F1 lies only in Lost and Hibernating; every other pair is still covered by some row.
    gappy = segments[~segments["segment"].isin(["Lost", "Hibernating"])]
    with pytest.raises(ParameterError, match=r"pairs without a segment: R1F1\.$"):
        segment_grid(gappy)
    path = tmp_path / "rfm_segments.csv"
    gappy.to_csv(path, index=False)
    with pytest.raises(InputError, match="R1F1"):
        load_rfm_segments(path)


def test_rfm_profile_against_kmeans_segments(rfm):
    labels = pd.DataFrame({"CustomerID": rfm["CustomerID"]})
    labels["segment"] = labels["CustomerID"].isin(["12001", "12003", "12005", "12008"]).map({True: 0, False: 1})
    labels["segment_name"] = labels["segment"].map({0: "High", 1: "Low"})
    labels["segment_id"] = labels["segment"].map({0: "s0", 1: "s1"})
    profile = rfm_profile(rfm, labels.iloc[::-1])  # input order does not matter
    assert profile.columns.tolist() == ["rfm_segment", "segment", "segment_name", "segment_id",
                                        "customers", "share_of_segment", "mean_monetary"]
    # Segment 0: Champions 12001, 12003, 12005 (3/4, mean (500+300+250)/3 = 350); At Risk 12008.
    # Segment 1 (6): Hibernating 12009, 12010 (2/6, mean 12.5); Need Attention 12004, 12007
    # (2/6, mean 70); New Customers 12002 (1/6, 20); Promising 12006 (1/6, 40).
    assert profile["rfm_segment"].tolist() == ["Champions", "At Risk", "Hibernating", "Need Attention",
                                               "New Customers", "Promising"]
    assert profile["customers"].tolist() == [3, 1, 2, 2, 1, 1]
    assert profile["share_of_segment"].tolist() == pytest.approx([0.75, 0.25, 2 / 6, 2 / 6, 1 / 6, 1 / 6])
    assert profile["mean_monetary"].tolist() == pytest.approx([350, 1000, 12.5, 70, 20, 40])


def test_rfm_heatmap_is_a_figure(rfm):
    fig = rfm_heatmap(rfm)
    ax = fig.axes[0]
    assert fig.get_size_inches().tolist() == [8, 6]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["5", "4", "3", "2", "1"]
    # Eight occupied cells, each annotated with its segment, count and mean monetary:
    # R4 F4 holds 12003 and 12005, mean (300 + 250) / 2 = 275.
    cells = [t.get_text() for t in ax.texts]
    assert len(cells) == 8 and "Champions\n2 customers\nmean 275" in cells


# --------------------------------------------------------------------------------------------
# Repurchase propensity. Cutoff 2011-12-01, horizon 3: T_fit = 2011-06-01, T_train = 2011-09-01.
# --------------------------------------------------------------------------------------------
def synthetic_lines(customers: int = 400, seed: int = 0, start: str = "2010-12-01") -> pd.DataFrame:
    """Half the customers order ~1.5 times a month, the other half ~0.08 times, all year long.

    The frequent half almost surely orders again within three months (1 - e^-4.5 = 0.99), the
    rare half seldom (1 - e^-0.24 = 0.21): frequency and recency carry a strong planted signal.
    """
    rng = np.random.RandomState(seed)
    ids = np.arange(customers)
    rate = np.where(ids % 2 == 0, 1.5, 0.08)  # orders per month
    begin = pd.Timestamp(start)
    seconds = (CUTOFF - begin).total_seconds()
    orders = rng.poisson(rate * seconds / (30.44 * 86400))
    owner = np.repeat(ids, orders)
    dates = begin + pd.to_timedelta(np.floor(rng.uniform(0, seconds, len(owner))), unit="s")
    return lines(zip([f"S{n:06d}" for n in range(len(owner))], [f"{15000 + c}" for c in owner], dates,
                     np.round(rng.uniform(5, 200, len(owner)), 2)))


def test_snapshot_dates_and_windows():
    t_fit, t_train = snapshot_dates(CUTOFF, 3)
    assert (t_fit, t_train) == (pd.Timestamp("2011-06-01"), pd.Timestamp("2011-09-01"))
    planted = lines([
        ("a1", "A", "2011-08-31 23:59", 10.0), ("a2", "A", "2011-09-01 00:00", 1000.0),   # label 1
        ("b1", "B", "2011-07-01", 20.0), ("b2", "B", "2011-12-01 00:00", 5000.0),         # on the cutoff: label 0
        ("c1", "C", "2011-10-15", 30.0),                                                  # no history before T_train
        ("d1", "D", "2011-05-01", 40.0), ("d2", "D", "2011-11-30 23:59:59", 1.0),         # last second: label 1
    ])
    train = snapshot(planted, t_train, label_end=CUTOFF)
    # Features only from lines before T_train: A has one order of 10, one minute before T_train
    # (0 days); B 20, Jul 1 -> Sep 1 = 31 + 31 = 62 days; D 40, May 1 -> Sep 1 = 31+30+31+31 = 123.
    assert train["CustomerID"].tolist() == ["A", "B", "D"]
    assert train["recency_days"].tolist() == [0, 62, 123]
    assert train["frequency"].tolist() == [1, 1, 1]
    assert train["monetary"].tolist() == [10.0, 20.0, 40.0]
    assert train["TotalSales"].equals(train["monetary"]) and train["OrderCount"].equals(train["frequency"])
    # Labels only from lines in [T_train, cutoff).
    assert train["label"].tolist() == [1, 0, 1]
    # With a horizon instead of an end date the window is [T, T + 3 months): the same here.
    pd.testing.assert_frame_equal(snapshot(planted, t_train, 3), train)
    # The scoring snapshot has no label (its future is unknown).
    assert "label" not in snapshot(planted, CUTOFF).columns


def test_propensity_labels_come_from_the_training_window_only():
    planted = lines([
        ("a1", "A", "2011-08-31 23:59", 10.0), ("a2", "A", "2011-09-01 00:00", 1000.0),
        ("b1", "B", "2011-07-01", 20.0),
        ("c1", "C", "2011-10-15", 30.0),
    ])
    scores, _, _ = propensity(pd.concat([synthetic_lines(), planted], ignore_index=True), CUTOFF)
    by_id = scores.set_index("CustomerID")
    assert by_id.loc["A", "repurchased"] == 1 and by_id.loc["B", "repurchased"] == 0
    assert pd.isna(by_id.loc["C", "repurchased"])  # first order after T_train: scored, not trained on
    assert scores["CustomerID"].is_monotonic_increasing
    assert scores["probability"].between(0, 1).all()
    assert set(scores["decile"]) == set(range(1, 11))
    # Decile 1 holds the highest probabilities.
    assert scores.groupby("decile")["probability"].min().is_monotonic_decreasing


def test_nothing_on_or_after_the_cutoff_changes_any_output():
    clean = synthetic_lines()
    rng = np.random.RandomState(1)
    existing = clean["CustomerID"].drop_duplicates().sample(150, random_state=2).tolist()
    future = lines(
        [(f"F{i:05d}", cust, CUTOFF + pd.Timedelta(days=int(d)), 50.0)
         for i, (cust, d) in enumerate(zip(existing, rng.randint(0, 90, len(existing))))]
        + [("F90000", existing[0], CUTOFF, 999.0)]                              # exactly on the cutoff
        + [(f"N{i:05d}", f"9{i:04d}", CUTOFF + pd.Timedelta(days=i), 20.0) for i in range(60)]  # new customers
    )
    leaked = pd.concat([clean, future], ignore_index=True).sample(frac=1, random_state=3)  # shuffled too
    leaked = leaked.sort_values("InvoiceDate", kind="stable").reset_index(drop=True)
    clean_sorted = clean.sort_values("InvoiceDate", kind="stable").reset_index(drop=True)
    base, with_future = propensity(clean_sorted, CUTOFF), propensity(leaked, CUTOFF)
    for a, b in zip(base, with_future):
        assert parquet_bytes(a) == parquet_bytes(b)
    assert propensity_facts(clean_sorted, *base[:2], CUTOFF) == propensity_facts(leaked, *with_future[:2], CUTOFF)
    pd.testing.assert_frame_equal(repurchase_table(clean_sorted, CUTOFF), repurchase_table(leaked, CUTOFF))


def test_same_input_same_output_bytes():
    clean = synthetic_lines(seed=5)
    first, second = propensity(clean, CUTOFF), propensity(clean.copy(), CUTOFF)
    assert [parquet_bytes(f) for f in first] == [parquet_bytes(f) for f in second]


def test_planted_signal_is_found_on_the_holdout():
    clean = synthetic_lines()
    scores, deciles, coefficients = propensity(clean, CUTOFF)
    facts = propensity_facts(clean, scores, deciles, CUTOFF)
    assert facts["note"] is None
    assert facts["roc_auc"] > 0.8
    assert facts["top_decile_lift"] > 1.3
    assert (facts["T_fit"], facts["T_train"]) == ("2011-06-01T00:00:00", "2011-09-01T00:00:00")
    assert facts["holdout_customers"] == facts["train_customers"] == int(scores["repurchased"].notna().sum())
    assert facts["holdout_responders"] == facts["train_responders"] == int(scores["repurchased"].sum())
    # Frequent buyers come back: frequency's coefficient is the largest, and positive.
    coefficients = coefficients.set_index("feature")
    assert coefficients.index.tolist()[-1] == "(intercept)"
    assert coefficients["coefficient"].drop("(intercept)").idxmax() == "log1p(frequency)"
    assert np.allclose(coefficients["odds_ratio"], np.exp(coefficients["coefficient"]))
    assert len(gains_chart(deciles).axes) == 2
    # The snapshot sizes the model noted while training are those recounted from the orders.
    assert scores.attrs["snapshots"]["fit_customers"] > 0
    stored = scores.copy()
    stored.attrs = {}
    assert propensity_facts(clean, stored, deciles, CUTOFF) == facts


def test_too_little_history_for_a_holdout_is_reported_not_hidden():
    # Every customer's first order is after T_fit (2011-06-01): the T_fit snapshot is empty.
    clean = synthetic_lines(start="2011-06-15")
    scores, deciles, _ = propensity(clean, CUTOFF)
    facts = propensity_facts(clean, scores, deciles, CUTOFF)
    assert deciles.empty and list(deciles.columns) == ["decile", "customers", "responders", "response_rate",
                                                        "lift", "cumulative_responders", "cumulative_gain"]
    assert facts["roc_auc"] is None and facts["top_decile_lift"] is None and facts["fit_customers"] == 0
    assert facts["note"] == "no holdout metrics: the T_fit (2011-06-01) snapshot has 0 customers (fewer than 50)"
    assert scores["holdout_probability"].isna().all() and scores["probability"].notna().all()
    assert len(gains_chart(deciles).axes) == 2


def test_a_training_snapshot_with_one_outcome_is_refused():
    # Nobody orders after T_train: there is nothing to learn "orders again" from.
    clean = synthetic_lines()
    clean = clean[clean["InvoiceDate"] < pd.Timestamp("2011-09-01")]
    with pytest.raises(ParameterError, match="did not order again"):
        propensity(clean, CUTOFF)


# --------------------------------------------------------------------------------------------
# Decile table arithmetic on 20 customers, two per decile.
# --------------------------------------------------------------------------------------------
def test_decile_table_arithmetic():
    # In descending probability: responders per decile 2,1,1,0,1,0,0,0,0,1 -> 6 of 20, rate 0.3.
    label_by_rank = np.array([1, 1, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    probability_by_rank = np.linspace(0.95, 0.0, 20)
    shuffle = np.random.RandomState(0).permutation(20)  # the table must not depend on row order
    table = decile_table(probability_by_rank[shuffle], label_by_rank[shuffle])
    assert table["customers"].tolist() == [2] * 10 and table["customers"].sum() == 20
    assert table["responders"].tolist() == [2, 1, 1, 0, 1, 0, 0, 0, 0, 1]
    assert table["response_rate"].tolist() == pytest.approx([1, .5, .5, 0, .5, 0, 0, 0, 0, .5])
    # lift = response rate / 0.3
    assert table["lift"].tolist() == pytest.approx([10 / 3, 5 / 3, 5 / 3, 0, 5 / 3, 0, 0, 0, 0, 5 / 3])
    assert table["cumulative_responders"].tolist() == [2, 3, 4, 4, 5, 5, 5, 5, 5, 6]
    assert table["cumulative_gain"].tolist() == pytest.approx([2 / 6, 3 / 6, 4 / 6, 4 / 6, 5 / 6, 5 / 6, 5 / 6, 5 / 6, 5 / 6, 1])


def test_equal_probabilities_are_split_by_row_order():
    # -p ranked "first": 0.9 -> 1, 0.5 (row 0) -> 2, 0.5 (row 2) -> 3, 0.1 -> 4; decile = ceil(10 * pos / 4).
    assert decile_of(np.array([0.5, 0.9, 0.5, 0.1])).tolist() == [5, 3, 8, 10]


# --------------------------------------------------------------------------------------------
# CHAID
# --------------------------------------------------------------------------------------------
def planted_chaid_table(seed: int = 0) -> pd.DataFrame:
    """2,000 customers; response 80 % for Country = France with frequency >= 5, else 5 %.

    Countries cycle through four, frequency through 1..10 (200 customers each), so the
    frequency quintile edges are 3, 5, 7, 9 (np.quantile 2.8, 4.6, 6.4, 8.2, rounded up) and
    "frequency >= 5" is a bin boundary. France with frequency >= 5: 500 * 6/10 = 300 customers.
    """
    rng = np.random.RandomState(seed)
    i = np.arange(2000)
    country = np.array(["United Kingdom", "France", "Germany", "Spain"])[i % 4]
    frequency = 1 + (i // 4) % 10
    planted = (country == "France") & (frequency >= 5)
    return pd.DataFrame({
        "CustomerID": [f"C{k:05d}" for k in i],
        "recency_days": rng.randint(0, 365, len(i)),
        "frequency": frequency,
        "monetary": np.round(rng.lognormal(6, 1, len(i)), 2),
        "Country": country,
        "responded": (rng.rand(len(i)) < np.where(planted, 0.8, 0.05)).astype("int64"),
    })


def test_chaid_finds_the_planted_rule():
    table = planted_chaid_table()
    assert bin_edges(table["frequency"]).tolist() == [3, 5, 7, 9]
    segments, assignment = chaid_segments(table, "responded")
    top = segments.iloc[0]
    assert top["chaid_segment"] == 0
    assert top["rule"] == "Country = France and frequency ≥ 5"
    assert top["customers"] == 300 and top["depth"] == 2
    assert top["response_rate"] == pytest.approx(0.8, abs=0.05)
    assert segments["response_rate"].is_monotonic_decreasing
    # The assignment comes from the tree's member indices and agrees with the rule and counts.
    planted = (table["Country"] == "France") & (table["frequency"] >= 5)
    assert assignment["CustomerID"].tolist() == table["CustomerID"].tolist()
    assert (assignment["chaid_segment"].eq(0) == planted).all()
    counts = assignment["chaid_segment"].value_counts().sort_index()
    assert counts.tolist() == segments.sort_values("chaid_segment")["customers"].tolist()
    responders = table.groupby(assignment["chaid_segment"])["responded"].sum()
    assert responders.tolist() == segments.sort_values("chaid_segment")["responders"].tolist()


def test_rule_merges_repeated_conditions_into_one_range():
    edges = {"frequency": np.array([2.0, 3.0, 5.0, 9.0]), "recency_days": np.array([30.0, 90.0])}
    every = {"France", "Germany", "Spain", "United Kingdom"}
    # frequency codes {2, 3, 4} then {2, 3} -> {2, 3} = [edges[1], edges[3]) = [3, 9).
    conditions = [("frequency", [2, 3, 4]), ("Country", ["France", "Germany"]), ("frequency", [2, 3])]
    assert rule_words(conditions, edges, every) == "3 ≤ frequency < 9 and Country in {France, Germany}"
    assert rule_words([("recency_days", [0]), ("Country", ["Spain"])], edges, every) == \
        "recency < 30 days and Country = Spain"
    assert rule_words([("Country", ["France", "Germany", "Spain"])], edges, every) == "Country ≠ United Kingdom"
    assert rule_words([], edges, every) == "all customers"


def test_chaid_table_and_country():
    clean = lines([
        ("1", "A", "2011-01-01", 1.0, "France"), ("1", "A", "2011-01-01", 1.0, "France"),
        ("2", "A", "2011-02-01", 1.0, "Germany"),
        ("3", "B", "2011-01-01", 1.0, "Spain"), ("4", "B", "2011-02-01", 1.0, "EIRE"),  # tie: alphabetical
    ])
    countries = customer_country(clean)
    assert countries.to_dict("list") == {"CustomerID": ["A", "B"], "Country": ["France", "EIRE"]}
    features = pd.DataFrame({"CustomerID": ["B", "A", "C"], "recency_days": [1, 2, 3],
                             "frequency": [1, 2, 3], "monetary": [1.0, 2.0, 3.0]})
    target = pd.Series([1, 0, np.nan], index=["A", "B", "C"], name="high_value")
    table = chaid_table(features, target, countries)
    assert table.columns.tolist() == ["CustomerID", "recency_days", "frequency", "monetary", "Country", "high_value"]
    assert table["CustomerID"].tolist() == ["A", "B"]  # C has no target value
    assert table["high_value"].tolist() == [1, 0]


# --------------------------------------------------------------------------------------------
# The real UCI data (cutoff 2011-12-01): observed facts, recorded.
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_clean() -> pd.DataFrame:
    if not REAL_PARQUET.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{REAL_PARQUET} is missing; CI always has ../shared/data beside the clone")
        pytest.skip(f"{REAL_PARQUET} is absent outside CI")
    from customer_segments.tasks.segmentation.cleaning import clean_invoices
    from customer_segments.tasks.inputs.readers import read_invoices

    return clean_invoices(read_invoices(REAL_PARQUET), "2011-12-01")


@pytest.mark.real_data
def test_real_rfm_segments(real_clean, segments):
    rfm = rfm_scores(real_clean, CUTOFF, segments)
    assert len(rfm) == 4_298
    assert rfm[["R", "F", "M"]].apply(lambda s: s.value_counts().sort_index().tolist()).to_dict("list") == {
        "R": [859, 860, 859, 860, 860], "F": [859, 860, 859, 860, 860], "M": [859, 860, 859, 860, 860],
    }
    counts = rfm["rfm_segment"].value_counts().to_dict()
    assert counts == {
        "Champions": 1096, "Hibernating": 684, "Potential Loyalist": 475, "Need Attention": 432,
        "At Risk": 373, "Lost": 354, "Loyal Customers": 325, "About To Sleep": 183, "Promising": 162,
        "New Customers": 149, "Can't Lose Them": 65,
    }
    assert sum(counts.values()) == 4_298


@pytest.mark.real_data
def test_real_lifetime_value_per_rfm_segment_uses_the_rfm_stages_segments(real_clean, segments):
    """The lifetime value scores RFM segments itself (so it need not wait for the rfm stage): each
    customer's must be the one the rfm stage gives, and the value per RFM segment must count them."""
    from customer_segments.tasks.methods import clv

    made = orders(real_clean)
    labels = pd.DataFrame({"CustomerID": sorted(made["CustomerID"].unique()), "segment": 0, "segment_id": "S1",
                           "segment_name": "All"})
    scores = rfm_module.rfm_stage(made, labels, cutoff=CUTOFF, rfm_segments=segments.to_dict("records"))[0]
    customers, values, *_ = clv.customer_lifetime_value(
        made, labels, cutoff=pd.Timestamp(CUTOFF), clv_time_unit="D", clv_horizon=12, discount_rate=0.10,
        rfm_segments=segments.to_dict("records"))
    joined = customers[["CustomerID", "rfm_segment"]].merge(scores[["CustomerID", "rfm_segment"]], on="CustomerID",
                                                            suffixes=("", "_rfm"), validate="one_to_one")
    assert len(joined) == len(customers) == 4_298
    assert (joined["rfm_segment"] == joined["rfm_segment_rfm"]).all()
    per_rfm = values[values["grouping"] == "rfm"].set_index("segment")["customers"].to_dict()
    assert per_rfm == scores["rfm_segment"].value_counts().to_dict()
    # Without the table (a direct call), the value is grouped by k-means segment only.
    _, alone, *_ = clv.customer_lifetime_value(made, labels, cutoff=pd.Timestamp(CUTOFF), clv_time_unit="D",
                                               clv_horizon=12, discount_rate=0.10)
    assert set(alone["grouping"]) == {"kmeans"}


@pytest.mark.real_data
def test_real_propensity(real_clean):
    scores, deciles, coefficients = propensity(real_clean, CUTOFF, horizon=3)
    facts = propensity_facts(real_clean, scores, deciles, CUTOFF, 3)
    assert len(scores) == 4_298 and facts["note"] is None
    assert (facts["fit_customers"], facts["fit_responders"]) == (2_718, 1_349)
    assert (facts["train_customers"], facts["train_responders"]) == (3_317, 1_871)
    assert facts["roc_auc"] == pytest.approx(0.7404, abs=0.02) and facts["roc_auc"] > 0.65
    assert facts["top_decile_lift"] == pytest.approx(1.698, abs=0.05)
    assert deciles["customers"].sum() == facts["holdout_customers"] == 3_317
    assert deciles["cumulative_gain"].iloc[-1] == pytest.approx(1.0)
    overall = deciles["responders"].sum() / deciles["customers"].sum()
    assert deciles["lift"].tolist() == pytest.approx((deciles["response_rate"] / overall).tolist())
    assert coefficients["feature"].tolist() == [
        "recency_days", "log1p(frequency)", "log1p(monetary)", "log1p(AvgOrderValue)", "(intercept)"]


@pytest.mark.real_data
def test_real_chaid_on_repurchase(real_clean):
    table = repurchase_table(real_clean, CUTOFF, 3)
    segments, assignment = chaid_segments(table, "repurchased")
    assert len(segments) >= 2
    assert segments["customers"].sum() == len(table) == len(assignment) == 3_317
    assert segments["responders"].sum() == table["repurchased"].sum() == 1_871
    assert len(segments) == 13
    top = segments.iloc[0]
    assert top["rule"] == "frequency ≥ 4 and monetary ≥ 1,600 and recency < 50 days"
    assert (top["customers"], top["responders"]) == (462, 429)
