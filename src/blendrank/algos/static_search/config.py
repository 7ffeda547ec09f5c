"""Config of the ``static_search`` baseline: one global fusion weight vector on the simplex."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from blendrank.config import SEED_MAX, BaseConfig

Method = Literal["grid", "cem", "tpe", "cmaes", "gp"]
METHODS: tuple[str, ...] = ("grid", "cem", "tpe", "cmaes", "gp")


class StaticSearchConfig(BaseConfig):
    """Search for the single weight vector (shared by all requests) that maximises an objective."""

    method: Method = Field(
        "cem",
        description="Search method: 'grid' (regular simplex grid), 'cem' (cross-entropy method with "
        "a Dirichlet on the simplex), or the Optuna samplers 'tpe', 'cmaes', 'gp'.",
    )
    budget: int = Field(
        400, ge=1,
        description="Number of weight vectors the method may evaluate; the `include` vectors come "
        "on top (n_evals <= budget + len(include)).",
    )
    batch_size: int = Field(
        16, ge=1,
        description="Optuna samplers: trials asked before the objective is called once on all of "
        "them (batched evaluation). For 'cmaes' this is also the CMA-ES population size.",
    )
    grid_points: int = Field(
        400, ge=1,
        description="'grid': the finest regular simplex grid with at most min(grid_points, budget) "
        "points is evaluated.",
    )
    cem_population: int = Field(
        40, ge=2, description="'cem': weight vectors sampled per generation."
    )
    cem_elite_frac: float = Field(
        0.2, gt=0.0, le=1.0,
        description="'cem': fraction of each generation (at least 2 vectors) kept as elites to refit "
        "the Dirichlet.",
    )
    cem_iters: int | None = Field(
        None, ge=1,
        description="'cem': number of generations; None derives it from the budget, "
        "ceil(budget / cem_population). The budget caps it either way.",
    )
    cem_init_concentration: float | None = Field(
        None, gt=0.0,
        description="'cem': total concentration c of the first Dirichlet Dir(c * m) around the uniform "
        "mean m; None uses c = K, i.e. the uniform distribution on the simplex.",
    )
    cem_concentration_step: float = Field(
        0.5, gt=0.0, le=1.0,
        description="'cem': step s of the concentration refit on log scale, log c <- (1 - s) log c + "
        "s log c_elite (the mean is refit fully). Below 1 it slows the shrinking of the search "
        "distribution, which otherwise stalls before reaching optima near the simplex boundary.",
    )
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Random seed; equal seeds give identical searches.")
    include: list[list[float]] = Field(
        default_factory=list,
        description="Fixed weight vectors (e.g. the production weights) always evaluated first, so "
        "the result is never worse than any of them. Each is normalised onto the simplex.",
    )

    @field_validator("include")
    @classmethod
    def _check_include(cls, v: list[list[float]]) -> list[list[float]]:
        for w in v:
            if not w or min(w) < 0 or sum(w) <= 0:
                raise ValueError(f"include vector {w}: needs non-negative entries with a positive sum")
        return v
