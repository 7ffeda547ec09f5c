"""GRADE trainer: Stage 1 (multi-objective LambdaLoss initialisation) then Stage 2 (GRPO with
Dirichlet exploration and the composite reward), on logged requests. Reads top to bottom.

Shapes: ``N`` requests in a step, ``G`` = ``num_generations``, ``L`` candidates, ``P`` page size,
``K`` fusion inputs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from blendrank import distributed as dist
from blendrank.algos.grade.config import GRADEConfig
from blendrank.algos.grade.data import (
    FusionSpec,
    RequestBatch,
    RequestLog,
    batches_of,
    build_batch,
    shuffled_requests,
)
from blendrank.checkpoint import (  # NonFiniteError: re-exported (raised by the stages)
    Checkpointer,
    NonFiniteError,  # noqa: F401
    check_finite,
    fingerprint,
    objective_input,
    rng_state,
    set_rng_state,
)
from blendrank.data.fingerprint import data_input
from blendrank.errors import DataError
from blendrank.features.center import FeatureCenter
from blendrank.fusion.artifact import load_policy, make_policy, save_policy
from blendrank.fusion.formulas import fuse, position_discount, top_k
from blendrank.fusion.policy import DirichletPolicy
from blendrank.jsonio import write_jsonl
from blendrank.losses.grpo import group_advantages, grpo_loss, k3_kl
from blendrank.losses.lambdaloss import multi_objective_lambda_loss
from blendrank.rewards.components import (
    examination_ips_weights,
    guardrail_margins,
    position_bias_from_counts,
)
from blendrank.rewards.composite import composite_reward
from blendrank.rewards.value_model import Moments, fit_ridge, predict_value, r_squared, value_design

#: Stage 1's single label under ``grading="value"``: each candidate's realised value.
VALUE_LABEL = "__value__"


@dataclass
class GradePolicy:
    """A trained fusion policy with everything needed to apply it to new requests."""

    policy: DirichletPolicy
    spec: FusionSpec
    center: FeatureCenter
    config: GRADEConfig
    history: list[dict[str, Any]] = field(default_factory=list)

    def batch(self, table: pa.Table) -> RequestBatch:
        return build_batch(table, self.spec, self.center)

    @torch.no_grad()
    def weights(self, batch: RequestBatch) -> torch.Tensor:
        """Deterministic serving weights ``[B, K]`` (the Dirichlet mean)."""
        self.policy.eval()
        return self.policy.mean_weights(batch.cat, batch.num, batch.stats)

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        save_policy(out, self.policy, self.spec, list(self.center.cardinalities.values()),
                    len(self.center.numeric_names()), self.config.model_dump_json(indent=2))
        self.center.save(out / "feature_center.json")
        write_jsonl(out / "history.jsonl", self.history)
        return out

    @classmethod
    def load(cls, path: str | Path) -> GradePolicy:
        policy, spec, config = load_policy(path)
        try:
            cfg = GRADEConfig.model_validate(config)
        except ValueError as exc:
            raise DataError(f"{Path(path) / 'config.json'}: not a GRADE config ({str(exc).splitlines()[0]})") from None
        return cls(policy, spec, FeatureCenter.load(Path(path) / "feature_center.json"), cfg)


@dataclass
class TrainingRun:
    """Checkpointing of one ``fit_grade`` run: where to save, how often, and the state resumed
    from (``None``: a fresh start). Stages save ``{"stage", "model", "optimizer", "rng",
    "history", ...}`` every ``ckpt.every`` optimiser steps and at stage boundaries."""

    ckpt: Checkpointer | None = None
    state: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def resumed(self, stage: int) -> dict[str, Any] | None:
        """The checkpoint when it was written during ``stage`` (continue from it), else None."""
        return self.state if self.state is not None and self.state["stage"] == stage else None

    def skips(self, stage: int) -> bool:
        """True when the checkpoint is from a later stage (``stage`` is already done)."""
        return self.state is not None and self.state["stage"] > stage

    def due(self, step: int) -> bool:
        return self.ckpt is not None and self.ckpt.due(step)

    def save(self, stage: int, policy: nn.Module, opt: torch.optim.Optimizer, **extra: Any) -> None:
        if self.ckpt is not None:
            self.ckpt.save({"stage": stage, "model": policy.state_dict(), "optimizer": opt.state_dict(),
                            "rng": rng_state(), "history": list(self.history), **extra})


class _MeanWeights(nn.Module):
    """Stage-1 forward (state → mean fusion weights ``[B, K]``) as a module, so that DDP sees
    every parameter used in the step inside ``forward``."""

    def __init__(self, policy: DirichletPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, cat: torch.Tensor, num: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        z, _ = self.policy.heads(cat, num, stats)
        return self.policy.mean(z)


class _GRPOObjective(nn.Module):
    """Stage-2 loss of one inner iteration as a module (for DDP): returns the loss, then the
    detached GRPO output and policy heads ``(z [N, K], kappa [N])`` for logging. Only the loss
    may carry a graph: DDP marks parameters reachable from any output as used, and e.g. the
    concentration head is reachable from ``kappa`` but not from the loss of the Gaussian
    ablations."""

    def __init__(self, policy: DirichletPolicy, cfg: GRADEConfig):
        super().__init__()
        self.policy, self.s2 = policy, cfg.stage2

    def forward(self, b: RequestBatch, actions: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor,
                z_ref: torch.Tensor, k_ref: torch.Tensor, logp_ref: torch.Tensor | None):
        s2, policy = self.s2, self.policy
        z, kappa = policy.heads(b.cat, b.num, b.stats)
        logp = policy.log_prob(z, kappa, actions)
        if s2.beta > 0:
            kl = policy.kl(z, kappa, z_ref, k_ref) if s2.kl_estimator == "exact" else k3_kl(logp, logp_ref)
        else:
            kl = None
        ent = policy.entropy(z, kappa) if s2.entropy_coef > 0 else None
        out = grpo_loss(logp, logp_old, adv, epsilon=s2.epsilon, epsilon_high=s2.epsilon_high, beta=s2.beta,
                        kl=kl, entropy=ent, entropy_coef=s2.entropy_coef)
        detached = replace(out, **{f.name: getattr(out, f.name).detach() for f in fields(out)})
        return out.loss, detached, z.detach(), kappa.detach()


def _informative(labels: dict[str, torch.Tensor], mask: torch.Tensor, names: list[str]) -> torch.Tensor:
    """``[T]`` number of requests whose real candidates do not all share one label, per
    objective: the requests LambdaLoss averages over (``reduction="mean"``)."""
    big = torch.finfo(torch.float32).max
    out = []
    for n in names:
        y = labels[n].float()
        out.append((y.masked_fill(~mask, -big).amax(-1) > y.masked_fill(~mask, big).amin(-1)).sum())
    return torch.stack(out).double() if out else torch.zeros(0, dtype=torch.float64)


# ---------------------------------------------------------------------------------- Stage 1
def _requests(data: RequestLog | RequestBatch) -> RequestLog:
    return data if isinstance(data, RequestLog) else RequestLog.from_batch(data)


def train_stage1(policy: DirichletPolicy, data: RequestLog | RequestBatch, cfg: GRADEConfig,
                 log: Callable[[dict[str, Any]], None], run: TrainingRun | None = None) -> None:
    """Fit the policy's mean weights so the fused ranking of logged candidates orders the
    observed feedback well (multi-objective LambdaLoss).

    Epoch ``e`` is pass ``e`` of :func:`~blendrank.algos.grade.data.shuffled_requests` (the
    log streamed buffer by buffer, each buffer shuffled), cut into batches. Under ``torchrun``
    every rank streams the same global batches, keeps the shard ``batch[rank::world_size]``,
    and DDP averages the gradients; the loss is normalised by the *global* number of
    informative requests per objective, so the averaged gradient is the 1-process gradient of
    the same batch."""
    run = run or TrainingRun()
    s1 = cfg.stage1
    data = _requests(data)
    summary = data.summary(cfg.reward.k)
    weights = s1.objective_weights or cfg.reward.post_objective_weights
    present = {o: w for o, w in weights.items() if o in summary.labels and w != 0}
    if s1.grading == "value":  # one grade per candidate: its realised value Σ_o w_o·y_o, floored at 0
        value_of = {o: w for o, w in present.items()}
        lam = {VALUE_LABEL: 1.0} if any(w > 0 for w in value_of.values()) else {}
    else:
        lam = {o: w for o, w in present.items() if w > 0}
    if not lam:
        raise DataError(f"Stage 1 needs labels for {list(weights)} (with a positive weight); the data has {summary.labels}")
    names = list(lam)

    def graded(labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if s1.grading != "value":
            return labels
        return {VALUE_LABEL: sum(w * labels[o].float() for o, w in value_of.items()).clamp_min(0.0)}
    opt = torch.optim.Adam(policy.parameters(), lr=s1.lr)
    model = dist.wrap_ddp(_MeanWeights(policy))
    world = dist.world_size()
    shown_only = s1.shown_only and summary.any_shown
    step, first_epoch, first_batch, total = 0, 0, 0, 0.0
    if (state := run.resumed(1)) is not None:
        policy.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, first_epoch, first_batch, total = state["step"], state["epoch"], state["batch"], state["total"]
        set_rng_state(state["rng"])
    n = data.n_requests
    for epoch in range(first_epoch, s1.epochs):
        if epoch != first_epoch:
            total, first_batch = 0.0, 0
        stream = shuffled_requests(data, cfg.seed, 1, start=epoch * n + first_batch * s1.batch_size, passes=epoch + 1)
        for bi, batch in enumerate(batches_of(stream, s1.batch_size), first_batch):
            b = batch.index(slice(dist.rank(), None, world)) if world > 1 else batch
            mask = b.shown if shown_only else b.mask
            labels = graded(b.labels)
            counts = dist.all_reduce_sum(_informative(labels, mask, names))
            scores = fuse(b.features, model(b.cat, b.num, b.stats))
            # sum over this shard / global count = this shard's share of the global mean loss
            loss_part = multi_objective_lambda_loss(
                scores, labels, {o: lam[o] / max(float(c), 1.0) for o, c in zip(names, counts)}, mask,
                weighting=s1.weighting, k=s1.k, gain=s1.gain, reduction="sum")
            opt.zero_grad()
            (loss_part * world).backward()  # DDP averages over ranks: x world gives the global sum
            loss = dist.all_reduce_sum(loss_part.detach().clone())
            check_finite(loss, policy.parameters(), f"GRADE stage 1 step {step} (epoch {epoch}, batch {bi})")
            opt.step()
            total += loss.item() * len(batch)
            step += 1
            if run.due(step):
                run.save(1, policy, opt, step=step, epoch=epoch, batch=bi + 1, total=total)
        log({"stage": 1, "epoch": epoch, "lambda_loss": total / n})


# ---------------------------------------------------------------------------------- Stage 2
def _shown_prefix(scores: torch.Tensor, shown: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores[..., :S]`` and ``shown[:, :S]`` with ``S`` the most shown candidates of a request
    (at least ``k``): build_batch puts shown candidates first, so R_post's re-ranking of them
    needs no top-K over the whole list."""
    s = min(max(int(shown.sum(1).max()), k), shown.shape[1])
    if bool(shown[:, s:].any()):  # not in build_batch order: rank the whole list
        return scores, shown
    return scores[..., :s], shown[:, :s]


