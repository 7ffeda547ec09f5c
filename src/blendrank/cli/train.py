"""``blendrank train``: fit one fusion method on a contract log and save it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import typer

from blendrank import distributed as dist
from blendrank.algos.grade.config import GRADEConfig
from blendrank.algos.grade.data import fit_fusion_spec, validate_log_stream
from blendrank.algos.integrated_rl.config import IntegratedRLConfig
from blendrank.algos.integrated_rl.logs import (
    LogSetup,
    fit_integrated_rl_logs,
    production_log_action,
)
from blendrank.algos.static_search.config import StaticSearchConfig
from blendrank.bench import registry
from blendrank.bench.logs import SPLITS, LogBenchConfig, LogGoal, load_splits, log_goal, tune_static
from blendrank.cli.common import (
    ConfigOption,
    SetOption,
    check_writable_dir,
    fail,
    note_replaced,
    out,
    user_errors,
)
from blendrank.config import load_config
from blendrank.data.contract import objectives_of
from blendrank.jsonio import write_json
from blendrank.objective import OBJECTIVE_FILE
from blendrank.progress import progress_bar

ResumeOption = typer.Option(
    True, "--resume/--no-resume",
    help="Continue from the checkpoint in --out when one is there (written by an interrupted run of the "
         "same command); --no-resume starts over and overwrites it.")


def checkpoint_every_option(default: int) -> Any:
    return typer.Option(default, "--checkpoint-every", min=1,
                        help="Write a resumable checkpoint (--out/checkpoint.pt, atomic) every N optimiser steps.")


@user_errors
def train(
    method: str = typer.Option(..., "--method", help="Method: grade, ltr, grade:<variant>, static_search or "
                               "integrated_rl (`blendrank methods` lists them)."),
    data: Path = typer.Option(..., "--data", help="Contract log with pred_* columns: a train/valid/test directory or one log (split by time)."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for the trained policy."),
    mapping: Path | None = typer.Option(None, "--mapping", help="YAML column mapping for --data."),
    objective: Path | None = typer.Option(
        None, "--objective", help="Objective YAML (value, guard rails, production weights; docs/objective.md). "
        "Default: objective.yaml beside --data, else the default it names."),
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    resume: bool = ResumeOption,
    checkpoint_every: int = checkpoint_every_option(50),
) -> None:
    """Train GRADE (Stage 1 + Stage 2), LTR (Stage 1 only), a static weight search or
    IntegratedRL-MTF (one offline round) on logs.

    Config keys are those of GRADEConfig (grade, ltr), StaticSearchConfig (static_search) or
    IntegratedRLConfig (integrated_rl); `--set stage2.beta=0`, `--set reward.ips=true`, …

    Runs unchanged under `torchrun --nproc_per_node=N` (requests sharded by rank, gradients
    averaged by DDP, rank 0 writes); see docs/scaling.md.
    """
    try:
        _train(method, data, out_dir, mapping, objective, config, overrides, resume, checkpoint_every)
    finally:
        dist.destroy()


def _train(method: str, data: Path, out_dir: Path, mapping: Path | None, objective: Path | None,
           config: Path | None, overrides: list[str] | None, resume: bool, checkpoint_every: int) -> None:
    dist.init_from_env()
    main = dist.is_main()
    if method not in registry.available("train"):
        fail(f"--method {method!r}: choose one of {', '.join(registry.available('train'))}")
    check_writable_dir(out_dir)
    # Validate the config before touching data, so a typo fails fast.
    cfg_type = {"static_search": StaticSearchConfig, "integrated_rl": IntegratedRLConfig}.get(method, GRADEConfig)
    cfg = load_config(cfg_type, config, overrides)
    bench_cfg = LogBenchConfig(objective=str(objective) if objective else None)
    train_file = _streamed_train_file(data, mapping) if registry.is_grade(method) else None
    if train_file is not None:  # GRADE streams train.parquet; the other splits are not read
        validate_log_stream(train_file)
        splits = {s: pq.read_schema(data / f"{s}.parquet").empty_table() for s in SPLITS}
    else:
        splits = load_splits(data, mapping, bench_cfg)
    cols = splits["train"].column_names
    if not any(f"pred_{o}" in cols for o in objectives_of(cols)):
        fail(f"{data}: no pred_<objective> columns to fuse; add predictions first "
             "(`blendrank mtl predict`), or compare methods with `blendrank bench --data`, which fits a baseline predictor")
    say = (lambda s: out.print(s, highlight=False)) if main else (lambda s: None)
    goal = log_goal(data, splits, bench_cfg, log=say)
    if main:
        note_replaced(out_dir, ("static_weights.json",) if method == "static_search" else ("policy.pt", "config.json", "history.jsonl"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if method == "static_search":
        if not main:  # a weight search does not shard: rank 0 alone runs it
            return
        res = tune_static(splits["valid"], goal, bench_cfg.model_copy(update={"static_search": cfg}))
        result = {"method": "static_search", "objectives": goal.inputs, "weights": res.best_weights.round(6).tolist(),
                  "valid_composite_ndcg": res.best_value, "config": cfg.model_dump(mode="json")}
        write_json(out_dir / "static_weights.json", result)
        (out_dir / OBJECTIVE_FILE).write_text(goal.objective.to_yaml())
        out.print(f"static_search: {dict(zip(goal.inputs, res.best_weights.round(3).tolist()))} "
                  f"(valid composite NDCG {res.best_value:.4f}) -> {out_dir}")
        return
    if method == "integrated_rl":
        _train_integrated_rl(splits, goal, out_dir, cfg, resume, checkpoint_every)
        return
    if train_file is not None and goal.objective.fuses_price and goal.objective.price_scale is None:
        goal = replace(goal, price_scale=fit_fusion_spec(train_file, goal.behaviours).price_scale)  # streamed median
    source = train_file or splits["train"]
    has_price = "price" in cols
    resolved = registry.grade_config(cfg, goal.objective, method, goal.spec(bench_cfg), objectives_of(cols), has_price)
    for note in resolved.notes():
        say(f"note: {note}")
    gcfg = resolved.config
    with progress_bar() as bar:  # fit_grade reports to rank 0 only
        task = bar.add_task(f"{method}", total=gcfg.stage1.epochs + gcfg.stage2.steps)
        pol = registry.fit_method(
            resolved, source, goal.objective, goal.spec(bench_cfg),
            log=lambda row: bar.update(task, completed=row.get("epoch", -1) + 1 if row.get("stage") == 1
                                       else gcfg.stage1.epochs + row.get("step", gcfg.stage2.steps) + 1),
            checkpoint_dir=out_dir, checkpoint_every=checkpoint_every, resume=resume)
    if not main:
        return
    pol.save(out_dir)
    (out_dir / OBJECTIVE_FILE).write_text(goal.objective.to_yaml())
    last = [r for r in pol.history if "step" in r]
    n_rows = pq.ParquetFile(train_file).metadata.num_rows if train_file is not None else splits["train"].num_rows
    out.print(f"{method}: trained on {n_rows:,} rows; "
              + (f"final reward {last[-1]['reward']:.4f}, KL {last[-1]['kl']:.3f}; " if last else "")
              + f"policy -> {out_dir} (history.jsonl has every logged step)")


def _streamed_train_file(data: Path, mapping: Path | None) -> Path | None:
    """``train.parquet`` of a split directory (train/valid/test) without a column mapping: GRADE
    reads it in record batches, so the log is never loaded whole."""
    if mapping is None and data.is_dir() and all((data / f"{s}.parquet").is_file() for s in SPLITS):
        return data / "train.parquet"
    return None


def _train_integrated_rl(splits: dict, goal: LogGoal, out_dir: Path, cfg: IntegratedRLConfig,
                         resume: bool, checkpoint_every: int) -> None:
    """One offline round of IntegratedRL-MTF on the train split (the log has no world to explore)."""
    bench = LogBenchConfig()  # the bench's reward metric and fusion floor, so `bench --data` judges the same thing
    setup = LogSetup(goal.behaviours, goal.lam.tolist(), production_log_action(goal.prod, bench.fusion_floor, cfg).tolist(),
                     bench.k, bench.gain)
    pol = fit_integrated_rl_logs(splits["train"], splits["valid"], setup, cfg, floor=bench.fusion_floor,
                                 log=lambda s: out.print(s, highlight=False), checkpoint_dir=out_dir,
                                 checkpoint_every=checkpoint_every, resume=resume)
    if not dist.is_main():
        return
    pol.save(out_dir)
    (out_dir / OBJECTIVE_FILE).write_text(goal.objective.to_yaml())
    h = pol.history[-1]
    out.print(f"integrated_rl: valid composite NDCG@{bench.k} {h['ab_value']:.4f} vs production {h['ab_production_value']:.4f} "
              f"({h['ab_lift']:+.2%}); policy -> {out_dir} (history.jsonl has the round and its loss curves)")
