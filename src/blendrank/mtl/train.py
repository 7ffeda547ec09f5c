"""Training, evaluation and persistence of the multi-task model (MMoE / PLE / shared-bottom).

``fit_mtl`` streams the training split twice per epoch's worth of work at most: one pass fits the
Feature Center and scans the labels, then every epoch streams the split again through a bounded
shuffle buffer. Validation loss drives early stopping; the best weights are checkpointed
atomically when an output directory is given. ``train_mtl`` is the whole ``blendrank mtl train``
pipeline (splits, fit, test metrics, ``metrics.json``). ``MTLPredictor`` mirrors
:class:`blendrank.mtl.logistic.LogisticPredictor` (``predict`` / ``add_predictions`` / ``save`` /
``load``), so callers can use either.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from blendrank import distributed as dist
from blendrank.checkpoint import Checkpointer, check_finite, fingerprint, rng_state, set_rng_state
from blendrank.data.columns import put_column
from blendrank.data.contract import format_violations, validate_table
from blendrank.data.io import (
    CSV_SUFFIXES,
    MappingLike,
    map_table,
    parquet_files,
    read_raw,
    resolve_mapping,
    write_parquet,
)
from blendrank.errors import ConfigError, DataError
from blendrank.features.center import FeatureCenter
from blendrank.jsonio import read_json, write_json
from blendrank.mtl.config import MTLConfig
from blendrank.mtl.data import (
    LABEL_PREFIX,
    POSITION,
    REQUEST_ID,
    DataSplits,
    EncodedBatch,
    Encoder,
    LabelScan,
    Source,
    resolve_data,
    schema_for,
    shuffled_minibatches,
)
from blendrank.mtl.models import MTLNetwork, NetworkSpec, TaskLayout, build_layout, task_losses

PRED_PREFIX = "pred_"
EST_PREFIX = "est_"
FILE_FORMAT = "blendrank.mtl"
FILE_VERSION = 1
WEIGHTS_FILE = "model.pt"
CENTER_FILE = "feature_center.json"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"
METRICS_FILE = "metrics.json"
_PREDICT_BATCH = 65_536
_RATE_CLIP = 1e-4
_LANE_SEED = 1_000_003  # seed offset between data lanes' shuffle streams

__all__ = [
    "MTLPredictor",
    "evaluate_mtl",
    "fit_mtl",
    "predict_parquet",
    "train_mtl",
]

SourceLike: TypeAlias = Source | str | Path | pa.Table


# ---------------------------------------------------------------------------------- predictor


@dataclass
class MTLPredictor:
    """A fitted :class:`MTLNetwork` with its Feature Center.

    ``objectives`` are the probability tasks (binary and ESMM, written as ``pred_<name>``);
    ``regression`` the regression tasks (written as ``est_<name>`` in the label's units).
    """

    model: MTLNetwork
    center: FeatureCenter
    config: MTLConfig
    target_moments: dict[str, tuple[float, float]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)  # summary of the last fit

    @property
    def layout(self) -> TaskLayout:
        return self.model.layout

    @property
    def objectives(self) -> tuple[str, ...]:
        return tuple(self.layout.names[k] for k in self.layout.probability_tasks)

    @property
    def regression(self) -> tuple[str, ...]:
        return tuple(self.layout.names[k] for k in self.layout.regression_tasks)

    @property
    def esmm(self) -> dict[str, str]:
        lay = self.layout
        return {
            lay.names[k]: lay.names[lay.parent[k]]
            for k, kind in enumerate(lay.kinds)
            if kind == "esmm"
        }

    @property
    def device(self) -> torch.device:
        return self.model.offsets.device

    def _encoder(self) -> Encoder:
        return Encoder(self.center, self.layout, self.target_moments, use_position=True)

    @torch.no_grad()
    def _forward(
        self, table: pa.Table | pa.RecordBatch, position: bool
    ) -> tuple[Tensor, Tensor | None]:
        enc = self._encoder()
        cat, num = enc.features(table)
        pos = enc.position(table) if position else None
        self.model.eval()
        dev = self.device
        n, t = cat.shape[0], self.model.n_tasks
        out = torch.empty((n, t), dtype=torch.float32)
        off: Tensor | None = None
        for start in range(0, n, _PREDICT_BATCH):
            sl = slice(start, start + _PREDICT_BATCH)
            p = None if pos is None else pos[sl].to(dev)
            raw, o, _ = self.model.forward_full(cat[sl].to(dev), num[sl].to(dev), p)
            out[sl] = raw.float().cpu()
            if o is not None:
                if off is None:
                    off = torch.zeros((n, t), dtype=torch.float32)
                off[sl] = o.float().cpu()
        return out, off

    def raw(self, table: pa.Table | pa.RecordBatch, *, position: bool = False) -> Tensor:
        """Raw network outputs ``[N, T]`` (float32, CPU); ``position=True`` adds the position
        tower's logit bias (``logit`` mode) for rows that have a position."""
        return self._forward(table, position)[0]

    def _outputs(self, table: pa.Table | pa.RecordBatch, position: bool) -> Tensor:
        raw, off = self._forward(table, position)
        return self.model.outputs(raw, off)

    def predict(
        self, table: pa.Table | pa.RecordBatch, *, position: bool = False
    ) -> dict[str, np.ndarray]:
        """``{objective: float32 probabilities [N]}`` for every row (shown or not), predicted as
        if at position 1 (``position=True``: at the row's logged position, where it has one)."""
        out = self._outputs(table, position).numpy()
        return {
            self.layout.names[k]: np.ascontiguousarray(out[:, k])
            for k in self.layout.probability_tasks
        }

    def predict_cvr(self, table: pa.Table | pa.RecordBatch) -> dict[str, np.ndarray]:
        """``{esmm child: pCVR [N]}``: the conditional head, ``pred_child = pred_parent * pCVR``."""
        cond = self.model.conditional(self.raw(table)).numpy()
        return {
            self.layout.names[k]: np.ascontiguousarray(cond[:, k])
            for k, kind in enumerate(self.layout.kinds)
            if kind == "esmm"
        }

    def estimate(self, table: pa.Table | pa.RecordBatch) -> dict[str, np.ndarray]:
        """``{regression objective: float32 estimate [N]}`` in the label's units
        (``expm1`` of the predicted log1p)."""
        raw = self.raw(table).numpy().astype(np.float64)
        out: dict[str, np.ndarray] = {}
        for k in self.layout.regression_tasks:
            name = self.layout.names[k]
            mean, std = self.target_moments[name]
            out[name] = np.expm1(np.maximum(raw[:, k] * std + mean, 0.0)).astype(np.float32)
        return out

    def add_predictions(self, table: pa.Table) -> pa.Table:
        """``table`` with float32 ``pred_<objective>`` columns (probabilities) and
        ``est_<objective>`` columns (regression estimates), replaced in place when present."""
        raw = self.raw(table)
        out = self.model.outputs(raw).numpy()
        columns: list[tuple[str, np.ndarray]] = [
            (PRED_PREFIX + self.layout.names[k], out[:, k]) for k in self.layout.probability_tasks
        ]
        raw_np = raw.numpy().astype(np.float64)
        for k in self.layout.regression_tasks:
            name = self.layout.names[k]
            mean, std = self.target_moments[name]
            est = np.expm1(np.maximum(raw_np[:, k] * std + mean, 0.0)).astype(np.float32)
            columns.append((EST_PREFIX + name, est))
        for column, values in columns:
            table = put_column(table, column, values)
        return table

    # ---- persistence

    def save(self, directory: str | Path) -> Path:
        """Write weights, feature center, config and metadata into ``directory`` (each file
        atomically: temp file + ``os.replace``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        fd, tmp = tempfile.mkstemp(prefix=f".{WEIGHTS_FILE}.", suffix=".tmp", dir=directory)
        os.close(fd)
        try:
            torch.save(state, tmp)
            _public(tmp)
            os.replace(tmp, directory / WEIGHTS_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.center.save(directory / CENTER_FILE)
        write_json(directory / CONFIG_FILE, self.config.model_dump(mode="json"))
        meta = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "objectives": list(self.objectives),
            "regression": list(self.regression),
            "esmm": self.esmm,
            "network": self.model.spec.to_dict(),
            "target_moments": {k: list(v) for k, v in self.target_moments.items()},
            "history": self.history,
        }
        write_json(directory / META_FILE, meta)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> MTLPredictor:
        """Read a directory written by :meth:`save`; DataError when it is incomplete or foreign."""
        directory = Path(directory)
        if not directory.is_dir():
            raise DataError(f"{directory}: no such model directory")
        missing = [
            f
            for f in (WEIGHTS_FILE, CENTER_FILE, CONFIG_FILE, META_FILE)
            if not (directory / f).is_file()
        ]
        if missing:
            raise DataError(
                f"{directory}: not a saved MTL model (missing {missing}); "
                "train one with `blendrank mtl train`"
            )
        meta = read_json(directory / META_FILE)
        if meta.get("format") != FILE_FORMAT or meta.get("version") != FILE_VERSION:
            raise DataError(
                f"{directory / META_FILE}: expected format {FILE_FORMAT!r} version "
                f"{FILE_VERSION}, got {meta.get('format')!r} version {meta.get('version')!r}"
            )
        try:
            config = MTLConfig.model_validate(read_json(directory / CONFIG_FILE))
            spec = NetworkSpec.from_dict(meta["network"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{directory}: malformed model metadata ({exc})") from None
        center = FeatureCenter.load(directory / CENTER_FILE)
        if (
            list(center.cardinalities.values()) != list(spec.cardinalities)
            or len(center.numeric_names()) != spec.n_numeric
        ):
            raise DataError(f"{directory}: feature center does not match the saved model shape")
        model = MTLNetwork(spec)
        try:
            state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (RuntimeError, OSError, KeyError, EOFError, pickle.UnpicklingError) as exc:
            detail = (
                "not a PyTorch weights file"
                if isinstance(exc, pickle.UnpicklingError)
                else f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            )
            raise DataError(
                f"{directory / WEIGHTS_FILE}: cannot load weights, the file is corrupt or "
                f"truncated ({detail}); re-train with `blendrank mtl train`"
            ) from None
        model.to(device).eval()
        moments = {k: (float(v[0]), float(v[1])) for k, v in meta["target_moments"].items()}
        return cls(model, center, config, moments, list(meta.get("history", [])))


def _public(path: str | Path) -> None:
    """Give a ``mkstemp`` file (mode 0600) the usual permissions (0666 minus the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


# ------------------------------------------------------------------------------------ fitting


class _TrainStep(torch.nn.Module):
    """``MTLNetwork.forward_full`` as a module's ``forward``, which DDP needs to see."""

    def __init__(self, model: MTLNetwork):
        super().__init__()
        self.model = model

    def forward(self, cat: Tensor, num: Tensor, position: Tensor | None):
        return self.model.forward_full(cat, num, position)


def _source(name: str, data: SourceLike) -> Source:
    return data if isinstance(data, Source) else Source.of(name, data)


def _first_batch(source: Source, batch_size: int) -> pa.RecordBatch:
    it = source.batches(None, batch_size)
    try:
        first = next(it, None)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    if first is None:
        raise DataError(
            f"{source.describe()}: no training rows (the split is empty or no row was shown: "
            "every `position` is null)"
        )
    return first


def _resolve_objectives(columns: Sequence[str], config: MTLConfig) -> list[str]:
    labels = [
        c[len(LABEL_PREFIX) :] for c in columns if c.startswith(LABEL_PREFIX) and c != LABEL_PREFIX
    ]
    if config.objectives is None:
        if not labels:
            raise DataError(
                "no label columns: the training data needs at least one `label_<name>` column "
                f"(columns: {', '.join(columns)})"
            )
        return labels
    absent = [n for n in config.objectives if n not in labels]
    if absent:
        raise DataError(
            f"objective(s) {absent}: no `label_<name>` column in the training data "
            f"(label columns present: {labels or 'none'})"
        )
    return list(config.objectives)


def _device(config: MTLConfig) -> torch.device:
    if config.device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda requested but no CUDA device is available")
    else:
        dev = torch.device(config.device)
    if dev.type == "cuda" and dev.index is None:  # under torchrun: this process's GPU (LOCAL_RANK)
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _weights(layout: TaskLayout, config: MTLConfig, device: torch.device) -> Tensor:
    unknown = set(config.task_weights) - set(layout.names)
    if unknown:
        raise ConfigError(
            f"task_weights for {sorted(unknown)}: not modelled objectives ({list(layout.names)})"
        )
    w = torch.tensor([config.task_weights.get(n, 1.0) for n in layout.names], device=device)
    if float(w.sum()) <= 0:
        raise ConfigError("task_weights: at least one modelled objective needs a weight > 0")
    return w


def _combine(sums: Tensor, counts: Tensor, weights: Tensor) -> Tensor:
    """Weighted mean over tasks of each task's mean loss (tasks without rows count 0)."""
    per_task = sums / counts.clamp_min(1.0)
    return (per_task * weights).sum() / weights.sum()


@torch.no_grad()
def validation_loss(
    model: MTLNetwork,
    source: Source,
    encoder: Encoder,
    weights: Tensor,
    config: MTLConfig,
    device: torch.device,
) -> tuple[float, dict[str, float], int]:
    """Streamed validation loss (the training objective without the L2 term), per-task mean
    losses, and the number of rows."""
    model.eval()
    t = model.n_tasks
    sums = torch.zeros(t, dtype=torch.float64, device=device)
    counts = torch.zeros(t, dtype=torch.float64, device=device)
    rows = 0
    for rb in source.batches(encoder.columns(), config.read_batch_rows, part=(dist.rank(), dist.world_size())):
        b = encoder.encode(rb).to(device)
        for start in range(0, len(b), _PREDICT_BATCH):
            sl = slice(start, start + _PREDICT_BATCH)
            pos = None if b.position is None else b.position[sl]
            raw, off, _ = model.forward_full(b.categorical[sl], b.numeric[sl], pos)
            s, c = task_losses(raw, b.labels[sl], b.mask[sl], model.layout, off)
            sums += s.double()
            counts += c.double()
        rows += len(b)
    if dist.is_distributed():  # each rank scored its part of the split
        both = dist.all_reduce_sum(torch.cat([sums, counts, torch.tensor([float(rows)], dtype=torch.float64, device=device)]))
        sums, counts, rows = both[:t], both[t : 2 * t], int(both[-1])
    total = float(_combine(sums, counts, weights.double()))
    per_task = {
        n: float(sums[k] / counts[k]) if counts[k] > 0 else math.nan
        for k, n in enumerate(model.layout.names)
    }
    return total, per_task, rows


def fit_mtl(
    train: SourceLike,
    valid: SourceLike | None = None,
    config: MTLConfig | None = None,
    *,
    features_file: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    checkpoint_every: int = 500,
    resume: bool = True,
    lanes: int | None = None,
) -> MTLPredictor:
    """Fit the Feature Center (streaming over ``train``'s shown rows) and the network.

    ``train`` / ``valid``: a Parquet file or directory of shards, an Arrow table, or a
    :class:`Source`. With ``valid``, training stops after ``config.patience`` epochs without a
    lower validation loss and the best epoch's weights are returned (and saved into
    ``checkpoint_dir`` atomically each time they improve). Without it, every epoch runs and the
    last weights are kept. ``features_file`` (or ``config.features``) is a FeatureSchema YAML;
    otherwise the schema is inferred from the first training record batch. Seeded by
    ``config.seed``; torch's global RNG state is restored afterwards.

    With ``checkpoint_dir`` a resumable checkpoint (:mod:`blendrank.checkpoint`) is also written
    there every ``checkpoint_every`` steps and at every epoch end; with ``resume`` a run that
    finds one continues from it (replaying the epoch's shuffle to the saved batch) and reaches
    the uninterrupted result. It is removed when the fit completes.

    Under ``torchrun`` the training split is cut into ``lanes`` (default: the number of
    processes) disjoint parts of record batches / row groups, each with its own shuffle buffer
    and stream; every step takes ``batch_size / lanes`` rows from each lane, a rank trains on
    its lanes' rows, and DDP averages the gradients. The loss is normalised by the global
    labelled-row counts, so N processes follow the 1-process run with the same ``lanes``.
    """
    config = config or MTLConfig()
    train_src = _source("train", train)
    valid_src = None if valid is None else _source("valid", valid)
    schema_file = config.features or (Path(features_file) if features_file else None)
    device = _device(config)
    say = (log if dist.is_main() else None) or (lambda _msg: None)  # rank 0 reports

    with torch.random.fork_rng(devices=[]), _threads(config.threads):
        torch.manual_seed(config.seed)
        # ---- pass 1: schema, Feature Center and label scan (streamed over the shown rows)
        first = _first_batch(train_src, config.read_batch_rows)
        objectives = _resolve_objectives(first.schema.names, config)
        schema = schema_for(
            first,
            features_file=schema_file,
            id_features=config.id_features,
            max_int_categories=config.max_int_categories,
            max_vocab=config.max_vocab,
            min_count=config.min_count,
        )
        label_cols = [LABEL_PREFIX + n for n in objectives]
        has_position = POSITION in first.schema.names
        scan = LabelScan(label_cols)
        fit_cols = list(
            dict.fromkeys(schema.names + label_cols + ([POSITION] if has_position else []))
        )

        def scanned() -> Iterator[pa.RecordBatch]:
            for rb in train_src.batches(fit_cols, config.read_batch_rows):
                scan.update(rb)
                yield rb

        t0 = time.perf_counter()
        center = FeatureCenter.fit(scanned(), schema)
        for name in objectives:
            if scan.objective(name).n == 0:
                raise DataError(f"label_{name}: no labelled training row (all null)")
        regression = (
            [n for n in objectives if not scan.is_binary(n)]
            if config.regression is None
            else list(config.regression)
        )
        absent = [n for n in regression if n not in objectives]
        if absent:
            raise ConfigError(f"regression objective(s) {absent} are not modelled ({objectives})")
        esmm = {c: p for c, p in config.esmm.items() if c in objectives}
        try:
            layout = build_layout(objectives, regression, esmm)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        moments = {n: scan.log_moments(n) for n in regression}
        use_position = config.position_bias_tower and scan.has_position
        position_tasks = (
            tuple(
                layout.index(n)
                for n in config.position_bias_objectives
                if n in layout.names and layout.kinds[layout.index(n)] == "binary"
            )
            if use_position
            else ()
        )
        say(
            f"fitted the feature center on {scan.rows:,} training rows in "
            f"{time.perf_counter() - t0:.1f}s: {len(center.categorical_names())} categorical, "
            f"{len(center.numeric_names())} numeric features"
        )

        spec = NetworkSpec(
            model=config.model,
            cardinalities=tuple(center.cardinalities.values()),
            n_numeric=len(center.numeric_names()),
            layout=layout,
            embedding_dim=config.embedding_dim,
            expert_dims=tuple(config.expert_dims),
            tower_dims=tuple(config.tower_dims),
            n_experts=config.n_experts,
            ple_levels=config.ple_levels,
            ple_shared_experts=config.ple_shared_experts,
            ple_task_experts=config.ple_task_experts,
            dropout=config.dropout,
            position_tasks=position_tasks,
            max_position=config.max_position,
            wide=config.wide,
            position_mode=config.position_mode,
        )
        model = MTLNetwork(spec)
        _init_output_bias(model, layout, scan)
        model.to(device)
        predictor = MTLPredictor(model, center, config, moments, [])
        encoder = Encoder(center, layout, moments, use_position=bool(position_tasks))
        weights = _weights(layout, config, device)

        groups: dict[str, list[torch.nn.Parameter]] = {"sparse": [], "wide": [], "dense": []}
        for pname, param in model.named_parameters():
            kind = (
                "wide"
                if pname.startswith("wide")
                else "sparse"
                if pname.startswith(("embedding", "position"))
                else "dense"
            )
            groups[kind].append(param)
        optimizer = torch.optim.AdamW(
            [
                {"params": groups["sparse"], "weight_decay": 0.0},
                {"params": groups["wide"], "weight_decay": 0.0, "lr": config.wide_lr or config.lr},
                {"params": groups["dense"], "weight_decay": config.weight_decay},
            ],
            lr=config.lr,
        )
        world, rank = dist.world_size(), dist.rank()
        lanes = lanes or world
        if lanes % world:
            raise ConfigError(f"lanes={lanes} must be a multiple of the number of processes ({world})")
        if config.batch_size % lanes or config.batch_size < lanes:
            raise ConfigError(
                f"batch_size {config.batch_size} must be a multiple of the data lanes ({lanes}); "
                "each lane contributes batch_size / lanes rows to every step"
            )
        my_lanes = list(range(rank, lanes, world))
        # One shuffle stream per lane (lane 0 = the single-process stream), kept across epochs.
        generators = {j: torch.Generator().manual_seed(config.seed + _LANE_SEED * j) for j in my_lanes}
        train_step = dist.wrap_ddp(_TrainStep(model))
        columns = encoder.columns()
        empty = encoder.encode(first.slice(0, 0))  # what a rank whose lanes ran dry steps on
        best_loss, best_state, best_epoch, bad_epochs = math.inf, None, 0, 0
        train_rows, train_seconds = 0, 0.0
        history: list[dict[str, Any]] = []
        first_epoch, skip, step = 1, 0, 0
        ckpt = (
            None
            if checkpoint_dir is None
            else Checkpointer(
                checkpoint_dir,
                "mtl",
                fingerprint({"config": config.model_dump(mode="json"), "lanes": lanes,
                             "train": train_src.describe(), "valid": valid_src and valid_src.describe()}),
                checkpoint_every,
                resume,
            )
        )
        state = ckpt.load() if ckpt is not None else None
        partial: dict[str, Any] = {}
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            best_loss, best_epoch, bad_epochs = state["best_loss"], state["best_epoch"], state["bad_epochs"]
            best_state = state["best_state"]
            train_rows, train_seconds, history = state["train_rows"], state["train_seconds"], state["history"]
            first_epoch, skip, step = state["epoch"], state["batch"], state["step"]
            partial = state["partial"]
            set_rng_state(state["rng"]["global"])
            for j, g_state in state["rng"]["lanes"].items():
                generators[int(j)].set_state(g_state)
            say(f"resumed from {ckpt.path}: epoch {first_epoch}, batch {skip}")

        def snapshot(epoch: int, batch: int, epoch_start: dict[int, Tensor], partial: dict[str, Any]) -> None:
            assert ckpt is not None
            ckpt.save({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": {"global": rng_state(), "lanes": epoch_start},
                "epoch": epoch, "batch": batch, "step": step, "partial": partial,
                "best_loss": best_loss, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                "best_state": best_state, "train_rows": train_rows, "train_seconds": train_seconds,
                "history": history,
            })

        from blendrank.progress import progress_bar

        bar = progress_bar() if progress and dist.is_main() else contextlib.nullcontext()
        with bar as pbar:
            for epoch in range(first_epoch, config.epochs + 1):
                if epoch != first_epoch:
                    skip, partial = 0, {}
                task = (
                    pbar.add_task(f"epoch {epoch}/{config.epochs}", total=scan.rows)
                    if pbar is not None
                    else None
                )
                model.train()
                t_epoch = time.perf_counter()
                # A resumed epoch replays its shuffle from these states and skips the done steps.
                epoch_start = {j: g.get_state() for j, g in generators.items()}
                streams = {
                    j: shuffled_minibatches(
                        train_src.batches(columns, config.read_batch_rows, part=(j, lanes)),
                        encoder,
                        batch_size=config.batch_size // lanes,
                        buffer_rows=max(1, config.shuffle_buffer_rows // lanes),
                        generator=generators[j],
                    )
                    for j in my_lanes
                }
                total, seen = partial.get("total", 0.0), partial.get("seen", 0)
                batch = 0
                while True:
                    parts = []
                    for j in my_lanes:
                        b = next(streams[j], None)
                        if b is not None and config.oov_dropout:
                            keep = torch.rand(b.categorical.shape, generator=generators[j]) >= config.oov_dropout
                            b.categorical = b.categorical * keep
                        if b is not None and b.position is not None and config.position_dropout:
                            hide = torch.rand(b.position.shape, generator=generators[j]) < config.position_dropout
                            b.position = b.position.masked_fill(hide & (b.position > 0), -1)  # -1 = hidden (models.py)
                        if b is not None:
                            parts.append(b)
                    # Every rank must take the same number of steps: stop when all lanes are dry;
                    # a rank whose lanes ran dry first steps on an empty batch (zero gradient).
                    rows_here = sum(len(p) for p in parts)
                    if not dist.any_rank(rows_here > 0):
                        break
                    if batch < skip:  # already trained before the checkpoint
                        batch += 1
                        continue
                    b = (EncodedBatch.concat(parts) if len(parts) > 1 else parts[0]) if parts else empty
                    b = b.to(device)
                    optimizer.zero_grad(set_to_none=True)
                    raw, offset, penalty = train_step(b.categorical, b.numeric, b.position)
                    sums, counts = task_losses(raw, b.labels, b.mask, layout, offset)
                    # The rank's share of the 1-process loss on the union of the ranks' batches:
                    # task sums over the *global* labelled-row counts, penalty by the row share.
                    glob = dist.all_reduce_sum(torch.cat([counts.detach().double(),
                                                          torch.tensor([float(rows_here)], device=counts.device).double()]))
                    g_counts, g_rows = glob[:-1].to(sums.dtype), float(glob[-1])
                    share = (sums / g_counts.clamp_min(1.0) * weights).sum() / weights.sum()
                    objective = share
                    if config.embedding_l2 and rows_here:
                        objective = share + config.embedding_l2 * penalty * (rows_here / g_rows)
                    (objective * world).backward()  # DDP averages: x world restores the sum of shares
                    loss = dist.all_reduce_sum(share.detach().double().clone())
                    check_finite(loss, model.parameters(), f"MTL step {step} (epoch {epoch}, batch {batch})")
                    optimizer.step()
                    step += 1
                    batch += 1
                    total += float(loss) * g_rows
                    seen += int(g_rows)
                    if pbar is not None and task is not None:
                        pbar.update(
                            task,
                            advance=int(g_rows),
                            description=(f"epoch {epoch}/{config.epochs} loss {total / max(seen, 1):.4f}"),
                        )
                    if ckpt is not None and ckpt.due(step):
                        snapshot(epoch, batch, epoch_start, {"total": total, "seen": seen})
                seconds = time.perf_counter() - t_epoch
                train_rows += seen
                train_seconds += seconds
                record: dict[str, Any] = {
                    "epoch": epoch,
                    "train_loss": total / max(seen, 1),
                    "rows": seen,
                    "seconds": round(seconds, 3),
                    "impressions_per_s": seen / seconds if seconds > 0 else math.nan,
                }
                if valid_src is not None:
                    v_loss, v_tasks, v_rows = validation_loss(
                        model, valid_src, encoder, weights, config, device
                    )
                    record.update(valid_loss=v_loss, valid_task_loss=v_tasks, valid_rows=v_rows)
                    if v_rows == 0:
                        raise DataError(f"{valid_src.describe()}: no validation rows")
                    improved = v_loss < best_loss - 1e-7
                    if improved:
                        best_loss, best_epoch, bad_epochs = v_loss, epoch, 0
                        best_state = copy.deepcopy(model.state_dict())
                    else:
                        bad_epochs += 1
                    record["best"] = improved
                history.append(record)
                predictor.history = history
                msg = f"epoch {epoch}: train loss {record['train_loss']:.4f}"
                if valid_src is not None:
                    msg += f", valid loss {record['valid_loss']:.4f}" + (
                        " *" if record["best"] else ""
                    )
                say(msg + f" ({seen / max(seconds, 1e-9):,.0f} impressions/s)")
                if valid_src is not None and record["best"] and checkpoint_dir is not None and dist.is_main():
                    predictor.save(checkpoint_dir)
                stop = valid_src is not None and bad_epochs >= config.patience
                if ckpt is not None and not stop and epoch < config.epochs:
                    snapshot(epoch + 1, 0, {j: g.get_state() for j, g in generators.items()}, {})
                if stop:
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        predictor.history = history
        predictor.training = {
            "rows": train_rows,
            "seconds": train_seconds,
            "impressions_per_s": train_rows / train_seconds if train_seconds > 0 else math.nan,
            "epochs": len(history),
            "best_epoch": best_epoch or len(history),
            "best_valid_loss": best_loss if valid_src is not None else None,
            "train_rows_per_epoch": scan.rows,
            "processes": world,
            "lanes": lanes,
        }
        if checkpoint_dir is not None and dist.is_main():
            predictor.save(checkpoint_dir)
        if ckpt is not None:
            ckpt.clear()
    return predictor


def _init_output_bias(model: MTLNetwork, layout: TaskLayout, scan: LabelScan) -> None:
    """Start every binary head at its base rate's logit and every ESMM head at the conditional
    rate's logit (faster and better-calibrated early epochs)."""

    def logit(p: float) -> float:
        p = min(max(p, _RATE_CLIP), 1 - _RATE_CLIP)
        return math.log(p) - math.log1p(-p)

    with torch.no_grad():
        for k, kind in enumerate(layout.kinds):
            if kind == "binary":
                model.head.bias[k, 0] = logit(scan.rate(layout.names[k]))
            elif kind == "esmm":
                parent = scan.rate(layout.names[layout.parent[k]])
                child = scan.rate(layout.names[k])
                model.head.bias[k, 0] = logit(child / parent if parent > 0 else _RATE_CLIP)
            else:
                model.head.bias[k, 0] = 0.0


# --------------------------------------------------------------------------------- evaluation


def evaluate_mtl(
    predictor: MTLPredictor,
    data: SourceLike,
    *,
    batch_size: int = 65_536,
    position: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per-task metrics on ``data``'s shown rows, streamed: for probability tasks AUC, GAUC
    (uniform over requests, single-class requests skipped), log-loss, label rate and mean
    prediction; for regression tasks RMSE and Pearson correlation of log1p values."""
    from blendrank.data.slates import to_slates
    from blendrank.metrics import auc, gauc

    source = _source("test", data)
    layout = predictor.layout
    enc = predictor._encoder()
    cols = list(dict.fromkeys(enc.feature_columns + [LABEL_PREFIX + n for n in layout.names]))
    names = source.column_names
    cols += [c for c in (REQUEST_ID, POSITION) if c in names and c not in cols]
    if REQUEST_ID not in names:
        raise DataError(f"{source.describe()}: no request_id column (needed for GAUC)")
    req: list[pa.Array] = []
    pos: list[np.ndarray] = []
    preds: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for rb in source.batches(cols, batch_size):
        out_np = predictor._outputs(rb, position).numpy()
        y_t, m_t = enc.labels(rb)
        req.append(rb.column(REQUEST_ID))
        if POSITION in rb.schema.names:
            pos.append(pc.fill_null(rb.column(POSITION), 0).to_numpy(zero_copy_only=False))
        preds.append(out_np)
        labels.append(y_t.numpy())
        masks.append(m_t.numpy())
    if not preds:
        raise DataError(f"{source.describe()}: no rows to evaluate")
    p_all, y_all, m_all = np.concatenate(preds), np.concatenate(labels), np.concatenate(masks)
    cols_t: dict[str, Any] = {REQUEST_ID: pa.chunked_array(req)}
    if pos:
        cols_t[POSITION] = pa.array(np.concatenate(pos).astype(np.int32))
    metrics: dict[str, dict[str, Any]] = {}
    for k, (name, kind) in enumerate(zip(layout.names, layout.kinds)):
        m = m_all[:, k]
        n = int(m.sum())
        if kind == "regression":
            mean, std = predictor.target_moments[name]
            z_pred, z_true = p_all[m, k] * std + mean, y_all[m, k] * std + mean
            rmse = float(np.sqrt(np.mean((z_pred - z_true) ** 2))) if n else math.nan
            corr = (
                float(np.corrcoef(z_pred, z_true)[0, 1])
                if n > 1 and z_pred.std() > 0 and z_true.std() > 0
                else math.nan
            )
            metrics[name] = {
                "kind": "regression",
                "n": n,
                "rmse_log1p": rmse,
                "pearson_log1p": corr,
            }
            continue
        sub = pa.table({**cols_t, "_p": p_all[:, k], "_y": y_all[:, k]}).filter(pa.array(m))
        if n == 0:
            metrics[name] = {"kind": kind, "n": 0, "auc": math.nan, "gauc": math.nan}
            continue
        slates = to_slates(sub, ["_p", "_y"])
        scores, labs = slates.columns["_p"], slates.columns["_y"]
        g = gauc(scores, labs, slates.mask, skip_single_class=True, skip_constant_pred=False)
        pp = np.clip(p_all[m, k].astype(np.float64), 1e-7, 1 - 1e-7)
        yy = y_all[m, k].astype(np.float64)
        metrics[name] = {
            "kind": kind,
            "n": n,
            "auc": auc(scores, labs, slates.mask),
            "gauc": g.mean,
            "gauc_requests": g.n_used,
            "logloss": float(-np.mean(yy * np.log(pp) + (1 - yy) * np.log1p(-pp))),
            "rate": float(yy.mean()),
            "mean_pred": float(pp.mean()),
        }
    return metrics


# ------------------------------------------------------------------------------------ pipeline


def train_mtl(
    data: str | Path,
    out_dir: str | Path,
    config: MTLConfig | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    checkpoint_every: int = 500,
    resume: bool = True,
    lanes: int | None = None,
    mapping: MappingLike | None = None,
) -> tuple[MTLPredictor, dict[str, Any]]:
    """``blendrank mtl train``: resolve the splits of ``data`` (read with ``mapping``, and
    loaded whole for a mapping or CSV: :func:`blendrank.mtl.data.resolve_data`), fit with early stopping on the
    validation split (best model checkpointed into ``out_dir``), evaluate on the test split and
    write ``out_dir/metrics.json``. Returns the predictor and the metrics.

    Resumable (``out_dir/checkpoint.pt``, see :func:`fit_mtl`). Under ``torchrun`` every rank
    trains; rank 0 alone evaluates and writes (other ranks return empty metrics)."""
    config = config or MTLConfig()
    splits: DataSplits = resolve_data(data, config.split, mapping)
    out_dir = Path(out_dir)
    predictor = fit_mtl(
        splits.train,
        splits.valid,
        config,
        features_file=splits.features_file,
        checkpoint_dir=out_dir,
        progress=progress,
        log=log,
        checkpoint_every=checkpoint_every,
        resume=resume,
        lanes=lanes,
    )
    if not dist.is_main():
        return predictor, {}
    t0 = time.perf_counter()
    test = evaluate_mtl(predictor, splits.test)
    as_shown = (
        evaluate_mtl(predictor, splits.test, position=True)
        if predictor.model.spec.position_tasks
        else None
    )
    training = dict(predictor.training)
    metrics: dict[str, Any] = {
        "model": config.model,
        "data": str(data),
        "mapping": str(mapping) if isinstance(mapping, (str, Path)) else None,
        "split": splits.how,
        "cutoffs": list(splits.cutoffs) if splits.cutoffs else None,
        "features_file": str(splits.features_file) if splits.features_file else None,
        "objectives": list(predictor.objectives),
        "regression": list(predictor.regression),
        "esmm": predictor.esmm,
        "position_tower": bool(predictor.model.spec.position_tasks),
        "seed": config.seed,
        "training": training,
        "test": test,
        "test_as_shown": as_shown,
        "eval_seconds": time.perf_counter() - t0,
    }
    write_json(out_dir / METRICS_FILE, metrics)
    return predictor, metrics


# ------------------------------------------------------------------------------------ predict


def predict_parquet(
    predictor: MTLPredictor,
    data: str | Path,
    out: str | Path,
    *,
    batch_rows: int = 65_536,
    on_batch: Callable[[int], None] | None = None,
) -> list[Path]:
    """Add ``pred_*`` / ``est_*`` columns to every row of a Parquet file or directory of shards,
    streaming record batch by record batch; each output shard is written to a temp file and
    renamed into place. A file input with ``out`` ending in ``.parquet`` writes that file;
    otherwise ``out`` is a directory mirroring the input's shard names. Returns the written
    paths. ``on_batch(rows)`` is called after each batch (progress)."""
    import pyarrow.parquet as pq

    from blendrank.data.io import parquet_files

    data, out = Path(data), Path(out)
    files = parquet_files(data)
    if data.is_dir():
        targets = [out / f.relative_to(data) for f in files]
    elif out.suffix.lower() in (".parquet", ".pq"):
        targets = [out]
    else:
        targets = [out / data.name]
    inputs = {f.resolve() for f in files}
    clash = [t for t in targets if t.resolve() in inputs]
    if clash:
        raise DataError(f"{clash[0]}: the output would overwrite its input; choose another --out")
    needed = predictor.center.schema.names
    # Check every input's footer and columns before writing anything, so a bad shard never
    # leaves the output half old, half new.
    for src in files:
        try:
            names = pq.read_schema(src).names
        except (pa.ArrowException, OSError) as exc:
            raise DataError(
                f"{src}: not a Parquet file or truncated ({exc}); re-export it"
            ) from None
        missing = [c for c in needed if c not in names]
        if missing:
            raise DataError(
                f"{src}: missing feature column(s) {missing} that the model was trained on"
            )
    written: list[Path] = []
    for src, dst in zip(files, targets):
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        os.close(fd)
        writer: pq.ParquetWriter | None = None
        try:
            from blendrank.data.io import iter_record_batches

            for rb in iter_record_batches(src, None, batch_rows):
                table = predictor.add_predictions(pa.Table.from_batches([rb]))
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                if on_batch is not None:
                    on_batch(rb.num_rows)
            if writer is None:  # empty file: keep the schema, add the prediction columns
                empty = pq.read_schema(src).empty_table()
                table = predictor.add_predictions(empty)
                writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
            writer.close()
            writer = None
            _public(tmp)
            os.replace(tmp, dst)
        except BaseException:
            if writer is not None:
                writer.close()
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(dst)
    return written


def predict_log(
    predictor: MTLPredictor,
    data: str | Path,
    out: str | Path,
    mapping: MappingLike | None = None,
    *,
    batch_rows: int = 65_536,
    on_batch: Callable[[int], None] | None = None,
) -> list[Path]:
    """Add ``pred_*`` / ``est_*`` columns to a log read whole through ``mapping`` (a CSV, or
    Parquet with a column mapping), file by file.

    Predictions are computed on the mapped, validated rows, and added to the rows *as stored*
    (original column names and values), so the same mapping reads the output again. Outputs
    are Parquet: ``out`` itself when it ends in ``.parquet`` and ``data`` is one file, else
    ``out/<input name>.parquet`` (shard names mirrored for a directory). Returns the paths."""
    data, out = Path(data), Path(out)
    parsed, mapping_source = resolve_mapping(mapping)
    if parsed is not None:
        clash = sorted(set(parsed.preds) & set(predictor.objectives))
        if clash:
            raise ConfigError(
                f"{mapping_source}: preds.{clash[0]} maps {parsed.preds[clash[0]]!r} onto "
                f"pred_{clash[0]}, which `mtl predict` writes; remove the key from the mapping "
                "used with the model's predictions"
            )
    files = [data] if data.is_file() and _is_csv_path(data) else parquet_files(data)
    if data.is_dir():
        targets = [out / f.relative_to(data) for f in files]
    elif out.suffix.lower() in (".parquet", ".pq"):
        targets = [out]
    else:
        targets = [out / data.name]
    targets = [t.with_name(_parquet_name(t.name)) for t in targets]
    if any(t.resolve() in {f.resolve() for f in files} for t in targets):
        raise DataError(f"{out}: the output would overwrite its input; choose another --out")
    results = []
    for src in files:  # map and validate every input before writing anything
        raw = read_raw(src)
        report = validate_table(map_table(raw, parsed, str(src)), str(src), min_candidates=1)
        if not report.ok:
            raise DataError(format_violations(report))
        results.append((raw, report.table))
    names = [PRED_PREFIX + o for o in predictor.objectives]
    names += [EST_PREFIX + o for o in predictor.regression]
    written = []
    for (raw, mapped), dst in zip(results, targets, strict=True):
        parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for rb in mapped.to_batches(max_chunksize=batch_rows):
            with_preds = predictor.add_predictions(pa.Table.from_batches([rb]))
            for n in names:
                parts[n].append(with_preds.column(n).to_numpy())
            if on_batch is not None:
                on_batch(rb.num_rows)
        for n in names:
            values = np.concatenate(parts[n]) if parts[n] else np.zeros(0, np.float32)
            raw = put_column(raw, n, values)
        written.append(write_parquet(raw, dst))
    return written


def _is_csv_path(path: Path) -> bool:
    return path.name.lower().endswith(CSV_SUFFIXES)


def _parquet_name(name: str) -> str:
    """``log.csv.gz`` -> ``log.parquet``; Parquet names unchanged."""
    lower = name.lower()
    for suffix in CSV_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)] + ".parquet"
    return name
