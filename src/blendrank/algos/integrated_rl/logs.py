"""IntegratedRL-MTF on a contract log without a world: one offline round (docs/integrated_rl.md).

- **Sessions**: each user's requests in time order; a gap over ``log_session_gap_s`` (if set)
  starts a new session. The next state is the same user's next request in the session.
- **State**: the user/context ``f_*`` features (categoricals one-hot, numerics standardised by
  the Feature Center), the candidate-list statistics of the fused predictions and the session
  context from the *logged* feedback (step, labels so far, labels of the previous request).
- **Behaviour action**: the production log-linear fusion ``Σ w_k log(p_k + floor)`` is the
  product fusion with powers ``w_k`` and biases ``floor``, so the log's behaviour policy is that
  action with the trusted interval ``± explore_delta`` around it. A log holds one ranking per
  request, so each request gets ``log_actions_per_request`` actions drawn uniformly in the
  interval (the paper's bounded exploration, replayed) and each action's **reward** is the
  objective-weighted NDCG@k of the logged list re-ranked by it, on the logged labels (the
  bench's value metric): critic group 0 gets the first objective's part, group 1 the rest.
- The learner (critics, actor, penalties, targets) is the world version's, unchanged.

Shapes: ``B`` requests, ``L`` candidates, ``K`` objectives, ``A = 2K`` action dims, ``S`` state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from blendrank import distributed as dist
from blendrank.algos.grade.data import (
    FusionSpec,
    RequestBatch,
    build_batch,
    fit_fusion_spec,
    fit_policy_features,
)
from blendrank.algos.integrated_rl.config import IntegratedRLConfig
from blendrank.algos.integrated_rl.networks import Actor
from blendrank.algos.integrated_rl.rollout import Transitions, action_box, product_scores
from blendrank.algos.integrated_rl.trainer import Learner, _to_torch, step_trace, tail_mean
from blendrank.checkpoint import (
    Checkpointer,
    atomic_torch_save,
    fingerprint,
    generator_state,
    objective_input,
    rng_state,
    set_generator_state,
    set_rng_state,
)
from blendrank.data.fingerprint import splits_input
from blendrank.errors import DataError
from blendrank.features.center import FeatureCenter
from blendrank.jsonio import write_jsonl
from blendrank.metrics import ndcg_at_k

POLICY_FILES = ("policy.pt", "feature_center.json", "fusion.json", "config.json", "setup.json")


@dataclass(frozen=True)
class LogSetup:
    """What the log fixes: fused objectives, their weights λ in the reward and the state, the
    production action and the NDCG of the reward."""

    objectives: list[str]
    weights: list[float]  # λ_k, the composite-NDCG weights
    production_action: list[float]  # [A] (powers, log10 biases)
    k: int = 10
    gain: str = "exp2"


@dataclass(frozen=True)
class Sessions:
    """Requests of a batch ordered into sessions: ``order`` lists request indices session by
    session in time order; per request (batch order): ``step`` in its session and ``next`` (the
    batch index of the session's next request, -1 at the end)."""

    order: np.ndarray
    step: np.ndarray
    next: np.ndarray
    n_sessions: int


def log_sessions(table: pa.Table, request_id: np.ndarray, gap_s: float | None) -> Sessions:
    """Sessions of the requests ``request_id`` (a batch's order) from ``user_id`` and ``ts`` (ms)."""
    first = table.group_by("request_id", use_threads=False).aggregate([("user_id", "min"), ("ts", "min")])
    ids = first["request_id"].to_numpy(zero_copy_only=False)
    pos = {r: i for i, r in enumerate(ids.tolist())}
    rows = np.array([pos[r] for r in request_id.tolist()])
    user = np.unique(first["user_id_min"].to_numpy(zero_copy_only=False), return_inverse=True)[1][rows]
    ts = first["ts_min"].to_numpy().astype(np.int64)[rows]
    order = np.lexsort((np.arange(len(rows)), ts, user))
    new = np.ones(len(order), dtype=bool)
    new[1:] = user[order][1:] != user[order][:-1]
    if gap_s is not None:
        new[1:] |= np.diff(ts[order]) > gap_s * 1000
    sid = np.cumsum(new) - 1
    start = np.flatnonzero(new)
    step, nxt = np.empty(len(order), dtype=np.int64), np.full(len(order), -1)
    step[order] = np.arange(len(order)) - start[sid]
    cont = np.flatnonzero(~new[1:])  # sorted position i continues into i + 1
    nxt[order[cont]] = order[cont + 1]
    return Sessions(order, step, nxt, int(sid[-1] + 1) if len(sid) else 0)


def label_counts(batch: RequestBatch, objectives: list[str]) -> np.ndarray:
    """``[B, K]`` logged label sum of each objective over each request's candidates."""
    return torch.stack([(batch.labels[o] * batch.mask).sum(1) for o in objectives], -1).double().numpy()


def session_context(counts: np.ndarray, weights: np.ndarray, sess: Sessions) -> np.ndarray:
    """``[B, 2 + K]``: ``log1p(step)``, ``log1p`` of the λ-weighted labels earlier in the session,
    ``log1p`` of each objective's labels on the session's previous request (logged feedback)."""
    value = counts @ weights
    o = sess.order
    is_start = sess.step[o] == 0
    cum = np.cumsum(value[o]) - value[o]  # labels before each request, over the whole ordering
    cum -= np.maximum.accumulate(np.where(is_start, cum, 0.0))  # ... restarted at each session
    prev = np.zeros_like(counts)
    prev[o[1:]] = np.where(is_start[1:, None], 0.0, counts[o[:-1]])
    ctx = np.empty((len(counts), 2 + counts.shape[1]))
    ctx[o, 0], ctx[o, 1] = np.log1p(sess.step[o]), np.log1p(cum)
    ctx[:, 2:] = np.log1p(prev)
    return ctx


def one_hot(cat: torch.Tensor, cardinalities: list[int]) -> np.ndarray:
    """``[B, Σ cardinalities]`` one-hot of categorical indices ``[B, n_cat]``."""
    offsets = np.concatenate([[0], np.cumsum(cardinalities)[:-1]]).astype(np.int64)
    out = np.zeros((cat.shape[0], int(sum(cardinalities))), dtype=np.float32)
    if cat.shape[1]:
        out[np.arange(cat.shape[0])[:, None], cat.numpy() + offsets] = 1.0
    return out


def replay_reward(batch: RequestBatch, action: torch.Tensor, setup: LogSetup, groups: int) -> np.ndarray:
    """``[B, G]`` reward of actions ``[B, A]``: λ-weighted NDCG@k of the logged list re-ranked by
    the product fusion, on the logged labels; group 0 = first objective, group 1 = the rest."""
    scores = product_scores(batch.inputs.double(), action.double())
    parts = [w * ndcg_at_k(scores, batch.labels[o], batch.mask, setup.k, gain=setup.gain, empty="zero").per_request
             for o, w in zip(setup.objectives, setup.weights)]
    per_obj = torch.stack(parts, -1).double().numpy()
    return np.stack([per_obj[:, 0], per_obj[:, 1:].sum(1)], 1) if groups == 2 else per_obj.sum(1, keepdims=True)


@dataclass
class LogPolicy:
    """The trained deterministic policy on a log: table → states → (powers, log10 biases) →
    product-fusion scores."""

    actor: Actor
    mean: np.ndarray
    std: np.ndarray
    spec: FusionSpec
    center: FeatureCenter
    setup: LogSetup
    config: IntegratedRLConfig
    history: list[dict[str, Any]] = field(default_factory=list)

    def states(self, table: pa.Table) -> tuple[RequestBatch, np.ndarray, Sessions]:
        """Batch, raw states ``[B, S]`` and sessions of a table (its own session histories)."""
        batch = build_batch(table, self.spec, self.center)
        return batch, *_states(table, batch, self.center, self.setup, self.config)

    def act(self, state: np.ndarray) -> torch.Tensor:
        """``[B, A]`` deterministic actions of raw states ``[B, S]``."""
        with torch.no_grad():
            return self.actor(torch.from_numpy((state - self.mean) / self.std).float()).double()

    def scores(self, table: pa.Table) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """Request ids ``[B]`` (``to_slates`` order), fused scores ``[B, L]`` and actions ``[B, A]``."""
        batch, state, _ = self.states(table)
        action = self.act(state)
        return batch.request_id, product_scores(batch.inputs.double(), action), action

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"actor": self.actor.state_dict(), "mean": torch.from_numpy(self.mean),
                           "std": torch.from_numpy(self.std), "hidden": list(self.config.hidden)}, out / "policy.pt")
        self.center.save(out / "feature_center.json")
        (out / "fusion.json").write_text(self.spec.model_dump_json(indent=2))
        (out / "config.json").write_text(self.config.model_dump_json(indent=2))
        (out / "setup.json").write_text(json.dumps(self.setup.__dict__, indent=1))
        write_jsonl(out / "history.jsonl", self.history)
        return out

    @classmethod
    def load(cls, path: str | Path) -> LogPolicy:
        path = Path(path)
        missing = [n for n in POLICY_FILES if not (path / n).exists()]
        if missing:
            raise DataError(f"{path}: not a trained IntegratedRL policy directory (missing {', '.join(missing)}); "
                            "train one with `blendrank train --method integrated_rl`")
        cfg = IntegratedRLConfig.model_validate_json((path / "config.json").read_text())
        setup = LogSetup(**json.loads((path / "setup.json").read_text()))
        blob = torch.load(path / "policy.pt", weights_only=True)
        low, high = _box(cfg, len(setup.objectives))
        actor = Actor(len(blob["mean"]), torch.from_numpy(low), torch.from_numpy(high), blob["hidden"],
                      torch.tensor(setup.production_action))
        actor.load_state_dict(blob["actor"])
        return cls(actor, blob["mean"].numpy(), blob["std"].numpy(), FusionSpec.model_validate_json((path / "fusion.json").read_text()),
                   FeatureCenter.load(path / "feature_center.json"), setup, cfg)


