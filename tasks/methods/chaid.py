"""CHAID: segments that differ in a binary outcome, each described by a rule in words.

The tree (the CHAID package) splits customers on recency, frequency, monetary and Country by
chi-squared tests, merging categories whose outcome rates do not differ. Each leaf is a
segment: `chaid_segment` 0 has the highest response rate. Two traits of the package to read
the leaves with: its p-values carry no Bonferroni adjustment, so at alpha_merge 0.05 a deep
split can be chance; and when two adjacent groups are both pure (all 0 or all 1) it can keep
them apart, so sibling leaves may share a 0 % or 100 % rate.

Binning. Recency, frequency and monetary enter as ordinal bins at quintile edges of the
customers' raw values (the 20/40/60/80 % quantiles of the table being modelled, rounded to two
significant figures so the rules read "monetary >= 2,000" rather than "monetary >= 1,993.70").
Bins are half-open, lower edge included: [edge_k, edge_k+1). Equal edges collapse, so a
variable with many ties (most customers have one order) gets fewer than five bins. Raw-value
quintiles rather than the RFM scores: the scores break ties by CustomerID, so customers with the
same frequency can have different F scores, and a rule on F could not be written as a range of
frequencies; value quintiles keep equal values together and every bin is a value range.

Targets (see chaid_table): the repurchase label of the propensity training snapshot (features
as of T_train = cutoff - horizon, label = ordered in [T_train, cutoff)), or membership of the
most valuable k-means segment (segment == 0, features as of the cutoff). The repurchase label
must be paired with the T_train features: recency at the cutoff already says whether a customer
ordered in the last `horizon` months, so it would "predict" the label perfectly.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from customer_segments.tasks.errors import ParameterError
from customer_segments.tasks.methods.propensity import snapshot, snapshot_dates

STAGE = "chaid"
# Variable -> (name in rules, unit written after the number).
ORDINAL = {"recency_days": ("recency", " days"), "frequency": ("frequency", ""), "monetary": ("monetary", "")}
NOMINAL = ("Country",)
QUANTILES = (0.2, 0.4, 0.6, 0.8)
UNKNOWN_COUNTRY = "Unknown"
SEGMENT_COLUMNS = ("chaid_segment", "rule", "customers", "responders", "response_rate", "depth", "node_id")


# CHAID warns, when it is first imported, that the optional packages of its graphs are missing; the
# product draws no CHAID graph. The filter is set for the process when this module loads, since
# catch_warnings() is not thread-safe: stages compute in threads, and another stage leaving its own
# catch_warnings() while CHAID was imported restored the filters without this one. The import keeps
# its own catch_warnings() for callers that reset the filters after this module loaded (pytest
# does, per test).
_GRAPH_WARNING = "Imports of optional packages needed to generate graphs failed"
warnings.filterwarnings("ignore", message=_GRAPH_WARNING, category=UserWarning)


def _tree_class():
    """CHAID's Tree, imported without its warning about the optional plotting packages (unused here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_GRAPH_WARNING, category=UserWarning)
        from CHAID import Tree
    return Tree


def round_significant(values: np.ndarray, digits: int = 2) -> np.ndarray:
    values = np.asarray(values, dtype="float64")
    magnitude = np.floor(np.log10(np.abs(np.where(values == 0, 1, values))))
    scale = 10.0 ** (digits - 1 - magnitude)
    return np.round(values * scale) / scale


def bin_edges(values: pd.Series) -> np.ndarray:
    """Lower edges of bins 1.. (bin 0 is below the first edge); every bin holds some value."""
    data = values.to_numpy(dtype="float64")
    edges = round_significant(np.quantile(data, QUANTILES))
    if np.array_equal(data, np.round(data)):
        # Whole-number variables (days, orders): value >= 2.4 is value >= 3, so say 3.
        edges = np.ceil(edges)
    edges = np.unique(edges)
    return edges[(edges > data.min()) & (edges <= data.max())]


