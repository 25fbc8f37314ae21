"""The synthetic Online Retail generator: export form, realism traits, planted segments, sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from customer_segments.data.generator import SAMPLE_PARAMS, SAMPLE_PATH, SEGMENTS, SyntheticData, generate
from customer_segments.tasks.inputs.readers import COLUMNS

START = pd.Timestamp("2010-12-01")
SERVICE_CODES = {"POST", "C2", "DOT", "M"}


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    return generate(customers=1500, months=13, seed=0)


@pytest.fixture(scope="module")
def inv(data) -> pd.DataFrame:
    return data.invoices


def segment_labels(data: SyntheticData) -> tuple[pd.Series, np.ndarray]:
    """The pipeline's analysis, written out here so that this test does not depend on it."""
    from sklearn.cluster import KMeans

    inv = data.invoices
    first_day_of_last_month = inv.InvoiceDate.max().to_period("M").to_timestamp()
    df = inv[inv.Quantity > 0]
    df = df[df.CustomerID.notna()]
    df = df[df.InvoiceDate < first_day_of_last_month]
    df = df.assign(Sales=df.Quantity * df.UnitPrice)
    f = df.groupby("CustomerID").agg(TotalSales=("Sales", "sum"), OrderCount=("InvoiceNo", "nunique"))
    f["AvgOrderValue"] = f.TotalSales / f.OrderCount
    r = f.rank(method="first")
    z = (r - r.mean()) / r.std()
    labels = KMeans(n_clusters=4, n_init=10, random_state=42).fit_predict(
        z[["TotalSales", "OrderCount", "AvgOrderValue"]]
    )
    planted = data.segments.set_index("CustomerID").planted_segment.reindex(f.index)
    return planted, labels


def test_columns_and_dtypes(inv):
    assert list(inv.columns) == list(COLUMNS)
    for name in ("InvoiceNo", "StockCode", "Description", "CustomerID", "Country"):
        assert pd.api.types.is_string_dtype(inv[name]), name
    assert inv.Quantity.dtype == np.int64
    assert inv.UnitPrice.dtype == np.float64
    assert inv.InvoiceDate.dtype == "datetime64[ns]"
    assert isinstance(inv.index, pd.RangeIndex)


def test_values_look_like_the_export(inv):
    assert inv.InvoiceNo.str.fullmatch(r"C?\d{6}").all()
    assert inv.CustomerID.dropna().str.fullmatch(r"\d{5}").all()
    codes = inv.StockCode
    product = codes.str.fullmatch(r"\d{5}[A-Z]?")
    assert (product | codes.isin(SERVICE_CODES)).all()
    assert codes.str.fullmatch(r"\d{5}").mean() > 0.6
    assert codes.str.fullmatch(r"\d{5}[A-Z]").any()
    assert codes.eq("POST").any()
    assert codes[product].nunique() >= 200
    assert (inv.Description[product] == inv.Description[product].str.upper()).all()
    assert inv.groupby("StockCode").Description.nunique().eq(1).all()

    cents = inv.UnitPrice * 100
    assert np.allclose(cents, cents.round())
    prices = inv.UnitPrice[product]
    assert prices.min() >= 0.29 and prices.max() <= 50
    assert (inv.Quantity != 0).all()

    stamps = inv.InvoiceDate
    assert (stamps.dt.second == 0).all()
    assert stamps.dt.hour.between(6, 20).all()
    assert stamps.dt.day_of_week.ne(5).all()  # the shop never trades on Saturdays


def test_multi_line_invoices_with_one_customer_and_country_each(inv):
    per_invoice = inv.groupby("InvoiceNo").agg(
        lines=("StockCode", "size"),
        customers=("CustomerID", lambda s: s.nunique(dropna=False)),
        countries=("Country", "nunique"),
    )
    assert per_invoice.lines.mean() > 3
    assert (per_invoice.customers == 1).all()
    assert (per_invoice.countries == 1).all()
    assert inv.dropna(subset=["CustomerID"]).groupby("CustomerID").Country.nunique().eq(1).all()


