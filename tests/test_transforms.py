"""The pure stage transforms on small frames whose answers are computed by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support import DEFAULTS, SAMPLE

from customer_segments.tasks.segmentation.cleaning import clean_invoices, rows_dropped
from customer_segments.tasks.segmentation.cluster import cluster_labels, segment_names
from customer_segments.tasks.errors import InputError, ParameterError
from customer_segments.tasks.segmentation.features import customer_features
from customer_segments.tasks.inputs.readers import normalize_invoices
from customer_segments.tasks.segmentation.normalize import normalize_features
from customer_segments.tasks.segmentation.orders import orders
from customer_segments.tasks.segmentation.best_sellers import top_products
from customer_segments.tasks.segmentation.profile import segment_profiles
from customer_segments.tasks.segmentation import select_k

CUTOFF = "2011-12-01"


def k_selection(normalized, **given):
    """select_k's transform with the run's default k range unless given."""
    return select_k.k_selection(normalized, **{"k_min": DEFAULTS.k_min, "k_max": DEFAULTS.k_max, "k": None, **given})


def invoices(rows):
    cols = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]
    df = pd.DataFrame(rows, columns=cols)
    df["InvoiceDate"] = pd.to_datetime(df["InvoiceDate"])
    return normalize_invoices(df)


RAW = invoices([
    ("536365", "85123A", "WHITE HANGING HEART", 6, "2010-12-01 08:26", 2.55, "17850", "United Kingdom"),
    ("536365", "71053", "WHITE METAL LANTERN", 6, "2010-12-01 08:26", 3.39, "17850", "United Kingdom"),
    ("C536379", "D", "Discount", -1, "2010-12-01 09:41", 27.50, "14527", "United Kingdom"),
    ("536380", "22961", "JAM MAKING SET", 24, "2010-12-01 09:41", 1.45, None, "United Kingdom"),
    ("536381", "22961", "JAM MAKING SET", 10, "2010-12-02 10:00", 1.45, "17850", "United Kingdom"),
    ("536390", "22961", "JAM MAKING SET", 3, "2011-12-01 00:00", 1.45, "12583", "France"),
    ("536391", "21754", "HOME BUILDING BLOCK", 0, "2011-01-05 10:00", 5.95, "12583", "France"),
    ("536392", "21754", "HOME BUILDING BLOCK", 2, "2011-01-05 10:00", 5.95, "12583", "France"),
])


def test_clean_applies_the_three_rules_and_adds_sales():
    clean = clean_invoices(RAW, CUTOFF)
    assert clean["InvoiceNo"].tolist() == ["536365", "536365", "536381", "536392"]
    assert clean["Sales"].tolist() == pytest.approx([15.30, 20.34, 14.50, 11.90])
    assert clean["Quantity"].dtype == "int64"


def test_rows_dropped_charges_each_row_to_the_first_rule():
    # Cancellation (-1) and zero quantity -> rule 1; blank customer -> rule 2; 2011-12-01 -> rule 3.
    assert rows_dropped(RAW, CUTOFF) == {
        "cancelled_or_zero_quantity": 2, "missing_customer": 1, "before_window": 0, "on_or_after_cutoff": 1,
    }


def test_a_trailing_window_keeps_the_months_before_the_cutoff():
    # Window of 11 months before 2011-12-01 starts 2011-01-01: the 2010-12 lines fall out.
    clean = clean_invoices(RAW, CUTOFF, window=11)
    assert clean["InvoiceNo"].tolist() == ["536392"]
    assert rows_dropped(RAW, CUTOFF, window=11) == {
        "cancelled_or_zero_quantity": 2, "missing_customer": 1, "before_window": 3, "on_or_after_cutoff": 1,
    }


def test_orders_are_one_row_per_invoice_with_its_value_lines_and_items():
    table = orders(clean_invoices(RAW, CUTOFF))
    assert table["InvoiceNo"].tolist() == ["536392", "536365", "536381"]  # by customer, then date
    assert table["CustomerID"].tolist() == ["12583", "17850", "17850"]
    assert table["value"].tolist() == pytest.approx([11.90, 6 * 2.55 + 6 * 3.39, 14.50])
    assert table["lines"].tolist() == [1, 2, 1] and table["items"].tolist() == [2, 12, 10]
    assert table["Country"].tolist() == ["France", "United Kingdom", "United Kingdom"]


def test_an_orders_country_is_the_one_on_most_of_its_lines_the_first_alphabetically_on_a_tie():
    clean = pd.DataFrame({
        "InvoiceNo": ["1", "1", "1", "2", "2", "3", "3", "4", "5", "5"],
        "CustomerID": ["9"] * 10,
        "InvoiceDate": pd.to_datetime(["2011-01-01"] * 5 + ["2011-01-02"] * 5),
        "Sales": [1.0] * 10,
        "Country": ["Spain", "EIRE", "Spain", "Spain", "EIRE", None, "France", None, None, "Zambia"],
    }).astype({"InvoiceNo": "str", "CustomerID": "str", "Country": "str"})
    table = orders(clean).set_index("InvoiceNo")["Country"]
    # 1: two lines of three; 2: a tie; 3: one line has none; 4: none at all; 5: one of two.
    assert table.drop("4").to_dict() == {"1": "Spain", "2": "EIRE", "3": "France", "5": "Zambia"}
    assert pd.isna(table["4"])


def test_orders_are_sorted_as_sort_values_sorts_them_missing_customers_and_dates_last():
    rng = np.random.default_rng(5)
    n = 400
    clean = pd.DataFrame({
        "InvoiceNo": rng.integers(0, 150, n).astype(str),
        "CustomerID": pd.Series(np.array(["12", "3", "B", "a", None], dtype=object)[rng.integers(0, 5, n)]),
        "InvoiceDate": pd.Series(pd.Timestamp("2011-01-01") + pd.to_timedelta(rng.integers(0, 3, n), unit="D")),
        "Sales": rng.random(n),
    }).astype({"InvoiceNo": "str", "CustomerID": "str"})
    clean["InvoiceDate"] = clean["InvoiceDate"].mask(rng.random(n) < 0.1)
    table = orders(clean)
    expected = table.sort_values(["CustomerID", "InvoiceDate", "InvoiceNo"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(table, expected)
    assert table["CustomerID"].isna().any() and table["InvoiceDate"].isna().any()


def test_features_per_customer_with_one_order_customers():
    features = customer_features(orders(clean_invoices(RAW, CUTOFF)))
    assert features["CustomerID"].tolist() == ["12583", "17850"]
    assert features["TotalSales"].tolist() == pytest.approx([11.90, 50.14])
    assert features["OrderCount"].tolist() == [1, 2]  # two lines of 536365 are one order
    assert features["AvgOrderValue"].tolist() == pytest.approx([11.90, 25.07])
    assert features["OrderCount"].dtype == "int64"


def test_normalize_breaks_rank_ties_by_row_order_and_uses_sample_std():
    features = pd.DataFrame({
        "CustomerID": ["a", "b", "c", "d"],
        "TotalSales": [10.0, 10.0, 5.0, 20.0],  # tie: a ranks before b
        "OrderCount": [1, 1, 1, 1],  # all tied: ranks 1..4 in row order
        "AvgOrderValue": [10.0, 10.0, 5.0, 20.0],
    })
    normalized = normalize_features(features)
    ranks = np.array([2, 3, 1, 4.0])
    expected = (ranks - 2.5) / np.std([1, 2, 3, 4], ddof=1)
    assert normalized["TotalSales"].to_numpy() == pytest.approx(expected)
    assert normalized["OrderCount"].to_numpy() == pytest.approx((np.arange(1, 5) - 2.5) / np.std([1, 2, 3, 4], ddof=1))
    assert normalized["CustomerID"].tolist() == ["a", "b", "c", "d"]


def test_excel_float_ids_become_plain_strings():
    raw = pd.DataFrame({
        "InvoiceNo": [536365, "C536379", 536366.0],
        "StockCode": [71053, "85123A", 22961.0],
        "Description": ["A", "B", None],
        "Quantity": [6.0, -1.0, 2.0],
        "InvoiceDate": ["2010-12-01 08:26", "2010-12-01 09:41", "2010-12-01 10:00"],
        "UnitPrice": ["2.55", 27.5, 1],
        "CustomerID": [17850.0, np.nan, 13047.0],
        "Country": ["United Kingdom"] * 3,
    })
    out = normalize_invoices(raw)
    assert out["InvoiceNo"].tolist() == ["536365", "C536379", "536366"]
    assert out["StockCode"].tolist() == ["71053", "85123A", "22961"]
    assert out["CustomerID"].iloc[[0, 2]].tolist() == ["17850", "13047"]
    assert pd.isna(out["CustomerID"].iloc[1])
    assert out["Quantity"].dtype == "int64" and out["Quantity"].tolist() == [6, -1, 2]
    assert out["UnitPrice"].dtype == "float64"
    assert str(out["InvoiceDate"].dtype) == "datetime64[ns]"


@pytest.mark.parametrize("column, value, words", [
    ("Quantity", "six", "not numbers"),
    ("Quantity", 1.5, "not whole numbers"),
    ("UnitPrice", "free", "not numbers"),
    ("InvoiceDate", "yesterday", "not dates"),
])
def test_bad_values_name_the_column(column, value, words):
    raw = RAW.copy().astype({column: "object"})
    raw.loc[0, column] = value
    with pytest.raises(InputError) as err:
        normalize_invoices(raw, source="export.csv")
    assert err.value.column == column and words in str(err.value) and "export.csv" in str(err.value)


def test_missing_column_names_what_was_found_and_the_mapping_that_would_help():
    with pytest.raises(InputError, match="CustomerID not found.*'client'.*--columns CustomerID=client") as err:
        normalize_invoices(RAW.rename(columns={"CustomerID": "client"}))
    assert err.value.column == "CustomerID"


def test_online_retail_ii_names_are_read_without_a_mapping():
    renamed = normalize_invoices(RAW.rename(columns={"CustomerID": "Customer ID", "InvoiceNo": "Invoice",
                                                     "UnitPrice": "Price"}))
    pd.testing.assert_frame_equal(renamed, RAW)
    assert renamed.attrs["renamed"] == {"Customer ID": "CustomerID", "Invoice": "InvoiceNo", "Price": "UnitPrice"}


def test_a_column_mapping_names_the_files_columns():
    shop = RAW.rename(columns={"CustomerID": "customer id", "InvoiceDate": "created_at", "InvoiceNo": "order_id"})
    mapping = {"CustomerID": "customer id", "InvoiceDate": "created_at", "InvoiceNo": "order_id"}
    pd.testing.assert_frame_equal(normalize_invoices(shop, columns=mapping), RAW)
    with pytest.raises(InputError, match="maps CustomerID to 'customer'.*did you mean 'customer id'"):
        normalize_invoices(shop, columns={**mapping, "CustomerID": "customer"})
    with pytest.raises(InputError, match="maps both CustomerID and InvoiceNo to the file's column 'order_id'"):
        normalize_invoices(shop, columns={**mapping, "CustomerID": "order_id"})


def blobs(seed=0, per=60):
    """Four well separated groups in 3-D, so the right k is known."""
    rng = np.random.default_rng(seed)
    centers = np.array([[1.2, 1.2, 1.2], [-1.2, -1.2, -1.2], [0.3, -1.2, 1.2], [-0.3, 1.2, -1.2]])
    points = np.vstack([c + rng.normal(0, 0.12, (per, 3)) for c in centers])
    frame = pd.DataFrame(points, columns=["TotalSales", "OrderCount", "AvgOrderValue"])
    frame.insert(0, "CustomerID", [f"{i:05d}" for i in range(len(frame))])
    return frame


def test_select_k_finds_planted_k_and_scores_only_the_silhouette_range():
    table = k_selection(blobs(), k_min=3, k_max=6)
    assert table["k"].tolist() == list(range(2, 11))
    assert table.loc[table["chosen"], "k"].item() == 4
    assert table.loc[table["best_silhouette"], "k"].item() == 4
    assert table.loc[table["elbow"], "k"].item() == 4
    assert table.set_index("k")["silhouette"].loc[[3, 4, 5, 6]].notna().all()
    assert table.set_index("k")["silhouette"].loc[[2, 7, 8, 9, 10]].isna().all()
    assert table["sse"].is_monotonic_decreasing


def test_select_k_honours_a_given_k_and_rejects_too_few_customers():
    table = k_selection(blobs(), k=5)
    assert table.loc[table["chosen"], "k"].item() == 5
    with pytest.raises(ParameterError, match="only 6 customers"):
        k_selection(blobs(per=2)[:6], k_min=4, k_max=8)


def test_k_means_fits_side_by_side_give_each_k_the_labels_of_a_fit_alone():
    from threadpoolctl import threadpool_limits

    rng = np.random.RandomState(7)
    points = np.vstack([rng.normal(center, 0.6, size=(3_000, 3)) for center in (0, 3, 6, 9, 12)])
    ks = list(range(2, 11))
    with threadpool_limits(limits=1, user_api="openmp"):
        together = select_k.fitted_labels(points, ks)
        alone = {k: select_k.fit_kmeans(points, k).labels_ for k in ks}
    assert list(together) == ks
    for k in ks:
        np.testing.assert_array_equal(together[k], alone[k])


def test_cluster_numbers_segments_by_total_sales_and_names_them():
    normalized = blobs()
    features = normalized.copy()
    features["TotalSales"] = np.exp(normalized["TotalSales"] * 3)
    features["OrderCount"] = (np.exp(normalized["OrderCount"]) * 3).round().astype("int64") + 1
    features["AvgOrderValue"] = features["TotalSales"] / features["OrderCount"]
    labels, lineage = cluster_labels(features, normalized, k_selection(normalized, k=4))
    assert lineage["transition"].eq("first").all() and labels["segment_id"].nunique() == 4
    assert len(labels) == len(features) and labels["CustomerID"].is_unique
    sales = labels.groupby("segment")["TotalSales"].sum()
    assert sales.is_monotonic_decreasing
    names = labels.groupby("segment")["segment_name"].first()
    assert names.loc[0] == "High value: frequent, big spenders"
    assert set(names) == {"High value: frequent, big spenders", "Low value: rare, small orders",
                          "Big orders, infrequent", "Frequent, small orders"}
    # Each planted group of 60 is one segment.
    assert labels.groupby(labels.index // 60)["segment"].nunique().eq(1).all()


def test_segment_names_are_unique_when_k_exceeds_four():
    centers = pd.DataFrame({"TotalSales": [1, 0.5, -1], "OrderCount": [1, 0.8, -1], "AvgOrderValue": [1, 0.5, -1]})
    names = segment_names(centers)
    assert names.tolist() == ["High value: frequent, big spenders (1)", "High value: frequent, big spenders (2)",
                              "Low value: rare, small orders"]


def test_profiles_and_top_products():
    labels = pd.DataFrame({
        "CustomerID": ["a", "b", "c"], "TotalSales": [30.0, 10.0, 2.0], "OrderCount": [2, 1, 1],
        "AvgOrderValue": [15.0, 10.0, 2.0], "TotalSales_norm": [1.0, 0.0, -1.0],
        "OrderCount_norm": [1.0, -0.5, -0.5], "AvgOrderValue_norm": [1.0, 0.0, -1.0],
        "segment": [0, 0, 1], "segment_name": ["High", "High", "Low"],
    })
    profiles = segment_profiles(labels)
    assert profiles["size"].tolist() == [2, 1]
    assert profiles["share"].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert profiles["mean_TotalSales"].tolist() == [20.0, 2.0]
    assert profiles["median_OrderCount"].tolist() == [1.5, 1.0]
    assert profiles["center_OrderCount"].tolist() == [0.25, -0.5]
    clean = pd.DataFrame({
        "CustomerID": ["a", "a", "a", "b", "c"], "InvoiceNo": ["1", "1", "2", "3", "4"],
        "StockCode": ["X", "Y", "X", "Y", "Z"], "Description": ["x", "y", "x", "Y!", "z"],
        "Quantity": [1, 5, 2, 1, 7], "Sales": [1.0, 5.0, 2.0, 1.0, 7.0],
    })
    top = top_products(clean, labels)
    seg0 = top[top["segment"] == 0]
    # X: orders {1, 2} = 2; Y: orders {1, 3} = 2, revenue 6 > 3 so Y ranks first.
    assert seg0[["StockCode", "orders", "quantity", "revenue", "rank"]].values.tolist() == [
        ["Y", 2, 6, 6.0, 1], ["X", 2, 3, 3.0, 2]]
    assert top.loc[top["StockCode"] == "Z", "Description"].item() == "z"


def test_best_sellers_match_a_plain_groupby_whatever_the_line_order():
    """The counting shortcuts (integer codes, bincount, a sort for distinct orders) give the plain answer."""
    from customer_segments.tasks.inputs.readers import read_invoices

    clean = clean_invoices(read_invoices(SAMPLE), pd.Timestamp("2011-12-01"))
    clean = pd.concat([clean, clean.iloc[::50]], ignore_index=True)  # an item twice on an invoice: one order
    customers = clean["CustomerID"].drop_duplicates().sort_values().reset_index(drop=True)
    labels = pd.DataFrame({"CustomerID": customers, "segment": np.arange(len(customers)) % 3})
    labels["segment_name"] = labels["segment"].map({0: "A", 1: "B", 2: "C"})
    lines = clean.merge(labels, on="CustomerID")
    plain = lines.groupby(["segment", "StockCode"]).agg(orders=("InvoiceNo", "nunique"), revenue=("Sales", "sum"))
    for order in (clean, clean.sample(frac=1.0, random_state=3)):  # as exported, and shuffled
        top = top_products(order.reset_index(drop=True), labels, top_n=15)
        expected = plain.reset_index().sort_values(["segment", "orders", "revenue", "StockCode"],
                                                   ascending=[True, False, False, True]).groupby("segment").head(15)
        assert top["StockCode"].tolist() == expected["StockCode"].tolist()
        assert top["orders"].tolist() == expected["orders"].tolist()
        assert top["revenue"].to_numpy() == pytest.approx(expected["revenue"].to_numpy())


def test_silhouette_on_a_fixed_sample_when_customers_are_many(monkeypatch):
    import customer_segments.tasks.segmentation.select_k as select_k

    full = k_selection(blobs(), k_min=3, k_max=6)
    monkeypatch.setattr(select_k, "SILHOUETTE_SAMPLE", 100)  # 240 customers: sampled
    sampled = k_selection(blobs(), k_min=3, k_max=6)
    again = k_selection(blobs(), k_min=3, k_max=6)
    pd.testing.assert_frame_equal(sampled, again)  # the sample is fixed, not random per run
    assert sampled.loc[sampled["chosen"], "k"].item() == 4
    assert not np.allclose(sampled["silhouette"].dropna(), full["silhouette"].dropna(), rtol=0, atol=1e-12)
    assert np.allclose(sampled["silhouette"].dropna(), full["silhouette"].dropna(), atol=0.05)
    pd.testing.assert_series_equal(sampled["sse"], full["sse"])  # SSE always uses every customer


def test_is_in_answers_as_pandas_isin_on_text():
    from customer_segments.tasks.encoding import is_in

    rng = np.random.default_rng(5)
    values = pd.Series(rng.integers(0, 500, 2000).astype(str), dtype="str")
    values[rng.random(2000) < 0.05] = None
    allowed = pd.Series(rng.integers(0, 500, 300).astype(str), dtype="str").unique()
    got = is_in(values, allowed)
    assert got.dtype == bool and 0 < got.sum() < values.notna().sum()
    assert (got == values.isin(allowed).to_numpy()).all()
    assert not is_in(values, []).any()
    assert is_in(pd.Series([17850, 13047]), ["17850"]).tolist() == [True, False]  # numbers compared as text


def test_a_text_column_is_dictionary_encoded_once_while_it_is_in_memory():
    import gc

    from customer_segments.tasks import encoding

    lines = pd.DataFrame({"StockCode": pd.Series(["B", "A", "B", None, "C"], dtype="str"), "Quantity": range(5)})
    codes, values = encoding.dictionary_codes(lines["StockCode"])
    assert codes.tolist() == [0, 1, 0, -1, 2] and values.tolist() == ["B", "A", "C"]
    # The same column in another frame (a selection of columns, as the basket stage makes) is the
    # same data: its encoding is reused, not computed again.
    first = encoding.dictionary_encoded(lines["StockCode"])
    assert encoding.dictionary_encoded(lines[["StockCode"]]["StockCode"]) is first
    # Other data is encoded anew: a filtered column, or a column with the same values.
    kept = lines[lines["Quantity"] > 0]
    assert encoding.dictionary_codes(kept["StockCode"])[0].tolist() == [0, 1, -1, 2]
    assert encoding.dictionary_codes(kept["StockCode"])[1].tolist() == ["A", "B", "C"]
    again = pd.Series(["B", "A", "B", None, "C"], dtype="str")
    assert encoding.dictionary_encoded(again) is not first
    # An encoding is forgotten with its column.
    held = len(encoding._ENCODED)
    del lines, kept, again, first
    gc.collect()
    assert len(encoding._ENCODED) < held


def test_a_column_freed_while_the_encodings_are_being_updated_does_not_stall_the_process():
    import gc
    import threading

    from customer_segments.tasks import encoding

    def scenario():
        holder = {"lines": pd.DataFrame({"StockCode": pd.Series(["B", "A"], dtype="str")})}
        holder["self"] = holder  # a cycle: only a garbage collection frees the column
        encoding.dictionary_encoded(holder["lines"]["StockCode"])
        del holder
        with encoding._ENCODED_LOCK:  # as when a collection runs inside the locked update
            gc.collect()

    worker = threading.Thread(target=scenario, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive()
