"""``blendrank mtl …``: train the multi-task model (MMoE / PLE / shared-bottom) and add its
predictions to contract Parquet."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import typer
from rich.table import Table

from blendrank.cli.common import (
    ConfigOption,
    SetOption,
    check_writable_dir,
    note_replaced,
    out,
    user_errors,
)
from blendrank.cli.interrupt import keeps_checkpoint_on_interrupt
from blendrank.cli.train import ResumeOption, checkpoint_every_option
from blendrank.errors import ConfigError

MappingOption = typer.Option(
    None,
    "--mapping",
    help="YAML column mapping for --data (docs/data_contract.md); the log is then read whole.",
)

app = typer.Typer(
    help="Multi-task models (MMoE, PLE, shared-bottom): train on contract logs, add pred_* columns.",
    no_args_is_help=True,
)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _metrics_table(test: dict[str, dict[str, object]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in (
        "objective",
        "kind",
        "n",
        "AUC",
        "GAUC",
        "GAUC requests",
        "log-loss",
        "rate",
        "mean pred",
    ):
        table.add_column(col, justify="left" if col in ("objective", "kind") else "right")
    for name, m in test.items():
        if m.get("kind") == "regression":
            table.add_row(
                name,
                "regression",
                f"{m['n']:,}",
                "-",
                "-",
                "-",
                f"rmse(log1p) {_fmt(m['rmse_log1p'])}",
                "-",
                f"r={_fmt(m['pearson_log1p'])}",
            )
            continue
        table.add_row(
            name,
            str(m.get("kind")),
            f"{m['n']:,}",
            _fmt(m.get("auc", math.nan)),
            _fmt(m.get("gauc", math.nan)),
            f"{m.get('gauc_requests', 0):,}",
            _fmt(m.get("logloss", math.nan)),
            _fmt(m.get("rate", math.nan)),
            _fmt(m.get("mean_pred", math.nan)),
        )
    return table


def _undefined_auc_notes(test: dict[str, dict[str, object]]) -> list[str]:
    """Say why an AUC is '-': a constant test label has no positive/negative pair to order."""
    notes = []
    for name, m in test.items():
        auc = m.get("auc")
        if m.get("kind") == "regression" or not (isinstance(auc, float) and math.isnan(auc)):
            continue
        rate = m.get("rate")
        why = (f"every test label is {rate:g}" if isinstance(rate, float) and rate in (0.0, 1.0)
               else "no test rows with both outcomes")
        notes.append(f"note: AUC/GAUC of {name} undefined ({why}); reported as NaN in metrics.json, "
                     "not 0.5")
    return notes


@app.command("train")
@keeps_checkpoint_on_interrupt  # outermost: Ctrl-C wherever it lands
@user_errors
def train(
    data: Path = typer.Option(
        ...,
        "--data",
        help="Directory with train/valid/test logs, or one log: a Parquet file, a directory of "
        "shards, or CSV(.gz) (split 70/15/15 by request time, or by the mapping's test_where).",
    ),
    out_dir: Path = typer.Option(..., "--out", help="Output directory (model, metrics.json)."),
    mapping: Path | None = MappingOption,
    model: str | None = typer.Option(
        None, "--model", help="Architecture: mmoe (default), ple or shared_bottom."
    ),
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    seed: int | None = typer.Option(None, "--seed", help="Seed (overrides the config's seed)."),
    quiet: bool = typer.Option(False, "--quiet", help="No per-epoch lines."),
    resume: bool = ResumeOption,
    checkpoint_every: int = checkpoint_every_option(500),
    lanes: int | None = typer.Option(
        None, "--lanes", min=1,
        help="Data lanes (default: the number of processes). Runs with the same lanes train "
        "identically whatever the number of processes (a multiple of it).",
    ),
) -> None:
    """Train an MTL model with early stopping on validation loss; write the best model and
    test metrics (per-task AUC and GAUC) to --out.

    Runs unchanged under `torchrun --nproc_per_node=N` (record batches sharded by rank, DDP,
    rank 0 evaluates and writes); see docs/scaling.md."""
    from blendrank import distributed as dist

    dist.init_from_env()
    try:
        _train(data, out_dir, mapping, model, config, set_, seed, quiet, resume, checkpoint_every,
               lanes)
    finally:
        dist.destroy()


def _train(data: Path, out_dir: Path, mapping: Path | None, model: str | None,
           config: Path | None, set_: list[str] | None,
           seed: int | None, quiet: bool, resume: bool, checkpoint_every: int, lanes: int | None) -> None:
    from blendrank import distributed as dist
    from blendrank.config import load_config
    from blendrank.mtl.config import MODEL_NAMES, MTLConfig
    from blendrank.mtl.predictor import WEIGHTS_FILE
    from blendrank.mtl.train import METRICS_FILE, train_mtl

    check_writable_dir(out_dir)
    overrides: list[str] = []
    if model is not None:
        if model not in MODEL_NAMES:
            raise ConfigError(f"--model {model!r}: expected one of {', '.join(MODEL_NAMES)}")
        overrides.append(f"model={model}")
    if seed is not None:
        overrides.append(f"seed={seed}")
    cfg = load_config(MTLConfig, config, overrides + list(set_ or []))
    note_replaced(out_dir, (WEIGHTS_FILE, METRICS_FILE), "from the first epoch that improves")
    log = None if quiet else (lambda msg: out.print(msg, highlight=False))
    _, metrics = train_mtl(
        data, out_dir, cfg, log=log, checkpoint_every=checkpoint_every, resume=resume, lanes=lanes,
        mapping=mapping,
    )
    if not dist.is_main():
        return
    tr = metrics["training"]
    out.print(
        f"{cfg.model}: {tr['epochs']} epoch(s), best {tr['best_epoch']} "
        f"(valid loss {_fmt(tr['best_valid_loss'])}), {tr['train_rows_per_epoch']:,} training "
        f"impressions per epoch, {tr['impressions_per_s']:,.0f} impressions/s",
        highlight=False,
    )
    out.print(_metrics_table(metrics["test"], "test (predictions as served: position 1)"))
    for note in _undefined_auc_notes(metrics["test"]):
        out.print(note, highlight=False)
    if metrics.get("test_as_shown"):
        out.print(
            _metrics_table(metrics["test_as_shown"], "test, as shown (with the position tower)")
        )
    out.print(f"wrote the model and {METRICS_FILE} to {out_dir}", highlight=False)


@app.command("predict")
@user_errors
def predict(
    model_dir: Path = typer.Option(..., "--model", help="Directory written by `mtl train`."),
    data: Path = typer.Option(
        ..., "--data", help="Log to score: a Parquet file, a directory of shards, or CSV(.gz)."
    ),
    out_path: Path = typer.Option(
        ...,
        "--out",
        help="Output directory (mirrors the input's shards), or a .parquet file for a file input.",
    ),
    mapping: Path | None = MappingOption,
    batch_rows: int = typer.Option(65_536, "--batch-rows", min=1, help="Rows per record batch."),
) -> None:
    """Add pred_<objective> (probabilities) and est_<objective> (regression) columns to every
    row, streaming batch by batch; each output shard is written atomically (as Parquet).

    With --mapping or a CSV input the log is read whole and mapped; the columns are added to
    the rows as stored, so the same mapping reads the output."""
    import pyarrow.parquet as pq

    from blendrank.data.io import parquet_files
    from blendrank.mtl.data import loads_whole
    from blendrank.mtl.predictor import MTLPredictor
    from blendrank.mtl.train import predict_log, predict_parquet
    from blendrank.progress import progress_bar

    file_out = data.is_file() and out_path.suffix.lower() in (".parquet", ".pq")
    check_writable_dir(out_path.parent if file_out else out_path)
    predictor = MTLPredictor.load(model_dir)
    cols = [f"pred_{o}" for o in predictor.objectives] + [f"est_{o}" for o in predictor.regression]
    if loads_whole(data, mapping):
        paths = predict_log(predictor, data, out_path, mapping, batch_rows=batch_rows)
        out.print(
            f"added {', '.join(cols)} to {len(paths)} file(s) -> {out_path}", highlight=False
        )
        return
    total = 0
    for f in parquet_files(data):
        with contextlib.suppress(Exception):  # unreadable files are reported by predict_parquet
            total += pq.ParquetFile(f).metadata.num_rows
    with progress_bar() as bar:
        task = bar.add_task("predicting", total=total or None)
        paths = predict_parquet(
            predictor,
            data,
            out_path,
            batch_rows=batch_rows,
            on_batch=lambda n: bar.update(task, advance=n),
        )
    out.print(
        f"added {', '.join(cols)} to {total:,} rows in {len(paths)} file(s) -> {out_path}",
        highlight=False,
    )
