"""Static search: one global fusion weight vector on the simplex, by grid, CEM or Optuna.

The objective evaluates a batch of weight vectors at once, ``objective(W [M, K]) -> [M]``
(higher is better), so every method proposes vectors in batches. The ``include`` vectors
(e.g. production) are evaluated first and the best-ever vector is returned, so the result is
never worse than them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from blendrank.algos.static_search.config import StaticSearchConfig
from blendrank.worlds.oracle import simplex_grid

Objective = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[int], None]

MIN_ALPHA = 1e-2  # Dirichlet parameters below this give degenerate samples
MAX_CONCENTRATION = 1e5


@dataclass(frozen=True)
class SearchResult:
    """Outcome of :func:`search_weights`.

    Attributes:
        best_weights: ``[K]`` best weight vector found (on the simplex).
        best_value: its objective value.
        history: ``(weights [K], value)`` per evaluation, in evaluation order (``include`` first).
        n_evals: number of evaluations, ``len(history)``.
        method: the search method used.
    """

    best_weights: np.ndarray
    best_value: float
    history: list[tuple[np.ndarray, float]]
    n_evals: int
    method: str


def to_simplex(x: np.ndarray) -> np.ndarray:
    """Non-negative ``[..., K]`` -> simplex by normalising; an all-zero row maps to uniform."""
    x = np.clip(np.asarray(x, dtype=float), 0.0, None)
    s = x.sum(-1, keepdims=True)
    return np.where(s > 0, x / np.where(s > 0, s, 1.0), 1.0 / x.shape[-1])


class _Evaluator:
    """Calls the objective in batches, records every evaluation, enforces the budget."""

    def __init__(self, objective: Objective, k: int, budget: int, progress: Progress | None):
        self.objective, self.k, self.remaining, self.progress = objective, k, budget, progress
        self.history: list[tuple[np.ndarray, float]] = []
        self.best_w, self.best_v = None, -math.inf

    def __call__(self, W: np.ndarray, counted: bool = True) -> np.ndarray:
        W = to_simplex(W)
        if counted:
            if len(W) > self.remaining:
                raise RuntimeError("static_search: a method exceeded its budget (bug)")
            self.remaining -= len(W)
        values = np.asarray(self.objective(W), dtype=float).reshape(-1)
        if values.shape != (len(W),):
            raise ValueError(f"objective returned {values.shape[0]} values for {len(W)} weight vectors")
        for w, v in zip(W, values):
            self.history.append((w, float(v)))
            if v > self.best_v:  # strict: earlier vectors (include) win ties; NaN never wins
                self.best_w, self.best_v = w, float(v)
        if self.progress is not None:
            self.progress(len(W))
        return values


# ---------------------------------------------------------------------------------------------
# methods


def _grid(ev: _Evaluator, cfg: StaticSearchConfig, rng: np.random.Generator) -> None:
    n = min(cfg.grid_points, ev.remaining)
    ev(simplex_grid(ev.k, n)[:n])


def _cem(ev: _Evaluator, cfg: StaticSearchConfig, rng: np.random.Generator) -> None:
    k, s = ev.k, cfg.cem_concentration_step
    mean = np.full(k, 1.0 / k)
    conc = cfg.cem_init_concentration or float(k)
    for _ in range(cfg.cem_iters or math.ceil(cfg.budget / cfg.cem_population)):
        n = min(cfg.cem_population, ev.remaining)
        if n == 0:
            break
        W = to_simplex(rng.dirichlet(np.maximum(conc * mean, MIN_ALPHA), size=n))
        values = np.nan_to_num(ev(W), nan=-np.inf)
        if n < 2:
            break
        elite = W[np.argsort(-values, kind="stable")[: max(2, round(cfg.cem_elite_frac * n))]]
        # moment matching: E[w] = m, sum_k Var[w_k] = sum_k m_k (1 - m_k) / (c + 1) for w ~ Dir(c m)
        mean = elite.mean(0)
        c_elite = (mean * (1 - mean)).sum() / max(elite.var(0).sum(), 1e-12) - 1.0
        c_elite = float(np.clip(c_elite, 1.0, MAX_CONCENTRATION))
        conc = float(np.exp(s * np.log(c_elite) + (1 - s) * np.log(conc)))  # shrink slowly


def _optuna(ev: _Evaluator, cfg: StaticSearchConfig, rng: np.random.Generator) -> None:
    """Optuna sampler over K params in [0, 1], mapped to the simplex by normalisation."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    names = [f"x{i}" for i in range(ev.k)]
    dists = {n: FloatDistribution(0.0, 1.0) for n in names}
    sampler = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=cfg.seed, multivariate=True, constant_liar=True),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=cfg.seed, popsize=cfg.batch_size),
        "gp": lambda: optuna.samplers.GPSampler(seed=cfg.seed, deterministic_objective=True),
    }[cfg.method]
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(direction="maximize", sampler=sampler())
            for w, v in ev.history:  # the include vectors: let the sampler learn from them
                if math.isfinite(v):
                    params = dict(zip(names, (w / w.max()).tolist()))
                    study.add_trial(create_trial(params=params, distributions=dists, value=v))
            while ev.remaining > 0:
                trials = [study.ask(dists) for _ in range(min(cfg.batch_size, ev.remaining))]
                values = ev(np.array([[t.params[n] for n in names] for t in trials]))
                for t, v in zip(trials, values):
                    if math.isfinite(v):
                        study.tell(t, float(v))
                    else:
                        study.tell(t, state=TrialState.FAIL)
    finally:
        optuna.logging.set_verbosity(verbosity)


METHOD_FNS = {"grid": _grid, "cem": _cem, "tpe": _optuna, "cmaes": _optuna, "gp": _optuna}


def search_weights(
    objective: Objective, k: int, config: StaticSearchConfig | None = None,
    progress: Progress | None = None,
) -> SearchResult:
    """Find one global weight vector on the K-simplex that maximises ``objective``.

    Args:
        objective: ``W [M, K] -> values [M]``, higher is better; called on batches of vectors.
        k: number of fusion inputs K.
        config: search settings (method, budget, seed, include vectors, ...).
        progress: optional callback, called with the number of vectors after each batch.

    Returns:
        :class:`SearchResult`; ``n_evals <= config.budget + len(config.include)``.
    """
    cfg = config or StaticSearchConfig()
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if any(len(w) != k for w in cfg.include):
        raise ValueError(f"every include vector needs K={k} entries; got lengths "
                         f"{[len(w) for w in cfg.include]}")
    ev = _Evaluator(objective, k, cfg.budget, progress)
    if cfg.include:
        ev(np.asarray(cfg.include, dtype=float), counted=False)
    if k == 1:
        ev(np.ones((1, 1)))  # the simplex is a single point
    else:
        METHOD_FNS[cfg.method](ev, cfg, np.random.default_rng(cfg.seed))
    best = ev.best_w if ev.best_w is not None else ev.history[0][0]  # all values NaN
    return SearchResult(best, ev.best_v if ev.best_w is not None else math.nan, ev.history,
                        len(ev.history), cfg.method)
