"""Pure, vectorised ranking metrics over padded request batches, plus bootstrap CIs.

Shapes: ``B`` requests, ``L`` candidate slots per request (padded). Every metric takes
``scores [B, L]`` (higher = ranked higher), ``labels [B, L]`` (binary or graded, >= 0) and
``mask [B, L]`` (True = real candidate; None = all real). Padded slots may hold any value,
NaN included: they never change a result. Conventions (gain, ties, empty requests, GAUC
weighting) are explicit parameters; docs/metrics.md explains each and its default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

Gain = Literal["exp2", "linear"]
Ties = Literal["average", "sort"]
Empty = Literal["skip", "zero", "one"]
Weighting = Literal["uniform", "impressions"]
ArrayLike = Tensor | np.ndarray | Sequence[float]

__all__ = [
    "MetricResult",
    "auc",
    "bootstrap_ci",
    "dcg_at_k",
    "gauc",
    "mrr",
    "ndcg_at_k",
    "ndcg_of_ranking",
    "paired_bootstrap_rel_lift",
]


@dataclass(frozen=True)
class MetricResult:
    """A per-request metric and its summary.

    Attributes:
        per_request: ``[B]`` value per request; NaN where the request was skipped.
        mean: mean over used requests (weighted for ``gauc(weighting="impressions")``);
            NaN when no request was used.
        n_used: requests that entered ``mean``.
        n_skipped: requests left out (no real candidate, empty, single-class, ...).
    """

    per_request: Tensor
    mean: float
    n_used: int
    n_skipped: int


# ---------------------------------------------------------------------------------------------
# internals


def _check(scores: Tensor, labels: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Validated ``(labels, mask)``: labels as float of the scores' dtype, zero on padding."""
    if scores.dim() != 2 or labels.shape != scores.shape or scores.shape[1] == 0:
        raise ValueError(
            f"scores and labels must both be [B, L] with L >= 1; got {tuple(scores.shape)} and "
            f"{tuple(labels.shape)}"
        )
    mask = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    if mask.shape != scores.shape:
        raise ValueError(f"mask must be [B, L] like scores; got {tuple(mask.shape)}")
    dtype = scores.dtype if scores.is_floating_point() else torch.float32
    labels = labels.to(dtype).where(mask, 0.0)
    if bool((labels < 0).any()):
        raise ValueError("labels must be >= 0 on real candidates")
    return labels, mask


def _check_k(k: int | None) -> None:
    if k is not None and (not isinstance(k, int) or k < 1):
        raise ValueError(f"k must be a positive int or None; got {k!r}")


def _order(scores: Tensor, mask: Tensor, descending: bool = True) -> Tensor:
    """``[B, L]`` slot indices: real candidates sorted by score (stable), then padding."""
    order = scores.argsort(dim=-1, descending=descending, stable=True)
    pads_last = (~mask).gather(-1, order).to(torch.uint8).argsort(dim=-1, stable=True)
    return order.gather(-1, pads_last)


def _tie_starts(sorted_scores: Tensor, sorted_mask: Tensor) -> Tensor:
    """``[B, L]`` True where a tie group starts (score or real/padding status changes)."""
    start = torch.ones_like(sorted_mask)
    start[:, 1:] = (sorted_scores[:, 1:] != sorted_scores[:, :-1]) | (
        sorted_mask[:, 1:] != sorted_mask[:, :-1]
    )
    return start


def _group_mean(values: Tensor, starts: Tensor) -> Tensor:
    """Replace each value by the mean over its contiguous group (groups begin at ``starts``)."""
    gid = starts.long().cumsum(-1) - 1
    sums = torch.zeros_like(values).scatter_add_(-1, gid, values)
    counts = torch.zeros_like(values).scatter_add_(-1, gid, torch.ones_like(values))
    return (sums / counts.clamp_min(1)).gather(-1, gid)


