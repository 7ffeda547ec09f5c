"""numpy twins of the torch fusion path (:mod:`blendrank.fusion.formulas`,
:func:`blendrank.fusion.state.list_stats`) for serving, in the ``[B, K, L]`` layout that keeps a
request's candidates contiguous; each is checked against its torch original in one parity test.
"""

from __future__ import annotations

import math

import numpy as np

from blendrank.errors import DataError
from blendrank.fusion.spec import Formula


def fusion_features_np(values: np.ndarray, formula: Formula, floor: float) -> np.ndarray:
    """``[B, K, L]`` fusion features from raw inputs ``values [B, K, L]`` (``fusion_features``)."""
    if formula == "log_linear":
        return np.log(values + np.float32(floor))
    if formula == "additive":
        return values
    raise DataError(f"unknown fusion formula {formula!r}")


def fuse_np(weights: np.ndarray, features: np.ndarray) -> np.ndarray:
    """``[B, L]`` scores ``Σ_k w_k · f_k`` of ``weights [B, K]`` and ``features [B, K, L]`` (``fuse``)."""
    return np.matmul(weights[:, None, :], features)[:, 0]


def top_single_np(scores: np.ndarray, page: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(index [1, page], scores [1, page])`` of one request's best candidates with numpy, or
    None when two of the ``page + 1`` best scores are equal or a score is NaN (then the caller's
    :func:`top_k_np` decides). Otherwise the page is unique, so this is exactly ``torch.topk``'s
    answer; for one request a full sort costs less than selecting then sorting."""
    order = np.argsort(-scores[0], kind="stable")
    best = scores[0, order[:page + 1]]
    # NaN sorts last: the last score is NaN iff any is
    if math.isnan(scores[0, order[-1]]) or (best[1:] == best[:-1]).any():
        return None
    return order[None, :page], best[None, :page]


# Measured at L=200, page 10: a full stable sort costs 7-10 µs for 2-4 rows against 14-16 µs for
# argpartition + sort, which wins from tens of rows on (86 µs against 265 µs at 64 rows).
FULL_SORT_MAX_ELEMENTS = 1024


def top_k_np(scores: np.ndarray, page: int) -> tuple[np.ndarray, np.ndarray]:
    """``(index [B, page], scores [B, page])``: each row's ``page`` best scores, best first
    (``top_k``'s selection; padding scored ``-inf`` comes last). Equal scores inside the page
    come in candidate order; which of equal scores at the page's edge make it is numpy's choice
    (``torch.topk`` leaves both to its implementation).

    Args:
        scores: ``[B, L]`` float32 fused scores, no NaN.
        page: page size, ``1 <= page <= L``.
    """
    n = scores.shape[1]
    if scores.size <= FULL_SORT_MAX_ELEMENTS:  # a few rows: one sort beats select-then-sort
        order = np.argsort(-scores, axis=1, kind="stable")[:, :page]
        return order, np.take_along_axis(scores, order, axis=1)
    if page < n:  # select the page in O(L), then order only it
        part = np.argpartition(scores, n - page, axis=1)[:, n - page:]
        part.sort(axis=1)  # by candidate index, so that the stable sort below breaks ties by it
    else:
        part = np.broadcast_to(np.arange(n), scores.shape)
    chosen = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-chosen, axis=1, kind="stable")
    index = np.take_along_axis(part, order, axis=1)
    return index, np.take_along_axis(chosen, order, axis=1)


_sum_reduce = np.add.reduce


def list_stats_np(features: np.ndarray, mask: np.ndarray | None, top: int = 10) -> np.ndarray:
    """numpy twin of :func:`blendrank.fusion.state.list_stats` in the serving layout.

    Args:
        features: ``[B, K, L]`` fusion features (candidates contiguous).
        mask: ``[B, L]`` True on real candidates, or None when every candidate is real.
        top: size of the "top" set whose mean is reported.

    Returns:
        ``[B, 4K]`` float32: per feature its mean, std, max and top-``top`` mean over real
        candidates (zeros for a request without candidates), in ``list_stats``'s order.
    """
    n = features.shape[-1]
    t = min(top, n)
    if mask is None:  # (add.reduce * 1/n rather than .mean/.sum: this runs per request and
        # their Python-level wrappers show; add.reduce is what .sum runs, so the same bits)
        mean = _sum_reduce(features, axis=-1) * np.float32(1.0 / n)
        d = features - mean[..., None]
        std = np.sqrt(np.einsum("bkl,bkl->bk", d, d) * np.float32(1.0 / n))
        # A full sort is the cheapest way to the top-t here: numpy's SIMD sort of float32 rows
        # beats partition-based selection for rows of a few hundred.
        srt = features.copy()
        srt.sort(axis=-1)
        mx, top_mean = srt[..., -1], _sum_reduce(srt[..., n - t:], axis=-1) * np.float32(1.0 / t)
    else:
        m = mask[:, None, :]
        cnt = mask.sum(-1, dtype=np.float32)[:, None]  # [B, 1]
        mean = np.where(m, features, 0).sum(-1, dtype=np.float32) / np.maximum(cnt, 1)
        d = np.where(m, features - mean[..., None], 0)
        std = np.sqrt(np.einsum("bkl,bkl->bk", d, d) / np.maximum(cnt, 1))
        srt = np.sort(np.where(m, features, -np.inf), axis=-1)
        top_vals = srt[..., n - t:]
        valid = top_vals > -np.inf
        top_mean = np.where(valid, top_vals, 0).sum(-1, dtype=np.float32) / np.maximum(valid.sum(-1), 1)
        mx = np.where(cnt > 0, srt[..., -1], 0)
    return np.concatenate([mean, std, mx, top_mean], axis=1).astype(np.float32, copy=False)
