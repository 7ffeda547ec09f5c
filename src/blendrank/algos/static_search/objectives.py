"""Objectives for static search. Offline on logs: composite NDCG@k of the re-ranked candidates."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from blendrank.fusion.formulas import fuse
from blendrank.metrics import Gain, dcg_at_k


def offline_ndcg_objective(
    features: Tensor,
    labels: dict[str, Tensor],
    mask: Tensor | None,
    objective_weights: dict[str, float],
    k: int = 10,
    gain: Gain = "exp2",
    chunk: int | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """Offline objective on logged requests: ``sum_j a_j * mean_b NDCG@k(fuse(features_b, w), y_jb)``.

    Each weight vector re-ranks every request's logged candidates; the value is the weighted sum
    over objectives of the mean NDCG@k of that objective's labels. Conventions match
    :func:`blendrank.metrics.ndcg_at_k` with ``ties="average"`` and ``empty="skip"``: per
    objective, requests with no relevant candidate are left out of the mean; an objective with
    none at all contributes a constant 0 (it cannot change the ranking of weight vectors).

    Args:
        features: ``[B, L, K]`` fusion features (:func:`blendrank.fusion.formulas.fusion_features`).
        labels: objective name -> ``[B, L]`` relevance (binary or graded, >= 0).
        mask: ``[B, L]`` True for real candidates (None: all real).
        objective_weights: objective name -> weight ``a_j``; names must be keys of ``labels``.
        k: NDCG cut-off (page size).
        gain: ``"exp2"`` (``2^y - 1``) or ``"linear"``.
        chunk: weight vectors fused per step; None picks one that keeps ``chunk * B * L`` near 4M.

    Returns:
        ``objective(W [M, K]) -> values [M]`` (numpy, float64), vectorised over requests and
        over each chunk of weight vectors.
    """
    B, L, K = features.shape
    missing = sorted(set(objective_weights) - set(labels))
    if missing:
        raise ValueError(f"objective_weights names {missing} have no labels; labels has {sorted(labels)}")
    mask = torch.ones(B, L, dtype=torch.bool, device=features.device) if mask is None else mask.bool()
    terms = []  # (weight, labels [B, L], ideal DCG of the used requests [B'], used [B])
    for name, a in objective_weights.items():
        y = labels[name].to(features)
        if y.shape != (B, L):
            raise ValueError(f"labels[{name!r}] must be [B, L] = {(B, L)}; got {tuple(y.shape)}")
        idcg = dcg_at_k(y, y, mask, k, gain=gain, ties="sort")
        used = idcg > 0
        if a != 0 and bool(used.any()):
            terms.append((float(a), y, idcg[used], used))
    chunk = chunk or max(1, (1 << 22) // (B * L))

    @torch.no_grad()
    def objective(W: np.ndarray) -> np.ndarray:
        W = torch.as_tensor(np.asarray(W), dtype=features.dtype, device=features.device)
        if W.dim() != 2 or W.shape[1] != K:
            raise ValueError(f"weights must be [M, K={K}]; got {tuple(W.shape)}")
        out = []
        for Wc in W.split(chunk):
            G = Wc.shape[0]
            scores = fuse(features, Wc.expand(B, G, K)).reshape(B * G, L)  # request-major
            m = mask.repeat_interleave(G, 0)
            total = torch.zeros(G, dtype=torch.float64, device=features.device)
            for a, y, idcg, used in terms:
                dcg = dcg_at_k(scores, y.repeat_interleave(G, 0), m, k, gain=gain).view(B, G)
                total += a * (dcg[used] / idcg[:, None]).mean(0).double()
            out.append(total)
        return torch.cat(out).cpu().numpy() if out else np.zeros(0)

    return objective
