"""Relative lifts of ratio metrics with a paired bootstrap over requests, and their validation
against A/B truth.

A metric is a ratio of estimated per-request means, ``scale * mean(num) / mean(den)`` (``den =
"requests"`` is 1), each mean being ``sum(q) / sum(normaliser)`` of a :class:`PerRequestEstimate`.
One set of request resamples is drawn (seeded) and applied to every arm, so lifts keep the
pairing: target and production are estimated on the same logged requests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from blendrank.ope.estimators import PerRequestEstimate

__all__ = [
    "BASE_METRICS",
    "Lift",
    "Validation",
    "metric_defs",
    "paired_lifts",
    "spearman",
    "validate",
]

#: metric -> (numerator quantity, denominator quantity, scale); as in the simulated A/B
BASE_METRICS: dict[str, tuple[str, str, float]] = {
    "ctr": ("click", "impressions", 1.0),
    "cvr": ("order", "click", 1.0),
    "opm": ("order", "impressions", 1000.0),
    "gpm": ("gmv", "impressions", 1000.0),
    "value": ("value", "requests", 1.0),
}
_NOT_RATES = {"click", "order", "gmv", "value", "impressions"}
_CHUNK_ELEMS = 1 << 22  # resample indices per chunk (~32 MiB of int64)


def metric_defs(quantities: Iterable[str]) -> dict[str, tuple[str, str, float]]:
    """The metrics computable from ``quantities``: those of :data:`BASE_METRICS` whose inputs
    exist, plus ``<b>_rate = b / impressions`` for every other behaviour ``b``."""
    have = set(quantities) | {"requests"}
    defs = {m: d for m, d in BASE_METRICS.items() if d[0] in have and d[1] in have}
    if "impressions" in have:
        for b in sorted(have - _NOT_RATES - {"requests"}):
            defs[f"{b}_rate"] = (b, "impressions", 1.0)
    return defs


@dataclass(frozen=True)
class Lift:
    """``rel = metric(arm) / metric(baseline) - 1`` and its percentile CI ``[lo, hi]``."""

    rel: float
    lo: float
    hi: float
    arm_value: float
    baseline_value: float

    def to_dict(self) -> dict[str, object]:
        return {"rel": self.rel, "ci95": [self.lo, self.hi]}


def _resampled_sums(columns: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, C]`` column sums of ``n_boot`` row resamples (with replacement) of ``[n, C]``."""
    rng = np.random.default_rng(seed)
    n = columns.shape[0]
    chunk = max(1, _CHUNK_ELEMS // max(n, 1))
    out = []
    for start in range(0, n_boot, chunk):
        c = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(c, n)) + n * np.arange(c)[:, None]
        counts = np.bincount(idx.ravel(), minlength=c * n).reshape(c, n).astype(np.float64)
        out.append(counts @ columns)
    return np.concatenate(out)


def _metric(sums: np.ndarray, col: Mapping[str, int], norm: int, d: tuple[str, str, float]) -> np.ndarray:
    num, den, scale = d
    with np.errstate(divide="ignore", invalid="ignore"):
        top = sums[..., col[num]] / sums[..., norm]
        bottom = 1.0 if den == "requests" else sums[..., col[den]] / sums[..., norm]
        return scale * top / bottom