def bin_codes(values: pd.Series, edges: np.ndarray) -> np.ndarray:
    """0..len(edges): code k holds edges[k-1] <= value < edges[k]."""
    return np.searchsorted(edges, values.to_numpy(dtype="float64"), side="right").astype("int64")


def interval_words(variable: str, edges: np.ndarray, codes: set) -> str | None:
    """The value range of a run of bin codes, in words; None when it is the whole range."""
    name, unit = ORDINAL[variable]
    low, high = min(codes), max(codes)
    lower = edges[low - 1] if low > 0 else None
    upper = edges[high] if high < len(edges) else None
    if lower is None and upper is None:
        return None
    if lower is None:
        return f"{name} < {number_words(upper)}{unit}"
    if upper is None:
        return f"{name} ≥ {number_words(lower)}{unit}"
    return f"{number_words(lower)} ≤ {name} < {number_words(upper)}{unit}"


def number_words(value: float) -> str:
    """1,600 or 0.35: thousands separated, no decimals when the edge is whole."""
    return f"{value:,.0f}" if value == round(value) else f"{value:,.6g}"


def category_words(variable: str, chosen: set, every: set) -> str | None:
    """"Country = X", "Country in {A, B}", or "Country not in {...}" when that list is shorter."""
    if chosen >= every:
        return None
    if len(chosen) == 1:
        return f"{variable} = {next(iter(chosen))}"
    others = every - chosen
    if len(others) < len(chosen):
        if len(others) == 1:
            return f"{variable} ≠ {next(iter(others))}"
        return f"{variable} not in {{{', '.join(sorted(others))}}}"
    return f"{variable} in {{{', '.join(sorted(chosen))}}}"