def _box(cfg: IntegratedRLConfig, K: int) -> tuple[np.ndarray, np.ndarray]:
    return action_box(K, (cfg.power_min, cfg.power_max), (cfg.log10_bias_min, cfg.log10_bias_max))


def _states(table: pa.Table, batch: RequestBatch, center: FeatureCenter, setup: LogSetup,
            cfg: IntegratedRLConfig) -> tuple[np.ndarray, Sessions]:
    missing = [f"label_{o}" for o in setup.objectives if o not in batch.labels]
    if missing:  # the session context reads the feedback of the user's earlier requests
        raise DataError(f"IntegratedRL on logs needs the logged labels {missing} (the session context is built from "
                        "each user's earlier requests); pass the log with its label_* columns")
    sess = log_sessions(table, batch.request_id, cfg.log_session_gap_s)
    ctx = session_context(label_counts(batch, setup.objectives), np.asarray(setup.weights), sess)
    state = np.concatenate([one_hot(batch.cat, list(center.cardinalities.values())), batch.num.numpy(),
                            batch.stats.numpy(), ctx], 1)
    return state.astype(np.float32), sess


def session_note(n_requests: int, n_sessions: int, gamma: float) -> str | None:
    """What a session method does with a log whose sessions are all one request long (no
    ``user_id``, or one request per user); None when some session has a next request."""
    if n_sessions == 0 or n_sessions < n_requests:
        return None
    return (f"every session is one request ({n_requests} requests, {n_sessions} sessions: the log "
            "has no user_id or one request per user), so no transition has a next state and the "
            f"discount gamma = {gamma:g} has no effect: IntegratedRL-MTF optimises each request's "
            "reward alone (a contextual bandit); map user_id (and set log_session_gap_s) for "
            "sessions")


