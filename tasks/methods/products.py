"""Products: which StockCodes are goods, and what each one is called.

Invoice exports mix goods with service lines: postage, carriage, fees, discounts, manual
adjustments, gift vouchers. They are not things a customer chooses to buy together, so best
seller lists and market baskets leave them out.

The list of service codes is a data file a person edits, shipped with the package as
`customer_segments.data.reference/service_codes.csv`. It is a plain CSV (UTF-8, comma separated,
one header line, no comment lines; quote a field that holds a comma) with three columns:

- `code`: the StockCode, or the beginning of StockCodes, exactly as the data spells it;
- `match`: `exact` (the whole StockCode equals `code`) or `prefix` (the StockCode starts with
  `code`, e.g. `gift_0001_` for the vouchers gift_0001_10, gift_0001_20, ...);
- `meaning`: what the code stands for, for the people reading the file.

Matching is case-sensitive. Product codes use the letter case to tell variants apart (85123A and
85123a are both in the data), so the file names each spelling of a service code it means: the
UCI data holds `M` (manual) 571 times and `m` once, and both are listed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

SERVICE_CODE_COLUMNS = ("code", "match", "meaning")
MATCH_KINDS = ("exact", "prefix")


def load_service_codes(path: Path | str | None = None) -> pd.DataFrame:
    """Read the service codes file (by default the packaged one) and check its form.

    The one I/O helper of this module: the stage runner's caller reads the file once and hands the
    frame to the pure transforms.
    """
    if path is None:
        source = resources.files("customer_segments.data.reference") / "service_codes.csv"
    else:
        source = Path(path)
    with source.open("r", encoding="utf-8") as handle:
        # Every field as text and no NA guessing: a code such as "NA" or "null" must stay itself.
        codes = pd.read_csv(handle, dtype=str, keep_default_na=False, skipinitialspace=True)
    return check_service_codes(codes, source)


def check_service_codes(codes: pd.DataFrame, source: object = "service codes") -> pd.DataFrame:
    """The frame with surrounding blanks trimmed, or ValueError naming what an editor got wrong."""
    missing = [c for c in SERVICE_CODE_COLUMNS if c not in codes.columns]
    if missing:
        raise ValueError(
            f"{source}: column(s) {', '.join(missing)} missing; expected the header "
            f"{','.join(SERVICE_CODE_COLUMNS)} (found {', '.join(map(str, codes.columns))})"
        )
    codes = codes[list(SERVICE_CODE_COLUMNS)].astype("str")
    codes = codes.apply(lambda column: column.str.strip())
    bad_match = ~codes["match"].isin(MATCH_KINDS)
    if bad_match.any():
        raise ValueError(
            f"{source}: match must be one of {', '.join(MATCH_KINDS)}; "
            f"found {', '.join(repr(m) for m in codes.loc[bad_match, 'match'].unique())}"
        )
    if codes["code"].eq("").any():
        raise ValueError(f"{source}: a row has an empty code")
    return codes.reset_index(drop=True)


def is_service_code(stock_codes: pd.Series, codes: pd.DataFrame) -> pd.Series:
    """True where a StockCode is a service code of `codes` (exact or prefix match, case-sensitive)."""
    return pd.Series(service_lines(*codes_of(stock_codes), codes), index=stock_codes.index, name="is_service")


def service_lines(item: np.ndarray, items: pd.Index, codes: pd.DataFrame) -> np.ndarray:
    """is_service_code of lines given as item codes (-1: missing) and the items they stand for:
    each distinct code is judged once (a few thousand), then spread over the lines."""
    exact = codes.loc[codes["match"] == "exact", "code"]
    prefixes = tuple(codes.loc[codes["match"] == "prefix", "code"])
    distinct = pd.Series(items, dtype="str")
    service = distinct.isin(exact)
    if prefixes:
        service |= distinct.str.startswith(prefixes, na=False)
    # A missing StockCode (position -1) is not a service code.
    return np.append(service.to_numpy(dtype=bool), False)[item]


def product_lines(clean: pd.DataFrame, codes: pd.DataFrame | None) -> pd.DataFrame:
    """The lines whose StockCode is not a service code (all lines when `codes` is None)."""
    if codes is None:
        return clean
    return clean.loc[~is_service_code(clean["StockCode"], codes).to_numpy()]


def product_names(clean: pd.DataFrame) -> pd.DataFrame:
    """The most frequent description of each StockCode (exports spell some items several ways)."""
    # Lines counted per (code, description) pair of integer codes rather than grouped on strings.
    counts = name_counts(*codes_of(clean["StockCode"]), *codes_of(clean["Description"]))
    counts = counts.sort_values(["StockCode", "Description"], kind="stable", ignore_index=True)
    return most_frequent_names(counts)


def name_counts(item: np.ndarray, items: pd.Index, name: np.ndarray, names: pd.Index) -> pd.DataFrame:
    """Lines per (StockCode, Description) of lines given as codes (-1: missing) and their values,
    counted per pair of integer codes rather than grouped on strings."""
    known = (item >= 0) & (name >= 0)
    width = max(len(names), 1)
    pairs, n = np.unique(item[known].astype("int64") * width + name[known], return_counts=True)
    return pd.DataFrame({
        "StockCode": pd.Series(items, dtype="str").take(pairs // width).to_numpy(),
        "Description": pd.Series(names, dtype="str").take(pairs % width).to_numpy(),
        "n": n.astype("int64"),
    }).astype({"StockCode": "str", "Description": "str"})


def codes_of(values: pd.Series, sort: bool = False) -> tuple[np.ndarray, pd.Index]:
    """A column's integer codes and the distinct values they stand for (-1: missing); a
    categorical's own codes, without hashing its values again (with `sort`, when its categories
    are in sorted order). A categorical's values may include some no line holds."""
    if isinstance(values.dtype, pd.CategoricalDtype) and (not sort or values.cat.categories.is_monotonic_increasing):
        return values.cat.codes.to_numpy(), values.cat.categories
    return pd.factorize(values, sort=sort)


def most_frequent_names(counts: pd.DataFrame) -> pd.DataFrame:
    """From (StockCode, Description, n) counts: each StockCode's most frequent description
    (the first in description order on a tie)."""
    counts = counts.sort_values(["StockCode", "n", "Description"], ascending=[True, False, True], kind="stable")
    return counts.drop_duplicates("StockCode")[["StockCode", "Description"]]
