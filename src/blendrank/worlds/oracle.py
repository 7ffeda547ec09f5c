"""Weight-vector search against a world's ground truth: global, per-segment and per-request.

All arms fuse the same predictions; only the choice of weight vector differs. Values are the
world's expected business value of the shown page (see ``MarketplaceWorld.page_metrics``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from math import comb

import numpy as np
import torch

from blendrank.worlds.marketplace import MarketplaceWorld, Requests, TruthBatch


def simplex_grid(k: int, max_points: int = 300) -> np.ndarray:
    """Regular grid on the K-simplex, as fine as fits in ``max_points``. ``[M, K]``."""
    steps = 1
    while comb(steps + 1 + k - 1, k - 1) <= max_points:
        steps += 1
    pts = [c for c in itertools.product(range(steps + 1), repeat=k - 1) if sum(c) <= steps]
    grid = np.array([[*c, steps - sum(c)] for c in pts], dtype=float) / steps
    return grid


def candidate_vectors(k: int, extra: np.ndarray | None = None, max_points: int = 300, n_random: int = 64,
                      seed: int = 0) -> np.ndarray:
    """Search set: simplex grid + Dirichlet samples (interior points) + any ``extra`` vectors."""
    rng = np.random.default_rng([seed, 7])
    parts = [simplex_grid(k, max_points), rng.dirichlet(np.ones(k), size=n_random)]
    if extra is not None:
        parts.append(np.atleast_2d(extra))
    return np.concatenate(parts).astype(np.float32)


def vector_metrics(world: MarketplaceWorld, inputs: torch.Tensor, truth: TruthBatch, weights: np.ndarray,
                   chunk: int = 256) -> dict[str, np.ndarray]:
    """Expected page metrics (``page_metrics``: clicks, orders, gmv, value, …) of each request
    under each weight vector.

    Args:
        inputs: ``[B, L, K]`` fusion inputs.
        weights: ``[M, K]`` shared by all requests, or ``[B, M, K]`` per request.

    Returns:
        metric -> ``[B, M]``.
    """
    B = inputs.shape[0]
    out: dict[str, np.ndarray] = {}
    w_all = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))
    for s in range(0, B, chunk):
        sl = slice(s, s + chunk)
        w = w_all[sl] if w_all.dim() == 3 else w_all.expand(inputs[sl].shape[0], -1, -1)
        shown = world.rank(inputs[sl], w)
        sub = TruthBatch(truth.click[sl], truth.order[sl], truth.extras[sl], truth.price[sl])
        for name, v in world.page_metrics(sub, shown).items():
            out.setdefault(name, np.empty((B, weights.shape[-2])))[sl] = v
    return out


def vector_values(world: MarketplaceWorld, inputs: torch.Tensor, truth: TruthBatch, weights: np.ndarray,
                  chunk: int = 256) -> np.ndarray:
    """``[B, M]`` business value of each request under each weight vector (see :func:`vector_metrics`)."""
    return vector_metrics(world, inputs, truth, weights, chunk)["value"]


@dataclass(frozen=True)
class Headroom:
    """Mean page value of the reference arms on one set of requests, and their weights."""

    production: float
    best_global: float
    segment_oracle: float
    oracle: float
    true_score: float
    global_weights: np.ndarray  # [K]
    segment_weights: np.ndarray  # [S, K]
    oracle_weights: np.ndarray  # [B, K]
    oracle_values: np.ndarray  # [B]

    def rel(self, name: str, base: str = "best_global") -> float:
        return getattr(self, name) / getattr(self, base) - 1.0


def per_request_oracle(world: MarketplaceWorld, inputs: torch.Tensor, truth: TruthBatch, grid_values: np.ndarray,
                       grid: np.ndarray, refine: int = 32, refine_concentration: float = 100.0,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Best weight vector per request: grid argmax, then a local Dirichlet refinement around it.

    Returns ``(weights [B, K], values [B])``; the value is never below any vector tried.
    """
    best = grid_values.argmax(1)
    w_best, v_best = grid[best], grid_values[np.arange(len(best)), best]
    if refine <= 0:
        return w_best, v_best
    rng = np.random.default_rng([seed, 11])
    alpha = refine_concentration * w_best[:, None, :] + 0.05
    local = rng.gamma(np.broadcast_to(alpha, (len(best), refine, grid.shape[1])))
    local /= local.sum(-1, keepdims=True)
    local_values = vector_values(world, inputs, truth, local)
    j = local_values.argmax(1)
    better = local_values[np.arange(len(j)), j] > v_best
    w = np.where(better[:, None], local[np.arange(len(j)), j], w_best)
    return w, np.maximum(v_best, local_values[np.arange(len(j)), j])


def headroom(world: MarketplaceWorld, req: Requests, max_points: int = 300, refine: int = 32,
             seed: int = 0) -> Headroom:
    """Production, best global, segment oracle, per-request oracle and true-score values."""
    truth = world.truth(req)
    inputs = world.fusion_inputs(req)
    prod = world.production_weights()
    grid = candidate_vectors(inputs.shape[-1], extra=prod, max_points=max_points, seed=seed)
    values = vector_values(world, inputs, truth, grid)  # [B, M]
    g = values.mean(0).argmax()
    seg = world.user_segment[req.user]
    n_seg = len(world.config.segments)
    seg_w = np.zeros((n_seg, grid.shape[1]))
    seg_total = 0.0
    for s in range(n_seg):
        rows = seg == s
        if rows.any():
            j = values[rows].mean(0).argmax()
            seg_w[s] = grid[j]
            seg_total += values[rows, j].sum()
    w_or, v_or = per_request_oracle(world, inputs, truth, values, grid, refine=refine, seed=seed)
    ts = world.page_metrics(truth, world.true_score_page(truth))["value"]
    return Headroom(
        production=float(values[:, len(grid) - 1].mean()),
        best_global=float(values[:, g].mean()),
        segment_oracle=float(seg_total / len(seg)),
        oracle=float(v_or.mean()),
        true_score=float(ts.mean()),
        global_weights=grid[g],
        segment_weights=seg_w,
        oracle_weights=w_or,
        oracle_values=v_or,
    )