def production_log_action(weights: np.ndarray, floor: float, cfg: IntegratedRLConfig) -> np.ndarray:
    """The production log-linear fusion as a product-fusion action (powers = weights, biases =
    the fusion floor), clipped into the action box."""
    low, high = _box(cfg, len(weights))
    return np.clip(np.concatenate([weights, np.full(len(weights), np.log10(floor))]), low, high)


def log_transitions(batch: RequestBatch, state: np.ndarray, sess: Sessions, setup: LogSetup,
                    cfg: IntegratedRLConfig, rng: np.random.Generator) -> Transitions:
    """``log_actions_per_request`` transitions per logged request: actions uniform in the trusted
    interval around the production action (∩ the action box), rewards replayed on the labels."""
    low, high = _box(cfg, len(setup.objectives))
    centre = np.asarray(setup.production_action)
    lo, hi = np.maximum(centre - cfg.explore_delta, low), np.minimum(centre + cfg.explore_delta, high)
    B, n = len(batch), cfg.log_actions_per_request
    done = (sess.next < 0).astype(np.float32)
    next_state = np.where(done[:, None] > 0, 0.0, state[np.maximum(sess.next, 0)])
    parts = []
    for _ in range(n):
        action = rng.uniform(lo, hi, size=(B, len(lo)))
        reward = replay_reward(batch, torch.from_numpy(action), setup, cfg.critic_groups)
        box = lambda x: np.broadcast_to(x, (B, len(x)))
        parts.append(Transitions(state=state, action=action, lo=box(lo), hi=box(hi), reward=reward,
                                 next_state=next_state, next_lo=box(lo), next_hi=box(hi), done=done,
                                 value=reward.sum(1)))
    data = Transitions.concat(parts)
    return Transitions(**{f: np.ascontiguousarray(getattr(data, f), dtype=np.float32) for f in Transitions.__dataclass_fields__})


