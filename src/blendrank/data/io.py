"""Reading and writing contract logs: Parquet (file or directory of shards) and CSV (plain or .gz).

Every read problem is a :class:`~blendrank.errors.DataError` that names the file; nothing is
coerced on the way in (CSV types are inferred by Arrow, empty CSV cells are nulls).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from blendrank.data.contract import (
    SmallRequests,
    ValidationReport,
    format_violations,
    validate_table,
)
from blendrank.data.mapping import ColumnMapping, apply_mapping, load_mapping, parse_mapping
from blendrank.errors import DataError, DataWarning
from blendrank.staging import incomplete_reason

#: What a mapping argument may be: a YAML path, a parsed mapping, or a dict in the YAML's form.
MappingLike = str | Path | ColumnMapping | Mapping[str, Any]

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz")


def _is_csv(path: Path) -> bool:
    return path.name.lower().endswith(CSV_SUFFIXES)


def _is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(PARQUET_SUFFIXES)


def parquet_files(path: str | Path) -> list[Path]:
    """The Parquet file at ``path``, or the ``*.parquet`` / ``*.pq`` shards under a directory
    (recursively, sorted; names starting with ``.`` or ``_`` such as temp files are skipped)."""
    path = Path(path)
    incomplete = incomplete_reason(path)
    if incomplete is not None:
        raise DataError(f"{path}: incomplete output ({incomplete}); "
                        "generate it again into a new directory")
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and _is_parquet(p) and not p.name.startswith((".", "_"))
        )
        if not files:
            raise DataError(f"{path}: directory contains no .parquet files")
        return files
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    return [path]


def widen_half_floats(data: pa.Table | pa.RecordBatch) -> pa.Table | pa.RecordBatch:
    """``data`` with its float16 columns as float32 (every value kept exactly): Arrow's compute
    kernels, which validation and training use, have none for float16."""
    schema = data.schema
    if not any(pa.types.is_float16(f.type) for f in schema):
        return data
    fields = [f.with_type(pa.float32()) if pa.types.is_float16(f.type) else f for f in schema]
    return data.cast(pa.schema(fields, metadata=schema.metadata))


def _unreadable(path: Path, exc: Exception) -> DataError:
    """The error for a Parquet file that cannot be read; a readable file whose columns repeat a
    name gets its own message (Arrow's is about field lookups)."""
    try:
        names = pq.read_schema(path).names
    except Exception:  # noqa: BLE001 - any failure: the file itself is unreadable
        names = []
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        return DataError(f"{path}: column name(s) {repeated} appear more than once; give every column a "
                         "unique name (or map one of them in a column mapping) and re-export it")
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DataError(f"{path}: not a Parquet file or truncated ({first}); re-export it")


def _read_parquet(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    try:
        table = pq.read_table(path, columns=list(columns) if columns is not None else None)
        return widen_half_floats(table)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(path, exc) from None


def _read_csv(path: Path) -> pa.Table:
    try:
        return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    except (pa.ArrowException, OSError, EOFError) as exc:
        raise DataError(
            f"{path}: cannot read as CSV ({exc}); check the file and re-export it"
        ) from None


def _concat_shards(files: list[Path], tables: list[pa.Table]) -> pa.Table:
    """Concatenate shards with equal column names and types (nullability, metadata may differ)."""
    first = [(f.name, f.type) for f in tables[0].schema]
    for path, t in zip(files[1:], tables[1:], strict=True):
        fields = [(f.name, f.type) for f in t.schema]
        if fields != first:
            diff = sorted(set(map(str, fields)) ^ set(map(str, first)))
            raise DataError(
                f"{path}: schema differs from {files[0]} ({', '.join(diff)}); "
                "all shards must have the same columns and types"
            )
    schema = pa.schema([f.with_nullable(True) for f in tables[0].schema])
    return pa.concat_tables([t.replace_schema_metadata(None).cast(schema) for t in tables])


def read_raw(path: str | Path) -> pa.Table:
    """Read a Parquet file, a directory of Parquet shards, or a CSV / CSV.gz file, as stored."""
    path = Path(path)
    if path.is_file() and _is_csv(path):
        return _read_csv(path)
    if path.is_file() and not _is_parquet(path):
        raise DataError(
            f"{path}: unsupported file type; expected .parquet, a directory of .parquet shards, "
            ".csv or .csv.gz"
        )
    files = parquet_files(path)
    tables = [_read_parquet(f) for f in files]
    return tables[0] if len(tables) == 1 else _concat_shards(files, tables)


def resolve_mapping(mapping: MappingLike | None) -> tuple[ColumnMapping | None, str]:
    """A mapping argument as a validated :class:`ColumnMapping` and the name errors give it.

    A dict is validated exactly like a YAML file (unknown keys, bad names and values are a
    :class:`DataError` naming the key)."""
    if mapping is None or isinstance(mapping, ColumnMapping):
        return mapping, "<mapping>"
    if isinstance(mapping, Mapping):
        return parse_mapping(dict(mapping), "<mapping dict>"), "<mapping dict>"
    if isinstance(mapping, (str, Path)):
        return load_mapping(mapping), str(mapping)
    raise DataError(
        f"column mapping: expected a YAML path, a dict or a ColumnMapping, got "
        f"{type(mapping).__name__}"
    )


def map_table(table: pa.Table, mapping: MappingLike | None, source: str) -> pa.Table:
    """Apply ``mapping`` (any :data:`MappingLike`; None: unchanged) to a table read from
    ``source``."""
    parsed, mapping_source = resolve_mapping(mapping)
    if parsed is None:
        return table
    return apply_mapping(table, parsed, source=source, mapping_source=mapping_source)


def read_log(path: str | Path, mapping: MappingLike | None = None) -> pa.Table:
    """Read a log and apply a column mapping (a YAML path, a dict in the YAML's form, or a
    parsed :class:`ColumnMapping`).

    The result is in contract column names but not validated; see :func:`load_log`.
    """
    return map_table(read_raw(path), mapping, str(path))


def load_log(
    path: str | Path,
    mapping: MappingLike | None = None,
    *,
    min_candidates: int = 2,
    small_requests: SmallRequests = "error",
) -> tuple[pa.Table, ValidationReport]:
    """Read, map and validate a log; raise :class:`DataError` listing every violation.

    Returns the validated table (small requests removed when ``small_requests="drop"``; a
    ``user_id`` column added when the log has none) and its report. The report's warnings
    (no users, far-off predictions) are also issued as :class:`~blendrank.errors.DataWarning`,
    which the CLI prints as ``warning:`` lines.
    """
    report = validate_table(
        read_log(path, mapping),
        str(path),
        min_candidates=min_candidates,
        small_requests=small_requests,
    )
    if not report.ok:
        raise DataError(format_violations(report))
    for message in report.warnings:
        warnings.warn(message, DataWarning, stacklevel=2)
    return report.table, report


def iter_record_batches(
    path: str | Path | Sequence[Path],
    columns: Sequence[str] | None = None,
    batch_size: int = 65_536,
    part: tuple[int, int] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream record batches of at most ``batch_size`` rows from a Parquet file, a directory of
    shards or a list of files, shard by shard, never loading a whole file. ``columns=None``
    reads every column.

    ``part=(index, count)`` streams only part ``index`` of ``count`` disjoint parts (one per
    rank or data lane; together they hold every row exactly once): the files' row groups are
    dealt round-robin when there are at least ``count`` of them (each part reads only its own
    row groups), else the record batches are (each part decodes the whole file)."""
    files = [Path(p) for p in path] if isinstance(path, (list, tuple)) else parquet_files(path)
    # Check every file first (columns, row groups) but hold no reader: an open ParquetFile keeps
    # the buffers of what it read (~ a row group per column) until it is dropped, so a
    # reader open per file would grow memory with the number of files read.
    n_groups = [_open_parquet(p, columns).num_row_groups for p in files]
    if part is not None and not 0 <= part[0] < part[1]:
        raise ValueError(f"part {part}: need 0 <= index < count")
    index, count = part if part is not None else (0, 1)
    groups = [(p, g) for p, n in zip(files, n_groups) for g in range(n)]
    by_group = count > 1 and len(groups) >= count
    units = groups[index::count] if by_group else [(p, None) for p in files]
    cols = list(columns) if columns is not None else None
    seen = 0
    pf, pf_path = None, None
    for path_, group in units:
        try:
            if pf_path != path_:  # units come file by file: one reader at a time
                pf = None  # drop the previous reader before opening the next
                pf, pf_path = _open_parquet(path_, None), path_
            batches = pf.iter_batches(batch_size=batch_size, columns=cols,
                                      row_groups=None if group is None else [group])
            for rb in batches:
                if by_group or seen % count == index:
                    yield widen_half_floats(rb)
                seen += 1
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable(path_, exc) from None


def _open_parquet(path: Path, columns: Sequence[str] | None) -> pq.ParquetFile:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(path, exc) from None
    if columns is not None:
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(missing)}; "
                f"available columns: {', '.join(pf.schema_arrow.names)}"
            )
    return pf


def write_parquet(table: pa.Table, path: str | Path) -> Path:
    """Write ``table`` to ``path`` atomically (temp file in the same directory + ``os.replace``),
    creating parent directories. Readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
