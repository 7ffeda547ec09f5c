"""Per-task logistic regression: the simple baseline the MTL model must beat.

It is also the predictor ``bench --data`` uses when a log has no ``pred_*`` columns.

Model. For every objective ``k`` an independent logistic regression on the Feature Center's
encoding of the ``f_*`` columns::

    logit_k(x) = b_k + sum_j E_j[x_j, k] + sum_m W[k, m] * z_m(x)

with ``E_j`` a learned per-value weight of categorical feature ``j`` (vocabulary index, OOV = 0)
and ``z_m`` the standardised numerics. All tasks live in one module so one forward gives
``[N, T]`` logits, but no parameter is shared across tasks: column ``k`` of every table belongs to
task ``k`` alone, so the tasks are exactly independent fits (the loss is the mean over tasks of
each task's mean BCE plus its own L2 term).

Labels. Only *binary* ``label_<name>`` columns (non-null values all 0 or 1; bool, int or float)
are modelled. Non-binary labels such as ``label_play_time_ms`` are regression targets: they are
skipped when ``objectives`` is left to ``None`` and rejected (``DataError``) when named explicitly.
Null labels are masked out of that task's loss.

Rows. If the table has a ``position`` column, only shown rows (``position`` not null) are used to
fit the Feature Center and to train (candidates that were never shown have no observed feedback);
``predict`` scores every row.

Training. Adam, mini-batches over a seeded permutation per epoch, weights initialised at zero and
each bias at the logit of its task's training base rate (so the fit uses no global RNG state).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from blendrank.config import BaseConfig
from blendrank.data.columns import label_values, put_column
from blendrank.errors import DataError
from blendrank.features.center import FeatureBatch, FeatureCenter, FeatureSchema
from blendrank.jsonio import read_json
from blendrank.mtl.model_dir import CENTER_FILE, CONFIG_FILE, read_meta, save_model_dir

LABEL_PREFIX = "label_"
PRED_PREFIX = "pred_"
POSITION_COLUMN = "position"
FILE_FORMAT = "blendrank.logistic"
FILE_VERSION = 1
WEIGHTS_FILE = "logistic.pt"
_PREDICT_BATCH = 65_536
_BASE_RATE_CLIP = 1e-4

__all__ = [
    "LogisticConfig",
    "LogisticPredictor",
    "PerTaskLogistic",
    "binary_objectives",
    "fit_logistic",
]


# ------------------------------------------------------------------------------------- config


class LogisticConfig(BaseConfig):
    """Hyper-parameters of the per-task logistic-regression baseline."""

    objectives: list[str] | None = Field(
        default=None,
        description="Objectives to model, e.g. [click, like] (a `label_` prefix is accepted and "
        "dropped). Null: every binary `label_*` column of the training table; non-binary labels "
        "(regression targets such as play_time_ms) are skipped.",
    )
    epochs: int = Field(default=2, ge=1, description="Passes over the training rows.")
    batch_size: int = Field(default=4096, ge=1, description="Rows per Adam step.")
    lr: float = Field(default=0.05, gt=0, description="Adam learning rate.")
    l2: float = Field(
        default=1e-6,
        ge=0,
        description="L2 penalty (l2/2 * ||w||^2 per task, added to that task's mean BCE) on the "
        "categorical and numeric weights; biases are not penalised.",
    )
    embedding_dim: Literal[1] = Field(
        default=1,
        description="Weights per categorical value and task. Fixed at 1: a true per-category "
        "logistic weight (wider embeddings would make this a factorisation model, not a baseline).",
    )
    seed: int = Field(default=0, description="Seed of the per-epoch row shuffle.")
    max_vocab: int | None = Field(
        default=100_000,
        ge=1,
        description="Keep at most this many values per categorical feature (most frequent in "
        "training); the rest share the OOV weight. Null keeps all.",
    )
    max_int_categories: int = Field(
        default=100,
        ge=1,
        description="Integer `f_*` columns with at most this many distinct training values are "
        "categorical, others numeric (FeatureSchema.infer).",
    )

    @field_validator("objectives")
    @classmethod
    def _strip_prefix(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [v.removeprefix(LABEL_PREFIX) for v in value]
        if not names:
            raise ValueError("objectives must name at least one objective (or be null for all)")
        if any(not n for n in names):
            raise ValueError("objective names must not be empty")
        if len(set(names)) != len(names):
            raise ValueError(f"objectives {names} contain duplicates")
        return names


# -------------------------------------------------------------------------------------- model


class PerTaskLogistic(nn.Module):
    """``T`` independent logistic regressions vectorised in one module: ``forward -> [N, T]``.

    Categorical features share one weight table ``[sum of cardinalities, T]`` (summed lookups) with
    per-feature offsets (so feature ``j`` value ``v`` owns row ``offset_j + v``), numerics a
    ``Linear(n_numeric, T)`` without bias, plus a bias vector ``[T]``. Column ``k`` of each
    parameter belongs to task ``k`` only.
    """

    offsets: Tensor

    def __init__(self, cardinalities: Sequence[int], n_numeric: int, n_tasks: int) -> None:
        super().__init__()
        if n_tasks < 1:
            raise ValueError("n_tasks must be >= 1")
        if any(c < 1 for c in cardinalities):
            raise ValueError(f"cardinalities must be >= 1, got {list(cardinalities)}")
        self.cardinalities = tuple(int(c) for c in cardinalities)
        self.n_numeric = int(n_numeric)
        self.n_tasks = int(n_tasks)
        offsets = np.concatenate([[0], np.cumsum(self.cardinalities)[:-1]]).astype(np.int64)
        self.register_buffer("offsets", torch.as_tensor(offsets[: len(self.cardinalities)]))
        self.bias = nn.Parameter(torch.zeros(self.n_tasks))
        self.categorical: nn.Embedding | None = None
        if self.cardinalities:
            self.categorical = nn.Embedding(sum(self.cardinalities), self.n_tasks)
            nn.init.zeros_(self.categorical.weight)
        self.numeric: nn.Linear | None = None
        if self.n_numeric:
            self.numeric = nn.Linear(self.n_numeric, self.n_tasks, bias=False)
            nn.init.zeros_(self.numeric.weight)

    def forward(self, categorical: Tensor, numeric: Tensor) -> Tensor:
        """``categorical`` int64 ``[N, n_cat]``, ``numeric`` float32 ``[N, n_num]`` -> logits."""
        logits = self.bias.expand(categorical.shape[0], self.n_tasks)
        if self.categorical is not None:
            logits = logits + _SumLookup.apply(self.categorical.weight, categorical + self.offsets)
        if self.numeric is not None:
            logits = logits + self.numeric(numeric)
        return logits

    def penalty(self) -> Tensor:
        """Mean over tasks of each task's ``||w_k||^2 / 2`` (biases excluded)."""
        total = torch.zeros((), device=self.bias.device)
        for module in (self.categorical, self.numeric):
            if module is not None:
                total = total + module.weight.square().sum()
        return 0.5 * total / self.n_tasks

    def loss(
        self,
        categorical: Tensor,
        numeric: Tensor,
        labels: Tensor,
        mask: Tensor,
        l2: float = 0.0,
    ) -> Tensor:
        """Mean over tasks of (masked mean BCE of the task + ``l2``-weighted penalty).

        ``labels`` float ``[N, T]`` in {0, 1}; ``mask`` bool ``[N, T]`` (False: label missing).
        A task with no labelled row in the batch contributes only its penalty.
        """
        logits = self(categorical, numeric)
        bce = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        weights = mask.to(bce.dtype)
        per_task = (bce * weights).sum(0) / weights.sum(0).clamp_min(1.0)
        out = per_task.mean()
        if l2:
            out = out + l2 * self.penalty()
        return out


