"""Off-policy estimators of a target ranking policy's per-request page quantities from logs.

Every estimator returns a :class:`PerRequestEstimate`: per-request columns ``q_r`` for each
quantity (``impressions``, each behaviour, ``gmv``, ``value``) and a normaliser ``n_r`` such
that the estimate of the mean per request is ``sum_r q_r / sum_r n_r`` (``n_r = 1`` except for
self-normalised estimators). Keeping both columns lets a paired bootstrap over requests
resample numerator and normaliser together (``lift.paired_lifts``).

Shapes: ``B`` requests, ``L`` candidate slots, ``P`` page positions, ``K`` fusion inputs.
Examination ``exam [E]`` is the probability that position ``p`` (1-based, ``exam[p - 1]``) is
examined under a position-based model: ``E[y | item i at p] = exam(p) * r_i`` for every
behaviour ``y``, with ``r_i`` what the predictions estimate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from blendrank.errors import DataError
from blendrank.ope.data import (
    LoggedRequests,
    PageObjective,
    check_propensity,
    dirichlet_log_density,
)

__all__ = [
    "ImportanceWeights",
    "Kernel",
    "PerRequestEstimate",
    "direct_method",
    "item_position_dr",
    "item_position_ips",
    "item_quantities",
    "logged_page_quantities",
    "weight_space_ips",
    "weight_space_weights",
]


@dataclass(frozen=True)
class PerRequestEstimate:
    """Per-request contributions of one estimator for one target policy.

    Attributes:
        quantities: name -> ``[B]`` numerator columns.
        normaliser: ``[B]``; the estimate of a quantity's mean per request is
            ``sum(q) / sum(normaliser)``.
        diagnostics: scalar summaries (effective sample size, clipped share, coverage, ...).
    """

    quantities: Mapping[str, np.ndarray]
    normaliser: np.ndarray
    diagnostics: Mapping[str, float] = field(default_factory=dict)

    def mean(self, name: str) -> float:
        """Estimated mean per request of ``name``."""
        return float(self.quantities[name].sum() / self.normaliser.sum())


def item_quantities(source: Mapping[str, np.ndarray], price: np.ndarray | None,
                    objective: PageObjective) -> dict[str, np.ndarray]:
    """Per-item quantities ``[B, L]`` from labels or predictions ``source`` (name -> ``[B, L]``):
    every behaviour, ``gmv = order * price`` (when both exist) and the objective's undiscounted
    per-item ``value``. Impressions are added by the page aggregators."""
    out = {k: np.asarray(v, dtype=np.float64) for k, v in source.items()}
    if "order" in out and price is not None:
        out["gmv"] = out["order"] * price
    out["value"] = objective.item_value(source, price)
    return out


def _check_exam(exam: np.ndarray, needed: int, what: str) -> np.ndarray:
    exam = np.asarray(exam, dtype=np.float64)
    if exam.ndim != 1 or exam.size < needed:
        raise DataError(f"examination must be [E] with E >= {needed} ({what}); got {exam.shape}")
    if not (np.isfinite(exam[:needed]).all() and (exam[:needed] > 0).all()):
        raise DataError("examination must be finite and > 0 at every position used")
    return exam


def _discount(objective: PageObjective, n: int) -> np.ndarray:
    """``[n]`` the objective's discount, 0 beyond its length."""
    d = np.zeros(n)
    m = min(n, objective.discount.size)
    d[:m] = objective.discount[:m]
    return d


def _gather(a: np.ndarray, pages: np.ndarray) -> np.ndarray:
    return np.take_along_axis(a, np.clip(pages, 0, None), axis=1)


def _check_pages(pages: np.ndarray, logged: LoggedRequests) -> tuple[np.ndarray, np.ndarray]:
    pages = np.asarray(pages)
    if pages.ndim != 2 or pages.shape[0] != logged.n_requests:
        raise ValueError(f"pages must be [B, P] with B = {logged.n_requests}; got {pages.shape}")
    n_slots = logged.position.shape[1]
    if (pages >= n_slots).any():
        raise ValueError(f"pages hold slot indices >= L = {n_slots}")
    valid = (pages >= 0) & _gather(logged.mask, pages)
    return pages.astype(np.int64), valid