def _prior_terms(b: RequestBatch, spec: FusionSpec, terms: list[str]) -> torch.Tensor:
    """``[N, L, T]`` each candidate's predicted amount of every R_prior term (product of its
    factors: predictions, and price relative to the training median)."""
    x = {o: b.inputs[..., j] for j, o in enumerate(spec.objectives)}
    x["price"] = b.price / spec.price_scale
    cols = [torch.stack([x[f.strip()] for f in t.split("*")], -1).prod(-1) for t in terms]
    return torch.stack(cols, -1) if cols else b.inputs[..., :0]


def _value_model(data: RequestLog, cfg: GRADEConfig, spec: FusionSpec, exam: torch.Tensor | None):
    """``b -> [N, L]`` R_prior's calibrated candidate value (:mod:`blendrank.rewards.value_model`)
    fitted in one streaming pass, and the fit's R²; realised value ``Σ_k w_k·label_k`` under
    R_post's weights (the objective), rows weighted by ``1/exam(position)``."""
    rc = cfg.reward
    terms = [t for t, c in rc.prior_coefs.items() if c != 0]
    weights = {o: w for o, w in rc.post_objective_weights.items() if w != 0}
    moments = None
    for buf in data.buffers():
        missing = [o for o in weights if o not in buf.labels]
        if missing:
            raise DataError(f"reward.prior_model=calibrated: no label_ column for {missing}; the data has {list(buf.labels)}")
        y = sum(w * buf.labels[o].float() for o, w in weights.items())
        row_w = (examination_ips_weights(buf.position, exam, clip=rc.ips_clip) if exam is not None
                 else buf.shown.float())
        m = Moments.of(value_design(_prior_terms(buf, spec, terms), buf.inputs, spec.floor), y, row_w * buf.shown)
        moments = m if moments is None else moments + m
    if moments is None or moments.w <= 0:
        raise DataError("reward.prior_model=calibrated needs logged shown candidates (a position column) to fit on; "
                        "or set reward.prior_model=predictions")
    beta = fit_ridge(moments, rc.prior_ridge)

    def value(b: RequestBatch) -> torch.Tensor:
        return predict_value(value_design(_prior_terms(b, spec, terms), b.inputs, spec.floor), beta)

    return value, r_squared(moments, beta)


