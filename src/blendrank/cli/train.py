"""``blendrank train``: fit one fusion method on a contract log and save it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from blendrank import distributed as dist
from blendrank import tracking
from blendrank.algos.grade.config import GRADEConfig
from blendrank.bench import fit
from blendrank.cli.common import (
    ConfigOption,
    SetOption,
    check_writable_dir,
    note_replaced,
    out,
    user_errors,
)
from blendrank.cli.interrupt import keeps_checkpoint_on_interrupt
from blendrank.config import load_config
from blendrank.progress import StepProgress

ResumeOption = typer.Option(
    True, "--resume/--no-resume",
    help="Continue from the checkpoint in --out when one is there (written by an interrupted run of the "
         "same command); --no-resume starts over and overwrites it.")


def checkpoint_every_option(default: int) -> Any:
    return typer.Option(default, "--checkpoint-every", min=1,
                        help="Write a resumable checkpoint (--out/checkpoint.pt, atomic) every N optimiser steps.")


@keeps_checkpoint_on_interrupt  # outermost: Ctrl-C wherever it lands
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
    tensorboard: Path | None = typer.Option(
        None, "--tensorboard", help="Also write the training curves to this TensorBoard log "
        "directory (needs the tensorboard package)."),
    mlflow: bool = typer.Option(
        False, "--mlflow", help="Also log the resolved config and the final metrics to MLflow "
        "(its environment sets the tracking URI; needs the mlflow package)."),
) -> None:
    """Train GRADE (Stage 1 + Stage 2), LTR (Stage 1 only), a static weight search or
    IntegratedRL-MTF (one offline round) on logs.

    Config keys are those of GRADEConfig (grade, ltr), StaticSearchConfig (static_search) or
    IntegratedRLConfig (integrated_rl); `--set stage2.beta=0`, `--set reward.ips=true`, …

    Runs unchanged under `torchrun --nproc_per_node=N` (requests sharded by rank, gradients
    averaged by DDP, rank 0 writes); see docs/scaling.md.
    """
    try:
        _train(method, data, out_dir, mapping, objective, config, overrides, resume,
               checkpoint_every, tensorboard, mlflow)
    finally:
        dist.destroy()


def _train(method: str, data: Path, out_dir: Path, mapping: Path | None, objective: Path | None,
           config: Path | None, overrides: list[str] | None, resume: bool, checkpoint_every: int,
           tensorboard: Path | None = None, mlflow: bool = False) -> None:
    dist.init_from_env()
    main = dist.is_main()
    cfg_type = fit.config_type(method)
    check_writable_dir(out_dir)
    # Validate the config (and the trackers asked for) before touching data, so a typo fails fast.
    cfg = load_config(cfg_type, config, overrides)
    if mlflow:
        tracking.check_mlflow()
    curves = tracking.TensorBoardCurves(tensorboard) if tensorboard is not None and main else None
    say = (lambda s: out.print(s, highlight=False)) if main else (lambda s: None)
    if main:
        note_replaced(out_dir, fit.artifact_files(method))
    total = fit.grade_steps(cfg) if isinstance(cfg, GRADEConfig) else 0
    with StepProgress(method, total, write=say) as bar:  # fit_grade reports to rank 0 only
        def on_row(row: dict) -> None:
            bar.update(fit.grade_steps(cfg, row))
            if curves is not None:
                curves(row)

        result = fit.fit_log(method, data, cfg, mapping=mapping, objective=objective, log=say,
                             on_row=on_row, checkpoint_dir=out_dir,
                             checkpoint_every=checkpoint_every, resume=resume)
    if curves is not None:
        curves.close()
    if result is None:  # not rank 0
        return
    result.save(out_dir)
    resolved = result.config.model_dump(mode="json")
    tracking.write_run_record(out_dir, "train", resolved, resolved.get("seed"), method=method,
                              data=str(data), objective_source=result.goal.source)
    if mlflow:
        tracking.log_mlflow(f"train {method}", {"method": method, **resolved},
                            final_metrics(result), out_dir)
    out.print(result.summary(out_dir))


def final_metrics(result: fit.LogFit) -> dict[str, float]:
    """The last logged value of every numeric training diagnostic (what MLflow records)."""
    metrics: dict[str, float] = {}
    for row in getattr(result.policy, "history", []):
        metrics.update({f"stage{row['stage']}_{k}" if "stage" in row else k: v
                        for k, v in tracking.scalars(row).items()})
    return metrics