def _page_sums(per_item: Mapping[str, np.ndarray], pages: np.ndarray, slot_weight: np.ndarray,
               value_weight: np.ndarray) -> dict[str, np.ndarray]:
    """``[B]`` sums over page slots of per-item quantities times ``slot_weight [B, P]``; the value
    uses ``value_weight [B, P]`` (slot weight times the objective's discount)."""
    return {k: ((value_weight if k == "value" else slot_weight) * _gather(v, pages)).sum(1)
            for k, v in per_item.items()}


def direct_method(logged: LoggedRequests, pages: np.ndarray, objective: PageObjective,
                  examination: np.ndarray) -> PerRequestEstimate:
    """DM: the target page's expected quantities under the predictions and the examination model.

    ``q_r = sum_p exam(p) * x_q(page[r, p])`` with ``x`` the predictions (``value`` also
    weighted by ``d(p)``); ``impressions`` = real slots on the page.

    Args:
        logged: the log (``preds``, ``price``, ``mask`` are read).
        pages: ``[B, P]`` target pages (slot indices, ``-1`` empty).
        objective: the page value.
        examination: ``[E]``, ``E >= P``.

    Returns:
        :class:`PerRequestEstimate` with normaliser 1. Unbiased iff the predictions and the
        examination model are.
    """
    pages, valid = _check_pages(pages, logged)
    exam = _check_exam(examination, pages.shape[1], "the target page's length")
    slot = valid * exam[: pages.shape[1]]
    per_item = item_quantities(logged.preds, logged.price, objective)
    q = _page_sums(per_item, pages, slot, slot * _discount(objective, pages.shape[1]))
    q["impressions"] = valid.sum(1).astype(np.float64)
    return PerRequestEstimate(q, np.ones(logged.n_requests))


def logged_page_quantities(logged: LoggedRequests, objective: PageObjective) -> dict[str, np.ndarray]:
    """``[B]`` realised quantities of the logged pages: labels summed over shown items, value
    weighted by ``d(logged position)``, impressions = shown items."""
    shown = (logged.position > 0) & logged.mask
    d = _discount(objective, int(logged.position.max(initial=0)) + 1)
    dpos = np.where(shown, d[np.clip(logged.position - 1, 0, None)], 0.0)
    per_item = item_quantities(logged.labels, logged.price, objective)
    q = {k: ((dpos if k == "value" else shown) * v).sum(1) for k, v in per_item.items()}
    q["impressions"] = shown.sum(1).astype(np.float64)
    return q


# ---------------------------------------------------------------------------------------------
# weight space


@dataclass(frozen=True)
class Kernel:
    """Smoothing of a deterministic target weight vector ``w*`` into a density on the simplex.

    Attributes:
        kind: ``"dirichlet"``: ``Dir(kappa * w*)`` (mean ``w*``; ``w*`` floored at
            ``min_weight`` and renormalised so every concentration is > 0); ``"gaussian"``: an
            isotropic normal of standard deviation ``bandwidth`` on the simplex's plane (mass
            outside the simplex is lost: biased low near its edges).
        kappa: Dirichlet concentration; larger = narrower = less smoothing bias, more variance.
        bandwidth: Gaussian standard deviation in weight units.
        min_weight: floor of ``w*`` for the Dirichlet kernel.
    """

    kind: Literal["dirichlet", "gaussian"] = "dirichlet"
    kappa: float = 200.0
    bandwidth: float = 0.05
    min_weight: float = 1e-3

    def log_density(self, w: np.ndarray, centre: np.ndarray) -> np.ndarray:
        """``[B]`` log kernel density at logged ``w [B, K]`` around ``centre [K]`` or ``[B, K]``,
        w.r.t. the same measure as the Dirichlet propensity (first ``K - 1`` coordinates)."""
        c = np.broadcast_to(np.asarray(centre, dtype=np.float64), w.shape)
        if self.kind == "dirichlet":
            c = np.clip(c, self.min_weight, None)
            c = c / c.sum(1, keepdims=True)
            return dirichlet_log_density(w, self.kappa * c)
        if self.kind == "gaussian":
            k = w.shape[1]
            h2 = self.bandwidth ** 2
            sq = ((w - c) ** 2).sum(1)
            # density on the plane sum(w) = 1, times sqrt(K): dA = sqrt(K) dw_1..dw_{K-1}
            return -0.5 * (k - 1) * np.log(2 * np.pi * h2) - sq / (2 * h2) + 0.5 * np.log(k)
        raise ValueError(f"kernel kind must be 'dirichlet' or 'gaussian'; got {self.kind!r}")


