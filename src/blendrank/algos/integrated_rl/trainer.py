"""Progressive training of IntegratedRL-MTF in a world: R rounds of (explore with bounded uniform
noise around the current policy → offline actor-critic on all data so far), with the per-round
A/B value of the deterministic policy on a fixed held-out request set."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blendrank import distributed as dist
from blendrank.algos.integrated_rl.config import IntegratedRLConfig
from blendrank.algos.integrated_rl.losses import (
    bootstrap_weight,
    bound_penalty,
    critic_targets,
    ensemble_stats,
)
from blendrank.algos.integrated_rl.networks import Actor, EnsembleCritic, polyak
from blendrank.algos.integrated_rl.rollout import (
    Transitions,
    action_box,
    product_pages,
    request_state,
    session_context,
    simulate_sessions,
)
from blendrank.checkpoint import (
    Checkpointer,
    check_finite,
    fingerprint,
    generator_state,
    rng_state,
    set_generator_state,
    set_rng_state,
)
from blendrank.worlds.marketplace import MarketplaceWorld, Requests

STREAM_ROLLOUT, STREAM_AB = 30, 31  # world generator streams (the bench uses 1..5)


class IntegratedRLPolicy:
    """The trained deterministic policy: state → (powers, log10 biases) → product fusion."""

    def __init__(self, actor: Actor, mean: np.ndarray, std: np.ndarray):
        self.actor, self.mean, self.std = actor, mean.astype(np.float32), std.astype(np.float32)
        self.history: list[dict[str, Any]] = []

    def _norm(self, state: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((state - self.mean) / self.std)

    def act(self, state: np.ndarray) -> np.ndarray:
        """``[B, 2K]`` deterministic actions for raw states ``[B, S]``."""
        with torch.no_grad():
            return self.actor(self._norm(state)).double().numpy()

    def actions(self, world: MarketplaceWorld, req: Requests) -> np.ndarray:
        """Actions at session step 0 for a batch of requests."""
        return self.act(request_state(world, req, session_context(len(req))))

    def pages(self, world: MarketplaceWorld, req: Requests) -> np.ndarray:
        """Shown pages ``[B, P]``: the step-0 action per request, product fusion, top ``page_size``."""
        return product_pages(world, world.fusion_inputs(req), self.actions(world, req))

    def session_pages(self, world: MarketplaceWorld) -> Callable[[Requests, np.ndarray], np.ndarray]:
        """``pages(req, ctx)`` for requests inside sessions: the action reads the session context."""
        def pages(req: Requests, ctx: np.ndarray) -> np.ndarray:
            inputs = world.fusion_inputs(req)
            return product_pages(world, inputs, self.act(request_state(world, req, ctx, inputs)))
        return pages


def production_action(world: MarketplaceWorld, cfg: IntegratedRLConfig) -> np.ndarray:
    """The production log-linear fusion as a product-fusion action: powers = production weights,
    biases = the world's fusion floor (clipped into the action box)."""
    w = world.production_weights()
    a = np.concatenate([w, np.full(len(w), np.log10(world.config.fusion_floor))])
    low, high = action_box(len(w), (cfg.power_min, cfg.power_max), (cfg.log10_bias_min, cfg.log10_bias_max))
    return np.clip(a, low, high)


def _to_torch(data: Transitions, idx: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, torch.Tensor]:
    out = {f: torch.from_numpy(getattr(data, f)[idx]) for f in Transitions.__dataclass_fields__}
    out["state"] = (out["state"] - torch.from_numpy(mean)) / torch.from_numpy(std)
    out["next_state"] = (out["next_state"] - torch.from_numpy(mean)) / torch.from_numpy(std)
    return out


