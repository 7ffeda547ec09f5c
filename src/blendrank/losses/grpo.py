"""GRPO maths for a single-step (bandit) policy: group advantages, clipped surrogate, KL.

Shapes: ``N`` requests (states), ``G`` actions sampled per request (the group), ``K`` action
dimensions (fusion weights). One action is one "token", so TRL's ``grpo``/``bnpo``/``dapo``
loss types coincide: the objective is a plain mean over the ``N * G`` samples.

Semantics follow TRL's ``GRPOTrainer`` (``scale_rewards``, ``epsilon``/``epsilon_high``, k3 KL
added to the loss, ``clip_ratio/low_mean`` and ``clip_ratio/high_mean``); docs/grade_losses.md
has the formulas and the deviations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.distributions import Dirichlet, kl_divergence

Scale = Literal["group", "batch", "none"]

__all__ = ["GRPOLossOutput", "dirichlet_kl", "group_advantages", "grpo_loss", "k3_kl"]


def _masked_std(x: Tensor, valid: Tensor, dim: int | tuple[int, ...] | None) -> tuple[Tensor, Tensor]:
    """Mean and unbiased (Bessel) std of ``x`` over ``valid`` entries; std 0 with < 2 entries."""
    count = valid.sum(dim=dim, keepdim=True).to(x.dtype)
    xv = x.where(valid, 0.0)
    mean = xv.sum(dim=dim, keepdim=True) / count.clamp_min(1.0)
    var = ((x - mean).where(valid, 0.0) ** 2).sum(dim=dim, keepdim=True) / (count - 1.0).clamp_min(1.0)
    return mean, var.sqrt().where(count > 1, 0.0)


def group_advantages(
    rewards: Tensor, scale: Scale = "group", eps: float = 1e-4
) -> tuple[Tensor, Tensor]:
    """Group-relative advantages (TRL ``scale_rewards``).

    ``A = r - mean_group(r)``, then divided by ``std_group(r) + eps`` (``"group"``), by the std
    of all rewards in the batch ``+ eps`` (``"batch"``, PPO-Lite) or by nothing (``"none"``,
    Dr. GRPO). Stds are unbiased (Bessel), as ``torch.std``. Non-finite rewards (unscorable
    samples) are left out of the statistics and get advantage 0. Groups whose reward std is 0
    (all rewards equal) get advantage exactly 0.

    Args:
        rewards: ``[N, G]`` rewards, one group of ``G`` samples per request.
        scale: ``"group"``, ``"batch"`` or ``"none"``.
        eps: added to the std before dividing.

    Returns:
        ``(advantages [N, G], zero_std [N])``; ``zero_std.float().mean()`` is TRL's
        ``frac_reward_zero_std``.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [N, G]; got {tuple(rewards.shape)}")
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none'; got {scale!r}")
    valid = torch.isfinite(rewards)
    mean, std = _masked_std(rewards, valid, dim=1)
    zero_std = torch.isclose(std, torch.zeros_like(std)).squeeze(1)
    adv = rewards - mean
    if scale == "group":
        adv = adv / (std + eps)
    elif scale == "batch":
        _, batch_std = _masked_std(rewards, valid, dim=None)
        adv = adv / (batch_std + eps)
    adv = adv.where(valid & ~zero_std[:, None], 0.0)
    return adv, zero_std


@dataclass(frozen=True)
class GRPOLossOutput:
    """Named parts of the GRPO loss. ``loss_*`` fields sum to ``loss``; the rest are detached
    diagnostics (TRL metric names in brackets).

    Attributes:
        loss: scalar total ``loss_objective + loss_kl + loss_entropy``; call ``.backward()``.
        loss_objective: ``-mean min(rho * A, clip(rho) * A)``.
        loss_kl: ``beta * mean(kl)`` (0 when ``beta == 0`` or no KL given).
        loss_entropy: ``-entropy_coef * mean(entropy)`` (0 when off).
        clip_frac_low: fraction of samples with ``rho < 1 - epsilon`` and ``A < 0``
            (``clip_ratio/low_mean``).
        clip_frac_high: fraction with ``rho > 1 + epsilon_high`` and ``A > 0``
            (``clip_ratio/high_mean``).
        ratio_mean: mean importance ratio ``rho``.
        kl: mean KL (NaN when no KL was given, as TRL logs nothing at ``beta = 0``).
        entropy: mean policy entropy (NaN when none was given).
    """

    loss: Tensor
    loss_objective: Tensor
    loss_kl: Tensor
    loss_entropy: Tensor
    clip_frac_low: Tensor
    clip_frac_high: Tensor
    ratio_mean: Tensor
    kl: Tensor
    entropy: Tensor


def _mean(x: Tensor, weight: Tensor | None) -> Tensor:
    if weight is None:
        return x.mean()
    return (x * weight).sum() / weight.sum().clamp_min(1.0)