def paired_lifts(
    per_arm: Mapping[str, PerRequestEstimate],
    baseline: str,
    *,
    metrics: Mapping[str, tuple[str, str, float]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict[str, Lift]]:
    """Relative lift of every arm over ``baseline`` for each metric, paired bootstrap CIs.

    Args:
        per_arm: arm -> estimate, all on the same ``B`` logged requests (``baseline`` among them).
        baseline: the arm lifts are relative to (production).
        metrics: metric -> (num, den, scale); default :func:`metric_defs` of the quantities every
            arm has.
        n_boot: resamples; each draws request indices once for every arm.
        seed: numpy seed; the same seed (and ``B``) gives the same resamples.
        alpha: 1 - confidence level.

    Returns:
        arm -> metric -> :class:`Lift` for every arm but ``baseline``. Resamples where a ratio is
        undefined are left out of the interval.
    """
    if baseline not in per_arm:
        raise ValueError(f"baseline arm {baseline!r} not among {sorted(per_arm)}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    common = set.intersection(*(set(e.quantities) for e in per_arm.values()))
    defs = metric_defs(common) if metrics is None else dict(metrics)
    needed = sorted({q for num, den, _ in defs.values() for q in (num, den) if q != "requests"})
    arms = list(per_arm)
    cols, col = [], {}
    for a in arms:
        for q in needed:
            col[a, q] = len(cols)
            cols.append(per_arm[a].quantities[q])
        col[a, "_norm"] = len(cols)
        cols.append(per_arm[a].normaliser)
    columns = np.stack(cols, axis=1).astype(np.float64)  # [B, C]
    full = columns.sum(0)
    boot = _resampled_sums(columns, n_boot, seed)
    out: dict[str, dict[str, Lift]] = {}
    for a in arms:
        if a == baseline:
            continue
        ca = {q: col[a, q] for q in needed}
        cb = {q: col[baseline, q] for q in needed}
        out[a] = {}
        for m, d in defs.items():
            va, vb = _metric(full, ca, col[a, "_norm"], d), _metric(full, cb, col[baseline, "_norm"], d)
            with np.errstate(divide="ignore", invalid="ignore"):
                draws = (_metric(boot, ca, col[a, "_norm"], d)
                         / _metric(boot, cb, col[baseline, "_norm"], d) - 1.0)
                rel = float(va / vb - 1.0) if vb else math.nan
            draws = draws[np.isfinite(draws)]
            lo, hi = (np.quantile(draws, [alpha / 2, 1 - alpha / 2]) if draws.size
                      else (math.nan, math.nan))
            out[a][m] = Lift(rel, float(lo), float(hi), float(va), float(vb))
    return out


# ---------------------------------------------------------------------------------------------
# validation against A/B truth


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks on ties); NaN below 2 points or for a constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2:
        return math.nan
    ra, rb = _ranks(a) - (len(a) - 1) / 2, _ranks(b) - (len(b) - 1) / 2
    den = math.sqrt(float((ra ** 2).sum() * (rb ** 2).sum()))
    return float((ra * rb).sum() / den) if den > 0 else math.nan


@dataclass(frozen=True)
class Validation:
    """How well one estimator's lifts match the A/B lifts over (arm, metric) pairs.

    Attributes:
        bias: mean of ``rel_estimate - rel_ab``.
        mean_abs_error: mean of ``|rel_estimate - rel_ab|``.
        coverage: share of pairs whose estimate CI covers the A/B point lift.
        sign_agreement: share of the pairs whose A/B CI excludes 0 where the estimate has the
            A/B lift's sign (NaN when there is no such pair).
        n_sign_pairs: those pairs.
        spearman: rank correlation over arms of estimated and A/B lifts on ``rank_metric``.
        n_pairs: pairs compared.
    """

    bias: float
    mean_abs_error: float
    coverage: float
    sign_agreement: float
    n_sign_pairs: int
    spearman: float
    n_pairs: int

    def to_dict(self) -> dict[str, float | int]:
        return {"bias": self.bias, "mean_abs_error": self.mean_abs_error,
                "coverage": self.coverage, "sign_agreement": self.sign_agreement,
                "n_sign_pairs": self.n_sign_pairs, "spearman": self.spearman,
                "n_pairs": self.n_pairs}


Lifts = Mapping[str, Mapping[str, Mapping[str, object]]]  # arm -> metric -> {"rel", "ci95"}


def validate(estimates: Lifts, truth: Lifts, *, metrics: Iterable[str] = ("value",),
             rank_metric: str = "value") -> Validation:
    """Compare estimated lifts with A/B lifts (both ``{arm: {metric: {"rel", "ci95"}}}``).

    Pairs are the (arm, metric) present in both with finite lifts, for ``metrics``; Spearman is
    over arms on ``rank_metric``.
    """
    est, ab, lo, hi, ab_lo, ab_hi = [], [], [], [], [], []
    for arm in estimates:
        for m in metrics:
            e, t = estimates[arm].get(m), truth.get(arm, {}).get(m)
            if e is None or t is None:
                continue
            if not (np.isfinite(e["rel"]) and np.isfinite(t["rel"])):
                continue
            est.append(float(e["rel"]))
            ab.append(float(t["rel"]))
            lo.append(float(e["ci95"][0]))
            hi.append(float(e["ci95"][1]))
            ab_lo.append(float(t["ci95"][0]))
            ab_hi.append(float(t["ci95"][1]))
    e_, t_ = np.array(est), np.array(ab)
    n = len(e_)
    if not n:
        return Validation(math.nan, math.nan, math.nan, math.nan, 0, math.nan, 0)
    covered = (np.array(lo) <= t_) & (t_ <= np.array(hi))
    sig = (np.array(ab_lo) > 0) | (np.array(ab_hi) < 0)
    agree = np.sign(e_[sig]) == np.sign(t_[sig])
    arms = [a for a in estimates if rank_metric in estimates[a] and rank_metric in truth.get(a, {})]
    rho = spearman(np.array([estimates[a][rank_metric]["rel"] for a in arms]),
                   np.array([truth[a][rank_metric]["rel"] for a in arms]))
    return Validation(float((e_ - t_).mean()), float(np.abs(e_ - t_).mean()),
                      float(covered.mean()), float(agree.mean()) if sig.any() else math.nan,
                      int(sig.sum()), rho, n)
