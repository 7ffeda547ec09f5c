"""IntegratedRL-MTF in the ``kuairand-sim`` world: progressive rounds of exploring sessions.

The world's own session model decides how long a user stays after every video, so this is the
paper's setting: one action per request (powers and log10 biases of the product fusion over
the student's predictions), the next state is the same session's next request, the reward is the
realised business value of the consumed videos (critic group 0: watch time, as in the paper;
group 1: likes, follows, comments, forwards, profile visits and hates). State: the user/context
``f_*`` features of the request (one-hot categoricals, as on logs), the list statistics of the
fused predictions and the session context from the feedback so far.

Shapes: ``B`` active sessions, ``N`` candidates, ``P`` page size, ``K`` fusion inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from blendrank.algos.grade.data import FusionSpec, build_batch, fit_policy_features
from blendrank.algos.integrated_rl.config import IntegratedRLConfig
from blendrank.algos.integrated_rl.logs import one_hot
from blendrank.algos.integrated_rl.rollout import Transitions, action_box, product_scores
from blendrank.algos.integrated_rl.trainer import Learner, _to_torch, step_trace, tail_mean
from blendrank.errors import ConfigError
from blendrank.features.center import FeatureCenter
from blendrank.fusion.formulas import top_k
from blendrank.worlds.kuairand_sim import KuaiRandSimWorld
from blendrank.worlds.kuairand_sim_config import FUSION_INPUTS
from blendrank.worlds.kuairand_sim_sessions import StepContext
from blendrank.worlds.kuairand_sim_teacher import POST_CLICK

STREAM_EXPLORE, STREAM_AB = 40, 39  # kuairand-sim session streams (the bench uses 1, 3, 4)
SESSION_FEATURES = 5  # log1p step, log1p impressions, log1p minutes watched, last page's clicks / P, last page value


class SessionRunner:
    """A policy for :meth:`KuaiRandSimWorld.run_sessions` that keeps each session's context from
    the feedback (``record``) and, when exploring, logs one transition per request.

    ``centre(states) -> [B, A]`` is the deterministic policy; with ``delta > 0`` the action is
    ``clip(centre + U(-delta, delta), box)`` and the trusted interval ``[centre ± delta]``."""

    def __init__(self, world: KuaiRandSimWorld, states: Callable[[StepContext, np.ndarray], np.ndarray],
                 centre: Callable[[np.ndarray], np.ndarray], low: np.ndarray, high: np.ndarray,
                 delta: float = 0.0, rng: np.random.Generator | None = None):
        self.world, self.states, self.centre, self.low, self.high = world, states, centre, low, high
        self.delta, self.rng = delta, rng
        self.ctx = np.zeros((0, SESSION_FEATURES))
        self.steps: list[dict[str, np.ndarray]] = []
        self.last: dict[int, tuple[int, int]] = {}  # session -> (step record, row) of its latest request

    def __call__(self, c: StepContext) -> np.ndarray:
        if c.session.max() >= len(self.ctx):
            self.ctx = np.concatenate([self.ctx, np.zeros((c.session.max() + 1 - len(self.ctx), SESSION_FEATURES))])
        state = self.states(c, self.ctx[c.session])
        centre = np.clip(self.centre(state), self.low, self.high)
        action = centre
        if self.delta > 0:
            assert self.rng is not None
            action = np.clip(centre + self.rng.uniform(-self.delta, self.delta, centre.shape), self.low, self.high)
            lo, hi = centre - self.delta, centre + self.delta
            for i, s in enumerate(c.session.tolist()):  # the session's previous request continues here
                if s in self.last:
                    k, row = self.last[s]
                    prev = self.steps[k]
                    prev["next_state"][row], prev["next_lo"][row], prev["next_hi"][row] = state[i], lo[i], hi[i]
                    prev["done"][row] = 0.0
            self.steps.append({"session": c.session.copy(), "state": state, "action": action, "lo": lo, "hi": hi,
                               "next_state": np.zeros_like(state), "next_lo": np.zeros_like(lo),
                               "next_hi": np.zeros_like(hi), "done": np.ones(len(state))})
            self.last.update({s: (len(self.steps) - 1, i) for i, s in enumerate(c.session.tolist())})
        scores = product_scores(c.inputs.double(), torch.from_numpy(action))
        return top_k(scores, None, self.world.config.page_size)[0].numpy()

    def record(self, c: StepContext, page: np.ndarray, fb: dict[str, np.ndarray]) -> None:
        """Reward parts of the page just consumed, then the context of the session's next request."""
        v = self.world.config.value
        r_watch = v.watch * fb["watch_s"].sum(1)
        r_rest = sum(w * fb[k].sum(1) for k, w in zip(POST_CLICK, v.post_click())) + v.hate * fb["hate"].sum(1)
        ctx = self.ctx[c.session]
        seen = fb["consumed"].sum(1)
        ctx[:, 0] = np.log1p(c.step + 1)
        ctx[:, 1] = np.log1p(np.expm1(ctx[:, 1]) + seen)
        ctx[:, 2] = np.log1p(np.expm1(ctx[:, 2]) + fb["watch_s"].sum(1) / 60.0)
        ctx[:, 3] = fb["click"].sum(1) / page.shape[1]
        ctx[:, 4] = np.sign(r_watch + r_rest) * np.log1p(np.abs(r_watch + r_rest))
        self.ctx[c.session] = ctx
        if self.delta > 0:
            self.steps[-1]["reward"] = np.stack([r_watch, r_rest], 1)

    def transitions(self, groups: int) -> Transitions:
        out = {f: np.concatenate([s[f] for s in self.steps]) for f in Transitions.__dataclass_fields__ if f not in ("reward", "value")}
        reward = np.concatenate([s["reward"] for s in self.steps])
        out["reward"] = reward if groups == 2 else reward.sum(1, keepdims=True)
        out["value"] = reward.sum(1)
        return Transitions(**{k: np.ascontiguousarray(a, dtype=np.float32) for k, a in out.items()})


