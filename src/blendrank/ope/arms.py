"""One call from a log and each arm's target pages / weights to every estimator's lifts.

``estimate_arms`` returns ``{"estimates": {estimator: {arm: {metric: {"rel", "ci95"}}}},
"skipped": {estimator: reason}, "diagnostics": {estimator: {arm: {...}}}}``. Every estimator uses
the same request resamples (same seed), so their intervals are comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from blendrank.errors import DataError
from blendrank.ope.data import LoggedRequests, PageObjective
from blendrank.ope.estimators import (
    Kernel,
    PerRequestEstimate,
    direct_method,
    item_position_dr,
    item_position_ips,
    weight_space_ips,
    weight_space_weights,
)
from blendrank.ope.lift import paired_lifts

__all__ = ["ESTIMATORS", "ArmTarget", "estimate_arms"]

#: estimator name -> what it needs from an arm
ESTIMATORS: dict[str, str] = {
    "dm": "pages",
    "item_ips": "pages",
    "item_snips": "pages",
    "item_dr": "pages",
    "weight_ips": "weights",
    "weight_snips": "weights",
}


@dataclass(frozen=True)
class ArmTarget:
    """What a target policy does on the logged requests.

    Attributes:
        pages: ``[B, P]`` its pages (slot indices, ``-1`` empty) for the page-based estimators.
        weights: ``[K]`` or ``[B, K]`` its (mean) weight vector, smoothed by the kernel, for the
            weight-space estimators.
        alpha: ``[K]`` or ``[B, K]`` Dirichlet concentration when the arm itself samples its
            weights (used instead of ``weights``).
    """

    pages: np.ndarray | None = None
    weights: np.ndarray | None = None
    alpha: np.ndarray | None = None


def _run(name: str, logged: LoggedRequests, arm: ArmTarget, objective: PageObjective,
         examination: np.ndarray, kernel: Kernel | None, weight_clip: float | None,
         item_clip: float | None) -> PerRequestEstimate:
    if ESTIMATORS[name] == "pages":
        assert arm.pages is not None
        if name == "dm":
            return direct_method(logged, arm.pages, objective, examination)
        if name == "item_dr":
            return item_position_dr(logged, arm.pages, objective, examination, clip=item_clip)
        return item_position_ips(logged, arm.pages, objective, examination, clip=item_clip,
                                 self_normalised=name == "item_snips")
    rho = (weight_space_weights(logged, alpha=arm.alpha, clip=weight_clip) if arm.alpha is not None
           else weight_space_weights(logged, weights=arm.weights, kernel=kernel, clip=weight_clip))
    return weight_space_ips(logged, rho, objective, self_normalised=name == "weight_snips")


def estimate_arms(
    logged: LoggedRequests,
    arms: Mapping[str, ArmTarget],
    objective: PageObjective,
    examination: np.ndarray,
    *,
    baseline: str = "production",
    estimators: Iterable[str] | None = None,
    kernel: Kernel | None = None,
    weight_clip: float | None = 100.0,
    item_clip: float | None = 20.0,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    on_estimator: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """Every estimator's lift of every arm over ``baseline`` on the objective's value and the
    business metrics, with paired-bootstrap 95% CIs.

    Args:
        logged: the logged requests (``B``).
        arms: arm -> :class:`ArmTarget` on those requests; must include ``baseline``.
        objective: the page value.
        examination: ``[E]`` examination per position (``E`` >= page size and largest logged
            position).
        baseline: the arm lifts are relative to.
        estimators: names from :data:`ESTIMATORS`; None = every one the data and arms allow
            (weight-space ones need ``propensity``; an estimator runs only if ``baseline`` and at
            least one other arm can use it).
        kernel: smoothing of deterministic arms' weights (None: ``Kernel()``).
        weight_clip, item_clip: clipping of weight-space and examination ratios (None: none).
        n_boot, seed, alpha: bootstrap resamples, seed and 1 - confidence level.
        on_estimator: called with each estimator's name before it runs (progress).

    Returns:
        ``{"estimates": {estimator: {arm: {metric: {"rel", "ci95"}}}}, "skipped": {estimator:
        reason}, "diagnostics": {estimator: {arm: {name: float}}}}``.

    Raises:
        DataError: an explicitly requested weight-space estimator on a log without valid
            ``propensity`` / logged weights.
    """
    if baseline not in arms:
        raise ValueError(f"baseline arm {baseline!r} is not among the arms {sorted(arms)}")
    explicit = estimators is not None
    names = list(ESTIMATORS) if estimators is None else list(estimators)
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown estimator(s) {unknown}; choose from {list(ESTIMATORS)}")
    has_log_weights = logged.weights is not None and logged.propensity is not None
    out: dict[str, dict] = {"estimates": {}, "skipped": {}, "diagnostics": {}}
    for name in names:
        need = ESTIMATORS[name]
        if need == "weights" and not has_log_weights:
            if explicit:
                raise DataError(f"estimator {name!r} needs the columns `propensity` and "
                                "`logging_w_<input>` (logged weight vectors and their density)")
            out["skipped"][name] = "the log has no `propensity` / logged weight vectors"
            continue
        usable = [a for a, t in arms.items()
                  if (t.pages is not None if need == "pages"
                      else t.weights is not None or t.alpha is not None)]
        if baseline not in usable or len(usable) < 2:
            out["skipped"][name] = f"needs {need} for {baseline!r} and at least one other arm"
            continue
        if on_estimator:
            on_estimator(name)
        per_arm = {a: _run(name, logged, arms[a], objective, examination, kernel, weight_clip,
                           item_clip) for a in usable}
        lifts = paired_lifts(per_arm, baseline, n_boot=n_boot, seed=seed, alpha=alpha)
        out["estimates"][name] = {a: {m: lift.to_dict() for m, lift in ms.items()}
                                  for a, ms in lifts.items()}
        out["diagnostics"][name] = {a: dict(e.diagnostics) for a, e in per_arm.items()}
    return out