class _SumLookup(torch.autograd.Function):
    """``weight[index].sum(1)`` with a one-``bincount`` backward (dense gradient).

    Same values and gradient as ``nn.EmbeddingBag(mode="sum")``, but several times faster on CPU
    for the few-column tables used here (``EmbeddingBag``'s backward sorts the indices).
    """

    @staticmethod
    def forward(ctx: Any, weight: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.n_rows = weight.shape[0]
        return weight[index].sum(1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        n, f = index.shape
        t = grad.shape[1]
        flat = (index.unsqueeze(-1) * t + torch.arange(t, device=index.device)).reshape(-1)
        values = grad.unsqueeze(1).expand(n, f, t).reshape(-1)
        summed = torch.bincount(flat, weights=values, minlength=ctx.n_rows * t)
        return summed.view(ctx.n_rows, t).to(grad.dtype), None


# ------------------------------------------------------------------------------------- labels


def _is_binary(values: np.ndarray) -> bool:
    seen = values[~np.isnan(values)]
    return bool(np.isin(seen, (0.0, 1.0)).all())


def binary_objectives(table: pa.Table) -> list[str]:
    """Objectives whose ``label_<name>`` column is binary (non-null values all 0 or 1)."""
    out: list[str] = []
    for name in table.column_names:
        if not name.startswith(LABEL_PREFIX) or len(name) == len(LABEL_PREFIX):
            continue
        t = table.column(name).type
        if not (pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t)):
            continue
        if _is_binary(label_values(table, name)):
            out.append(name[len(LABEL_PREFIX) :])
    return out


def _resolve_objectives(table: pa.Table, config: LogisticConfig) -> list[str]:
    labels = [c for c in table.column_names if c.startswith(LABEL_PREFIX)]
    if config.objectives is None:
        objectives = binary_objectives(table)
        if not objectives:
            raise DataError(
                "no binary label column to fit the logistic baseline on: expected at least one "
                f"`label_<name>` column with 0/1 values; label columns present: {labels or 'none'}"
                " (non-binary labels such as label_play_time_ms are regression targets and are "
                "not modelled by the logistic baseline)"
            )
        return objectives
    for name in config.objectives:
        column = LABEL_PREFIX + name
        if column not in table.column_names:
            raise DataError(
                f"objective {name!r}: column {column!r} is not in the training table "
                f"(label columns present: {labels or 'none'})"
            )
        values = label_values(table, column)
        if not _is_binary(values):
            bad = values[~np.isnan(values) & ~np.isin(values, (0.0, 1.0))]
            raise DataError(
                f"objective {name!r}: column {column!r} is not binary (e.g. value {bad[0]!r}); "
                "the logistic baseline models 0/1 labels only"
            )
    return list(config.objectives)


def _label_matrix(table: pa.Table, objectives: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` float32 ``[N, T]`` (0 where missing) and ``mask`` bool ``[N, T]``."""
    cols: list[np.ndarray] = []
    for name in objectives:
        column = LABEL_PREFIX + name
        if column not in table.column_names:
            raise DataError(f"column {column!r} (objective {name!r}) is missing from the table")
        values = label_values(table, column)
        if not _is_binary(values):
            raise DataError(f"column {column!r}: labels must be 0/1 for the logistic baseline")
        cols.append(values)
    y = np.stack(cols, axis=1) if cols else np.zeros((table.num_rows, 0))
    mask = ~np.isnan(y)
    return np.where(mask, y, 0.0).astype(np.float32), mask


def _shown_rows(table: pa.Table) -> pa.Table:
    """Rows with a non-null ``position`` (all rows when there is no position column)."""
    if POSITION_COLUMN not in table.column_names:
        return table
    position = table.column(POSITION_COLUMN)
    if position.null_count == 0:
        return table
    return table.filter(pc.is_valid(position))


# ---------------------------------------------------------------------------------- predictor


@dataclass
class LogisticPredictor:
    """A fitted :class:`PerTaskLogistic` with its Feature Center: ``predict`` / ``save`` / ``load``."""

    model: PerTaskLogistic
    center: FeatureCenter
    objectives: tuple[str, ...]
    config: LogisticConfig
    history: list[dict[str, Any]] = field(default_factory=list)

    def logits(self, table: pa.Table | pa.RecordBatch) -> np.ndarray:
        """Raw logits ``[N, T]`` (float32), columns in ``objectives`` order."""
        batch = self.center.transform(table)
        return _forward(self.model, batch)

    def predict(self, table: pa.Table | pa.RecordBatch) -> dict[str, np.ndarray]:
        """``{objective: float32 probabilities [N]}`` for every row (shown or not)."""
        logits = self.logits(table)
        probs = (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
        return {name: np.ascontiguousarray(probs[:, k]) for k, name in enumerate(self.objectives)}

    def add_predictions(self, table: pa.Table) -> pa.Table:
        """``table`` with a float32 ``pred_<objective>`` column per objective (replaced in place
        if already present, appended otherwise)."""
        for name, values in self.predict(table).items():
            table = put_column(table, PRED_PREFIX + name, values)
        return table

    # ---- interpretation

    def numeric_coef(self, objective: str) -> dict[str, float]:
        """Weight of each standardised numeric feature in ``objective``'s logit."""
        k = self._task(objective)
        names = self.center.numeric_names()
        if self.model.numeric is None:
            return {}
        w = self.model.numeric.weight.detach()[k].cpu().numpy()
        return {n: float(v) for n, v in zip(names, w)}

    def categorical_coef(self, objective: str, feature: str) -> np.ndarray:
        """Per-value weights of ``feature`` in ``objective``'s logit, by vocabulary index (0 = OOV)."""
        k = self._task(objective)
        names = self.center.categorical_names()
        if feature not in names or self.model.categorical is None:
            raise KeyError(f"{feature!r} is not a categorical feature (have {names})")
        j = names.index(feature)
        start = int(self.model.offsets[j])
        stop = start + self.model.cardinalities[j]
        return self.model.categorical.weight.detach()[start:stop, k].cpu().numpy().copy()

    def bias(self, objective: str) -> float:
        return float(self.model.bias.detach()[self._task(objective)])

    def _task(self, objective: str) -> int:
        if objective not in self.objectives:
            raise KeyError(f"unknown objective {objective!r} (have {list(self.objectives)})")
        return self.objectives.index(objective)

    # ---- persistence

    def save(self, directory: str | Path) -> Path:
        """Write weights, feature center, config and metadata into ``directory``."""
        meta = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "objectives": list(self.objectives),
            "cardinalities": list(self.model.cardinalities),
            "n_numeric": self.model.n_numeric,
            "history": self.history,
        }
        return save_model_dir(directory, weights_file=WEIGHTS_FILE, state=self.model.state_dict(),
                              center=self.center, config=self.config, meta=meta)

    @classmethod
    def load(cls, directory: str | Path) -> LogisticPredictor:
        """Read a directory written by :meth:`save`; DataError when it is incomplete or foreign."""
        directory = Path(directory)
        meta = read_meta(directory, weights_file=WEIGHTS_FILE, file_format=FILE_FORMAT,
                         version=FILE_VERSION, what="a saved logistic predictor")
        config = LogisticConfig.model_validate(read_json(directory / CONFIG_FILE))
        center = FeatureCenter.load(directory / CENTER_FILE)
        objectives = tuple(meta["objectives"])
        if list(center.cardinalities.values()) != list(meta["cardinalities"]) or len(
            center.numeric_names()
        ) != int(meta["n_numeric"]):
            raise DataError(f"{directory}: feature center does not match the saved model shape")
        model = PerTaskLogistic(meta["cardinalities"], int(meta["n_numeric"]), len(objectives))
        try:
            state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (RuntimeError, OSError, KeyError) as exc:
            raise DataError(f"{directory / WEIGHTS_FILE}: cannot load weights ({exc})") from None
        model.eval()
        return cls(model, center, objectives, config, list(meta.get("history", [])))


# ------------------------------------------------------------------------------------ training


def _tensors(batch: FeatureBatch) -> tuple[Tensor, Tensor]:
    return torch.from_numpy(batch.categorical), torch.from_numpy(batch.numeric)


@torch.no_grad()
def _forward(model: PerTaskLogistic, batch: FeatureBatch) -> np.ndarray:
    model.eval()
    cat, num = _tensors(batch)
    out = torch.empty((cat.shape[0], model.n_tasks), dtype=torch.float32)
    for start in range(0, cat.shape[0], _PREDICT_BATCH):
        stop = start + _PREDICT_BATCH
        out[start:stop] = model(cat[start:stop], num[start:stop])
    return out.numpy()


def _minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    order = torch.randperm(n, generator=generator)
    yield from order.split(batch_size)


def _evaluate(
    model: PerTaskLogistic,
    batch: FeatureBatch,
    labels: np.ndarray,
    mask: np.ndarray,
    objectives: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Per-task log-loss and ROC AUC (NaN with a single class) on labelled rows."""
    from blendrank.metrics import auc

    logits = torch.from_numpy(_forward(model, batch))
    y = torch.from_numpy(labels)
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(objectives):
        m = torch.from_numpy(mask[:, k])
        if not bool(m.any()):
            out[name] = {"logloss": math.nan, "auc": math.nan, "n": 0}
            continue
        z, t = logits[m, k], y[m, k]
        logloss = float(nn.functional.binary_cross_entropy_with_logits(z, t))
        value = auc(z.unsqueeze(0), t.unsqueeze(0), None)
        out[name] = {"logloss": logloss, "auc": value, "n": int(m.sum())}
    return out


def fit_logistic(
    train: pa.Table,
    valid: pa.Table | None = None,
    config: LogisticConfig | None = None,
) -> LogisticPredictor:
    """Fit the Feature Center (on ``train`` only) and the per-task logistic regressions.

    ``valid`` (optional) is scored after each epoch (per-task log-loss and AUC on its shown rows)
    into ``predictor.history``; it never influences the fit.
    """
    config = config or LogisticConfig()
    rows = _shown_rows(train)
    if rows.num_rows == 0:
        raise DataError(
            "no training rows: the table is empty or every `position` is null (no shown rows)"
        )
    objectives = _resolve_objectives(rows, config)

    schema = FeatureSchema.infer(rows, max_int_categories=config.max_int_categories)
    overrides = {
        s.name: {"max_vocab": config.max_vocab} for s in schema.features if s.is_categorical
    }
    if overrides:
        schema = FeatureSchema.infer(
            rows, overrides=overrides, max_int_categories=config.max_int_categories
        )
    center = FeatureCenter.fit(rows, schema)
    batch = center.transform(rows)
    labels_np, mask_np = _label_matrix(rows, objectives)

    cat, num = _tensors(batch)
    labels, mask = torch.from_numpy(labels_np), torch.from_numpy(mask_np)
    model = PerTaskLogistic(list(center.cardinalities.values()), num.shape[1], len(objectives))
    with torch.no_grad():  # start each task at its base rate: faster, and no RNG involved
        rate = (labels.sum(0) / mask.sum(0).clamp_min(1)).clamp(
            _BASE_RATE_CLIP, 1 - _BASE_RATE_CLIP
        )
        model.bias.copy_(torch.log(rate) - torch.log1p(-rate))

    valid_data: tuple[FeatureBatch, np.ndarray, np.ndarray] | None = None
    if valid is not None:
        valid_rows = _shown_rows(valid)
        valid_labels, valid_mask = _label_matrix(valid_rows, objectives)
        valid_data = (center.transform(valid_rows), valid_labels, valid_mask)

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    n = cat.shape[0]
    for epoch in range(1, config.epochs + 1):
        model.train()
        total, seen = 0.0, 0
        for idx in _minibatches(n, config.batch_size, generator):
            optimizer.zero_grad(set_to_none=True)
            loss = model.loss(cat[idx], num[idx], labels[idx], mask[idx], config.l2)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        record: dict[str, Any] = {"epoch": epoch, "train_loss": total / max(seen, 1)}
        if valid_data is not None:
            record["valid"] = _evaluate(model, *valid_data, objectives)
        history.append(record)
    model.eval()
    return LogisticPredictor(model, center, tuple(objectives), config, history)
