"""Fit one method on a contract log: what ``blendrank train`` runs and the Python API calls.

Both resolve the method through the registry and its goal from the objective here, once, so a
policy trained from Python is the policy the command line would have trained on the same data
and config.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from blendrank import distributed as dist
from blendrank.algos.grade.config import GRADEConfig
from blendrank.algos.grade.data import FusionSpec, fit_fusion_spec, validate_log_stream
from blendrank.algos.grade.trainer import GradePolicy
from blendrank.algos.integrated_rl.config import IntegratedRLConfig
from blendrank.algos.integrated_rl.logs import (
    LogPolicy,
    LogSetup,
    fit_integrated_rl_logs,
    production_log_action,
)
from blendrank.algos.static_search.config import StaticSearchConfig
from blendrank.bench import registry
from blendrank.bench.logs import (
    SPLITS,
    LogBenchConfig,
    LogGoal,
    load_splits,
    log_goal,
    tune_static,
)
from blendrank.config import BaseConfig
from blendrank.data.contract import format_violations, objectives_of, validate_table
from blendrank.data.splits import split_by_time
from blendrank.errors import ConfigError, DataError
from blendrank.jsonio import write_json
from blendrank.objective import OBJECTIVE_FILE, Objective

STATIC_FILE = "static_weights.json"
#: What a trained method writes into its output directory (beside objective.yaml).
ARTIFACT_FILES = {
    "static_search": (STATIC_FILE,),
    "grade": ("policy.pt", "config.json", "history.jsonl"),
}

Row = dict[str, Any]


def config_type(method: str) -> type[BaseConfig]:
    """The config model of a trainable method; ConfigError naming the choices for any other name."""
    if method not in registry.available("train"):
        raise ConfigError(
            f"--method {method!r}: choose one of {', '.join(registry.available('train'))}"
        )
    return {"static_search": StaticSearchConfig, "integrated_rl": IntegratedRLConfig}.get(
        method, GRADEConfig
    )


def artifact_files(method: str) -> tuple[str, ...]:
    return ARTIFACT_FILES.get(method, ARTIFACT_FILES["grade"])


@dataclass(frozen=True)
class StaticWeights:
    """One global weight vector over the fusion inputs: what ``static_search`` learns."""

    spec: FusionSpec  # the fusion the weights apply to
    weights: np.ndarray  # [K] over spec.inputs
    valid_value: float  # the objective's realised page value on the split it was tuned on
    config: StaticSearchConfig

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(
            out / STATIC_FILE,
            {
                "method": "static_search",
                "objectives": self.spec.inputs,
                "weights": self.weights.round(6).tolist(),
                "valid_value": self.valid_value,
                "config": self.config.model_dump(mode="json"),
                "fusion": self.spec.model_dump(mode="json"),
            },
        )
        return out

    @classmethod
    def load(cls, path: str | Path) -> StaticWeights:
        file = Path(path) / STATIC_FILE
        try:
            blob = json.loads(file.read_text())
            inputs = list(blob["objectives"])
            spec = (
                FusionSpec.model_validate(blob["fusion"])
                if "fusion" in blob
                else FusionSpec(
                    objectives=[i for i in inputs if i != "price"], use_price="price" in inputs
                )
            )
            weights = np.asarray(blob["weights"], dtype=np.float64)
            cfg = StaticSearchConfig.model_validate(blob.get("config", {}))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"{file}: unreadable or not a blendrank static_weights.json ({exc}); "
                "train one with `blendrank train --method static_search`"
            ) from None
        if weights.shape != (len(spec.inputs),):
            raise DataError(
                f"{file}: {weights.size} weights for the {len(spec.inputs)} inputs {spec.inputs}"
            )
        return cls(spec, weights, float(blob.get("valid_value", float("nan"))), cfg)


Trained = GradePolicy | StaticWeights | LogPolicy


@dataclass
class LogFit:
    """One method fitted on a log: the trained policy, the goal it was fitted for, the resolved
    config (what ``run.json`` records) and what the objective could not reach."""

    method: str
    policy: Trained
    goal: LogGoal
    config: BaseConfig
    n_rows: int
    notes: list[str] = field(default_factory=list)

    def save(self, out_dir: str | Path) -> Path:
        """The policy's files and the objective it was trained for (``objective.yaml``)."""
        out = self.policy.save(out_dir)
        (out / OBJECTIVE_FILE).write_text(self.goal.objective.to_yaml())
        return out

    def summary(self, out_dir: str | Path) -> str:
        """One line: what was trained, how well, and where it went."""
        if isinstance(self.policy, StaticWeights):
            w = dict(zip(self.goal.inputs, self.policy.weights.round(3).tolist()))
            value = self.policy.valid_value
            return f"static_search: {w} (valid value@k {value:.4f}) -> {out_dir}"
        if isinstance(self.policy, LogPolicy):
            h = self.policy.history[-1]
            k = self.policy.setup.k
            return (
                f"integrated_rl: valid composite NDCG@{k} {h['ab_value']:.4f} vs production "
                f"{h['ab_production_value']:.4f} ({h['ab_lift']:+.2%}); policy -> {out_dir} "
                "(history.jsonl has the round and its loss curves)"
            )
        last = [r for r in self.policy.history if "step" in r]
        return (
            f"{self.method}: trained on {self.n_rows:,} rows; "
            + (f"final reward {last[-1]['reward']:.4f}, KL {last[-1]['kl']:.3f}; " if last else "")
            + f"policy -> {out_dir} (history.jsonl has every logged step)"
        )


