"""Pure loss pieces of IntegratedRL-MTF: the out-of-bounds penalty, the bootstrap weight and the
critic targets. Shapes: ``B`` transitions, ``A`` action dims, ``G`` critic groups, ``M`` critics
per group.
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_EXPONENT = 20.0  # caps exp() of the out-of-bounds penalty so gradients stay finite


def excess(a: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``[B, A]`` distance of each action coordinate outside ``[lo, hi]`` (0 inside)."""
    return torch.relu(a - hi) + torch.relu(lo - a)


def bound_penalty(a: Tensor, lo: Tensor, hi: Tensor, rate: float) -> Tensor:
    """``d(a) = sum_k (exp(rate * excess_k) - 1)`` ``[B]``: zero inside the trusted interval,
    growing exponentially (and monotonically) with the distance outside it."""
    return torch.expm1((rate * excess(a, lo, hi)).clamp(max=MAX_EXPONENT)).sum(-1)


def bootstrap_weight(a: Tensor, lo: Tensor, hi: Tensor, rate: float) -> Tensor:
    """``phi(a') = exp(-rate * sum_k excess_k)`` ``[B]``: 1 inside the interval, decaying outside."""
    return torch.exp(-rate * excess(a, lo, hi).sum(-1))


def ensemble_stats(q: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (population) std over the ensemble axis of ``q [G, M, B]`` → two ``[G, B]``."""
    return q.mean(1), q.std(1, unbiased=False) if q.shape[1] > 1 else torch.zeros_like(q[:, 0])


def reduce_target(q_next: Tensor, reduce: str = "mean", std_coef: float = 1.0) -> Tensor:
    """Pessimistic value of the next state per group ``[G, B]`` from target critics ``[G, M, B]``:
    ``mean_j Q'_ij - std_coef * std_j Q'_ij`` (``reduce="mean"``) or ``min_j Q'_ij - std_coef * std_j``
    (``reduce="min"``)."""
    mean, std = ensemble_stats(q_next)
    base = mean if reduce == "mean" else q_next.min(1).values
    return base - std_coef * std


def critic_targets(reward: Tensor, done: Tensor, q_next: Tensor, phi: Tensor, gamma: float,
                   reduce: str = "mean", std_coef: float = 1.0) -> Tensor:
    """``y_i = r_i + gamma * (1 - done) * phi(a') * reduce_j Q'_ij(s', a')`` ``[G, B]``.

    Args:
        reward: ``[G, B]`` reward part of each critic group.
        done: ``[B]`` 1 when the session ended after this request.
        q_next: ``[G, M, B]`` target critics at ``(s', mu'(s'))``.
        phi: ``[B]`` bootstrap weight of the target action (:func:`bootstrap_weight`).
    """
    return reward + gamma * ((1.0 - done) * phi)[None, :] * reduce_target(q_next, reduce, std_coef)
