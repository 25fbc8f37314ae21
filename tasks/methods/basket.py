"""Market basket analysis: which products are bought together, per segment and for all customers.

A basket is one invoice (InvoiceNo); an item is a StockCode, shown with its most frequent
description. Frequent itemsets come from mlxtend's FP-growth and rules from its
`association_rules`; everything here is pure (frames and plain values in, frames out).

Memory stays bounded by pruning before any matrix is built. An itemset is frequent when it is in
at least `min_share` of the group's baskets and in at least `min_baskets` baskets; an itemset is
never in more baskets than its rarest item, so items below that count cannot be part of any
frequent itemset and are dropped first. The remaining basket x item incidence is a scipy CSR
matrix handed to mlxtend as a sparse DataFrame. mlxtend's FP-tree setup still materialises
`df.values` once as a dense boolean array, so the pruned width is what bounds it: on the full UCI
data 17,626 baskets x 625 items (11 MB) instead of x 3,648 items. The peak there (about 90 MB)
is mlxtend's FP-tree of Python objects, which pruning keeps small too.

`conviction` is kept as mlxtend gives it: +inf when the confidence is 1 (the consequent is in
every basket holding the antecedent). Parquet stores inf as it is; readers should not take it for
a missing value.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from customer_segments.tasks.methods.products import product_lines, product_names

# The thresholds (min_share, min_baskets, max_len, min_lift) are run parameters: their defaults,
# bounds and help are declared with the basket stage in tasks/catalogue.py.
PER_PRODUCT = 3

ALL_CUSTOMERS = -1
ALL_CUSTOMERS_NAME = "All customers"
ALL_CUSTOMERS_ID = "all"

# Codes of one side of a rule are sorted and joined with this; StockCodes never contain it.
SEPARATOR = ", "

RULE_DTYPES = {
    "antecedents": "str",
    "consequents": "str",
    "antecedent_size": "int64",
    "baskets": "int64",
    "support": "float64",
    "confidence": "float64",
    "lift": "float64",
    "leverage": "float64",
    "conviction": "float64",
}
NAME_DTYPES = {"antecedent_names": "str", "consequent_names": "str"}
SEGMENT_DTYPES = {"segment": "int64", "segment_name": "str", "segment_id": "str"}
RECOMMENDATION_DTYPES = {
    "segment": "int64",
    "segment_name": "str",
    "segment_id": "str",
    "best_seller_rank": "int64",
    "StockCode": "str",
    "Description": "str",
    "recommended_StockCode": "str",
    "recommended_Description": "str",
    "lift": "float64",
    "confidence": "float64",
    "support": "float64",
}
_MLXTEND_METRICS = ["support", "confidence", "lift", "leverage", "conviction"]
# Metrics are ratios of the same supports computed in different orders (A->B and B->A can differ
# in the last bit); sorting on rounded copies lets the code columns, not float noise, break ties.
_SORT_DECIMALS = 12


def min_basket_count(n_baskets: int, min_share: float, min_baskets: int) -> int:
    """Baskets an itemset must appear in: the larger of `min_share` of them and `min_baskets`.

    The same threshold as a support of max(min_share, min_baskets / n_baskets), held as a count:
    0.07 * 100 is 7.000000000000001 in binary floating point and its ceiling 8, so the share is
    rounded before the ceiling.
    """
    by_share = math.ceil(round(min_share * n_baskets, 9))
    return max(by_share, int(min_baskets), 1)


def frequent_rules(
    lines: pd.DataFrame,
    min_share: float,
    min_baskets: int,
    max_len: int | None,
    min_lift: float,
    min_confidence: float = 0.0,
) -> pd.DataFrame:
    """Association rules of one group of cleaned lines (InvoiceNo, StockCode), strongest first.

    One row per rule: antecedents and consequents as sorted StockCodes joined by ", ", the
    antecedent's size, the baskets holding the whole rule, and mlxtend's support, confidence,
    lift, leverage and conviction. Sorted by lift, confidence, support (all descending), then
    antecedents and consequents. No rule (or no line) gives an empty frame of the same columns.

    Itemsets are kept when in at least `min_basket_count(...)` baskets, i.e. at a support of
    max(min_share, min_baskets / n_baskets); rules when lift >= min_lift and confidence >=
    min_confidence. `max_len` bounds the items of a whole rule (antecedent plus consequent).
    """
    from mlxtend.frequent_patterns import association_rules, fpgrowth
    from scipy import sparse

    pairs = lines[["InvoiceNo", "StockCode"]].dropna().drop_duplicates()
    n_baskets = int(pairs["InvoiceNo"].nunique())
    if n_baskets == 0:
        return empty_rules()
    min_count = min_basket_count(n_baskets, min_share, min_baskets)
    item_baskets = pairs["StockCode"].value_counts()
    kept = item_baskets.index[item_baskets >= min_count]
    if len(kept) < 2:  # a rule needs two items
        return empty_rules()
    pairs = pairs[pairs["StockCode"].isin(kept)]
    rows, _ = pd.factorize(pairs["InvoiceNo"])
    columns, items = pd.factorize(pairs["StockCode"], sort=True)
    # All n_baskets rows, also those left empty by pruning: supports are shares of every basket.
    matrix = sparse.csr_matrix(
        (np.ones(len(pairs), dtype=bool), (rows, columns)), shape=(n_baskets, len(items))
    )
    onehot = pd.DataFrame.sparse.from_spmatrix(matrix, columns=[str(code) for code in items])
    # Half a basket below the count: mlxtend takes ceil(min_support * n), which float round-off
    # could lift by one, and keeps support >= min_support, which holds from min_count baskets on.
    itemsets = fpgrowth(onehot, min_support=(min_count - 0.5) / n_baskets, use_colnames=True, max_len=max_len)
    if not (itemsets["itemsets"].map(len) >= 2).any():
        return empty_rules()
    # num_itemsets by keyword: mlxtend 0.23.2-0.23.3 require it, later releases default it to 1.
    # Its other metrics (zhangs_metric, certainty, ...) divide by zero for an item in every
    # basket; they are dropped below, so their warnings are silenced here.
    with np.errstate(divide="ignore", invalid="ignore"):
        rules = association_rules(itemsets, num_itemsets=n_baskets, metric="lift", min_threshold=min_lift)
    rules = rules[rules["confidence"] >= min_confidence].reset_index(drop=True)
    if rules.empty:
        return empty_rules()
    antecedents, antecedent_size = _joined_codes(rules["antecedents"])
    consequents, _ = _joined_codes(rules["consequents"])
    out = pd.DataFrame({
        "antecedents": antecedents,
        "consequents": consequents,
        "antecedent_size": antecedent_size,
        # support is count / n_baskets exactly, so the product rounds back to the count.
        "baskets": np.rint(rules["support"].to_numpy() * n_baskets),
        **{metric: rules[metric] for metric in _MLXTEND_METRICS},
    })
    return _sorted_rules(out.astype(RULE_DTYPES))


def basket_rules(
    clean: pd.DataFrame,
    labels: pd.DataFrame,
    service_codes: pd.DataFrame | None,
    min_share: float,
    min_baskets: int,
    max_len: int | None,
    min_lift: float,
) -> pd.DataFrame:
    """Rules of all customers together (segment -1) and of each segment, with product names.

    Service lines (postage, fees, vouchers) are dropped first. A segment's baskets are the
    invoices of its customers (cleaned lines joined to `labels` on CustomerID); "All customers"
    are all the cleaned lines, so its rules equal `basket_table(clean, service_codes)`.
    """
    lines = product_lines(clean, service_codes)[["CustomerID", "InvoiceNo", "StockCode"]]
    has_id = "segment_id" in labels.columns
    keys = ["segment", "segment_name", *(["segment_id"] if has_id else [])]
    labelled = lines.merge(labels[["CustomerID", *keys]], on="CustomerID", how="inner", validate="many_to_one")

    groups = [((ALL_CUSTOMERS, ALL_CUSTOMERS_NAME, ALL_CUSTOMERS_ID)[: len(keys)], lines)]
    groups += list(labelled.groupby(keys, sort=True))
    frames = []
    for key, group in groups:  # a handful of segments
        rules = frequent_rules(group, min_share, min_baskets, max_len, min_lift)
        for position, (column, value) in enumerate(zip(keys, key)):
            rules.insert(position, column, value)
        frames.append(rules)
    segment_dtypes = {key: SEGMENT_DTYPES[key] for key in keys}
    found = [f for f in frames if len(f)]
    rules = pd.concat(found, ignore_index=True) if found else _empty({**segment_dtypes, **RULE_DTYPES})
    return with_names(rules.astype(segment_dtypes), product_names(clean))


def basket_table(
    clean: pd.DataFrame,
    service_codes: pd.DataFrame | None,
    country: str | None,
    min_share: float,
    min_baskets: int,
    min_lift: float,
    max_len: int | None,
) -> pd.DataFrame:
    """The rules of all the given cleaned lines (of one Country if given), with product names.

    What `segment basket` prints: the classic one-off analysis, without segments. A country
    with no lines is an error (a misspelt name would otherwise look like "no rules").
    """
    if country is not None:
        in_country = clean["Country"] == country
        if not in_country.any():
            known = ", ".join(sorted(clean["Country"].dropna().unique().tolist()))
            raise ValueError(f"no invoice lines of country {country!r}; the data has: {known}")
        clean = clean.loc[in_country.to_numpy()]
    lines = product_lines(clean, service_codes)
    rules = frequent_rules(lines, min_share, min_baskets, max_len, min_lift)
    return with_names(rules, product_names(clean))


def recommendations(rules: pd.DataFrame, top_products: pd.DataFrame, per_product: int = PER_PRODUCT) -> pd.DataFrame:
    """"Other items you might like": for each segment's best sellers, the strongest companions.

    For a best seller, the candidates are the consequents of that segment's rules whose
    antecedents contain it. Only single-item consequents count, so that the lift and confidence
    shown belong to the recommended product alone. Candidates are ranked by lift, then
    confidence, then support; a product is listed once per best seller (its strongest rule) and
    never as its own recommendation; at most `per_product` per best seller.
    """
    has_id = "segment_id" in top_products.columns or "segment_id" in rules.columns
    columns = [c for c in RECOMMENDATION_DTYPES if has_id or c != "segment_id"]
    single = rules[~rules["consequents"].str.contains(SEPARATOR, regex=False)]
    if single.empty or top_products.empty:
        return _empty({c: RECOMMENDATION_DTYPES[c] for c in columns})
    if "consequent_names" not in single.columns:  # rules without names: show the codes
        single = single.assign(consequent_names=single["consequents"])
    candidates = single.assign(StockCode=single["antecedents"].str.split(SEPARATOR, regex=False)).explode("StockCode")
    rule_columns = ["segment", "StockCode", "consequents", "consequent_names", "lift", "confidence", "support"]
    if "segment_id" in rules.columns and "segment_id" not in top_products.columns:
        rule_columns.append("segment_id")
    best = top_products.rename(columns={"rank": "best_seller_rank"})
    best_columns = ["segment", "segment_name", "segment_id", "best_seller_rank", "StockCode", "Description"]
    best = best[[c for c in best_columns if c in best.columns]]
    merged = best.merge(candidates[rule_columns], on=["segment", "StockCode"], how="inner")
    merged = merged[merged["consequents"] != merged["StockCode"]]
    merged = merged.rename(
        columns={"consequents": "recommended_StockCode", "consequent_names": "recommended_Description"}
    )
    merged = _sort_by_strength(merged, ["segment", "best_seller_rank"], "recommended_StockCode")
    merged = merged.drop_duplicates(["segment", "best_seller_rank", "recommended_StockCode"])
    merged = merged.groupby(["segment", "best_seller_rank"], sort=False).head(per_product)
    return merged[columns].astype({c: RECOMMENDATION_DTYPES[c] for c in columns}).reset_index(drop=True)


PER_CUSTOMER = 3
# Customers are matched against their segment's rules this many at a time: the join of their
# items with the rules' antecedents stays bounded whatever the number of customers.
CUSTOMER_BLOCK = 20_000


def customer_recommendations(lines: pd.DataFrame, labels: pd.DataFrame, rules: pd.DataFrame,
                             top_products: pd.DataFrame, per_customer: int = PER_CUSTOMER) -> pd.DataFrame:
    """Up to `per_customer` items for each customer: long form (CustomerID, rank, StockCode, Description, source).

    First the consequents of their segment's single-consequent rules whose antecedents they all
    bought and whose consequent they did not, strongest lift first (then confidence, support,
    code; each item once); then, to fill up, their segment's best sellers they have not bought,
    best first. `lines` are product lines (CustomerID, StockCode).
    """
    columns = {"CustomerID": "str", "rank": "int64", "StockCode": "str", "Description": "str", "source": "str"}
    bought = lines[["CustomerID", "StockCode"]].dropna().drop_duplicates()
    bought = bought.merge(labels[["CustomerID", "segment"]], on="CustomerID", how="inner", validate="many_to_one")
    single = rules[(rules["segment"] >= 0) & ~rules["consequents"].str.contains(SEPARATOR, regex=False)]
    single = _sort_by_strength(single.reset_index(drop=True), ["segment"], "consequents").reset_index(drop=True)
    single["rule"] = np.arange(len(single))
    parts = single.assign(StockCode=single["antecedents"].str.split(SEPARATOR, regex=False)).explode("StockCode")
    parts = parts[["segment", "rule", "StockCode", "antecedent_size"]]
    picks = []
    customers = bought["CustomerID"].drop_duplicates().sort_values(kind="stable").to_numpy()
    for start in range(0, len(customers), CUSTOMER_BLOCK):  # blocks of customers, not rows
        block = bought[bought["CustomerID"].isin(customers[start:start + CUSTOMER_BLOCK])]
        hits = block.merge(parts, on=["segment", "StockCode"], how="inner")
        counts = hits.groupby(["CustomerID", "rule"], sort=False).size().rename("n").reset_index()
        counts = counts.merge(single[["rule", "antecedent_size", "consequents"]], on="rule", how="left")
        applies = counts[counts["n"] == counts["antecedent_size"]][["CustomerID", "rule", "consequents"]]
        owned = applies.merge(block[["CustomerID", "StockCode"]], left_on=["CustomerID", "consequents"],
                              right_on=["CustomerID", "StockCode"], how="left", indicator=True)
        fresh = owned[owned["_merge"] == "left_only"].sort_values(["CustomerID", "rule"], kind="stable")
        fresh = fresh.drop_duplicates(["CustomerID", "consequents"])
        picks.append(fresh[["CustomerID", "consequents", "rule"]].rename(columns={"consequents": "StockCode"}))
    from_rules = (pd.concat(picks, ignore_index=True) if picks else pd.DataFrame(columns=["CustomerID", "StockCode", "rule"]))
    from_rules = from_rules.groupby("CustomerID", sort=False).head(per_customer).assign(source="basket rule")
    # Fill up with the segment's best sellers the customer has not bought (nor been given already).
    best = top_products[["segment", "rank", "StockCode"]]
    chosen = labels[["CustomerID", "segment"]].merge(best, on="segment", how="inner")
    taken = pd.concat([bought[["CustomerID", "StockCode"]], from_rules[["CustomerID", "StockCode"]]])
    chosen = chosen.merge(taken.drop_duplicates(), on=["CustomerID", "StockCode"], how="left", indicator=True)
    chosen = chosen[chosen["_merge"] == "left_only"].sort_values(["CustomerID", "rank"], kind="stable")
    have = from_rules.groupby("CustomerID").size()
    chosen["room"] = per_customer - chosen["CustomerID"].map(have).fillna(0).astype("int64")
    chosen = chosen[chosen.groupby("CustomerID").cumcount() < chosen["room"]].assign(source="best seller")
    both = pd.concat([from_rules.assign(order=0, key=from_rules.get("rule", 0)),
                      chosen.assign(order=1, key=chosen["rank"])], ignore_index=True)
    both = both.sort_values(["CustomerID", "order", "key"], kind="stable")
    both["rank"] = both.groupby("CustomerID").cumcount() + 1
    names = product_names(lines) if "Description" in lines.columns else None
    out = both[["CustomerID", "rank", "StockCode", "source"]].reset_index(drop=True)
    if names is not None:
        out = out.merge(names, on="StockCode", how="left", validate="many_to_one")
    else:
        out["Description"] = pd.NA
    out["Description"] = out["Description"].astype("str").str.strip()
    return out[list(columns)].astype(columns).reset_index(drop=True)


def rules_metrics(rules: pd.DataFrame) -> dict:
    """For the run manifest: rules in all, and rules and baskets of each group that has rules.

    A group's basket count is read back from any of its rules (baskets / support); a segment
    without a single rule at the thresholds does not appear.
    """
    if "segment" not in rules.columns:
        rules = rules.assign(segment=ALL_CUSTOMERS, segment_name=ALL_CUSTOMERS_NAME)
    keys = [c for c in ("segment", "segment_name", "segment_id") if c in rules.columns]
    per_group = rules.assign(total=rules["baskets"] / rules["support"]).groupby(keys, sort=True).agg(
        rules=("antecedents", "size"), baskets=("total", "max")
    ).reset_index()
    per_group["baskets"] = np.rint(per_group["baskets"]).astype("int64")
    return {"rules_total": int(len(rules)), "rules_by_segment": per_group.to_dict("records")}


def with_names(rules: pd.DataFrame, names: pd.DataFrame) -> pd.DataFrame:
    """Add antecedent_names and consequent_names: descriptions in the order of the codes.

    `names` is `product_names(...)` (StockCode, Description); a code without one shows as itself.
    Descriptions are trimmed: the exports pad many ("REGENCY TEA PLATE ROSES "), which would
    otherwise show as "ROSES , ..." once joined.
    """
    lookup = names.drop_duplicates("StockCode").set_index("StockCode")["Description"].str.strip()
    out = rules.copy()
    for side in ("antecedent", "consequent"):
        out[f"{side}_names"] = _names_of(out[f"{side}s"], lookup)
    return out.astype(NAME_DTYPES)


def top_rules_plot(rules: pd.DataFrame, per_segment: int = 5, side_width: int = 40):
    """Horizontal bars of the lift of each segment's strongest rules, labelled "A, B → C"."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    # A bare Figure (not pyplot) keeps no global state between runs or threads.
    fig = Figure(figsize=(9, 6), dpi=100, layout="constrained")
    ax = fig.subplots()
    if rules.empty:
        ax.text(0.5, 0.5, "No association rules at these thresholds", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    if "segment" not in rules.columns:
        rules = rules.assign(segment=ALL_CUSTOMERS, segment_name=ALL_CUSTOMERS_NAME)
    top = _sort_by_strength(rules, ["segment"], "antecedents", "consequents")
    top = top.groupby("segment", sort=True).head(per_segment).reset_index(drop=True)
    named = "antecedent_names" in top.columns
    left = _shortened(top["antecedent_names" if named else "antecedents"], side_width)
    right = _shortened(top["consequent_names" if named else "consequents"], side_width)
    labels = left + " → " + right
    # First segment at the top; a gap of one bar between segments.
    gaps = top["segment"].ne(top["segment"].shift()).cumsum() - 1
    y = -(np.arange(len(top)) + gaps.to_numpy())
    segments = top["segment"].drop_duplicates().tolist()
    colors = top["segment"].map({s: f"C{i % 10}" for i, s in enumerate(segments)})
    ax.barh(y, top["lift"], color=colors.tolist())
    firsts = top.drop_duplicates("segment")
    handles = [
        Patch(color=colors[i], label=name if segment == ALL_CUSTOMERS else f"{segment}: {name}")
        for i, segment, name in zip(firsts.index, firsts["segment"], firsts["segment_name"])
    ]
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)  # lift 1: bought together by chance
    ax.set_yticks(y, labels.tolist(), fontsize="x-small")
    ax.set_xlabel("Lift (how many times more often than by chance)")
    # Figure-level title and legend: long rule labels push the axes right, and a legend inside
    # would cover the bars.
    fig.suptitle(f"Strongest association rules by lift, top {per_segment} per segment")
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    return fig