def chaid_segments(table: pd.DataFrame, target: str, max_depth: int, min_parent_node_size: int,
                   min_child_node_size: int, alpha_merge: float = 0.05) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(segments, assignment) of a CHAID tree on binned recency, frequency, monetary and Country.

    table: one row per customer with CustomerID, recency_days, frequency, monetary, Country and
    the binary `target` (0/1 or bool). segments: one row per leaf, chaid_segment 0 = highest
    response rate (ties: larger leaf first, then tree order), the rule leading to it (a
    variable's repeated conditions along the path merged into one range or category set),
    customers, responders, response_rate, depth (splits on the path) and the tree's node_id.
    assignment: CustomerID -> chaid_segment, from the leaves' member indices.
    """
    missing = [c for c in ("CustomerID", *ORDINAL, *NOMINAL, target) if c not in table.columns]
    if missing:
        raise ParameterError(STAGE, f"the CHAID table lacks the column(s) {', '.join(missing)}")
    outcome = table[target]
    if not outcome.isin([0, 1]).all():  # bools pass (True == 1); NaN and other values do not
        raise ParameterError(STAGE, f"the CHAID target {target} must be 0/1 for every customer")
    if len(table) == 0:
        raise ParameterError(STAGE, "the CHAID table has no customers")
    outcome = outcome.astype("int64").to_numpy()

    edges = {v: bin_edges(table[v]) for v in ORDINAL}
    frame = pd.DataFrame({v: bin_codes(table[v], edges[v]) for v in ORDINAL})
    countries = table["Country"].fillna(UNKNOWN_COUNTRY).astype(str).to_numpy(dtype=object)
    frame["Country"] = countries
    frame["__target__"] = outcome
    tree = _tree_class().from_pandas_df(
        frame, {**{v: "ordinal" for v in ORDINAL}, "Country": "nominal"}, "__target__",
        alpha_merge=alpha_merge, max_depth=max_depth,
        min_parent_node_size=min_parent_node_size, min_child_node_size=min_child_node_size,
    )
    nodes = tree.tree_store
    every_country = set(countries.tolist())

    leaves = [node for node in nodes if node.is_terminal]  # the loops here run over tree nodes, not customers
    leaf_of_row = np.full(len(table), -1, dtype="int64")
    rules, depths = [], []
    for number, leaf in enumerate(leaves):
        leaf_of_row[np.asarray(leaf.indices, dtype="int64")] = number
        conditions = path_conditions(nodes, leaf)
        depths.append(len(conditions))
        rules.append(rule_words(conditions, edges, every_country))
    if (leaf_of_row < 0).any():
        raise RuntimeError("the CHAID leaves do not cover every customer")

    customers = np.bincount(leaf_of_row, minlength=len(leaves))
    responders = np.bincount(leaf_of_row, weights=outcome, minlength=len(leaves)).astype("int64")
    segments = pd.DataFrame({
        "rule": rules, "customers": customers, "responders": responders,
        "response_rate": responders / customers, "depth": np.asarray(depths, dtype="int64"),
        "node_id": np.asarray([leaf.node_id for leaf in leaves], dtype="int64"),
    })
    order = segments.sort_values(["response_rate", "customers", "node_id"], ascending=[False, False, True],
                                 kind="stable").index.to_numpy()
    segment_of_leaf = np.empty(len(leaves), dtype="int64")
    segment_of_leaf[order] = np.arange(len(leaves))
    segments.insert(0, "chaid_segment", segment_of_leaf)
    segments = segments.iloc[order].reset_index(drop=True)[list(SEGMENT_COLUMNS)]

    assignment = pd.DataFrame({
        "CustomerID": table["CustomerID"].to_numpy(), "chaid_segment": segment_of_leaf[leaf_of_row],
    }).sort_values("CustomerID", kind="stable").reset_index(drop=True)
    return segments, assignment


def path_conditions(nodes: list, leaf) -> list[tuple[str, list]]:
    """(variable, values chosen) for each split from the root down to `leaf`."""
    conditions, node = [], leaf
    while node.parent is not None:
        parent = nodes[node.parent]
        conditions.append((parent.split_variable, list(node.choices)))
        node = parent
    return conditions[::-1]


def rule_words(conditions: list[tuple[str, list]], edges: dict, every_country: set) -> str:
    """One condition per variable, in the order the variables are first split on."""
    chosen: dict[str, set] = {}
    for variable, values in conditions:
        values = {v.item() if hasattr(v, "item") else v for v in values}
        chosen[variable] = chosen[variable] & values if variable in chosen else values
    words = [
        interval_words(variable, edges[variable], {int(v) for v in values}) if variable in ORDINAL
        else category_words(variable, {str(v) for v in values}, every_country)
        for variable, values in chosen.items()
    ]
    words = [w for w in words if w]
    return " and ".join(words) if words else "all customers"


def customer_country(orders: pd.DataFrame) -> pd.DataFrame:
    """Each customer's most frequent Country over its lines (ties: alphabetically first), from the
    orders (each weighted by its lines); none when the export has no countries."""
    if "Country" not in orders.columns:
        return pd.DataFrame({"CustomerID": pd.Series(dtype="str"), "Country": pd.Series(dtype="str")})
    counts = orders.groupby(["CustomerID", "Country"], sort=True, observed=True)["lines"].sum().reset_index()
    counts = counts.sort_values(["CustomerID", "lines", "Country"], ascending=[True, False, True], kind="stable")
    return counts.drop_duplicates("CustomerID")[["CustomerID", "Country"]].reset_index(drop=True)


def chaid_table(features: pd.DataFrame, target: pd.Series, countries: pd.DataFrame) -> pd.DataFrame:
    """The tree's input: per customer recency_days, frequency, monetary, Country and the target.

    features: CustomerID, recency_days, frequency, monetary (rfm_scores, or a propensity
    snapshot); target: a binary Series indexed by CustomerID, named as the target column;
    countries: CustomerID, Country (customer_country). Customers without a target value are
    left out; those without a country get "Unknown". Sorted by CustomerID.
    """
    name = target.name or "target"
    values = target.dropna().astype("int64").rename(name)
    table = features[["CustomerID", *ORDINAL]].merge(
        values.rename_axis("CustomerID").reset_index(), on="CustomerID", how="inner", validate="one_to_one",
    ).merge(countries[["CustomerID", "Country"]], on="CustomerID", how="left", validate="one_to_one")
    table["Country"] = table["Country"].fillna(UNKNOWN_COUNTRY)
    table = table[["CustomerID", *ORDINAL, "Country", name]]
    return table.sort_values("CustomerID", kind="stable").reset_index(drop=True)


def repurchase_table(orders: pd.DataFrame, cutoff: pd.Timestamp | str, horizon: int) -> pd.DataFrame:
    """Target `repurchased`: the propensity training snapshot (features and Country before T_train)."""
    cutoff = pd.Timestamp(cutoff)
    _, t_train = snapshot_dates(cutoff, horizon)
    orders = orders.loc[(orders["InvoiceDate"] < cutoff).to_numpy()]
    train = snapshot(orders, t_train, label_end=cutoff)
    before = orders.loc[(orders["InvoiceDate"] < t_train).to_numpy()]
    target = train.set_index("CustomerID")["label"].rename("repurchased")
    return chaid_table(train, target, customer_country(before))


def high_value_table(rfm: pd.DataFrame, labels: pd.DataFrame, orders: pd.DataFrame) -> pd.DataFrame:
    """Target `high_value`: 1 for the most valuable k-means segment (segment == 0); RFM as of the cutoff."""
    target = labels.set_index("CustomerID")["segment"].eq(0).astype("int64").rename("high_value")
    return chaid_table(rfm, target, customer_country(orders))


TARGETS = ("repurchase", "segment")


def chaid_stage(orders: pd.DataFrame, labels: pd.DataFrame, *, cutoff, horizon: int, chaid_target: str,
                chaid_max_depth: int, chaid_min_parent: int, chaid_min_child: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The chaid stage: a tree explaining repurchase within the horizon (the propensity target, from
    the training snapshot), or membership of the high-value segment (`chaid_target="segment"`)."""
    from customer_segments.tasks.methods.rfm import rfm_values

    if chaid_target not in TARGETS:
        raise ParameterError(STAGE, f"--chaid-target must be one of {', '.join(TARGETS)}, got {chaid_target!r}")
    if chaid_target == "repurchase":
        table, target = repurchase_table(orders, cutoff, horizon), "repurchased"
    else:
        table, target = high_value_table(rfm_values(orders, cutoff), labels, orders), "high_value"
    if len(table) < chaid_min_parent or table[target].nunique() < 2:
        # Too little history (early in a series, or a short window) or nothing to explain: the
        # run goes on with no leaves, and the manifest says why.
        return (pd.DataFrame({"chaid_segment": pd.Series(dtype="int64"), "rule": pd.Series(dtype="str"),
                              "customers": pd.Series(dtype="int64"), "responders": pd.Series(dtype="int64"),
                              "response_rate": pd.Series(dtype="float64"), "depth": pd.Series(dtype="int64"),
                              "node_id": pd.Series(dtype="int64")}),
                pd.DataFrame({"CustomerID": pd.Series(dtype="str"), "chaid_segment": pd.Series(dtype="int64")}))
    return chaid_segments(table, target, chaid_max_depth, chaid_min_parent, chaid_min_child)


def chaid_metrics(frames, params) -> dict:
    segments = frames["chaid_segments"]
    top = segments.iloc[0] if len(segments) else None
    note = None if len(segments) else (
        "no tree: fewer customers than --chaid-min-parent with the history it needs, or a single outcome")
    return {"chaid_target": params.get("chaid_target"), "chaid_leaves": len(segments), "chaid_note": note,
            "chaid_top_rule": None if top is None else str(top["rule"]),
            "chaid_top_response_rate": None if top is None else round(float(top["response_rate"]), 4)}
