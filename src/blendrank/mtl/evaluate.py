"""Per-task test metrics of a fitted multi-task model, streamed over a log's shown rows."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from blendrank.data.slates import to_slates
from blendrank.data.stream import SourceLike, as_source
from blendrank.errors import DataError
from blendrank.metrics import auc, gauc
from blendrank.mtl.data import LABEL_PREFIX, POSITION, REQUEST_ID
from blendrank.mtl.predictor import MTLPredictor

__all__ = ["evaluate_mtl"]


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
    source = as_source("test", data)
    layout = predictor.layout
    enc = predictor.encoder()
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
        out_np = predictor.outputs(rb, position).numpy()
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