def empty_rules() -> pd.DataFrame:
    """The rule columns of `frequent_rules` with no row."""
    return _empty(RULE_DTYPES)


def _empty(dtypes: dict) -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=dtype) for column, dtype in dtypes.items()})


def _joined_codes(itemsets: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Frozensets of StockCodes -> ("A, B" sorted, size), by exploding rather than a loop per rule."""
    codes = itemsets.explode().astype("str").rename("code").rename_axis("rule").reset_index()
    codes = codes.sort_values(["rule", "code"], kind="stable")
    return _join_by_position(codes["rule"], codes["code"], itemsets.index), \
        codes.groupby("rule", sort=True).size().reindex(itemsets.index)


def _names_of(joined: pd.Series, lookup: pd.Series) -> pd.Series:
    """"A, B" -> "name of A, name of B" in the same order."""
    if joined.empty:
        return pd.Series(index=joined.index, dtype="str")
    codes = joined.str.split(SEPARATOR, regex=False).explode()
    names = codes.map(lookup).fillna(codes)
    return _join_by_position(pd.Series(names.index, index=names.index), names.astype("str"), joined.index)


def _join_by_position(group: pd.Series, text: pd.Series, index: pd.Index) -> pd.Series:
    """Join each group's strings (in their order) with SEPARATOR: one column operation per
    position rather than a Python call per group (a rule has at most max_len items)."""
    frame = pd.DataFrame({"group": group.to_numpy(), "text": text.to_numpy()})
    frame["position"] = frame.groupby("group", sort=False).cumcount()
    wide = frame.pivot(index="group", columns="position", values="text")
    joined = wide[0].astype("str")
    for position in wide.columns[1:]:
        more = wide[position].notna()
        joined = joined.where(~more, joined + SEPARATOR + wide[position].astype("str"))
    return joined.reindex(index)


def _sorted_rules(rules: pd.DataFrame) -> pd.DataFrame:
    return _sort_by_strength(rules, [], "antecedents", "consequents").reset_index(drop=True)


def _sort_by_strength(frame: pd.DataFrame, first: list[str], *then: str) -> pd.DataFrame:
    """Sort by `first` ascending, lift, confidence, support descending, then `then` ascending."""
    metrics = ["lift", "confidence", "support"]
    keys = frame[metrics].round(_SORT_DECIMALS).add_prefix("_key_")
    order = pd.concat([frame[first + list(then)], keys], axis=1)
    by = [*first, *keys.columns, *then]
    ascending = [True] * len(first) + [False] * len(metrics) + [True] * len(then)
    index = order.sort_values(by, ascending=ascending, kind="stable").index
    return frame.loc[index]


def _shortened(text: pd.Series, width: int) -> pd.Series:
    text = text.astype("str").str.replace(r"\s+", " ", regex=True).str.strip()
    return text.where(text.str.len() <= width, text.str.slice(0, width - 1) + "…")


def basket_stage(clean: pd.DataFrame, labels: pd.DataFrame, *, service_codes: list[dict] | None,
                 basket_min_support: float, basket_min_baskets: int, basket_min_lift: float, basket_max_len: int
                 ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """The basket stage: rules per segment and for all customers, the recommendations per best
    seller and per customer, the chart.

    The best sellers are ranked here as the best_sellers stage ranks them (the same function on
    the same lines), so that the stage needs only the segments and can start as soon as they exist.
    """
    from customer_segments.tasks.segmentation.best_sellers import top_products

    codes = pd.DataFrame(service_codes) if service_codes else None
    rules = basket_rules(clean, labels, codes, basket_min_support, basket_min_baskets, basket_max_len, basket_min_lift)
    best = top_products(clean, labels, service_codes=codes)
    per_customer = customer_recommendations(product_lines(clean, codes), labels, rules, best)
    return rules, recommendations(rules, best), per_customer, {"basket_top_rules": top_rules_plot(rules)}


def basket_metrics(frames, params) -> dict:
    per_customer = frames["customer_recommendations"]
    return rules_metrics(frames["basket_rules"]) | {
        "recommendations": len(frames["recommendations"]),
        "customers_with_recommendations": int(per_customer["CustomerID"].nunique()),
        "customer_recommendations_from_rules": int((per_customer["source"] == "basket rule").sum()),
    }
