"""Repurchase propensity: the chance that a customer orders again within the next `horizon` months.

A logistic regression on each customer's history at a snapshot date T, trained on a snapshot
whose outcome is already known before the cutoff, and applied to the history at the cutoff.

Time windows (h = horizon months; T_fit = cutoff - 2h, T_train = cutoff - h):

    ... history ---|--------------------|--------------------|- - - - - - - - ->
                 T_fit               T_train              cutoff
    holdout model:  features before T_fit,    label = ordered in [T_fit, T_train)
    scoring model:  features before T_train,  label = ordered in [T_train, cutoff)
    scores:         features before cutoff,   predicting an order in [cutoff, cutoff + h)

* scoring model: features from lines before T_train, label = ordered in [T_train, cutoff); it
  then scores every customer from all lines before the cutoff;
* holdout (honest metrics, split by time): the same model fitted one horizon earlier (features
  before T_fit, label = ordered in [T_fit, T_train)) scores the T_train snapshot, whose labels
  it never saw; the ROC AUC and the decile table come from that.

Features. A snapshot carries recency_days, frequency and monetary (as in RFM, relative to T)
and the article's TotalSales, OrderCount and AvgOrderValue. TotalSales is monetary and
OrderCount is frequency, exactly, so the model uses each only once: duplicated columns add no
information, and an L2-penalised fit splits the weight between the copies, which makes the
coefficient table misleading. The model's features are MODEL_FEATURES: recency_days,
frequency, monetary and AvgOrderValue, all standardised. frequency, monetary and
AvgOrderValue are log1p-transformed first: they are right-skewed (a few accounts order or spend
a hundred times the median), and on the real data (cutoff 2011-12-01, horizon 3) log1p of
these three gives the best holdout AUC of the variants tried, if only just: 0.740, against
0.737 untransformed and 0.736 with recency logged too. recency_days stays linear: it is
bounded by the history's length and not heavy-tailed, and logging it lowered the AUC.
log(AvgOrderValue) is close to log(monetary) - log(frequency), so AvgOrderValue's coefficient
is read together with those two; it is kept because it is the article's basket-size measure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from customer_segments.tasks.encoding import is_in
from customer_segments.tasks.errors import ParameterError
from customer_segments.tasks.methods.rfm import rfm_values

STAGE = "propensity"
MODEL_FEATURES = ("recency_days", "frequency", "monetary", "AvgOrderValue")
LOG_FEATURES = ("frequency", "monetary", "AvgOrderValue")
# Fewer customers than this, or one outcome only, and a snapshot cannot train or judge a model.
MIN_CUSTOMERS = 50
DECILES = 10
RANDOM_STATE = 0
MAX_ITER = 1_000
INTERCEPT = "(intercept)"
DECILE_COLUMNS = ("decile", "customers", "responders", "response_rate", "lift",
                  "cumulative_responders", "cumulative_gain")


def snapshot_dates(cutoff: pd.Timestamp | str, horizon: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(T_fit, T_train): the cutoff moved back 2h and h calendar months."""
    if not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ParameterError(STAGE, f"the horizon must be a whole number of months, at least 1 (got {horizon!r})")
    cutoff = pd.Timestamp(cutoff)
    return cutoff - pd.DateOffset(months=2 * horizon), cutoff - pd.DateOffset(months=horizon)


def snapshot(orders: pd.DataFrame, at: pd.Timestamp | str, horizon_months: int | None = None,
             *, label_end: pd.Timestamp | str | None = None) -> pd.DataFrame:
    """Features of every customer with an order before `at`, from those orders only; and the label.

    label = 1 when the customer has an order in [at, label_end), label_end defaulting to `at`
    plus `horizon_months` calendar months. Without either (the scoring snapshot, whose future
    is unknown) there is no label column.
    """
    at = pd.Timestamp(at)
    features = rfm_values(orders, at)
    features["TotalSales"] = features["monetary"]
    features["OrderCount"] = features["frequency"]
    features["AvgOrderValue"] = features["monetary"] / features["frequency"]
    if horizon_months is None and label_end is None:
        return features
    end = pd.Timestamp(label_end) if label_end is not None else at + pd.DateOffset(months=horizon_months)
    dates = orders["InvoiceDate"]
    buyers = orders.loc[((dates >= at) & (dates < end)).to_numpy(), "CustomerID"].unique()
    features["label"] = is_in(features["CustomerID"], buyers).astype("int64")
    return features


