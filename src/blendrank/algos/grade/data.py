"""Contract rows → per-request tensors for fusion policies (one code path for logs, worlds and
serving): policy inputs (user/context features), fusion inputs, labels and logged positions.

Shapes: ``B`` requests, ``L`` candidates (padded), ``K`` fusion inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field
from torch import Tensor

from blendrank.config import BaseConfig
from blendrank.data.contract import objectives_of
from blendrank.data.slates import to_slates
from blendrank.errors import DataError
from blendrank.features.center import FeatureCenter, FeatureSchema
from blendrank.fusion.formulas import Formula, fusion_features
from blendrank.fusion.state import list_stats

POLICY_ROLES = ("user", "context")


class FusionSpec(BaseConfig):
    """Which columns are fused and how; fitted on the training split and saved with a policy."""

    objectives: list[str] = Field(description="Objectives whose pred_<name> are fusion inputs, in order.")
    use_price: bool = Field(False, description="Add price / price_scale as the last fusion input.")
    price_scale: float = Field(1.0, gt=0, description="Median training price (price inputs are relative to it).")
    formula: Formula = Field("log_linear", description="Fusion formula.")
    floor: float = Field(1e-3, gt=0, description="Floor b_k inside log(x + b_k).")
    stats_top: int = Field(10, ge=1, description="Top-N size of the list statistics in the state.")

    @property
    def inputs(self) -> list[str]:
        return [*self.objectives, *(["price"] if self.use_price else [])]

    @classmethod
    def fit(cls, table: pa.Table, objectives: list[str] | None = None, **kw) -> FusionSpec:
        cols = table.column_names
        objs = objectives or [o for o in objectives_of(cols) if f"pred_{o}" in cols]
        missing = [o for o in objs if f"pred_{o}" not in cols]
        if not objs or missing:
            raise DataError(f"fusion needs pred_<objective> columns; missing {missing or 'all'} "
                            "(run `blendrank mtl predict` first, or use a log with predictions)")
        use_price = "price" in cols
        scale = float(np.median(table["price"].to_numpy(zero_copy_only=False))) if use_price else 1.0
        return cls(objectives=objs, use_price=use_price, price_scale=max(scale, 1e-6), **kw)


@dataclass(frozen=True)
class RequestBatch:
    """A batch of requests for a fusion policy."""

    cat: Tensor  # [B, n_cat] int64 user/context categoricals
    num: Tensor  # [B, n_num] float32 user/context numerics
    inputs: Tensor  # [B, L, K] raw fusion inputs (predictions, relative price)
    features: Tensor  # [B, L, K] fusion features (log(x + b) or x)
    stats: Tensor  # [B, 4K] list statistics of the features
    mask: Tensor  # [B, L] real candidates
    shown: Tensor  # [B, L] logged as shown (position not null)
    position: Tensor  # [B, L] logged 1-based position, 0 when not shown
    labels: dict[str, Tensor]  # objective -> [B, L]
    price: Tensor  # [B, L] (ones when the log has no price)
    request_id: np.ndarray  # [B]

    def __len__(self) -> int:
        return self.cat.shape[0]

    def index(self, idx: Tensor | np.ndarray | slice) -> RequestBatch:
        """Sub-batch of requests ``idx``."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, dict):
                out[f.name] = {k: t[idx] for k, t in v.items()}
            elif isinstance(v, np.ndarray):
                out[f.name] = v[idx.numpy() if isinstance(idx, Tensor) else idx]
            else:
                out[f.name] = v[idx]
        return replace(self, **out)


def fit_policy_features(table: pa.Table) -> FeatureCenter:
    """Feature Center over the user/context ``f_*`` columns of the training split."""
    schema = FeatureSchema.infer(table)
    return FeatureCenter.fit(table, FeatureSchema(features=schema.select(POLICY_ROLES)))


def build_batch(table: pa.Table, spec: FusionSpec, center: FeatureCenter) -> RequestBatch:
    """Group contract rows into a :class:`RequestBatch` (requests in first-appearance order,
    candidates by logged position, then row order)."""
    labels = [o for o in objectives_of(table.column_names)]
    cols = [f"pred_{o}" for o in spec.objectives] + [f"label_{o}" for o in labels]
    extra = [c for c in ("position", "price") if c in table.column_names]
    sl = to_slates(table, cols + extra)
    first = table.take(pa.array(sl.row[:, 0]))
    fb = center.transform(first, roles=POLICY_ROLES)
    pos = torch.nan_to_num(sl.columns["position"], nan=0.0) if "position" in sl.columns else torch.zeros_like(sl.mask, dtype=torch.float32)
    price = sl.columns["price"] if "price" in sl.columns else torch.ones_like(pos)
    parts = [sl.columns[f"pred_{o}"] for o in spec.objectives]
    if spec.use_price:
        if "price" not in sl.columns:
            raise DataError("this policy fuses price but the data has no price column")
        parts.append(price / spec.price_scale)
    inputs = torch.stack(parts, -1)
    label_map = {o: sl.columns[f"label_{o}"] for o in labels}
    if "order" in label_map and "gmv" not in label_map and "price" in sl.columns:
        # GMV-graded label for R_post / Stage 1 (linear gain): relative price of ordered items.
        label_map["gmv"] = label_map["order"] * price / spec.price_scale
    feats = fusion_features(inputs, spec.formula, spec.floor).masked_fill(~sl.mask.unsqueeze(-1), 0.0)
    return RequestBatch(
        cat=torch.from_numpy(fb.categorical), num=torch.from_numpy(fb.numeric), inputs=inputs, features=feats,
        stats=list_stats(feats, sl.mask, spec.stats_top), mask=sl.mask,
        shown=(pos > 0) & sl.mask, position=pos, labels=label_map,
        price=price, request_id=sl.request_id,
    )