def grade_steps(cfg: GRADEConfig, row: Row | None = None) -> int:
    """Progress of a GRADE fit in units of Stage 1 epochs + Stage 2 steps: the total without
    ``row``, else how far a logged history ``row`` is."""
    total = cfg.stage1.epochs + cfg.stage2.steps
    if row is None:
        return total
    if row.get("stage") == 1:  # a row without an epoch closes Stage 1
        return row["epoch"] + 1 if "epoch" in row else cfg.stage1.epochs
    if "step" in row:
        return cfg.stage1.epochs + row["step"] + 1
    # Stage 2's closing row has its seconds; one before the first step (the value model) has not.
    return cfg.stage1.epochs + (cfg.stage2.steps if "seconds" in row else 0)


def _streamed_train_file(data: Path, mapping: Path | None) -> Path | None:
    """``train.parquet`` of a split directory (train/valid/test) without a column mapping: GRADE
    reads it in record batches, so the log is never loaded whole."""
    if mapping is None and data.is_dir() and all((data / f"{s}.parquet").is_file() for s in SPLITS):
        return data / "train.parquet"
    return None


def _table_splits(table: pa.Table, bench_cfg: LogBenchConfig) -> dict[str, pa.Table]:
    """An in-memory log validated against the contract, then split by time."""
    report = validate_table(table, "the table")
    if not report.ok:
        raise DataError(format_violations(report))
    return split_by_time(report.table, valid_frac=bench_cfg.valid_frac, test_frac=bench_cfg.test_frac,
                         where="the table")


def fit_log(
    method: str,
    data: Path | pa.Table,
    cfg: BaseConfig,
    *,
    mapping: Path | None = None,
    objective: Objective | str | Path | None = None,
    log: Callable[[str], None] = lambda s: None,
    on_row: Callable[[Row], None] | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 50,
    resume: bool = True,
) -> LogFit | None:
    """Fit ``method`` (``cfg``: its config, from :func:`config_type`) on a contract log: a path
    (a train/valid/test directory or one log, split by time) or an in-memory table (split by
    time). ``objective``: an Objective, an objective YAML, or None for the one beside the data
    (else the default). GRADE methods report each history row to ``on_row``. Under DDP every
    rank calls this; rank 0 gets the result, the others None."""
    config_type(method)
    bench_cfg = LogBenchConfig(
        objective=str(objective) if isinstance(objective, (str, Path)) else None
    )
    given = objective if isinstance(objective, Objective) else None
    path = Path(data) if not isinstance(data, pa.Table) else None
    train_file = (
        _streamed_train_file(path, mapping)
        if path is not None and registry.is_grade(method)
        else None
    )
    if train_file is not None:  # GRADE streams train.parquet; the other splits are not read
        validate_log_stream(train_file, cfg.data.read_batch_rows)  # type: ignore[attr-defined]
        splits = {s: pq.read_schema(path / f"{s}.parquet").empty_table() for s in SPLITS}
    elif path is not None:
        splits = load_splits(path, mapping, bench_cfg)
    else:
        splits = _table_splits(data, bench_cfg)
    cols = splits["train"].column_names
    if not any(f"pred_{o}" in cols for o in objectives_of(cols)):
        raise DataError(
            f"{path or 'the table'}: no pred_<objective> columns to fuse; add predictions first "
            "(`blendrank mtl predict`), or compare methods with `blendrank bench --data`, which "
            "fits a baseline predictor"
        )
    goal = log_goal(path, splits, bench_cfg, log=log, objective=given)
    if method == "static_search":
        if not dist.is_main():  # a weight search does not shard: rank 0 alone runs it
            return None
        # tune_static seeds the search from the bench config: carry the method's own seed there.
        res = tune_static(
            splits["valid"],
            goal,
            bench_cfg.model_copy(update={"static_search": cfg, "seed": cfg.seed}),
        )
        weights = StaticWeights(goal.spec(bench_cfg), res.best_weights, res.best_value, cfg)
        return LogFit(method, weights, goal, cfg, splits["valid"].num_rows)
    if method == "integrated_rl":
        return _fit_integrated_rl(splits, goal, cfg, log, checkpoint_dir, checkpoint_every, resume)
    if train_file is not None and goal.objective.fuses_price and goal.objective.price_scale is None:
        goal = replace(
            goal, price_scale=fit_fusion_spec(train_file, goal.behaviours).price_scale
        )  # streamed median
    resolved = registry.grade_config(
        cfg, goal.objective, method, goal.spec(bench_cfg), objectives_of(cols), "price" in cols
    )
    for note in resolved.notes():
        log(f"note: {note}")
    pol = registry.fit_method(resolved, train_file or splits["train"], goal.objective, goal.spec(bench_cfg),
                              log=on_row, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                              resume=resume)
    if not dist.is_main():
        return None
    n_rows = pq.ParquetFile(train_file).metadata.num_rows if train_file is not None else splits["train"].num_rows
    return LogFit(method, pol, goal, resolved.config, n_rows, resolved.notes())


def _fit_integrated_rl(
    splits: dict[str, pa.Table],
    goal: LogGoal,
    cfg: IntegratedRLConfig,
    log: Callable[[str], None],
    checkpoint_dir: Path | None,
    checkpoint_every: int,
    resume: bool,
) -> LogFit | None:
    """One offline round of IntegratedRL-MTF on the train split (a log has no world to explore)."""
    bench = LogBenchConfig()  # the bench's reward metric and fusion floor: `bench --data` judges the same
    setup = LogSetup(goal.behaviours, goal.lam.tolist(),
                     production_log_action(goal.prod, bench.fusion_floor, cfg).tolist(), bench.k, bench.gain)
    pol = fit_integrated_rl_logs(splits["train"], splits["valid"], setup, cfg, floor=bench.fusion_floor, log=log,
                                 checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume)
    if not dist.is_main():
        return None
    return LogFit("integrated_rl", pol, goal, cfg, splits["train"].num_rows)