def gain_values(labels: Tensor, gain: Gain | str) -> Tensor:
    """NDCG gain of graded labels: ``2^y - 1`` (exp2) or ``y`` (linear); shared by metrics, LambdaLoss and R_post."""
    if gain == "exp2":
        return torch.exp2(labels) - 1.0
    if gain == "linear":
        return labels
    raise ValueError(f"gain must be 'exp2' or 'linear'; got {gain!r}")


def _discount(n: int, k: int | None, like: Tensor) -> Tensor:
    """``[n]`` ``1/log2(pos + 2)`` for 0-based positions ``pos < k``, zero after."""
    pos = torch.arange(n, device=like.device, dtype=like.dtype)
    disc = 1.0 / torch.log2(pos + 2.0)
    return disc if k is None else disc.where(pos < k, 0.0)


def _result(values: Tensor, used: Tensor, weights: Tensor | None = None) -> MetricResult:
    n_used = int(used.sum())
    w = used.to(values.dtype) if weights is None else weights.to(values.dtype) * used
    total = w.sum()
    mean = float((values.where(used, 0.0) * w).sum() / total) if n_used else math.nan
    per_request = values.where(used, torch.full_like(values, math.nan))
    return MetricResult(per_request, mean, n_used, values.shape[0] - n_used)


def _normalise(dcg: Tensor, idcg: Tensor, empty: Empty) -> MetricResult:
    """NDCG from DCG and ideal DCG; ``idcg == 0`` (no relevant item) follows ``empty``."""
    if empty not in ("skip", "zero", "one"):
        raise ValueError(f"empty must be 'skip', 'zero' or 'one'; got {empty!r}")
    is_empty = idcg <= 0
    fill = 1.0 if empty == "one" else 0.0
    values = torch.where(is_empty, fill, dcg / idcg.where(~is_empty, 1.0))
    return _result(values, ~is_empty if empty == "skip" else torch.ones_like(is_empty))


# ---------------------------------------------------------------------------------------------
# ranking metrics


def dcg_at_k(
    scores: Tensor,
    labels: Tensor,
    mask: Tensor | None,
    k: int | None = None,
    *,
    gain: Gain = "exp2",
    ties: Ties = "average",
) -> Tensor:
    """DCG@k of the ranking by ``scores``: ``sum_pos gain(label) / log2(pos + 2)``, pos 0-based.

    Args:
        scores: ``[B, L]`` ranking scores, higher first.
        labels: ``[B, L]`` relevance, >= 0.
        mask: ``[B, L]`` bool, True for real candidates (None: all real).
        k: cut-off; None means the full list.
        gain: ``"exp2"`` (``2^y - 1``) or ``"linear"`` (``y``).
        ties: ``"average"``: each group of tied scores gets its mean gain at every position it
            spans (sklearn's tie-averaged DCG, i.e. the expectation over random tie-breaking);
            ``"sort"``: ties keep their slot order (stable sort).

    Returns:
        ``[B]`` DCG@k.
    """
    labels, mask = _check(scores, labels, mask)
    _check_k(k)
    order = _order(scores, mask)
    gains = gain_values(labels, gain).gather(-1, order)
    if ties == "average":
        gains = _group_mean(gains, _tie_starts(scores.gather(-1, order), mask.gather(-1, order)))
    elif ties != "sort":
        raise ValueError(f"ties must be 'average' or 'sort'; got {ties!r}")
    return (gains * _discount(scores.shape[1], k, gains)).sum(-1)