class Learner:
    """Offline actor-critic with relaxed constraints (one object per run; networks persist across rounds).

    Under ``torchrun`` each rank gets its shard of every batch (``step(b, n_global)``) and DDP
    averages the critic and actor gradients; losses are scaled by the shard's share of the
    global batch so that the average is the 1-process gradient."""

    def __init__(self, cfg: IntegratedRLConfig, state_dim: int, low: np.ndarray, high: np.ndarray, init_action: np.ndarray):
        self.cfg = cfg
        A = len(low)
        self.low, self.high = torch.from_numpy(low).float(), torch.from_numpy(high).float()
        self.actor = Actor(state_dim, self.low, self.high, cfg.hidden, torch.from_numpy(init_action))
        self.critic = EnsembleCritic(state_dim, A, cfg.hidden, cfg.critic_groups, cfg.ensemble_size)
        self.actor_t, self.critic_t = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        for p in [*self.actor_t.parameters(), *self.critic_t.parameters()]:
            p.requires_grad_(False)
        self.opt_actor = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.opt_critic = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        w = cfg.group_weights or [1.0] * cfg.critic_groups
        if len(w) != cfg.critic_groups:
            raise ValueError(f"group_weights has {len(w)} entries; critic_groups = {cfg.critic_groups}")
        self.group_w = torch.tensor(w, dtype=torch.float32)
        self.n_steps = 0
        self.actor_ddp, self.critic_ddp = dist.wrap_ddp(self.actor), dist.wrap_ddp(self.critic)

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "actor_t": self.actor_t.state_dict(), "critic_t": self.critic_t.state_dict(),
                "opt_actor": self.opt_actor.state_dict(), "opt_critic": self.opt_critic.state_dict(),
                "n_steps": self.n_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("actor", "critic", "actor_t", "critic_t", "opt_actor", "opt_critic"):
            getattr(self, name).load_state_dict(state[name])
        self.n_steps = state["n_steps"]

    def _scaled(self, a: torch.Tensor) -> torch.Tensor:
        """Actions mapped to [-1, 1] per dimension as critic inputs."""
        return (a - self.low) / (self.high - self.low) * 2 - 1

    def step(self, b: dict[str, torch.Tensor], n_global: int | None = None) -> dict[str, float]:
        """One critic step (and an actor + target step every ``actor_every``) on this rank's
        shard ``b`` of a global batch of ``n_global`` transitions (default: ``b`` is all of it)."""
        cfg = self.cfg
        n_here = len(b["done"])
        n_global = n_global or n_here
        share = n_here / n_global * dist.world_size()  # DDP averages: this restores the global mean
        with torch.no_grad():
            a_next = self.actor_t(b["next_state"])
            phi = bootstrap_weight(a_next, b["next_lo"], b["next_hi"], cfg.bootstrap_rate)
            q_next = self.critic_t(b["next_state"], self._scaled(a_next))
            y = critic_targets(b["reward"].T, b["done"], q_next, phi, cfg.gamma, cfg.target_reduce, cfg.target_std_coef)
        q = self.critic_ddp(b["state"], self._scaled(b["action"]))
        critic_loss = ((q - y[:, None, :]) ** 2).mean()
        self.opt_critic.zero_grad()
        (critic_loss * share).backward()
        c_loss = dist.all_reduce_sum(critic_loss.detach() * (n_here / n_global))
        check_finite(c_loss, self.critic.parameters(), f"IntegratedRL critic step {self.n_steps}")
        self.opt_critic.step()
        q_sum = dist.all_reduce_sum(q.detach().mean(1).sum(0).sum())
        out = {"critic_loss": float(c_loss), "q_mean": float(q_sum) / n_global}
        self.n_steps += 1
        if self.n_steps % cfg.actor_every == 0:
            a = self.actor_ddp(b["state"])
            with self.critic_ddp.no_sync() if dist.is_distributed() else contextlib.nullcontext():  # critic grads unused here
                q_pi = self.critic_ddp(b["state"], self._scaled(a))
            mean, std = ensemble_stats(q_pi)
            obj = (self.group_w[:, None] * mean).sum(0)
            # Q-scale normalisation of the penalties (our choice), over the global batch
            scale = (dist.all_reduce_sum(obj.abs().sum().detach()) / n_global).clamp(min=1e-6)
            unc = (self.group_w[:, None] * std).sum(0)
            d = bound_penalty(a, b["lo"], b["hi"], cfg.bound_rate)
            actor_loss = (-obj / scale + cfg.actor_std_coef * unc / scale + cfg.bound_coef * d).mean()
            self.opt_actor.zero_grad()
            (actor_loss * share).backward()
            a_loss = dist.all_reduce_sum(actor_loss.detach() * (n_here / n_global))
            check_finite(a_loss, self.actor.parameters(), f"IntegratedRL actor step {self.n_steps}")
            self.opt_actor.step()
            polyak(self.actor_t, self.actor, cfg.tau)
            polyak(self.critic_t, self.critic, cfg.tau)
            d_sum = dist.all_reduce_sum(d.detach().sum())
            out.update(actor_loss=float(a_loss), bound_penalty=float(d_sum) / n_global)
        return out