def design_matrix(snap: pd.DataFrame) -> np.ndarray:
    """The model's inputs: MODEL_FEATURES, log1p where listed (amounts below 0 count as 0)."""
    columns = []
    for name in MODEL_FEATURES:
        values = snap[name].to_numpy(dtype="float64")
        columns.append(np.log1p(np.clip(values, 0, None)) if name in LOG_FEATURES else values)
    return np.column_stack(columns)


def feature_names() -> list[str]:
    return [f"log1p({name})" if name in LOG_FEATURES else name for name in MODEL_FEATURES]


def fit_model(snap: pd.DataFrame):
    """StandardScaler + class-balanced logistic regression on a labelled snapshot."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    model = Pipeline([
        ("scale", StandardScaler()),
        ("logit", LogisticRegression(class_weight="balanced", max_iter=MAX_ITER, random_state=RANDOM_STATE)),
    ])
    return model.fit(design_matrix(snap), snap["label"].to_numpy())


def predict(model, snap: pd.DataFrame) -> np.ndarray:
    return model.predict_proba(design_matrix(snap))[:, 1]


def unusable(snap: pd.DataFrame, name: str) -> str | None:
    """Why a labelled snapshot cannot train or evaluate a model, or None when it can."""
    customers, responders = len(snap), int(snap["label"].sum())
    if customers < MIN_CUSTOMERS:
        return f"the {name} snapshot has {customers:,} customers (fewer than {MIN_CUSTOMERS})"
    if responders in (0, customers):
        outcome = "ordered again" if responders else "did not order again"
        return f"every one of the {customers:,} customers of the {name} snapshot {outcome}"
    return None


def holdout_note(fit: pd.DataFrame, train: pd.DataFrame, t_fit, t_train) -> str | None:
    """Why there are no holdout metrics (not enough history), or None when there are."""
    reasons = [r for r in (unusable(fit, f"T_fit ({pd.Timestamp(t_fit).date()})"),
                           unusable(train, f"T_train ({pd.Timestamp(t_train).date()})")) if r]
    if not reasons:
        return None
    return "no holdout metrics: " + "; ".join(reasons)


def decile_of(probability: np.ndarray) -> np.ndarray:
    """1..10, 1 = highest probability; equal probabilities are ordered by row (CustomerID) order."""
    position = pd.Series(-np.asarray(probability, dtype="float64")).rank(method="first").to_numpy()
    return np.ceil(DECILES * position / len(position)).astype("int64")


def decile_table(probability: np.ndarray, label: np.ndarray) -> pd.DataFrame:
    """Customers and responders per decile of probability, lift and cumulative gain.

    lift = the decile's response rate / the overall response rate; cumulative_gain = share of
    all responders found in deciles 1..d.
    """
    label = np.asarray(label, dtype="int64")
    decile = decile_of(probability)
    customers = np.bincount(decile, minlength=DECILES + 1)[1:]
    responders = np.bincount(decile, weights=label, minlength=DECILES + 1)[1:].astype("int64")
    table = pd.DataFrame({"decile": np.arange(1, DECILES + 1), "customers": customers, "responders": responders})
    with np.errstate(divide="ignore", invalid="ignore"):
        table["response_rate"] = responders / customers
        table["lift"] = table["response_rate"] / (label.sum() / len(label))
        table["cumulative_responders"] = responders.cumsum()
        table["cumulative_gain"] = table["cumulative_responders"] / label.sum()
    return table


def empty_decile_table() -> pd.DataFrame:
    return pd.DataFrame({
        "decile": pd.Series(dtype="int64"), "customers": pd.Series(dtype="int64"),
        "responders": pd.Series(dtype="int64"), "response_rate": pd.Series(dtype="float64"),
        "lift": pd.Series(dtype="float64"), "cumulative_responders": pd.Series(dtype="int64"),
        "cumulative_gain": pd.Series(dtype="float64"),
    })


def coefficient_table(model) -> pd.DataFrame:
    """Coefficients on the standardised scale: odds ratio per standard deviation of each input."""
    logit = model.named_steps["logit"]
    coefficient = np.append(logit.coef_[0], logit.intercept_[0])
    return pd.DataFrame({
        "feature": [*feature_names(), INTERCEPT],
        "coefficient": coefficient,
        "odds_ratio": np.exp(coefficient),
    })


def propensity(orders: pd.DataFrame, cutoff: pd.Timestamp | str, horizon: int
               ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(scores, deciles, coefficients).

    scores: one row per customer (CustomerID order) with lines before the cutoff:
      probability of ordering in the next `horizon` months, decile (1 = highest; equal
      probabilities by CustomerID), repurchased (the training label: 1/0 for customers with
      lines before T_train, <NA> for newer ones), holdout_probability (the holdout model's
      probability at T_train, NaN where there is none).
    deciles: the holdout decile table (empty when there is not enough history; see
      propensity_facts for why).
    coefficients: feature, coefficient, odds_ratio, with the intercept last.

    Orders on or after the cutoff are dropped first, so nothing later can reach any output.
    """
    cutoff = pd.Timestamp(cutoff)
    t_fit, t_train = snapshot_dates(cutoff, horizon)
    orders = orders.loc[(orders["InvoiceDate"] < cutoff).to_numpy()]
    train = snapshot(orders, t_train, label_end=cutoff)
    reason = unusable(train, f"T_train ({t_train.date()})")
    if reason:
        raise ParameterError(
            STAGE, f"cannot train the {horizon}-month repurchase model: {reason}; "
            "it needs more history before the cutoff or a shorter horizon",
        )
    current = snapshot(orders, cutoff)
    model = fit_model(train)

    scores = current[["CustomerID"]].copy()
    scores["probability"] = predict(model, current)
    scores["decile"] = decile_of(scores["probability"].to_numpy())
    position = pd.Index(train["CustomerID"]).get_indexer(scores["CustomerID"])  # -1: first order after T_train
    known = position >= 0
    repurchased = pd.array(np.where(known, train["label"].to_numpy()[position], 0), dtype="Int64")
    repurchased[~known] = pd.NA
    scores["repurchased"] = repurchased
    scores["holdout_probability"] = np.nan

    fit = snapshot(orders, t_fit, label_end=t_train)
    note = holdout_note(fit, train, t_fit, t_train)
    if note is None:
        holdout = predict(fit_model(fit), train)
        scores.loc[known, "holdout_probability"] = holdout[position[known]]
        deciles = decile_table(holdout, train["label"].to_numpy())
    else:
        deciles = empty_decile_table()
    scores = scores.reset_index(drop=True)
    # For the stage's metrics (not stored with the data), which would otherwise build both
    # snapshots again.
    scores.attrs = {"snapshots": _snapshot_facts(fit, train, note)}
    return scores, deciles, coefficient_table(model)


