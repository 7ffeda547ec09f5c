"""The session MDP in the marketplace world: state features, the product fusion, and sessions
simulated with a bounded-uniform exploring policy (one transition per request)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from blendrank.fusion.formulas import top_k
from blendrank.worlds.logging_policy import continue_probability
from blendrank.worlds.marketplace import MarketplaceWorld, Requests

SESSION_FEATURES = 5  # step, log1p(clicks so far), last page clicks, orders, value


def session_context(n: int) -> np.ndarray:
    """``[n, 5]`` context of a fresh session (step 0, nothing seen yet)."""
    return np.zeros((n, SESSION_FEATURES))


def request_state(world: MarketplaceWorld, req: Requests, ctx: np.ndarray, inputs: torch.Tensor | None = None) -> np.ndarray:
    """``[B, S]`` state: user features (one-hot age bucket and device, log counts, log average
    price), the query category (one-hot), candidate-list summary (mean and max of ``log(x + 1e-3)``
    per fusion input) and the session context ``ctx`` ``[B, 5]``. Only observable quantities."""
    cfg = world.config
    per_request, _ = world.features(req, np.zeros(len(req), dtype=np.int64))
    eye = lambda idx, n: np.eye(n)[np.asarray(idx, dtype=np.int64)]
    inputs = world.fusion_inputs(req) if inputs is None else inputs
    logx = torch.log(inputs.double() + 1e-3).numpy()
    return np.concatenate([
        eye(per_request["f_user_age_bucket"], 6), eye(per_request["f_user_device"], 3),
        np.log1p(per_request["f_user_clicks_30d"])[:, None], np.log1p(per_request["f_user_orders_30d"])[:, None],
        np.log(per_request["f_user_avg_price"] / world.price_scale)[:, None],
        eye(per_request["f_ctx_query_cat"], cfg.n_categories),
        logx.mean(1), logx.max(1), ctx,
    ], axis=1).astype(np.float32)


def action_box(K: int, power: tuple[float, float], log10_bias: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Bounds ``[2K]`` of the action ``(power_1..K, log10 bias_1..K)``."""
    return (np.array([power[0]] * K + [log10_bias[0]] * K), np.array([power[1]] * K + [log10_bias[1]] * K))


def product_scores(inputs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """``log Π_k (x_k + b_k)^{power_k} = Σ_k power_k log(x_k + 10^{beta_k})`` ``[B, L]`` for
    inputs ``[B, L, K]`` and actions ``[B, 2K]`` = (powers, log10 biases)."""
    K = inputs.shape[-1]
    power, bias = action[:, None, :K], torch.pow(10.0, action[:, None, K:])
    return (power * torch.log(inputs + bias)).sum(-1)


def product_pages(world: MarketplaceWorld, inputs: torch.Tensor, action: np.ndarray) -> np.ndarray:
    """Shown page ``[B, P]`` of the product fusion with per-request actions ``[B, 2K]``."""
    scores = product_scores(inputs.double(), torch.from_numpy(np.asarray(action, dtype=np.float64)))
    return top_k(scores, None, world.config.page_size)[0].numpy()


@dataclass
class Transitions:
    """Logged session steps (numpy, float32): state, action, trusted interval, reward per critic
    group, next state and its trusted interval, done, realised page value."""

    state: np.ndarray  # [N, S]
    action: np.ndarray  # [N, A]
    lo: np.ndarray  # [N, A] trusted interval of this state: exploring centre -/+ delta
    hi: np.ndarray
    reward: np.ndarray  # [N, G]
    next_state: np.ndarray
    next_lo: np.ndarray
    next_hi: np.ndarray
    done: np.ndarray  # [N]
    value: np.ndarray  # [N] realised business value of the page

    def __len__(self) -> int:
        return len(self.done)

    @staticmethod
    def concat(parts: list[Transitions]) -> Transitions:
        return Transitions(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in Transitions.__dataclass_fields__})


