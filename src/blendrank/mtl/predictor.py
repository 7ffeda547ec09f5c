"""The fitted multi-task model (MMoE / PLE / shared-bottom) as a predictor, and its directory.

``MTLPredictor`` mirrors :class:`blendrank.mtl.logistic.LogisticPredictor` (``predict`` /
``add_predictions`` / ``save`` / ``load``), so callers can use either. It is fitted by
:func:`blendrank.mtl.fit.fit_mtl`.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from blendrank.data.columns import put_column
from blendrank.errors import DataError
from blendrank.features.center import FeatureCenter
from blendrank.jsonio import read_json
from blendrank.mtl.config import MTLConfig
from blendrank.mtl.data import Encoder
from blendrank.mtl.model_dir import CENTER_FILE, CONFIG_FILE, read_meta, save_model_dir
from blendrank.mtl.models import MTLNetwork, NetworkSpec, TaskLayout

PRED_PREFIX = "pred_"
EST_PREFIX = "est_"
FILE_FORMAT = "blendrank.mtl"
FILE_VERSION = 1
WEIGHTS_FILE = "model.pt"
#: Rows per forward pass when predicting (bounds the activations' memory).
PREDICT_BATCH = 65_536

__all__ = ["EST_PREFIX", "PRED_PREFIX", "WEIGHTS_FILE", "MTLPredictor"]


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

    def encoder(self) -> Encoder:
        return Encoder(self.center, self.layout, self.target_moments, use_position=True)

    @torch.no_grad()
    def _forward(
        self, table: pa.Table | pa.RecordBatch, position: bool
    ) -> tuple[Tensor, Tensor | None]:
        enc = self.encoder()
        cat, num = enc.features(table)
        pos = enc.position(table) if position else None
        self.model.eval()
        dev = self.device
        n, t = cat.shape[0], self.model.n_tasks
        out = torch.empty((n, t), dtype=torch.float32)
        off: Tensor | None = None
        for start in range(0, n, PREDICT_BATCH):
            sl = slice(start, start + PREDICT_BATCH)
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

    def outputs(self, table: pa.Table | pa.RecordBatch, position: bool = False) -> Tensor:
        """Task outputs ``[N, T]`` (probabilities; regression tasks standardised)."""
        raw, off = self._forward(table, position)
        return self.model.outputs(raw, off)

    def predict(
        self, table: pa.Table | pa.RecordBatch, *, position: bool = False
    ) -> dict[str, np.ndarray]:
        """``{objective: float32 probabilities [N]}`` for every row (shown or not), predicted as
        if at position 1 (``position=True``: at the row's logged position, where it has one)."""
        out = self.outputs(table, position).numpy()
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
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return save_model_dir(directory, weights_file=WEIGHTS_FILE, state=state,
                              center=self.center, config=self.config, meta=meta)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> MTLPredictor:
        """Read a directory written by :meth:`save`; DataError when it is incomplete or foreign."""
        directory = Path(directory)
        if not directory.is_dir():
            raise DataError(f"{directory}: no such model directory")
        meta = read_meta(directory, weights_file=WEIGHTS_FILE, file_format=FILE_FORMAT,
                         version=FILE_VERSION, what="a saved MTL model",
                         fix="; train one with `blendrank mtl train`")
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