def _snapshot_facts(fit: pd.DataFrame, train: pd.DataFrame, note: str | None) -> dict:
    return {"fit_customers": len(fit), "fit_responders": int(fit["label"].sum()), "train_customers": len(train),
            "train_responders": int(train["label"].sum()), "note": note}


def propensity_facts(orders: pd.DataFrame, scores: pd.DataFrame, deciles: pd.DataFrame,
                     cutoff: pd.Timestamp | str, horizon: int) -> dict:
    """The run's facts from propensity's outputs (and the snapshot sizes, recounted from `orders`).

    fit_*: the T_fit snapshot (trains the holdout model); train_*: the T_train snapshot (trains
    the scoring model); holdout_*: the customers the holdout metrics are measured on (the
    T_train snapshot when there is a holdout, else 0). roc_auc and top_decile_lift are None
    when there is not enough history, and `note` says why.
    """
    from sklearn.metrics import roc_auc_score

    cutoff = pd.Timestamp(cutoff)
    t_fit, t_train = snapshot_dates(cutoff, horizon)
    facts = scores.attrs.get("snapshots")  # as propensity() found them
    if facts is None:
        orders = orders.loc[(orders["InvoiceDate"] < cutoff).to_numpy()]
        fit = snapshot(orders, t_fit, label_end=t_train)
        train = snapshot(orders, t_train, label_end=cutoff)
        untrained = unusable(train, f"T_train ({t_train.date()})")
        note = (f"no model: {untrained}; it needs more history before the cutoff or a shorter horizon"
                if untrained else holdout_note(fit, train, t_fit, t_train))
        facts = _snapshot_facts(fit, train, note)
    note = facts["note"]
    scored = scores.loc[scores["holdout_probability"].notna().to_numpy()]
    label = scored["repurchased"].to_numpy(dtype="int64")
    has_holdout = note is None and len(deciles) > 0
    return {
        "horizon_months": int(horizon),
        "T_fit": t_fit.isoformat(),
        "T_train": t_train.isoformat(),
        **{key: value for key, value in facts.items() if key != "note"},
        "holdout_customers": len(scored) if has_holdout else 0,
        "holdout_responders": int(label.sum()) if has_holdout else 0,
        "roc_auc": float(roc_auc_score(label, scored["holdout_probability"].to_numpy())) if has_holdout else None,
        "top_decile_lift": float(deciles.loc[deciles["decile"].eq(1), "lift"].iloc[0]) if has_holdout else None,
        "scored_customers": len(scores),
        "note": note,
    }


