"""Fusion formulas and batched top-K: the one torch code path used offline, in worlds and in
training; serving runs their numpy twins (:mod:`blendrank.fusion.numpy_twins`, checked against
these in one parity test).

Shapes: ``B`` requests, ``L`` candidates per request (padded), ``K`` fusion inputs (one per
objective prediction, plus value terms such as price), ``G`` weight vectors per request.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from blendrank.fusion.spec import FORMULAS, Formula  # noqa: F401 - re-exported


def fusion_features(inputs: Tensor, formula: Formula = "log_linear", floor: Tensor | float = 1e-3) -> Tensor:
    """Per-candidate features that the weights combine linearly.

    Args:
        inputs: ``[B, L, K]`` predictions in [0, 1] (and non-negative value terms such as price).
        formula: ``"log_linear"`` gives ``log(x + b_k)``; ``"additive"`` gives ``x`` unchanged.
        floor: ``b_k``, scalar or ``[K]``; keeps ``log`` finite for zero predictions.

    Returns:
        ``[B, L, K]`` features; the fused score is ``features @ w``.
    """
    if formula == "log_linear":
        return torch.log(inputs + floor)
    if formula == "additive":
        return inputs
    raise ValueError(f"unknown fusion formula {formula!r}; choose one of {FORMULAS}")


def fuse(features: Tensor, weights: Tensor) -> Tensor:
    """Fused scores from fusion features and weights.

    Args:
        features: ``[B, L, K]`` from :func:`fusion_features`.
        weights: ``[K]`` (one global vector), ``[B, K]`` (one per request) or ``[B, G, K]``
            (a group of vectors per request).

    Returns:
        ``[B, L]`` for ``[K]`` or ``[B, K]`` weights, ``[B, G, L]`` for ``[B, G, K]`` weights.
    """
    if weights.dim() == 1:
        return features @ weights
    if weights.dim() == 2:
        return torch.bmm(features, weights.unsqueeze(-1)).squeeze(-1)
    if weights.dim() == 3:
        return torch.bmm(weights, features.transpose(1, 2))
    raise ValueError(f"weights must be [K], [B, K] or [B, G, K]; got shape {tuple(weights.shape)}")


def top_k(scores: Tensor, mask: Tensor | None, k: int) -> tuple[Tensor, Tensor]:
    """Indices of the ``k`` best candidates per request, best first.

    Args:
        scores: ``[..., L]`` fused scores.
        mask: ``[B, L]`` (broadcast over any group dim) True for real candidates, or None.
        k: page size; capped at ``L``.

    Returns:
        ``(index, valid)``: ``[..., k']`` candidate indices and a bool mask that is False where a
        request had fewer than ``k'`` real candidates (those slots point at padding).
    """
    k = min(k, scores.shape[-1])
    if mask is not None and not bool(mask.all()):  # a full mask needs no [B, G, L] masked copy
        if mask.dim() < scores.dim():
            mask = mask.unsqueeze(-2).expand_as(scores)
        scores = scores.masked_fill(~mask, float("-inf"))
    values, index = torch.topk(scores, k, dim=-1, sorted=True)
    return index, torch.isfinite(values)


def position_discount(k: int, kind: Literal["log2", "none"] = "log2", dtype=torch.float32) -> Tensor:
    """``[k]`` discount per shown position (1-based): ``1/log2(pos+1)`` or all ones."""
    pos = torch.arange(1, k + 1, dtype=dtype)
    if kind == "log2":
        return 1.0 / torch.log2(pos + 1.0)
    if kind == "none":
        return torch.ones(k, dtype=dtype)
    raise ValueError(f"unknown discount {kind!r}")


def normalize_simplex(weights: Tensor, eps: float = 1e-12) -> Tensor:
    """Project non-negative weights ``[..., K]`` onto the simplex (sum 1)."""
    weights = weights.clamp_min(0.0)
    return weights / weights.sum(-1, keepdim=True).clamp_min(eps)