def grpo_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    kl: Tensor | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    mask: Tensor | None = None,
    max_log_ratio: float | None = 20.0,
) -> GRPOLossOutput:
    """Clipped GRPO surrogate with optional KL penalty and entropy bonus.

    ``rho = exp(logp_new - logp_old)``;
    ``loss = -mean min(rho * A, clip(rho, 1 - epsilon, 1 + epsilon_high) * A)
    + beta * mean(kl) - entropy_coef * mean(entropy)``.

    Args:
        logp_new: ``[N, G]`` log-density of each sampled action under the current policy
            (differentiable).
        logp_old: ``[N, G]`` log-density under the sampling policy ``pi_old`` (detached here).
        advantages: ``[N, G]`` from :func:`group_advantages` (detached here).
        epsilon: lower clip ``1 - epsilon``.
        epsilon_high: upper clip ``1 + epsilon_high``; None = ``epsilon`` (DAPO uses 0.28).
        beta: KL coefficient; the KL is added to the loss, not to the reward.
        kl: ``[N]`` (e.g. exact :func:`dirichlet_kl` per state) or ``[N, G]`` (per sample, e.g.
            :func:`k3_kl`); differentiable. Required when ``beta > 0``.
        entropy: ``[N]`` policy entropy per state (differentiable), for the bonus and logging.
        entropy_coef: bonus coefficient (0 = off).
        mask: ``[N, G]`` bool, samples that count (e.g. drop zero-std groups); None = all.
            ``[N]``-shaped ``kl``/``entropy`` are averaged over requests with any sample kept.
        max_log_ratio: clamp of ``logp_new - logp_old`` before ``exp`` (None = off), so one
            extreme sample cannot overflow ``rho`` to inf (inf * 0 advantage would give NaN).

    Returns:
        :class:`GRPOLossOutput`.
    """
    if logp_new.dim() != 2 or logp_old.shape != logp_new.shape or advantages.shape != logp_new.shape:
        raise ValueError(
            "logp_new, logp_old and advantages must all be [N, G]; got "
            f"{tuple(logp_new.shape)}, {tuple(logp_old.shape)}, {tuple(advantages.shape)}"
        )
    if epsilon < 0 or (epsilon_high is not None and epsilon_high < 0):
        raise ValueError("epsilon and epsilon_high must be >= 0")
    if beta > 0 and kl is None:
        raise ValueError("beta > 0 needs kl ([N] or [N, G])")
    eps_high = epsilon if epsilon_high is None else epsilon_high
    adv = advantages.detach()
    log_ratio = logp_new - logp_old.detach()
    if max_log_ratio is not None:
        log_ratio = log_ratio.clamp(-max_log_ratio, max_log_ratio)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - epsilon, 1.0 + eps_high)
    surrogate = torch.minimum(ratio * adv, clipped * adv)

    w = None if mask is None else mask.to(logp_new.dtype)
    w_req = None if mask is None else mask.any(-1).to(logp_new.dtype)
    loss_objective = -_mean(surrogate, w)

    zero = logp_new.new_zeros(())
    nan = logp_new.new_full((), float("nan"))
    kl_mean = nan
    loss_kl = zero
    if kl is not None:
        if kl.shape not in (logp_new.shape, logp_new.shape[:1]):
            raise ValueError(f"kl must be [N] or [N, G]; got {tuple(kl.shape)}")
        kl_mean = _mean(kl, w if kl.dim() == 2 else w_req)
        if beta != 0:
            loss_kl = beta * kl_mean
    ent_mean = nan
    loss_entropy = zero
    if entropy is not None:
        if entropy.shape != logp_new.shape[:1]:
            raise ValueError(f"entropy must be [N]; got {tuple(entropy.shape)}")
        ent_mean = _mean(entropy, w_req)
        if entropy_coef != 0:
            loss_entropy = -entropy_coef * ent_mean

    with torch.no_grad():
        r = ratio.detach()
        low = ((r < 1.0 - epsilon) & (adv < 0)).to(r.dtype)
        high = ((r > 1.0 + eps_high) & (adv > 0)).to(r.dtype)
        clip_low, clip_high, ratio_mean = _mean(low, w), _mean(high, w), _mean(r, w)

    return GRPOLossOutput(
        loss=loss_objective + loss_kl + loss_entropy,
        loss_objective=loss_objective,
        loss_kl=loss_kl,
        loss_entropy=loss_entropy,
        clip_frac_low=clip_low,
        clip_frac_high=clip_high,
        ratio_mean=ratio_mean,
        kl=kl_mean.detach(),
        entropy=ent_mean.detach(),
    )


def dirichlet_kl(alpha_p: Tensor, alpha_q: Tensor) -> Tensor:
    """Exact ``KL(Dir(alpha_p) || Dir(alpha_q))`` per state.

    Args:
        alpha_p: ``[N, K]`` concentrations of the first policy (e.g. ``pi_theta``).
        alpha_q: ``[N, K]`` concentrations of the second (e.g. the frozen reference).

    Returns:
        ``[N]`` KL, differentiable in both arguments.
    """
    if alpha_p.shape != alpha_q.shape or alpha_p.dim() < 1:
        raise ValueError(f"alpha_p and alpha_q must both be [N, K]; got {tuple(alpha_p.shape)}, {tuple(alpha_q.shape)}")
    return kl_divergence(Dirichlet(alpha_p, validate_args=False), Dirichlet(alpha_q, validate_args=False))


def k3_kl(logp_new: Tensor, logp_ref: Tensor) -> Tensor:
    """Schulman's k3 estimator of ``KL(pi_theta || pi_ref)``, per sample.

    ``k3 = exp(r) - r - 1`` with ``r = logp_ref - logp_new``; always >= 0, and unbiased when
    the actions are sampled from ``pi_theta``. In GRPO the actions come from ``pi_old``: with one
    update per batch (``num_iterations = 1``) ``pi_old = pi_theta`` at update time, otherwise the
    estimate is only approximate, exactly as in TRL (no importance correction).

    Args:
        logp_new: ``[N, G]`` log-density of the sampled actions under ``pi_theta``.
        logp_ref: ``[N, G]`` log-density of the same actions under ``pi_ref``.

    Returns:
        ``[N, G]`` per-sample KL estimates.
    """
    if logp_new.shape != logp_ref.shape:
        raise ValueError(f"logp_new and logp_ref must have the same shape; got {tuple(logp_new.shape)}, {tuple(logp_ref.shape)}")
    r = logp_ref - logp_new
    return torch.expm1(r) - r
