"""The data contract (docs/data_contract.md): one row per impression, grouped into requests.

========================  =========================  ========  ===================================
column                    type                       nulls     values
========================  =========================  ========  ===================================
``request_id``            int64 or string            no        one ranking request
``user_id``               int64 or string            no        one user per request (optional)
``ts``                    int64 (ms since epoch)     no        request time, used for time splits
``item_id``               int64 or string            no        unique within a request
``position``              int32 (optional)           yes       1-based; null = not shown
``label_<name>``          0/1, bool or float         no        >= 0; one column per objective
``pred_<name>``           float (optional)           no        in [0, 1]; needs ``label_<name>``
``price``                 float (optional)           no        >= 0
``propensity``            float (optional)           no        > 0 (probability or density)
``f_<name>``              any                        yes       finite when floating
========================  =========================  ========  ===================================

Objectives are discovered from the ``label_*`` columns. Other columns are allowed and reported
as ignored. A log without ``user_id`` is valid: each request is taken as its own user (the
report's table gets ``user_id = request_id``) and the report warns that session methods will
treat every request as its own session; so does a log where every user has one request.
Predictions far from their labels' rate are a warning too (see :mod:`blendrank.data.calibration`). :func:`validate_table` collects *every* violation (never just the first) and never
changes a value; the only change it may make is dropping whole small requests when asked to.
All checks are vectorised (pyarrow.compute / numpy), linear or ``n log n`` in the number of rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from blendrank.data.calibration import RATIO_RANGE, Calibration, calibration

REQUEST_ID, USER_ID, TS, ITEM_ID = "request_id", "user_id", "ts", "item_id"
POSITION, PRICE, PROPENSITY = "position", "price", "propensity"
REQUIRED_COLUMNS: tuple[str, ...] = (REQUEST_ID, USER_ID, TS, ITEM_ID)
#: Required columns whose absence is a warning, not a violation (filled in, see the docstring).
WARN_IF_MISSING: frozenset[str] = frozenset({USER_ID})
OPTIONAL_COLUMNS: tuple[str, ...] = (POSITION, PRICE, PROPENSITY)
LABEL_PREFIX, PRED_PREFIX, FEATURE_PREFIX = "label_", "pred_", "f_"
PREFIXES: tuple[str, ...] = (LABEL_PREFIX, PRED_PREFIX, FEATURE_PREFIX)

#: Objective and feature names: what follows ``label_`` / ``pred_`` / ``f_``.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")

#: Canonical Arrow types written by blendrank (readers accept the wider families checked below).
ID_TYPE = pa.int64()
TS_TYPE = pa.int64()
POSITION_TYPE = pa.int32()
LABEL_TYPE = pa.float32()
PRED_TYPE = pa.float32()
PRICE_TYPE = pa.float64()
PROPENSITY_TYPE = pa.float64()

#: How many offending row indices a violation keeps.
MAX_ROWS = 5

SmallRequests = Literal["error", "drop"]


class Kind(StrEnum):
    """What went wrong; the value is what reports print."""

    MISSING_COLUMN = "missing_column"
    NO_LABEL = "no_label_column"
    BAD_NAME = "bad_column_name"
    PRED_WITHOUT_LABEL = "pred_without_label"
    WRONG_DTYPE = "wrong_dtype"
    NULL = "null"
    NON_FINITE = "nan_or_inf"
    PRED_RANGE = "pred_out_of_range"
    NEGATIVE_LABEL = "negative_label"
    NEGATIVE_PRICE = "negative_price"
    BAD_POSITION = "bad_position"
    BAD_PROPENSITY = "bad_propensity"
    DUPLICATE = "duplicate_item"
    SMALL_REQUEST = "small_request"
    MULTI_USER_REQUEST = "multi_user_request"
    EMPTY = "empty_table"


#: Kinds counted in requests (``count``) whose ``first_rows`` are each request's first row.
REQUEST_KINDS = frozenset({Kind.SMALL_REQUEST, Kind.MULTI_USER_REQUEST})
#: Kinds about the table's columns as a whole (no offending rows to point at).
STRUCTURAL_KINDS = frozenset(
    {Kind.MISSING_COLUMN, Kind.NO_LABEL, Kind.BAD_NAME, Kind.PRED_WITHOUT_LABEL, Kind.EMPTY}
)

#: Pseudo column name for table-level violations.
TABLE = "(table)"


@dataclass(frozen=True)
class Violation:
    """One kind of problem in one column.

    ``count`` is the number of offending rows (requests for :data:`REQUEST_KINDS`; all rows for
    :data:`STRUCTURAL_KINDS`);
    ``first_rows`` holds up to :data:`MAX_ROWS` 0-based row indices into the table as read
    (for a directory of shards: the shards concatenated in sorted file-name order; for a CSV:
    the data row, i.e. file line ``row + 2``).
    """

    file: str
    column: str
    kind: Kind
    count: int
    first_rows: list[int]
    message: str
    fix: str

    def __str__(self) -> str:
        rows = f"; first rows {', '.join(map(str, self.first_rows))}" if self.first_rows else ""
        return (
            f"{self.file}: column {self.column}: {self.kind} ({self.count}{rows}): "
            f"{self.message}. Fix: {self.fix}"
        )


@dataclass(frozen=True)
class Summary:
    """Shape of a (valid) log, after any requested drop of small requests."""

    requests: int
    impressions: int
    users: int
    items: int
    objectives: list[str]
    label_rates: dict[str, float]  # mean of label_<name> (a rate for 0/1 labels)
    candidates_min: int
    candidates_median: float
    candidates_max: int
    ts_min: int | None
    ts_max: int | None
    preds: list[str]  # objectives that have a pred_<name> column
    features: list[str]  # f_<name> column names
    optional: list[str]  # optional contract columns present (position, price, propensity)
    ignored_columns: list[str]  # columns outside the contract (kept, unused)
    dropped_requests: int = 0
    dropped_impressions: int = 0
    #: per objective with both label_ and pred_ columns (labels in [0, 1]); shown rows only
    #: when there is a position column
    calibration: dict[str, Calibration] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidationReport:
    """Result of :func:`validate_table`.

    ``table`` is the input table, minus the small requests when ``small_requests="drop"``
    and plus ``user_id = request_id`` when the log has no user_id (values are never modified).
    ``summary`` is ``None`` when the id columns are too broken to group rows into requests.
    ``warnings`` are one-line messages about valid data that will change results.
    """

    source: str
    violations: list[Violation]
    summary: Summary | None
    table: pa.Table = field(repr=False)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


# --------------------------------------------------------------------------------------------
# column names


def objectives_of(columns: Iterable[str]) -> list[str]:
    """Objective names, in column order, from ``label_<name>`` columns."""
    return [c[len(LABEL_PREFIX) :] for c in columns if c.startswith(LABEL_PREFIX)]


def feature_columns(columns: Iterable[str]) -> list[str]:
    """The ``f_<name>`` columns, in column order."""
    return [c for c in columns if c.startswith(FEATURE_PREFIX)]


def is_contract_column(name: str) -> bool:
    return name in REQUIRED_COLUMNS or name in OPTIONAL_COLUMNS or name.startswith(PREFIXES)


def contract_schema(
    objectives: Sequence[str],
    features: Mapping[str, pa.DataType] | None = None,
    *,
    with_preds: bool = False,
    with_price: bool = False,
    with_propensity: bool = False,
    with_position: bool = True,
    id_type: pa.DataType = ID_TYPE,
) -> pa.Schema:
    """Canonical Arrow schema of a contract log, for writers to build or cast tables to.

    Column order: ids and ts, position, ``label_*``, ``pred_*``, price, propensity, ``f_*``.
    ``features`` maps feature names to types; a name without the ``f_`` prefix gets it.
    Non-nullable contract columns are declared ``nullable=False``.
    """
    fields = [
        pa.field(REQUEST_ID, id_type, nullable=False),
        pa.field(USER_ID, id_type, nullable=False),
        pa.field(TS, TS_TYPE, nullable=False),
        pa.field(ITEM_ID, id_type, nullable=False),
    ]
    if with_position:
        fields.append(pa.field(POSITION, POSITION_TYPE, nullable=True))
    fields += [pa.field(LABEL_PREFIX + o, LABEL_TYPE, nullable=False) for o in objectives]
    if with_preds:
        fields += [pa.field(PRED_PREFIX + o, PRED_TYPE, nullable=False) for o in objectives]
    if with_price:
        fields.append(pa.field(PRICE, PRICE_TYPE, nullable=False))
    if with_propensity:
        fields.append(pa.field(PROPENSITY, PROPENSITY_TYPE, nullable=False))
    for name, dtype in (features or {}).items():
        col = name if name.startswith(FEATURE_PREFIX) else FEATURE_PREFIX + name
        fields.append(pa.field(col, dtype, nullable=True))
    return pa.schema(fields)


# --------------------------------------------------------------------------------------------
# per-column rules

Family = Literal["id", "int", "number", "label", "any"]
_FAMILY_TEXT: dict[Family, str] = {
    "id": "int64 or string",
    "int": "an integer",
    "number": "a float",
    "label": "0/1, bool or a float",
    "any": "any type",
}


@dataclass(frozen=True)
class _Range:
    """A value check on a numeric column: ``bad(col)`` is the boolean mask of offending rows."""

    kind: Kind
    bad: Callable[[pa.ChunkedArray], pa.ChunkedArray]
    message: str
    fix: str


@dataclass(frozen=True)
class _Rule:
    family: Family
    nullable: bool
    range: _Range | None = None


_ID_RULE = _Rule("id", nullable=False)
_RULES: dict[str, _Rule] = {
    REQUEST_ID: _ID_RULE,
    USER_ID: _ID_RULE,
    ITEM_ID: _ID_RULE,
    TS: _Rule("int", nullable=False),
    POSITION: _Rule(
        "int",
        nullable=True,
        range=_Range(
            Kind.BAD_POSITION,
            lambda c: pc.less(c, 1),
            "positions are 1-based; found values < 1",
            "shift 0-based positions by +1; use null for candidates that were not shown",
        ),
    ),
    PRICE: _Rule(
        "number",
        nullable=False,
        range=_Range(
            Kind.NEGATIVE_PRICE,
            lambda c: pc.less(c, 0),
            "price must be >= 0",
            "fix or drop rows with negative prices (refunds are not impressions)",
        ),
    ),
    PROPENSITY: _Rule(
        "number",
        nullable=False,
        range=_Range(
            Kind.BAD_PROPENSITY,
            lambda c: pc.less_equal(c, 0),
            "propensity is the logging policy's probability (or, for continuous actions such as "
            "fusion weights, its density) and must be > 0",
            "log the probability or density the logging policy gave this row; "
            "drop the column if unknown",
        ),
    ),
}
_LABEL_RULE = _Rule(
    "label",
    nullable=False,
    range=_Range(
        Kind.NEGATIVE_LABEL,
        lambda c: pc.less(c, 0),
        "labels must be 0/1 or a non-negative float",
        "labels count or measure feedback; negative values are not allowed",
    ),
)
_PRED_RULE = _Rule(
    "number",
    nullable=False,
    range=_Range(
        Kind.PRED_RANGE,
        lambda c: pc.or_(pc.less(c, 0), pc.greater(c, 1)),
        "predictions must be probabilities in [0, 1]",
        "write sigmoid outputs (not logits); clip to [0, 1]",
    ),
)
_FEATURE_RULE = _Rule("any", nullable=True)

_INT_RE = r"^\s*[+-]?\d+\s*$"
_FLOAT_RE = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$|^\s*[+-]?(inf|infinity|nan)\s*$"


def _rule_for(name: str) -> _Rule:
    if name in _RULES:
        return _RULES[name]
    if name.startswith(LABEL_PREFIX):
        return _LABEL_RULE
    if name.startswith(PRED_PREFIX):
        return _PRED_RULE
    return _FEATURE_RULE


def _is_stringy(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _family_ok(family: Family, t: pa.DataType) -> bool:
    if family == "any":
        return True
    if family == "id":
        return pa.types.is_integer(t) or _is_stringy(t)
    if family == "int":
        return pa.types.is_integer(t)
    numeric = pa.types.is_integer(t) or pa.types.is_floating(t)
    return numeric or (family == "label" and pa.types.is_boolean(t))


# --------------------------------------------------------------------------------------------
# vectorised checks


def _mask_rows(mask: pa.ChunkedArray | pa.Array | np.ndarray) -> tuple[int, list[int]]:
    """(number of true entries, first :data:`MAX_ROWS` indices) of a boolean mask; null = false."""
    if not isinstance(mask, np.ndarray):
        mask = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(mask)
    return int(rows.size), rows[:MAX_ROWS].tolist()


def _codes(col: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Dense int64 codes (in order of first appearance) and the distinct values of a column."""
    enc = pc.dictionary_encode(col.combine_chunks())
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary


def _first_occurrence(codes: np.ndarray) -> np.ndarray:
    """Boolean mask, True where a code is seen for the first time.

    Requires codes assigned in order of first appearance (as :func:`_codes` does): a row is new
    iff its code exceeds every earlier code.
    """
    seen = np.maximum.accumulate(codes)
    new = np.empty(codes.size, dtype=bool)
    if codes.size:
        new[0] = True
        new[1:] = codes[1:] > seen[:-1]
    return new


def _pair_codes(a: np.ndarray, b: np.ndarray, b_card: int) -> np.ndarray:
    key = pa.array(a * max(b_card, 1) + b)
    return _codes(pa.chunked_array([key]))[0]


def _fmt(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


# --------------------------------------------------------------------------------------------
# validation


class _Collector:
    """Accumulates violations for one source."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.violations: list[Violation] = []
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(f"{self.source}: {message}")

    def add(
        self, column: str, kind: Kind, count: int, rows: list[int], message: str, fix: str
    ) -> None:
        self.violations.append(Violation(self.source, column, kind, count, rows, message, fix))

    def add_mask(
        self, column: str, kind: Kind, mask: pa.ChunkedArray | np.ndarray, message: str, fix: str
    ) -> bool:
        """Add a violation if ``mask`` has any true row; returns whether it did."""
        count, rows = _mask_rows(mask)
        if count:
            self.add(column, kind, count, rows, message, fix)
        return bool(count)


def _check_names(table: pa.Table, out: _Collector) -> None:
    names = table.column_names
    for name in REQUIRED_COLUMNS:
        if name not in names and name not in WARN_IF_MISSING:
            out.add(
                name,
                Kind.MISSING_COLUMN,
                table.num_rows,
                [],
                f"required column is missing; columns present: {', '.join(names) or '(none)'}",
                f"add {name}, or map an existing column onto it with --mapping "
                "(see docs/data_contract.md)",
            )
    objectives = objectives_of(names)
    if not objectives:
        out.add(
            f"{LABEL_PREFIX}*",
            Kind.NO_LABEL,
            table.num_rows,
            [],
            "no label_<name> column, so there is no objective",
            "add one label_<name> column per objective (e.g. label_click), "
            "or map one with the `labels:` section of a mapping",
        )
    for name in names:
        prefix = next((p for p in PREFIXES if name.startswith(p)), None)
        if prefix is not None and not NAME_PATTERN.match(name[len(prefix) :]):
            out.add(
                name,
                Kind.BAD_NAME,
                table.num_rows,
                [],
                f"the part after {prefix!r} must be a non-empty name of letters, digits and _",
                f"rename the column, e.g. {prefix}click",
            )
        elif name.startswith(PRED_PREFIX) and name[len(PRED_PREFIX) :] not in objectives:
            out.add(
                name,
                Kind.PRED_WITHOUT_LABEL,
                table.num_rows,
                [],
                f"prediction for objective {name[len(PRED_PREFIX) :]!r}, which has no "
                f"{LABEL_PREFIX}{name[len(PRED_PREFIX) :]} column",
                "add the matching label column or drop the prediction",
            )


def _check_dtype(name: str, col: pa.ChunkedArray, rule: _Rule, out: _Collector) -> bool:
    """Check a column's type family; returns whether the values can be checked further."""
    t = col.type
    if _family_ok(rule.family, t):
        return True
    expected = _FAMILY_TEXT[rule.family]
    whole = len(col)
    if rule.family in ("id", "int") and pa.types.is_floating(t):
        fractional = pc.and_(pc.is_finite(col), pc.not_equal(col, pc.floor(col)))
        count, rows = _mask_rows(fractional)
        if count:
            out.add(
                name,
                Kind.WRONG_DTYPE,
                count,
                rows,
                f"{t} column with fractional values; must be {expected}",
                "export the original integer (or string) values; floats lose ids above 2**53",
            )
        else:
            out.add(
                name,
                Kind.WRONG_DTYPE,
                whole,
                [],
                f"{t} column; must be {expected}",
                "cast it to an integer type when exporting (its values are whole numbers)",
            )
        return False
    if _is_stringy(t) and rule.family != "id":
        pattern = _INT_RE if rule.family == "int" else _FLOAT_RE
        bad = pc.invert(pc.match_substring_regex(col, pattern, ignore_case=True))
        count, rows = _mask_rows(bad)
        example = _fmt(col[rows[0]].as_py()) if rows else "?"
        out.add(
            name,
            Kind.WRONG_DTYPE,
            count or whole,
            rows,
            f"text where {expected} is expected (e.g. {example})",
            _dtype_fix(name, rule),
        )
        return False
    out.add(
        name, Kind.WRONG_DTYPE, whole, [], f"{t} column; must be {expected}", _dtype_fix(name, rule)
    )
    return False


def _dtype_fix(name: str, rule: _Rule) -> str:
    if name == TS:
        return (
            "store int64 milliseconds since the epoch, or read the log with --mapping: a "
            "mapping converts date-time strings and timestamps (`ts_format`, `ts_timezone`) "
            "and seconds (`ts_unit: s`)"
        )
    if rule.family == "id":
        return "store ids as int64 or string"
    return f"store {name} as {_FAMILY_TEXT[rule.family]}; fix or drop the offending rows"


def _check_values(name: str, col: pa.ChunkedArray, rule: _Rule, out: _Collector) -> None:
    if pa.types.is_floating(col.type):
        out.add_mask(
            name,
            Kind.NON_FINITE,
            pc.invert(pc.is_finite(col)),
            "NaN or infinite values",
            "use null for missing feature values"
            if rule is _FEATURE_RULE
            else "recompute or drop these rows; NaN/inf is never a valid value",
        )
    r = rule.range
    if r is not None and not pa.types.is_boolean(col.type):
        out.add_mask(name, r.kind, r.bad(col), r.message, r.fix)


def _check_columns(table: pa.Table, out: _Collector) -> set[str]:
    """Type, null and value checks of every contract column; returns the well-typed columns."""
    usable: set[str] = set()
    for name in table.column_names:
        if not is_contract_column(name):
            continue
        col, rule = table.column(name), _rule_for(name)
        if not rule.nullable:
            out.add_mask(
                name,
                Kind.NULL,
                pc.is_null(col),
                "missing (null) values in a non-nullable column",
                "fill or drop these rows upstream; nulls are only allowed in position and f_*",
            )
        if _check_dtype(name, col, rule, out):
            _check_values(name, col, rule, out)
            if col.null_count == 0 or rule.nullable:
                usable.add(name)
    return usable


@dataclass(frozen=True)
class _Groups:
    """Request structure of a table: dense per-row codes and per-request facts."""

    req: np.ndarray  # (rows,) request code, in order of first appearance
    user: np.ndarray  # (rows,) user code
    item: np.ndarray  # (rows,) item code
    req_values: pa.Array  # (requests,) request_id of each code
    user_values: pa.Array  # (users,)
    item_values: pa.Array  # (items,)
    req_first_row: np.ndarray  # (requests,) first row of each request
    sizes: np.ndarray  # (requests,) candidates per request


def _group(table: pa.Table) -> _Groups:
    req, req_values = _codes(table.column(REQUEST_ID))
    user, user_values = _codes(table.column(USER_ID))
    item, item_values = _codes(table.column(ITEM_ID))
    return _Groups(
        req,
        user,
        item,
        req_values,
        user_values,
        item_values,
        req_first_row=np.flatnonzero(_first_occurrence(req)),
        sizes=np.bincount(req, minlength=len(req_values)),
    )


def _check_requests(
    g: _Groups, out: _Collector, min_candidates: int, small: SmallRequests
) -> np.ndarray | None:
    """Duplicate, one-user and small-request checks; returns the (rows,) mask to drop, if any."""
    dup = ~_first_occurrence(_pair_codes(g.req, g.item, len(g.item_values)))
    count, rows = _mask_rows(dup)
    if count:
        r = rows[0]
        out.add(
            f"{REQUEST_ID}, {ITEM_ID}",
            Kind.DUPLICATE,
            count,
            rows,
            "the same item appears more than once in a request (e.g. request_id="
            f"{_fmt(g.req_values[g.req[r]].as_py())}, "
            f"item_id={_fmt(g.item_values[g.item[r]].as_py())})",
            "deduplicate (request_id, item_id), keeping one row per candidate",
        )

    other_user = g.user != g.user[g.req_first_row][g.req]  # differs from the request's first row
    multi = np.unique(g.req[other_user])
    if multi.size:
        out.add(
            REQUEST_ID,
            Kind.MULTI_USER_REQUEST,
            int(multi.size),
            g.req_first_row[multi[:MAX_ROWS]].tolist(),
            f"{multi.size} request(s) span several user_id values (e.g. request_id="
            f"{_fmt(g.req_values[int(multi[0])].as_py())})",
            "a request is one user's ranking; make request_id unique per user "
            "(e.g. combine it with user_id)",
        )

    is_small = g.sizes < min_candidates
    small_reqs = np.flatnonzero(is_small)
    if small_reqs.size == 0:
        return None
    if small == "drop":
        return is_small[g.req]
    first = int(small_reqs[0])
    out.add(
        REQUEST_ID,
        Kind.SMALL_REQUEST,
        int(small_reqs.size),
        g.req_first_row[small_reqs[:MAX_ROWS]].tolist(),
        f"{small_reqs.size} request(s) have fewer than {min_candidates} candidates (e.g. "
        f"request_id={_fmt(g.req_values[first].as_py())} has {int(g.sizes[first])}); "
        "fusion needs a choice within each request",
        "pass --drop-small-requests to drop (and count) them, or lower --min-candidates",
    )
    return None


_SESSION_NOTE = (
    "session methods (integrated_rl) will treat every request as its own session, and "
    "per-user features or metrics see one request per user"
)


def _check_users(g: _Groups, out: _Collector) -> None:
    """Warn when every user has exactly one request (e.g. user_id mapped onto request_id)."""
    n_requests = len(g.req_values)
    users_of_requests = np.unique(g.user[g.req_first_row]).size
    if n_requests > 1 and users_of_requests == n_requests:
        out.warn(
            f"every user_id has exactly one request ({n_requests:,} requests, "
            f"{users_of_requests:,} users): {_SESSION_NOTE}; map user_id to a real user column "
            "if the log has one"
        )


def _calibrations(table: pa.Table, usable: set[str]) -> dict[str, Calibration]:
    """Calibration of every objective with usable label_ and pred_ columns and labels in
    [0, 1], over the rows shown at position 1 when there is a position column (lower positions
    are examined less, so their feedback rates sit below a position-free prediction by design),
    or over every shown row when fewer than 100 were shown first."""
    shown = None
    if POSITION in table.column_names and POSITION in usable:
        shown = pc.is_valid(table.column(POSITION))
        first = pc.fill_null(pc.equal(table.column(POSITION), 1), False)
        if (pc.sum(first).as_py() or 0) >= 100:
            shown = first
    out: dict[str, Calibration] = {}
    for o in objectives_of(table.column_names):
        label_col, pred_col = LABEL_PREFIX + o, PRED_PREFIX + o
        if not {label_col, pred_col} <= usable:
            continue
        pair = table.select([label_col, pred_col])
        if shown is not None:
            pair = pair.filter(shown)
        label = pair.column(0).cast(pa.float64()).to_numpy()
        pred = pair.column(1).cast(pa.float64()).to_numpy()
        # Only on valid values: NaN or out-of-range predictions are violations already.
        valid = (np.isfinite(pred).all() and np.isfinite(label).all()
                 and pred.min(initial=0.0) >= 0.0 and pred.max(initial=0.0) <= 1.0)
        if label.size and valid and label.min() >= 0.0 and label.max() <= 1.0:
            out[o] = calibration(pred, label)
    return out


def _check_calibration(cal: dict[str, Calibration], out: _Collector) -> None:
    lo, hi = RATIO_RANGE
    for o, c in cal.items():
        if c.far_off:
            out.warn(
                f"{PRED_PREFIX}{o}: mean prediction {c.mean_pred:.4g} is {c.ratio:.3g}x the "
                f"label rate {c.rate:.4g} (outside [{lo:g}, {hi:g}]; ECE {c.ece:.3g}); fusion "
                f"weights tuned on these predictions will be off: recalibrate them or "
                "re-predict with `blendrank mtl predict`"
            )


def _summarize(
    table: pa.Table, groups: _Groups, usable: set[str], dropped: tuple[int, int]
) -> Summary:
    names = table.column_names
    objectives = objectives_of(names)
    rates = {}
    for o in objectives:
        if LABEL_PREFIX + o in usable:
            col = table.column(LABEL_PREFIX + o)
            mean = pc.mean(col.cast(pa.float64()) if pa.types.is_boolean(col.type) else col)
            rates[o] = float(mean.as_py()) if mean.as_py() is not None else float("nan")
    sizes = groups.sizes[groups.sizes > 0]
    ts_min = ts_max = None
    if TS in usable and table.num_rows:
        mm = pc.min_max(table.column(TS))
        ts_min, ts_max = mm["min"].as_py(), mm["max"].as_py()
    return Summary(
        requests=int(sizes.size),
        impressions=table.num_rows,
        users=len(groups.user_values),
        items=len(groups.item_values),
        objectives=objectives,
        label_rates=rates,
        candidates_min=int(sizes.min()) if sizes.size else 0,
        candidates_median=float(np.median(sizes)) if sizes.size else 0.0,
        candidates_max=int(sizes.max()) if sizes.size else 0,
        ts_min=ts_min,
        ts_max=ts_max,
        preds=[o for o in objectives if PRED_PREFIX + o in names],
        features=feature_columns(names),
        optional=[c for c in OPTIONAL_COLUMNS if c in names],
        ignored_columns=[c for c in names if not is_contract_column(c)],
        dropped_requests=dropped[0],
        dropped_impressions=dropped[1],
        calibration=_calibrations(table, usable),
    )


def validate_table(
    table: pa.Table,
    source: str,
    *,
    min_candidates: int = 2,
    small_requests: SmallRequests = "error",
) -> ValidationReport:
    """Check ``table`` against the contract and collect every violation.

    Args:
        table: one row per impression, in contract column names (apply a mapping first).
        source: the file or directory the table came from; named in every violation.
        min_candidates: requests with fewer rows than this are "small".
        small_requests: ``"error"`` reports small requests as a violation; ``"drop"`` removes
            their rows from ``report.table`` and counts them in ``report.summary``.

    Returns:
        A :class:`ValidationReport`; ``report.ok`` is true iff there is no violation.
        Request-level checks (duplicates, one user per request, small requests) run only when
        request_id, user_id and item_id are well typed and null-free, so one broken id column
        yields one clear violation rather than a cascade.
    """
    if small_requests not in ("error", "drop"):
        raise ValueError(f"small_requests must be 'error' or 'drop', got {small_requests!r}")
    out = _Collector(source)
    _check_names(table, out)
    filled_users = USER_ID not in table.column_names and REQUEST_ID in table.column_names
    if filled_users:
        out.warn(f"no user_id column: every request is taken as its own user; {_SESSION_NOTE}")
        table = table.append_column(USER_ID, table.column(REQUEST_ID))
    if table.num_rows == 0:
        out.add(
            TABLE,
            Kind.EMPTY,
            0,
            [],
            "the table has no rows",
            "check the export (filters, date range) and the path",
        )
        return ValidationReport(source, out.violations, None, table, out.warnings)

    usable = _check_columns(table, out)
    if not {REQUEST_ID, USER_ID, ITEM_ID} <= usable:
        return ValidationReport(source, out.violations, None, table, out.warnings)

    groups = _group(table)
    drop = _check_requests(groups, out, min_candidates, small_requests)
    dropped = (0, 0)
    if drop is not None:
        dropped = (int((groups.sizes < min_candidates).sum()), int(drop.sum()))
        table = table.filter(pa.array(~drop))
        groups = _group(table)
        if table.num_rows == 0:
            out.add(
                TABLE,
                Kind.EMPTY,
                0,
                [],
                f"every request has fewer than {min_candidates} candidates; none is left "
                "after dropping small requests",
                "lower --min-candidates or check how rows are grouped into requests",
            )
    summary = _summarize(table, groups, usable, dropped)
    if not filled_users:  # a filled-in user_id was warned about already
        _check_users(groups, out)
    _check_calibration(summary.calibration, out)
    return ValidationReport(source, out.violations, summary, table, out.warnings)


def format_violations(report: ValidationReport) -> str:
    """Plain-text rendering of a report's violations, one per line (for exceptions and logs)."""
    head = f"{report.source}: {len(report.violations)} data contract violation(s)"
    return "\n".join([head, *(f"  - {v}" for v in report.violations)])
