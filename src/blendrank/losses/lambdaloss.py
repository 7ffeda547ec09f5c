"""LambdaLoss (Wang et al., CIKM 2018) over padded request batches, with allRank semantics.

Shapes: ``B`` requests, ``L`` candidate slots per request (padded), ``T`` objectives.
``y_pred [B, L]`` are model scores (higher = ranked higher), ``y_true [B, L]`` graded labels
(>= 0, higher = more relevant), ``mask [B, L]`` True for real candidates. Slots are in any
order; padded slots may hold any value (NaN included) and never enter a pair.

For every pair of real candidates ``(i, j)`` with ``y_i > y_j`` (ranks ``i, j`` 1-based in the
ranking by ``y_pred``) the loss adds ``-w_ij * log2 sigmoid(sigma * (s_i - s_j))``, where the
weight ``w_ij`` comes from the chosen scheme (``G_r = gain(y_r) / maxDCG@k``,
``D_r = log2(1 + r)``):

========================  =====================================================================
``"ndcgLoss1"``           ``G_i / D_i`` (every ordered pair ``i != j``, not only ``y_i > y_j``)
``"ndcgLoss2"``           ``|1/D(|i-j|) - 1/D(|i-j|+1)| * |G_i - G_j|``
``"lambdaRank"``          ``|1/D_i - 1/D_j| * |G_i - G_j|``
``"ndcgLoss2PP"``         ``mu * ndcgLoss2 + lambdaRank``
``"rankNet"``             ``1``
========================  =====================================================================

docs/grade_losses.md lists where we deliberately differ from allRank.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from blendrank.metrics import gain_values

Weighting = Literal["ndcgLoss1", "ndcgLoss2", "ndcgLoss2PP", "lambdaRank", "rankNet"]
Reduction = Literal["mean", "sum", "none"]
Gain = Literal["exp2", "linear"]
Truncation = Literal["both", "either"]

WEIGHTINGS: tuple[str, ...] = ("ndcgLoss1", "ndcgLoss2", "ndcgLoss2PP", "lambdaRank", "rankNet")

__all__ = ["WEIGHTINGS", "lambda_loss", "multi_objective_lambda_loss"]


def _scheme_name(weighting: str) -> str:
    """Accept allRank's ``"<name>_scheme"`` spelling too; reject anything else."""
    name = weighting.removesuffix("_scheme")
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
    return name


def _check(y_pred: Tensor, y_true: Tensor, mask: Tensor | None) -> Tensor:
    if y_pred.dim() != 2 or y_true.shape[-2:] != y_pred.shape or y_pred.shape[1] == 0:
        raise ValueError(
            f"y_pred must be [B, L] (L >= 1) and y_true [B, L] (or [T, B, L]); got "
            f"{tuple(y_pred.shape)} and {tuple(y_true.shape)}"
        )
    if mask is None:
        return torch.ones_like(y_pred, dtype=torch.bool)
    if mask.shape != y_pred.shape:
        raise ValueError(f"mask must be [B, L] like y_pred; got {tuple(mask.shape)}")
    return mask.to(torch.bool)


