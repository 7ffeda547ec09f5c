"""Date-time columns to the contract's ``ts``: int64 milliseconds since the Unix epoch.

Accepted inputs (what a column mapping converts; integers and floats are left to ``ts_unit``):

* Arrow ``timestamp`` columns (any unit). With a time zone they are instants and convert as
  they are; without one they are wall-clock times in ``timezone``.
* Arrow ``date32`` / ``date64`` columns: midnight of that day in ``timezone``.
* Strings. With ``fmt`` (a strptime format such as ``%d/%m/%Y %H:%M:%S``) every value is parsed
  with it; ``%z`` in the format reads a UTC offset. Without ``fmt`` the ISO-8601 forms are
  inferred: ``2024-01-31``, ``2024-01-31 13:45:00``, ``2024-01-31T13:45:00.250`` and the same
  with a ``Z`` or ``+01:00`` offset. Values with an offset are instants; values without one are
  wall-clock times in ``timezone``.

Wall-clock times that a daylight-saving change makes ambiguous take the earlier instant; times
that fall into the gap of a spring-forward change move to the first instant after the gap.
Nulls stay null (validation reports them). Parsing is Arrow's (``pyarrow.compute.cast`` /
``strptime``); sub-millisecond digits are truncated.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from blendrank.errors import DataError

#: A time of day followed by a UTC offset (``Z``, ``+01``, ``+0100`` or ``+01:00``) at the end
#: of an ISO-8601 string; the time is part of the pattern so that a date's ``-31`` is no offset.
_OFFSET_RE = r"\d{2}:\d{2}(:\d{2}([.,]\d*)?)?\s*([Zz]|[+-]\d{2}(:?\d{2})?)\s*$"
_ISO_EXAMPLES = "2024-01-31, 2024-01-31 13:45:00, 2024-01-31T13:45:00.250Z or ...+01:00"


def is_datetime_type(t: pa.DataType) -> bool:
    """Types :func:`to_epoch_ms` converts: strings, timestamps and dates."""
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_timestamp(t)
        or pa.types.is_date(t)
    )


def _instant_ms(ts: pa.Array, timezone: str) -> pa.Array:
    """A timestamp array (naive = wall clock in ``timezone``) -> int64 ms since the epoch."""
    if ts.type.tz is None:
        ts = pc.assume_timezone(ts, timezone, ambiguous="earliest", nonexistent="latest")
    return ts.cast(pa.timestamp("ms", ts.type.tz), safe=False).cast(pa.int64())


def _parse_iso(values: pa.Array, timezone: str) -> pa.Array:
    """ISO-8601 strings -> int64 ms; raises ``pa.ArrowInvalid`` on any unparseable value."""
    has_offset = pc.fill_null(pc.match_substring_regex(values, _OFFSET_RE), False)
    naive = pc.if_else(has_offset, pa.scalar(None, values.type), values)
    aware = pc.if_else(has_offset, values, pa.scalar(None, values.type))
    # Nanoseconds first: Arrow's millisecond cast rejects strings with more than 3 decimals.
    naive_ms = _instant_ms(naive.cast(pa.timestamp("ns")), timezone)
    aware_ms = _instant_ms(aware.cast(pa.timestamp("ns", "UTC")), timezone)
    return pc.if_else(has_offset, aware_ms, naive_ms)


def _first_failure(values: pa.Array, parse: Callable[[pa.Array], pa.Array]) -> int:
    """Index of the first value ``parse`` rejects (``parse(values)`` is known to fail).

    Bisects on prefixes: O(log n) parses of at most n values each."""
    lo, hi = 0, len(values)  # parse(values[:lo]) succeeds, parse(values[:hi]) fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            parse(values.slice(0, mid))
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    return hi - 1


def to_epoch_ms(
    column: pa.ChunkedArray,
    *,
    fmt: str | None = None,
    timezone: str = "UTC",
    where: str = "column ts",
) -> pa.ChunkedArray:
    """Convert a date-time column to int64 ms since the epoch (see the module docstring).

    Args:
        column: (rows,) string, timestamp or date values; other types are returned unchanged.
        fmt: strptime format of string values; None infers ISO-8601.
        timezone: IANA time zone of wall-clock values (strings without offset, timestamps
            without time zone, dates).
        where: names the file and column in errors, e.g. ``"log.csv: column 'time'"``.

    Returns:
        (rows,) int64 ms, nulls where the input is null.

    Raises:
        DataError: naming ``where``, the first unparseable value and its 0-based row.
    """
    t = column.type
    if not is_datetime_type(t):
        return column
    values = column.combine_chunks()
    try:
        if pa.types.is_date(t):
            return pa.chunked_array([_instant_ms(values.cast(pa.timestamp("ms")), timezone)])
        if pa.types.is_timestamp(t):
            return pa.chunked_array([_instant_ms(values, timezone)])
    except pa.ArrowInvalid as exc:
        raise DataError(f"{where}: cannot convert to UTC milliseconds ({exc})") from None
    if fmt is not None:
        try:
            parsed = pc.strptime(values, format=fmt, unit="ms", error_is_null=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DataError(f"{where}: ts_format {fmt!r} is not usable ({exc})") from None
        bad = pc.and_(pc.is_valid(values), pc.is_null(parsed))
        if pc.any(bad).as_py():
            row = int(pc.index(bad, True).as_py())
            raise DataError(
                f"{where}: cannot parse {values[row].as_py()!r} (row {row}) with ts_format "
                f"{fmt!r}; fix the value or the format (strptime codes, e.g. %Y-%m-%d %H:%M:%S)"
            )
        return pa.chunked_array([_instant_ms(parsed, timezone)])
    try:
        return pa.chunked_array([_parse_iso(values, timezone)])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        row = _first_failure(values, lambda v: _parse_iso(v, timezone))
        raise DataError(
            f"{where}: cannot parse {values[row].as_py()!r} (row {row}) as an ISO-8601 date-time "
            f"(e.g. {_ISO_EXAMPLES}); set ts_format in the mapping to the column's strptime "
            "format (e.g. '%d/%m/%Y %H:%M'), or fix the value"
        ) from None
