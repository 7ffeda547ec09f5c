"""Fitting kuairand-sim's exit model to the shape of the real log's user-day lengths.

KuaiRand-Pure keeps a small sample of each real user-day, so only the *shape* of the number of
impressions per user-day is identifiable, not its level (docs/worlds.md, "Calibration to
the log"). Indirect inference: simulate logging-policy sessions, thin each impression with
probability ρ (the log's sampling), drop the days left empty, and compare the histogram of what
is left (1, 2, …, 7, ≥ 8) with the log's. The session level is fixed by θ̄ (a mean of
``target_mean`` impressions per session); σ_θ, η and ρ are chosen by χ².

What a session shows up to its exit does not depend on the exit model, so one simulation without
exits (every session to the cap, satisfaction traced) is replayed for every candidate exit model,
with the same exit uniforms ``run_sessions`` uses: the replayed lengths are those the world gives.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from blendrank.worlds.kuairand_sim import KuaiRandSimWorld
from blendrank.worlds.kuairand_sim_config import STREAM_CALIBRATION, SessionSpec
from blendrank.worlds.kuairand_sim_sessions import _N_UNIFORMS, Policy, _sigmoid

#: Histogram bins of impressions per user-day: 1 … 7 and the last bin ≥ 8.
BINS = 8


def day_length_histogram(counts: np.ndarray) -> np.ndarray:
    """``[BINS]`` counts of user-days with 1, …, 7 and ≥ 8 impressions (``counts [D] ≥ 1``)."""
    return np.bincount(np.minimum(np.asarray(counts), BINS) - 1, minlength=BINS)[:BINS].astype(np.float64)


def real_day_lengths(world: KuaiRandSimWorld) -> np.ndarray:
    """``[D]`` impressions per (user, date) of the real log."""
    log = world.tables.log
    pairs = np.stack([log["user_id"].to_numpy(), log["date"].to_numpy()], 1)
    return np.unique(pairs, axis=0, return_counts=True)[1]


@dataclass
class ExitTrace:
    """One no-exit simulation: ``users [S]``, satisfaction after each impression ``S [S, C]``
    (NaN past the pool's end) and the exit uniforms ``u [S, C]`` of ``run_sessions``."""

    users: np.ndarray
    satisfaction: np.ndarray
    uniforms: np.ndarray


def exit_trace(world: KuaiRandSimWorld, n_sessions: int, stream: int = STREAM_CALIBRATION,
               policy: Policy | None = None, predictor: str = "logger") -> ExitTrace:
    """Sessions of ``stream`` run to the cap with their satisfaction traced, under ``policy``
    (default: the logging policy with the logger's predictions)."""
    cfg = world.config
    cap = cfg.session.max_impressions
    trace = np.full((n_sessions, cap), np.nan)
    if policy is None:
        policy = world.logging_policy(np.random.default_rng([cfg.seed, stream, 3]), {"weights": [], "propensity": []})
    world.run_sessions(policy, n_sessions, stream, predictor=predictor, trace=trace, exits=False)
    u = np.random.default_rng([cfg.seed, stream, 2]).random((n_sessions, cap, _N_UNIFORMS + 1))[..., -1]
    return ExitTrace(world.session_users(n_sessions, stream), trace, u)


def replay_lengths(world: KuaiRandSimWorld, trace: ExitTrace, spec: SessionSpec) -> np.ndarray:
    """``[S]`` session lengths (impressions) under exit model ``spec`` (its θ̄, σ_θ, η, κ, λ)."""
    theta = world.exit_logits(spec)[trace.users]
    n = np.arange(1, trace.satisfaction.shape[1] + 1)
    p = _sigmoid(theta[:, None] + spec.fatigue * np.log1p(n)[None] - spec.exit_satisfaction * trace.satisfaction)
    leave = (trace.uniforms < p) | np.isnan(trace.satisfaction)
    leave[:, -1] = True
    return leave.argmax(1) + 1


def thinned_histogram(lengths: np.ndarray, weights: np.ndarray, rho: float) -> np.ndarray:
    """``[BINS]`` expected share of non-empty thinned days with 1, …, 7, ≥ 8 impressions when
    each of a session's ``lengths [S]`` impressions is kept with probability ``rho`` (sessions
    weighted by ``weights [S]``)."""
    L = torch.from_numpy(np.asarray(lengths, dtype=np.float64))[:, None]
    k = torch.arange(BINS, dtype=torch.float64)[None]  # 0 … 7
    log_pmf = (torch.lgamma(L + 1) - torch.lgamma(k + 1) - torch.lgamma(torch.clamp(L - k, min=0) + 1)
               + k * np.log(rho) + (L - k) * np.log1p(-rho))
    pmf = torch.where(k <= L, log_pmf.exp(), torch.zeros(()))  # [S, 8]: P(0) … P(7)
    hist = torch.cat([pmf[:, 1:], (1 - pmf.sum(1, keepdim=True)).clamp(min=0)], 1)  # 1 … 7, ≥ 8
    w = torch.from_numpy(np.asarray(weights, dtype=np.float64))[:, None]
    out = (w * hist).sum(0)
    return (out / out.sum()).numpy()


def chi2(observed: np.ndarray, expected_share: np.ndarray) -> float:
    """Pearson χ² of histogram ``observed [BINS]`` against shares ``expected_share [BINS]``."""
    e = np.maximum(expected_share * observed.sum(), 1e-9)
    return float(((observed - e) ** 2 / e).sum())


def level_for_mean(world: KuaiRandSimWorld, trace: ExitTrace, spec: SessionSpec, target_mean: float) -> SessionSpec:
    """``spec`` with θ̄ (``exit_base``) set by bisection so the mean session length is ``target_mean``."""
    lo, hi = -15.0, 5.0
    for _ in range(30):
        mid = (lo + hi) / 2
        mean = replay_lengths(world, trace, spec.model_copy(update={"exit_base": mid})).mean()
        lo, hi = (lo, mid) if mean < target_mean else (mid, hi)
    return spec.model_copy(update={"exit_base": round((lo + hi) / 2, 3)})


def fit_exit_model(world: KuaiRandSimWorld, trace: ExitTrace, target_mean: float = 60.0,
                   user_sds=(0.0, 0.5, 1.0, 1.5, 2.0, 2.5), activities=(0.0, 0.5, 1.0, 1.5),
                   fatigues=(0.0, 0.25, 0.5), rhos: np.ndarray | None = None) -> dict:
    """Grid over (σ_θ, η, κ), θ̄ set for ``target_mean``, best ρ per cell by χ² against the log's
    day-length histogram; sessions weighted by their user's real active days (the log has one
    day per active day). Returns the log's shares and every cell, best (lowest χ²) first."""
    rhos = np.geomspace(0.003, 0.3, 60) if rhos is None else rhos
    real = day_length_histogram(real_day_lengths(world))
    weights = world.user_days[trace.users].astype(np.float64)
    cells = []
    for sd, eta, kappa in itertools.product(user_sds, activities, fatigues):
        spec = level_for_mean(world, trace, world.config.session.model_copy(
            update={"exit_user_sd": sd, "exit_activity": eta, "fatigue": kappa}), target_mean)
        lengths = replay_lengths(world, trace, spec)
        scores = [chi2(real, thinned_histogram(lengths, weights, r)) for r in rhos]
        best = int(np.argmin(scores))
        cells.append({"exit_user_sd": sd, "exit_activity": eta, "fatigue": kappa, "exit_base": spec.exit_base,
                      "rho": float(rhos[best]), "chi2": scores[best],
                      "mean": float(lengths.mean()), "median": float(np.median(lengths)),
                      "p90": float(np.percentile(lengths, 90)),
                      "share": thinned_histogram(lengths, weights, rhos[best]).tolist()})
    cells.sort(key=lambda c: c["chi2"])
    return {"real_share": (real / real.sum()).tolist(), "real_days": int(real.sum()), "cells": cells}