def _rows(
    y_pred: Tensor,
    y_true: Tensor,
    mask: Tensor,
    *,
    weighting: str,
    k: int | None,
    sigma: float,
    mu: float,
    eps: float,
    gain: str,
    reduction_log: str,
    truncation: str,
) -> tuple[Tensor, Tensor]:
    """Per-request loss and "informative" flag.

    Args:
        y_pred: ``[B, L]`` scores.
        y_true: ``[..., B, L]`` labels (any leading dims, e.g. ``T`` objectives).
        mask: ``[B, L]`` bool.

    Returns:
        ``(loss [..., B], informative [..., B])``; a request is informative when two of its real
        candidates have different labels (otherwise it has no pair and its loss is 0).
    """
    scheme = _scheme_name(weighting)
    if k is not None and (not isinstance(k, int) or k < 1):
        raise ValueError(f"k must be a positive int or None; got {k!r}")
    if truncation not in ("both", "either"):
        raise ValueError(f"truncation must be 'both' or 'either'; got {truncation!r}")
    if reduction_log == "binary":
        log_scale = 1.0 / math.log(2.0)
    elif reduction_log == "natural":
        log_scale = 1.0
    else:
        raise ValueError(f"reduction_log must be 'binary' or 'natural'; got {reduction_log!r}")
    n = y_pred.shape[-1]
    kk = n if k is None else min(k, n)
    dtype = y_pred.dtype if y_pred.is_floating_point() else torch.float32

    # Predicted ranking (stable; padding last) and everything gathered into that order.
    order = y_pred.detach().masked_fill(~mask, float("-inf")).argsort(dim=-1, descending=True, stable=True)
    m = mask.gather(-1, order)  # [B, L]
    s = y_pred.to(dtype).gather(-1, order).where(m, 0.0)  # garbage on padding never propagates
    y_real = y_true.to(dtype).where(mask, 0.0)  # [..., B, L]
    if bool((y_real < 0).any()):
        raise ValueError("labels must be >= 0 on real candidates")
    y = y_real.gather(-1, order.expand_as(y_real))

    # Informative: some pair of real candidates with y_i > y_j exists.
    big = torch.finfo(dtype).max
    informative = y_real.masked_fill(~mask, -big).amax(-1) > y_real.masked_fill(~mask, big).amin(-1)

    # Gains normalised by the ideal DCG@k; discounts D_r = log2(1 + r), r 1-based.
    ranks = torch.arange(1, n + 1, device=y_pred.device, dtype=dtype)
    disc = torch.log2(1.0 + ranks)
    ideal = torch.topk(y_real, kk, dim=-1).values
    max_dcg = (gain_values(ideal, gain) / disc[:kk]).sum(-1, keepdim=True).clamp_min(eps)
    G = gain_values(y, gain) / max_dcg  # [..., B, L]

    def block(rows: slice, cols: slice) -> Tensor:
        """Summed pair losses over ranks ``rows`` x ``cols`` -> ``[..., B]``."""
        s_i, s_j = s[..., rows, None], s[..., None, cols]
        m_i, m_j = m[..., rows, None], m[..., None, cols]
        y_i, y_j = y[..., rows, None], y[..., None, cols]
        G_i, G_j = G[..., rows, None], G[..., None, cols]
        r_i, r_j = ranks[rows, None], ranks[None, cols]
        D_i, D_j = disc[rows, None], disc[None, cols]
        pairs = m_i & m_j & ((r_i != r_j) if scheme == "ndcgLoss1" else (y_i > y_j))
        if scheme == "rankNet":
            w: Tensor | float = 1.0
        elif scheme == "ndcgLoss1":
            w = G_i / D_i
        else:
            dG = (G_i - G_j).abs()
            pos_w = torch.zeros((), dtype=dtype, device=s.device)  # [rows, cols] position term
            if scheme in ("lambdaRank", "ndcgLoss2PP"):
                pos_w = pos_w + (1.0 / D_i - 1.0 / D_j).abs()
            if scheme in ("ndcgLoss2", "ndcgLoss2PP"):
                d = (r_i - r_j).abs()  # 0 on the diagonal, never a pair
                inv = 1.0 / torch.log2(1.0 + d.clamp_min(1.0)) - 1.0 / torch.log2(2.0 + d)
                pos_w = pos_w + (mu if scheme == "ndcgLoss2PP" else 1.0) * inv.abs().where(d > 0, 0.0)
            w = pos_w * dG
        # -log sigmoid(x) = softplus(-x): exact and finite for any score gap.
        pair_loss = F.softplus(-sigma * (s_i - s_j)) * w
        return pair_loss.where(pairs, 0.0).sum((-2, -1))

    # Truncation: "both" keeps ranks <= k on both sides; "either" keeps pairs with min rank <= k,
    # computed as two blocks (top rows x all columns, lower rows x top columns), never L x L.
    top = slice(0, kk)
    per_request = block(top, top) if truncation == "both" else block(top, slice(0, n))
    if truncation == "either" and kk < n:
        per_request = per_request + block(slice(kk, n), top)
    per_request = per_request * log_scale
    return per_request, informative


