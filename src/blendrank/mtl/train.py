"""The ``blendrank mtl`` pipeline: ``train_mtl`` (splits, fit, test metrics, ``metrics.json``)
and ``predict_parquet`` (a log with the model's ``pred_*`` / ``est_*`` columns added)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from blendrank import distributed as dist
from blendrank.data.columns import put_column
from blendrank.data.contract import format_violations, validate_table
from blendrank.data.io import (
    CSV_SUFFIXES,
    MappingLike,
    iter_record_batches,
    map_table,
    parquet_files,
    read_raw,
    resolve_mapping,
    write_parquet,
)
from blendrank.errors import ConfigError, DataError
from blendrank.jsonio import write_json
from blendrank.mtl.config import MTLConfig
from blendrank.mtl.data import DataSplits, resolve_data
from blendrank.mtl.evaluate import evaluate_mtl
from blendrank.mtl.fit import fit_mtl
from blendrank.mtl.model_dir import make_readable
from blendrank.mtl.predictor import EST_PREFIX, PRED_PREFIX, MTLPredictor

METRICS_FILE = "metrics.json"

__all__ = ["METRICS_FILE", "predict_parquet", "train_mtl"]


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
    """``blendrank mtl train``: resolve the splits of ``data``, fit with early stopping on the
    validation split (best model checkpointed into ``out_dir``), evaluate on the test split and
    write ``out_dir/metrics.json``. Returns the predictor and the metrics.

    Resumable (``out_dir/checkpoint.pt``, see :func:`fit_mtl`). Under ``torchrun`` every rank
    trains; rank 0 alone evaluates and writes (other ranks return empty metrics)."""
    config = config or MTLConfig()
    splits: DataSplits = resolve_data(data, config.split, mapping)
    out_dir = Path(out_dir)
    predictor = fit_mtl(splits.train, splits.valid, config, features_file=splits.features_file,
                        checkpoint_dir=out_dir, progress=progress, log=log,
                        checkpoint_every=checkpoint_every, resume=resume, lanes=lanes)
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
    data, out = Path(data), Path(out)
    files = parquet_files(data)
    targets = _output_paths(data, out, files)
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
            make_readable(tmp)
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
    targets = _output_paths(data, out, files)
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


def _output_paths(data: Path, out: Path, files: list[Path]) -> list[Path]:
    """Where each input file's predictions go: ``out`` itself for one file and an ``out`` ending
    in ``.parquet``, else ``out/`` mirroring the input names (CSV names become ``.parquet``)."""
    if data.is_dir():
        targets = [out / f.relative_to(data) for f in files]
    elif out.suffix.lower() in (".parquet", ".pq"):
        targets = [out]
    else:
        targets = [out / data.name]
    targets = [t.with_name(_parquet_name(t.name)) for t in targets]
    inputs = {f.resolve() for f in files}
    clash = [t for t in targets if t.resolve() in inputs]
    if clash:
        raise DataError(f"{clash[0]}: the output would overwrite its input; choose another --out")
    return targets


def _is_csv_path(path: Path) -> bool:
    return path.name.lower().endswith(CSV_SUFFIXES)


def _parquet_name(name: str) -> str:
    """``log.csv.gz`` -> ``log.parquet``; Parquet names unchanged."""
    lower = name.lower()
    for suffix in CSV_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)] + ".parquet"
    return name
