"""``blendrank train``: fit one fusion method on a contract log and save it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from blendrank.cli.common import (
    ConfigOption,
    SetOption,
    check_writable_dir,
    fail,
    note_replaced,
    out,
    user_errors,
)
from blendrank.jsonio import write_json

TRAIN_METHODS = ("grade", "ltr", "static_search", "integrated_rl")

ResumeOption = typer.Option(
    True, "--resume/--no-resume",
    help="Continue from the checkpoint in --out when one is there (written by an interrupted run of the "
         "same command); --no-resume starts over and overwrites it.")


def checkpoint_every_option(default: int) -> Any:
    return typer.Option(default, "--checkpoint-every", min=1,
                        help="Write a resumable checkpoint (--out/checkpoint.pt, atomic) every N optimiser steps.")


@user_errors
def train(
    method: str = typer.Option(..., "--method", help=f"Method: {', '.join(TRAIN_METHODS)}."),
    data: Path = typer.Option(..., "--data", help="Contract log with pred_* columns: a train/valid/test directory or one log (split by time)."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for the trained policy."),
    mapping: Path | None = typer.Option(None, "--mapping", help="YAML column mapping for --data."),
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
        _train(method, data, out_dir, mapping, config, overrides, resume, checkpoint_every)
    finally:
        from blendrank import distributed as dist

        dist.destroy()


def _train(method: str, data: Path, out_dir: Path, mapping: Path | None, config: Path | None,
           overrides: list[str] | None, resume: bool, checkpoint_every: int) -> None:
    from blendrank import distributed as dist

    dist.init_from_env()
    main = dist.is_main()
    if method not in TRAIN_METHODS:
        fail(f"--method {method!r}: choose one of {', '.join(TRAIN_METHODS)}")
    check_writable_dir(out_dir)
    import pyarrow.parquet as pq

    from blendrank.algos.grade.config import GRADEConfig
    from blendrank.algos.integrated_rl.config import IntegratedRLConfig
    from blendrank.algos.static_search.config import StaticSearchConfig
    from blendrank.config import load_config
    from blendrank.data.contract import objectives_of
    from blendrank.bench.logs import SPLITS, LogBenchConfig, load_splits, production_setup

    # Validate the config before touching data, so a typo fails fast.
    cfg_type = {"static_search": StaticSearchConfig, "integrated_rl": IntegratedRLConfig}.get(method, GRADEConfig)
    load_config(cfg_type, config, overrides)
    train_file = _streamed_train_file(data, mapping) if method in ("grade", "ltr") else None
    if train_file is not None:  # GRADE streams train.parquet; the other splits are not read
        from blendrank.algos.grade.data import validate_log_stream

        validate_log_stream(train_file)
        splits = {s: pq.read_schema(data / f"{s}.parquet").empty_table() for s in SPLITS}
    else:
        splits = load_splits(data, mapping, LogBenchConfig())
    cols = splits["train"].column_names
    if not any(f"pred_{o}" in cols for o in objectives_of(cols)):
        fail(f"{data}: no pred_<objective> columns to fuse; add predictions first "
             "(`blendrank mtl predict`), or compare methods with `blendrank bench --data`, which fits a baseline predictor")
    objectives, prod, lam = production_setup(data, splits, LogBenchConfig(), log=lambda s: out.print(s) if main else None)
    if main:
        note_replaced(out_dir, ("static_weights.json",) if method == "static_search" else ("policy.pt", "config.json", "history.jsonl"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if method == "static_search":
        if not main:  # a weight search does not shard: rank 0 alone runs it
            return
        from blendrank.bench.logs import tune_static

        cfg = load_config(StaticSearchConfig, config, overrides)
        res = tune_static(splits["valid"], objectives, prod, lam, LogBenchConfig(static_search=cfg))
        result = {"method": "static_search", "objectives": objectives, "weights": res.best_weights.round(6).tolist(),
                  "valid_composite_ndcg": res.best_value, "config": cfg.model_dump(mode="json")}
        write_json(out_dir / "static_weights.json", result)
        out.print(f"static_search: {dict(zip(objectives, res.best_weights.round(3).tolist()))} "
                  f"(valid composite NDCG {res.best_value:.4f}) -> {out_dir}")
        return
    if method == "integrated_rl":
        _train_integrated_rl(splits, objectives, prod, lam, out_dir, load_config(IntegratedRLConfig, config, overrides),
                             resume, checkpoint_every)
        return
    from blendrank.algos.grade.data import FusionSpec
    from blendrank.algos.grade.trainer import fit_grade
    from blendrank.bench.logs import grade_defaults
    from blendrank.progress import progress_bar

    base = grade_defaults(GRADEConfig(), objectives, lam)
    if method == "ltr":
        base["stage2"]["steps"] = 0
    cfg = load_config(GRADEConfig, config, overrides, base=base)
    with progress_bar() as bar:  # fit_grade reports to rank 0 only
        task = bar.add_task(f"{method}", total=cfg.stage1.epochs + cfg.stage2.steps)
        pol = fit_grade(train_file or splits["train"], cfg, anchor=prod.tolist(), spec=FusionSpec(objectives=objectives),
                        log=lambda row: bar.update(task, completed=row.get("epoch", -1) + 1 if row.get("stage") == 1
                                                   else cfg.stage1.epochs + row.get("step", cfg.stage2.steps) + 1),
                        checkpoint_dir=out_dir, checkpoint_every=checkpoint_every, resume=resume)
    if not main:
        return
    pol.save(out_dir)
    last = [r for r in pol.history if "step" in r]
    n_rows = pq.ParquetFile(train_file).metadata.num_rows if train_file is not None else splits["train"].num_rows
    out.print(f"{method}: trained on {n_rows:,} rows; "
              + (f"final reward {last[-1]['reward']:.4f}, KL {last[-1]['kl']:.3f}; " if last else "")
              + f"policy -> {out_dir} (history.jsonl has every logged step)")


def _streamed_train_file(data: Path, mapping: Path | None) -> Path | None:
    """``train.parquet`` of a split directory (train/valid/test) without a column mapping: GRADE
    reads it in record batches, so the log is never loaded whole."""
    from blendrank.bench.logs import SPLITS

    if mapping is None and data.is_dir() and all((data / f"{s}.parquet").is_file() for s in SPLITS):
        return data / "train.parquet"
    return None


def _train_integrated_rl(splits: dict, objectives: list[str], prod: Any, lam: Any, out_dir: Path, cfg: Any,
                         resume: bool, checkpoint_every: int) -> None:
    """One offline round of IntegratedRL-MTF on the train split (the log has no world to explore)."""
    from blendrank import distributed as dist
    from blendrank.algos.integrated_rl.logs import (
        LogSetup,
        fit_integrated_rl_logs,
        production_log_action,
    )
    from blendrank.bench.logs import LogBenchConfig

    bench = LogBenchConfig()  # the bench's reward metric and fusion floor, so `bench --data` judges the same thing
    setup = LogSetup(objectives, lam.tolist(), production_log_action(prod, bench.fusion_floor, cfg).tolist(), bench.k, bench.gain)
    pol = fit_integrated_rl_logs(splits["train"], splits["valid"], setup, cfg, floor=bench.fusion_floor,
                                 log=lambda s: out.print(s, highlight=False), checkpoint_dir=out_dir,
                                 checkpoint_every=checkpoint_every, resume=resume)
    if not dist.is_main():
        return
    pol.save(out_dir)
    h = pol.history[-1]
    out.print(f"integrated_rl: valid composite NDCG@{bench.k} {h['ab_value']:.4f} vs production {h['ab_production_value']:.4f} "
              f"({h['ab_lift']:+.2%}); policy -> {out_dir} (history.jsonl has the round and its loss curves)")