def ndcg_at_k(
    scores: Tensor,
    labels: Tensor,
    mask: Tensor | None,
    k: int | None = None,
    *,
    gain: Gain = "exp2",
    ties: Ties = "average",
    empty: Empty = "skip",
) -> MetricResult:
    """NDCG@k = DCG@k / ideal DCG@k per request.

    Args:
        scores: ``[B, L]`` ranking scores, higher first.
        labels: ``[B, L]`` relevance, >= 0.
        mask: ``[B, L]`` bool, True for real candidates (None: all real).
        k: cut-off; None means the full list.
        gain: ``"exp2"`` (``2^y - 1``, allRank) or ``"linear"`` (``y``, sklearn/torchmetrics).
        ties: ``"average"`` (sklearn/torchmetrics) or ``"sort"`` (stable slot order).
        empty: requests with no relevant item (ideal DCG 0): ``"skip"`` (NaN, counted in
            ``n_skipped``), ``"zero"`` (sklearn, torchmetrics default) or ``"one"`` (allRank).

    Returns:
        :class:`MetricResult` with ``per_request [B]``.
    """
    dcg = dcg_at_k(scores, labels, mask, k, gain=gain, ties=ties)
    idcg = dcg_at_k(labels, labels, mask, k, gain=gain, ties="sort")
    return _normalise(dcg, idcg, empty)


def ndcg_of_ranking(
    order_index: Tensor,
    labels: Tensor,
    mask: Tensor | None,
    *,
    gain: Gain = "exp2",
    empty: Empty = "skip",
) -> MetricResult:
    """NDCG@k of an already computed top-k ranking (e.g. from ``fusion.top_k``).

    Args:
        order_index: ``[B, k]`` distinct slot indices into ``L``, best first. Slots that are negative or
            point at padding count as empty positions (gain 0).
        labels: ``[B, L]`` relevance, >= 0.
        mask: ``[B, L]`` bool, True for real candidates (None: all real).
        gain: ``"exp2"`` or ``"linear"``.
        empty: handling of requests with no relevant item, as in :func:`ndcg_at_k`.

    Returns:
        :class:`MetricResult`; the ideal DCG is over all real candidates, cut at ``k``.
    """
    labels, mask = _check(labels, labels, mask)
    if order_index.dim() != 2 or order_index.shape[0] != labels.shape[0]:
        raise ValueError(f"order_index must be [B, k]; got {tuple(order_index.shape)}")
    k = order_index.shape[1]
    index = order_index.long().clamp(0, labels.shape[1] - 1)
    shown = mask.gather(-1, index) & (order_index >= 0) & (order_index < labels.shape[1])
    gains = gain_values(labels, gain).gather(-1, index).where(shown, 0.0)
    dcg = (gains * _discount(k, None, gains)).sum(-1)
    idcg = dcg_at_k(labels, labels, mask, max(k, 1), gain=gain, ties="sort")
    return _normalise(dcg, idcg, empty)


def mrr(
    scores: Tensor,
    labels: Tensor,
    mask: Tensor | None,
    k: int | None = None,
    *,
    ties: Ties = "average",
    empty: Empty = "skip",
) -> MetricResult:
    """Reciprocal rank of the first relevant (``label > 0``) candidate; 0 if it ranks below k.

    Args:
        scores: ``[B, L]`` ranking scores, higher first.
        labels: ``[B, L]`` relevance; > 0 is relevant.
        mask: ``[B, L]`` bool, True for real candidates (None: all real).
        k: cut-off; None means the full list.
        ties: ``"average"``: expected reciprocal rank under uniformly random tie-breaking (the
            same expectation that tie-averaged DCG computes); ``"sort"``: stable slot order.
        empty: requests with no relevant item: ``"skip"``, ``"zero"`` or ``"one"``.

    Returns:
        :class:`MetricResult` with ``per_request [B]``.
    """
    labels, mask = _check(scores, labels, mask)
    _check_k(k)
    if ties not in ("average", "sort"):
        raise ValueError(f"ties must be 'average' or 'sort'; got {ties!r}")
    n_slots = scores.shape[1]
    order = _order(scores, mask)
    rel = (labels > 0).gather(-1, order)
    starts = (
        _tie_starts(scores.gather(-1, order), mask.gather(-1, order))
        if ties == "average"
        else torch.ones_like(rel)
    )
    gid = starts.long().cumsum(-1) - 1
    first = rel.to(torch.int32).argmax(-1, keepdim=True)  # first relevant position
    in_group = gid == gid.gather(-1, first)  # the tie group holding it
    f64 = torch.float64
    n = in_group.sum(-1, keepdim=True).to(f64)
    r = (in_group & rel).sum(-1, keepdim=True).to(f64).clamp_min(1)
    start = in_group.to(torch.int32).argmax(-1, keepdim=True).to(f64)
    # The first relevant sits j places after the group start with P(j) = C(n-1-j, r-1) / C(n, r).
    j = torch.arange(n_slots, dtype=f64, device=scores.device)
    valid = j <= n - r
    a = torch.maximum(n - 1 - j, r - 1)
    log_p = _log_binom(a, r - 1) - _log_binom(n, r)
    rank = start + 1 + j
    keep = valid if k is None else valid & (rank <= k)
    rr = (torch.exp(log_p) / rank).where(keep, 0.0).sum(-1).to(labels.dtype)
    has_rel = rel.any(-1)
    if empty not in ("skip", "zero", "one"):
        raise ValueError(f"empty must be 'skip', 'zero' or 'one'; got {empty!r}")
    rr = rr.where(has_rel, 1.0 if empty == "one" else 0.0)
    return _result(rr, has_rel if empty == "skip" else torch.ones_like(has_rel))


