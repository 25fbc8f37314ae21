"""Customer lifetime value and churn risk: what each customer and segment is worth from here on.

The buy-till-you-die models of the field, fitted by maximum likelihood:

- **BG/NBD** (Fader, Hardie & Lee 2005, "Counting your customers the easy way"): while alive a
  customer buys at a Poisson rate (gamma-distributed across customers: r, alpha) and after each
  purchase drops out with a probability (beta-distributed: a, b). It gives each customer's
  probability of being alive and expected purchases over any horizon.
- **Gamma-Gamma** (Fader, Hardie & Lee 2005, "RFM and CLV"; Colombo & Jiang 1999): the value of
  a customer's purchases varies around their own mean, itself gamma-distributed across customers
  (p, q, v). It gives each customer's expected average purchase value, fitted on the repeat
  customers with a positive mean value.

The summary per customer follows the convention of the field: purchase occasions are distinct
purchase days; `frequency` is the number of repeat occasions, `recency` the time from the first
to the last occasion, `T` the time from the first occasion to the end of observation (the last
day before the cutoff), `monetary` the mean value of the repeat occasions; times in days, weeks
or months (`time_unit` D, W or M: 7 days a week, 365.25 / 12 days a month).

Lifetime value over the horizon is the sum, month by month, of the expected purchases in that
month times the expected purchase value, discounted monthly at the rate equivalent to the
annual `discount_rate` (as lifetimes' `customer_lifetime_value` does). A 90 % interval for each
segment's total comes from the fitted parameters' uncertainty: parameter sets drawn from the
normal approximation to the likelihood at its maximum (the inverse Hessian, on the parameters'
log scale) each price a seeded sample of the segment's customers, and the 5th and 95th
percentiles of those totals, relative to the fitted one, scale the segment's total.

The check on the data itself: the same models refitted with the last months held out (the
horizon, or a third of the history when that is shorter) predict each calibration customer's
repeat purchases in the holdout, compared with what they did (mean absolute error, and the total
predicted over the total observed), and by number of calibration purchases (the classic
calibration-versus-holdout chart).

Everything here is pure: the orders and the segments in, tables and figures out.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from customer_segments.tasks.methods.rfm import rfm_scores

STAGE = "clv"
TIME_UNITS = {"D": 1.0, "W": 7.0, "M": 365.25 / 12}      # days per unit
DAYS_PER_MONTH = 365.25 / 12
# Churn risk from the probability of being alive: below HIGH_RISK "high", below MEDIUM_RISK
# "medium", else "low". The one place these thresholds are defined.
HIGH_RISK, MEDIUM_RISK = 0.3, 0.7
RISK_BANDS = ("high", "medium", "low")
# Gamma-Gamma assumes a customer's purchase values do not depend on how often they buy.
CORRELATION_WARNING = 0.3
INTERVAL = (0.05, 0.95)
DRAWS = 100
SEED = 42
# Each draw prices at most this many customers of each segment (a seeded sample): the interval is
# about the parameters, and its relative width barely depends on which customers price it.
INTERVAL_SAMPLE = 200
FREQUENCY_GROUPS = 7                                      # the holdout chart: 0..6 and 7+
MIN_REPEAT_CUSTOMERS = 10
NOT_RUN = "clv_note"
# BFGS reports a line search that stopped short as a warning. maximum_likelihood runs three
# searches, keeps the best and judges its convergence itself (a fit that did not converge is said
# so in the manifest and the report), so scipy's note would only puzzle the person running a flow.
# Filtered once, here: catch_warnings() around each fit is not safe in stages running as threads.
LINE_SEARCH_NOTE = "The line search algorithm did not converge"
warnings.filterwarnings("ignore", message=LINE_SEARCH_NOTE, module=r"scipy\.optimize")


class ModelNotRun(Exception):
    """The data cannot support the models (too short a history, no repeat purchases): why, in words."""


# --- the summary per customer ---------------------------------------------------------------------


def occasions(orders: pd.DataFrame, end: pd.Timestamp | None = None) -> pd.DataFrame:
    """One row per customer and purchase day (orders before `end`), with the day's value."""
    if end is not None:
        orders = orders.loc[(orders["InvoiceDate"] < end).to_numpy()]
    days = pd.DataFrame({"CustomerID": orders["CustomerID"].to_numpy(),
                         "day": orders["InvoiceDate"].dt.normalize().to_numpy(),
                         "value": orders["value"].to_numpy()})
    return days.groupby(["CustomerID", "day"], sort=True).agg(value=("value", "sum")).reset_index()