def gains_chart(deciles: pd.DataFrame):
    """Cumulative gains against the random baseline (left) and the lift of each decile (right)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5), dpi=100, layout="constrained")
    gains, lifts = fig.subplots(1, 2)
    if deciles.empty:
        for ax in (gains, lifts):
            ax.text(0.5, 0.5, "Not enough history for a holdout", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        return fig
    share = np.concatenate([[0.0], deciles["customers"].cumsum().to_numpy() / deciles["customers"].sum()])
    gain = np.concatenate([[0.0], deciles["cumulative_gain"].to_numpy()])
    gains.plot(share * 100, gain * 100, marker="o", color="tab:blue", label="model")
    gains.plot([0, 100], [0, 100], linestyle="--", color="0.5", label="random")
    # A perfect ranking reaches every repeat buyer after contacting the overall response rate's share.
    rate = deciles["responders"].sum() / deciles["customers"].sum()
    gains.plot([0, rate * 100, 100], [0, 100, 100], linestyle=":", color="tab:green", label="perfect")
    gains.set_xlabel("Customers contacted, highest probability first (%)")
    gains.set_ylabel("Repeat buyers reached (%)")
    gains.set_title("Cumulative gains (holdout)")
    gains.set_xlim(0, 100)
    gains.set_ylim(0, 100)
    gains.grid(alpha=0.3)
    gains.legend(loc="lower right")

    lifts.bar(deciles["decile"], deciles["lift"], color="tab:orange")
    lifts.axhline(1.0, linestyle="--", color="0.5", label="random (lift 1)")
    for d, v in zip(deciles["decile"], deciles["lift"]):
        lifts.annotate(f"{v:.2f}", (d, v), ha="center", va="bottom", fontsize=8)
    lifts.set_xticks(deciles["decile"])
    lifts.set_xlabel("Decile (1 = highest probability)")
    lifts.set_ylabel("Lift (decile response rate / overall)")
    lifts.set_title("Lift per decile (holdout)")
    lifts.legend(loc="upper right")
    return fig


def propensity_metrics(frames, params) -> dict:
    """ROC AUC and top-decile lift on the time-split holdout, with the snapshots' sizes."""
    return propensity_facts(frames["orders"], frames["propensity_scores"], frames["propensity_deciles"],
                            params["cutoff"], params["horizon"])


def propensity_stage(orders: pd.DataFrame, *, cutoff, horizon: int
                     ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """The propensity stage: scores, the holdout's decile table, the coefficients and the gains chart.

    Early in a series (or with a short window) there may be too little history to train the
    model: the run goes on with empty tables, and the manifest's `note` says why.
    """
    try:
        scores, deciles, coefficients = propensity(orders, cutoff, horizon)
    except ParameterError:
        empty_scores = pd.DataFrame({"CustomerID": pd.Series(dtype="str"), "probability": pd.Series(dtype="float64"),
                                     "decile": pd.Series(dtype="int64"), "repurchased": pd.Series(dtype="Int64"),
                                     "holdout_probability": pd.Series(dtype="float64")})
        empty_coefficients = pd.DataFrame({"feature": pd.Series(dtype="str"), "coefficient": pd.Series(dtype="float64"),
                                           "odds_ratio": pd.Series(dtype="float64")})
        return empty_scores, empty_decile_table(), empty_coefficients, {}
    figures = {"propensity_gains": gains_chart(deciles)} if len(deciles) else {}
    return scores, deciles, coefficients, figures
