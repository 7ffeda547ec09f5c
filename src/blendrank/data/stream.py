"""Streaming a log: the rows of a Parquet file, a directory of shards or an in-memory table,
read record batch by record batch and never whole.

:class:`LogSource` is the one reader the trainers share: the MTL trainer reads a split's shown
rows (optionally only a ``ts`` range of them), GRADE reads every row of a log in log order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from blendrank.data.io import iter_record_batches, parquet_files
from blendrank.errors import DataError

POSITION = "position"
TS = "ts"

__all__ = ["LogSource", "SourceLike", "as_source"]


@dataclass(frozen=True)
class LogSource:
    """The rows of a log or of one split of it: Parquet files (optionally only
    ``lo <= ts < hi``) or a table.

    ``shown_only`` keeps rows with a non-null ``position`` (all rows when there is no such
    column): candidates that were never shown have no observed feedback.
    """

    name: str
    files: tuple[Path, ...] = ()
    table: pa.Table | None = None
    ts_range: tuple[int | None, int | None] = (None, None)
    shown_only: bool = True

    @classmethod
    def of(cls, name: str, data: str | Path | pa.Table, shown_only: bool = True) -> LogSource:
        if isinstance(data, pa.Table):
            return cls(name, table=data, shown_only=shown_only)
        return cls(name, files=tuple(parquet_files(data)), shown_only=shown_only)

    @property
    def column_names(self) -> list[str]:
        if self.table is not None:
            return list(self.table.column_names)
        try:
            return list(pq.read_schema(self.files[0]).names)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(
                f"{self.files[0]}: not a Parquet file or truncated ({exc}); re-export it"
            ) from None

    def describe(self) -> str:
        if self.table is not None:
            return f"{self.name} (in-memory table)"
        where = str(self.files[0]) if len(self.files) == 1 else f"{len(self.files)} shards"
        lo, hi = self.ts_range
        if lo is None and hi is None:
            return f"{self.name} ({where})"
        return f"{self.name} ({where}, ts in [{lo}, {hi}))"

    def batches(
        self,
        columns: Sequence[str] | None = None,
        batch_size: int = 65_536,
        part: tuple[int, int] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Filtered record batches with ``columns`` (all when None), in log order; empty batches
        are skipped. ``part=(index, count)``: only that part of the rows (see
        :func:`blendrank.data.io.iter_record_batches`)."""
        names = self.column_names
        cols = None if columns is None else list(dict.fromkeys(columns))
        filter_pos = self.shown_only and POSITION in names
        filter_ts = self.ts_range != (None, None)
        if cols is not None:
            missing = [c for c in cols if c not in names]
            if missing:
                raise DataError(
                    f"{self.describe()}: missing column(s) {missing}; available: {', '.join(names)}"
                )
            read = cols + [c for c in ((POSITION,) if filter_pos else ()) if c not in cols]
            read += [TS] if filter_ts and TS not in read else []
        else:
            read = None
        for batch in self._raw(read, batch_size, part):
            keep = None
            if filter_pos:
                keep = pc.is_valid(batch.column(POSITION))
            if filter_ts:
                lo, hi = self.ts_range
                ts = batch.column(TS)
                for bound, op in ((lo, pc.greater_equal), (hi, pc.less)):
                    if bound is not None:
                        m = op(ts, pa.scalar(bound, ts.type))
                        keep = m if keep is None else pc.and_(keep, m)
            if keep is not None:
                batch = batch.filter(keep)
            if cols is not None and batch.num_columns != len(cols):
                batch = batch.select(cols)
            if batch.num_rows:
                yield batch

    def _raw(
        self, columns: list[str] | None, batch_size: int, part: tuple[int, int] | None = None
    ) -> Iterator[pa.RecordBatch]:
        if self.table is not None:
            table = self.table if columns is None else self.table.select(columns)
            index, count = part or (0, 1)
            for i, rb in enumerate(table.to_batches(max_chunksize=batch_size)):
                if i % count == index:
                    yield rb
            return
        yield from iter_record_batches(list(self.files), columns, batch_size, part)


SourceLike: TypeAlias = LogSource | str | Path | pa.Table


def as_source(name: str, data: SourceLike, shown_only: bool = True) -> LogSource:
    """``data`` as a :class:`LogSource` named ``name`` (a source is returned as it is)."""
    return data if isinstance(data, LogSource) else LogSource.of(name, data, shown_only)
