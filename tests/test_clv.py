"""Lifetime value and churn risk: the summary convention, the published worked example, planted
parameters recovered, the numerics where the formulas turn negative, and the data that cannot
support the models (a paragraph in the run, not a failure)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from support import SAMPLE, last_json, run_cli

from customer_segments.tasks.methods import clv

CDNOW = np.array([0.243, 4.414, 0.793, 2.426])   # Fader, Hardie & Lee (2005), BG/NBD on CDNOW


def orders_of(rows) -> pd.DataFrame:
    """Orders (customer, day, value) as the orders stage gives them."""
    frame = pd.DataFrame(rows, columns=["CustomerID", "InvoiceDate", "value"])
    frame["InvoiceDate"] = pd.to_datetime(frame["InvoiceDate"])
    frame.insert(0, "InvoiceNo", [f"I{i}" for i in range(len(frame))])
    return frame


def labels_of(customers) -> pd.DataFrame:
    return pd.DataFrame({"CustomerID": list(customers), "segment": 0, "segment_id": "S1", "segment_name": "All"})


def test_the_summary_counts_purchase_days_as_the_field_does():
    orders = orders_of([
        ("A", "2011-01-03 09:00", 10.0), ("A", "2011-01-03 15:00", 5.0),   # one day: one occasion of 15
        ("A", "2011-01-10 10:00", 20.0), ("A", "2011-01-24 10:00", 40.0),
        ("B", "2011-01-20 10:00", 7.0),
        ("C", "2011-02-01 10:00", 1.0),                                     # after the end: not counted
    ])
    table = clv.summary(orders, pd.Timestamp("2011-01-31"), "D").set_index("CustomerID")
    assert list(table.index) == ["A", "B"]
    assert table.loc["A", "frequency"] == 2 and table.loc["B", "frequency"] == 0
    assert table.loc["A", "recency"] == 21 and table.loc["A", "T"] == 28
    assert table.loc["A", "monetary"] == 30.0               # the mean of the repeat days: (20 + 40) / 2
    assert table.loc["A", "average"] == 25.0                # all days: (15 + 20 + 40) / 3
    assert table.loc["B", "recency"] == 0 and table.loc["B", "T"] == 11 and table.loc["B", "monetary"] == 0
    weeks = clv.summary(orders, pd.Timestamp("2011-01-31"), "W").set_index("CustomerID")
    assert weeks.loc["A", "T"] == pytest.approx(4.0) and weeks.loc["A", "recency"] == pytest.approx(3.0)


def test_the_papers_worked_example_is_reproduced():
    # Fader, Hardie & Lee (2005): a customer with 2 repeat purchases, the last at week 30.43 of
    # 38.86, is expected to make 1.226 purchases in the next 39 weeks.
    x, t_x, T = np.array([2.0]), np.array([30.43]), np.array([38.86])
    assert clv.expected_purchases(CDNOW, 39.0, x, t_x, T)[0] == pytest.approx(1.226, abs=5e-4)
    # Without repeat purchases a customer is alive for sure; long silence makes them likely gone.
    assert clv.p_alive(CDNOW, np.array([0.0]), np.array([0.0]), np.array([30.0]))[0] == 1.0
    recent, silent = clv.p_alive(CDNOW, np.array([5.0, 5.0]), np.array([38.0, 5.0]), np.array([39.0, 39.0]))
    assert recent > 0.8 > 0.2 > silent


@pytest.mark.parametrize("a_plus_b", [0.05, 0.4, 0.999])
def test_expected_purchases_stay_finite_and_grow_where_the_series_turns_negative(a_plus_b):
    # With a + b + x < 1 the hypergeometric function in the formula is negative: it must be
    # scaled with its sign (a logarithm of it gave no value at all to one customer in six).
    a, b = a_plus_b * 0.03, a_plus_b * 0.97
    params = np.array([1.0, 40.0, a, b])
    x, t_x, T = np.zeros(3), np.zeros(3), np.array([10.0, 120.0, 325.0])
    horizons = [30.4, 91.3, 182.6, 365.25, 730.5]
    values = np.array([clv.expected_purchases(params, t, x, t_x, T) for t in horizons])
    assert np.all(np.isfinite(values)) and np.all(values > 0)
    assert np.all(np.diff(values, axis=0) > 0)
    # Continuous across a + b = 1, where the function's third argument changes sign.
    below = clv.expected_purchases(np.array([1.0, 40.0, 0.03, 0.97 - 1e-7]), 365.25, x, t_x, T)
    above = clv.expected_purchases(np.array([1.0, 40.0, 0.03, 0.97 + 1e-7]), 365.25, x, t_x, T)
    np.testing.assert_allclose(below, above, rtol=1e-4)


@pytest.mark.parametrize("params", [CDNOW, np.array([0.98, 39.3, 4.2e-4, 2281.0])])
def test_values_computed_once_per_distinct_purchase_count_are_each_customers_own_to_the_bit(params):
    # The special functions are computed once per distinct repeat-purchase count (and age) and
    # taken per customer: every customer's numbers must be those of the customer computed alone.
    rng = np.random.default_rng(3)
    x = rng.integers(0, 400, 600).astype("float64")
    T = rng.choice([1.0, 5.0, 30.0, 120.0, 365.0], 600)
    t_x = np.where(x > 0, T * rng.uniform(0.5, 1, 600), 0.0)
    m = rng.gamma(2.0, 20.0, 600)
    for t in (30.0, 365.0, 3650.0):
        together = clv.expected_purchases(params, t, x, t_x, T)
        alone = np.concatenate([clv.expected_purchases(params, t, x[i:i + 1], t_x[i:i + 1], T[i:i + 1])
                                for i in range(len(x))])
        assert np.array_equal(together, alone)
        assert np.all(np.isfinite(together))
    # Both branches were taken: the series overflows for some customers here, not for others.
    z = 365.0 / (params[1] + T + 365.0)
    from scipy.special import hyp2f1
    with np.errstate(all="ignore"):
        overflow = ~np.isfinite(hyp2f1(params[0] + x, params[3] + x, params[2] + params[3] + x - 1, z))
    assert 0 < overflow.sum() < len(x)
    ll, grad = clv.bgnbd_log_likelihood(params, x, t_x, T, gradient=True)
    for i in range(0, len(x), 37):
        ll_i, grad_i = clv.bgnbd_log_likelihood(params, x[i:i + 1], t_x[i:i + 1], T[i:i + 1], gradient=True)
        assert ll[i] == ll_i[0] and np.array_equal(grad[:, i], grad_i[:, 0])
    spend = np.array([6.25, 3.74, 15.44])
    repeat = x > 0
    ll, grad = clv.gamma_gamma_log_likelihood(spend, x[repeat], m[repeat], gradient=True)
    for i in range(0, int(repeat.sum()), 37):
        one = np.flatnonzero(repeat)[i:i + 1]
        ll_i, grad_i = clv.gamma_gamma_log_likelihood(spend, x[one], m[one], gradient=True)
        assert ll[i] == ll_i[0] and np.array_equal(grad[:, i], grad_i[:, 0])


def simulated_customers(params, customers: int, T: float, seed: int) -> pd.DataFrame:
    """Customers drawn from BG/NBD with known parameters (first purchase at 0, observed for T)."""
    r, alpha, a, b = params
    rng = np.random.default_rng(seed)
    rate = rng.gamma(r, 1 / alpha, customers)
    dropout = rng.beta(a, b, customers)
    frequency, recency = np.zeros(customers), np.zeros(customers)
    now, alive = np.zeros(customers), np.ones(customers, dtype=bool)
    while alive.any():
        now = np.where(alive, now + rng.exponential(1 / rate), now)
        alive &= now < T
        frequency += alive
        recency = np.where(alive, now, recency)
        alive &= rng.random(customers) >= dropout
    return pd.DataFrame({"CustomerID": np.arange(customers).astype(str), "frequency": frequency.astype("int64"),
                         "recency": recency, "T": np.full(customers, T)})


def test_bgnbd_recovers_planted_parameters():
    planted = np.array([0.8, 10.0, 0.9, 3.0])
    table = simulated_customers(planted, 20_000, 52.0, seed=7)
    fit = clv.fit_bgnbd(table)
    assert fit.converged and fit.covariance is not None
    # Within three standard errors of the planted values (the fit's own uncertainty, log scale).
    errors = np.abs(np.log(fit.values) - np.log(planted)) / np.sqrt(np.diag(fit.covariance))
    assert np.all(errors < 3), dict(zip(fit.names, fit.values))


def test_gamma_gamma_recovers_planted_parameters():
    p, q, v = 6.0, 4.0, 15.0
    rng = np.random.default_rng(11)
    customers = 20_000
    nu = rng.gamma(q, 1 / v, customers)                     # each customer's rate of spend
    x = rng.integers(1, 8, customers)
    values = rng.gamma(p, 1 / nu[:, None], (customers, 7))  # purchase values z ~ Gamma(p, nu)
    monetary = np.array([row[:n].mean() for row, n in zip(values, x)])
    fit = clv.fit_gamma_gamma(pd.DataFrame({"frequency": x, "monetary": monetary}))
    assert fit.converged
    np.testing.assert_allclose(fit.values, [p, q, v], rtol=0.1)


def test_lifetime_value_discounts_month_by_month():
    table = pd.DataFrame({"frequency": [3], "recency": [200.0], "T": [250.0], "monetary": [50.0], "average": [40.0]})
    params = np.array([1.0, 40.0, 0.5, 2.0])
    one, purchases = clv.lifetime_value(params, None, table, 1, 0.10, "D")
    month = clv.expected_purchases(params, clv.DAYS_PER_MONTH, *(table[c].to_numpy(float) for c in ("frequency", "recency", "T")))
    assert one[0] == pytest.approx(40.0 * month[0] / 1.10 ** (1 / 12))   # observed mean as spend, one month
    assert purchases[0] == pytest.approx(month[0])
    undiscounted, _ = clv.lifetime_value(params, None, table, 12, 0.0, "D")
    discounted, year = clv.lifetime_value(params, None, table, 12, 0.10, "D")
    assert undiscounted[0] == pytest.approx(40.0 * year[0])
    assert undiscounted[0] / 1.10 < discounted[0] < undiscounted[0]


def test_churn_risk_bands_use_the_documented_thresholds():
    alive = np.array([0.0, clv.HIGH_RISK - 1e-9, clv.HIGH_RISK, clv.MEDIUM_RISK - 1e-9, clv.MEDIUM_RISK, 1.0])
    assert clv.risk_band(alive).tolist() == ["high", "high", "medium", "medium", "low", "low"]


def run_stage(orders, cutoff="2011-12-01"):
    return clv.customer_lifetime_value(orders, labels_of(sorted(set(orders["CustomerID"]))), cutoff=pd.Timestamp(cutoff),
                                       clv_time_unit="D", clv_horizon=12, discount_rate=0.10)


def test_a_history_too_short_is_a_note_not_a_failure():
    orders = orders_of([("A", "2011-11-02", 10.0), ("A", "2011-11-20", 12.0), ("B", "2011-11-05", 9.0)])
    customers, segments, model, holdout, figures = run_stage(orders)
    assert customers.empty and segments.empty and holdout.empty and figures == {}
    note = model.loc[model["model"] == "note", "parameter"].iloc[0]
    assert "history before the cutoff is 1.0 months" in note and "too short" in note
    assert clv.clv_metrics({"clv_model": model}, {}) == {clv.NOT_RUN: note}


def test_customers_who_all_bought_once_are_a_note_not_a_failure():
    rows = [(f"C{i}", f"2011-{1 + i % 10:02d}-{1 + i % 27:02d}", 10.0 + i) for i in range(200)]
    customers, _, model, _, _ = run_stage(orders_of(rows))
    note = model.loc[model["model"] == "note", "parameter"].iloc[0]
    assert customers.empty and note.startswith("all 200 customers made a single purchase")


def test_a_fit_that_does_not_converge_says_what_it_reached_and_what_to_try():
    fit = clv.Fit(names=("r", "alpha", "a", "b"), values=np.array([0.25, 4.4, 1e-9, 3e5]), log_likelihood=-1.0,
                  covariance=None, converged=False, message="ABNORMAL_TERMINATION_IN_LNSRCH", customers=10)
    text = clv.not_converged(fit, "before the cutoff")
    assert "did not converge (ABNORMAL_TERMINATION_IN_LNSRCH" in text
    assert "a = 1e-09" in text and "b = 3e+05" in text and "--clv-time-unit" in text


def test_too_few_spenders_fall_back_to_observed_means_and_say_so():
    rng = np.random.default_rng(3)
    rows = []
    for i in range(300):   # many customers, but only 5 of them with repeat purchases
        days = pd.date_range("2011-01-03", periods=3 if i < 5 else 1, freq="17D") + pd.Timedelta(days=i % 200)
        rows += [(f"C{i:03d}", d, float(rng.uniform(5, 50))) for d in days]
    customers, _, model, _, _ = run_stage(orders_of(rows))
    note = model.loc[model["model"] == "spend_note", "parameter"].iloc[0]
    assert note.startswith("only 5 repeat customers with a positive purchase value")
    assert customers["clv"].notna().all() and (customers["clv"] > 0).all()


def test_a_short_history_through_the_command_line_completes_and_says_why_there_is_no_value(prefect_server, tmp_path):
    lines = pd.read_parquet(SAMPLE)
    short = tmp_path / "six_weeks.parquet"
    lines[lines["InvoiceDate"] >= "2011-10-20"].to_parquet(short)
    done = run_cli("run", "--input", str(short), "--artifacts", str(tmp_path / "artifacts"), "--json")
    assert done.returncode == 0, done.stderr
    assert "  clv: the history before the cutoff is 1.3 months: too short to fit the models" in done.stdout
    run_dir = Path(last_json(done.stdout)["run_dir"])
    assert pd.read_parquet(run_dir / "customer_value.parquet").empty
    customers = pd.read_parquet(run_dir / "customers.parquet")
    assert len(customers) == last_json(done.stdout)["customers"]
    assert customers["clv"].isna().all() and customers["churn_risk"].isna().all()   # the same columns, empty
    assert "too short to fit the models" in (run_dir / "report.html").read_text(encoding="utf-8")
