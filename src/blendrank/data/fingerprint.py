"""What a training run was fed, as a checkpoint records it: a digest of its data that is cheap
to take and changes whenever the data does.

A Parquet file is identified by its size and a digest of its footer, which holds the schema,
the row count and every column chunk's offsets, sizes and statistics: a file rewritten with other
rows has another footer, while the same file copied or touched keeps it (so a moved log still
resumes). A file that has no readable footer falls back to its size and modification time. A
table in memory is identified by its schema, its row count and a digest of an evenly spaced
sample of its rows.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from blendrank.checkpoint import RunInput
from blendrank.data.stream import LogSource, SourceLike, as_source

PARQUET_MAGIC = b"PAR1"
#: Rows of an in-memory table that its digest reads (evenly spaced, first and last included).
TABLE_SAMPLE_ROWS = 2048


def _file_identity(path: Path) -> tuple[str, int | None]:
    """``(digest, rows)`` of one file: its size and Parquet footer, else its size and mtime."""
    stat = path.stat()
    h = hashlib.sha256(f"size={stat.st_size}".encode())
    try:
        with path.open("rb") as f:
            f.seek(-8, 2)
            tail = f.read(8)
            length = int.from_bytes(tail[:4], "little")
            if tail[4:] != PARQUET_MAGIC or not 0 < length <= stat.st_size - 12:
                raise ValueError("no Parquet footer")
            f.seek(-(8 + length), 2)
            h.update(f.read(length))
        rows = pq.read_metadata(path).num_rows
    except (OSError, ValueError, pa.ArrowException):
        h.update(f"mtime_ns={stat.st_mtime_ns}".encode())
        rows = None
    return h.hexdigest()[:16], rows


def _table_digest(table: pa.Table) -> str:
    """Schema (without metadata), row count and a sample of rows; independent of chunking."""
    h = hashlib.sha256(table.schema.remove_metadata().to_string().encode())
    h.update(f"rows={table.num_rows}".encode())
    if table.num_rows:
        spaced = np.linspace(0, table.num_rows - 1, TABLE_SAMPLE_ROWS).round()
        idx = np.unique(spaced.astype(np.int64))
        rows = table.take(pa.array(idx)).to_pylist()
        h.update(json.dumps(rows, default=str, allow_nan=True).encode())
    return h.hexdigest()[:16]


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def source_input(source: LogSource) -> RunInput:
    """The data of a :class:`LogSource` (its files or table, its ``ts`` range and row filter) as
    a checkpoint :class:`~blendrank.checkpoint.RunInput`."""
    h = hashlib.sha256(f"ts_range={source.ts_range} shown_only={source.shown_only}".encode())
    lo, hi = source.ts_range
    where = "" if (lo, hi) == (None, None) else f", ts in [{lo}, {hi})"
    if source.table is not None:
        t = source.table
        h.update(_table_digest(t).encode())
        size = f"{_plural(t.num_rows, 'row')} x {_plural(t.num_columns, 'column')}"
        text = f"an in-memory table of {size}"
        return RunInput("data", h.hexdigest()[:16], text + where)
    rows: list[int | None] = []
    for path in source.files:
        digest, n = _file_identity(path)
        h.update(digest.encode())
        rows.append(n)
    files = source.files
    name = (str(files[0]) if len(files) == 1
            else f"{files[0].parent} ({_plural(len(files), 'file')})")
    count = f", {sum(rows):,} rows" if None not in rows else ""
    return RunInput("data", h.hexdigest()[:16], f"{name}{count}{where}")


def data_input(data: SourceLike, shown_only: bool = False) -> RunInput:
    """The data of a Parquet file, directory of shards, table or :class:`LogSource` as a
    checkpoint :class:`~blendrank.checkpoint.RunInput` (``shown_only`` as the trainer reads it)."""
    return source_input(as_source("data", data, shown_only))


def splits_input(train: SourceLike, valid: SourceLike | None, shown_only: bool = False) -> RunInput:
    """The training and (when given) validation data of a fit as one checkpoint input."""
    t = data_input(train, shown_only)
    if valid is None:
        return t
    v = data_input(valid, shown_only)
    digest = hashlib.sha256(f"{t.digest}/{v.digest}".encode()).hexdigest()[:16]
    return RunInput("data", digest, f"train {t.description}; valid {v.description}")
