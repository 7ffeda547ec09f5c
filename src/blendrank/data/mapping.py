"""YAML column mapping: maps a user's column names onto the data contract.

Example (every key is optional; unmapped contract columns are expected under their own name)::

    columns: {request_id: session, user_id: uid, ts: time_ms, item_id: vid, position: rank}
    labels: {click: is_click, order: is_buy}   # -> label_click, label_order
    preds: {click: p_ctr}                       # -> pred_click
    features: {age: user_age}                   # -> f_age
    price: cost
    propensity: prop
    ts_unit: ms                                 # ms | s  (s: multiplied by 1000)
    ts_format: "%Y-%m-%d %H:%M:%S"              # strptime format of date-time strings
    ts_timezone: Europe/Paris                   # IANA zone of wall-clock times (default UTC)
    test_where: random_bool == 1                # requests in the test split (splits.py)

Applying a mapping renames columns (a source column may feed several contract columns); source
columns that were mapped are not kept under their old name, other columns pass through
unchanged. The only value changes are to ``ts``: numbers follow ``ts_unit``; date-time strings,
Arrow timestamps and dates become int64 ms since the epoch (:mod:`blendrank.data.timestamps`:
``ts_format`` or inferred ISO-8601, wall-clock times in ``ts_timezone``).
"""

from __future__ import annotations

import zoneinfo
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from blendrank.config import read_yaml
from blendrank.data.contract import (
    FEATURE_PREFIX,
    LABEL_PREFIX,
    NAME_PATTERN,
    PRED_PREFIX,
    PRICE,
    PROPENSITY,
    TS,
)
from blendrank.data.filters import parse_filter
from blendrank.data.timestamps import to_epoch_ms
from blendrank.errors import BlendrankError, ConfigError, DataError