def _log_binom(a: Tensor, b: Tensor) -> Tensor:
    return torch.lgamma(a + 1) - torch.lgamma(b + 1) - torch.lgamma(a - b + 1)


# ---------------------------------------------------------------------------------------------
# AUC


def _per_row_auc(scores: Tensor, positive: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mann-Whitney AUC per row with mid-ranks (ties count 0.5): ``(auc, n_pos, n_neg)``, f64."""
    order = _order(scores, mask, descending=False)
    ranks_sorted = torch.arange(
        1, scores.shape[1] + 1, dtype=torch.float64, device=scores.device
    ).expand(scores.shape)
    ranks_sorted = _group_mean(
        ranks_sorted.contiguous(), _tie_starts(scores.gather(-1, order), mask.gather(-1, order))
    )
    ranks = torch.empty_like(ranks_sorted).scatter_(-1, order, ranks_sorted)
    pos = positive & mask
    n_pos = pos.sum(-1).to(torch.float64)
    n_neg = (mask & ~positive).sum(-1).to(torch.float64)
    u = ranks.where(pos, 0.0).sum(-1) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg).clamp_min(1), n_pos, n_neg


def auc(scores: Tensor, labels: Tensor, mask: Tensor | None) -> float:
    """Overall ROC AUC over all real candidates of the batch (``label > 0`` is positive).

    Ties count 0.5, like ``sklearn.metrics.roc_auc_score``.

    Args:
        scores: ``[B, L]`` predictions.
        labels: ``[B, L]`` labels; > 0 is positive.
        mask: ``[B, L]`` bool, True for real candidates (None: all real).

    Returns:
        The AUC, or NaN when the real candidates hold a single class.
    """
    labels, mask = _check(scores, labels, mask)
    flat = scores[mask].unsqueeze(0)
    value, n_pos, n_neg = _per_row_auc(
        flat, (labels[mask] > 0).unsqueeze(0), torch.ones_like(flat, dtype=torch.bool)
    )
    return float(value) if float(n_pos * n_neg) > 0 else math.nan


def gauc(
    scores: Tensor,
    labels: Tensor,
    mask: Tensor | None,
    *,
    weighting: Weighting = "uniform",
    skip_single_class: bool = True,
    skip_constant_pred: bool = True,
) -> MetricResult:
    """Group AUC: ROC AUC within each request (ties count 0.5), averaged over requests.

    Args:
        scores: ``[B, L]`` predictions.
        labels: ``[B, L]`` labels; > 0 is positive.
        mask: ``[B, L]`` bool, True for real candidates (None: all real).
        weighting: ``"uniform"`` (each request counts once; TorchRec, torchmetrics
            ``RetrievalAUROC``) or ``"impressions"`` (weight = real candidates; DIN paper).
        skip_single_class: skip requests whose real candidates are all positive or all
            negative; if False they count as 0.5.
        skip_constant_pred: skip requests whose real candidates all have the same score; if
            False they count as 0.5 (what tie handling gives them anyway).

    Returns:
        :class:`MetricResult`; requests without real candidates are always skipped.
    """
    labels, mask = _check(scores, labels, mask)
    if weighting not in ("uniform", "impressions"):
        raise ValueError(f"weighting must be 'uniform' or 'impressions'; got {weighting!r}")
    values, n_pos, n_neg = _per_row_auc(scores, labels > 0, mask)
    single = (n_pos == 0) | (n_neg == 0)
    top = scores.masked_fill(~mask, -math.inf).amax(-1)
    bottom = scores.masked_fill(~mask, math.inf).amin(-1)
    used = mask.any(-1)
    if skip_single_class:
        used &= ~single
    if skip_constant_pred:
        used &= top != bottom
    values = values.where(~single, 0.5).to(labels.dtype)
    weights = mask.sum(-1) if weighting == "impressions" else None
    return _result(values, used, weights)


# ---------------------------------------------------------------------------------------------
# bootstrap

_CHUNK_ELEMS = 1 << 22  # resample indices drawn per chunk (~32 MiB of int64)


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def resampled_means(columns: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, C]`` column means of ``n_boot`` row resamples (with replacement) of ``[n, C]``."""
    rng = np.random.default_rng(seed)
    n = columns.shape[0]
    chunk = max(1, _CHUNK_ELEMS // n)
    out = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        out.append(np.stack([col[idx].mean(axis=1) for col in columns.T], axis=1))
    return np.concatenate(out)


def _interval(draws: np.ndarray, alpha: float) -> tuple[float, float]:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    lo, hi = np.nanquantile(draws, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    per_request: ArrayLike, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """Percentile bootstrap CI of the mean over requests.

    Args:
        per_request: ``[B]`` values; NaN (skipped requests) are dropped first.
        n_boot: resamples.
        seed: numpy RNG seed; the same seed gives the same interval.
        alpha: 1 - confidence level.

    Returns:
        ``(mean, lo, hi)``; all NaN when no finite value is left.
    """
    x = _as_numpy(per_request)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    lo, hi = _interval(resampled_means(x[:, None], n_boot, seed)[:, 0], alpha)
    return float(x.mean()), lo, hi


def paired_bootstrap_rel_lift(
    a: ArrayLike, b: ArrayLike, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """Relative lift ``(mean(a) - mean(b)) / mean(b)`` with a paired percentile bootstrap CI.

    Args:
        a: ``[B]`` per-request values of the treatment arm.
        b: ``[B]`` per-request values of the baseline on the same requests.
        n_boot: resamples; each resamples request indices once and uses them for both arms.
        seed: numpy RNG seed.
        alpha: 1 - confidence level.

    Returns:
        ``(rel, lo, hi)``; pairs with a NaN on either side are dropped. Resamples with a zero
        baseline mean are ignored in the interval; all NaN when no pair is left.
    """
    x, y = _as_numpy(a), _as_numpy(b)
    if x.shape != y.shape:
        raise ValueError(f"a and b must have the same length; got {x.size} and {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    pairs = np.stack([x[keep], y[keep]], axis=1)
    if pairs.shape[0] == 0:
        return math.nan, math.nan, math.nan
    means = resampled_means(pairs, n_boot, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = (pairs[:, 0].mean() - pairs[:, 1].mean()) / pairs[:, 1].mean()
        draws = (means[:, 0] - means[:, 1]) / means[:, 1]
    lo, hi = _interval(np.where(np.isfinite(draws), draws, np.nan), alpha)
    return float(rel), lo, hi
