"""Expected value of a behaviour the model does not predict, from the ones it does.

An objective can value a behaviour that has logged labels but no ``pred_`` column (watch time
when the MTL predicts clicks and long views, hate when it predicts only positive feedback). For
R_prior to value the whole page, GRADE fits ``E[label | predictions]`` on the logged shown
candidates: a ridge regression on the fused inputs and their logs (the fusion features), fitted
from streamed sufficient statistics, so it is exact for any log size and needs one pass.

Shapes: ``N`` requests, ``L`` candidates, ``K`` fusion inputs, ``D = 1 + 2K`` regressors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def label_design(inputs: Tensor, floor: float) -> Tensor:
    """``[N, L, D]`` regressors of each candidate: 1, its fusion inputs, their ``log(x + floor)``."""
    return torch.cat([torch.ones_like(inputs[..., :1]), inputs, torch.log(inputs.clamp_min(0) + floor)], -1)


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of a least-squares fit: ``X'X [D, D]``, ``X'y [D]``, ``n`` rows."""

    xtx: Tensor
    xty: Tensor
    n: int

    @classmethod
    def of(cls, design: Tensor, label: Tensor, mask: Tensor) -> Moments:
        """Moments of ``label [N, L]`` on ``design [N, L, D]`` over candidates where ``mask``."""
        x = design[mask].double()
        y = label[mask].double()
        return cls(x.T @ x, x.T @ y, int(mask.sum()))

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.xtx + other.xtx, self.xty + other.xty, self.n + other.n)


def fit_ridge(m: Moments, ridge: float = 1e-3) -> Tensor:
    """``[D]`` coefficients minimising ``Σ (y − xβ)² + ridge · n · |β[1:]|²`` (intercept unpenalised)."""
    d = m.xtx.shape[0]
    penalty = torch.eye(d, dtype=m.xtx.dtype) * ridge * max(m.n, 1)
    penalty[0, 0] = 0.0
    return torch.linalg.solve(m.xtx + penalty, m.xty).float()


def predict_label(design: Tensor, beta: Tensor, low: float = 0.0, high: float | None = None) -> Tensor:
    """``[N, L]`` fitted expectation ``xβ``, clipped to the label's range ``[low, high]``."""
    out = design @ beta.to(design.dtype)
    return out.clamp(min=low, max=high)