def train_stage2(policy: DirichletPolicy, data: RequestLog | RequestBatch, cfg: GRADEConfig, spec: FusionSpec,
                 anchor: torch.Tensor | None, log: Callable[[dict[str, Any]], None],
                 probe: Callable[[DirichletPolicy], dict[str, float]] | None = None,
                 run: TrainingRun | None = None) -> None:
    """GRPO: sample G weight vectors per request, re-rank, score, normalise in the group, and
    take ``num_iterations`` clipped steps with a KL penalty to the frozen Stage-1 policy.

    Step ``t`` takes the next ``batch_size`` requests of
    :func:`~blendrank.algos.grade.data.shuffled_requests` (passes over the log, one after
    another, each buffer shuffled), so a request is revisited once per pass.

    Under ``torchrun`` (an initialised process group, see :mod:`blendrank.distributed`) every
    rank streams the same global batch of requests and draws the same actions (same seed), keeps
    the shard ``batch[rank::world_size]``, scores only that shard, and DDP averages the gradients
    of the equal shards, so N processes follow the 1-process trajectory."""
    run = run or TrainingRun()
    s2, rc = cfg.stage2, cfg.reward
    rank, world = dist.rank(), dist.world_size()
    data = _requests(data)
    summary = data.summary(rc.k)
    n_global = min(s2.batch_size, data.n_requests)
    if n_global % world:
        raise DataError(f"stage2 global batch {n_global} must be divisible by the world size {world} "
                        "(set stage2.batch_size to a multiple of it)")
    shard = slice(rank, None, world)
    ref = copy.deepcopy(policy).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(policy.parameters(), lr=s2.lr)
    exam = position_bias_from_counts(summary.shows, summary.clicks) if rc.ips and rc.a_post > 0 else None
    guardrails = rc.active_guardrails
    if guardrails and anchor is None:
        raise DataError("reward.guardrails need the production weights they are measured against: pass anchor= to fit_grade "
                        "(blendrank train reads them from the objective's production_weights)")
    # Lagrange multipliers of the guard rails, raised while the mean policy breaks them (dual ascent).
    multipliers = torch.zeros(len(guardrails))
    ema = (AveragedModel(policy, multi_avg_fn=get_ema_multi_avg_fn(s2.ema_decay), use_buffers=True)
           if s2.ema_decay > 0 else None)
    first_step = 0
    if (state := run.resumed(2)) is not None:
        policy.load_state_dict(state["model"])
        ref.load_state_dict(state["ref"])
        opt.load_state_dict(state["optimizer"])
        first_step, multipliers = state["step"], state["multipliers"]
        if ema is not None:
            ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
    else:  # the Stage-2 starting point (Stage 1 done): resuming from here skips Stage 1
        run.save(2, policy, opt, step=0, ref=ref.state_dict(), multipliers=multipliers,
                 ema=ema.state_dict() if ema is not None else None)
    prior_value, prior_r2 = None, None
    if rc.a_prior > 0 and rc.prior_model == "calibrated" and s2.steps > first_step:
        try:  # position-debiased targets when the log's clicks give an examination curve
            value_exam = position_bias_from_counts(summary.shows, summary.clicks)
        except ValueError:
            value_exam = None
        prior_value, prior_r2 = _value_model(data, cfg, spec, value_exam)
        log({"stage": 2, "prior_model": "calibrated", "prior_r2": prior_r2})
    objective = dist.wrap_ddp(_GRPOObjective(policy, cfg))  # broadcasts rank 0's parameters
    batches = batches_of(shuffled_requests(data, cfg.seed, 2, start=first_step * n_global, passes=None), n_global)
    for step in range(first_step, s2.steps):
        t0 = time.perf_counter()
        ball = next(batches)  # the global batch
        with torch.no_grad():
            if world > 1:  # sample the whole global batch (keeps RNG streams equal), keep the shard
                z_all, k_all = policy.heads(ball.cat, ball.num, ball.stats)
                actions = policy.sample(z_all, k_all, s2.num_generations)[shard]
                z_old, k_old = z_all[shard], k_all[shard]
                b = ball.index(shard)
            else:
                b = ball
                z_old, k_old = policy.heads(b.cat, b.num, b.stats)
                actions = policy.sample(z_old, k_old, s2.num_generations)  # [N, G, K]
            logp_old = policy.log_prob(z_old, k_old, actions)
            z_ref, k_ref = ref.heads(b.cat, b.num, b.stats)
            w = policy.to_weights(actions)
            scores = fuse(b.features, w)  # [N, G, L]
            page, _ = top_k(scores, b.mask, rc.k)
            page_shown, _ = top_k(*_shown_prefix(scores, b.shown, rc.k), rc.k)
            # R_prior reads the MTL predictions; its price terms use price relative to the training median.
            preds = {o: b.inputs[..., j].contiguous() for j, o in enumerate(spec.objectives)}
            rel_price = b.price / spec.price_scale
            anchor_page = top_k(fuse(b.features, anchor.expand(len(b), 1, -1)), b.mask, rc.k)[0] if guardrails else None
            reward = composite_reward(
                rc, page, weights=w, labels=b.labels, mask=b.mask, preds=preds,
                price=rel_price, position=b.position, exam=exam, anchor=anchor, post_order=page_shown, post_mask=b.shown,
                anchor_order=anchor_page, guard_multipliers=multipliers,
                prior_value=prior_value(b) if prior_value is not None else None)
            if guardrails:  # dual ascent on the margins of what would be served: the mean weights
                mean_page = top_k(fuse(b.features, policy.mean(z_old).unsqueeze(1)), b.mask, rc.k)[0]
                margin = guardrail_margins(mean_page, anchor_page, preds, rel_price, guardrails,
                                           position_discount(rc.k, rc.prior_discount), price_scale=rc.price_scale,
                                           mask=b.mask).mean((0, 1))
                margin = dist.all_reduce_mean(margin)
                multipliers = (multipliers - rc.guardrail_lr * margin).clamp(0.0, rc.guardrail_max)
            # Advantages over the gathered global batch: exact also for scale_rewards="batch".
            adv, zero_std = group_advantages(dist.all_gather_cat(reward.total), s2.scale_rewards)
            adv = adv.chunk(world)[rank]
            logp_ref = ref.log_prob(z_ref, k_ref, actions) if s2.beta > 0 and s2.kl_estimator == "k3" else None
        for it in range(s2.num_iterations):
            loss, out, z, kappa = objective(b, actions, logp_old, adv, z_ref, k_ref, logp_ref)
            opt.zero_grad()
            loss.backward()  # DDP: equal shards, so the mean of shard gradients = global gradient
            norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), s2.max_grad_norm)
            check_finite(dist.all_reduce_mean(out.loss.detach().clone()), policy.parameters(),
                         f"GRADE stage 2 step {step} (iteration {it}, requests {ball.request_id[:4].tolist()}...)", norm=norm)
            opt.step()
        if ema is not None:
            ema.update_parameters(policy)
        if step % cfg.log_every == 0 or step == s2.steps - 1:
            z, kappa = z.detach(), kappa.detach()
            # Means over the global batch (averaged over equal shards); kappa min/max are this rank's.
            stats = dist.all_reduce_mean(torch.tensor([float(torch.as_tensor(v).detach()) for v in (
                reward.total.mean(), reward.post.mean(), reward.prior.mean(), reward.rule.mean(), out.kl,
                out.clip_frac_low, out.clip_frac_high, policy.entropy(z, kappa).mean(), kappa.mean(), out.loss)],
                dtype=torch.float64))
            mean_w = dist.all_reduce_mean(policy.mean(z).mean(0))
            if rank == 0:
                (r_tot, r_post, r_prior, r_rule, m_kl, cf_lo, cf_hi, m_ent, k_mean, m_loss) = stats.tolist()
                log({"stage": 2, "step": step, "reward": r_tot, "reward_post": r_post,
                     "reward_prior": r_prior, "reward_rule": r_rule,
                     "kl": m_kl, "clip_frac_low": cf_lo, "clip_frac_high": cf_hi,
                     "entropy": m_ent, "kappa_mean": k_mean,
                     "kappa_min": kappa.min().item(), "kappa_max": kappa.max().item(),
                     "frac_reward_zero_std": zero_std.float().mean().item(), "loss": m_loss,
                     "mean_weights": mean_w.tolist(), "step_ms": 1000 * (time.perf_counter() - t0),
                     **{f"guard/{name}/lambda": float(lam) for name, lam in zip(guardrails, multipliers)},
                     **({f"guard/{name}/margin": float(v) for name, v in zip(guardrails, margin)} if guardrails else {}),
                     **(probe(ema.module if ema is not None else policy) if probe else {})})
        if run.due(step + 1):
            run.save(2, policy, opt, step=step + 1, ref=ref.state_dict(), multipliers=multipliers,
                     ema=ema.state_dict() if ema is not None else None)
    if ema is not None and s2.steps > first_step:  # return the averaged policy
        policy.load_state_dict(ema.module.state_dict())