class CoreColumns(BaseModel):
    """Source column names of the fixed contract columns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str | None = None
    user_id: str | None = None
    ts: str | None = None
    item_id: str | None = None
    position: str | None = None


class ColumnMapping(BaseModel):
    """A column mapping file; see the module docstring for the format."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: CoreColumns = CoreColumns()
    labels: dict[str, str] = {}
    preds: dict[str, str] = {}
    features: dict[str, str] = {}
    price: str | None = None
    propensity: str | None = None
    ts_unit: Literal["ms", "s"] = "ms"
    ts_format: str | None = None
    ts_timezone: str = "UTC"
    test_where: str | None = None

    @field_validator("ts_format")
    @classmethod
    def _ts_format(cls, value: str | None) -> str | None:
        if value is not None and "%" not in value:
            raise ValueError(
                f"{value!r} has no % code; give a strptime format such as '%Y-%m-%d %H:%M:%S'"
            )
        return value

    @field_validator("ts_timezone")
    @classmethod
    def _ts_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as UTC, Europe/Paris or "
                "America/New_York"
            ) from None
        return value

    @field_validator("test_where")
    @classmethod
    def _test_where(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_filter(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("labels", "preds", "features")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not NAME_PATTERN.match(name):
                raise ValueError(f"name {name!r} must be letters, digits and _ (e.g. click)")
        return value

    def targets(self) -> dict[str, tuple[str, str]]:
        """``{contract column: (source column, mapping key)}``.

        E.g. ``{"label_click": ("is_click", "labels.click")}``.
        """
        out: dict[str, tuple[str, str]] = {}
        for name, source in self.columns.model_dump().items():
            if source is not None:
                out[name] = (source, f"columns.{name}")
        for section, prefix in (
            ("labels", LABEL_PREFIX),
            ("preds", PRED_PREFIX),
            ("features", FEATURE_PREFIX),
        ):
            for name, source in getattr(self, section).items():
                out[prefix + name] = (source, f"{section}.{name}")
        for name in (PRICE, PROPENSITY):
            source = getattr(self, name)
            if source is not None:
                out[name] = (source, name)
        return out


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = CoreColumns if loc[:1] == ("columns",) else ColumnMapping
    return list(model.model_fields)


def _format_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid column mapping"]
    for e in exc.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(root)"
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(e["loc"][:-1]))
            lines.append(f"  - key {key}: unknown key (allowed here: {allowed})")
        else:
            lines.append(f"  - key {key}: {e['msg']}")
    return "\n".join(lines)


def parse_mapping(data: dict[str, Any], source: str = "<mapping>") -> ColumnMapping:
    """Validate a mapping dict; errors name ``source`` and the offending key."""
    try:
        return ColumnMapping.model_validate(data)
    except ValidationError as exc:
        raise DataError(_format_error(exc, source)) from None


def load_mapping(path: str | Path) -> ColumnMapping:
    """Read a mapping YAML file; any problem is a :class:`DataError` naming the file and key."""
    try:
        data = read_yaml(path)
    except BlendrankError as exc:
        raise DataError(f"column mapping: {exc}") from None
    return parse_mapping(data, str(path))


def _seconds_to_ms(col: pa.ChunkedArray, where: str) -> pa.ChunkedArray:
    """Whole or fractional seconds -> int64 ms (rounded). Other types pass through unchanged,
    for validation to report."""
    if pa.types.is_integer(col.type):
        try:
            return pc.multiply_checked(col.cast(pa.int64()), 1000)
        except pa.ArrowInvalid:  # overflow: beyond int64 milliseconds (year 292 million)
            big = pc.max(pc.abs(col.cast(pa.int64()))).as_py()
            raise DataError(f"{where}: key ts_unit: s, but column ts has a value ({big}) that "
                            "overflows int64 milliseconds; check that ts is in seconds (use "
                            "ts_unit: ms for milliseconds)") from None
    if pa.types.is_floating(col.type):
        ms = pc.round(pc.multiply(col.cast(pa.float64()), 1000.0))
        if pc.all(pc.is_finite(ms)).as_py() is not False:
            return ms.cast(pa.int64())
        return ms
    return col


def apply_mapping(
    table: pa.Table,
    mapping: ColumnMapping,
    *,
    source: str = "<table>",
    mapping_source: str = "<mapping>",
) -> pa.Table:
    """Rename ``table``'s columns onto the contract.

    Output columns: the mapped contract columns (in mapping order), then every column of
    ``table`` that no mapping key used as a source. Raises :class:`DataError` naming the mapping
    key when a source column is absent from ``table`` (listing the available ones) or when a
    mapped target collides with an unmapped column of the same name.
    """
    present = table.column_names
    targets = mapping.targets()
    missing = [(key, src) for _, (src, key) in targets.items() if src not in present]
    if missing:
        problems = "; ".join(f"key {key}: column {src!r} not found" for key, src in missing)
        raise DataError(
            f"{mapping_source}: {problems} in {source}; available columns: {', '.join(present)}"
        )
    used = {src for src, _ in targets.values()}
    passthrough = [c for c in present if c not in used]
    clashes = [(t, key) for t, (src, key) in targets.items() if t in passthrough]
    if clashes:
        problems = "; ".join(
            f"key {key} maps {targets[t][0]!r} onto {t}, but {source} already has a column {t}"
            for t, key in clashes
        )
        raise DataError(f"{mapping_source}: {problems}; remove the key or drop the column")
    names = list(targets) + passthrough
    cols = [table.column(src) for src, _ in targets.values()] + [
        table.column(c) for c in passthrough
    ]
    out = pa.Table.from_arrays(cols, names=names)
    if TS in out.column_names:
        ts = out.column(TS)
        if mapping.ts_unit == "s":
            ts = _seconds_to_ms(ts, mapping_source)
        where = f"{source}: column {targets.get(TS, (TS, ''))[0]!r} (ts)"
        ts = to_epoch_ms(ts, fmt=mapping.ts_format, timezone=mapping.ts_timezone, where=where)
        out = out.set_column(out.column_names.index(TS), TS, ts)
    return out
