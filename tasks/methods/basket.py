"""Market basket analysis: which products are bought together, per segment and for all customers.

A basket is one invoice (InvoiceNo); an item is a StockCode, shown with its most frequent
description. Frequent itemsets are counted exactly with sparse matrix products
(`frequent_itemsets`: the same itemsets as mlxtend's FP-growth, tested) and rules come from
mlxtend's `association_rules`; everything here is pure (frames and plain values in, frames out).

Memory stays bounded by pruning before any matrix is built. An itemset is frequent when it is in
at least `min_share` of the group's baskets and in at least `min_baskets` baskets; an itemset is
never in more baskets than its rarest item, so items below that count cannot be part of any
frequent itemset and are dropped first. The remaining basket x item incidence is a scipy sparse
matrix: on the full UCI data 17,626 baskets x 625 items instead of x 3,648 items, and no dense
baskets x items array is ever built.

On a large input a group's rules are mined from a sample of its baskets. The sample is as big as
the support threshold needs: with `sample_error` = e, an itemset whose support is the threshold s
has its support estimated within +-e*s at 99% confidence when n = z^2 (1 - s) / (e^2 s) baskets
are drawn at random (z = 2.5758, the normal approximation of the binomial): 65,690 baskets for
s = 1% and e = 10%, whatever the group's size. A group with fewer baskets is mined whole, so
results on inputs of that size are exact. The draw is seeded: the n baskets whose InvoiceNo has
the smallest keyed hash, so the same input gives the same sample, and a segment's sample is
part of the all-customers sample. The rules' support, confidence, lift, leverage and conviction
are then those of the sample, and `baskets` the support times the group's baskets.

`conviction` is kept as mlxtend gives it: +inf when the confidence is 1 (the consequent is in
every basket holding the antecedent). Parquet stores inf as it is; readers should not take it for
a missing value.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd

from customer_segments.tasks.encoding import dictionary_codes, dictionary_encoded, positions
from customer_segments.tasks.methods.products import (
    codes_of, most_frequent_names, name_counts, product_lines, product_names, service_lines,
)

# The thresholds (min_share, min_baskets, max_len, min_lift) are run parameters: their defaults,
# bounds and help are declared with the basket stage in tasks/catalogue.py.
PER_PRODUCT = 3

# Sampling (see the module's docstring): the confidence of the stated error, and the key of the
# hash that draws the baskets (fixed, so that a rerun draws the same ones).
SAMPLE_CONFIDENCE = 0.99
SAMPLE_SEED = "basket-sample-01"

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


def sample_size(n_baskets: int, min_share: float, min_baskets: int, sample_error: float) -> int:
    """Baskets to mine of a group of `n_baskets`: all of them, or the sample that estimates the
    support of an itemset at the threshold within `sample_error` of it (relative, at 99%
    confidence). `sample_error` 0 never samples."""
    if sample_error <= 0 or n_baskets == 0:
        return n_baskets
    share = min(max(min_share, min_baskets / n_baskets), 1.0)
    if share >= 1.0:
        return n_baskets
    z = NormalDist().inv_cdf(0.5 + SAMPLE_CONFIDENCE / 2)
    return min(n_baskets, math.ceil(round(z * z * (1 - share) / (sample_error * sample_error * share), 6)))


def sampled_baskets(lines: pd.DataFrame, size: int) -> pd.DataFrame:
    """The lines of `size` baskets drawn at random, reproducibly: those whose InvoiceNo has the
    smallest keyed hash (a uniform draw without replacement that does not depend on row order)."""
    column = lines["InvoiceNo"]
    if isinstance(column.dtype, pd.CategoricalDtype):
        # On the codes: the distinct invoices in order of appearance (as pd.unique gives them),
        # hashed as strings; the chosen lines are a lookup by code, not a search of strings.
        codes = column.cat.codes.to_numpy()
        present = pd.unique(codes[codes >= 0])
        if size >= len(present):
            return lines
        chosen = np.zeros(len(column.cat.categories) + 1, dtype=bool)  # the last: missing (code -1)
        chosen[present[drawn(pd.Series(column.cat.categories.take(present)), size)]] = True
        return lines[chosen[codes]]
    invoices = pd.Series(pd.unique(column.dropna()))
    if size >= len(invoices):
        return lines
    chosen = invoices.to_numpy()[drawn(invoices, size)]
    return lines[column.isin(chosen).to_numpy()]


def drawn(invoices: pd.Series, size: int) -> np.ndarray:
    """Positions of the `size` distinct invoices (in order of first appearance) with the smallest
    keyed hash: the baskets `sampled_baskets` draws."""
    return smallest(invoice_hashes(invoices), size)


def invoice_hashes(invoices: pd.Series) -> np.ndarray:
    return pd.util.hash_pandas_object(invoices.astype("str"), index=False, hash_key=SAMPLE_SEED).to_numpy()


def smallest(hashes: np.ndarray, size: int) -> np.ndarray:
    return np.argpartition(hashes, size - 1)[:size]


def frequent_rules(
    lines: pd.DataFrame,
    min_share: float,
    min_baskets: int,
    max_len: int | None,
    min_lift: float,
    min_confidence: float = 0.0,
    sample_error: float = 0.0,
) -> pd.DataFrame:
    """Association rules of one group of cleaned lines (InvoiceNo, StockCode), strongest first.

    One row per rule: antecedents and consequents as sorted StockCodes joined by ", ", the
    antecedent's size, the baskets holding the whole rule, and mlxtend's support, confidence,
    lift, leverage and conviction. Sorted by lift, confidence, support (all descending), then
    antecedents and consequents. No rule (or no line) gives an empty frame of the same columns.

    Itemsets are kept when in at least `min_basket_count(...)` baskets, i.e. at a support of
    max(min_share, min_baskets / n_baskets); rules when lift >= min_lift and confidence >=
    min_confidence. `max_len` bounds the items of a whole rule (antecedent plus consequent).

    With `sample_error` > 0, a group bigger than `sample_size(...)` is mined from that many of
    its baskets (`sampled_baskets`) at the same support threshold; `baskets` is then the
    estimate for the whole group.
    """
    all_baskets = int(lines["InvoiceNo"].dropna().nunique())
    size = sample_size(all_baskets, min_share, min_baskets, sample_error)
    sample = sampled_baskets(lines, size) if size < all_baskets else lines
    return mined_rules(sample, all_baskets, size, min_share, min_baskets, max_len, min_lift, min_confidence)


def mined_rules(lines: pd.DataFrame, all_baskets: int, size: int, min_share: float, min_baskets: int,
                max_len: int | None, min_lift: float, min_confidence: float = 0.0) -> pd.DataFrame:
    """The rules of a group of `all_baskets` baskets from `lines`: all of its lines, or, when
    `size` < `all_baskets`, the lines of the `size` baskets `sampled_baskets` draws (mined at the
    group's support threshold; `baskets` then estimated for the whole group)."""
    if size < all_baskets:
        share = max(min_share, min_baskets / all_baskets)
        rules = _mined_rules(lines, share, 1, max_len, min_lift, min_confidence)
        rules = rules.assign(baskets=np.rint(rules["support"].to_numpy() * all_baskets).astype("int64"))
    else:
        rules = _mined_rules(lines, min_share, min_baskets, max_len, min_lift, min_confidence)
    # For the manifest (not stored with the data): the group's baskets and how many were mined.
    rules.attrs = {"baskets": all_baskets, "mined": size}
    return rules


def _mined_rules(lines: pd.DataFrame, min_share: float, min_baskets: int, max_len: int | None,
                 min_lift: float, min_confidence: float) -> pd.DataFrame:
    from mlxtend.frequent_patterns import association_rules
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
    matrix = sparse.csc_matrix(
        (np.ones(len(pairs), dtype="int32"), (rows, columns)), shape=(n_baskets, len(items))
    )
    itemsets = frequent_itemsets(matrix, [str(code) for code in items], min_count, max_len)
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


def frequent_itemsets(matrix, names: list[str], min_count: int, max_len: int | None) -> pd.DataFrame:
    """The itemsets in at least `min_count` baskets, of at most `max_len` items: mlxtend's frame
    (support, itemsets as frozensets of `names`), counted exactly with sparse matrix products.

    `matrix` is the 0/1 basket x item incidence (scipy CSC). Level by level: P holds, for each
    frequent itemset of the level, the baskets that contain it; P' X counts every extension by
    one more item at once, and an extension by an item after the itemset's last is frequent when
    its count reaches `min_count` (every subset of a frequent itemset is frequent, so nothing is
    missed). The work is in scipy's compiled products, and with `max_len` bounded so is the
    number of levels; mlxtend's FP-growth built the same itemsets from Python objects, which took
    most of the stage on millions of lines.
    """
    n_baskets, n_items = matrix.shape
    counts = np.asarray(matrix.sum(axis=0)).ravel()
    level = np.flatnonzero(counts >= min_count)[:, None]
    found_sets, found_counts = [level], [counts[level[:, 0]]]
    contains = matrix[:, level[:, 0]]
    size = 1
    while len(level) and (max_len is None or size < max_len):
        extended = (contains.T.tocsr() @ matrix).tocoo()
        keep = (extended.col > level[extended.row, -1]) & (extended.data >= min_count)
        row, col, count = extended.row[keep], extended.col[keep], extended.data[keep]
        order = np.lexsort((col, row))
        row, col, count = row[order], col[order], count[order]
        level = np.column_stack([level[row], col])
        contains = contains[:, row].multiply(matrix[:, col]).tocsc()
        found_sets.append(level)
        found_counts.append(count)
        size += 1
    names = np.asarray(names, dtype=object)
    itemsets = [frozenset(names[row]) for sets in found_sets for row in sets]  # one per frequent itemset
    support = np.concatenate(found_counts).astype("float64") / float(n_baskets)
    return pd.DataFrame({"support": support, "itemsets": itemsets})


def basket_rules(
    clean: pd.DataFrame,
    labels: pd.DataFrame,
    service_codes: pd.DataFrame | None,
    min_share: float,
    min_baskets: int,
    max_len: int | None,
    min_lift: float,
    sample_error: float = 0.0,
    names: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Rules of all customers together (segment -1) and of each segment, with product names
    (`names`, else `product_names(clean)`).

    Service lines (postage, fees, vouchers) are dropped first. A segment's baskets are the
    invoices of its customers (cleaned lines joined to `labels` on CustomerID); "All customers"
    are all the cleaned lines, so its rules equal `basket_table(clean, service_codes)`.
    """
    lines = product_lines(clean, service_codes)
    # Invoices and items as categoricals (integer codes; items in the order of their codes) and
    # each line's segment by its customer's position in labels: the groups are then masks over
    # integer columns, not copies of string columns joined and grouped at every line.
    invoice, invoices = codes_of(lines["InvoiceNo"])
    item, items = codes_of(lines["StockCode"], sort=True)
    compact = pd.DataFrame({"InvoiceNo": pd.Categorical.from_codes(invoice, categories=invoices),
                            "StockCode": pd.Categorical.from_codes(item, categories=items)})
    segments = Segments(labels)
    segment_of_line = segments.of(lines["CustomerID"])
    groups = [(segments.everyone, compact)]
    for segment, key in segments.keyed():
        in_segment = segment_of_line == segment
        if in_segment.any():
            groups.append((key, compact[in_segment]))
    mined = [(key, frequent_rules(group, min_share, min_baskets, max_len, min_lift, sample_error=sample_error))
             for key, group in groups]  # a handful of segments
    return segments.rules_table(mined, product_names(clean) if names is None else names)


class Segments:
    """The segments of `labels` as the basket rules group them: each customer's segment, and each
    group's key (segment, segment_name and, when labels have it, segment_id), all customers first."""

    def __init__(self, labels: pd.DataFrame):
        self.keys = ["segment", "segment_name", *(["segment_id"] if "segment_id" in labels.columns else [])]
        people = labels[["CustomerID", *self.keys]].drop_duplicates("CustomerID")
        self.customers = pd.Index(people["CustomerID"])
        self.segment = people["segment"].to_numpy()
        self.everyone = (ALL_CUSTOMERS, ALL_CUSTOMERS_NAME, ALL_CUSTOMERS_ID)[: len(self.keys)]
        self._people = people

    def of(self, customer_ids) -> np.ndarray:
        """Each line's segment; ALL_CUSTOMERS - 1 for a customer without one."""
        position = self.customers.get_indexer(customer_ids)
        return np.where(position >= 0, self.segment[position], ALL_CUSTOMERS - 1)

    def keyed(self):
        """(segment, group key) of each segment, in segment order."""
        firsts = self._people.drop_duplicates("segment").sort_values("segment").set_index("segment")[self.keys[1:]]
        for segment, key in firsts.iterrows():
            yield segment, (segment, *key.tolist())

    def rules_table(self, mined: list, names: pd.DataFrame) -> pd.DataFrame:
        """One frame of each group's rules (`mined`: (key, rules) pairs), keyed and named."""
        frames = []
        for key, rules in mined:
            rules = rules.copy()
            for position, (column, value) in enumerate(zip(self.keys, key)):
                rules.insert(position, column, value)
            frames.append(rules)
        segment_dtypes = {key: SEGMENT_DTYPES[key] for key in self.keys}
        found = [f for f in frames if len(f)]
        rules = pd.concat(found, ignore_index=True) if found else _empty({**segment_dtypes, **RULE_DTYPES})
        rules = with_names(rules.astype(segment_dtypes), names)
        rules.attrs = {"mined": [{"segment": int(key[0]), **group.attrs} for key, group in mined]}
        return rules


def basket_table(
    clean: pd.DataFrame,
    service_codes: pd.DataFrame | None,
    country: str | None,
    min_share: float,
    min_baskets: int,
    min_lift: float,
    max_len: int | None,
    sample_error: float = 0.0,
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
    rules = frequent_rules(lines, min_share, min_baskets, max_len, min_lift, sample_error=sample_error)
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
# Rules matched against customers at a time, strongest first (see customer_recommendations).
RULE_BLOCK = 128


def customer_recommendations(lines: pd.DataFrame, labels: pd.DataFrame, rules: pd.DataFrame,
                             top_products: pd.DataFrame, per_customer: int = PER_CUSTOMER,
                             names: pd.DataFrame | None = None) -> pd.DataFrame:
    """Up to `per_customer` items for each customer: long form (CustomerID, rank, StockCode, Description, source).

    First the consequents of their segment's single-consequent rules whose antecedents they all
    bought and whose consequent they did not, strongest lift first (then confidence, support,
    code; each item once); then, to fill up, their segment's best sellers they have not bought,
    best first. `lines` are product lines (CustomerID, StockCode, and Description to name the
    items, unless `names` is given: `product_names(lines)`).

    Customers and items are integer codes and "bought all the antecedents" is one sparse
    product per segment (customers x items times items x rules: how many of a rule's antecedents
    each customer bought), so the work grows with the purchases and the rules that apply, not
    with customers times rules.
    """
    customers = recommended_customers(labels)
    pairs = lines[["CustomerID", "StockCode"]].dropna()
    who = customers.get_indexer(pairs["CustomerID"])
    known = who >= 0
    # Items numbered as the bought ones are (a categorical's codes); the numbering only keys
    # items, it orders nothing.
    item_of, items = codes_of(pairs["StockCode"][known])
    if names is None and "Description" in lines.columns:
        names = product_names(lines)
    return recommended(customers, Segments(labels).of(customers), who[known], item_of, items, rules, top_products,
                       per_customer, names)


def recommended_customers(labels: pd.DataFrame) -> pd.Index:
    """The customers of `customer_recommendations`, in the order its output lists them."""
    return pd.Index(labels["CustomerID"].drop_duplicates()).sort_values()


def recommended(customers: pd.Index, segment_of: np.ndarray, bought_by: np.ndarray, bought: np.ndarray,
                items: pd.Index, rules: pd.DataFrame, top_products: pd.DataFrame, per_customer: int,
                names: pd.DataFrame | None) -> pd.DataFrame:
    """`customer_recommendations` from what each customer bought: (customer, item) pairs as
    positions in `customers` (whose segments are `segment_of`) and in `items` (repeats allowed).

    A customer's recommendations depend on their own purchases and segment only: those of a run
    of customers are the same rows as in the table of all of them.
    """
    from scipy import sparse

    columns = {"CustomerID": "str", "rank": "int64", "StockCode": "str", "Description": "str", "source": "str"}
    single = rules[(rules["segment"] >= 0) & ~rules["consequents"].str.contains(SEPARATOR, regex=False)]
    single = _sort_by_strength(single.reset_index(drop=True), ["segment"], "consequents").reset_index(drop=True)
    antecedents = single["antecedents"].str.split(SEPARATOR, regex=False).explode()
    best = top_products[["segment", "rank", "StockCode"]]
    # After the bought items, the rules' and best sellers' items no line holds.
    others = pd.concat([single["consequents"], antecedents, best["StockCode"]], ignore_index=True).astype("str")
    items = pd.Index(items, dtype="str")
    items = items.append(pd.Index(others[~others.isin(items)].unique(), dtype="str"))
    codes = items.get_indexer(others)
    n_items = max(len(items), 1)
    consequent_item = codes[:len(single)]
    antecedent_item = codes[len(single):len(single) + len(antecedents)]
    best_item = codes[len(single) + len(antecedents):]
    owned = _sorted_unique(bought_by.astype("int64") * n_items + bought)  # (customer, item) keys

    picks = [np.empty((0, 3), dtype="int64")]  # (customer, rule, item)
    if len(single):
        basket_matrix = sparse.csr_matrix(
            (np.ones(len(owned), dtype="int32"), (owned // n_items, owned % n_items)), shape=(len(customers), n_items)
        )
        rule_of_part = antecedents.index.to_numpy()
        sizes = single["antecedent_size"].to_numpy()
        rule_segment = single["segment"].to_numpy()
        for segment in np.unique(rule_segment):  # a handful of segments
            waiting = np.flatnonzero(segment_of == segment)
            in_segment = np.flatnonzero(rule_segment == segment)
            segment_picks = np.empty((0, 3), dtype="int64")
            # The rules in order of strength, a block at a time: a customer who has `per_customer`
            # distinct items from the stronger rules needs no weaker one, so most customers leave
            # after the first block and the product stays small however many rules apply.
            for start in range(0, len(in_segment), RULE_BLOCK):
                if len(waiting) == 0:
                    break
                block = in_segment[start:start + RULE_BLOCK]
                first, last = block[0], block[-1]  # a segment's rules are contiguous (sorted by segment)
                parts = (rule_of_part >= first) & (rule_of_part <= last)
                antecedent_matrix = sparse.csr_matrix(
                    (np.ones(int(parts.sum()), dtype="int32"), (antecedent_item[parts], rule_of_part[parts] - first)),
                    shape=(n_items, len(block)),
                )
                held = (basket_matrix[waiting] @ antecedent_matrix).tocoo()
                applies = held.data == sizes[first + held.col]
                customer, rule = waiting[held.row[applies]], first + held.col[applies].astype("int64")
                item = consequent_item[rule]
                fresh = ~_contains(owned, customer.astype("int64") * n_items + item)
                found = np.column_stack([customer[fresh], rule[fresh], item[fresh]]).astype("int64")
                segment_picks = np.concatenate([segment_picks, found])
                distinct = _sorted_unique(segment_picks[:, 0] * n_items + segment_picks[:, 2]) // n_items
                done = np.flatnonzero(np.bincount(distinct, minlength=len(customers)) >= per_customer)
                waiting = waiting[~np.isin(waiting, done)]
            picks.append(segment_picks)
    found = np.concatenate(picks)
    found = found[np.lexsort((found[:, 1], found[:, 0]))]
    from_rules = pd.DataFrame(found, columns=["customer", "key", "item"]).drop_duplicates(["customer", "item"])
    from_rules = from_rules[from_rules.groupby("customer", sort=False).cumcount() < per_customer]

    # Fill up with the segment's best sellers the customer has not bought (nor been given already).
    best_codes = pd.DataFrame({"segment": best["segment"].to_numpy(), "key": best["rank"].to_numpy(), "item": best_item})
    chosen = pd.DataFrame({"customer": np.arange(len(customers)), "segment": segment_of}).merge(best_codes, on="segment")
    taken = _sorted_unique(np.concatenate([owned, from_rules["customer"].to_numpy() * n_items
                                           + from_rules["item"].to_numpy()]))
    chosen = chosen[~_contains(taken, chosen["customer"].to_numpy() * n_items + chosen["item"].to_numpy())]
    chosen = chosen.sort_values(["customer", "key"], kind="stable")
    have = np.bincount(from_rules["customer"].to_numpy(), minlength=len(customers))
    room = per_customer - have[chosen["customer"].to_numpy()]
    chosen = chosen[chosen.groupby("customer", sort=False).cumcount().to_numpy() < room]

    both = pd.concat([from_rules.assign(order=0, source="basket rule"),
                      chosen[["customer", "key", "item"]].assign(order=1, source="best seller")], ignore_index=True)
    both = both.sort_values(["customer", "order", "key"], kind="stable")
    out = pd.DataFrame({
        "CustomerID": customers[both["customer"].to_numpy()].to_numpy(),
        "rank": both.groupby("customer", sort=False).cumcount().to_numpy() + 1,
        "StockCode": items[both["item"].to_numpy()].to_numpy() if len(items) else np.array([], dtype=object),
        "source": both["source"].to_numpy(),
    })
    if names is not None:
        out = out.merge(names, on="StockCode", how="left", validate="many_to_one")
    else:
        out["Description"] = pd.NA
    out["Description"] = out["Description"].astype("str").str.strip()
    return out[list(columns)].astype(columns).reset_index(drop=True)


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """The distinct values of an integer array, sorted (a sort and one pass: numpy's hash-based
    unique is several times slower on millions of keys)."""
    keys = np.sort(keys)
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each of `keys` is in the sorted array `sorted_keys`."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    at = np.searchsorted(sorted_keys, keys).clip(max=len(sorted_keys) - 1)
    return sorted_keys[at] == keys


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


def basket_stage(clean: pd.DataFrame, labels: pd.DataFrame, top_products: pd.DataFrame, *,
                 service_codes: list[dict] | None, basket_min_support: float, basket_min_baskets: int,
                 basket_min_lift: float, basket_max_len: int,
                 basket_sample_error: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """The basket stage: rules per segment and for all customers, the recommendations per best
    seller (`top_products`, the best_sellers stage's output) and per customer, the chart."""
    codes = pd.DataFrame(service_codes) if service_codes else None
    # Once, and only the columns the rules and recommendations read, with the text columns as
    # categories: at millions of lines a filtered copy of every column would be gigabytes, and
    # each grouping, join and filter of the string columns would hash them again.
    columns = ["CustomerID", "InvoiceNo", "StockCode", "Description"]
    lines = product_lines(categorized(clean[columns], columns), codes)
    names = product_names(lines)
    rules = basket_rules(lines, labels, None, basket_min_support, basket_min_baskets, basket_max_len, basket_min_lift,
                         sample_error=basket_sample_error, names=names)
    per_customer = customer_recommendations(lines, labels, rules, top_products, names=names)
    return rules, recommendations(rules, top_products), per_customer, {"basket_top_rules": top_rules_plot(rules)}


def categorized(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """`frame` with the text `columns` as categoricals whose categories are in sorted order.

    Hashed once in Arrow's C++ (dictionary encoding); later groupings, joins and filters then
    work on integer codes, and sorting by a column is sorting by its codes, as for the strings.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    out = {}
    for column in frame.columns:
        if column not in columns:
            out[column] = frame[column]
            continue
        encoded = dictionary_encoded(frame[column])
        values = encoded.dictionary
        order = pc.array_sort_indices(values).to_numpy()
        rank = np.empty(len(order), dtype="int32")
        rank[order] = np.arange(len(order), dtype="int32")
        position = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        code = np.where(position >= 0, rank[np.maximum(position, 0)] if len(rank) else -1, -1)
        categories = pd.Index(values.take(pa.array(order)).to_pandas(), dtype="str")
        out[column] = pd.Categorical.from_codes(code, categories=categories)
    return pd.DataFrame(out, index=frame.index, copy=False)


def basket_metrics(frames, params) -> dict:
    """Rules per group, recommendations, and which groups were mined from a sample of their baskets."""
    per_customer = frames["customer_recommendations"]
    mined = frames["basket_rules"].attrs.get("mined", [])
    sampled = [group for group in mined if group["mined"] < group["baskets"]]
    sampling = {"basket_sampled_groups": sampled} if sampled else {}
    if sampled:
        sizes = ", ".join("{:,} of {:,}".format(group["mined"], group["baskets"]) for group in sampled)
        sampling["basket_sample_note"] = (
            f"{len(sampled)} of {len(mined)} group(s) mined from a random sample of their baskets "
            f"({sizes}): a rule's support is "
            f"estimated within {params['basket_sample_error']:.0%} of the support threshold at "
            f"{SAMPLE_CONFIDENCE:.0%} confidence")
    return rules_metrics(frames["basket_rules"]) | sampling | {
        "recommendations": len(frames["recommendations"]),
        "customers_with_recommendations": int(per_customer["CustomerID"].nunique()),
        "customer_recommendations_from_rules": int((per_customer["source"] == "basket rule").sum()),
    }


# --- the dask twin: the same on a dask.distributed cluster (the dask engine) --------------------

_BASKET_COLUMNS = ["CustomerID", "InvoiceNo", "StockCode", "Description"]
# The customers' recommendations are made in this many runs of customers, side by side on the
# cluster (each customer's depend on their own purchases only).
CUSTOMER_RUNS = 8


def basket_stage_dask(clean_lines, labels: pd.DataFrame, top_products: pd.DataFrame, *,
                      service_codes: list[dict] | None, basket_min_support: float, basket_min_baskets: int,
                      basket_min_lift: float, basket_max_len: int,
                      basket_sample_error: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """`basket_stage` on partitioned lines, without gathering them: the same tables and chart.

    Each partition's product lines are encoded once as integers (invoice, item, customer,
    segment) and kept on the cluster. From them come, to this process, what is small whatever the
    lines: each partition's distinct (invoice, segment) pairs in order of first appearance with
    the invoice's keyed hash, and its (StockCode, Description) counts. Every group's baskets are
    counted from the pairs and its sample drawn exactly as `sampled_baskets` draws it from the
    whole table; then only the lines of the drawn baskets come (every line of a group that is
    mined whole), and the rules are mined by the same code as on the pandas engine. The
    per-customer recommendations are made on the cluster, a run of customers at a time, from
    their purchases.
    """
    import dask
    import pyarrow as pa
    from distributed import get_client

    client = get_client()
    codes = pd.DataFrame(service_codes) if service_codes else None
    segments = Segments(labels)
    customers = recommended_customers(labels)
    segment_of = segments.of(customers)
    [people] = client.scatter([pd.DataFrame({"segment": segment_of}, index=customers)], broadcast=True)
    compact = client.compute([dask.delayed(_compact_lines)(part, people, codes)
                              for part in clean_lines[_BASKET_COLUMNS].to_delayed()])
    facts = client.gather(client.map(_basket_facts, compact))

    counts = pd.concat([f["names"] for f in facts], ignore_index=True)
    names = most_frequent_names(counts.groupby(["StockCode", "Description"], sort=True)["n"].sum().reset_index())
    items = pd.Index(sorted(set().union(*(f["items"] for f in facts))), dtype="str")
    pairs = pd.concat([f["invoices"] for f in facts], ignore_index=True)
    del facts
    mixed = pairs["hash"].to_numpy() ^ (pairs["segment"].to_numpy().astype("uint64") * np.uint64(0x9E3779B97F4A7C15))
    pairs = pairs[_firsts(mixed, pairs[["InvoiceNo", "segment"]])]
    invoices = pairs[pairs["InvoiceNo"].notna().to_numpy()]

    # Each group's baskets and, when it is sampled, the invoices drawn.
    groups, chosen = [], {}
    keyed = [(ALL_CUSTOMERS, segments.everyone, invoices[_firsts(invoices["hash"].to_numpy(), invoices[["InvoiceNo"]])],
              True)]
    for segment, key in segments.keyed():
        keyed.append((segment, key, invoices[invoices["segment"].to_numpy() == segment],
                      bool((pairs["segment"].to_numpy() == segment).any())))
    for segment, key, distinct, has_lines in keyed:
        if has_lines:
            size = sample_size(len(distinct), basket_min_support, basket_min_baskets, basket_sample_error)
            groups.append((segment, key, len(distinct), size))
            if size < len(distinct):
                chosen[segment] = distinct["InvoiceNo"].to_numpy()[smallest(distinct["hash"].to_numpy(), size)]
    del pairs, invoices, keyed

    [drawn_invoices] = client.scatter([{segment: pa.array(values, type=pa.large_string())
                                        for segment, values in chosen.items()}], broadcast=True)
    sample = pd.concat(client.gather(client.map(_drawn_lines, compact, chosen=drawn_invoices)), ignore_index=True)
    mined = []
    for segment, key, all_baskets, size in groups:
        lines = sample[sample["all"].to_numpy()] if segment == ALL_CUSTOMERS else \
            sample[(sample["segment"] == segment).to_numpy() & sample["own"].to_numpy()]
        mined.append((key, mined_rules(lines, all_baskets, size, basket_min_support, basket_min_baskets,
                                       basket_max_len, basket_min_lift)))
    rules = segments.rules_table(mined, names)

    bounds = np.linspace(0, len(customers), min(CUSTOMER_RUNS, max(len(customers), 1)) + 1).astype("int64")
    runs = [client.submit(_recommended_run, customers[lo:hi], segment_of[lo:hi],
                          client.map(_bought_by_run, compact, lo=lo, hi=hi), items, rules, top_products, names)
            for lo, hi in zip(bounds, bounds[1:])]
    per_customer = pd.concat(client.gather(runs), ignore_index=True)
    return rules, recommendations(rules, top_products), per_customer, {"basket_top_rules": top_rules_plot(rules)}


def _compact_lines(part: pd.DataFrame, people: pd.DataFrame, codes: pd.DataFrame | None) -> dict:
    """A partition's product lines as integer codes: invoice, item, customer (a position in
    `people`, -1: none) and segment; the values of the codes beside them, and its name counts."""
    item, items = dictionary_codes(part["StockCode"])
    product = np.ones(len(part), dtype=bool) if codes is None else ~service_lines(item, items, codes)
    invoice, invoices = dictionary_codes(part["InvoiceNo"])
    name, described = dictionary_codes(part["Description"])
    customer = positions(part["CustomerID"], people.index)[product].astype("int32")
    segment = np.where(customer >= 0, people["segment"].to_numpy()[customer], ALL_CUSTOMERS - 1).astype("int32")
    item = item[product]
    return {"invoice": invoice[product], "invoices": invoices, "item": item, "items": items,
            "customer": customer, "segment": segment, "names": name_counts(item, items, name[product], described)}


def _text(values: pd.Index, codes: np.ndarray) -> pd.Series:
    """The values of `codes` (-1: missing) as a text column."""
    return pd.Series(pd.array(np.asarray(values, dtype=object), dtype="str").take(codes, allow_fill=True), dtype="str")


def _basket_facts(compact: dict) -> dict:
    """A partition's distinct (invoice, segment) pairs in order of first appearance, each with its
    invoice's keyed hash; its (StockCode, Description) counts; its items."""
    pairs = pd.DataFrame({"invoice": compact["invoice"], "segment": compact["segment"]}).drop_duplicates()
    invoice = _text(compact["invoices"], pairs["invoice"].to_numpy())
    return {"invoices": pd.DataFrame({"InvoiceNo": invoice, "segment": pairs["segment"].to_numpy().astype("int64"),
                                      "hash": invoice_hashes(invoice)}),
            "names": compact["names"], "items": compact["items"]}


def _drawn_lines(compact: dict, chosen: dict) -> pd.DataFrame:
    """The lines of a partition in a drawn basket: of all customers' sample (`all`) or of its
    segment's (`own`); every line of a group that is not sampled."""
    import pyarrow as pa
    import pyarrow.compute as pc

    invoice, segment = compact["invoice"], compact["segment"]
    invoices = pa.array(compact["invoices"].array)

    def drawn_from(drawn_invoices: pa.Array) -> np.ndarray:
        drawn_invoices = drawn_invoices.cast(invoices.type)
        return np.append(pc.is_in(invoices, value_set=drawn_invoices).to_numpy(zero_copy_only=False), False)[invoice]

    everyone = drawn_from(chosen[ALL_CUSTOMERS]) if ALL_CUSTOMERS in chosen else np.ones(len(invoice), dtype=bool)
    own = segment >= 0
    for drawn_segment, drawn_invoices in chosen.items():
        if drawn_segment != ALL_CUSTOMERS:
            in_segment = segment == drawn_segment
            own[in_segment] = drawn_from(drawn_invoices)[in_segment]
    keep = everyone | own
    return pd.DataFrame({"InvoiceNo": _text(compact["invoices"], invoice[keep]),
                         "StockCode": _text(compact["items"], compact["item"][keep]),
                         "segment": segment[keep].astype("int64"), "all": everyone[keep], "own": own[keep]})


def _bought_by_run(compact: dict, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, pd.Index]:
    """A partition's distinct purchases of the customers at positions lo to hi: (customer - lo,
    item code) and the items of the codes."""
    customer, item = compact["customer"], compact["item"]
    inside = (customer >= lo) & (customer < hi) & (item >= 0)
    width = max(len(compact["items"]), 1)
    keys = _sorted_unique((customer[inside].astype("int64") - lo) * width + item[inside])
    return (keys // width).astype("int32"), (keys % width).astype("int32"), compact["items"]


def _recommended_run(customers: pd.Index, segment_of: np.ndarray, bought: list, items: pd.Index,
                     rules: pd.DataFrame, top_products: pd.DataFrame, names: pd.DataFrame) -> pd.DataFrame:
    """`recommended` for a run of customers, from the purchases `_bought_by_run` found in each partition."""
    bought_by = np.concatenate([by for by, _, _ in bought] or [np.empty(0, "int32")])
    item = np.concatenate([items.get_indexer(part_items).astype("int32")[codes] for _, codes, part_items in bought]
                          or [np.empty(0, "int32")])
    return recommended(customers, segment_of, bought_by, item, items, rules, top_products, PER_CUSTOMER, names)


def _firsts(hashes: np.ndarray, values: pd.DataFrame) -> np.ndarray:
    """Whether each row is the first of its `values`, found by their `hashes` (equal values have
    equal hashes): only rows whose hash repeats are compared, exactly."""
    repeated = pd.Series(hashes).duplicated(keep=False).to_numpy()
    first = np.ones(len(hashes), dtype=bool)
    if repeated.any():
        first[repeated] = ~values[repeated].duplicated().to_numpy()
    return first