def tail_mean(stats: list[dict[str, float]], key: str) -> float:
    """Mean of ``key`` over the step records that have it (NaN if none)."""
    vals = [s[key] for s in stats if key in s]
    return float(np.mean(vals)) if vals else float("nan")


def step_trace(stats: list[dict[str, float]], first_step: int = 0, points: int = 50) -> dict[str, list[float | None]]:
    """Loss and Q curves of one round for the report: the step and the means of ``critic_loss``,
    ``q_mean`` and ``actor_loss`` over ``points`` consecutive windows of ``stats`` (None where a
    window has no actor step)."""
    width = max(1, -(-len(stats) // points))
    out: dict[str, list[float | None]] = {"step": [], "critic_loss": [], "q_mean": [], "actor_loss": []}
    for start in range(0, len(stats), width):
        window = stats[start:start + width]
        out["step"].append(first_step + start + len(window))
        for k in ("critic_loss", "q_mean", "actor_loss"):
            vals = [s[k] for s in window if k in s]
            out[k].append(round(float(np.mean(vals)), 6) if vals else None)
    return out


def _transitions_state(data: Transitions) -> dict[str, torch.Tensor]:
    return {f: torch.from_numpy(np.ascontiguousarray(getattr(data, f))) for f in Transitions.__dataclass_fields__}


def fit_integrated_rl(world: MarketplaceWorld, cfg: IntegratedRLConfig | None = None,
                      log: Callable[[str], None] | None = None, checkpoint_dir: str | Path | None = None,
                      checkpoint_every: int = 500, resume: bool = True) -> IntegratedRLPolicy:
    """Progressive training in ``world``; returns the deterministic policy with ``.history``.

    Under ``torchrun`` every rank simulates the same sessions (seeded) and trains on its shard
    of every batch (DDP). With ``checkpoint_dir`` a checkpoint is written every
    ``checkpoint_every`` gradient steps and after each round; ``resume`` continues from it."""
    cfg = cfg or IntegratedRLConfig()
    log = (log or (lambda s: None)) if dist.is_main() else (lambda s: None)  # rank 0 reports
    ckpt = None if checkpoint_dir is None else Checkpointer(
        checkpoint_dir, "integrated_rl", fingerprint({"config": cfg.model_dump(mode="json"),
                                                      "world": world.config.model_dump(mode="json")}),
        checkpoint_every, resume)
    state = ckpt.load() if ckpt is not None else None
    torch.manual_seed(cfg.seed)
    K = len(world.config.fusion_inputs)
    low, high = action_box(K, (cfg.power_min, cfg.power_max), (cfg.log10_bias_min, cfg.log10_bias_max))
    init = production_action(world, cfg)
    ab_req = world.sample_requests(cfg.eval_requests, np.random.default_rng([world.config.seed, STREAM_AB, cfg.seed]))
    ab_truth = world.truth(ab_req)
    ab_value = lambda pages: float(world.page_metrics(ab_truth, pages)["value"].mean())
    prod_value = ab_value(world.rank(world.fusion_inputs(ab_req), torch.from_numpy(world.production_weights()).float()))

    learner: Learner | None = None
    policy: IntegratedRLPolicy | None = None
    parts: list[Transitions] = []
    first_round, first_step = 0, 0
    stats: list[dict[str, float]] = []
    if state is not None:  # rebuild the run as it was at the checkpoint
        parts = [Transitions(**{f: t.numpy() for f, t in p.items()}) for p in state["parts"]]
        learner = Learner(cfg, parts[0].state.shape[1], low, high, init)
        learner.load_state_dict(state["learner"])
        policy = IntegratedRLPolicy(learner.actor, state["mean"].numpy(), state["std"].numpy())
        policy.history = list(state["history"])
        first_round, first_step, stats = state["round"], state["step"], list(state["stats"])
        set_rng_state(state["rng"])

    def snapshot(rnd: int, step: int, batch_rng: np.random.Generator | None) -> None:
        assert ckpt is not None and learner is not None and policy is not None
        ckpt.save({"learner": learner.state_dict(), "parts": [_transitions_state(p) for p in parts],
                   "mean": torch.from_numpy(policy.mean), "std": torch.from_numpy(policy.std),
                   "history": policy.history, "round": rnd, "step": step, "stats": stats,
                   "batch_rng": None if batch_rng is None else generator_state(batch_rng), "rng": rng_state()})

    for rnd in range(first_round, cfg.rounds):
        t0 = time.perf_counter()
        resumed = state is not None and rnd == first_round and len(parts) > rnd
        if not resumed:
            rng = np.random.default_rng([world.config.seed, STREAM_ROLLOUT, cfg.seed, rnd])
            centre = (lambda s: np.broadcast_to(init, (len(s), len(init))).copy()) if policy is None else policy.act
            parts.append(simulate_sessions(world, centre, cfg.sessions_per_round, rng, cfg.explore_delta, low, high, cfg.critic_groups))
        data = Transitions.concat(parts)
        if policy is None:  # state normalisation fixed from the first round's data
            mean = data.state.mean(0)
            std = data.state.std(0) + 1e-3
            learner = Learner(cfg, data.state.shape[1], low, high, init)
            policy = IntegratedRLPolicy(learner.actor, mean, std)
        assert learner is not None
        batch_rng = np.random.default_rng([cfg.seed, 7, rnd])
        step0 = 0
        if resumed:
            assert state is not None
            if state["batch_rng"] is not None:
                set_generator_state(batch_rng, state["batch_rng"])
            step0 = first_step
        else:
            stats = []
        for step in range(step0, cfg.steps_per_round):
            idx = batch_rng.integers(len(data), size=min(cfg.batch_size, len(data)))
            stats.append(learner.step(_to_torch(data, dist.shard(idx), policy.mean, policy.std), len(idx)))
            if ckpt is not None and ckpt.due(learner.n_steps) and step + 1 < cfg.steps_per_round:
                snapshot(rnd, step + 1, batch_rng)
        tail = stats[-max(1, len(stats) // 5):]  # average over the last fifth of the round

        value = ab_value(policy.pages(world, ab_req))
        act = policy.actions(world, ab_req)
        rec = {"round": rnd, "transitions": len(data), "sessions": cfg.sessions_per_round * (rnd + 1),
               "mean_session_length": float(len(parts[-1]) / cfg.sessions_per_round),
               "explore_value_per_request": float(parts[-1].value.mean()),
               **{k: tail_mean(tail, k) for k in ("critic_loss", "q_mean", "actor_loss", "bound_penalty")}, "ab_value": value, "ab_production_value": prod_value,
               "ab_lift": value / prod_value - 1, "mean_action": act.mean(0).round(4).tolist(),
               "seconds": time.perf_counter() - t0, "trace": step_trace(stats, rnd * cfg.steps_per_round)}
        policy.history.append(rec)
        if ckpt is not None and rnd + 1 < cfg.rounds:
            snapshot(rnd + 1, 0, None)
        log(f"integrated_rl round {rnd}: {len(data)} transitions, critic {rec['critic_loss']:.4f}, Q {rec['q_mean']:.3f}, "
            f"actor {rec['actor_loss']:.3f}, A/B value {value:.4f} ({rec['ab_lift']:+.2%} vs production)")
    assert policy is not None
    if ckpt is not None:
        ckpt.clear()
    return policy
