"""Streaming data for the MTL model: splits, label scans, encoding and a shuffle buffer.

Nothing here loads a whole split: Parquet is read record batch by record batch
(:class:`blendrank.data.stream.LogSource`), filtered to the split's ``ts`` range and to shown
rows (``position`` not null), encoded by the Feature Center, and shuffled inside a bounded buffer.

Two data layouts are accepted (:func:`resolve_data`):

* a directory with ``train.parquet``, ``valid.parquet`` and ``test.parquet`` (files or directories
  of shards), e.g. ``blendrank data kuairand``'s output; a ``features.yaml`` beside them is the
  feature schema;
* any other Parquet file or directory of shards (e.g. ``blendrank world generate``'s ``logs/``),
  split by time: the request timestamps' quantiles at 70% / 85% (``MTLConfig.split``) cut it into
  train ``ts < c1``, validation ``c1 <= ts < c2`` and test ``ts >= c2``. ``ts`` is the request
  time (contract), so a request never straddles two splits.

A CSV log, or any log read with a column mapping, is loaded whole instead, mapped and validated
like every other command's input (:func:`blendrank.data.splits.load_splits`: split files, the
mapping's ``test_where`` filter, or the same time split), and served from memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import yaml
from pydantic import ValidationError
from torch import Tensor

from blendrank.config import format_validation_error, load_yaml, read_text_utf8
from blendrank.data.columns import label_values
from blendrank.data.io import CSV_SUFFIXES, MappingLike, iter_record_batches, parquet_files
from blendrank.data.splits import load_splits, split_files
from blendrank.data.stream import POSITION, TS, LogSource
from blendrank.errors import ConfigError, DataError
from blendrank.features.center import FeatureCenter, FeatureSchema, FeatureSpec, merge_moments
from blendrank.mtl.models import TaskLayout

LABEL_PREFIX = "label_"
REQUEST_ID = "request_id"
FEATURES_FILE = "features.yaml"
SPLIT_NAMES = ("train", "valid", "test")

__all__ = [
    "DataSplits",
    "EncodedBatch",
    "Encoder",
    "LabelScan",
    "resolve_data",
    "schema_for",
    "shuffled_minibatches",
]


# -------------------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class DataSplits:
    train: LogSource
    valid: LogSource
    test: LogSource
    features_file: Path | None
    how: str  # "files" or "time"
    cutoffs: tuple[int, int] | None = None


def _split_path(root: Path, name: str) -> Path | None:
    for candidate in (root / f"{name}.parquet", root / name):
        if candidate.exists():
            return candidate
    return None


def _is_csv(path: Path) -> bool:
    return path.name.lower().endswith(CSV_SUFFIXES)


def loads_whole(path: str | Path, mapping: MappingLike | None) -> bool:
    """Whether ``path`` is read through the whole-log reader (a mapping, or CSV) rather than
    streamed from Parquet."""
    path = Path(path)
    if mapping is not None:
        return True
    if path.is_file():
        return _is_csv(path)
    files = split_files(path)
    return files is not None and any(_is_csv(p) for p in files.values())


def _loaded_splits(
    path: Path, mapping: MappingLike | None, fractions: Sequence[float]
) -> DataSplits:
    """Sources over the mapped, validated tables of :func:`load_splits` (training keeps
    single-candidate requests: they still carry labels)."""
    tables = load_splits(
        path, mapping, valid_frac=fractions[1], test_frac=fractions[2], min_candidates=1
    )
    features = (path if path.is_dir() else path.parent) / FEATURES_FILE
    return DataSplits(
        *(LogSource.of(name, tables[name]) for name in SPLIT_NAMES),
        features_file=features if features.is_file() else None,
        how="files" if split_files(path) is not None else "loaded",
    )


def resolve_data(
    path: str | Path,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    mapping: MappingLike | None = None,
) -> DataSplits:
    """Train/valid/test sources for ``path`` read with ``mapping`` (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if loads_whole(path, mapping):
        return _loaded_splits(path, mapping, fractions)
    if path.is_dir():
        found = {name: _split_path(path, name) for name in SPLIT_NAMES}
        if any(found.values()):
            missing = [f"{n}.parquet" for n, p in found.items() if p is None]
            if missing:
                raise DataError(
                    f"{path}: has {', '.join(f'{n}.parquet' for n, p in found.items() if p)} but "
                    f"not {', '.join(missing)}; give all three splits, or a Parquet dataset "
                    "without split names to split by time"
                )
            features = path / FEATURES_FILE
            train, valid, test = (LogSource.of(n, p) for n, p in found.items() if p is not None)
            return DataSplits(
                train,
                valid,
                test,
                features_file=features if features.is_file() else None,
                how="files",
            )
    files = tuple(parquet_files(path))
    c1, c2 = time_cutoffs(files, fractions)
    features = (path if path.is_dir() else path.parent) / FEATURES_FILE
    return DataSplits(
        LogSource("train", files, ts_range=(None, c1)),
        LogSource("valid", files, ts_range=(c1, c2)),
        LogSource("test", files, ts_range=(c2, None)),
        features_file=features if features.is_file() else None,
        how="time",
        cutoffs=(c1, c2),
    )


def time_cutoffs(files: Sequence[Path], fractions: Sequence[float]) -> tuple[int, int]:
    """``ts`` cut points at the train and train+valid fractions of the requests.

    One request's timestamp is counted per run of equal ``request_id`` values (rows of a request
    are contiguous in contract logs); only those two columns are read.
    """
    stamps: list[np.ndarray] = []
    for path in files:
        names = _schema_names(path)
        missing = [c for c in (REQUEST_ID, TS) if c not in names]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {missing}: a Parquet dataset is split by request "
                "time, which needs request_id and ts"
            )
        prev: Any = None
        for batch in iter_record_batches(path, [REQUEST_ID, TS], 262_144):
            req = batch.column(REQUEST_ID)
            ts = batch.column(TS)
            if not pa.types.is_integer(ts.type):
                raise DataError(
                    f"{path}: column 'ts' is {ts.type}; it must be an integer (ms since the epoch): "
                    "pass --mapping to convert date-time strings or timestamps, see "
                    "docs/data_contract.md"
                )
            if ts.null_count:
                raise DataError(f"{path}: column 'ts' has nulls; every row needs a request time")
            req_np = np.asarray(req.to_numpy(zero_copy_only=False))
            starts = np.ones(len(req_np), dtype=bool)
            starts[1:] = req_np[1:] != req_np[:-1]
            if len(req_np) and prev is not None and req_np[0] == prev:
                starts[0] = False
            prev = req_np[-1] if len(req_np) else prev
            stamps.append(np.asarray(ts.to_numpy(zero_copy_only=False), dtype=np.int64)[starts])
    ts_all = np.sort(np.concatenate(stamps)) if stamps else np.zeros(0, dtype=np.int64)
    n = len(ts_all)
    if n < 3:
        raise DataError(f"{files[0]}: {n} request(s): too few to split into train/valid/test")
    a = float(fractions[0])
    b = a + float(fractions[1])
    c1 = int(ts_all[min(n - 1, math.floor(a * n))])
    c2 = int(ts_all[min(n - 1, math.floor(b * n))])
    if not (ts_all[0] < c1 < c2 <= ts_all[-1]):
        raise DataError(
            f"{files[0]}: cannot split {n:,} requests by time into {list(fractions)}: "
            f"too few distinct ts values (min {ts_all[0]}, cut points {c1}, {c2}, max {ts_all[-1]})"
        )
    return c1, c2


