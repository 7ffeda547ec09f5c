"""One method registry: every name that ``--methods``, ``train --method``, ``eval`` and the
Python API accept, where it can run, and how its config is resolved from the objective.

``ltr`` and every ``grade:<variant>`` are defined here and nowhere else; a GRADE config is
resolved from the business objective by :func:`grade_config` and fitted by :func:`fit_method`
whichever command asked for it, so ``train`` ships the GRADE that ``bench`` measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from blendrank.algos.grade.config import VARIANTS, GRADEConfig
from blendrank.algos.grade.data import FusionSpec
from blendrank.algos.grade.trainer import GradePolicy, fit_grade
from blendrank.config import apply_overrides
from blendrank.errors import ConfigError
from blendrank.objective import Objective
from blendrank.rewards.composite import CompositeRewardConfig

Context = Literal["marketplace", "kuairand-sim", "logs", "train"]
#: GRADE reward settings the objective owns -> the objective's field (no second place to write the goal).
OBJECTIVE_OWNED = {"prior_coefs": "value", "post_objective_weights": "value", "post_gain": "value (linear)",
                   "guardrails": "guardrails", "prior_discount": "discount", "k": "page_size"}
WORLDS: frozenset[str] = frozenset({"marketplace", "kuairand-sim"})
EVERYWHERE: frozenset[str] = frozenset({"marketplace", "kuairand-sim", "logs"})


@dataclass(frozen=True)
class Method:
    """A registered method: its family, where it runs and (GRADE family) its config overrides."""

    name: str
    family: Literal["fixed", "static_search", "grade", "integrated_rl", "oracle", "logged"]
    contexts: frozenset[str]
    summary: str
    overrides: tuple[str, ...] = ()


def _grade_methods() -> list[Method]:
    out = [Method("grade", "grade", EVERYWHERE | {"train"}, "GRADE: Stage 1 LambdaLoss, then Stage 2 GRPO"),
           Method("ltr", "grade", EVERYWHERE | {"train"}, "GRADE's Stage 1 alone (LambdaLoss)", ("stage2.steps=0",))]
    out += [Method(f"grade:{v}", "grade", EVERYWHERE | {"train"}, f"GRADE ablation {v}: {', '.join(o)}", tuple(o))
            for v, o in VARIANTS.items()]
    return out


REGISTRY: dict[str, Method] = {m.name: m for m in [
    Method("production", "fixed", EVERYWHERE, "the objective's production weights (the baseline)"),
    Method("logged", "logged", frozenset({"logs"}), "the order the log showed (its positions)"),
    Method("static_search", "static_search", EVERYWHERE | {"train"}, "one global weight vector, searched"),
    *_grade_methods(),
    Method("integrated_rl", "integrated_rl", EVERYWHERE | {"train"}, "IntegratedRL-MTF (offline RL)"),
    Method("segment_oracle", "oracle", WORLDS, "best vector per true user segment (ceiling)"),
    Method("oracle", "oracle", WORLDS, "best vector per request on the truth (ceiling)"),
    Method("true_score", "oracle", WORLDS, "rank by the true expected value (ceiling)"),
]}


def available(context: Context) -> list[str]:
    return [name for name, m in REGISTRY.items() if context in m.contexts]


def parse_methods(names: list[str], context: Context) -> list[str]:
    """``names`` checked against the registry for ``context``: production first, no repeats."""
    ok = available(context)
    unknown = [n for n in names if n not in ok]
    if unknown:
        where = "`train --method`" if context == "train" else f"{context} benches"
        raise ConfigError(f"--methods: {', '.join(unknown)} not available in {where}; available: {', '.join(ok)}")
    if context == "train":
        return list(dict.fromkeys(names))
    return ["production"] + [n for n in dict.fromkeys(names) if n != "production"]


def is_grade(name: str) -> bool:
    return name in REGISTRY and REGISTRY[name].family == "grade"


# ---------------------------------------------------------------------------- GRADE family
def fusion_spec(objective: Objective, behaviours: list[str], price_scale: float, **kw: Any) -> FusionSpec:
    """The fusion a policy applies: the objective's production inputs (price when it fuses price)."""
    return FusionSpec(objectives=objective.fusion_behaviours(behaviours), use_price=objective.fuses_price,
                      price_scale=objective.price_scale or price_scale, **kw)


