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