def _schema_names(path: Path) -> list[str]:
    try:
        return list(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a Parquet file or truncated ({exc}); re-export it") from None


# -------------------------------------------------------------------------------------- schema


def load_schema(path: str | Path) -> FeatureSchema:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: feature schema file not found")
    try:
        data = load_yaml(read_text_utf8(path, "feature schema"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    try:
        return FeatureSchema.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None


def _id_role(name: str) -> str:
    if "user" in name:
        return "user"
    if "item" in name:
        return "item"
    return "context"


def schema_for(
    first: pa.RecordBatch,
    *,
    features_file: Path | None,
    id_features: Sequence[str] = (),
    max_int_categories: int = 100,
    max_vocab: int | None = 100_000,
    min_count: int = 1,
) -> FeatureSchema:
    """The declared schema (``features_file``) or one inferred from ``first``, plus ``id_features``
    as categorical features."""
    table = pa.Table.from_batches([first])
    if features_file is not None:
        schema = load_schema(features_file)
    else:
        schema = FeatureSchema.infer(table, max_int_categories=max_int_categories)
        overrides = {
            s.name: {"max_vocab": max_vocab, "min_count": min_count}
            for s in schema.features
            if s.is_categorical
        }
        if overrides:
            schema = FeatureSchema.infer(
                table, overrides=overrides, max_int_categories=max_int_categories
            )
    specs = [
        s.model_copy(update={"min_count": max(s.min_count, min_count)}) if s.is_categorical else s
        for s in schema.features
    ]
    for name in id_features:
        if name in schema.names:
            continue
        if name not in table.column_names:
            raise DataError(
                f"id feature {name!r} is not a column of the training data "
                f"(columns: {', '.join(table.column_names)})"
            )
        specs.append(
            FeatureSpec(
                name=name,
                kind="categorical",
                role=_id_role(name),  # type: ignore[arg-type]
                max_vocab=max_vocab,
                min_count=min_count,
            )
        )
    if not specs:
        raise DataError(
            "no features: the training data has no `f_*` column (and no id_features); the MTL "
            "model needs at least one feature"
        )
    return FeatureSchema(features=specs)


# ---------------------------------------------------------------------------------- label scan


@dataclass
class _LabelAcc:
    n: int = 0
    total: float = 0.0
    binary: bool = True
    negative: bool = False
    log_n: int = 0
    log_mean: float = 0.0
    log_m2: float = 0.0

    def update(self, y: np.ndarray) -> None:
        y = y[~np.isnan(y)]
        if not len(y):
            return
        if not np.isfinite(y).all():
            raise DataError("label values must be finite")
        self.n += len(y)
        self.total += float(y.sum())
        if self.binary and not np.isin(y, (0.0, 1.0)).all():
            self.binary = False
        if (y < 0).any():
            self.negative = True
            return
        self.log_n, self.log_mean, self.log_m2 = merge_moments(self.log_n, self.log_mean, self.log_m2, np.log1p(y))


@dataclass
class LabelScan:
    """Streaming facts about the training labels and positions (one pass, with the center fit)."""

    columns: list[str]
    rows: int = 0
    max_position: int = 0
    has_position: bool = False
    acc: dict[str, _LabelAcc] = field(default_factory=dict)

    def update(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        for column in self.columns:
            values = label_values(batch, column)
            # NaN is a missing label (masked); -1 or inf are errors in the data, not targets.
            bad = values[np.isinf(values) | (values < 0)]
            if len(bad):
                raise DataError(
                    f"{column}: value {float(bad[0]):g}; labels are 0/1 or a non-negative finite amount "
                    "(data contract). Fix or drop these rows; `blendrank data validate` lists them"
                )
            self.acc.setdefault(column, _LabelAcc()).update(values)
        if POSITION in batch.schema.names:
            pos = batch.column(POSITION)
            if pos.null_count < len(pos):
                self.has_position = True
                self.max_position = max(self.max_position, int(pc.max(pos).as_py()))

    def objective(self, name: str) -> _LabelAcc:
        return self.acc.get(LABEL_PREFIX + name, _LabelAcc())

    def is_binary(self, name: str) -> bool:
        return self.objective(name).binary

    def rate(self, name: str) -> float:
        a = self.objective(name)
        return a.total / a.n if a.n else math.nan

    def log_moments(self, name: str) -> tuple[float, float]:
        a = self.objective(name)
        if a.negative:
            raise DataError(
                f"label_{name}: negative values; a regression target is modelled as log1p(y) "
                "and must be >= 0"
            )
        if not a.log_n:
            return 0.0, 1.0
        return a.log_mean, max(math.sqrt(a.log_m2 / a.log_n), 1e-6)


# ---------------------------------------------------------------------------------- encoding


@dataclass
class EncodedBatch:
    """Model-ready tensors for ``n`` rows."""

    categorical: Tensor  # int64 [N, n_cat]
    numeric: Tensor  # float32 [N, n_num]
    labels: Tensor  # float32 [N, T] (0 where missing; regression: standardised log1p)
    mask: Tensor  # bool [N, T]
    position: Tensor | None  # int64 [N], 0 = unknown

    def __len__(self) -> int:
        return int(self.categorical.shape[0])

    def take(self, idx: Tensor) -> EncodedBatch:
        return EncodedBatch(
            self.categorical[idx],
            self.numeric[idx],
            self.labels[idx],
            self.mask[idx],
            None if self.position is None else self.position[idx],
        )

    def to(self, device: torch.device) -> EncodedBatch:
        if device.type == "cpu":
            return self
        return EncodedBatch(
            self.categorical.to(device, non_blocking=True),
            self.numeric.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.mask.to(device, non_blocking=True),
            None if self.position is None else self.position.to(device, non_blocking=True),
        )

    @staticmethod
    def concat(parts: Sequence[EncodedBatch]) -> EncodedBatch:
        if len(parts) == 1:
            return parts[0]
        pos = [p.position for p in parts if p.position is not None]
        return EncodedBatch(
            torch.cat([p.categorical for p in parts]),
            torch.cat([p.numeric for p in parts]),
            torch.cat([p.labels for p in parts]),
            torch.cat([p.mask for p in parts]),
            torch.cat(pos) if len(pos) == len(parts) else None,
        )


@dataclass(frozen=True)
class Encoder:
    """Table -> :class:`EncodedBatch` with the fitted center, the task layout and the
    regression targets' log1p moments."""

    center: FeatureCenter
    layout: TaskLayout
    target_moments: Mapping[str, tuple[float, float]]
    use_position: bool

    @property
    def feature_columns(self) -> list[str]:
        return list(self.center.schema.names)

    def columns(self, labels: bool = True) -> list[str]:
        cols = self.feature_columns
        if labels:
            cols = cols + [LABEL_PREFIX + n for n in self.layout.names]
            if self.use_position:
                cols.append(POSITION)
        return list(dict.fromkeys(cols))

    def features(self, table: pa.Table | pa.RecordBatch) -> tuple[Tensor, Tensor]:
        fb = self.center.transform(table)
        return torch.from_numpy(fb.categorical), torch.from_numpy(fb.numeric)

    def labels(self, table: pa.Table | pa.RecordBatch) -> tuple[Tensor, Tensor]:
        n = table.num_rows
        y = np.zeros((n, len(self.layout)), dtype=np.float32)
        mask = np.zeros((n, len(self.layout)), dtype=bool)
        for k, (name, kind) in enumerate(zip(self.layout.names, self.layout.kinds)):
            column = LABEL_PREFIX + name
            if column not in table.schema.names:
                raise DataError(f"column {column!r} (objective {name!r}) is missing")
            values = label_values(table, column)
            m = ~np.isnan(values)
            if kind == "regression":
                if (values[m] < 0).any():
                    raise DataError(f"column {column!r}: regression labels must be >= 0")
                mean, std = self.target_moments[name]
                values = (np.log1p(np.where(m, values, 0.0)) - mean) / std
            elif not np.isin(values[m], (0.0, 1.0)).all():
                bad = values[m][~np.isin(values[m], (0.0, 1.0))][0]
                raise DataError(
                    f"column {column!r}: objective {name!r} was trained as binary but has "
                    f"value {bad!r}"
                )
            y[:, k] = np.where(m, values, 0.0)
            mask[:, k] = m
        return torch.from_numpy(y), torch.from_numpy(mask)

    def position(self, table: pa.Table | pa.RecordBatch) -> Tensor | None:
        if not self.use_position or POSITION not in table.schema.names:
            return None
        col = pc.fill_null(table.column(POSITION).cast(pa.int64()), 0)
        # >= 0: negative codes are reserved for positions hidden in training (position_dropout).
        return torch.from_numpy(
            np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64).copy()
        ).clamp_min_(0)

    def encode(self, table: pa.Table | pa.RecordBatch) -> EncodedBatch:
        cat, num = self.features(table)
        y, mask = self.labels(table)
        return EncodedBatch(cat, num, y, mask, self.position(table))


# ---------------------------------------------------------------------------------- shuffling


def shuffled_minibatches(
    batches: Iterator[pa.RecordBatch],
    encoder: Encoder,
    *,
    batch_size: int,
    buffer_rows: int,
    generator: torch.Generator,
) -> Iterator[EncodedBatch]:
    """Mini-batches from a bounded shuffle buffer.

    Record batches are collected until ``buffer_rows`` rows, encoded together, permuted and cut
    into ``batch_size`` mini-batches; the remainder (< ``batch_size`` rows) is carried into the
    next buffer, and the very last one is yielded as a smaller batch.
    """
    pending: list[pa.RecordBatch] = []
    rows = 0
    carry: EncodedBatch | None = None

    def drain(final: bool) -> Iterator[EncodedBatch]:
        nonlocal pending, rows, carry
        parts = [] if carry is None else [carry]
        if pending:
            parts.append(encoder.encode(pa.Table.from_batches(pending)))
        pending, rows, carry = [], 0, None
        if not parts:
            return
        buf = EncodedBatch.concat(parts)
        order = torch.randperm(len(buf), generator=generator)
        n_full = len(buf) // batch_size * batch_size
        for start in range(0, n_full, batch_size):
            yield buf.take(order[start : start + batch_size])
        if n_full < len(buf):
            rest = buf.take(order[n_full:])
            if final:
                yield rest
            else:
                carry = rest

    for batch in batches:
        pending.append(batch)
        rows += batch.num_rows
        if rows >= buffer_rows:
            yield from drain(final=False)
    yield from drain(final=True)
