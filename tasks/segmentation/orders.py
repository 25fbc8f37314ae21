"""Orders: one row per order (invoice), computed once from the clean lines.

Every per-customer stage (the features, RFM, repurchase propensity, CHAID, lifetime value) needs
one row per order, not the lines: they read this dataset, which is a few per cent of the lines'
size. Only the best sellers and the basket rules read lines.

An order's date is its first line's, its customer the one on its lines (an invoice has one), its
value the sum of its lines' Sales, `lines` its number of lines, `items` the units on them (its
lines when the export has no quantities) and its Country the one on most of its lines (the
alphabetically first on a tie) when the export has countries.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ("InvoiceNo", "CustomerID", "InvoiceDate", "value", "lines", "items")


def orders(clean: pd.DataFrame) -> pd.DataFrame:
    """One row per InvoiceNo of the clean lines, sorted by CustomerID, InvoiceDate, InvoiceNo."""
    # The invoice numbers are hashed once, into codes in InvoiceNo order; the groups, the
    # countries and the join of the two use the codes (at millions of lines, hashing the strings
    # for each of them took most of the stage). The sums are pandas' own, over the same rows in
    # the same order, so they are the same to the last bit.
    invoice, invoices = pd.factorize(clean["InvoiceNo"], sort=True)
    if (invoice < 0).any():  # lines without an invoice number belong to no order
        clean, invoice = clean.loc[invoice >= 0], invoice[invoice >= 0]
    grouped = clean.groupby(invoice, sort=True)
    table = grouped.agg(CustomerID=("CustomerID", "first"), InvoiceDate=("InvoiceDate", "min"),
                        value=("Sales", "sum"), lines=("Sales", "size"))
    table["items"] = grouped["Quantity"].sum() if "Quantity" in clean.columns else table["lines"]
    table = table.astype({"lines": "int64", "items": "int64", "value": "float64"}).reset_index(drop=True)
    table.insert(0, "InvoiceNo", pd.Series(invoices, dtype="str"))
    columns = list(COLUMNS)
    if "Country" in clean.columns:
        table["Country"] = _order_country(invoice, clean["Country"], len(invoices))
        columns.append("Country")
    return _sorted(table[columns], by_invoice=True)


def _order_country(invoice: np.ndarray, country: pd.Series, n_invoices: int) -> pd.Series:
    """Each order's Country: the one on most of its lines, the alphabetically first on a tie
    (missing when none of its lines has one)."""
    code, countries = pd.factorize(country, sort=True)
    n_countries = max(len(countries), 1)
    # Nearly every order has one country on all its lines: the smallest and the largest code on
    # its lines (missing ones aside) are then the same, and it is that one. Only the lines of the
    # other orders are counted country by country.
    known = code >= 0
    lowest = np.full(n_invoices, n_countries, dtype="int64")
    highest = np.full(n_invoices, -1, dtype="int64")
    np.minimum.at(lowest, invoice[known], code[known])
    np.maximum.at(highest, invoice[known], code[known])
    chosen = np.where(lowest == highest, highest, -1)
    mixed = lowest < highest
    if mixed.any():
        lines = known & mixed[invoice]
        pairs = invoice[lines].astype("int64") * n_countries + code[lines]
        pairs, n = np.unique(pairs, return_counts=True)
        order_of, country_of = pairs // n_countries, pairs % n_countries
        # Per order, the most lines first, then the first country in alphabetical order.
        ranked = np.lexsort((country_of, -n, order_of))
        first = ranked[np.r_[True, order_of[ranked][1:] != order_of[ranked][:-1]]]
        chosen[order_of[first]] = country_of[first]
    return pd.Series(pd.array(np.asarray(countries, dtype=object), dtype="str").take(chosen, allow_fill=True),
                     dtype="str")


def _sorted(table: pd.DataFrame, by_invoice: bool = False) -> pd.DataFrame:
    """By CustomerID, InvoiceDate, InvoiceNo, missing values last, as `sort_values` orders them:
    one sort of integer keys (`by_invoice`: the rows are in InvoiceNo order already)."""
    def last_if_missing(codes: np.ndarray, missing: np.ndarray) -> np.ndarray:
        return np.where(missing, np.iinfo("int64").max, codes) if missing.any() else codes

    customer = pd.factorize(table["CustomerID"], sort=True)[0].astype("int64")
    dates = table["InvoiceDate"]
    date = last_if_missing(np.asarray(dates.array.asi8), dates.isna().to_numpy())
    invoice = np.arange(len(table)) if by_invoice else pd.factorize(table["InvoiceNo"], sort=True)[0]
    order = np.lexsort((last_if_missing(invoice, invoice < 0), date, last_if_missing(customer, customer < 0)))
    return table.take(order).reset_index(drop=True)


def order_metrics(frames, params) -> dict:
    table = frames["orders"]
    return {"orders": len(table), "lines_per_order": round(float(table["lines"].mean()), 4) if len(table) else None}


# --- the dask twin: the same on a dask.distributed cluster (the dask engine) ----------------------


def orders_dask(clean_lines) -> pd.DataFrame:
    """Orders from the partitioned clean lines: the pandas engine's table.

    Each partition's orders are computed on the cluster by the pandas transform, and only they
    come back. An invoice whose lines are in more than one partition is computed again from all
    of its lines, gathered in their order (a handful at most: an export rarely cuts an invoice).
    Every column is then the pandas engine's, but an order's value: the sum of the same lines in
    the same order, which pandas adds up in numpy's buffers over the whole table, so that it can
    differ in the last bit (tested to 1e-13).
    """
    import dask

    columns = [c for c in ("InvoiceNo", "CustomerID", "InvoiceDate", "Sales", "Quantity", "Country")
               if c in clean_lines.columns]
    parts = clean_lines[columns].to_delayed()
    tables = list(dask.compute(*[dask.delayed(_part_orders)(part) for part in parts]))
    invoices = pd.concat([table["InvoiceNo"] for table in tables], ignore_index=True)
    split = invoices[invoices.duplicated()].unique()
    del invoices
    if len(split):
        lines = dask.compute(*[dask.delayed(_lines_of)(part, split) for part in parts])
        tables = [table[~table["InvoiceNo"].isin(split).to_numpy()] for table in tables]
        tables.append(_part_orders(pd.concat(lines, ignore_index=True)))
    table = pd.concat(tables, ignore_index=True)
    del tables
    return _sorted(table)


def _lines_of(lines: pd.DataFrame, invoices: np.ndarray) -> pd.DataFrame:
    return lines[lines["InvoiceNo"].isin(invoices).to_numpy()]


def _part_orders(lines: pd.DataFrame) -> pd.DataFrame:
    # dask reads text as its own string dtype (missing as pd.NA): as the pandas engine's first.
    return orders(lines.astype({c: "str" for c, t in lines.dtypes.items()
                                if isinstance(t, pd.StringDtype) and t.na_value is pd.NA}))
