"""Off-policy estimates in the benches: every arm's lift over production from logged traffic,
and, in the worlds, their validation against the simulated A/B lifts (docs/ope.md).

The benches give each arm's target on the *logged* requests (its pages, and its weight vectors
when it has them); this module builds the page objective and the examination model, runs every
estimator :mod:`blendrank.ope` offers, compares them with the A/B and picks the recommended one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from blendrank.errors import DataError
from blendrank.fusion.formulas import position_discount
from blendrank.objective import Objective
from blendrank.ope import (
    ESTIMATORS,
    ArmTarget,
    LoggedRequests,
    PageObjective,
    estimate_arms,
    logged_requests_from_table,
    validate,
)
from blendrank.rewards.components import position_bias_from_counts, position_click_counts

__all__ = [
    "RANDOMISED_COLUMN",
    "RECOMMENDATION_RULE",
    "decreasing_fit",
    "examination_from_log",
    "logged_from_table",
    "page_objective",
    "recommend",
    "run_ope",
]

#: Optional boolean log column flagging requests whose order was randomised (swap / shuffle
#: interventions); examination is then fitted on those requests only.
RANDOMISED_COLUMN = "randomised"
RECOMMENDATION_RULE = (
    "among the estimators whose sign agrees with every A/B lift whose CI "
    "excludes 0, the highest CI coverage; ties broken by Spearman, then by "
    "mean absolute error; when none agrees in sign everywhere, the highest "
    "sign agreement first"
)


def page_objective(objective: Objective, price_scale: float, *, realised: bool) -> PageObjective:
    """The objective's page value for the estimators.

    Args:
        objective: the business objective.
        price_scale: unit of price in GMV terms.
        realised: True when the value to estimate counts every realised behaviour (the worlds'
            A/B value: discount all ones); False to keep the objective's position discount (the
            value ``bench --data`` reports).
    """
    P = objective.page_size
    d = (
        np.ones(P)
        if realised
        else position_discount(P, objective.discount).numpy().astype(np.float64)
    )
    return PageObjective(dict(objective.value), d, price_scale=price_scale)


def logged_from_table(
    table: pa.Table,
    objective: Objective,
    predicted: Sequence[str],
    fusion_inputs: Sequence[str],
    price_scale: float,
) -> LoggedRequests:
    """A log's requests as the estimators' arrays: labels of every behaviour the objective
    values, predictions of ``predicted``, the fusion inputs, and the logged weight vectors with
    their ``propensity`` when the log has both (else weight-space estimators are skipped)."""
    valued = sorted({f for t in objective.value for f in t.split("*") if f.strip() != "price"})
    with_pred = [
        b for b in dict.fromkeys([*predicted, *valued]) if f"pred_{b}" in table.column_names
    ]
    label_only = [b for b in valued if b not in with_pred and f"label_{b}" in table.column_names]
    missing = [b for b in valued if b not in with_pred and b not in label_only]
    if missing:
        raise DataError(f"the log has no label_ column for the objective's behaviour(s) {missing}")
    with_pred = [b for b in with_pred if f"label_{b}" in table.column_names]
    # The logged density is over the logged weight vector: usable only when it spans exactly the
    # inputs the arms fuse.
    logged_w = {c[len("logging_w_") :] for c in table.column_names if c.startswith("logging_w_")}
    has_weights = "propensity" in table.column_names and logged_w == set(fusion_inputs)
    return logged_requests_from_table(
        table,
        with_pred,
        fusion_inputs=list(fusion_inputs),
        price_scale=price_scale,
        require_propensity=has_weights,
        label_only=label_only,
    )


def examination_from_log(
    logged: LoggedRequests, page_size: int, randomised: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    """``[E]`` examination per position (``E`` = max(page size, largest logged position)) fitted
    from the log's clicks by position, and where it came from.

    Args:
        logged: the logged requests (needs a ``click`` label).
        page_size: ``P``.
        randomised: ``[B]`` bool, requests whose order was randomised; the fit then uses only
            them (unconfounded). None or none flagged: every request, which attributes to
            examination the quality production puts at each position (it overstates the decline).
    """
    if "click" not in logged.labels:
        raise DataError("item-position estimators need a `label_click` column to fit examination")
    E = max(page_size, int(logged.position.max()))
    mask = None
    source = (
        "fitted from the log's clicks by position (confounded with what production shows there)"
    )
    if randomised is not None and np.asarray(randomised, bool).any():
        mask = torch.from_numpy(
            np.repeat(np.asarray(randomised, bool)[:, None], logged.position.shape[1], axis=1)
        )
        n_random = int(np.sum(randomised))
        source = f"fitted from the clicks by position of the log's {n_random} randomised requests"
    shows, hits = position_click_counts(
        torch.from_numpy(logged.position), torch.from_numpy(logged.labels["click"]), mask, E
    )
    try:
        position_bias_from_counts(shows, hits)  # checks position 1 has clicks to normalise by
    except ValueError as exc:
        raise DataError(f"cannot fit examination from the log: {exc}") from exc
    # Examination does not rise with position: a click-rate-weighted decreasing fit keeps sparse
    # low positions (a handful of impressions) from getting ratios of 0 or 2.
    rate = decreasing_fit((hits / shows.clamp_min(1.0)).numpy(), shows.numpy())
    return np.maximum(rate / rate[0], 1e-3), source


def decreasing_fit(y: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-increasing fit of ``y [E]`` (pool adjacent violators); entries
    of weight 0 take the fit of the entry before them (the first, of the entry after)."""
    blocks: list[list[float]] = []  # [mean, weight, length]
    for v, w in zip(np.asarray(y, dtype=np.float64), np.asarray(weight, dtype=np.float64)):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0] and blocks[-1][1] > 0:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks[-1]
            blocks[-1] = [(m1 * w1 + m2 * w2) / max(w1 + w2, 1e-300), w1 + w2, n1 + n2]
    fit = np.repeat([b[0] for b in blocks], [b[2] for b in blocks])
    has = np.asarray(weight) > 0
    if has.any():  # weight-0 entries: carry the neighbouring fitted value
        idx = np.where(has, np.arange(len(fit)), 0)
        idx = np.maximum.accumulate(idx)
        idx[: int(np.argmax(has))] = int(np.argmax(has))
        fit = fit[idx]
    return fit


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def recommend(validation: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The estimator to trust, by :data:`RECOMMENDATION_RULE` (None without validation)."""

    def key(name: str) -> tuple[float, ...]:
        v = validation[name]
        sign = v.get("sign_agreement")
        sign = 1.0 if sign is None or not math.isfinite(sign) else sign  # no significant pair

        def get(k: str, bad: float) -> float:
            return bad if v.get(k) is None or not math.isfinite(v[k]) else v[k]

        return (
            sign >= 1.0,
            sign,
            get("coverage", -1.0),
            get("spearman", -2.0),
            -get("mean_abs_error", math.inf),
        )

    usable = [n for n, v in validation.items() if v.get("n_pairs")]
    return max(usable, key=key) if usable else None


def run_ope(
    logged: LoggedRequests,
    arms: Mapping[str, ArmTarget],
    objective: PageObjective,
    examination: np.ndarray,
    *,
    truth: Mapping[str, Mapping[str, Any]] | None = None,
    metric_map: Mapping[str, str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    skipped: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Every estimator's lifts of every arm, and their validation against ``truth``.

    Args:
        logged: the logged requests (``B``).
        arms: arm -> its target on those requests (``production`` among them).
        objective: the page value.
        examination: ``[E]`` examination per position.
        truth: the A/B lifts ``{arm: {metric: {"rel", "ci95"}}}``, or None (no validation).
        metric_map: estimator metric -> A/B metric compared with it (None: the same names).
        n_boot, seed: bootstrap resamples and seed (shared by every estimator).
        skipped: arm -> why it has no target on the logs (reported, not estimated).

    Returns:
        ``{"estimates", "skipped", "diagnostics", "arms_skipped"}`` and, with ``truth``,
        ``"validation"`` ``{estimator: {"coverage", "sign_agreement", "spearman", "n_pairs",
        ...}}``, ``"recommended"`` and ``"recommendation_rule"``.
    """
    out: dict[str, Any] = {
        "estimates": {},
        "skipped": {},
        "diagnostics": {},
        "arms_skipped": dict(skipped or {}),
        "n_logged_requests": logged.n_requests,
    }
    for name in ESTIMATORS:
        if ESTIMATORS[name] == "weights" and (logged.weights is None or logged.propensity is None):
            out["skipped"][name] = "the log has no `propensity` / `logging_w_<input>` columns"
            continue
        try:
            res = estimate_arms(
                logged, arms, objective, examination, estimators=[name], n_boot=n_boot, seed=seed
            )
        except DataError as exc:  # e.g. DM on a behaviour no model predicts
            out["skipped"][name] = str(exc)
            continue
        out["skipped"].update(res["skipped"])
        out["estimates"].update(res["estimates"])
        out["diagnostics"].update(res["diagnostics"])
    if truth is None:
        return out
    mapping = dict(metric_map) if metric_map is not None else None
    validation = {}
    for name, est in out["estimates"].items():
        ab: dict[str, dict[str, Any]] = {}
        for arm, per_metric in est.items():
            row = truth.get(arm) or {}
            names = mapping or {m: m for m in per_metric}
            ab[arm] = {m: row[t] for m, t in names.items() if row.get(t) is not None}
        compared = sorted({m for a in ab.values() for m in a})
        rank_metric = "value" if "value" in compared else (compared[0] if compared else "value")
        v = validate(est, ab, metrics=compared, rank_metric=rank_metric).to_dict()
        validation[name] = {
            k: (_finite_or_none(x) if isinstance(x, float) else x) for k, x in v.items()
        }
        validation[name]["metrics"] = compared
    out["validation"] = validation
    out["recommended"] = recommend(validation)
    out["recommendation_rule"] = RECOMMENDATION_RULE
    return out
