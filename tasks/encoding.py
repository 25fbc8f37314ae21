"""Text columns as integer codes: what the transforms group, join and count by at millions of lines."""

from __future__ import annotations

import numpy as np
import pandas as pd


def dictionary_codes(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """A text column's integer codes (-1: missing) and the values they stand for, in order of
    first appearance: Arrow's dictionary encoding, several times faster than hashing in pandas."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = pa.array(values.array)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    encoded = pc.dictionary_encode(array)
    return (encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype("int32"),
            pd.Index(encoded.dictionary.to_pandas(), dtype="str"))


def positions(values: pd.Series, index: pd.Index | pd.Series) -> np.ndarray:
    """Each text value's position in `index` (-1: absent or missing), hashed in Arrow's C++
    (at ten million lines 0.19 s, against 0.30 s encoding the values first)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def text(column) -> pa.Array:
        array = pa.array(pd.Series(column, dtype="str").array)
        return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array

    found = pc.index_in(text(values).cast(pa.large_string()), value_set=text(index).cast(pa.large_string()))
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype("int64")


def is_in(values: pd.Series, allowed) -> np.ndarray:
    """Whether each text value is one of `allowed` (a missing value never is). pandas' isin on
    text makes a Python object of each allowed value: 0.47 s against 0.02 s for 100,000."""
    return positions(values, pd.Index(allowed, dtype="str")) >= 0


def text_hashes(values: pd.Index | pd.Series) -> np.ndarray:
    """64-bit hashes of text values (a missing value has its own)."""
    return pd.util.hash_pandas_object(pd.Series(values, dtype="str"), index=False).to_numpy()


def sorted_distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values, sorted (a sort and one pass: hashing was several times slower)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def in_several(groups: list[np.ndarray]) -> np.ndarray:
    """The values (sorted) found in more than one of `groups`."""
    seen = np.sort(np.concatenate([sorted_distinct(g) for g in groups] or [np.empty(0, "uint64")]))
    return sorted_distinct(seen[1:][seen[1:] == seen[:-1]])
