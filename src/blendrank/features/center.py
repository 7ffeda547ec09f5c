"""The Feature Center: a declared feature schema and one fitted fit/transform object.

``FeatureCenter.fit`` learns categorical vocabularies and numeric moments from the *training split
only* (a table or a stream of record batches), ``transform`` turns a table into model-ready numpy
arrays, ``transform_rows`` does the same for serving-time plain dicts with bit-identical output,
and ``save``/``load`` keep the fitted state in a versioned, checksummed JSON file.
See ``docs/features.md`` for the rules (OOV, missing values, roles, file format).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, ValidationError, model_validator

from blendrank.config import BaseConfig, format_validation_error
from blendrank.errors import ConfigError, DataError

Role: TypeAlias = Literal["user", "context", "item"]
Kind: TypeAlias = Literal["categorical", "numeric"]
NumericTransform: TypeAlias = Literal["standard", "log1p_standard", "none"]
CatDtype: TypeAlias = Literal["string", "int", "bool"]

ROLES: tuple[Role, ...] = ("user", "context", "item")
ROLE_PREFIXES: dict[str, Role] = {"f_user_": "user", "f_ctx_": "context", "f_item_": "item"}
DEFAULT_ROLE: Role = "item"
OOV_INDEX = 0
STD_FLOOR = 1e-6
FILE_FORMAT = "blendrank.feature_center"
FILE_VERSION = 1

_ARROW_CAT_TYPE: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int64(),
    "bool": pa.bool_(),
}


# --------------------------------------------------------------------------------------- schema


class FeatureSpec(BaseConfig):
    """One declared feature column."""

    name: str = Field(
        description="Column name in the table / request dict, e.g. `f_user_age` or `price`."
    )
    kind: Kind = Field(
        description="`categorical` (vocabulary -> int index) or `numeric` (normalised float)."
    )
    role: Role = Field(
        default=DEFAULT_ROLE,
        description="Whose feature it is: `user`, `context` (request) or `item` (candidate). "
        "The fusion policy reads user/context features; the MTL model reads all.",
    )
    transform: NumericTransform = Field(
        default="standard",
        description="Numeric only: `standard` (z-score), `log1p_standard` (signed log1p, then "
        "z-score) or `none` (raw value; missing -> train mean). Ignored for categoricals.",
    )
    clip: float | None = Field(
        default=5.0,
        gt=0,
        description="Numeric only: clip z-scores to [-clip, clip]; null disables. Not applied "
        "with transform `none`.",
    )
    max_vocab: int | None = Field(
        default=100_000,
        ge=1,
        description="Categorical only: keep at most this many values, the most frequent in the "
        "training data (ties broken by value); null keeps all. The rest map to OOV (index 0).",
    )
    min_count: int = Field(
        default=1,
        ge=1,
        description="Categorical only: values seen fewer times than this in training map to OOV.",
    )

    @property
    def is_categorical(self) -> bool:
        return self.kind == "categorical"


class FeatureSchema(BaseConfig):
    """The ordered list of declared features; the order fixes the output column order."""

    features: list[FeatureSpec] = Field(
        default_factory=list, description="Declared features, in output column order."
    )

    @model_validator(mode="before")
    @classmethod
    def _accept_plain_list(cls, data: Any) -> Any:
        return {"features": data} if isinstance(data, list) else data

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        seen: set[str] = set()
        for spec in self.features:
            if spec.name in seen:
                raise ValueError(f"feature {spec.name!r} is declared twice")
            seen.add(spec.name)
        return self

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.features]

    def get(self, name: str) -> FeatureSpec:
        for spec in self.features:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def select(self, roles: Iterable[Role] | None = None) -> list[FeatureSpec]:
        """Specs whose role is in ``roles`` (all when ``None``), in schema order."""
        if roles is None:
            return list(self.features)
        wanted = set(roles)
        unknown = wanted - set(ROLES)
        if unknown:
            raise ConfigError(
                f"unknown feature role(s) {sorted(unknown)}; expected a subset of {list(ROLES)}"
            )
        return [s for s in self.features if s.role in wanted]

    @classmethod
    def infer(
        cls,
        table: pa.Table | pa.RecordBatch,
        *,
        include: Sequence[str] = (),
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        max_int_categories: int = 100,
    ) -> FeatureSchema:
        """Infer a schema from the table's ``f_*`` columns (plus ``include``, e.g. ``["price"]``).

        Kind: strings, bools and integers with at most ``max_int_categories`` distinct values are
        categorical; floats and integers with more distinct values are numeric. Role: by prefix
        (``f_user_`` -> user, ``f_ctx_`` -> context, ``f_item_`` -> item, anything else -> item).
        ``overrides`` maps a column name to spec fields that replace the inferred ones, e.g.
        ``{"f_user_fans": {"transform": "log1p_standard"}, "f_age": {"role": "user"}}``.
        """
        overrides = dict(overrides or {})
        columns = [c for c in table.column_names if c.startswith("f_")]
        for extra in include:
            if extra not in table.column_names:
                raise DataError(f"column {extra!r} (asked for by include=) is not in the table")
            if extra not in columns:
                columns.append(extra)
        unknown = set(overrides) - set(columns)
        if unknown:
            raise ConfigError(f"feature override(s) for {sorted(unknown)}: no such feature column")
        specs: list[FeatureSpec] = []
        for name in columns:
            fields: dict[str, Any] = {"name": name, "role": _role_from_prefix(name)}
            if "kind" not in overrides.get(name, {}):
                fields["kind"] = _infer_kind(name, table.column(name), max_int_categories)
            fields.update(overrides.get(name, {}))
            try:
                specs.append(FeatureSpec.model_validate(fields))
            except ValidationError as exc:
                raise ConfigError(format_validation_error(exc, f"feature {name!r}")) from None
        return cls(features=specs)


def _role_from_prefix(name: str) -> Role:
    for prefix, role in ROLE_PREFIXES.items():
        if name.startswith(prefix):
            return role
    return DEFAULT_ROLE


def _infer_kind(name: str, column: pa.Array | pa.ChunkedArray, max_int_categories: int) -> Kind:
    t = column.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_boolean(t):
        return "categorical"
    if pa.types.is_floating(t):
        return "numeric"
    if pa.types.is_integer(t):
        n_distinct = pc.count_distinct(column, mode="only_valid").as_py()
        return "categorical" if n_distinct <= max_int_categories else "numeric"
    raise DataError(
        f"column {name!r}: cannot infer a feature kind from Arrow type {column.type}; "
        "declare it in the schema or cast it to string / integer / float"
    )


# ---------------------------------------------------------------------------------- fitted state


@dataclass(frozen=True)
class CategoricalState:
    """Fitted vocabulary of one categorical feature; ``vocab[i]`` has index ``i + 1``."""

    dtype: CatDtype
    vocab: tuple[Any, ...]
    count: int  # non-missing training values
    missing: int  # null training values
    index: dict[Any, int] = field(init=False, repr=False, compare=False)
    value_set: pa.Array = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {v: i + 1 for i, v in enumerate(self.vocab)})
        object.__setattr__(
            self, "value_set", pa.array(list(self.vocab), type=_ARROW_CAT_TYPE[self.dtype])
        )

    @property
    def cardinality(self) -> int:
        """Embedding-table size: the vocabulary plus the OOV/missing slot 0."""
        return len(self.vocab) + 1

    def lookup(self, value: Any) -> int:
        return self.index.get(value, OOV_INDEX)


@dataclass(frozen=True)
class NumericState:
    """Fitted moments of one numeric feature (after its log1p, if any)."""

    mean: float
    std: float  # floored at STD_FLOOR
    count: int  # finite training values
    missing: int  # null / NaN / inf training values


@dataclass(frozen=True)
class FeatureBatch:
    """Model-ready features: ``categorical`` int64 [N, n_cat], ``numeric`` float32 [N, n_num]."""

    categorical: np.ndarray
    numeric: np.ndarray
    categorical_names: tuple[str, ...]
    numeric_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.categorical.shape[0])


# ------------------------------------------------------------------------------------ accumulators


class _CategoricalAcc:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype: CatDtype | None = None
        self.counts: Counter[Any] = Counter()
        self.missing = 0

    def update(self, column: pa.Array) -> None:
        dtype = _categorical_dtype(self.name, column.type)
        if dtype is None:  # all-null column: nothing but missing values
            self.missing += len(column)
            return
        if self.dtype is not None and dtype != self.dtype:
            raise DataError(
                f"column {self.name!r}: type changed between batches ({self.dtype} -> {dtype})"
            )
        self.dtype = dtype
        self.missing += column.null_count
        counted = pc.value_counts(_cast(self.name, column, _ARROW_CAT_TYPE[dtype]))
        for value, n in zip(
            counted.field("values").to_pylist(), counted.field("counts").to_pylist()
        ):
            if value is not None:
                self.counts[value] += n

    def finish(self, spec: FeatureSpec) -> CategoricalState:
        kept = [(v, n) for v, n in self.counts.items() if n >= spec.min_count]
        kept.sort(key=lambda vn: (-vn[1], vn[0]))
        if spec.max_vocab is not None:
            kept = kept[: spec.max_vocab]
        return CategoricalState(
            dtype=self.dtype or "string",
            vocab=tuple(v for v, _ in kept),
            count=sum(self.counts.values()),
            missing=self.missing,
        )


def merge_moments(n: int, mean: float, m2: float, x: np.ndarray) -> tuple[int, float, float]:
    """Count, mean and sum of squared deviations after adding the values ``x`` (``[n_b]``) to
    those of ``n`` earlier ones: the batch's moments merged with Chan et al.'s parallel Welford."""
    nb = len(x)
    if nb == 0:
        return n, mean, m2
    mean_b = float(x.mean())
    m2_b = float(np.square(x - mean_b).sum())
    total = n + nb
    delta = mean_b - mean
    return total, mean + delta * nb / total, m2 + m2_b + delta * delta * n * nb / total


class _NumericAcc:
    """Streaming mean / variance of a numeric feature (:func:`merge_moments`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.missing = 0

    def update(self, column: pa.Array, spec: FeatureSpec) -> None:
        x = _pre_transform(_numeric_to_numpy(self.name, column), spec)
        finite = x[np.isfinite(x)]
        self.missing += len(x) - len(finite)
        self.n, self.mean, self.m2 = merge_moments(self.n, self.mean, self.m2, finite)

    def finish(self) -> NumericState:
        std = math.sqrt(self.m2 / self.n) if self.n else 1.0
        return NumericState(
            mean=self.mean, std=max(std, STD_FLOOR), count=self.n, missing=self.missing
        )


# --------------------------------------------------------------------------------- type handling


def _categorical_dtype(name: str, t: pa.DataType) -> CatDtype | None:
    """The categorical family of an Arrow type; ``None`` for the all-null type."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_null(t):
        return None
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_boolean(t):
        return "bool"
    raise DataError(
        f"column {name!r}: categorical features must be string, integer or bool, got {t}; "
        "declare it numeric or cast it"
    )


def _numeric_to_numpy(name: str, column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """float64 values with NaN for nulls; rejects non-numeric Arrow types."""
    t = column.type
    if pa.types.is_null(t):
        return np.full(len(column), np.nan)
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise DataError(f"column {name!r}: numeric feature must be integer or float, got {t}")
    # unsafe: an int64 beyond 2**53 rounds to the nearest float64, exactly as float(int) does
    filled = pc.fill_null(_cast(name, column, pa.float64(), safe=False), math.nan)
    return np.asarray(filled.to_numpy(), dtype=np.float64)


def _cast(name: str, column: pa.Array | pa.ChunkedArray, to: pa.DataType, safe: bool = True) -> Any:
    try:
        return column.cast(to, safe=safe)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(
            f"column {name!r}: cannot read {column.type} values as {to} ({exc})"
        ) from None


def _pre_transform(x: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    if spec.transform == "log1p_standard":
        out: np.ndarray = np.sign(x) * np.log1p(np.abs(x))
        return out
    return x


def _encode_numeric(x: np.ndarray, spec: FeatureSpec, state: NumericState) -> np.ndarray:
    """The single numeric encoder used by both the table and the rows path."""
    with np.errstate(invalid="ignore", over="ignore"):
        x = _pre_transform(x, spec)
        missing = ~np.isfinite(x)
        if spec.transform == "none":
            out = np.where(missing, state.mean, x)
        else:
            z = (x - state.mean) / state.std
            if spec.clip is not None:
                z = np.clip(z, -spec.clip, spec.clip)
            out = np.where(missing, 0.0, z)
        return out.astype(np.float32)


def _row_numeric(name: str, value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise DataError(f"feature {name!r}: numeric feature got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise DataError(
            f"feature {name!r}: numeric value {value!r} does not fit a float64"
        ) from None


def _row_categorical(name: str, dtype: CatDtype, value: Any) -> Any:
    if value is None:
        return None
    if dtype == "string" and isinstance(value, str):
        return value
    if (
        dtype == "int"
        and isinstance(value, (int, np.integer))
        and not isinstance(value, (bool, np.bool_))
    ):
        return int(value)
    if dtype == "bool" and isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise DataError(
        f"feature {name!r}: categorical {dtype} feature got {type(value).__name__} {value!r}"
    )


# ------------------------------------------------------------------------------------ the center


class FeatureCenter:
    """Fitted feature transforms. Build with :meth:`fit` or :meth:`load`."""

    def __init__(
        self,
        schema: FeatureSchema,
        categorical: Mapping[str, CategoricalState],
        numeric: Mapping[str, NumericState],
        n_fit_rows: int,
    ) -> None:
        self.schema = schema
        self._cat = dict(categorical)
        self._num = dict(numeric)
        self.n_fit_rows = n_fit_rows

    # ---- fitting

    @classmethod
    def fit(
        cls,
        data: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch | pa.Table],
        schema: FeatureSchema,
    ) -> FeatureCenter:
        """Fit on the TRAINING split only, batch by batch (data is never concatenated)."""
        cat_acc = {s.name: _CategoricalAcc(s.name) for s in schema.features if s.is_categorical}
        num_acc = {s.name: _NumericAcc(s.name) for s in schema.features if not s.is_categorical}
        n_rows = 0
        for batch in _iter_batches(data):
            _require_columns(batch.schema.names, schema.names)
            n_rows += batch.num_rows
            for spec in schema.features:
                column = batch.column(spec.name)
                if spec.is_categorical:
                    cat_acc[spec.name].update(column)
                else:
                    num_acc[spec.name].update(column, spec)
        if n_rows == 0:
            raise DataError("cannot fit the feature center on empty data (0 rows)")
        categorical = {
            s.name: cat_acc[s.name].finish(s) for s in schema.features if s.is_categorical
        }
        numeric = {name: acc.finish() for name, acc in num_acc.items()}
        return cls(schema, categorical, numeric, n_rows)

    # ---- introspection

    @property
    def cardinalities(self) -> dict[str, int]:
        """Per categorical feature (schema order): vocabulary size including the OOV slot."""
        return {
            s.name: self._cat[s.name].cardinality for s in self.schema.features if s.is_categorical
        }

    def categorical_names(self, roles: Iterable[Role] | None = None) -> list[str]:
        return [s.name for s in self.schema.select(roles) if s.is_categorical]

    def numeric_names(self, roles: Iterable[Role] | None = None) -> list[str]:
        return [s.name for s in self.schema.select(roles) if not s.is_categorical]

    def categorical_state(self, name: str) -> CategoricalState:
        return self._cat[name]

    def numeric_state(self, name: str) -> NumericState:
        return self._num[name]

    # ---- transforming

    def transform(
        self, data: pa.Table | pa.RecordBatch, roles: Iterable[Role] | None = None
    ) -> FeatureBatch:
        """Encode a table / record batch (features of ``roles`` only; all when ``None``)."""
        specs = self.schema.select(roles)
        _require_columns(data.schema.names, [s.name for s in specs])
        n = data.num_rows
        cats: list[np.ndarray] = []
        nums: list[np.ndarray] = []
        for spec in specs:
            column = data.column(spec.name)
            if spec.is_categorical:
                cats.append(self._encode_categorical_column(spec.name, column))
            else:
                nums.append(
                    _encode_numeric(
                        _numeric_to_numpy(spec.name, column), spec, self._num[spec.name]
                    )
                )
        return self._batch(specs, cats, nums, n)

    def transform_rows(
        self, rows: Sequence[Mapping[str, Any]], roles: Iterable[Role] | None = None
    ) -> FeatureBatch:
        """Encode plain dicts (serving). Bit-identical to :meth:`transform` on the same values.

        Every selected feature must be a key of every row; use ``None`` for a missing value.
        """
        specs, cat_specs, num_specs, encode = self._row_plan(roles)
        for i, row in enumerate(rows):
            absent = [s.name for s in specs if s.name not in row]
            if absent:
                raise DataError(
                    f"row {i}: missing feature(s) {absent} (pass None for a missing value)"
                )
        # One [N, n_cat] and one [N, n_num] conversion (serving's per-request cost), the same
        # look-ups and arithmetic as the per-column path.
        categorical = np.asarray(
            [
                [
                    state.lookup(_row_categorical(name, state.dtype, row[name]))
                    for name, state in cat_specs
                ]
                for row in rows
            ],
            dtype=np.int64,
        ).reshape(len(rows), len(cat_specs))
        x = np.asarray(
            [[_row_numeric(s.name, row[s.name]) for s in num_specs] for row in rows],
            dtype=np.float64,
        ).reshape(len(rows), len(num_specs))
        return FeatureBatch(
            categorical=categorical,
            numeric=encode(x),
            categorical_names=tuple(name for name, _ in cat_specs),
            numeric_names=tuple(s.name for s in num_specs),
        )

    def _row_plan(self, roles: Iterable[Role] | None) -> tuple[
        list[FeatureSpec],
        list[tuple[str, Any]],
        tuple[FeatureSpec, ...],
        Callable[[np.ndarray], np.ndarray],
    ]:
        """What :meth:`transform_rows` needs for ``roles``, gathered once per selection:
        the specs, ``(name, state)`` of the categorical ones, the numeric ones and their encoder."""
        key = None if roles is None else tuple(roles)
        cache = self.__dict__.setdefault("_row_plans", {})
        if key not in cache:
            specs = self.schema.select(key)
            num_specs = tuple(s for s in specs if not s.is_categorical)
            cats = [(s.name, self._cat[s.name]) for s in specs if s.is_categorical]
            cache[key] = (specs, cats, num_specs, self._numeric_encoder(num_specs))
        return cache[key]

    def _numeric_encoder(self, specs: tuple[FeatureSpec, ...]) -> Callable[[np.ndarray], np.ndarray]:
        """``[N, F] float64 -> [N, F] float32``: :func:`_encode_numeric` of every column at once
        (element-wise the same operations, so bit-identical), with the per-feature constants
        gathered once per selection."""
        key = tuple(s.name for s in specs)
        cache = self.__dict__.setdefault("_numeric_encoders", {})
        if key in cache:
            return cache[key]
        states = [self._num[s.name] for s in specs]
        mean = np.array([st.mean for st in states], dtype=np.float64)
        std = np.array([st.std for st in states], dtype=np.float64)
        log1p = np.array([s.transform == "log1p_standard" for s in specs])
        raw = np.array([s.transform == "none" for s in specs])
        lo = np.array([-s.clip if s.clip is not None and s.transform != "none" else -np.inf for s in specs])
        hi = -lo

        any_log1p = bool(log1p.any())

        def encode(x: np.ndarray) -> np.ndarray:
            with np.errstate(invalid="ignore", over="ignore"):
                if any_log1p:
                    x = np.where(log1p, np.sign(x) * np.log1p(np.abs(x)), x)
                missing = ~np.isfinite(x)
                # minimum(maximum(.)) is np.clip's arithmetic (NaN propagates) without its wrapper
                z = np.minimum(np.maximum((x - mean) / std, lo), hi)
                out = np.where(raw, np.where(missing, mean, x), np.where(missing, 0.0, z))
            return out.astype(np.float32)

        cache[key] = encode
        return encode

    def _encode_categorical_column(
        self, name: str, column: pa.Array | pa.ChunkedArray
    ) -> np.ndarray:
        state = self._cat[name]
        dtype = _categorical_dtype(name, column.type)
        if dtype is None:
            return np.zeros(len(column), dtype=np.int64)
        if dtype != state.dtype:
            raise DataError(
                f"column {name!r}: categorical feature was fitted on {state.dtype} values, got {column.type}"
            )
        values = _cast(name, column, _ARROW_CAT_TYPE[dtype])
        idx = pc.index_in(values, value_set=state.value_set)
        idx = pc.fill_null(pc.add(idx.cast(pa.int64()), 1), OOV_INDEX)
        return np.asarray(idx.to_numpy(), dtype=np.int64)

    @staticmethod
    def _batch(
        specs: list[FeatureSpec], cats: list[np.ndarray], nums: list[np.ndarray], n: int
    ) -> FeatureBatch:
        categorical = np.stack(cats, axis=1) if cats else np.zeros((n, 0), dtype=np.int64)
        numeric = np.stack(nums, axis=1) if nums else np.zeros((n, 0), dtype=np.float32)
        return FeatureBatch(
            categorical=categorical,
            numeric=numeric,
            categorical_names=tuple(s.name for s in specs if s.is_categorical),
            numeric_names=tuple(s.name for s in specs if not s.is_categorical),
        )

    # ---- persistence

    def to_dict(self) -> dict[str, Any]:
        """The JSON content (without the version/checksum envelope)."""
        return {
            "schema": self.schema.model_dump(mode="json"),
            "n_fit_rows": self.n_fit_rows,
            "categorical": {
                name: {
                    "dtype": s.dtype,
                    "vocab": list(s.vocab),
                    "count": s.count,
                    "missing": s.missing,
                }
                for name, s in self._cat.items()
            },
            "numeric": {
                name: {"mean": s.mean, "std": s.std, "count": s.count, "missing": s.missing}
                for name, s in self._num.items()
            },
        }

    def save(self, path: str | Path) -> Path:
        """Write a versioned, checksummed JSON file (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        content = self.to_dict()
        doc = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "checksum": _checksum(content),
            "content": content,
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, allow_nan=False))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureCenter:
        """Read a file written by :meth:`save`; DataError on a wrong version or a bad checksum."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: feature center file not found")
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(
                f"{path}: feature center file is not valid JSON ({exc}); it is corrupt"
            ) from None
        if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
            raise DataError(
                f"{path}: not a blendrank feature center file (expected format {FILE_FORMAT!r})"
            )
        if doc.get("version") != FILE_VERSION:
            raise DataError(
                f"{path}: feature center file version {doc.get('version')!r} is not supported "
                f"(this blendrank reads version {FILE_VERSION}); refit the feature center"
            )
        content = doc.get("content")
        if not isinstance(content, dict) or doc.get("checksum") != _checksum(content):
            raise DataError(
                f"{path}: feature center checksum mismatch; the file is corrupt or was edited"
            )
        try:
            return cls.from_dict(content)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: malformed feature center content ({exc})") from None

    @classmethod
    def from_dict(cls, content: Mapping[str, Any]) -> FeatureCenter:
        try:
            schema = FeatureSchema.model_validate(content["schema"])
        except ValidationError as exc:
            raise DataError(format_validation_error(exc, "feature center schema")) from None
        categorical = {
            s.name: CategoricalState(
                dtype=content["categorical"][s.name]["dtype"],
                vocab=tuple(content["categorical"][s.name]["vocab"]),
                count=int(content["categorical"][s.name]["count"]),
                missing=int(content["categorical"][s.name]["missing"]),
            )
            for s in schema.features
            if s.is_categorical
        }
        numeric = {
            s.name: NumericState(
                **{k: content["numeric"][s.name][k] for k in ("mean", "std", "count", "missing")}
            )
            for s in schema.features
            if not s.is_categorical
        }
        for name, c in categorical.items():
            if c.dtype not in _ARROW_CAT_TYPE:
                raise ValueError(f"feature {name!r}: unknown categorical dtype {c.dtype!r}")
        return cls(schema, categorical, numeric, int(content["n_fit_rows"]))


def _checksum(content: Any) -> str:
    canonical = json.dumps(
        content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _iter_batches(
    data: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch | pa.Table],
) -> Iterator[pa.RecordBatch]:
    if isinstance(data, pa.RecordBatch):
        yield data
        return
    if isinstance(data, pa.Table):
        yield from data.to_batches()
        return
    for item in data:
        if isinstance(item, pa.Table):
            yield from item.to_batches()
        elif isinstance(item, pa.RecordBatch):
            yield item
        else:
            raise DataError(
                f"feature center input must be Arrow tables or record batches, got {type(item).__name__}"
            )


def _require_columns(present: Sequence[str], needed: Sequence[str]) -> None:
    have = set(present)
    absent = [c for c in needed if c not in have]
    if absent:
        raise DataError(
            f"feature column(s) {absent} missing from the input (present: {sorted(have)})"
        )
