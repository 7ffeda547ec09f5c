"""Row filters written as text: ``COLUMN OP LITERAL``, e.g. ``random_bool == 1``.

Grammar (whitespace around tokens is free)::

    filter  := COLUMN OP LITERAL
    COLUMN  := letters, digits, _ and . (not starting with a digit)
    OP      := == | != | < | <= | > | >=
    LITERAL := a number (1, -2, 0.5, 1e-3) | a quoted string ("test" or 'test') | true | false

Used for the test split (``test_where``). Evaluation is one pyarrow.compute comparison; null
values never match. On a boolean column the literals 0 and 1 mean false and true.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from blendrank.errors import ConfigError, DataError

OPS = {
    "==": pc.equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}

_FILTER_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(==|!=|<=|>=|<|>)\s*(.*?)\s*$")
_INT_RE = re.compile(r"^[+-]?\d+$")
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_EXAMPLES = "e.g. random_bool == 1, split == \"test\", ts >= 1700000000000"

Literal = bool | int | float | str


@dataclass(frozen=True)
class RowFilter:
    """A parsed ``COLUMN OP LITERAL`` filter; ``text`` is what the user wrote."""

    column: str
    op: str
    value: Literal
    text: str

    def with_column(self, column: str) -> RowFilter:
        return RowFilter(column, self.op, self.value, self.text)


def _literal(raw: str, text: str) -> Literal:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1]
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if _INT_RE.match(raw):
        return int(raw)
    if _FLOAT_RE.match(raw):
        return float(raw)
    what = "nothing" if not raw else repr(raw)
    raise ConfigError(
        f"filter {text!r}: found {what} after the operator; expected a number, a quoted string "
        f"or true/false ({_EXAMPLES})"
    )


def parse_filter(text: str) -> RowFilter:
    """Parse ``COLUMN OP LITERAL``; :class:`ConfigError` explains what is wrong."""
    m = _FILTER_RE.match(text)
    if m is None:
        raise ConfigError(
            f"filter {text!r}: expected COLUMN OP VALUE with OP one of "
            f"{', '.join(OPS)} ({_EXAMPLES}); and/or and parentheses are not supported"
        )
    column, op, raw = m.groups()
    return RowFilter(column, op, _literal(raw, text), text)


def filter_mask(table: pa.Table, flt: RowFilter, source: str = "<table>") -> pa.ChunkedArray:
    """(rows,) boolean mask of the rows of ``table`` that match ``flt`` (null never matches).

    Raises :class:`DataError` naming ``source`` for an unknown column (listing the columns) or
    a literal that cannot be compared with the column's type."""
    if flt.column not in table.column_names:
        raise DataError(
            f"{source}: filter {flt.text!r}: no column {flt.column!r}; available columns: "
            f"{', '.join(table.column_names)}"
        )
    col = table.column(flt.column)
    value = flt.value
    stringy = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
    if pa.types.is_boolean(col.type) and not isinstance(value, bool) and value in (0, 1):
        value = bool(value)
    if stringy != isinstance(value, str):
        hint = "quote the value" if stringy else "compare it with a number (no quotes)"
        raise DataError(
            f"{source}: filter {flt.text!r}: column {flt.column!r} is {col.type} but the value "
            f"{value!r} is {type(value).__name__}; {hint}"
        )
    try:
        mask = OPS[flt.op](col, pa.scalar(value))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise DataError(
            f"{source}: filter {flt.text!r}: cannot compare column {flt.column!r} ({col.type}) "
            f"with {value!r} ({exc})"
        ) from None
    return pc.fill_null(mask, False)
