"""Fitting the multi-task model (MMoE / PLE / shared-bottom) on a streamed log.

``fit_mtl`` streams the training split twice per epoch's worth of work at most: one pass fits the
Feature Center and scans the labels, then every epoch streams the split again through a bounded
shuffle buffer. Validation loss drives early stopping; the best weights are checkpointed
atomically when an output directory is given.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from torch import Tensor

from blendrank import distributed as dist
from blendrank.checkpoint import (
    Checkpointer,
    check_finite,
    fingerprint,
    rng_state,
    set_rng_state,
)
from blendrank.data.fingerprint import splits_input
from blendrank.data.stream import LogSource, SourceLike, as_source
from blendrank.errors import ConfigError, DataError
from blendrank.features.center import FeatureCenter
from blendrank.mtl.config import MTLConfig
from blendrank.mtl.data import (
    LABEL_PREFIX,
    POSITION,
    EncodedBatch,
    Encoder,
    LabelScan,
    schema_for,
    shuffled_minibatches,
)
from blendrank.mtl.models import MTLNetwork, NetworkSpec, TaskLayout, build_layout, task_losses
from blendrank.mtl.predictor import PREDICT_BATCH, MTLPredictor

_RATE_CLIP = 1e-4
_LANE_SEED = 1_000_003  # seed offset between data lanes' shuffle streams

__all__ = ["fit_mtl", "validation_loss"]


class _TrainStep(torch.nn.Module):
    """``MTLNetwork.forward_full`` as a module's ``forward``, which DDP needs to see."""

    def __init__(self, model: MTLNetwork):
        super().__init__()
        self.model = model

    def forward(self, cat: Tensor, num: Tensor, position: Tensor | None):
        return self.model.forward_full(cat, num, position)


def _first_batch(source: LogSource, batch_size: int) -> pa.RecordBatch:
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
    source: LogSource,
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
        for start in range(0, len(b), PREDICT_BATCH):
            sl = slice(start, start + PREDICT_BATCH)
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
    :class:`~blendrank.data.stream.LogSource`. With ``valid``, training stops after ``config.patience`` epochs without a
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
    train_src = as_source("train", train)
    valid_src = None if valid is None else as_source("valid", valid)
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
                fingerprint({"config": config.model_dump(mode="json"), "lanes": lanes}),
                checkpoint_every,
                resume,
                # What the rows are, not where they are: a moved log resumes, a changed one not.
                inputs=[splits_input(train_src, valid_src)],
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