def _reduce(per_request: Tensor, informative: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return per_request
    if reduction == "sum":
        return per_request.sum(-1)
    if reduction == "mean":
        return per_request.sum(-1) / informative.sum(-1).clamp_min(1).to(per_request.dtype)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")


def lambda_loss(
    y_pred: Tensor,
    y_true: Tensor,
    mask: Tensor | None = None,
    *,
    weighting: Weighting | str = "ndcgLoss2PP",
    k: int | None = None,
    sigma: float = 1.0,
    mu: float = 10.0,
    eps: float = 1e-10,
    reduction: Reduction = "mean",
    gain: Gain = "exp2",
    reduction_log: Literal["binary", "natural"] = "binary",
    truncation: Truncation = "both",
) -> Tensor:
    """LambdaLoss of one label set.

    Args:
        y_pred: ``[B, L]`` scores, higher = ranked higher; differentiable.
        y_true: ``[B, L]`` graded labels >= 0 (e.g. 2 = order, 1 = click, 0 = none).
        mask: ``[B, L]`` bool, True for real candidates (None: all real). Padded slots never
            enter a pair, the ideal DCG or the gradient.
        weighting: ``"ndcgLoss2PP"`` (default), ``"ndcgLoss2"``, ``"lambdaRank"``,
            ``"rankNet"`` or ``"ndcgLoss1"``; allRank's ``"<name>_scheme"`` spelling is accepted.
        k: truncation rank over the *predicted* ranking (also the ideal-DCG cut-off);
            None = the full list.
        sigma: slope of the pairwise sigmoid.
        mu: ndcgLoss2 multiplier in ``"ndcgLoss2PP"``.
        eps: floor of the ideal DCG (a request with no relevant item then has all ``G = 0``).
        reduction: ``"mean"``: sum over each request's pairs, averaged over *informative*
            requests (at least two different labels among real candidates; requests with no
            relevant item give 0 and are left out of the count); ``"sum"``: sum over requests;
            ``"none"``: ``[B]`` per request.
        gain: ``"exp2"`` (``2^y - 1``, allRank) or ``"linear"`` (``y``).
        reduction_log: ``"binary"`` (log2, allRank default) or ``"natural"``.
        truncation: ``"both"`` (allRank): a pair counts only when both ranks are ``<= k``;
            ``"either"`` (TF-Ranking ``topn``): when at least one is, so a relevant candidate
            ranked below ``k`` still gets a gradient.

    Returns:
        Scalar loss (``[B]`` for ``reduction="none"``).
    """
    mask = _check(y_pred, y_true, mask)
    if y_true.dim() != 2:
        raise ValueError(f"y_true must be [B, L]; got {tuple(y_true.shape)}")
    rows, informative = _rows(
        y_pred, y_true, mask, weighting=weighting, k=k, sigma=sigma, mu=mu, eps=eps, gain=gain,
        reduction_log=reduction_log, truncation=truncation,
    )
    return _reduce(rows, informative, reduction)


def multi_objective_lambda_loss(
    y_pred: Tensor,
    labels: Mapping[str, Tensor],
    weights: Mapping[str, float],
    mask: Tensor | None = None,
    *,
    weighting: Weighting | str = "ndcgLoss2PP",
    k: int | None = None,
    sigma: float = 1.0,
    mu: float = 10.0,
    eps: float = 1e-10,
    reduction: Reduction = "mean",
    gain: Gain = "exp2",
    reduction_log: Literal["binary", "natural"] = "binary",
    truncation: Truncation = "both",
) -> Tensor:
    """``sum_t weights[t] * lambda_loss(y_pred, labels[t], mask)`` in one vectorised pass.

    The predicted ranking is sorted once and the ``T`` label sets are stacked, so the cost is
    one ``[T, B, k, k]`` pair tensor, with no Python loop over objectives. With
    ``reduction="mean"`` each objective is averaged over its own informative requests.

    Args:
        y_pred: ``[B, L]`` scores.
        labels: objective name -> ``[B, L]`` labels >= 0.
        weights: objective name -> ``lambda_t``; objectives with weight 0 are skipped, and every
            name must be in ``labels``.
        mask: ``[B, L]`` bool, True for real candidates.
        weighting, k, sigma, mu, eps, reduction, gain, reduction_log, truncation: as in
            :func:`lambda_loss`.

    Returns:
        Scalar loss (``[B]`` for ``reduction="none"``).
    """
    missing = [name for name in weights if name not in labels]
    if missing:
        raise KeyError(f"weights name objectives without labels: {missing}; labels has {list(labels)}")
    names = [name for name, lam in weights.items() if lam != 0]
    if not names:
        zero = y_pred.sum() * 0.0
        return zero.expand(y_pred.shape[0]).clone() if reduction == "none" else zero
    y_true = torch.stack([labels[name] for name in names])  # [T, B, L]
    mask = _check(y_pred, y_true, mask)
    rows, informative = _rows(
        y_pred, y_true, mask, weighting=weighting, k=k, sigma=sigma, mu=mu, eps=eps, gain=gain,
        reduction_log=reduction_log, truncation=truncation,
    )
    lam = torch.tensor([float(weights[n]) for n in names], dtype=rows.dtype, device=rows.device)
    per_objective = _reduce(rows, informative, reduction)  # [T] or [T, B]
    if reduction == "none":
        return (lam[:, None] * per_objective).sum(0)
    return (lam * per_objective).sum()
