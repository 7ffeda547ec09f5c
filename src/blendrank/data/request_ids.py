"""Request ids that come back after other requests, found while a log is streamed.

A streamed check sees the log a chunk of whole requests at a time, so a request id used again
far away (two requests given one id, e.g. by a counter that restarts) lands in two chunks that
each look valid, while ``data validate`` on the whole log groups the rows and finds the
violations (one request spanning two users, an item twice in a request). :class:`SeenRequestIds`
remembers every id the stream has passed; :func:`repeated_requests_report` gathers the rows of
the ids that came back in a second pass and checks them together, so the stream reports what
``data validate`` reports.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from blendrank.data.contract import REQUEST_ID, ValidationReport, validate_table

#: Request ids that came back whose rows a streamed check gathers and checks together.
MAX_GATHERED_IDS = 10_000
_NULL_ID = np.iinfo(np.int64).min


def _keys(ids: pa.Array) -> np.ndarray:
    """``(n,)`` sortable keys of ``ids``: int64 values for integer ids (exact), 16-byte digests of
    the text of any other id (a collision is as likely as 1 in 2^64 at 10^9 ids)."""
    if pa.types.is_integer(ids.type):
        filled = pc.fill_null(ids.cast(pa.int64()), _NULL_ID)
        return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=np.int64)
    texts = ("" if v is None else str(v) for v in ids.to_pylist())
    return np.array([hashlib.blake2b(t.encode(), digest_size=16).digest() for t in texts],
                    dtype="S16")


class SeenRequestIds:
    """Every request id a stream has passed, in sorted levels merged like a log-structured merge
    tree (a level is merged into the one before it once it is as large): adding ``n`` ids costs
    ``O(n log n)`` in all and 8 bytes per integer id (16 per other id)."""

    def __init__(self) -> None:
        self._levels: list[np.ndarray] = []

    def add(self, ids: pa.Array) -> np.ndarray:
        """``(len(ids),)`` bool: True where the id was seen before (earlier in the stream or
        earlier in ``ids``). All of ``ids`` are remembered afterwards."""
        keys = _keys(ids)
        again = np.zeros(len(keys), dtype=bool)
        if len(keys) == 0:
            return again
        order = np.argsort(keys, kind="stable")  # stable: a repeat sorts after its first use
        ordered = keys[order]
        again[order[1:]] = ordered[1:] == ordered[:-1]
        for level in self._levels:
            pos = np.minimum(np.searchsorted(level, keys), len(level) - 1)
            again |= level[pos] == keys
        self._levels.append(np.unique(ordered))
        while len(self._levels) > 1 and len(self._levels[-2]) <= len(self._levels[-1]):
            last = self._levels.pop()
            self._levels[-1] = np.union1d(self._levels[-1], last)
        return again


def shifted(report: ValidationReport, offset: int) -> ValidationReport:
    """``report`` of a chunk that starts at row ``offset`` of the log, with its rows counted
    from the start of the log (as ``data validate`` counts them)."""
    if offset == 0:
        return report
    moved = [replace(v, first_rows=[r + offset for r in v.first_rows]) for v in report.violations]
    return replace(report, violations=moved)


def repeated_requests_report(batches: Iterable[pa.RecordBatch], ids: list[object], source: str,
                             ) -> tuple[ValidationReport, dict[object, tuple[int, int]]]:
    """Check the rows of the requests ``ids`` together, as ``data validate`` on the whole log
    would: ``batches`` are every row of the log in order (every column). Returns the report (its
    rows counted from the start of the log) and, for each id, the row where it was first used
    and the row where it came back after other rows."""
    parts, where = [], []
    offset = 0
    for rb in batches:
        col = rb.column(REQUEST_ID)
        keep = pc.is_in(col, value_set=pa.array(ids, type=col.type))
        idx = np.flatnonzero(np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool))
        if idx.size:
            parts.append(rb.take(pa.array(idx)))
            where.append(idx + offset)
        offset += rb.num_rows
    table = pa.Table.from_batches(parts) if parts else None
    rows = np.concatenate(where) if where else np.zeros(0, dtype=np.int64)
    if table is None:
        return ValidationReport(source, [], None, pa.table({}), []), {}
    report = validate_table(table, source)
    moved = [replace(v, first_rows=[int(rows[r]) for r in v.first_rows]) for v in report.violations]
    back: dict[object, tuple[int, int]] = {}
    last: dict[object, int] = {}
    for rid, row in zip(table.column(REQUEST_ID).to_pylist(), rows.tolist()):
        if rid not in back:
            back[rid] = (row, -1)
        elif back[rid][1] < 0 and row != last[rid] + 1:
            back[rid] = (back[rid][0], row)
        last[rid] = row
    return replace(report, violations=moved), back