@dataclass(frozen=True)
class ImportanceWeights:
    """Per-request importance weights ``rho_r`` and their clipped values ``min(rho_r, clip)``.

    Attributes:
        raw: ``[B]`` target density / logging propensity of the logged weight vector.
        clipped: ``[B]``.
        clip: the threshold (``inf`` = none).
    """

    raw: np.ndarray
    clipped: np.ndarray
    clip: float

    @classmethod
    def from_raw(cls, raw: np.ndarray, clip: float | None = None) -> ImportanceWeights:
        raw = np.asarray(raw, dtype=np.float64)
        c = np.inf if clip is None else float(clip)
        if not c > 0:
            raise ValueError(f"clip must be > 0; got {clip}")
        return cls(raw, np.minimum(raw, c), c)

    def diagnostics(self) -> dict[str, float]:
        w = self.clipped
        ess = float(w.sum() ** 2 / max((w ** 2).sum(), 1e-300))
        return {"mean_weight": float(self.raw.mean()), "max_weight": float(self.raw.max()),
                "clipped_share": float((self.raw > self.clip).mean()), "ess": ess,
                "ess_share": ess / len(w)}


def weight_space_weights(
    logged: LoggedRequests,
    *,
    alpha: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    kernel: Kernel | None = None,
    clip: float | None = None,
) -> ImportanceWeights:
    """Importance weights of the logged weight vectors for a stochastic or deterministic target.

    ``rho_r = pi(w_r) / propensity_r`` with ``pi = Dir(alpha_r)`` for a Dirichlet target, or the
    kernel density around the target's weights for a deterministic one.

    Args:
        logged: needs ``weights [B, K]`` and ``propensity [B]``.
        alpha: ``[K]`` or ``[B, K]`` Dirichlet concentration of a stochastic target.
        weights: ``[K]`` or ``[B, K]`` a deterministic target's weight vector (mean weights).
        kernel: smoothing of ``weights`` (None: ``Kernel()``, Dirichlet with ``kappa = 200``).
        clip: upper threshold on ``rho`` (None: no clipping).
    """
    if (alpha is None) == (weights is None):
        raise ValueError("give exactly one of alpha (stochastic target) or weights (deterministic)")
    if logged.weights is None:
        raise DataError("the log has no logged weight vectors (`logging_w_<input>` columns)")
    p = check_propensity(logged.propensity, logged.n_requests)
    w = logged.weights
    if alpha is not None:
        log_target = dirichlet_log_density(w, np.broadcast_to(alpha, w.shape))
    else:
        kernel = Kernel() if kernel is None else kernel
        log_target = kernel.log_density(w, np.asarray(weights, dtype=np.float64))
    # exp(log) / p rather than exp(log - log p): bit-exact 1 when the target is the logger
    return ImportanceWeights.from_raw(np.exp(log_target) / p, clip)


def weight_space_ips(logged: LoggedRequests, importance: ImportanceWeights,
                     objective: PageObjective, *, self_normalised: bool = False) -> PerRequestEstimate:
    """Weight-space IPS / SNIPS of the logged pages' realised quantities.

    IPS: ``mean_r rho_r * q_r``; SNIPS: ``sum_r rho_r q_r / sum_r rho_r`` (``rho`` clipped in
    both). IPS with ``rho`` unclipped is unbiased when the target's density is positive only
    where the logger's is; clipping biases it low and self-normalisation trades a small bias for
    lower variance (and undoes a constant scaling of the weights).

    Returns:
        :class:`PerRequestEstimate` with columns ``rho_r * q_r`` and normaliser ``rho_r``
        (SNIPS) or 1 (IPS).
    """
    q = logged_page_quantities(logged, objective)
    rho = importance.clipped
    norm = rho if self_normalised else np.ones_like(rho)
    return PerRequestEstimate({k: rho * v for k, v in q.items()}, norm, importance.diagnostics())


# ---------------------------------------------------------------------------------------------
# item position


