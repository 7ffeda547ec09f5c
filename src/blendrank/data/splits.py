"""Train / valid / test splits of a log, for the commands that load it whole.

Three ways, in this order:

* a directory holding ``train``, ``valid`` and ``test`` logs (``.parquet`` files or shard
  directories, ``.csv`` or ``.csv.gz``): each file is one split;
* one log and a test filter ``test_where`` (``COLUMN OP LITERAL``, :mod:`blendrank.data.filters`;
  from the argument, else from the mapping's ``test_where:``): the requests that match are the
  test split (e.g. the randomised-order traffic, ``random_bool == 1``); the others are split by
  time, the latest ``valid_frac`` of them being ``valid``;
* one log: split by time, the latest ``test_frac`` of the requests being ``test`` and the
  ``valid_frac`` before them ``valid``.

Time splits order requests by their first ``ts``, so a request never straddles two splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from blendrank.data.contract import REQUEST_ID, TS
from blendrank.data.filters import RowFilter, filter_mask, parse_filter
from blendrank.data.io import CSV_SUFFIXES, PARQUET_SUFFIXES, MappingLike, load_log, resolve_mapping
from blendrank.data.mapping import ColumnMapping
from blendrank.errors import ConfigError, DataError

SPLITS = ("train", "valid", "test")
_SUFFIXES = PARQUET_SUFFIXES[:1] + CSV_SUFFIXES


def split_files(data: Path) -> dict[str, Path] | None:
    """``{split: path}`` when ``data`` is a directory holding every split, else None."""
    if not data.is_dir():
        return None
    found = {}
    for s in SPLITS:
        paths = [data / f"{s}{suffix}" for suffix in _SUFFIXES if (data / f"{s}{suffix}").exists()]
        if not paths:
            return None
        found[s] = paths[0]
    return found


def _request_split(first_ts: np.ndarray, valid_frac: float, test_frac: float) -> np.ndarray:
    """(requests,) split index 0/1/2 from each request's first ts: the last ``test_frac`` of
    the requests by time are test, the ``valid_frac`` before them valid."""
    lo, hi = np.quantile(np.sort(first_ts), [1 - valid_frac - test_frac, 1 - test_frac])
    return np.where(first_ts < lo, 0, np.where(first_ts < hi, 1, 2))


def _filter_on_table(flt: RowFilter, table: pa.Table, mapping: ColumnMapping | None) -> RowFilter:
    """The filter with its column as named in the mapped table: a source column that the
    mapping renamed is looked up under its contract name."""
    if flt.column in table.column_names or mapping is None:
        return flt
    renamed = [t for t, (src, _) in mapping.targets().items() if src == flt.column]
    return flt.with_column(renamed[0]) if renamed else flt


def _first_ts_and_test(
    table: pa.Table, flt: RowFilter | None, source: str
) -> tuple[pa.Array, np.ndarray, np.ndarray | None]:
    """Per request (in order of first appearance): its id, first ts, and whether all of its
    rows match ``flt`` (None without a filter)."""
    keys = {REQUEST_ID: table.column(REQUEST_ID), TS: table.column(TS)}
    aggs = [(TS, "min")]
    if flt is not None:
        keys["m"] = filter_mask(table, flt, source)
        aggs += [("m", "all"), ("m", "any")]
    per_req = pa.table(keys).group_by(REQUEST_ID, use_threads=False).aggregate(aggs)
    first_ts = per_req[f"{TS}_min"].to_numpy()
    if flt is None:
        return per_req[REQUEST_ID].combine_chunks(), first_ts, None
    mixed = pc.and_(per_req["m_any"], pc.invert(per_req["m_all"]))
    if pc.any(mixed).as_py():
        example = per_req[REQUEST_ID][pc.index(mixed, True).as_py()].as_py()
        n = pc.sum(mixed).as_py()
        raise DataError(
            f"{source}: test_where {flt.text!r} matches only some rows of {n:,} request(s) "
            f"(e.g. request_id={example!r}); the test filter must hold for a whole request, "
            "so use a request-level column (such as a randomisation flag)"
        )
    is_test = per_req["m_all"].to_numpy(zero_copy_only=False).astype(bool)
    return per_req[REQUEST_ID].combine_chunks(), first_ts, is_test


def describe_test_split(data: Path, mapping: MappingLike | None = None, *, test_frac: float,
                        test_where: str | None = None) -> str:
    """Which requests :func:`load_splits` makes the test split, in words (for reports)."""
    if split_files(Path(data)) is not None:
        return f"the test file of {data}"
    parsed, _ = resolve_mapping(mapping)
    where = test_where if test_where is not None else (parsed.test_where if parsed else None)
    if where is not None:
        return f"the requests where {where}"
    return f"the latest {test_frac:.0%} of requests by time"


def load_splits(
    data: Path,
    mapping: MappingLike | None = None,
    *,
    valid_frac: float,
    test_frac: float,
    test_where: str | None = None,
    min_candidates: int = 2,
) -> dict[str, pa.Table]:
    """Load ``data`` (mapped and validated, :func:`blendrank.data.io.load_log`) as
    ``{"train", "valid", "test"}`` tables; see the module docstring for the three ways.

    ``test_where`` overrides the mapping's ``test_where:``; ``test_frac`` is unused when a test
    filter is given. Raises :class:`ConfigError` for a bad filter (or a filter on a directory
    that is split into files already) and :class:`DataError` for an unknown filter column, a
    filter that splits a request, or an empty split."""
    data = Path(data)
    parsed, _ = resolve_mapping(mapping)
    where = test_where if test_where is not None else (parsed.test_where if parsed else None)
    try:
        flt = parse_filter(where) if where is not None else None
    except ConfigError as exc:
        raise ConfigError(f"test_where: {exc}") from None
    files = split_files(data)
    if files is not None:
        if flt is not None:
            raise ConfigError(
                f"test_where {where!r}: {data} is split into train/valid/test files already; "
                "give one log to choose the test requests with a filter"
            )
        return {s: load_log(p, mapping, min_candidates=min_candidates)[0] for s, p in files.items()}
    table, _ = load_log(data, mapping, min_candidates=min_candidates)
    flt = _filter_on_table(flt, table, parsed) if flt is not None else None
    request_ids, first_ts, is_test = _first_ts_and_test(table, flt, str(data))
    if is_test is None:
        req_split = _request_split(first_ts, valid_frac, test_frac)
    else:
        if not is_test.any():
            raise DataError(
                f"{data}: test_where {where!r} matches no request; check the column and value"
            )
        if is_test.all():
            raise DataError(
                f"{data}: test_where {where!r} matches every request, leaving none to train on"
            )
        rest = first_ts[~is_test]
        cut = np.quantile(np.sort(rest), 1 - valid_frac)
        req_split = np.where(is_test, 2, np.where(first_ts < cut, 0, 1))
    return _split_requests(table, request_ids, req_split, str(data))


def split_by_time(table: pa.Table, *, valid_frac: float, test_frac: float, where: str) -> dict[str, pa.Table]:
    """A validated log (e.g. an in-memory table) split into train/valid/test by each request's
    first ``ts``; ``where`` names it in errors."""
    request_ids, first_ts, _ = _first_ts_and_test(table, None, where)
    return _split_requests(table, request_ids, _request_split(first_ts, valid_frac, test_frac), where)


def _split_requests(table: pa.Table, request_ids: pa.Array, req_split: np.ndarray, where: str) -> dict[str, pa.Table]:
    out = {}
    for i, s in enumerate(SPLITS):
        ids = pc.filter(request_ids, pa.array(req_split == i))
        out[s] = table.filter(pc.is_in(table[REQUEST_ID], value_set=ids))
        if out[s].num_rows == 0:
            raise DataError(f"{where}: the {s} split is empty; the log needs more requests spread over time")
    return out
