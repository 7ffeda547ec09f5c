"""R_prior's calibrated value model: each candidate's expected realised value given what the
model predicts for it.

R_prior values a page by the predictions. Taken at face value, a weak model's errors become the
policy's target (it ranks up what the model over-predicts), and a behaviour the model does not
predict (watch time when it predicts clicks and long views) is worth nothing. The calibrated
model instead fits ``E[y | x]``, where ``y = Σ_k w_k·label_k`` is a logged candidate's realised
value under the objective and ``x`` its predicted value terms and fusion inputs: a ridge
regression on the logged shown candidates, each weighted by ``1/exam(position)`` so that ``y``
is read as if shown first (predictions are position-free). Predictions that do not explain the
logged value get small coefficients; a well-calibrated model keeps ``E[y | x] ≈ Σ_t c_t·x_t``.
It is fitted from streamed sufficient statistics: one pass, any log size.

Shapes: ``N`` requests, ``L`` candidates, ``T`` predicted value terms, ``K`` fusion inputs,
``D = 1 + T + 2K`` regressors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def value_design(term_values: Tensor, inputs: Tensor, floor: float) -> Tensor:
    """``[N, L, D]`` regressors: 1, the predicted terms ``[N, L, T]``, the fusion inputs
    ``[N, L, K]`` and their ``log(x + floor)``."""
    one = torch.ones_like(inputs[..., :1])
    return torch.cat([one, term_values.to(inputs.dtype), inputs, torch.log(inputs.clamp_min(0) + floor)], -1)


@dataclass(frozen=True)
class Moments:
    """Weighted least-squares statistics: ``X'WX [D, D]``, ``X'Wy [D]``, ``y'Wy``, ``Σw``, ``Σw·y``."""

    xtx: Tensor
    xty: Tensor
    yty: float
    w: float
    wy: float

    @classmethod
    def of(cls, design: Tensor, y: Tensor, weight: Tensor) -> Moments:
        """Moments of ``y [N, L]`` on ``design [N, L, D]``, rows weighted by ``weight [N, L]``
        (0 drops a row, e.g. an unshown candidate)."""
        keep = weight > 0
        x, yy, w = design[keep].double(), y[keep].double(), weight[keep].double()
        xw = x * w[:, None]
        return cls(xw.T @ x, xw.T @ yy, float((w * yy * yy).sum()), float(w.sum()), float((w * yy).sum()))

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.xtx + other.xtx, self.xty + other.xty, self.yty + other.yty, self.w + other.w,
                       self.wy + other.wy)


def fit_ridge(m: Moments, ridge: float = 1e-3) -> Tensor:
    """``[D]`` coefficients minimising ``Σ w (y − xβ)² + ridge · Σw · |β[1:]|²`` (intercept free)."""
    penalty = torch.eye(m.xtx.shape[0], dtype=m.xtx.dtype) * ridge * max(m.w, 1e-12)
    penalty[0, 0] = 0.0
    return torch.linalg.lstsq(m.xtx + penalty, m.xty[:, None]).solution[:, 0].float()


def r_squared(m: Moments, beta: Tensor) -> float:
    """Weighted R² of the fit (1 − residual / total sum of squares), from the moments alone."""
    b = beta.double()
    resid = m.yty - 2 * float(b @ m.xty) + float(b @ m.xtx @ b)
    total = m.yty - m.wy**2 / max(m.w, 1e-12)
    return 1.0 - resid / total if total > 0 else 0.0


def predict_value(design: Tensor, beta: Tensor) -> Tensor:
    """``[N, L]`` fitted expected value ``xβ``."""
    return design @ beta.to(design.dtype)
