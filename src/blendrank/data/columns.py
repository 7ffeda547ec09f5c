"""Column functions shared by models that read labels and write predictions."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from blendrank.errors import DataError


def label_values(batch: pa.RecordBatch | pa.Table, column: str) -> np.ndarray:
    """float64 label values with NaN for nulls; DataError for non-numeric columns."""
    col = batch.column(column)
    t = col.type
    if pa.types.is_null(t):
        return np.full(batch.num_rows, np.nan)
    if not (pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise DataError(f"column {column!r}: labels must be bool, integer or float, got {t}")
    filled = pc.fill_null(col.cast(pa.float64()), math.nan)
    return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=np.float64)


def put_column(table: pa.Table, name: str, values: np.ndarray) -> pa.Table:
    """``table`` with float32 column ``name`` replaced in place if present, appended otherwise."""
    array = pa.array(np.ascontiguousarray(values), type=pa.float32())
    index = table.schema.get_field_index(name)
    return table.set_column(index, name, array) if index >= 0 else table.append_column(name, array)