def _item_ratios(logged: LoggedRequests, pages: np.ndarray, examination: np.ndarray,
                 clip: float | None) -> tuple[np.ndarray, ...]:
    """``(pages, valid, covered, rho, rho_clipped, exam_logged)``, each ``[B, P]``: ``covered`` =
    the target's item was shown in the log, ``rho = exam(p) / exam(logged position)`` there."""
    pages, valid = _check_pages(pages, logged)
    n_pos = pages.shape[1]
    logged_pos = np.where(valid, _gather(logged.position, pages), 0)
    exam = _check_exam(examination, max(n_pos, int(logged.position.max(initial=0))),
                       "the page length and the largest logged position")
    covered = logged_pos > 0
    exam_logged = np.where(covered, exam[np.clip(logged_pos - 1, 0, None)], 1.0)
    rho = np.where(covered, exam[:n_pos] / exam_logged, 0.0)
    c = np.inf if clip is None else float(clip)
    if not c > 0:
        raise ValueError(f"clip must be > 0; got {clip}")
    return pages, valid, covered, rho, np.minimum(rho, c), exam_logged


def item_position_ips(logged: LoggedRequests, pages: np.ndarray, objective: PageObjective,
                      examination: np.ndarray, *, clip: float | None = None,
                      self_normalised: bool = False) -> PerRequestEstimate:
    """Item-position IPS / SNIPS: logged feedback moved to the target's positions.

    For target slot ``p`` holding item ``i`` that the log showed at ``q``:
    ``y_i * min(exam(p) / exam(q), clip)`` (value also times ``d(p)``); items the log did not show
    count 0. Impressions = the target page's real slots.

    SNIPS divides by the clipping-adjusted coverage ``n_r = sum_p covered * rho~/rho / P_r``, so
    uncovered slots are filled with the covered ones' average and clipping's shrinkage is undone;
    with full coverage and no clipping SNIPS equals IPS.

    Args:
        logged: needs ``position`` and ``labels``.
        pages: ``[B, P]`` target pages.
        objective, examination: as in :func:`direct_method`; ``examination`` must cover the
            largest logged position.
        clip: upper threshold on the examination ratio (None: none).
        self_normalised: SNIPS instead of IPS.
    """
    pages, valid, covered, rho, rho_c, _ = _item_ratios(logged, pages, examination, clip)
    per_item = item_quantities(logged.labels, logged.price, objective)
    q = _page_sums(per_item, pages, rho_c, rho_c * _discount(objective, pages.shape[1]))
    n_valid = valid.sum(1).astype(np.float64)
    diag = {"coverage": float(covered.sum() / max(valid.sum(), 1)),
            "clipped_share": float(((rho > rho_c) & covered).sum() / max(covered.sum(), 1)),
            "max_ratio": float(rho.max(initial=0.0))}
    if not self_normalised:
        q["impressions"] = n_valid
        return PerRequestEstimate(q, np.ones(logged.n_requests), diag)
    share = np.where(covered, rho_c / np.where(covered, rho, 1.0), 0.0).sum(1)
    q["impressions"] = share  # sum(q) / sum(n) gives back the real slots per request
    return PerRequestEstimate(q, share / np.maximum(n_valid, 1.0), diag)


def item_position_dr(logged: LoggedRequests, pages: np.ndarray, objective: PageObjective,
                     examination: np.ndarray, *, clip: float | None = None) -> PerRequestEstimate:
    """Doubly robust: DM plus the clipped item-position IPS of the DM's residual on shown items.

    ``q_r = sum_p exam(p) x(i_p) + sum_{p covered} min(rho_p, clip) * (y(i_p) - exam(q_p) x(i_p))``.
    Unbiased when, for each target slot, either the item was shown by the log (and no clipping
    binds) or the prediction is right; uncovered items rest on the DM alone.
    """
    pages, valid, covered, rho, rho_c, exam_logged = _item_ratios(logged, pages, examination, clip)
    dm = direct_method(logged, pages, objective, examination)
    y = item_quantities(logged.labels, logged.price, objective)
    x = item_quantities(logged.preds, logged.price, objective)
    missing = sorted(set(y) - set(x))
    if missing:
        raise DataError(f"DR needs predictions for every labelled behaviour; missing {missing}")
    d = _discount(objective, pages.shape[1])
    q = {}
    for k, yk in y.items():
        resid = _gather(yk, pages) - exam_logged * _gather(x[k], pages)
        w = np.where(covered, rho_c, 0.0) * (d if k == "value" else 1.0)
        q[k] = dm.quantities[k] + (w * resid).sum(1)
    q["impressions"] = dm.quantities["impressions"]
    diag = {"coverage": float(covered.sum() / max(valid.sum(), 1)),
            "clipped_share": float(((rho > rho_c) & covered).sum() / max(covered.sum(), 1))}
    return PerRequestEstimate(q, np.ones(logged.n_requests), diag)