def test_sorted_by_date_then_invoice_and_numbers_grow_with_time(inv):
    resorted = inv.sort_values(["InvoiceDate", "InvoiceNo"], kind="stable")
    assert resorted.index.equals(inv.index)
    numbers = inv.InvoiceNo.str.removeprefix("C").astype("int64")
    assert numbers.is_monotonic_increasing


def test_segments_frame(data, inv):
    seg = data.segments
    assert list(seg.columns) == ["CustomerID", "planted_segment"]
    assert pd.api.types.is_string_dtype(seg.CustomerID)
    assert pd.api.types.is_string_dtype(seg.planted_segment)
    assert seg.CustomerID.is_unique and len(seg) == 1500
    assert set(seg.planted_segment) == set(SEGMENTS)
    assert seg.planted_segment.value_counts(normalize=True).min() >= 0.1
    assert set(seg.CustomerID) == set(inv.CustomerID.dropna())


def test_deterministic_and_seed_dependent():
    a = generate(customers=300, months=13, seed=3)
    b = generate(customers=300, months=13, seed=3)
    assert_frame_equal(a.invoices, b.invoices)
    assert_frame_equal(a.segments, b.segments)
    c = generate(customers=300, months=13, seed=4)
    assert not a.invoices.equals(c.invoices)


def test_guest_checkouts(inv):
    blank = inv.CustomerID.isna()
    assert 0.15 <= blank.mean() <= 0.35
    # Guest lines make invoices of their own.
    assert not set(inv.InvoiceNo[blank]) & set(inv.InvoiceNo[~blank])


def test_cancellations_mirror_earlier_lines_of_the_same_customer(inv):
    cancel = inv.InvoiceNo.str.startswith("C")
    assert cancel.any()
    assert (inv.Quantity[cancel] < 0).all()
    assert (inv.Quantity[~cancel] > 0).all()
    share = inv.InvoiceNo[cancel].nunique() / inv.InvoiceNo.nunique()
    assert 0.01 <= share <= 0.04
    assert inv.CustomerID[cancel].notna().all()

    keys = ["CustomerID", "StockCode", "UnitPrice"]
    cancelled = inv[cancel].reset_index(names="line")
    sales = inv.loc[~cancel, keys + ["Quantity", "InvoiceDate"]]
    pairs = cancelled.merge(sales, on=keys, suffixes=("", "_sale"))
    mirrored = (pairs.InvoiceDate_sale <= pairs.InvoiceDate) & (pairs.Quantity_sale >= -pairs.Quantity)
    assert mirrored.groupby(pairs.line).any().reindex(cancelled.line, fill_value=False).all()


def test_countries(inv):
    share = inv.Country.value_counts(normalize=True)
    assert len(share) >= 5
    assert share.index[0] == "United Kingdom"
    assert 0.8 <= share.iloc[0] <= 0.95
    assert {"Germany", "France"} <= set(share.index)


def test_period_with_a_partial_last_month(inv):
    months = inv.InvoiceDate.dt.to_period("M")
    assert months.min() == START.to_period("M")
    assert months.max() == START.to_period("M") + 12
    assert months.nunique() == 13
    assert inv.InvoiceDate.min() >= START
    last = inv.InvoiceDate[months == months.max()]
    assert last.dt.day.max() <= 10
    # Every full month has business, and the partial one far less than a full one.
    per_month = months.value_counts()
    assert per_month[months.max()] < 0.5 * per_month.drop(months.max()).median()


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_segments_are_recovered_by_the_pipeline_analysis(seed):
    from sklearn.metrics import adjusted_rand_score

    data = generate(customers=1500, months=13, seed=seed)
    planted, labels = segment_labels(data)
    assert planted.notna().all()
    assert len(planted) >= 0.97 * len(data.segments)
    assert adjusted_rand_score(planted, labels) >= 0.8


def test_bad_arguments():
    with pytest.raises(ValueError):
        generate(customers=0)
    with pytest.raises(ValueError):
        generate(customers=10, months=1)


def test_committed_sample_is_reproducible():
    assert SAMPLE_PATH.exists(), "regenerate it with data.generator.write_sample()"
    committed = pd.read_parquet(SAMPLE_PATH)
    assert_frame_equal(committed, generate(**SAMPLE_PARAMS).invoices)
