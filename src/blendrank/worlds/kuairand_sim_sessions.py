"""Sessions of the ``kuairand-sim`` world: simulation under a policy, the logging policy, and
the contract rows it logs.

A page of ``K`` videos is consumed in order (single-column feed); after every video the user's
satisfaction is updated from what they did and they may leave (mid-page). Every session's random
numbers are keyed by ``(seed, stream, session)``: the same sessions in every arm see the same
random numbers (common random numbers), so arms differ only by what they show. Shapes: ``B``
requests (active sessions), ``N`` candidates, ``P`` page size, ``K`` fusion inputs, ``I`` pool
videos, ``T`` teacher outputs.

The functions take the world (:class:`~blendrank.worlds.kuairand_sim.KuaiRandSimWorld`, whose
methods of the same names they are) for its pool, users, teacher, prerank and predictors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from blendrank.worlds.kuairand_sim_config import FEEDBACKS, FUSION_INPUTS, STREAM_LOGS, TRUTH
from blendrank.worlds.kuairand_sim_teacher import POST_CLICK, WATCH
from blendrank.worlds.logging_policy import dirichlet_log_density

if TYPE_CHECKING:
    from blendrank.worlds.kuairand_sim import KuaiRandSimWorld

_N_UNIFORMS = 3 + len(POST_CLICK)  # click, watch, hate, post-click feedbacks (+ exit drawn apart)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class StepContext:
    """What a policy sees at one request step (``truth`` / ``item_value`` only for oracle arms)."""

    session: np.ndarray  # [B] session index
    user: np.ndarray  # [B] user index
    cand: np.ndarray  # [B, N] pool index
    inputs: torch.Tensor  # [B, N, K] fusion inputs (deployed predictions)
    item_value: np.ndarray  # [B, N] true expected value of each candidate (oracles only)
    step: int


Policy = Callable[[StepContext], np.ndarray]  # -> [B, P] candidate positions


@dataclass
class SessionResult:
    """Per-session totals ``[S]`` and (optionally) the recorded requests."""

    totals: dict[str, np.ndarray]
    requests: list[dict[str, np.ndarray]] = field(default_factory=list)


def session_users(world: KuaiRandSimWorld, n: int, stream: int) -> np.ndarray:
    """``[n]`` user indices of ``n`` sessions of ``stream`` (users drawn uniformly)."""
    return np.random.default_rng([world.config.seed, stream, 0]).integers(len(world.user_ids), size=n)


def run_sessions(world: KuaiRandSimWorld, policy: Policy, n_sessions: int, stream: int,
                 predictor: str = "student",
                 record: Callable[[StepContext, np.ndarray, dict[str, np.ndarray]], None] | None = None,
                 trace: np.ndarray | None = None, exits: bool = True) -> SessionResult:
    """Simulate ``n_sessions`` sessions of ``stream`` under ``policy``.

    ``trace`` (``[n_sessions, max_impressions]``, optional) receives the satisfaction S after
    every impression; ``exits=False`` runs every session to the cap (the exit calibration
    replays exits on the trace: what is shown up to an exit does not depend on the exit model).

    Every session's random numbers (prerank noise, feedback, watch, exits) are keyed by
    ``(seed, stream, session)`` and consumed per impression slot, so two arms that show the
    same video at the same slot see the same reaction.
    """
    cfg, s = world.config, world.config.session
    users = session_users(world, n_sessions, stream)
    cap, P, N, I = s.max_impressions, cfg.page_size, cfg.candidates, len(world.pool)
    rngs = [np.random.default_rng([cfg.seed, stream, 1, i]) for i in range(n_sessions)]
    crn = np.random.default_rng([cfg.seed, stream, 2]).random((n_sessions, cap, _N_UNIFORMS + 1))
    z_watch = torch.special.ndtri(torch.from_numpy(np.clip(crn[..., 1], 1e-9, 1 - 1e-9))).numpy()
    theta = world.user_theta[users]
    S = np.zeros(n_sessions)
    n = np.zeros(n_sessions, dtype=np.int64)
    alive = np.ones(n_sessions, dtype=bool)
    shown = np.zeros((n_sessions, I), dtype=bool)
    tot = {k: np.zeros(n_sessions) for k in ("impressions", "pages", "watch_s", "value", "page_value", *FEEDBACKS)}
    w_u, w_v = s.utility, cfg.value
    post_w = cfg.value.post_click()
    util_post = np.array([w_u.get(k, 0.0) for k in POST_CLICK])
    step = 0
    while alive.any():
        act = np.flatnonzero(alive)
        noise = np.stack([rngs[i].gumbel(size=I).astype(np.float32) for i in act]) * world.prerank.temperature
        scores = np.where(shown[act], -np.inf, world.prerank.scores(users[act]) + noise)
        cand = np.argpartition(-scores, N - 1, axis=1)[:, :N]
        truth = world.truth_of(users[act], cand)  # [B, N, T]
        preds = world.preds_of(users[act], cand, predictor)
        ctx = StepContext(session=act, user=users[act], cand=cand, inputs=torch.from_numpy(preds).float(),
                          item_value=world.item_value(truth), step=step)
        page = np.asarray(policy(ctx))  # [B, P]
        tot["pages"][act] += 1
        tot["page_value"][act] += world.page_values(ctx.item_value, page)
        item = np.take_along_axis(cand, page, 1)
        tr = np.take_along_axis(truth, page[..., None], 1)  # [B, P, T]
        fb = {k: np.zeros(page.shape, dtype=np.int8) for k in FEEDBACKS}
        watch_pg = np.zeros(page.shape)
        consumed = np.zeros(page.shape, dtype=bool)
        here = np.ones(len(act), dtype=bool)
        for p in range(P):
            b = np.flatnonzero(here)
            if not len(b):
                break
            sess, slot = act[b], n[act[b]]
            u = crn[sess, slot]
            t = tr[b, p]
            click = u[:, 0] < t[:, 0]
            m = t[:, TRUTH.index("watch_m")].astype(np.float64)
            w = world.teacher.watch
            mu = np.where(click, w.mean_log(m, True), w.mean_log(m, False))
            sd = np.where(click, w.sd1, w.sd0)
            watch = np.minimum(np.expm1(np.maximum(mu + sd * z_watch[sess, slot], 0.0)), cfg.max_watch_s)
            post = click[:, None] & (u[:, 3 : 3 + len(POST_CLICK)] < t[:, 1 : 1 + len(POST_CLICK)])
            lv = watch >= np.minimum(cfg.long_view_s, world.item_duration_s[item[b, p]])
            post[:, 0] = lv  # long_view follows the 18-s rule on the sampled watch time
            hate = u[:, 2] < t[:, TRUTH.index("hate")]
            util = (w_u["watch"] * np.log1p(watch) / np.log(61.0) + post @ util_post + w_u["hate"] * hate
                    + w_u["no_click"] * ~click)
            S[sess] = s.beta * S[sess] + (1 - s.beta) * (util - world.utility_mean) / world.utility_sd
            if trace is not None:
                trace[sess, slot] = S[sess]
            value = w_v.watch * watch + post @ post_w + w_v.hate * hate
            fb["click"][b, p] = click
            for j, k in enumerate(POST_CLICK):
                fb[k][b, p] = post[:, j]
            fb["hate"][b, p] = hate
            watch_pg[b, p] = watch
            consumed[b, p] = True
            shown[sess, item[b, p]] = True
            n[sess] += 1
            tot["impressions"][sess] += 1
            tot["watch_s"][sess] += watch
            tot["value"][sess] += value
            for k in FEEDBACKS:
                tot[k][sess] += fb[k][b, p]
            leave = n[sess] >= cap
            if exits:
                leave |= u[:, -1] < _sigmoid(theta[sess] + s.fatigue * np.log1p(n[sess]) - s.exit_satisfaction * S[sess])
            alive[sess[leave]] = False
            here[b[leave]] = False
        if record is not None:
            record(ctx, page, {"consumed": consumed, "watch_s": watch_pg, **fb})
        step += 1
    tot["requests"] = tot["pages"]
    return SessionResult(tot)


def logging_policy(world: KuaiRandSimWorld, rng: np.random.Generator, store: dict[str, list]) -> Policy:
    """Production weights with Dirichlet exploration; weights and propensities go to ``store``."""
    alpha = world.config.logging_concentration * world.production_weights()

    def policy(ctx: StepContext) -> np.ndarray:
        w = np.clip(rng.dirichlet(alpha, size=len(ctx.user)), 1e-12, None)
        w /= w.sum(1, keepdims=True)
        store["weights"].append(w)
        store["propensity"].append(np.exp(dirichlet_log_density(w, alpha)))
        return world.rank(ctx.inputs, torch.from_numpy(w).float())

    return policy


def logged_sessions(world: KuaiRandSimWorld, n_sessions: int, stream: int = STREAM_LOGS,
                    predictor: str = "logger") -> pa.Table:
    """Contract rows (every candidate of every request) of sessions under the logging policy.

    ``position`` is the 1-based slot for videos the user actually watched (null for the rest,
    including page videos after an exit); ``pred_*`` are ``predictor``'s predictions."""
    store: dict[str, list] = {"weights": [], "propensity": []}
    tables: list[pa.Table] = []
    counter = [0]

    def record(ctx: StepContext, page: np.ndarray, fb: dict[str, np.ndarray]) -> None:
        B, N = ctx.cand.shape
        position = np.zeros((B, N), dtype=np.int32)
        rows = np.arange(B)[:, None]
        position[rows, page] = np.where(fb["consumed"], np.arange(1, page.shape[1] + 1), 0)
        labels = {k: np.zeros((B, N), dtype=np.int8) for k in FEEDBACKS}
        for k in FEEDBACKS:
            labels[k][rows, page] = fb[k]
        watch = np.zeros((B, N))
        watch[rows, page] = fb["watch_s"] * 1000.0
        rid = counter[0] + np.arange(B)
        counter[0] += B
        w, prop = store["weights"][-1], store["propensity"][-1]
        t = world.tables.pair_table(np.repeat(world.user_ids[ctx.user], N), world.pool[ctx.cand.ravel()])
        cols = {"request_id": np.repeat(rid, N), "session_id": np.repeat(ctx.session, N),
                "ts": np.repeat(ctx.session * 1000 + ctx.step, N).astype(np.int64) * 60_000}
        for name, a in cols.items():
            t = t.append_column(name, pa.array(a.astype(np.int64)))
        t = t.append_column("position", pa.array(position.ravel(), pa.int32(), mask=position.ravel() == 0))
        for k in FEEDBACKS:
            t = t.append_column(f"label_{k}", pa.array(labels[k].ravel()))
        t = t.append_column(f"label_{WATCH}", pa.array(watch.ravel()))
        for j, k in enumerate(FUSION_INPUTS):
            t = t.append_column(f"pred_{k}", pa.array(ctx.inputs[..., j].numpy().ravel()))
        t = t.append_column("propensity", pa.array(np.repeat(prop, N)))
        for j, k in enumerate(FUSION_INPUTS):
            t = t.append_column(f"logging_w_{k}", pa.array(np.repeat(w[:, j], N).astype(np.float32)))
        tables.append(t)

    rng = np.random.default_rng([world.config.seed, stream, 3])
    run_sessions(world, logging_policy(world, rng, store), n_sessions, stream, predictor=predictor,
                 record=record)
    return pa.concat_tables(tables)


