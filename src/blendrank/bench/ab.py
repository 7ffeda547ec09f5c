"""Simulated A/B tests in a world: every arm serves the same requests with common random numbers.

Each arm's shown pages are scored twice: in expectation under the world's true probabilities
(exact for the page, low variance) and as realised samples (what a real A/B would see). Metrics
are ratios of per-request sums; confidence intervals are **paired percentile bootstraps over
requests**: one set of request resamples is drawn and used for every arm, so lifts keep the
pairing of the design.

Shapes: ``B`` requests, ``L`` candidates, ``P`` shown positions, ``E`` extra objectives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blendrank.metrics import resampled_means
from blendrank.worlds.marketplace import MarketplaceWorld, Requests, TruthBatch

#: metric -> (numerator quantity, denominator quantity, scale)
RATIO_METRICS: dict[str, tuple[str, str, float]] = {
    "ctr": ("clicks", "impressions", 1.0),
    "cvr": ("orders", "clicks", 1.0),
    "opm": ("orders", "impressions", 1000.0),
    "gpm": ("gmv", "impressions", 1000.0),
    "orders_per_request": ("orders", "requests", 1.0),
    "gmv_per_request": ("gmv", "requests", 1.0),
    "value": ("value", "requests", 1.0),
}


def metric_defs(extra_objectives: list[str]) -> dict[str, tuple[str, str, float]]:
    defs = dict(RATIO_METRICS)
    for name in extra_objectives:
        defs[f"{name}_rate"] = (name, "impressions", 1.0)
    return defs


@dataclass(frozen=True)
class CommonRandomNumbers:
    """Uniforms ``[B, L, 2 + E]`` per (request, candidate) shared by every arm: a candidate shown
    at the same position gets the same realised click, order and extra feedback in every arm."""

    u: np.ndarray

    @classmethod
    def draw(cls, req: Requests, n_extra: int, rng: np.random.Generator) -> CommonRandomNumbers:
        return cls(rng.random(req.cand.shape + (2 + n_extra,)))


def realised_page(world: MarketplaceWorld, truth: TruthBatch, shown: np.ndarray, crn: CommonRandomNumbers) -> dict[str, np.ndarray]:
    """Sampled outcomes of showing ``shown [B, P]``; per-request sums like ``page_metrics``."""
    exam = world.examination()[: shown.shape[-1]]
    take = lambda a: np.take_along_axis(a, shown, axis=1)  # noqa: E731
    click = take(crn.u[..., 0]) < exam * take(truth.click)
    order = click & (take(crn.u[..., 1]) < take(truth.order))
    v = world.config.value
    out = {"impressions": np.full(len(shown), float(shown.shape[1])), "clicks": click.sum(1).astype(float),
           "orders": order.sum(1).astype(float), "gmv": (order * take(truth.price)).sum(1)}
    value = v.click * out["clicks"] + v.order * out["orders"] + v.gmv * out["gmv"] / world.price_scale
    for j, o in enumerate(world.config.extra_objectives):
        ex = click & (take(crn.u[..., 2 + j]) < take(truth.extras[..., j]))
        out[o.name] = ex.sum(1).astype(float)
        value = value + o.value_weight * out[o.name]
    out["value"] = value
    return out


@dataclass(frozen=True)
class ABResult:
    """Point estimates per arm and metric, and paired-bootstrap draws for the intervals."""

    metrics: dict[str, dict[str, float]]  # arm -> metric -> value
    draws: dict[str, dict[str, np.ndarray]]  # arm -> metric -> [n_boot]

    def lift(self, arm: str, base: str, metric: str, alpha: float = 0.05) -> dict[str, object]:
        """Relative lift of ``arm`` over ``base`` with a percentile CI (same resamples)."""
        rel = self.metrics[arm][metric] / self.metrics[base][metric] - 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            d = self.draws[arm][metric] / self.draws[base][metric] - 1.0
        d = d[np.isfinite(d)]
        lo, hi = (np.quantile(d, [alpha / 2, 1 - alpha / 2]) if d.size else (np.nan, np.nan))
        return {"rel": float(rel), "ci95": [float(lo), float(hi)]}


def compare_arms(per_request: dict[str, dict[str, np.ndarray]], defs: dict[str, tuple[str, str, float]],
                 n_boot: int = 1000, seed: int = 0) -> ABResult:
    """Aggregate per-request quantities of every arm into ratio metrics with paired bootstrap draws.

    Args:
        per_request: arm -> quantity (clicks, orders, gmv, value, impressions, …) -> ``[B]``,
            all arms on the same ``B`` requests in the same order.
        defs: metric -> (numerator, denominator, scale); ``"requests"`` as denominator is 1.
    """
    arms = list(per_request)
    quantities = sorted({q for n, d, _ in defs.values() for q in (n, d) if q != "requests"})
    cols = np.stack([per_request[a][q] for a in arms for q in quantities], axis=1)  # [B, A*Q]
    boot = resampled_means(cols, n_boot, seed)  # [n_boot, A*Q]
    col = {(a, q): i for i, (a, q) in enumerate((a, q) for a in arms for q in quantities)}
    metrics: dict[str, dict[str, float]] = {a: {} for a in arms}
    draws: dict[str, dict[str, np.ndarray]] = {a: {} for a in arms}
    means = cols.mean(0)
    for a in arms:
        for m, (num, den, scale) in defs.items():
            dn = 1.0 if den == "requests" else means[col[a, den]]
            db = np.ones(n_boot) if den == "requests" else boot[:, col[a, den]]
            metrics[a][m] = float(scale * means[col[a, num]] / dn) if dn else float("nan")
            with np.errstate(divide="ignore", invalid="ignore"):
                draws[a][m] = scale * boot[:, col[a, num]] / db
    return ABResult(metrics, draws)


def oracle_share(values: dict[str, float], baseline: str = "production", oracle: str = "oracle") -> dict[str, float]:
    """``(arm - baseline) / (oracle - baseline)`` on the business value, for every arm."""
    gap = values[oracle] - values[baseline]
    return {a: (v - values[baseline]) / gap if gap else float("nan") for a, v in values.items()}