def summary(orders: pd.DataFrame, observation_end: pd.Timestamp, time_unit: str = "D") -> pd.DataFrame:
    """Per customer (orders before the day after `observation_end`): frequency, recency, T, monetary."""
    end = pd.Timestamp(observation_end).normalize()
    days = occasions(orders, end + pd.Timedelta(days=1))
    if days.empty:
        return pd.DataFrame({"CustomerID": pd.Series(dtype="str"), "frequency": pd.Series(dtype="int64"),
                             "recency": pd.Series(dtype="float64"), "T": pd.Series(dtype="float64"),
                             "monetary": pd.Series(dtype="float64"), "average": pd.Series(dtype="float64")})
    grouped = days.groupby("CustomerID", sort=True)
    first, last = grouped["day"].min(), grouped["day"].max()
    count = grouped.size()
    first_value = grouped["value"].first()  # the days are sorted: the first day's value
    total = grouped["value"].sum()
    unit = TIME_UNITS[time_unit]
    frequency = (count - 1).astype("int64")
    repeat_total = total - first_value
    with np.errstate(invalid="ignore", divide="ignore"):
        monetary = np.where(frequency > 0, repeat_total / frequency.where(frequency > 0, 1), 0.0)
    return pd.DataFrame({
        "CustomerID": first.index.astype("str"),
        "frequency": frequency.to_numpy(),
        "recency": ((last - first).dt.days / unit).to_numpy(dtype="float64"),
        "T": ((end - first).dt.days / unit).to_numpy(dtype="float64"),
        "monetary": np.asarray(monetary, dtype="float64"),
        # The mean value of all the customer's purchase days: the spend estimate when the
        # Gamma-Gamma model cannot be fitted.
        "average": (total / count).to_numpy(dtype="float64"),
    })


# --- BG/NBD ---------------------------------------------------------------------------------------


def _gammaln(x):
    from scipy.special import gammaln

    return gammaln(x)


