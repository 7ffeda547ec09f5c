"""GRADE configuration: policy, Stage 1 (LambdaLoss initialisation), Stage 2 (GRPO), reward.

Names follow what users know from TRL's GRPOConfig (``num_generations``, ``epsilon``,
``epsilon_high``, ``beta``, ``scale_rewards``, ``num_iterations``) and allRank's LambdaLoss.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from blendrank.config import SEED_MAX, BaseConfig
from blendrank.fusion.artifact import PolicyConfig
from blendrank.rewards.composite import CompositeRewardConfig


class LTRConfig(BaseConfig):
    """Stage 1: supervised multi-objective LambdaLoss on the fused scores of logged candidates."""

    epochs: int = Field(3, ge=0, description="Passes over the training requests (0 skips Stage 1).")
    batch_size: int = Field(256, ge=1, description="Requests per step.")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate.")
    weighting: Literal["ndcgLoss2", "ndcgLoss2PP", "lambdaRank", "rankNet", "ndcgLoss1"] = Field(
        "ndcgLoss2PP", description="LambdaLoss weighting scheme (Wang et al. 2018).")
    k: int | None = Field(10, ge=1, description="Truncation of the loss at the top-k of the predicted ranking.")
    objective_weights: dict[str, float] | None = Field(None, description="Weight per objective label; default the composite reward's posterior weights (the objective's values).")
    grading: Literal["value", "per_objective"] = Field(
        "value", description="value: one LambdaLoss on each candidate's realised value Σ_k w_k·label_k (the "
        "objective's page value, so labels on different scales — seconds, clicks, GMV — combine in its units); "
        "per_objective: one LambdaLoss per label, weighted by w_k (each normalised by its own ideal DCG).")
    gain: Literal["linear", "exp2"] = Field("linear", description="LambdaLoss gain; linear keeps GMV-graded labels on their scale (binary labels: same as exp2).")
    shown_only: bool = Field(True, description="Rank only logged-shown candidates (unshown ones have no feedback).")


class GRPOConfig(BaseConfig):
    """Stage 2: group-relative policy optimisation over sampled weight vectors."""

    steps: int = Field(300, ge=0, description="Sampled batches (outer steps).")
    batch_size: int = Field(512, ge=1, description="Requests per sampled batch.")
    num_generations: int = Field(16, ge=2, description="G: weight vectors sampled per request.")
    num_iterations: int = Field(2, ge=1, description="μ: inner optimisation epochs per sampled batch.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    epsilon: float = Field(0.2, gt=0, lt=1, description="Lower clip range of the importance ratio: ratios below "
                           "1 − epsilon are clipped, so it must be in (0, 1) (TRL's default 0.2).")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip range (default = epsilon).")
    beta: float = Field(0.04, ge=0, description="KL coefficient to the Stage-1 reference policy (0 = no KL).")
    kl_estimator: Literal["exact", "k3"] = Field("exact", description="Exact Dirichlet KL or the k3 sample estimator.")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus coefficient.")
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="Advantage scaling (TRL scale_rewards).")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    ema_decay: float = Field(0.98, ge=0, lt=1, description="Exponential (Polyak) average of the policy parameters over "
                             "Stage-2 steps, returned as the trained policy; 0 returns the last iterate. With guard rails the "
                             "policy and its Lagrange multipliers cycle around the constraint: the last iterate is wherever "
                             "the cycle stopped, the average settles near the constrained optimum.")


class RequestDataConfig(BaseConfig):
    """How training requests are read: streamed from the log in bounded buffers (docs/scaling.md)."""

    read_batch_rows: int = Field(16_384, ge=1, description="Rows per Parquet record batch read from disk (and "
                                 "per built chunk); feature kinds are inferred from the first batch.")
    shuffle_buffer_requests: int = Field(8192, ge=1, description="Requests built into tensors and shuffled together: "
                                         "Stage 1 epochs and Stage 2 passes visit the log buffer by buffer, each buffer "
                                         "in a seeded random order, so memory is bounded by this, not by the log. A log "
                                         "with at most this many requests is built once and kept.")


class GRADEConfig(BaseConfig):
    """Everything GRADE needs; `blendrank train --method grade --set stage2.beta=0 …`."""

    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of initialisation, batching and sampling.")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="Policy network.")
    stage1: LTRConfig = Field(default_factory=LTRConfig, description="Stage 1 (LambdaLoss initialisation).")
    stage2: GRPOConfig = Field(default_factory=GRPOConfig, description="Stage 2 (GRPO).")
    reward: CompositeRewardConfig = Field(default_factory=CompositeRewardConfig, description="Composite reward.")
    data: RequestDataConfig = Field(default_factory=RequestDataConfig, description="Reading the training requests.")
    log_every: int = Field(10, ge=1, description="Log diagnostics every N Stage-2 steps.")


#: ``grade:<variant>`` ablations as config overrides (docs/grade.md).
VARIANTS: dict[str, list[str]] = {
    "gaussian": ["policy.exploration=gaussian_logits"],
    "gaussian_weights": ["policy.exploration=gaussian_weights"],
    "post_only": ["reward.a_prior=0", "reward.a_rule=0"],
    "post_prior": ["reward.a_rule=0"],
    "prior_only": ["reward.a_post=0", "reward.a_rule=0"],
    "no_kl": ["stage2.beta=0"],
    "no_stage1": ["stage1.epochs=0"],
    "fixed_kappa": ["policy.fixed_kappa=true"],
    "no_ips": ["reward.ips=false"],
    "no_mean_floor": ["policy.mean_floor=0"],
    "post_ndcg": ["reward.post_normalize=true"],
    "stage1_per_objective": ["stage1.grading=per_objective"],
    "prior_predictions": ["reward.prior_model=predictions"],
}
