"""Migration: where last month's customers went, and where this month's came from.

Every customer of the previous run appears exactly once on the `from` side (customers who are
not in this run went to `lapsed`), and every customer of this run exactly once on the `to` side
(customers who were not in the previous run came from `new`).
"""

from __future__ import annotations

import pandas as pd

NEW, LAPSED = "new", "lapsed"
KEY = ["CustomerID", "segment_id", "segment_name", "TotalSales"]
MIGRATION_COLUMNS = ("from_segment_id", "to_segment_id", "customers", "revenue_before", "revenue_after")


def migration(labels: pd.DataFrame, previous: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(segment_migration, movers) between the previous run's labels and this run's."""
    before = (previous if previous is not None else pd.DataFrame(columns=KEY))[KEY]
    both = before.merge(labels[KEY], on="CustomerID", how="outer", suffixes=("_before", "_after"), sort=True)
    both["from_segment_id"] = both["segment_id_before"].fillna(NEW).astype("str")
    both["to_segment_id"] = both["segment_id_after"].fillna(LAPSED).astype("str")
    both["revenue_before"] = both["TotalSales_before"].astype("float64").fillna(0.0)
    both["revenue_after"] = both["TotalSales_after"].astype("float64").fillna(0.0)
    table = (both.groupby(["from_segment_id", "to_segment_id"], sort=True)
             .agg(customers=("CustomerID", "size"), revenue_before=("revenue_before", "sum"),
                  revenue_after=("revenue_after", "sum"))
             .reset_index())
    table["customers"] = table["customers"].astype("int64")

    moved = both["segment_id_before"].notna() & both["segment_id_after"].notna() & (
        both["segment_id_before"] != both["segment_id_after"])
    movers = both.loc[moved, ["CustomerID", "segment_id_before", "segment_name_before", "segment_id_after",
                              "segment_name_after", "TotalSales_before", "TotalSales_after"]]
    movers.columns = ["CustomerID", "from_segment_id", "from_segment_name", "to_segment_id", "to_segment_name",
                      "TotalSales_before", "TotalSales_after"]
    movers = movers.astype({"CustomerID": "str", "from_segment_id": "str", "from_segment_name": "str",
                            "to_segment_id": "str", "to_segment_name": "str",
                            "TotalSales_before": "float64", "TotalSales_after": "float64"})
    return table[list(MIGRATION_COLUMNS)], movers.reset_index(drop=True)


def migration_metrics(frames, params) -> dict:
    table = frames["segment_migration"]
    came = table["from_segment_id"] != NEW
    went = table["to_segment_id"] != LAPSED
    return {
        "previous_customers_seen": int(table.loc[came, "customers"].sum()),
        "new_customers": int(table.loc[~came, "customers"].sum()),
        "lapsed_customers": int(table.loc[~went, "customers"].sum()),
        "movers": len(frames["movers"]),
    }