def by_value(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct values, each element's position among them). The models' special functions
    (log-gamma, digamma, the hypergeometric series) of a customer's repeat purchases take a few
    dozen distinct values over any number of customers: computed once per value and taken per
    customer, each element is the very number computed per customer, at a fraction of the cost."""
    return np.unique(values, return_inverse=True)


def bgnbd_log_likelihood(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray,
                         gradient: bool = False, x_values: tuple[np.ndarray, np.ndarray] | None = None):
    """Each customer's log-likelihood under BG/NBD (r, alpha, a, b); with `gradient`, also its
    derivatives in the four parameters (rows: r, alpha, a, b). `x_values` is `by_value(x)`, when
    the caller evaluates the same customers many times."""
    from scipy.special import digamma

    r, alpha, a, b = params
    distinct, at = x_values if x_values is not None else by_value(x)
    a1 = _gammaln(r + distinct)[at] - _gammaln(r) + r * np.log(alpha)
    a2 = _gammaln(a + b) + _gammaln(b + distinct)[at] - _gammaln(b) - _gammaln(a + b + distinct)[at]
    a3 = -(r + x) * np.log(alpha + T)
    a4 = np.log(a) - np.log(b + np.maximum(x, 1) - 1) - (r + x) * np.log(t_x + alpha)
    top = np.maximum(a3, a4)
    e3, e4 = np.exp(a3 - top), (x > 0) * np.exp(a4 - top)
    ll = a1 + a2 + top + np.log(e3 + e4)
    if not gradient:
        return ll
    w3, w4 = e3 / (e3 + e4), e4 / (e3 + e4)  # the two terms' shares of the likelihood
    dg_rx, dg_bx, dg_abx = digamma(r + distinct)[at], digamma(b + distinct)[at], digamma(a + b + distinct)[at]
    d_r = dg_rx - digamma(r) + np.log(alpha) - w3 * np.log(alpha + T) - w4 * np.log(t_x + alpha)
    d_alpha = r / alpha - w3 * (r + x) / (alpha + T) - w4 * (r + x) / (t_x + alpha)
    d_a = digamma(a + b) - dg_abx + w4 / a
    d_b = digamma(a + b) + dg_bx - digamma(b) - dg_abx - w4 / (b + np.maximum(x, 1) - 1)
    return ll, np.vstack([d_r, d_alpha, d_a, d_b])


def p_alive(params, x, t_x, T) -> np.ndarray:
    """P(alive | x, t_x, T): a customer without repeat purchases is alive for sure (BG/NBD)."""
    from scipy.special import expit

    r, alpha, a, b = params
    log_ratio = (r + x) * np.log((alpha + T) / (alpha + t_x)) + np.log(a / (b + np.maximum(x, 1) - 1))
    return np.where(x == 0, 1.0, expit(-log_ratio))


def by_pair(x: np.ndarray, T: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """((x, T) of each distinct pair, each customer's position among them): `by_value` for the
    hypergeometric series of expected purchases, a function of repeat purchases and age only."""
    xs, x_at = by_value(x)
    Ts, T_at = by_value(T)
    pair, at = np.unique(x_at.astype("int64") * len(Ts) + T_at, return_inverse=True)
    return (xs[pair // len(Ts)], Ts[pair % len(Ts)]), at


def expected_purchases(params, t, x, t_x, T, pairs=None) -> np.ndarray:
    """E[purchases in (T, T + t] | x, t_x, T] under BG/NBD. `pairs` is `by_pair(x, T)`, when the
    caller evaluates the same customers many times."""
    from scipy.special import hyp2f1

    r, alpha, a, b = params
    (x_pair, T_pair), at = pairs if pairs is not None else by_pair(x, T)
    ha, hb, hc = r + x_pair, b + x_pair, a + b + x_pair - 1
    z = t / (alpha + T_pair + t)
    log_scale = (r + x_pair) * np.log((alpha + T_pair) / (alpha + t + T_pair))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        hyp = hyp2f1(ha, hb, hc, z)
        # The function is negative where a + b + x < 1 (few purchases, dropout rates near 0 or 1),
        # so it is scaled with its sign; where the series overflows, Euler's transformation of the
        # same function, in logarithms.
        scaled = hyp * np.exp(log_scale)
        overflow = ~(np.isfinite(hyp) & np.isfinite(scaled))
        if overflow.any():
            ha, hb, hc, z, log_scale = (v[overflow] for v in (ha, hb, hc, z, log_scale))
            euler = hyp2f1(hc - ha, hc - hb, hc, z)
            scaled[overflow] = np.sign(euler) * np.exp(np.log(np.abs(euler)) + (hc - ha - hb) * np.log1p(-z)
                                                       + log_scale)
    scaled = scaled[at]
    first = (a + b + x - 1) / (a - 1)
    second = 1 - scaled
    alive_odds = 1 + (x > 0) * (a / (b + np.maximum(x, 1) - 1)) * ((alpha + T) / (alpha + t_x)) ** (r + x)
    return first * second / alive_odds


# --- Gamma-Gamma ----------------------------------------------------------------------------------


def gamma_gamma_log_likelihood(params: np.ndarray, x: np.ndarray, m: np.ndarray, gradient: bool = False,
                               x_values: tuple[np.ndarray, np.ndarray] | None = None):
    """Each repeat customer's log-likelihood of their mean value m over x purchases (p, q, v); with
    `gradient`, also its derivatives in the three parameters. `x_values` is `by_value(x)`."""
    from scipy.special import digamma

    p, q, v = params
    distinct, at = x_values if x_values is not None else by_value(x)
    px = p * x
    p_distinct = p * distinct
    ll = (_gammaln(p_distinct + q)[at] - _gammaln(p_distinct)[at] - _gammaln(q) + q * np.log(v)
          + (px - 1) * np.log(m) + px * np.log(distinct)[at] - (px + q) * np.log(x * m + v))
    if not gradient:
        return ll
    shared = digamma(p_distinct + q)[at]
    d_p = x * (shared - digamma(p_distinct)[at] + np.log(m) + np.log(distinct)[at] - np.log(x * m + v))
    d_q = shared - digamma(q) + np.log(v) - np.log(x * m + v)
    d_v = q / v - (px + q) / (x * m + v)
    return ll, np.vstack([d_p, d_q, d_v])


def expected_average_value(params, x, m) -> np.ndarray:
    """E[value of a purchase | x repeat purchases of mean m] (the population mean when x = 0)."""
    p, q, v = params
    weight = p * x / (p * x + q - 1)
    population = v * p / (q - 1)
    return (1 - weight) * population + weight * np.where(x > 0, m, 0.0)


# --- maximum likelihood ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """A maximum-likelihood fit: parameters, log-likelihood, and the covariance of their logs."""

    names: tuple[str, ...]
    values: np.ndarray
    log_likelihood: float
    covariance: np.ndarray | None
    converged: bool
    message: str
    customers: int


# A weak normal prior on each parameter's logarithm (standard deviation PRIOR_SD): far too weak to
# move a fit the data determine (CDNOW's published values come out to four digits), it keeps a
# fit the data leave open (no dropout at all: BG/NBD's a/(a+b) tending to 0) at finite values.
PRIOR_SD = 10.0
GRADIENT_TOLERANCE = 1e-6


def maximum_likelihood(log_likelihood, names: tuple[str, ...], start: np.ndarray, customers: int,
                       weights: np.ndarray | None = None) -> Fit:
    """Maximise the summed log-likelihood over positive parameters (optimised on their logarithms,
    with analytic gradients), under the weak prior above: a MAP fit that gives the
    maximum-likelihood values. `log_likelihood(values, gradient=True)` returns (per-customer
    log-likelihoods, their derivatives in the parameters, one row per parameter)."""
    from scipy.optimize import minimize

    def total(theta, gradient: bool = False):
        # A search may step far out (exp overflows): the objective then answers "not here".
        with np.errstate(all="ignore"):
            values = np.exp(theta)
            ll, derivatives = log_likelihood(values, gradient=True)
            w = np.ones_like(ll) if weights is None else weights
            value = float(np.sum(ll * w))
            if not gradient:
                return value
            return value, (derivatives * w).sum(axis=1) * values  # d/d log(value) = value * d/d value

    def objective(theta):
        value, grad = total(theta, gradient=True)
        value -= float(np.sum(theta ** 2)) / (2 * PRIOR_SD ** 2)
        grad = grad - theta / PRIOR_SD ** 2
        if not (np.isfinite(value) and np.all(np.isfinite(grad))):
            return 1e300, np.zeros_like(theta)
        return -value, -grad

    # Quasi-Newton searches from the start (limited-memory and full BFGS) and BFGS again from the
    # first's answer: along a flat ridge (the likelihood of data with hardly any dropout rises
    # slowly towards a = b = 0) one goes on where another stops. The best of them is the fit.
    first = minimize(objective, np.log(start), jac=True, method="L-BFGS-B", options={"maxiter": 5_000})
    runs = [first, minimize(objective, first.x, jac=True, method="BFGS", options={"maxiter": 5_000}),
            minimize(objective, np.log(start), jac=True, method="BFGS", options={"maxiter": 5_000})]
    best = min(runs, key=lambda run: run.fun)
    # Converged: an optimiser said so, or the gradient per customer is negligible (both stop on
    # "precision loss" at an optimum whose last digits float-point arithmetic cannot improve).
    flat = np.max(np.abs(objective(best.x)[1])) / max(customers, 1) < GRADIENT_TOLERANCE
    covariance = _inverse_hessian(lambda t: objective(t)[1], best.x)
    return Fit(names=names, values=np.exp(best.x), log_likelihood=total(best.x), covariance=covariance,
               converged=bool(best.success or flat), message=str(best.message), customers=customers)


def _inverse_hessian(gradient, theta: np.ndarray) -> np.ndarray | None:
    """The inverse of the negative log-posterior's Hessian at the optimum, from central differences
    of its gradient; None when it is not positive definite (a fit at the edge of its parameters)."""
    n = len(theta)
    hessian = np.empty((n, n))
    for i in range(n):
        step = np.zeros(n)
        step[i] = 1e-5 * max(1.0, abs(theta[i]))
        hessian[i] = (gradient(theta + step) - gradient(theta - step)) / (2 * step[i])
    hessian = (hessian + hessian.T) / 2
    try:
        covariance = np.linalg.inv(hessian)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(covariance)) or np.any(np.linalg.eigvalsh(covariance) <= 0):
        return None
    return covariance


def fit_bgnbd(table: pd.DataFrame) -> Fit:
    """BG/NBD on (frequency, recency, T), customers with the same triple counted together."""
    grouped = table.groupby(["frequency", "recency", "T"], sort=True).size().reset_index(name="n")
    x, t_x, T = (grouped[c].to_numpy(dtype="float64") for c in ("frequency", "recency", "T"))
    weights = grouped["n"].to_numpy(dtype="float64")
    scale = max(float(np.mean(table["T"])), 1e-9)
    start = np.array([1.0, scale, 1.0, 1.0])
    x_values = by_value(x)
    return maximum_likelihood(lambda v, gradient: bgnbd_log_likelihood(v, x, t_x, T, gradient, x_values),
                              ("r", "alpha", "a", "b"), start, len(table), weights)


def fit_gamma_gamma(table: pd.DataFrame) -> Fit:
    x, m = table["frequency"].to_numpy(dtype="float64"), table["monetary"].to_numpy(dtype="float64")
    start = np.array([1.0, 2.0, max(float(np.mean(m)), 1e-9)])
    x_values = by_value(x)
    return maximum_likelihood(lambda v, gradient: gamma_gamma_log_likelihood(v, x, m, gradient, x_values),
                              ("p", "q", "v"), start, len(table))


# --- lifetime value -------------------------------------------------------------------------------


def monthly_rate(annual: float) -> float:
    return (1 + annual) ** (1 / 12) - 1


def spend(gamma: np.ndarray | None, table: pd.DataFrame) -> np.ndarray:
    """Each customer's expected purchase value: Gamma-Gamma's, or their observed mean without it."""
    if gamma is None:
        return table["average"].to_numpy(dtype="float64")
    return expected_average_value(gamma, table["frequency"].to_numpy(dtype="float64"),
                                  table["monetary"].to_numpy(dtype="float64"))


def lifetime_value(bgnbd: np.ndarray, gamma: np.ndarray | None, table: pd.DataFrame, horizon: int,
                   discount_rate: float, time_unit: str) -> tuple[np.ndarray, np.ndarray]:
    """(discounted value over the horizon, expected purchases over it) per customer."""
    x, t_x, T = (table[c].to_numpy(dtype="float64") for c in ("frequency", "recency", "T"))
    value = spend(gamma, table)
    month = DAYS_PER_MONTH / TIME_UNITS[time_unit]
    rate = monthly_rate(discount_rate)
    total = np.zeros(len(table))
    previous = np.zeros(len(table))
    pairs = by_pair(x, T)
    for i in range(1, horizon + 1):
        upto = expected_purchases(bgnbd, i * month, x, t_x, T, pairs)
        total += value * (upto - previous) / (1 + rate) ** i
        previous = upto
    return total, previous


def risk_band(alive: np.ndarray) -> np.ndarray:
    return np.where(alive < HIGH_RISK, "high", np.where(alive < MEDIUM_RISK, "medium", "low"))


# --- the stage ------------------------------------------------------------------------------------


def observation_end(cutoff) -> pd.Timestamp:
    """The last day before the cutoff: the end of observation."""
    return pd.Timestamp(cutoff).normalize() - pd.Timedelta(days=1)


def holdout_months(orders: pd.DataFrame, cutoff, horizon: int) -> int:
    """The horizon, or a third of the history's calendar months when that is shorter (at least one)."""
    if not len(orders):
        return 1
    first, cutoff = pd.Timestamp(orders["InvoiceDate"].min()), pd.Timestamp(cutoff)
    months = (cutoff.year - first.year) * 12 + cutoff.month - first.month
    return int(max(1, min(horizon, months // 3)))


def fitted_purchases(table: pd.DataFrame, what: str) -> Fit:
    """BG/NBD fitted on a summary table, or ModelNotRun saying why not."""
    if len(table) == 0:
        raise ModelNotRun(f"no customer has an order {what}")
    if not (table["frequency"] > 0).any():
        raise ModelNotRun(f"all {len(table):,} customers made a single purchase {what}: with no repeat purchase "
                          "there is nothing to fit the purchase and dropout process on")
    bgnbd = fit_bgnbd(table)
    if not bgnbd.converged:
        raise ModelNotRun(not_converged(bgnbd, what))
    return bgnbd


def not_converged(fit: Fit, what: str) -> str:
    """Why a purchase-model fit is not used: where it stopped, the parameters it reached, what to try."""
    reached = ", ".join(f"{n} = {v:.4g}" for n, v in zip(fit.names, fit.values))
    return (f"the BG/NBD fit {what} did not converge ({fit.message}; it reached {reached}); try another "
            "--clv-time-unit (W or M) or a longer history (a wider --window, or none)")


def fitted(table: pd.DataFrame, what: str) -> tuple[Fit, Fit | str, pd.DataFrame]:
    """Both models fitted on a summary table, or ModelNotRun saying why not.

    When only the spend model cannot be fitted, its place holds why (a sentence): the customers'
    observed mean purchase values stand in for its estimates.
    """
    bgnbd = fitted_purchases(table, what)
    repeat = table[table["frequency"] > 0]
    spenders = repeat[repeat["monetary"] > 0]
    if len(spenders) < MIN_REPEAT_CUSTOMERS:
        return bgnbd, (f"only {len(spenders)} repeat customers with a positive purchase value {what}, too few to fit "
                       "the Gamma-Gamma spend model"), spenders
    gamma = fit_gamma_gamma(spenders)
    if not gamma.converged or gamma.values[1] <= 1 or gamma.covariance is None:
        reached = ", ".join(f"{n} = {v:.4g}" for n, v in zip(gamma.names, gamma.values))
        return bgnbd, (f"the Gamma-Gamma spend model does not fit the purchase values {what} (it reached {reached}; "
                       "it needs q > 1 for customers' mean values to have a finite mean)"), spenders
    return bgnbd, gamma, spenders


def customer_lifetime_value(orders: pd.DataFrame, labels: pd.DataFrame, *, cutoff, clv_time_unit: str,
                            clv_horizon: int, discount_rate: float, rfm_segments: list[dict] | None = None):
    """The clv stage: customer_value, segment_value, clv_model, clv_holdout and their figures.

    With the run's RFM segment table (`rfm_segments`), each customer's RFM segment is scored from
    the same orders by the function the rfm stage uses (`rfm.rfm_scores`), and the value is also
    summed per RFM segment. Scoring here instead of reading the rfm stage's output lets the models
    be fitted beside that stage rather than after it.

    When the data cannot support the models, the tables are empty and `clv_model` holds one row
    saying why (model "note"); the run goes on without lifetime values.
    """
    unit, horizon = clv_time_unit, int(clv_horizon)
    end = observation_end(cutoff)
    try:
        table = summary(orders, end, unit)
        history = (pd.Timestamp(cutoff) - orders["InvoiceDate"].min()).days / DAYS_PER_MONTH if len(orders) else 0
        if history < 2:
            raise ModelNotRun(f"the history before the cutoff is {history:.1f} months: too short to fit the models "
                              "and hold any of it out")
        bgnbd, gamma, spenders = fitted(table, "before the cutoff")
    except ModelNotRun as reason:
        return (*empty_outputs(str(reason)), {})
    spend_note = gamma if isinstance(gamma, str) else None
    gamma = None if spend_note else gamma
    try:
        check = holdout_check(orders, cutoff, horizon, unit)
    except ModelNotRun as reason:  # values without their check: the manifest and report say why
        check = empty_outputs("")[3]
        check.attrs = {"note": f"no holdout check: {reason}"}
    gamma_values = None if gamma is None else gamma.values
    value, purchases = lifetime_value(bgnbd.values, gamma_values, table, horizon, discount_rate, unit)
    x, t_x, T = (table[c].to_numpy(dtype="float64") for c in ("frequency", "recency", "T"))
    alive = p_alive(bgnbd.values, x, t_x, T)
    customers = table.assign(p_alive=alive, expected_purchases=purchases,
                             expected_average_value=spend(gamma_values, table), clv=value, churn_risk=risk_band(alive))
    keys = ["CustomerID", "segment", "segment_id", "segment_name"]
    customers = customers.merge(labels[[k for k in keys if k in labels.columns]], on="CustomerID", how="left",
                                validate="one_to_one")
    if rfm_segments is not None:
        rfm = rfm_scores(orders, cutoff, pd.DataFrame(rfm_segments))
        customers = customers.merge(rfm[["CustomerID", "rfm_segment"]], on="CustomerID", how="left", validate="one_to_one")
    segments = segment_value(customers, bgnbd, gamma, horizon, discount_rate, unit, rfm_segments is not None)
    correlation = frequency_monetary_correlation(spenders)
    model = model_table(bgnbd, gamma, len(table[table["frequency"] > 0]) - len(spenders), correlation, spend_note)
    figures = {"clv_p_alive": p_alive_matrix(bgnbd.values, table, unit),
               "clv_by_segment": value_by_segment_plot(segments)}
    if len(check):
        figures["clv_holdout"] = holdout_plot(check)
    columns = ["CustomerID", *[k for k in keys[1:] if k in customers.columns],
               *(["rfm_segment"] if "rfm_segment" in customers.columns else []),
               "frequency", "recency", "T", "monetary", "p_alive", "expected_purchases", "expected_average_value",
               "clv", "churn_risk"]
    return customers[columns].reset_index(drop=True), segments, model, check, figures


def frequency_monetary_correlation(spenders: pd.DataFrame) -> float:
    """Pearson's correlation of repeat purchases and mean purchase value (0 when either is constant)."""
    x, m = spenders["frequency"].to_numpy(dtype="float64"), spenders["monetary"].to_numpy(dtype="float64")
    if len(x) < 3 or np.std(x) == 0 or np.std(m) == 0:
        return 0.0
    return float(np.corrcoef(x, m)[0, 1])


def segment_value(customers: pd.DataFrame, bgnbd: Fit, gamma: Fit | None, horizon: int, discount_rate: float,
                  unit: str, with_rfm: bool) -> pd.DataFrame:
    """Per k-means segment (and RFM segment when RFM ran): customers, value at stake and risk."""
    groupings = [("kmeans", "segment_id", "segment_name")] + ([("rfm", "rfm_segment", "rfm_segment")] if with_rfm else [])
    frames = []
    for grouping, key, name in groupings:
        table = customers.assign(_high=(customers["churn_risk"] == "high").astype("float64"))
        grouped = table.groupby(key, sort=True)
        frame = grouped.agg(segment_name=(name, "first"), customers=("CustomerID", "size"), clv_total=("clv", "sum"),
                            clv_mean=("clv", "mean"), p_alive_mean=("p_alive", "mean"),
                            expected_purchases=("expected_purchases", "sum"), high_risk_share=("_high", "mean"))
        low, high = interval_of_totals(customers, key, frame.index, frame["clv_total"].to_numpy(), bgnbd, gamma,
                                       horizon, discount_rate, unit)
        frame.insert(3, "clv_total_low", low)
        frame.insert(4, "clv_total_high", high)
        frames.append(frame.reset_index().rename(columns={key: "segment"}).assign(grouping=grouping))
    out = pd.concat(frames, ignore_index=True)
    out["customers"] = out["customers"].astype("int64")
    columns = ["grouping", "segment", "segment_name", "customers", "clv_total", "clv_total_low", "clv_total_high",
               "clv_mean", "p_alive_mean", "expected_purchases", "high_risk_share"]
    return out[columns].astype({"segment": "str", "segment_name": "str"})


def parameter_draws(bgnbd: Fit, gamma: Fit | None, n: int = DRAWS) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Parameter sets from the normal approximation of each fit (on the log scale), seeded."""
    rng = np.random.default_rng(SEED)
    first = np.exp(rng.multivariate_normal(np.log(bgnbd.values), bgnbd.covariance, size=n))
    if gamma is None:
        return [(b, None) for b in first]
    second = np.exp(rng.multivariate_normal(np.log(gamma.values), gamma.covariance, size=n))
    keep = second[:, 1] > 1  # the spend model's mean exists only for q > 1
    return [(b, g) for b, g, ok in zip(first, second, keep) if ok]


def interval_of_totals(customers: pd.DataFrame, key: str, segments: pd.Index, totals: np.ndarray, bgnbd: Fit,
                       gamma: Fit | None, horizon: int, discount_rate: float,
                       unit: str) -> tuple[np.ndarray, np.ndarray]:
    """The 90 % interval of each segment's total value from the parameters' uncertainty.

    DRAWS parameter sets from the fits' normal approximations (on the log scale; the two models
    are fitted apart, so drawn apart) each price the same seeded sample of every segment's
    customers at once; each segment's total scales by the draws' 5th and 95th percentiles
    relative to the sample's fitted total.
    """
    if bgnbd.covariance is None:  # a fit at the edge of its parameters (e.g. no dropout at all): no spread
        return np.full(len(segments), np.nan), np.full(len(segments), np.nan)
    rng = np.random.default_rng(SEED)
    codes = pd.Categorical(customers[key], categories=segments).codes
    picked = []
    for i in range(len(segments)):
        members = np.flatnonzero(codes == i)
        if len(members) > INTERVAL_SAMPLE:
            members = np.sort(rng.choice(members, INTERVAL_SAMPLE, replace=False))
        picked.append(members)
    owner = np.concatenate([np.full(len(m), i) for i, m in enumerate(picked)])
    sample = customers.iloc[np.concatenate(picked)]
    fitted_total = np.bincount(owner, weights=sample["clv"].to_numpy(), minlength=len(segments))
    ratios = []
    for b, g in parameter_draws(bgnbd, gamma):
        value, _ = lifetime_value(b, g, sample, horizon, discount_rate, unit)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios.append(np.bincount(owner, weights=value, minlength=len(segments)) / fitted_total)
    ratios = np.array(ratios)
    ratios = np.where(np.isfinite(ratios), ratios, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a segment whose draws are all undefined
        low, high = np.nanquantile(ratios, INTERVAL, axis=0)
    # The interval holds the fitted total, whatever the draws' skew.
    return np.minimum(totals * low, totals), np.maximum(totals * high, totals)


def model_table(bgnbd: Fit, gamma: Fit | None, excluded: int, correlation: float,
                spend_note: str | None = None) -> pd.DataFrame:
    rows = [("bgnbd", n, float(v)) for n, v in zip(bgnbd.names, bgnbd.values)]
    rows += [("bgnbd", "log_likelihood", bgnbd.log_likelihood), ("bgnbd", "customers", float(bgnbd.customers))]
    if gamma is not None:
        rows += [("gamma_gamma", n, float(v)) for n, v in zip(gamma.names, gamma.values)]
        rows += [("gamma_gamma", "log_likelihood", gamma.log_likelihood),
                 ("gamma_gamma", "customers", float(gamma.customers))]
    rows += [("gamma_gamma", "excluded_customers", float(excluded)),
             ("gamma_gamma", "frequency_monetary_correlation", correlation)]
    if spend_note:
        rows.append(("spend_note", spend_note, np.nan))
    return pd.DataFrame(rows, columns=["model", "parameter", "value"]).astype({"value": "float64"})


# --- the check on the data itself -----------------------------------------------------------------


def holdout_check(orders: pd.DataFrame, cutoff, horizon: int, unit: str) -> pd.DataFrame:
    """Calibration fit, predicted against observed repeat purchases in the held-out months."""
    months = holdout_months(orders, cutoff, horizon)
    calibration_end = pd.Timestamp(cutoff) - pd.DateOffset(months=months)
    table = summary(orders, observation_end(calibration_end), unit)
    bgnbd = fitted_purchases(table, f"before {calibration_end.date()} (the calibration period)")
    days = occasions(orders.loc[(orders["InvoiceDate"] >= calibration_end).to_numpy()], pd.Timestamp(cutoff))
    actual = days.groupby("CustomerID").size().reindex(table["CustomerID"], fill_value=0).to_numpy(dtype="float64")
    length = (pd.Timestamp(cutoff) - calibration_end).days / TIME_UNITS[unit]
    x, t_x, T = (table[c].to_numpy(dtype="float64") for c in ("frequency", "recency", "T"))
    predicted = expected_purchases(bgnbd.values, length, x, t_x, T)
    group = np.minimum(table["frequency"].to_numpy(), FREQUENCY_GROUPS)
    frame = pd.DataFrame({"group": group, "actual": actual, "predicted": predicted})
    out = frame.groupby("group", sort=True).agg(customers=("actual", "size"), actual_mean=("actual", "mean"),
                                                predicted_mean=("predicted", "mean")).reset_index()
    out.insert(0, "calibration_purchases", [f"{g}+" if g == FREQUENCY_GROUPS else str(g) for g in out["group"]])
    out = out.drop(columns="group")
    out["customers"] = out["customers"].astype("int64")
    out.attrs = {"holdout_months": months, "calibration_end": calibration_end.isoformat(),
                 "mae": float(np.mean(np.abs(predicted - actual))), "predicted_total": float(predicted.sum()),
                 "actual_total": float(actual.sum()), "customers": len(table),
                 "r": float(bgnbd.values[0]), "alpha": float(bgnbd.values[1]),
                 "a": float(bgnbd.values[2]), "b": float(bgnbd.values[3])}
    return out


# --- outputs without a model ----------------------------------------------------------------------


def empty_outputs(reason: str):
    customers = pd.DataFrame({"CustomerID": pd.Series(dtype="str"), "segment": pd.Series(dtype="int64"),
                              "segment_id": pd.Series(dtype="str"), "segment_name": pd.Series(dtype="str"),
                              "frequency": pd.Series(dtype="int64"), "recency": pd.Series(dtype="float64"),
                              "T": pd.Series(dtype="float64"), "monetary": pd.Series(dtype="float64"),
                              "p_alive": pd.Series(dtype="float64"), "expected_purchases": pd.Series(dtype="float64"),
                              "expected_average_value": pd.Series(dtype="float64"), "clv": pd.Series(dtype="float64"),
                              "churn_risk": pd.Series(dtype="str")})
    segments = pd.DataFrame({c: pd.Series(dtype=t) for c, t in (
        ("grouping", "str"), ("segment", "str"), ("segment_name", "str"), ("customers", "int64"),
        ("clv_total", "float64"), ("clv_total_low", "float64"), ("clv_total_high", "float64"), ("clv_mean", "float64"),
        ("p_alive_mean", "float64"), ("expected_purchases", "float64"), ("high_risk_share", "float64"))})
    model = pd.DataFrame({"model": ["note"], "parameter": [reason], "value": [np.nan]})
    holdout = pd.DataFrame({"calibration_purchases": pd.Series(dtype="str"), "customers": pd.Series(dtype="int64"),
                            "actual_mean": pd.Series(dtype="float64"), "predicted_mean": pd.Series(dtype="float64")})
    return customers, segments, model, holdout


def clv_metrics(frames, params) -> dict:
    """The models' parameters, the spend model's caveats and the holdout check, for the manifest."""
    model = frames["clv_model"]
    if (model["model"] == "note").any():
        return {NOT_RUN: str(model.loc[model["model"] == "note", "parameter"].iloc[0])}
    values = {f"{p}": float(v) for m, p, v in model.itertuples(index=False)
              if p in ("r", "alpha", "a", "b", "p", "q", "v")}
    get = dict(zip(zip(model["model"], model["parameter"]), model["value"]))
    holdout = frames["clv_holdout"].attrs
    correlation = get[("gamma_gamma", "frequency_monetary_correlation")]
    spend_note = model.loc[model["model"] == "spend_note", "parameter"]
    facts = {
        **{k: round(v, 6) for k, v in values.items()},
        "bgnbd_log_likelihood": round(get[("bgnbd", "log_likelihood")], 4),
        "bgnbd_customers": int(get[("bgnbd", "customers")]),
        "gamma_gamma_customers": int(get.get(("gamma_gamma", "customers"), 0)),
        "gamma_gamma_excluded": int(get[("gamma_gamma", "excluded_customers")]),
        "frequency_monetary_correlation": round(correlation, 4),
        "clv_total": round(float(frames["customer_value"]["clv"].sum()), 2),
        NOT_RUN: None,
    }
    if len(spend_note):
        facts["spend_note"] = (f"{spend_note.iloc[0]}; each customer's own mean purchase value stands in for its "
                               "estimate")
    if abs(correlation) > CORRELATION_WARNING:
        facts["clv_warning"] = (f"purchase frequency and value are correlated ({correlation:.2f}, above "
                                f"{CORRELATION_WARNING}): the Gamma-Gamma model assumes they are not, so its values "
                                "lean towards the frequent buyers' spend")
    if "note" in holdout:
        facts["holdout"] = {"note": holdout["note"]}
    elif holdout:
        facts["holdout"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in holdout.items()}
        facts["holdout"]["predicted_over_actual"] = (round(holdout["predicted_total"] / holdout["actual_total"], 4)
                                                    if holdout["actual_total"] else None)
    return facts


# --- figures --------------------------------------------------------------------------------------


def _figure(width: float = 8, height: float = 5.5):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def p_alive_matrix(bgnbd: np.ndarray, table: pd.DataFrame, unit: str):
    """P(alive) by frequency (rows) and recency (columns), for a customer observed as long as the longest."""
    fig = _figure()
    ax = fig.subplots()
    T = float(table["T"].max())
    max_x = int(max(1, np.quantile(table["frequency"], 0.99)))
    x = np.arange(0, max_x + 1, dtype="float64")
    t_x = np.linspace(0, T, 60)
    grid = p_alive(bgnbd, x[:, None], t_x[None, :], T)
    image = ax.imshow(grid, origin="lower", aspect="auto", cmap="RdYlGn", vmin=0, vmax=1,
                      extent=(0, T, -0.5, max_x + 0.5))
    ax.set_xlabel(f"Recency: time of the last purchase ({ {'D': 'days', 'W': 'weeks', 'M': 'months'}[unit] } "
                  "after the first)")
    ax.set_ylabel("Frequency: repeat purchases")
    ax.set_title(f"Probability a customer is still active (observed for {T:,.0f} {unit})")
    fig.colorbar(image, ax=ax, label="P(alive)")
    return fig


def value_by_segment_plot(segments: pd.DataFrame):
    """Each k-means segment's value over the horizon with its 90 % interval."""
    fig = _figure()
    ax = fig.subplots()
    rows = segments[segments["grouping"] == "kmeans"].sort_values("clv_total", ascending=False)
    labels = [f"{s}: {n}" for s, n in zip(rows["segment"], rows["segment_name"])]
    totals = rows["clv_total"].to_numpy()
    errors = np.vstack([totals - rows["clv_total_low"].to_numpy(), rows["clv_total_high"].to_numpy() - totals])
    ax.barh(range(len(rows)), totals, xerr=np.clip(np.nan_to_num(errors), 0, None), color="tab:blue", capsize=4)
    ax.set_yticks(range(len(rows)), labels, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("Expected value over the horizon (discounted), with its 90 % interval")
    ax.set_title("Customer lifetime value by segment")
    ax.grid(axis="x", alpha=0.3)
    return fig


def holdout_plot(check: pd.DataFrame):
    """Mean repeat purchases in the holdout by calibration purchases: predicted beside observed."""
    fig = _figure()
    ax = fig.subplots()
    position = np.arange(len(check))
    ax.bar(position - 0.2, check["actual_mean"], width=0.4, label="observed", color="tab:blue")
    ax.bar(position + 0.2, check["predicted_mean"], width=0.4, label="predicted (BG/NBD)", color="tab:orange")
    ax.set_xticks(position, check["calibration_purchases"])
    ax.set_xlabel("Repeat purchases in the calibration period")
    ax.set_ylabel("Mean repeat purchases in the holdout")
    ax.set_title("The model's check: predicted against observed purchases in the held-out months")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return fig