def fit_grade(train: pa.Table | str | Path, cfg: GRADEConfig, anchor: list[float] | None = None,
              log: Callable[[dict[str, Any]], None] | None = None, spec: FusionSpec | None = None,
              probe: Callable[[DirichletPolicy, FusionSpec, FeatureCenter], dict[str, float]] | None = None,
              checkpoint_dir: str | Path | None = None, checkpoint_every: int = 50,
              resume: bool = True, objective: Any = None) -> GradePolicy:
    """Train GRADE on a contract log (rows of logged requests with ``pred_*`` columns): a table,
    or a Parquet file / directory of shards, which is streamed (never loaded whole; see
    :class:`~blendrank.algos.grade.data.RequestLog` and ``cfg.data``).

    With ``checkpoint_dir``, a checkpoint (:mod:`blendrank.checkpoint`) is written there every
    ``checkpoint_every`` optimiser steps of each stage and at the start of Stage 2; with
    ``resume`` a run finds it and continues where it stopped, reaching the result of an
    uninterrupted run. It is removed when training finishes. The checkpoint records the data
    (:func:`~blendrank.data.fingerprint.data_input`) and ``objective`` (the objective ``cfg`` was
    resolved from, if any) besides the config: a run on other data or for another objective
    refuses it with a ConfigError naming ``--no-resume``, rather than resuming a policy fitted to
    something else.

    ``probe(policy, spec, center)``, if given, is called at every Stage-2 log step and its
    values are logged: worlds use it to record the *true* value of the current policy next to
    the rewards it is trained on (a reward-hacking check)."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    config_hash = fingerprint({"config": cfg.model_dump(mode="json"), "anchor": anchor,
                               "spec": spec.model_dump(mode="json") if spec else None})
    ckpt = None if checkpoint_dir is None else Checkpointer(
        checkpoint_dir, "grade", config_hash, checkpoint_every, resume,
        inputs=[data_input(train), *([] if objective is None else [objective_input(objective)])])
    state = ckpt.load() if ckpt is not None else None
    history: list[dict[str, Any]] = list(state["history"]) if state is not None else []
    run = TrainingRun(ckpt, state, history)

    def record(row: dict[str, Any]) -> None:
        history.append(row)
        if log and dist.is_main():  # under torchrun only rank 0 reports
            log(row)

    data = RequestLog.scan(train, spec, read_batch_rows=cfg.data.read_batch_rows,
                           buffer_requests=cfg.data.shuffle_buffer_requests)
    spec, center = data.spec, data.center
    if data.n_requests < 2:
        raise DataError("GRADE needs at least 2 training requests")
    summary = data.summary(cfg.reward.k)  # streaming pass: list-statistics moments, position clicks
    policy = make_policy(cfg.policy, list(center.cardinalities.values()), len(center.numeric_names()),
                         summary.stats_mean.numel(), len(spec.inputs))
    policy.set_stats_moments(summary.stats_mean, summary.stats_std)
    anchor_t = None
    if anchor is not None:
        anchor_t = torch.tensor(anchor, dtype=torch.float32)
        anchor_t = anchor_t / anchor_t.sum()
        with torch.no_grad():  # start from production weights (matters when Stage 1 is off)
            policy.mean_head.bias.copy_(torch.log(anchor_t.clamp_min(1e-3)))
    t = time.perf_counter()
    if not run.skips(1):
        train_stage1(policy, data, cfg, record, run)
        record({"stage": 1, "seconds": time.perf_counter() - t})
    t = time.perf_counter()
    train_stage2(policy, data, cfg, spec, anchor_t, record,
                 probe=(lambda p: probe(p, spec, center)) if probe else None, run=run)
    secs = time.perf_counter() - t
    record({"stage": 2, "seconds": secs, "requests_per_s": cfg.stage2.steps * min(cfg.stage2.batch_size, data.n_requests) / max(secs, 1e-9)})
    if ckpt is not None:
        ckpt.clear()
    return GradePolicy(policy, spec, center, cfg, history)