def _composite(batch: RequestBatch, action: torch.Tensor, setup: LogSetup) -> float:
    return float(replay_reward(batch, action, setup, 1).mean())


def fit_integrated_rl_logs(train: pa.Table, valid: pa.Table | None, setup: LogSetup, cfg: IntegratedRLConfig | None = None,
                           floor: float = 1e-3, log: Callable[[str], None] | None = None,
                           checkpoint_dir: str | Path | None = None, checkpoint_every: int = 500,
                           resume: bool = True) -> LogPolicy:
    """One offline round on ``train``; the round's record compares the policy with production on
    ``valid`` (objective-weighted NDCG@k: ``ab_value`` vs ``ab_production_value``).

    Under ``torchrun`` every rank builds the same transitions (seeded) and trains on its shard of
    every batch, as in :func:`fit_integrated_rl`."""
    cfg = cfg or IntegratedRLConfig()
    log = (log or (lambda s: None)) if dist.is_main() else (lambda s: None)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    spec = fit_fusion_spec(train, setup.objectives, floor=floor)
    center = fit_policy_features(train)
    batch = build_batch(train, spec, center)
    state, sess = _states(train, batch, center, setup, cfg)
    data = log_transitions(batch, state, sess, setup, cfg, np.random.default_rng([cfg.seed, 40]))
    if note := session_note(len(batch), sess.n_sessions, cfg.gamma):
        log(f"integrated_rl: {note}")
    mean, std = state.mean(0), state.std(0) + 1e-3
    low, high = _box(cfg, len(setup.objectives))
    init = np.asarray(setup.production_action)
    learner = Learner(cfg, state.shape[1], low, high, init)
    policy = LogPolicy(learner.actor, mean, std, spec, center, setup, cfg)

    ckpt = None if checkpoint_dir is None else Checkpointer(
        checkpoint_dir, "integrated_rl_logs",
        fingerprint({"config": cfg.model_dump(mode="json"), "floor": floor}),
        checkpoint_every, resume,
        # The setup is what the trainer takes of the objective (values, production action, k).
        inputs=[splits_input(train, valid), objective_input(setup.__dict__)])
    saved = ckpt.load() if ckpt is not None else None
    batch_rng = np.random.default_rng([cfg.seed, 7, 0])
    stats: list[dict[str, float]] = []
    first = 0
    if saved is not None:
        learner.load_state_dict(saved["learner"])
        set_generator_state(batch_rng, saved["batch_rng"])
        first, stats = saved["step"], list(saved["stats"])
        set_rng_state(saved["rng"])
    for step in range(first, cfg.steps_per_round):
        idx = batch_rng.integers(len(data), size=min(cfg.batch_size, len(data)))
        stats.append(learner.step(_to_torch(data, dist.shard(idx), mean, std), len(idx)))
        if ckpt is not None and ckpt.due(learner.n_steps) and step + 1 < cfg.steps_per_round:
            ckpt.save({"learner": learner.state_dict(), "step": step + 1, "stats": stats,
                       "batch_rng": generator_state(batch_rng), "rng": rng_state()})

    tail = stats[-max(1, len(stats) // 5):]
    rec: dict[str, Any] = {"round": 0, "transitions": len(data), "requests": len(batch), "sessions": sess.n_sessions,
                           "mean_session_length": len(batch) / max(1, sess.n_sessions),
                           "explore_value_per_request": float(data.value.mean()),
                           **{k: tail_mean(tail, k) for k in ("critic_loss", "q_mean", "actor_loss", "bound_penalty")}}
    if valid is not None:
        vb, vstate, _ = policy.states(valid)
        act = policy.act(vstate)
        value = _composite(vb, act, setup)
        prod = _composite(vb, torch.from_numpy(np.tile(init, (len(vb), 1))), setup)
        rec.update(ab_value=value, ab_production_value=prod, ab_lift=value / prod - 1 if prod else float("nan"),
                   mean_action=act.mean(0).numpy().round(4).tolist())
    rec.update(seconds=time.perf_counter() - t0, trace=step_trace(stats))
    if note:
        rec["note"] = note
    policy.history.append(rec)
    log(f"integrated_rl (logs, one offline round): {len(data)} transitions from {len(batch)} requests in "
        f"{sess.n_sessions} sessions; critic {rec['critic_loss']:.4f}, Q {rec['q_mean']:.3f}"
        + (f"; valid composite NDCG {rec['ab_value']:.4f} vs production {rec['ab_production_value']:.4f}" if valid is not None else ""))
    if ckpt is not None:
        ckpt.clear()
    return policy
