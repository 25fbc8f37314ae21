"""Synthetic invoice lines in the UCI "Online Retail" export form, with planted customer segments.

The real export (541,909 lines, 2010-12-01 .. 2011-12-09) cannot be shipped with the project, so
tests, demos and the committed sample run on data made here. It keeps the traits of the real file
that the pipeline has to cope with: multi-line invoices, guest checkouts without a CustomerID,
cancellation invoices ("C" prefix, negative quantities), non-product codes such as POST, one
country per customer with the United Kingdom dominant, a partial last month, and invoice numbers
that grow with time.

Each customer belongs to one of four planted behavioural segments. The pipeline clusters customers
on the ranks of TotalSales, OrderCount and AvgOrderValue, so every marginal becomes uniform and
only the ordering of customers survives. The segments are therefore laid out so that each one
holds its own rank interval of OrderCount and of AvgOrderValue: a 2x2 of order frequency x order
size with a wide gap between the levels, plus a smaller gap inside each level (for example "big
orders, infrequent" customers order three to five times a year, "low value" ones once or twice).
Without that inner ordering, k-means splits the largest segment rather than finding the planted
boundaries, because a rank space filled evenly has no gaps for it to follow.

Everything is drawn from one ``numpy.random.default_rng(seed)`` (the product catalogue from its own
fixed seed, so the shop's range is the same for every seed) and is vectorised over lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd


SEGMENTS: tuple[str, ...] = (
    "high_value",
    "big_orders_infrequent",
    "frequent_small_orders",
    "low_value",
)

SAMPLE_PATH = Path(__file__).parent / "sample" / "online_retail_sample.parquet"
SAMPLE_PARAMS = {"customers": 2000, "months": 13, "seed": 7}


@dataclass(frozen=True)
class SyntheticData:
    invoices: pd.DataFrame  # the eight export columns, raw form
    segments: pd.DataFrame  # CustomerID, planted_segment: one row per customer


@dataclass(frozen=True)
class _Profile:
    share: float
    orders_per_year: tuple[float, float]  # log-uniform range of a customer's orders in 12 months
    order_value: tuple[float, float]  # log-uniform range of a customer's typical order value (GBP)
    lines_per_order: float  # mean product lines on one invoice


# Orders: low_value 1-2 < big_orders_infrequent 3-5 << frequent_small_orders 7-13 < high_value 15-36.
# Order value: frequent_small_orders < low_value << high_value < big_orders_infrequent.
# The sub-ordering inside each level is what keeps the larger segments from being split by k-means.
_PROFILES = (
    _Profile(0.15, (15.0, 36.0), (500.0, 1500.0), 9.0),
    _Profile(0.20, (2.6, 5.5), (800.0, 2500.0), 12.0),
    _Profile(0.25, (6.6, 13.4), (20.0, 55.0), 4.0),
    _Profile(0.40, (1.0, 2.5), (60.0, 160.0), 5.0),
)
_ORDER_VALUE_NOISE = 0.3  # log-sd of one order's value around the customer's typical value
_GUEST = len(SEGMENTS)  # product-preference group of guest checkouts
_GUEST_LINE_SHARE = 0.25
_GUEST_LINES_PER_ORDER = 10.0
_GUEST_ORDER_VALUE = (120.0, 0.9)  # lognormal median and log-sd
_CANCEL_SHARE = 0.02  # of all invoices
_LAST_MONTH_DAYS = 9  # the UCI export stops on 2011-12-09
_FIRST_INVOICE = 536365  # the first invoice number of the UCI export

# Order volume by calendar month (January first) and weekday (Monday first): the UCI shop grows into
# the Christmas season and never trades on Saturdays.
_MONTH_WEIGHT = np.array([0.8, 0.75, 1.0, 0.85, 1.0, 1.0, 1.0, 1.0, 1.35, 1.5, 1.9, 1.2])
_WEEKDAY_WEIGHT = np.array([1.0, 1.1, 1.1, 1.25, 0.85, 0.0, 0.7])
# Invoices per hour of day 6..20 in the UCI export.
_HOUR_WEIGHT = np.array(
    [1, 383, 8909, 34332, 49037, 57674, 78709, 72259, 67471, 77519, 54516, 28509, 7974, 3705, 871],
    dtype=float,
)
_FIRST_HOUR = 6

# Quantities come in the pack sizes the wholesale trade uses, not arbitrary integers.
_PACKS = np.array(
    [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 18, 20, 24, 25, 30, 32, 36, 40, 48, 50, 60, 64, 72, 80, 96,
     100, 120, 144, 160, 192, 200, 240, 288, 300, 360, 384, 400, 480, 500, 576, 600, 720, 800, 960,
     1000, 1200, 1440, 1500, 2000, 2400, 2880, 3000, 4000, 4800],
    dtype=np.int64,
)
_BULK_QUANTITY = 144  # from a gross on a line gets the next lower price, as in the UCI data

_PRICES = np.array(
    [0.29, 0.36, 0.42, 0.49, 0.55, 0.65, 0.72, 0.85, 0.95, 1.06, 1.25, 1.45, 1.65, 1.85, 2.08,
     2.35, 2.55, 2.75, 2.95, 3.39, 3.75, 4.25, 4.95, 5.45, 5.95, 6.75, 7.95, 8.95, 9.95, 10.95,
     12.75, 14.95, 16.95, 19.95, 24.95, 29.95, 34.95, 39.95, 49.95]
)

# Share of customers per country; guests (no CustomerID) have their own, more domestic mix.
_COUNTRIES = (
    ("United Kingdom", 0.885), ("Germany", 0.024), ("France", 0.021), ("EIRE", 0.008),
    ("Spain", 0.008), ("Netherlands", 0.005), ("Belgium", 0.006), ("Switzerland", 0.005),
    ("Portugal", 0.004), ("Italy", 0.004), ("Finland", 0.003), ("Austria", 0.003),
    ("Norway", 0.003), ("Australia", 0.003), ("Denmark", 0.002), ("Channel Islands", 0.002),
    ("Sweden", 0.002), ("Japan", 0.002), ("Cyprus", 0.002), ("Poland", 0.002), ("USA", 0.001),
    ("Canada", 0.001), ("Israel", 0.001), ("Greece", 0.001), ("Iceland", 0.001),
    ("Lithuania", 0.001),
)
_GUEST_COUNTRIES = (
    ("United Kingdom", 0.95), ("EIRE", 0.01), ("France", 0.01), ("Germany", 0.01),
    ("Hong Kong", 0.01), ("Unspecified", 0.01),
)
_EUROPE = {
    "United Kingdom", "Germany", "France", "EIRE", "Spain", "Netherlands", "Belgium", "Switzerland",
    "Portugal", "Italy", "Finland", "Austria", "Norway", "Denmark", "Channel Islands", "Sweden",
    "Cyprus", "Poland", "Greece", "Iceland", "Lithuania",
}

# Non-product codes of the export. Foreign customers pay postage per box (EIRE is charged
# carriage instead), guests sometimes a web-shop postage, and a few invoices carry a manual line.
_POST, _CARRIAGE, _DOTCOM, _MANUAL = range(4)
_SERVICE_CODES = (("POST", "POSTAGE"), ("C2", "CARRIAGE"), ("DOT", "DOTCOM POSTAGE"), ("M", "Manual"))
_POSTAGE_SHARE = 0.7
_DOTCOM_SHARE = 0.1
_MANUAL_SHARE = 0.003


# ----------------------------------------------------------------------------------------------
# Product catalogue


# Real UCI products, first in popularity, so that familiar best sellers show up.
_ANCHORS = (
    ("85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "decor", 2.55),
    ("85099B", "JUMBO BAG RED RETROSPOT", "bags", 2.08),
    ("22423", "REGENCY CAKESTAND 3 TIER", "kitchen", 12.75),
    ("47566", "PARTY BUNTING", "party", 4.95),
    ("20725", "LUNCH BAG RED RETROSPOT", "bags", 1.65),
    ("84879", "ASSORTED COLOUR BIRD ORNAMENT", "decor", 1.65),
    ("22197", "SMALL POPCORN HOLDER", "party", 0.85),
    ("21212", "PACK OF 72 RETROSPOT CAKE CASES", "kitchen", 0.55),
    ("23084", "RABBIT NIGHT LIGHT", "toys", 2.08),
    ("22086", "PAPER CHAIN KIT 50'S CHRISTMAS", "christmas", 2.95),
    ("71053", "WHITE METAL LANTERN", "decor", 3.39),
    ("84406B", "CREAM CUPID HEARTS COAT HANGER", "decor", 2.75),
    ("84029G", "KNITTED UNION FLAG HOT WATER BOTTLE", "toys", 3.39),
    ("84029E", "RED WOOLLY HOTTIE WHITE HEART.", "toys", 3.39),
    ("22752", "SET 7 BABUSHKA NESTING BOXES", "toys", 7.95),
    ("21730", "GLASS STAR FROSTED T-LIGHT HOLDER", "decor", 4.25),
    ("22633", "HAND WARMER UNION JACK", "toys", 1.85),
    ("22632", "HAND WARMER RED POLKA DOT", "toys", 1.85),
    ("85099F", "JUMBO BAG STRAWBERRY", "bags", 2.08),
    ("22386", "JUMBO BAG PINK POLKADOT", "bags", 2.08),
    ("22720", "SET OF 3 CAKE TINS PANTRY DESIGN", "kitchen", 4.95),
    ("22457", "NATURAL SLATE HEART CHALKBOARD", "decor", 2.95),
    ("22960", "JAM MAKING SET WITH JARS", "kitchen", 4.25),
    ("22961", "JAM MAKING SET PRINTED", "kitchen", 1.45),
    ("22666", "RECIPE BOX PANTRY YELLOW DESIGN", "kitchen", 2.95),
    ("21977", "PACK OF 60 PINK PAISLEY CAKE CASES", "kitchen", 0.55),
    ("22727", "ALARM CLOCK BAKELIKE RED", "decor", 3.75),
    ("22726", "ALARM CLOCK BAKELIKE GREEN", "decor", 3.75),
    ("22728", "ALARM CLOCK BAKELIKE PINK", "decor", 3.75),
)

# (name template, category, lowest price, highest price); {m} is a motif.
_ITEMS = (
    ("JUMBO BAG {m}", "bags", 1.65, 2.08),
    ("LUNCH BAG {m}", "bags", 1.45, 1.65),
    ("{m} CHARLOTTE BAG", "bags", 0.72, 0.95),
    ("JUMBO STORAGE BAG {m}", "bags", 1.65, 2.08),
    ("{m} SHOPPER BAG", "bags", 1.25, 2.55),
    ("PACK OF 72 {m} CAKE CASES", "kitchen", 0.42, 0.55),
    ("PACK OF 20 {m} NAPKINS", "kitchen", 0.72, 0.85),
    ("SET OF 3 {m} TEA TOWELS", "kitchen", 2.95, 3.39),
    ("{m} APRON", "kitchen", 4.95, 5.95),
    ("{m} OVEN GLOVE", "kitchen", 1.25, 1.65),
    ("RECIPE BOX {m}", "kitchen", 2.55, 2.95),
    ("CHILDRENS CUTLERY {m}", "kitchen", 3.75, 4.25),
    ("LUNCH BOX WITH CUTLERY {m}", "kitchen", 2.35, 2.55),
    ("BAKING SET 9 PIECE {m}", "kitchen", 4.95, 5.95),
    ("{m} TEA SET CERAMIC 11 PC", "kitchen", 14.95, 16.95),
    ("{m} CAKESTAND 3 TIER", "kitchen", 10.95, 12.75),
    ("{m} MUG", "kitchen", 1.25, 1.65),
    ("{m} PAPER PLATES", "party", 0.85, 0.95),
    ("{m} PAPER CUPS", "party", 0.65, 0.85),
    ("{m} PARTY BUNTING", "party", 4.95, 5.95),
    ("PACK OF 6 {m} PARTY BAGS", "party", 0.36, 0.49),
    ("{m} POPCORN HOLDER", "party", 0.72, 0.85),
    ("{m} T-LIGHT HOLDER", "decor", 1.25, 4.25),
    ("{m} METAL LANTERN", "decor", 3.75, 6.75),
    ("{m} PHOTO FRAME", "decor", 2.55, 3.75),
    ("{m} CUSHION COVER", "decor", 3.75, 4.95),
    ("DOORMAT {m}", "decor", 6.75, 7.95),
    ("{m} METAL SIGN", "decor", 1.65, 2.95),
    ("{m} HANGING HEART", "decor", 0.65, 1.25),
    ("{m} WALL CLOCK", "decor", 8.95, 9.95),
    ("{m} COAT RACK", "decor", 14.95, 24.95),
    ("{m} STORAGE CABINET", "decor", 29.95, 49.95),
    ("{m} NOTEBOOK", "stationery", 1.65, 2.08),
    ("WRAP {m}", "stationery", 0.36, 0.42),
    ("{m} GREETING CARD", "stationery", 0.36, 0.42),
    ("{m} STICKER SHEET", "stationery", 0.85, 0.85),
    ("{m} PENCILS SET OF 6", "stationery", 0.55, 0.65),
    ("{m} GIFT TAPE", "stationery", 0.65, 0.85),
    ("{m} HOT WATER BOTTLE", "toys", 3.75, 4.95),
    ("HAND WARMER {m}", "toys", 1.85, 2.08),
    ("CHILDRENS APRON {m}", "toys", 1.65, 2.08),
    ("{m} SKIPPING ROPE", "toys", 1.25, 1.45),
    ("{m} NIGHT LIGHT", "toys", 1.85, 2.08),
    ("PLAYING CARDS {m}", "toys", 1.25, 1.25),
    ("{m} PICNIC HAMPER", "toys", 19.95, 49.95),
)
_MOTIFS = (
    "RED RETROSPOT", "PINK POLKADOT", "BLUE POLKADOT", "SPACEBOY", "DOLLY GIRL", "WOODLAND",
    "VINTAGE PAISLEY", "PINK PAISLEY", "SKULLS", "REGENCY", "PANTRY", "UNION JACK",
    "VINTAGE DOILY", "RED APPLES", "STRAWBERRY", "VINTAGE LEAF", "SWEETHEART", "BAROQUE BLACK WHITE",
    "ENGLISH ROSE", "GREEN REGENCY", "PARISIENNE", "VINTAGE CARAVAN", "CIRCUS PARADE", "LOVE BIRD",
    "RED SPOTTY", "CHERRY BLOSSOM", "SUKI", "WHITE HEART", "IVORY", "SCANDINAVIAN", "RED TOADSTOOL",
    "JAM JAR", "FAIRY CAKE", "DINOSAUR", "LONDON BUS",
)
_CHRISTMAS_ITEMS = (
    ("{m} CHRISTMAS DECORATION", 0.42, 0.85),
    ("{m} ADVENT CALENDAR", 2.95, 4.95),
    ("{m} CHRISTMAS STOCKING", 2.55, 4.25),
    ("{m} CHRISTMAS CARD", 0.36, 0.42),
    ("{m} TREE ORNAMENT", 0.65, 1.65),
    ("{m} CHRISTMAS GIFT WRAP", 0.42, 0.42),
)
_CHRISTMAS_MOTIFS = (
    "STAR", "SNOWFLAKE", "RED HEART", "ANGEL", "REINDEER", "FELTCRAFT", "GINGHAM", "SANTA",
    "ROBIN", "WHITE BAUBLE", "GOLD STAR", "NORDIC",
)
_CATEGORIES = ("bags", "kitchen", "party", "decor", "stationery", "toys", "christmas")
_GENERATED_PRODUCTS = 380
_CODE_RANGES = ((20600, 23600), (84000, 85230), (47000, 48200), (71000, 72800), (79000, 82600))
_CATALOGUE_SEED = 20101201

# Log-weight of each category per preference group (the four segments, then guests), and how
# strongly the group leans towards cheap (negative) or dear (positive) products: wholesale buyers
# stock up on bags, cake cases and party goods; small buyers pick decorations, gifts and toys.
_CATEGORY_TASTE = np.array([
    # bags kitchen party decor stationery toys christmas
    [0.7, 0.5, 0.4, 0.0, -0.3, -0.2, 0.0],
    [0.4, 0.3, 0.7, 0.2, -0.2, -0.3, 0.3],
    [-0.3, 0.0, -0.2, 0.5, 0.6, 0.3, 0.1],
    [-0.2, 0.2, -0.3, 0.5, 0.0, 0.6, 0.3],
    [0.0, 0.0, 0.0, 0.2, 0.2, 0.2, 0.1],
])
_PRICE_TASTE = np.array([-0.35, -0.4, -0.1, 0.15, 0.0])
_PERSONAL_TASTE = 0.6  # log-sd of a group's liking of one product beyond its category
_CHRISTMAS_BOOST = (0.15, 4.0)  # christmas products out of / in season (September..December)


@dataclass(frozen=True)
class _Catalogue:
    code: np.ndarray  # str objects
    description: np.ndarray
    price_step: np.ndarray  # index into _PRICES
    christmas: np.ndarray  # bool
    rise_day: np.ndarray  # days after the first trading day when the price goes up a step; -1 never
    cdf: np.ndarray  # (groups * 2 seasons, products) cumulative choice probabilities


def _price_step(price: float) -> int:
    return int(np.argmin(np.abs(_PRICES - price)))


@lru_cache(maxsize=1)
def _catalogue() -> _Catalogue:
    rng = np.random.default_rng(_CATALOGUE_SEED)
    codes = [a[0] for a in _ANCHORS]
    names = [a[1] for a in _ANCHORS]
    categories = [a[2] for a in _ANCHORS]
    steps = [_price_step(a[3]) for a in _ANCHORS]

    combos = [(t, c, lo, hi, m) for t, c, lo, hi in _ITEMS for m in _MOTIFS]
    combos += [(t, "christmas", lo, hi, m) for t, lo, hi in _CHRISTMAS_ITEMS for m in _CHRISTMAS_MOTIFS]
    taken = set(names)
    picked = []
    for i in rng.permutation(len(combos)):
        template, category, lo, hi, motif = combos[i]
        name = template.format(m=motif)
        if name not in taken:
            taken.add(name)
            picked.append((name, category, lo, hi, template))
        if len(picked) == _GENERATED_PRODUCTS:
            break

    # Colour and pattern variants of one item share a base code with a letter suffix (85099B,
    # 85099C, ...); the other products get a plain five-digit code.
    used = {int(c[:5]) for c in codes}
    pool = np.concatenate([np.arange(lo, hi) for lo, hi in _CODE_RANGES])
    pool = rng.permutation(pool[~np.isin(pool, list(used))])
    pool_at = 0
    by_template: dict[str, list[int]] = {}
    for j, (_, _, _, _, template) in enumerate(picked):
        by_template.setdefault(template, []).append(j)
    plain_codes: list[str | None] = [None] * len(picked)
    for template in sorted(by_template):
        members = by_template[template]
        variants = members[: int(rng.integers(2, 6))] if rng.random() < 0.3 else []
        if len(variants) >= 2:
            base = int(pool[pool_at])
            pool_at += 1
            letters = np.sort(rng.choice(list("ABCDEFGHJKLMNP"), size=len(variants), replace=False))
            for j, letter in zip(variants, letters):
                plain_codes[j] = f"{base}{letter}"
        for j in members:
            if plain_codes[j] is None:
                plain_codes[j] = str(int(pool[pool_at]))
                pool_at += 1
    for j, (name, category, lo, hi, _) in enumerate(picked):
        codes.append(plain_codes[j])
        names.append(name)
        categories.append(category)
        steps.append(int(rng.integers(_price_step(lo), _price_step(hi) + 1)))

    n = len(codes)
    steps_arr = np.array(steps)
    category_idx = np.array([_CATEGORIES.index(c) for c in categories])
    christmas = category_idx == _CATEGORIES.index("christmas")
    christmas[[i for i, a in enumerate(_ANCHORS) if a[2] == "christmas"]] = True
    # Zipf-like popularity with the anchors on top, as the real best sellers are.
    rank = np.concatenate([np.arange(len(_ANCHORS)), len(_ANCHORS) + rng.permutation(n - len(_ANCHORS))])
    popularity = np.log(1.0 / (rank + 8.0) ** 0.9)
    log_price = np.log(_PRICES[steps_arr])
    groups = len(_CATEGORY_TASTE)
    taste = (
        popularity[None, :]
        + _CATEGORY_TASTE[:, category_idx]
        + _PRICE_TASTE[:, None] * (log_price - log_price.mean())[None, :]
        + rng.normal(0.0, _PERSONAL_TASTE, size=(groups, n))
    )
    weights = np.exp(taste - taste.max(axis=1, keepdims=True))
    seasons = []
    for boost in _CHRISTMAS_BOOST:
        w = weights * np.where(christmas, boost, 1.0)[None, :]
        seasons.append(np.cumsum(w, axis=1) / w.sum(axis=1, keepdims=True))
    # Row g * 2 + s: preference group g in season s (0: January..August, 1: September..December).
    cdf = np.stack(seasons, axis=1).reshape(groups * 2, n)
    cdf[:, -1] = 1.0
    # About one product in seven goes up one price step at some point of the year.
    rise_day = np.where(rng.random(n) < 0.15, rng.integers(30, 330, n), -1)

    out = _Catalogue(
        code=np.array(codes, dtype=object),
        description=np.array(names, dtype=object),
        price_step=steps_arr,
        christmas=christmas,
        rise_day=rise_day,
        cdf=cdf,
    )
    for arr in (out.code, out.description, out.price_step, out.christmas, out.rise_day, out.cdf):
        arr.flags.writeable = False
    return out


# ----------------------------------------------------------------------------------------------
# Calendar


@dataclass(frozen=True)
class _Calendar:
    day_ns: np.ndarray  # midnight of each trading day, int64 nanoseconds
    month: np.ndarray  # calendar month 1..12 of each trading day
    weight: np.ndarray  # relative order volume of each trading day
    first_last: int  # index of the first trading day of the last (partial) month
    first_ordinal: int  # day number of the first trading day, for the price-rise dates
    ordinal: np.ndarray  # day number of each trading day


def _calendar(start: str, months: int) -> _Calendar:
    first = pd.Timestamp(start).normalize()
    last_month = (first.to_period("M") + (months - 1)).to_timestamp()
    days = pd.date_range(first, last_month + pd.Timedelta(days=_LAST_MONTH_DAYS), freq="D", inclusive="left")
    # Closed on Saturdays and over Christmas (the UCI export has nothing from 24 Dec to 3 Jan).
    holiday = ((days.month == 12) & (days.day >= 24)) | ((days.month == 1) & (days.day <= 3))
    days = days[(days.day_of_week != 5) & ~holiday]
    pre = int(np.sum(days < last_month))
    if pre == 0:
        raise ValueError(f"no trading day between {first.date()} and the last month {last_month:%Y-%m}")
    if pre == len(days):
        raise ValueError(f"the last month {last_month:%Y-%m} has no trading day in its first days")
    ns = days.to_numpy().astype("datetime64[ns]").astype(np.int64)
    ordinal = days.to_numpy().astype("datetime64[D]").astype(np.int64)
    return _Calendar(
        day_ns=ns,
        month=np.asarray(days.month),
        weight=_MONTH_WEIGHT[days.month - 1] * _WEEKDAY_WEIGHT[days.day_of_week],
        first_last=pre,
        first_ordinal=int(ordinal[0]),
        ordinal=ordinal,
    )


def _draw_days(rng, cum: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Trading-day indices drawn by weight from [lo, hi) each (cum: cumulative day weights)."""
    base = np.concatenate([[0.0], cum])
    u = base[lo] + rng.random(len(lo)) * (base[hi] - base[lo])
    return np.clip(np.searchsorted(cum, u, side="right"), lo, hi - 1)