def request_table(world: KuaiRandSimWorld, ctx: StepContext) -> pa.Table:
    """Serving-time contract rows of one step (what a learned policy sees)."""
    N = ctx.cand.shape[1]
    t = world.tables.pair_table(np.repeat(world.user_ids[ctx.user], N), world.pool[ctx.cand.ravel()])
    rid = np.repeat(ctx.session * 10_000 + ctx.step, N).astype(np.int64)
    t = t.append_column("request_id", pa.array(rid)).append_column("ts", pa.array(rid * 1000))
    for j, k in enumerate(FUSION_INPUTS):
        t = t.append_column(f"pred_{k}", pa.array(ctx.inputs[..., j].numpy().ravel()))
    return t


def shown_rates(world: KuaiRandSimWorld, n_sessions: int,
                stream: int) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Per-impression feedback rates and watch of ``n_sessions`` logging-policy sessions, with
    the ``[R]`` user and pool indices of their shown impressions."""
    users, items = [], []

    def record(ctx: StepContext, page: np.ndarray, fb: dict[str, np.ndarray]) -> None:
        shown = fb["consumed"]
        users.append(np.broadcast_to(ctx.user[:, None], page.shape)[shown])
        items.append(np.take_along_axis(ctx.cand, page, 1)[shown])

    rng = np.random.default_rng([world.config.seed, stream, 3])
    policy = logging_policy(world, rng, {"weights": [], "propensity": []})
    res = run_sessions(world, policy, n_sessions, stream, predictor="logger", record=record)
    n = res.totals["impressions"].sum()
    rates = {k: float(res.totals[k].sum() / n) for k in FEEDBACKS}
    rates["watch_s"] = float(res.totals["watch_s"].sum() / n)
    lengths = res.totals["impressions"]
    rates |= {"impressions_mean": float(lengths.mean()), "impressions_median": float(np.median(lengths)),
              "impressions_p90": float(np.percentile(lengths, 90))}
    return rates, np.concatenate(users), np.concatenate(items)