@dataclass(frozen=True)
class ResolvedGrade:
    """A GRADE config resolved from the objective, and what the objective could not reach."""

    config: GRADEConfig
    unvalued_prior: list[str]  # objective terms without predictions
    unvalued_post: list[str]  # objective terms without logged labels (R_post cannot see them)

    def notes(self) -> list[str]:
        out = []
        calibrated = self.config.reward.prior_model == "calibrated"
        if self.unvalued_prior:
            out.append(f"no pred_ column for {self.unvalued_prior}: R_prior values them "
                       + ("through its calibrated value model (fitted on the logged labels)" if calibrated
                          else "not at all (R_post does)"))
        if self.unvalued_post:
            out.append(f"R_post has no labels for {self.unvalued_post} (valued by R_prior only)")
        return out


def grade_config(base: GRADEConfig, objective: Objective, method: str, spec: FusionSpec, labels: list[str],
                 has_price: bool) -> ResolvedGrade:
    """GRADE for ``method`` (``grade``, ``ltr`` or ``grade:<variant>``) with the objective as its goal:
    R_prior = the page's expected value under the fused predictions, R_post and Stage 1 = its
    realised value from the logged ``labels`` (linear gain: values, not grades), the guard rails
    and the page size; then the method's overrides. ``base`` holds the user's other settings."""
    if not is_grade(method):
        raise ConfigError(f"{method!r} is not a GRADE method; GRADE methods: {', '.join(n for n in REGISTRY if is_grade(n))}")
    default = CompositeRewardConfig()
    for key, source in OBJECTIVE_OWNED.items():
        if getattr(base.reward, key) != getattr(default, key):
            raise ConfigError(f"reward.{key} is read from the business objective ({source}); declare it there "
                              "(objective.yaml or --objective, docs/objective.md; in a world bench --set guardrails=…) "
                              "instead of in the GRADE config")
    prior, no_pred = objective.prior_coefs(spec.objectives, has_price)
    post, no_label = objective.post_weights(labels, has_price)
    data = base.model_dump(mode="json")
    reward = data["reward"]
    reward["prior_coefs"] = prior
    reward["prior_discount"] = objective.discount
    reward["k"] = objective.page_size
    reward["post_gain"] = "linear"
    if any(v > 0 for v in post.values()):
        reward["post_objective_weights"] = post
    else:  # nothing logged carries a positive value: R_post cannot rank anything
        reward["a_post"] = 0.0
    reward["guardrails"] = objective.grade_guardrails()
    try:
        cfg = GRADEConfig.model_validate(apply_overrides(data, list(REGISTRY[method].overrides)))
    except ValueError as exc:
        raise ConfigError(f"GRADE config from the objective ({method}): {exc}") from None
    _check_against_inputs(cfg, spec.inputs)
    return ResolvedGrade(cfg, no_pred, no_label)


def _check_against_inputs(cfg: GRADEConfig, inputs: list[str]) -> None:
    """The rule settings that index the fusion inputs, checked before any work starts."""
    k, rc = len(inputs), cfg.reward
    for name in ("min_weights", "anchor"):
        value = getattr(rc, name)
        if value is not None and len(value) != k:
            raise ConfigError(f"reward.{name} has {len(value)} entries; the policy fuses {k} inputs {inputs}")
    for i, j, r in rc.max_ratio or []:
        if not (0 <= i < k and 0 <= j < k) or i == j or r <= 0:
            raise ConfigError(f"reward.max_ratio entry [{i}, {j}, {r}]: indices must be two different inputs in "
                              f"0..{k - 1} ({inputs}) and the ratio > 0")


def fit_method(resolved: ResolvedGrade, logs: pa.Table | str | Path, objective: Objective, spec: FusionSpec,
               **kw: Any) -> GradePolicy:
    """Fit a GRADE-family method on logged requests, anchored at the objective's production weights
    (``kw``: ``probe``, ``log``, ``checkpoint_dir``, ``checkpoint_every``, ``resume``)."""
    anchor = objective.production_vector(spec.inputs).tolist()
    return fit_grade(logs, resolved.config, anchor=anchor, spec=spec, objective=objective, **kw)

