"""GRADE composite reward ``R = a_post * R_post + a_prior * R_prior - a_rule * R_rule``.

Shapes as in :mod:`blendrank.rewards.components`: ``N`` requests, ``G`` weight vectors per
request, ``L`` candidate slots, ``P`` page positions, ``K`` fusion inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from blendrank.config import BaseConfig
from blendrank.fusion.formulas import position_discount
from blendrank.rewards.components import (
    examination_ips_weights,
    guardrail_margins,
    posterior_reward,
    prior_reward,
    rule_penalty,
)

Gain = Literal["exp2", "linear"]

__all__ = ["CompositeRewardConfig", "RewardOutput", "composite_reward"]


class CompositeRewardConfig(BaseConfig):
    """Weights and settings of the GRADE composite reward (docs/grade.md)."""

    a_post: float = Field(1.0, ge=0, description="Weight of R_post (NDCG@k of logged feedback); 0 switches it off.")
    a_prior: float = Field(1.0, ge=0, description="Weight of R_prior (discounted expected value under MTL predictions); 0 switches it off.")
    a_rule: float = Field(1.0, ge=0, description="Weight of the rule penalty R_rule (subtracted); 0 switches it off.")
    k: int = Field(10, ge=1, description="Page size: NDCG cut-off of R_post and number of positions valued by R_prior.")
    post_objective_weights: dict[str, float] = Field(
        default_factory=lambda: {"click": 1.0, "order": 1.0},
        description="Objective -> weight of its NDCG@k in R_post (labels of that name must be given).",
    )
    post_gain: Gain | dict[str, Gain] = Field(
        "exp2",
        description="NDCG gain: 'exp2' (2^y - 1) or 'linear' (y, for GMV-valued labels); one for all or objective -> gain.",
    )
    post_normalize: bool = Field(False, description="false: R_post is the weighted DCG, i.e. the page's realised value "
                                 "Σ_pos d(pos)·Σ_k w_k·label_k in the objective's units (a high-GMV order outweighs a cheap "
                                 "one, and labels on different scales combine by their values); true: Σ_k w_k·NDCG_k, each "
                                 "label normalised by its own ideal DCG.")
    ips: bool = Field(False, description="Inverse-propensity correction of R_post by logged position (docs/grade_losses.md).")
    ips_clip: float = Field(10.0, gt=0, description="Upper bound on an IPS weight 1/exam(pos).")
    prior_coefs: dict[str, float] = Field(
        default_factory=lambda: {"click": 1.0, "order": 1.0, "order*price": 1.0},
        description="Term -> coefficient in R_prior; a term is a prediction name or a product such as 'order*price' (GMV, price divided by price_scale).",
    )
    prior_model: Literal["calibrated", "predictions"] = Field(
        "calibrated", description="How R_prior values a candidate. calibrated: by its expected realised value given "
        "the predictions, a ridge fit on the logged shown candidates (rewards.value_model): predictions that do not "
        "explain the logged value carry little weight, and labelled behaviours without a prediction are still "
        "valued. predictions: by Σ prior_coefs · predicted terms, taken at face value.")
    prior_ridge: float = Field(1e-3, ge=0, description="Ridge penalty of the calibrated value model (per unit weight).")
    prior_discount: Literal["log2", "none"] = Field("log2", description="Position discount of R_prior: 1/log2(pos+1) or none.")
    price_scale: float = Field(1.0, gt=0, description="Divisor of price in R_prior terms (e.g. the median price) so GMV is O(1).")
    min_weights: list[float] | None = Field(None, description="Per-input minimum weight [K]; hinge penalty below it. None = no rule.")
    max_ratio: list[tuple[int, int, float]] | None = Field(
        None, description="Ratio limits [(i, j, r)]: penalise w_i - r*w_j > 0 (i.e. w_i/w_j > r). Input indices. None = no rule."
    )
    anchor: list[float] | None = Field(None, description="Production weights [K], centre of the trust region (can also be passed per call).")
    trust_radius: float | None = Field(None, ge=0, description="L1 radius around the anchor; penalise the excess. None = no rule.")
    guardrails: dict[str, float] = Field(
        default_factory=dict,
        description="Business guard rails on predicted page metrics against the anchor (production) pages: metric -> "
        "largest allowed relative loss of its batch total (part of R_rule: a_rule=0 drops them), e.g. {'click': 0.005, 'order/click': 0.005} (CTR and CVR). "
        "A metric is a R_prior term ('click', 'order', 'order*price') or a ratio 'num/den' of two. Enforced as "
        "aggregate constraints with Lagrange multipliers (reward += lambda * mean|reward| * margin), so single requests may trade.",
    )
    guardrail_lr: float = Field(5.0, gt=0, description="Dual-ascent step of the guard-rail multipliers per Stage-2 step "
                                "(lambda <- max(0, lambda - lr * mean margin of the policy's mean weights)).")
    guardrail_max: float = Field(100.0, gt=0, description="Cap on each (unit-free) guard-rail multiplier.")
    guardrail_margin: float = Field(
        0.0025, ge=0, lt=1, description="Safety margin subtracted from every guard rail's allowed loss while training "
        "(tol - margin; below 0 it asks for a gain): the rails are judged on predictions, which err on re-ranked "
        "pages, so a margin leaves room for that error on the true metric (0.25% measured in docs/benchmarks.md). 0 = the rails as stated.")
    normalize: Literal["none", "per_component_batch_std"] = Field(
        "none",
        description="'none': sum raw components; 'per_component_batch_std': divide each component by its std over the batch (N*G) before the weighted sum (normalize_then_sum).",
    )
    normalize_eps: float = Field(1e-6, gt=0, description="Added to each component's batch std when normalising.")

    @property
    def active_guardrails(self) -> dict[str, float]:
        """The guard rails in force, each tightened by ``guardrail_margin``: they are part of the rule
        component, so ``a_rule=0`` drops them."""
        if self.a_rule <= 0:
            return {}
        return {name: tol - self.guardrail_margin for name, tol in self.guardrails.items()}

    @model_validator(mode="after")
    def _check(self) -> CompositeRewardConfig:
        if self.a_post > 0 and not any(v != 0 for v in self.post_objective_weights.values()):
            raise ValueError("a_post > 0 needs a non-zero post_objective_weights entry")
        for name, tol in self.guardrails.items():
            if not 0 <= tol < 1:
                raise ValueError(f"guardrails[{name!r}] = {tol}: the allowed relative loss must be in [0, 1)")
        return self


@dataclass(frozen=True)
class RewardOutput:
    """Composite reward and its raw components, all ``[N, G]``.

    Attributes:
        total: ``a_post * post' + a_prior * prior' - a_rule * rule'`` where ``x'`` is ``x`` or
            ``x / (batch std + eps)`` per ``normalize``.
        post: raw ``R_post`` (zeros when off).
        prior: raw ``R_prior`` (zeros when off).
        rule: raw ``R_rule`` penalty, >= 0 (zeros when off).
        guard: guard-rail Lagrangian term ``mean|R| * sum_m lambda_m * margin_m`` (zeros without guard rails).
        margins: ``[N, G, M]`` guard-rail margins (``M = 0`` without guard rails).
    """

    total: Tensor
    post: Tensor
    prior: Tensor
    rule: Tensor
    guard: Tensor
    margins: Tensor

    def metrics(self) -> dict[str, float]:
        """Batch means for logging: ``reward``, ``reward_std``, ``rewards/<part>/mean``."""
        return {
            "reward": float(self.total.mean()),
            "reward_std": float(self.total.std()) if self.total.numel() > 1 else 0.0,
            "rewards/post/mean": float(self.post.mean()),
            "rewards/prior/mean": float(self.prior.mean()),
            "rewards/rule/mean": float(self.rule.mean()),
            "rewards/guard/mean": float(self.guard.mean()),
        }


def composite_reward(
    config: CompositeRewardConfig,
    order: Tensor,
    *,
    weights: Tensor | None = None,
    labels: Mapping[str, Tensor] | None = None,
    mask: Tensor | None = None,
    preds: Mapping[str, Tensor] | None = None,
    price: Tensor | None = None,
    propensity_weights: Tensor | None = None,
    position: Tensor | None = None,
    exam: Tensor | None = None,
    anchor: Tensor | None = None,
    post_order: Tensor | None = None,
    post_mask: Tensor | None = None,
    anchor_order: Tensor | None = None,
    guard_multipliers: Tensor | None = None,
    prior_value: Tensor | None = None,
) -> RewardOutput:
    """Composite GRADE reward of ``G`` re-ranked pages per request.

    Inputs of a switched-off component may be None.

    Args:
        config: :class:`CompositeRewardConfig`.
        order: ``[N, G, P]`` page indices per weight vector, best first (``fusion.top_k``).
        weights: ``[N, G, K]`` the sampled fusion weights (for ``R_rule``).
        labels: objective -> ``[N, L]`` logged feedback (for ``R_post``).
        mask: ``[N, L]`` bool, True for real candidates.
        preds: name -> ``[N, L]`` MTL predictions (for ``R_prior``).
        price: ``[N, L]`` prices (for price terms of ``R_prior``).
        propensity_weights: ``[N, L]`` IPS weights, used when ``config.ips``; else computed from
            ``position`` and ``exam`` with ``config.ips_clip``.
        position: ``[N, L]`` 1-based logged positions (0/NaN = not shown), for IPS.
        exam: ``[P]`` examination propensities by position, for IPS.
        anchor: ``[K]`` or ``[N, K]`` production weights; overrides ``config.anchor``.
        post_order: ``[N, G, P]`` page used by ``R_post`` instead of ``order`` — e.g. the
            re-ranking of the logged-shown candidates only, whose feedback is known.
        post_mask: ``[N, L]`` candidates ``R_post`` ranks (default ``mask``).
        anchor_order: ``[N, P]`` pages of the anchor weights (needed with guard rails).
        guard_multipliers: ``[M]`` Lagrange multipliers of ``config.guardrails`` (default 0).
        prior_value: ``[N, L]`` each candidate's value for ``R_prior`` (the calibrated value
            model's); None values candidates by ``config.prior_coefs`` on ``preds``.

    Returns:
        :class:`RewardOutput`.
    """
    n, g, _ = order.shape
    dtype = torch.float32
    zeros = torch.zeros(n, g, dtype=dtype, device=order.device)
    post = prior = rule = zeros
    if config.a_post > 0:
        if labels is None:
            raise ValueError("a_post > 0 needs labels")
        ipw = None
        if config.ips:
            if propensity_weights is not None:
                ipw = propensity_weights
            elif position is not None and exam is not None:
                ipw = examination_ips_weights(position, exam, clip=config.ips_clip)
            else:
                raise ValueError("ips=True needs propensity_weights, or position and exam")
        post = posterior_reward(
            order if post_order is None else post_order, labels, mask if post_mask is None else post_mask,
            config.post_objective_weights, k=config.k, gain=config.post_gain,
            propensity_weights=ipw, normalize=config.post_normalize,
        ).to(dtype)
    if config.a_prior > 0:
        disc = position_discount(config.k, config.prior_discount).to(order.device)
        if prior_value is not None:
            prior = prior_reward(order, {"value": prior_value}, None, {"value": 1.0}, disc, mask=mask).to(dtype)
        elif preds is None:
            raise ValueError("a_prior > 0 needs preds")
        else:
            prior = prior_reward(
                order, preds, price, config.prior_coefs, disc, price_scale=config.price_scale, mask=mask
            ).to(dtype)
    if config.a_rule > 0:
        has_rule = config.min_weights is not None or bool(config.max_ratio) or config.trust_radius is not None
        if has_rule:
            if weights is None:
                raise ValueError("a_rule > 0 with rules configured needs weights")
            centre = anchor if anchor is not None else config.anchor
            rule = rule_penalty(
                weights, min_weights=config.min_weights, max_ratio=config.max_ratio,
                anchor=centre, trust_radius=config.trust_radius,
            ).to(dtype)

    margins = torch.zeros(n, g, 0, dtype=dtype, device=order.device)
    guard = zeros
    if config.active_guardrails:
        if anchor_order is None or preds is None:
            raise ValueError("guardrails need anchor_order and preds")
        disc = position_discount(config.k, config.prior_discount).to(order.device)
        margins = guardrail_margins(order, anchor_order, preds, price, config.active_guardrails, disc,
                                    price_scale=config.price_scale, mask=mask).to(dtype)

    def scaled(x: Tensor) -> Tensor:
        if config.normalize == "none" or x.numel() < 2:
            return x
        return x / (x.std() + config.normalize_eps)

    total = zeros
    if config.a_post > 0:
        total = total + config.a_post * scaled(post)
    if config.a_prior > 0:
        total = total + config.a_prior * scaled(prior)
    if config.a_rule > 0:
        total = total - config.a_rule * scaled(rule)
    if config.active_guardrails and guard_multipliers is not None:
        # Multipliers are unit-free: lambda = 1 prices a 1% shortfall of a guarded metric at 1% of
        # the batch's mean |reward|, whatever the reward's scale.
        reward_scale = total.abs().mean().clamp_min(1e-6)
        guard = reward_scale * (margins * guard_multipliers.to(dtype)).sum(-1)
    return RewardOutput(total=total + guard, post=post, prior=prior, rule=rule, guard=guard, margins=margins)