def realised_feedback(world: MarketplaceWorld, req: Requests, shown: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Sample clicks / orders / extras of the shown pages ``[B, P]`` from the world's truth;
    returns per-request realised counts (``clicks``, ``orders``, ``gmv``, extras) and the reward
    parts ``r_click`` (click term) and ``r_rest`` (orders, GMV, extras) of the business value."""
    cfg, v = world.config, world.config.value
    truth = world.truth(req)
    take = lambda a: np.take_along_axis(a, shown, axis=1)
    exam = world.examination()[None, : shown.shape[1]]
    click = rng.random(shown.shape) < exam * take(truth.click)
    order = click & (rng.random(shown.shape) < take(truth.order))
    out = {"clicks": click.sum(1).astype(float), "orders": order.sum(1).astype(float),
           "gmv": (order * take(truth.price)).sum(1)}
    rest = v.order * out["orders"] + v.gmv * out["gmv"] / world.price_scale
    for j, o in enumerate(cfg.extra_objectives):
        out[o.name] = (click & (rng.random(shown.shape) < take(truth.extras[..., j]))).sum(1).astype(float)
        rest = rest + o.value_weight * out[o.name]
    out["r_click"], out["r_rest"] = v.click * out["clicks"], rest
    out["click_labels"] = click
    return out


def simulate_sessions(world: MarketplaceWorld, policy: Callable[[np.ndarray], np.ndarray], n_sessions: int,
                      rng: np.random.Generator, delta: float, low: np.ndarray, high: np.ndarray,
                      groups: int = 2) -> Transitions:
    """Explore in the world: start ``n_sessions`` sessions of random users; at each step sample a
    request per active user, act with ``policy(state) + U(-delta, delta)`` (clipped to the action
    box), show the product-fusion page, sample feedback from the truth and continue each session
    with the world's session model (``sigmoid(c0 + c1 * clicks)``, capped at ``max_length``; one
    request per session when sessions are off)."""
    cfg = world.config
    max_len = cfg.session.max_length if cfg.session.enabled else 1
    users = rng.integers(cfg.n_users, size=n_sessions)
    active = np.arange(n_sessions)
    ctx = session_context(n_sessions)
    steps: list[dict[str, np.ndarray]] = []
    prev: dict[str, np.ndarray] | None = None  # last step's record, waiting for its next state
    for step in range(max_len):
        if not len(active):
            break
        req = world.sample_requests(len(active), rng, users=users[active])
        inputs = world.fusion_inputs(req)
        state = request_state(world, req, ctx[active], inputs)
        centre = np.clip(policy(state), low, high)
        action = np.clip(centre + rng.uniform(-delta, delta, size=centre.shape), low, high)
        lo, hi = centre - delta, centre + delta
        if prev is not None:  # fill the next state of the sessions that continued
            pos = np.searchsorted(prev["sid"], active)
            prev["next_state"][pos], prev["next_lo"][pos], prev["next_hi"][pos] = state, lo, hi
            prev["done"][pos] = 0.0
        fb = realised_feedback(world, req, product_pages(world, inputs, action), rng)
        r = np.stack([fb["r_click"], fb["r_rest"]], 1) if groups == 2 else (fb["r_click"] + fb["r_rest"])[:, None]
        rec = {"sid": active.copy(), "state": state, "action": action, "lo": lo, "hi": hi, "reward": r,
               "next_state": np.zeros_like(state), "next_lo": np.zeros_like(lo), "next_hi": np.zeros_like(hi),
               "done": np.ones(len(active)), "value": fb["r_click"] + fb["r_rest"]}
        steps.append(rec)
        prev = rec
        # Session context of the next request and the session model's continuation.
        c = ctx[active]
        c[:, 0] = (step + 1) / max_len
        c[:, 1] = np.log1p(np.expm1(c[:, 1]) + fb["clicks"])
        c[:, 2], c[:, 3], c[:, 4] = fb["clicks"], fb["orders"], rec["value"]
        ctx[active] = c
        p_cont = continue_probability(world, SimpleNamespace(labels={"click": fb["click_labels"]}))  # type: ignore[arg-type]
        active = active[rng.random(len(active)) < p_cont] if cfg.session.enabled else active[:0]
    fields = [f for f in Transitions.__dataclass_fields__]
    return Transitions(**{f: np.concatenate([s[f] for s in steps]).astype(np.float32) for f in fields})