class KsimStates:
    """State of a request: one-hot user/context categoricals, numerics, list statistics of the
    fused predictions, session context."""

    def __init__(self, world: KuaiRandSimWorld, spec: FusionSpec, center: FeatureCenter):
        self.world, self.spec, self.center = world, spec, center
        self.cards = list(center.cardinalities.values())

    def __call__(self, c: StepContext, session_ctx: np.ndarray) -> np.ndarray:
        batch = build_batch(self.world.request_table(c), self.spec, self.center)
        if not np.array_equal(batch.request_id, c.session * 10_000 + c.step):  # request_table's ids, sorted by session
            raise AssertionError("kuairand-sim request order changed")
        return np.concatenate([one_hot(batch.cat, self.cards), batch.num.numpy(), batch.stats.numpy(),
                               session_ctx], 1).astype(np.float32)


class KsimPolicy:
    """The trained deterministic policy; ``runner()`` gives a fresh policy (and its ``record``) for
    ``run_sessions``."""

    def __init__(self, world: KuaiRandSimWorld, learner: Learner, states: KsimStates, mean: np.ndarray, std: np.ndarray,
                 low: np.ndarray, high: np.ndarray):
        self.world, self.learner, self.states, self.mean, self.std = world, learner, states, mean, std
        self.low, self.high = low, high
        self.history: list[dict[str, Any]] = []

    def act(self, state: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.learner.actor(torch.from_numpy((state - self.mean) / self.std)).double().numpy()

    def runner(self, delta: float = 0.0, rng: np.random.Generator | None = None) -> SessionRunner:
        return SessionRunner(self.world, self.states, self.act, self.low, self.high, delta, rng)


def production_ksim_action(world: KuaiRandSimWorld, cfg: IntegratedRLConfig) -> np.ndarray:
    """The world's production log-linear fusion as a product-fusion action, clipped into the box."""
    if world.config.fusion != "log_linear":
        raise ConfigError(f"integrated_rl in kuairand-sim starts from the production fusion as a product fusion, which "
                          f"needs fusion=log_linear (got {world.config.fusion!r}); set world_overrides=['fusion=log_linear']")
    w = world.production_weights()
    low, high = action_box(len(w), (cfg.power_min, cfg.power_max), (cfg.log10_bias_min, cfg.log10_bias_max))
    return np.clip(np.concatenate([w, np.full(len(w), np.log10(world.config.fusion_floor))]), low, high)


def fit_integrated_rl_ksim(world: KuaiRandSimWorld, cfg: IntegratedRLConfig | None = None, ab_sessions: int = 200,
                           log: Callable[[str], None] | None = None) -> KsimPolicy:
    """``cfg.rounds`` rounds of (``sessions_per_round`` exploring sessions → ``steps_per_round``
    steps on all data so far); after each, the A/B value = mean realised session value of the
    deterministic policy on ``ab_sessions`` held-out sessions, with production's on the same."""
    cfg = cfg or IntegratedRLConfig()
    log = log or (lambda s: None)
    torch.manual_seed(cfg.seed)
    K = len(FUSION_INPUTS)
    low, high = action_box(K, (cfg.power_min, cfg.power_max), (cfg.log10_bias_min, cfg.log10_bias_max))
    init = production_ksim_action(world, cfg)
    logs = world.models["student"].add_predictions(world.student_logs)
    states = KsimStates(world, FusionSpec(objectives=list(FUSION_INPUTS), formula="log_linear", floor=world.config.fusion_floor),
                        fit_policy_features(logs))
    def fixed(state: np.ndarray) -> np.ndarray:
        return np.broadcast_to(init, (len(state), len(init))).copy()

    def ab_value(centre: Callable[[np.ndarray], np.ndarray]) -> float:
        run = SessionRunner(world, states, centre, low, high)
        return float(world.run_sessions(run, ab_sessions, STREAM_AB, record=run.record).totals["value"].mean())

    prod_value = ab_value(fixed)
    parts: list[Transitions] = []
    policy: KsimPolicy | None = None
    scale = 1.0
    for rnd in range(cfg.rounds):
        t0 = time.perf_counter()
        rng = np.random.default_rng([world.config.seed, STREAM_EXPLORE, cfg.seed, rnd])
        run = SessionRunner(world, states, fixed if policy is None else policy.act, low, high, cfg.explore_delta, rng)
        world.run_sessions(run, cfg.sessions_per_round, STREAM_EXPLORE + rnd, record=run.record)
        parts.append(run.transitions(cfg.critic_groups))
        data = Transitions.concat(parts)
        if policy is None:  # state normalisation and reward scale fixed from the first round's data
            scale = float(np.abs(data.value).mean()) or 1.0  # rewards in units of the mean page value
            policy = KsimPolicy(world, Learner(cfg, data.state.shape[1], low, high, init), states,
                                data.state.mean(0), data.state.std(0) + 1e-3, low, high)
        data.reward = data.reward / scale
        batch_rng = np.random.default_rng([cfg.seed, 7, rnd])
        stats = []
        for _ in range(cfg.steps_per_round):
            idx = batch_rng.integers(len(data), size=min(cfg.batch_size, len(data)))
            stats.append(policy.learner.step(_to_torch(data, idx, policy.mean, policy.std)))
        tail = stats[-max(1, len(stats) // 5):]  # average over the last fifth of the round
        value = ab_value(policy.act)
        rec = {"round": rnd, "transitions": len(data), "sessions": cfg.sessions_per_round * (rnd + 1),
               "mean_session_length": len(parts[-1]) / cfg.sessions_per_round,
               "explore_value_per_request": float(parts[-1].value.mean()), "reward_scale": scale,
               **{k: tail_mean(tail, k) for k in ("critic_loss", "q_mean", "actor_loss", "bound_penalty")}, "ab_value": value, "ab_production_value": prod_value,
               "ab_lift": value / prod_value - 1, "mean_action": policy.act(parts[-1].state).mean(0).round(4).tolist(),
               "seconds": time.perf_counter() - t0, "trace": step_trace(stats, rnd * cfg.steps_per_round)}
        policy.history.append(rec)
        log(f"integrated_rl round {rnd}: {len(data)} transitions, critic {rec['critic_loss']:.4f}, Q {rec['q_mean']:.3f}, "
            f"A/B session value {value:.1f} ({rec['ab_lift']:+.2%} vs production)")
    assert policy is not None
    return policy