def _draw_minutes(rng, n: int) -> np.ndarray:
    hour = _FIRST_HOUR + rng.choice(len(_HOUR_WEIGHT), size=n, p=_HOUR_WEIGHT / _HOUR_WEIGHT.sum())
    return hour * 60 + rng.integers(0, 60, n)


def _group_positions(keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal keys (keys sorted)."""
    n = len(keys)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if n else np.array([], dtype=np.int64)
    run_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    return np.arange(n) - run_start


# ----------------------------------------------------------------------------------------------
# Generator


def generate(customers: int = 2000, months: int = 13, seed: int = 0, start: str = "2010-12-01") -> SyntheticData:
    """Invoice lines of `customers` registered customers (plus guest checkouts) over `months`
    calendar months from `start`, the last of them cut after its first nine days.

    Deterministic: the same arguments give identical frames. Every customer orders at least once
    before the last month, so all of them reach the pipeline's features.
    """
    if customers < 1:
        raise ValueError(f"customers must be at least 1, got {customers}")
    if months < 2:
        raise ValueError(f"months must be at least 2 (one full month before the partial last one), got {months}")
    rng = np.random.default_rng(seed)
    cal = _calendar(start, months)
    cat = _catalogue()

    cust = _customers(rng, customers, cal)
    orders = _orders(rng, cust, cal)
    lines = _lines(rng, orders, cal, cat)
    orders, lines = _add_cancellations(rng, orders, lines, cal)
    invoices = _assemble(rng, cust, orders, lines, cat, cal)
    segments = pd.DataFrame({
        "CustomerID": pd.array(cust["id"], dtype="str"),
        "planted_segment": pd.array(np.array(SEGMENTS, dtype=object), dtype="str").take(cust["segment"]),
    }).sort_values("CustomerID", ignore_index=True)
    return SyntheticData(invoices=invoices, segments=segments)


def _customers(rng, n: int, cal: _Calendar) -> dict:
    shares = np.array([p.share for p in _PROFILES])
    counts = np.floor(shares * n).astype(np.int64)
    # Largest remainders first, so that the shares hold exactly for any number of customers.
    counts[np.argsort(-(shares * n - counts), kind="stable")[: n - counts.sum()]] += 1
    segment = rng.permutation(np.repeat(np.arange(len(_PROFILES)), counts))

    # Ids are sparse in a UCI-like range (12346..18287 there), wider when many are needed.
    low, size = 12000, max(8000, 3 * n // 2)
    width = 5
    while low + size > 10**width:
        width += 1
        low = 10 ** (width - 1)
    ids = low + rng.choice(size, size=n, replace=False)

    names = np.array([c for c, _ in _COUNTRIES], dtype=object)
    p = np.array([s for _, s in _COUNTRIES])
    country = rng.choice(len(names), size=n, p=p / p.sum())

    def log_uniform(ranges):
        lo = np.log(np.array([r[0] for r in ranges]))[segment]
        hi = np.log(np.array([r[1] for r in ranges]))[segment]
        return np.exp(lo + rng.random(n) * (hi - lo))

    # The planted order counts refer to a year; shorter or longer windows scale them.
    year = max(int(cal.ordinal[cal.first_last] - cal.ordinal[0]), 1) / 365.0
    n_pre = np.maximum(1, np.rint(log_uniform([p.orders_per_year for p in _PROFILES]) * year)).astype(np.int64)
    value = log_uniform([p.order_value for p in _PROFILES])
    lines = np.array([p.lines_per_order for p in _PROFILES])[segment] * np.exp(rng.normal(0.0, 0.25, n))
    # Some customers join during the year; they place their orders in the time they have.
    joined = np.where(rng.random(n) < 0.35, rng.integers(0, max(1, int(0.6 * cal.first_last)), n), 0)
    return {
        "id": ids.astype(str).astype(object),
        "segment": segment,
        "country": names[country],
        "n_pre": n_pre,
        "value": value,
        "lines": lines,
        "joined": joined,
    }


def _orders(rng, cust: dict, cal: _Calendar) -> dict:
    """One entry per sales invoice: the customers' orders, then the guest checkouts."""
    cum = np.cumsum(cal.weight)
    n_days, last = len(cal.weight), cal.first_last
    ncust = len(cust["segment"])
    # The last month's orders keep each customer's pace over its active time.
    base = np.concatenate([[0.0], cum])
    active = base[last] - base[cust["joined"]]
    n_last = rng.poisson(cust["n_pre"] * (base[n_days] - base[last]) / active)

    who_pre = np.repeat(np.arange(ncust), cust["n_pre"])
    who_last = np.repeat(np.arange(ncust), n_last)
    day_pre = _draw_days(rng, cum, cust["joined"][who_pre], np.full(len(who_pre), last))
    day_last = _draw_days(rng, cum, np.full(len(who_last), last), np.full(len(who_last), n_days))
    who = np.concatenate([who_pre, who_last])
    day = np.concatenate([day_pre, day_last])
    value = cust["value"][who] * np.exp(rng.normal(0.0, _ORDER_VALUE_NOISE, len(who)))
    n_lines = 1 + rng.poisson(np.maximum(cust["lines"][who] - 1.0, 0.0))

    # Guest checkouts carry about a quarter of all lines, spread over the whole period.
    guest_orders = int(round(n_lines.sum() * _GUEST_LINE_SHARE / (1 - _GUEST_LINE_SHARE) / _GUEST_LINES_PER_ORDER))
    g_day = _draw_days(rng, cum, np.zeros(guest_orders, np.int64), np.full(guest_orders, n_days))
    g_value = np.exp(np.log(_GUEST_ORDER_VALUE[0]) + rng.normal(0.0, _GUEST_ORDER_VALUE[1], guest_orders))
    g_lines = 1 + rng.poisson(_GUEST_LINES_PER_ORDER - 1.0, guest_orders)
    g_names = np.array([c for c, _ in _GUEST_COUNTRIES], dtype=object)
    g_p = np.array([s for _, s in _GUEST_COUNTRIES])
    g_country = g_names[rng.choice(len(g_names), size=guest_orders, p=g_p / g_p.sum())]

    n = len(who) + guest_orders
    return {
        "customer": np.concatenate([who, np.full(guest_orders, -1)]),
        "group": np.concatenate([cust["segment"][who], np.full(guest_orders, _GUEST)]),
        "country": np.concatenate([cust["country"][who], g_country]),
        "day": np.concatenate([day, g_day]),
        "minute": _draw_minutes(rng, n),
        "value": np.concatenate([value, g_value]),
        "n_lines": np.concatenate([n_lines, g_lines]),
        "cancel": np.zeros(n, dtype=bool),
    }


def _lines(rng, orders: dict, cal: _Calendar, cat: _Catalogue) -> dict:
    """Invoice lines of the sales invoices: postage first, then products, then the odd manual line."""
    n_orders = len(orders["day"])
    n_products = len(cat.code)
    service = n_products + np.arange(len(_SERVICE_CODES))  # item ids of the non-product codes
    guest = orders["customer"] < 0
    country = orders["country"]

    # Postage: per box for customers abroad, a web-shop charge on some guest orders.
    abroad = ~guest & (country != "United Kingdom")
    eire = country == "EIRE"
    europe = np.isin(country, list(_EUROPE))
    post = abroad & (rng.random(n_orders) < _POSTAGE_SHARE)
    dot = guest & (rng.random(n_orders) < _DOTCOM_SHARE)
    post_item = np.where(eire, service[_CARRIAGE], service[_POST])
    post_price = np.where(eire, 50.0, np.where(europe, 18.0, 40.0))
    boxes = np.minimum(1 + (orders["value"] // 700).astype(np.int64), 6)
    dot_price = np.round(np.exp(np.log(20.0) + rng.normal(0.0, 0.6, n_orders)), 2)
    charge = np.where(post, post_price * boxes, 0.0) + np.where(dot, dot_price, 0.0)
    budget = np.maximum(orders["value"] - charge, 0.4 * orders["value"])

    # Products: drawn from the group's taste in the order's season; a product twice on one invoice
    # becomes one line.
    order = np.repeat(np.arange(n_orders), orders["n_lines"])
    season = (cal.month[orders["day"]] >= 9).astype(np.int64)
    row = (orders["group"] * 2 + season)[order]
    flat = (cat.cdf + np.arange(len(cat.cdf))[:, None]).ravel()
    product = np.searchsorted(flat, rng.random(len(order)) + row, side="right") - row * n_products
    product = np.clip(product, 0, n_products - 1)
    _, first = np.unique(order * n_products + product, return_index=True)
    keep = np.sort(first)
    order, product = order[keep], product[keep]

    # Each line takes a share of the order's budget, turned into a pack-size quantity at the
    # product's price on that day (one step up after its price rise).
    day = orders["day"][order]
    step = cat.price_step[product] + (
        (cat.rise_day[product] >= 0) & (cal.ordinal[day] - cal.first_ordinal >= cat.rise_day[product])
    )
    step = np.minimum(step, len(_PRICES) - 1)
    share = rng.gamma(1.5, size=len(order))
    share /= np.bincount(order, weights=share, minlength=n_orders)[order]
    wanted = budget[order] * share / _PRICES[step]
    log_packs = np.log(_PACKS)
    qty = _PACKS[np.searchsorted((log_packs[1:] + log_packs[:-1]) / 2, np.log(np.maximum(wanted, 1e-9)))]
    step = np.where(qty >= _BULK_QUANTITY, np.maximum(step - 1, 0), step)
    price = _PRICES[step]

    manual = np.flatnonzero(~guest & (rng.random(n_orders) < _MANUAL_SHARE))
    post_at = np.flatnonzero(post)
    dot_at = np.flatnonzero(dot)
    n_prod = len(order)
    return {
        "order": np.concatenate([post_at, order, dot_at, manual]),
        "item": np.concatenate([
            post_item[post_at], product, np.full(len(dot_at), service[_DOTCOM]),
            np.full(len(manual), service[_MANUAL]),
        ]),
        "qty": np.concatenate([boxes[post_at], qty, np.ones(len(dot_at) + len(manual), np.int64)]),
        "price": np.concatenate([
            post_price[post_at], price, dot_price[dot_at],
            _PRICES[rng.integers(0, len(_PRICES), len(manual))],
        ]),
        "pos": np.concatenate([
            np.full(len(post_at), -1), np.arange(n_prod), np.full(len(dot_at) + len(manual), n_prod),
        ]),
    }


def _add_cancellations(rng, orders: dict, lines: dict, cal: _Calendar) -> tuple[dict, dict]:
    """Cancellation invoices: some lines of an earlier order of the same customer, negated."""
    n_orders = len(orders["day"])
    candidates = np.flatnonzero(orders["customer"] >= 0)
    want = int(round(n_orders * _CANCEL_SHARE / (1 - _CANCEL_SHARE)))
    chosen = np.sort(rng.choice(candidates, size=min(want, len(candidates)), replace=False))

    # Same day a little later, or a few trading days on; none past the end of the data.
    delay = rng.geometric(0.35, len(chosen)) - 1
    minute = orders["minute"][chosen] + rng.integers(1, 90, len(chosen))
    close = (_FIRST_HOUR + len(_HOUR_WEIGHT)) * 60 - 1
    delay = np.where((delay == 0) & (minute > close), 1, delay)
    minute = np.where(delay == 0, minute, _draw_minutes(rng, len(chosen)))
    day = orders["day"][chosen] + delay
    ok = day < len(cal.day_ns)
    chosen, day, minute = chosen[ok], day[ok], minute[ok]

    # Cancel the first k lines of a random reordering of the original's lines (k mostly 1 or 2).
    k = rng.geometric(0.5, len(chosen))
    cancel_of = np.full(n_orders, -1)
    cancel_of[chosen] = np.arange(len(chosen))
    at = np.flatnonzero(cancel_of[lines["order"]] >= 0)
    c = cancel_of[lines["order"][at]]
    at = at[np.lexsort((rng.random(len(at)), c))]
    c = cancel_of[lines["order"][at]]
    at = np.sort(at[_group_positions(c) < k[c]])
    qty = lines["qty"][at]
    partial = (rng.random(len(at)) < 0.2) & (qty > 1)
    qty = np.where(partial, np.maximum(1, np.floor(qty * rng.random(len(at)))).astype(np.int64), qty)

    new = n_orders + cancel_of[lines["order"][at]]
    orders = {
        "customer": np.concatenate([orders["customer"], orders["customer"][chosen]]),
        "group": np.concatenate([orders["group"], orders["group"][chosen]]),
        "country": np.concatenate([orders["country"], orders["country"][chosen]]),
        "day": np.concatenate([orders["day"], day]),
        "minute": np.concatenate([orders["minute"], minute]),
        "value": np.concatenate([orders["value"], np.zeros(len(chosen))]),
        "n_lines": np.concatenate([orders["n_lines"], np.zeros(len(chosen), np.int64)]),
        "cancel": np.concatenate([orders["cancel"], np.ones(len(chosen), dtype=bool)]),
    }
    lines = {
        "order": np.concatenate([lines["order"], new]),
        "item": np.concatenate([lines["item"], lines["item"][at]]),
        "qty": np.concatenate([lines["qty"], -qty]),
        "price": np.concatenate([lines["price"], lines["price"][at]]),
        "pos": np.concatenate([lines["pos"], lines["pos"][at]]),
    }
    return orders, lines


def _assemble(rng, cust: dict, orders: dict, lines: dict, cat: _Catalogue, cal: _Calendar) -> pd.DataFrame:
    """The export frame: invoices numbered in time order, lines sorted as the export lists them."""
    ts = cal.day_ns[orders["day"]] + orders["minute"].astype(np.int64) * 60_000_000_000
    n = len(ts)
    # Numbers follow time; at one minute sales come before cancellations, which keeps the number
    # order the same as the text order ("536400" < "C536401").
    by_time = np.lexsort((rng.random(n), orders["cancel"], ts))
    rank = np.empty(n, dtype=np.int64)
    rank[by_time] = np.arange(n)
    first, width = _FIRST_INVOICE, 6
    while first + n > 10**width:
        width += 1
        first = 10 ** (width - 1)
    number = (first + rank).astype(str).astype(object)
    number[orders["cancel"]] = "C" + number[orders["cancel"]]

    sort = np.lexsort((lines["pos"], rank[lines["order"]]))
    inv = lines["order"][sort]
    item = lines["item"][sort]
    codes = np.concatenate([cat.code, np.array([c for c, _ in _SERVICE_CODES], dtype=object)])
    names = np.concatenate([cat.description, np.array([d for _, d in _SERVICE_CODES], dtype=object)])
    countries, country_idx = np.unique(orders["country"].astype(str), return_inverse=True)

    def text(values, idx):
        return pd.array(np.asarray(values, dtype=object), dtype="str").take(idx, allow_fill=True)

    return pd.DataFrame({
        "InvoiceNo": text(number, inv),
        "StockCode": text(codes, item),
        "Description": text(names, item),
        "Quantity": lines["qty"][sort].astype(np.int64),
        "InvoiceDate": ts[inv].astype("datetime64[ns]"),
        "UnitPrice": np.round(lines["price"][sort].astype(np.float64), 2),
        "CustomerID": text(cust["id"], orders["customer"][inv]),
        "Country": text(countries, country_idx[inv]),
    })


def write_sample(path: Path | str = SAMPLE_PATH) -> Path:
    """Regenerate the committed sample (the invoices of SAMPLE_PARAMS) as Parquet."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    generate(**SAMPLE_PARAMS).invoices.to_parquet(path, index=False)
    return path


def generate_parts(out_dir: Path | str, customers: int, months: int = 13, seed: int = 0,
                   part_customers: int = 40_000) -> list[Path]:
    """Write a large input as a folder of Parquet parts, one batch of customers at a time.

    Never holds more than one part in memory, so inputs far larger than memory (100 million
    lines) can be made on a small machine. Each part is `generate(...)` for its own customers
    and seed; customer ids and invoice numbers are shifted by the part's number so that they
    never collide across parts (numbers still grow with time within a part).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, start in enumerate(range(0, customers, part_customers)):
        batch = generate(customers=min(part_customers, customers - start), months=months,
                         seed=seed * 100_003 + index).invoices
        ids = pd.to_numeric(batch["CustomerID"], errors="coerce")
        batch["CustomerID"] = (ids + index * 10**7).astype("Int64").astype("str").where(ids.notna())
        cancelled = batch["InvoiceNo"].str.startswith("C")
        number = pd.to_numeric(batch["InvoiceNo"].str.lstrip("C")) + index * 10**8
        batch["InvoiceNo"] = number.astype("str").where(~cancelled, "C" + number.astype("str"))
        path = out / f"part-{index:05d}.parquet"
        batch.to_parquet(path, index=False)
        written.append(path)
    return written
