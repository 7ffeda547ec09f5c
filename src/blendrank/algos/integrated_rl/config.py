"""IntegratedRL-MTF (UnifiedRL, Liu et al., arXiv 2404.17589) configuration.

Published values: gamma = 0.9, exploration box +-0.15, q = 2 critic groups, Adam, batch 256,
progressive training in rounds. Everything else is our reconstruction (see docs/integrated_rl.md);
defaults are sized for a 2-core laptop (the paper uses m = 24 critics per group).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from blendrank.config import SEED_MAX, BaseConfig


class IntegratedRLConfig(BaseConfig):
    """Session MDP, bounded exploration, offline actor-critic with relaxed constraints, progressive rounds."""

    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of networks, exploration and world rollouts.")
    gamma: float = Field(0.9, ge=0, lt=1, description="Discount of the session return (paper: 0.9).")
    # Action space: power_k in [power_min, power_max], bias_k = 10**beta_k with beta_k in [log10_bias_min, log10_bias_max].
    power_min: float = Field(0.0, description="Lower bound of each objective's power (action box).")
    power_max: float = Field(2.0, description="Upper bound of each objective's power (action box).")
    log10_bias_min: float = Field(-4.0, description="Lower bound of log10(bias_k) (action box); the initial policy sits at -3, the world's fusion floor.")
    log10_bias_max: float = Field(0.0, description="Upper bound of log10(bias_k) (action box).")
    # Exploration.
    explore_delta: float = Field(0.15, gt=0, description="Half-width of the bounded uniform exploration noise, per action dimension (paper: 0.15).")
    # Progressive training.
    rounds: int = Field(3, ge=1, description="Progressive training rounds (explore in the world, then train on all data so far); on logs there is one round.")
    sessions_per_round: int = Field(2500, ge=1, description="Sessions simulated per round.")
    eval_requests: int = Field(2000, ge=10, description="Fixed held-out requests for the per-round A/B value (deterministic policy).")
    # Networks.
    hidden: list[int] = Field(default_factory=lambda: [64, 64], description="Hidden sizes of actor and critic MLPs.")
    critic_groups: Literal[1, 2] = Field(2, description="Critic groups: 2 = one for the click part of the reward, one for orders/GMV/extras (paper: watch time vs other behaviours); 1 = total reward.")
    ensemble_size: int = Field(2, ge=1, description="Critics per group (paper: 24).")
    # Offline actor-critic.
    steps_per_round: int = Field(1500, ge=1, description="Gradient steps after each round's exploration (on logs: of the one offline round).")
    batch_size: int = Field(256, ge=1, description="Transitions per gradient step (paper: 256).")
    critic_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the critics.")
    actor_lr: float = Field(3e-4, gt=0, description="Adam learning rate of the actor.")
    actor_every: int = Field(2, ge=1, description="Actor and target updates every this many critic steps (TD3-style delay).")
    tau: float = Field(0.01, gt=0, le=1, description="Polyak rate of the target networks.")
    target_reduce: Literal["mean", "min"] = Field("mean", description="Reduction of target Q over a group's ensemble (mean, then minus the disagreement penalty; or min).")
    target_std_coef: float = Field(0.1, ge=0, description="Ensemble-disagreement penalty on the target: subtract this times the std over the group's target critics.")
    actor_std_coef: float = Field(0.1, ge=0, description="lambda: ensemble-disagreement (std) penalty in the actor loss.")
    bound_coef: float = Field(1.0, ge=0, description="eta: weight of the exponential out-of-bounds penalty d(a) in the actor loss.")
    bound_rate: float = Field(10.0, gt=0, description="kappa: d(a) = sum_k (exp(kappa * excess_k) - 1), excess = distance outside the trusted interval.")
    bootstrap_rate: float = Field(10.0, ge=0, description="phi(a') = exp(-rate * sum_k excess_k): down-weighting of the bootstrap when the target action leaves the trusted interval.")
    group_weights: list[float] | None = Field(None, description="w_i per critic group in the actor loss (default all 1: the groups split one reward).")
    # Logs without a world: one offline round (see docs/integrated_rl.md, "On logs").
    log_actions_per_request: int = Field(4, ge=1, description="Logs only: actions drawn uniformly in the trusted interval (production action +- explore_delta) per logged request; each action's reward is replayed on the logged labels.")
    log_session_gap_s: float | None = Field(None, gt=0, description="Logs only: a user's request more than this many seconds after their previous one starts a new session; null: all of a user's requests in a split are one session.")
