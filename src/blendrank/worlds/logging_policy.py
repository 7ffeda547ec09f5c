"""Logged traffic of a world: the production policy with Dirichlet exploration, realised feedback,
and streaming Parquet shards (memory bounded by the shard size, not by the number of requests).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from blendrank.worlds.marketplace import MarketplaceWorld, Requests

STREAM_LOGS = 1  # generator stream id of logged traffic (evaluation uses other streams)
MAX_REQUESTS_PER_SHARD = 1_000_000  # request ids are shard * this + local index


def dirichlet_log_density(w: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``log Dir(w; alpha)`` for rows ``w [B, K]`` on the simplex and ``alpha [K]`` or ``[B, K]``."""
    return torch.distributions.Dirichlet(torch.as_tensor(alpha, dtype=torch.float64)).log_prob(
        torch.as_tensor(w, dtype=torch.float64)).numpy()


def logging_weights(world: MarketplaceWorld, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Logged weight vectors ``w ~ Dir(kappa_0 * w_prod)`` ``[n, K]`` and their densities ``[n]``."""
    alpha = world.config.logging_concentration * world.production_weights()
    w = rng.dirichlet(alpha, size=n)
    # Keep strictly inside the simplex so the density is finite; renormalise after the floor.
    w = np.clip(w, 1e-12, None)
    w /= w.sum(1, keepdims=True)
    return w, np.exp(dirichlet_log_density(w, alpha))


@dataclass(frozen=True)
class LoggedPage:
    """What the logging policy did for a batch of requests, and what the users did."""

    req: Requests
    weights: np.ndarray  # [B, K]
    propensity: np.ndarray  # [B]
    position: np.ndarray  # [B, L] 1-based, 0 = not shown
    labels: dict[str, np.ndarray]  # objective -> [B, L] int8
    preds: dict[str, np.ndarray]  # objective -> [B, L]


def serve_and_observe(world: MarketplaceWorld, req: Requests, rng: np.random.Generator) -> LoggedPage:
    """Rank with the exploring production policy and sample the users' feedback."""
    cfg = world.config
    w, prop = logging_weights(world, len(req), rng)
    preds = world.predictions(req)
    shown = world.rank(world.fusion_inputs(req, preds), torch.from_numpy(w).float())  # [B, P]
    B, L = req.cand.shape
    rows = np.arange(B)[:, None]
    position = np.zeros((B, L), dtype=np.int32)
    position[rows, shown] = np.arange(1, shown.shape[1] + 1, dtype=np.int32)
    truth = world.truth(req)
    exam = np.concatenate([world.examination(), [0.0]])[np.where(position > 0, position - 1, cfg.page_size)]
    click = rng.random((B, L)) < exam * truth.click
    order = click & (rng.random((B, L)) < truth.order)
    labels = {"click": click.astype(np.int8), "order": order.astype(np.int8)}
    for j, o in enumerate(cfg.extra_objectives):
        labels[o.name] = (click & (rng.random((B, L)) < truth.extras[..., j])).astype(np.int8)
    return LoggedPage(req, w, prop, position, labels, {k: preds[k] for k in world.objectives})


def continue_probability(world: MarketplaceWorld, page: LoggedPage) -> np.ndarray:
    """Session model: ``P(next request) = sigmoid(c0 + c1 * clicks on the last page)``. ``[B]``."""
    return continue_given_clicks(world, page.labels["click"].sum(1))


def continue_given_clicks(world: MarketplaceWorld, clicks: np.ndarray) -> np.ndarray:
    """:func:`continue_probability` from the number of clicks on the last page ``[B]``."""
    s = world.config.session
    return 1.0 / (1.0 + np.exp(-(s.continue_base + s.continue_slope * np.asarray(clicks, dtype=float))))


def request_table(world: MarketplaceWorld, req: Requests, preds: dict[str, np.ndarray], request_id: np.ndarray,
                  session_id: np.ndarray, ts: np.ndarray, page: LoggedPage | None = None) -> pa.Table:
    """Contract rows (one per candidate, in candidate order) for a batch of requests: ids,
    predictions, price and features, plus positions, labels and logging weights when ``page``
    is given (logged traffic). Without a page this is what a policy sees at serving time."""
    B, L = req.cand.shape
    rep = lambda a: np.repeat(np.asarray(a), L)  # noqa: E731
    cols: dict[str, pa.Array] = {
        "request_id": pa.array(rep(request_id), pa.int64()),
        "session_id": pa.array(rep(session_id), pa.int64()),
        "user_id": pa.array(rep(req.user), pa.int64()),
        "ts": pa.array(rep(ts), pa.int64()),
        "item_id": pa.array(req.cand.ravel(), pa.int64()),
    }
    if page is not None:
        cols["position"] = pa.array(page.position.ravel(), pa.int32(), mask=page.position.ravel() == 0)
        for name in world.objectives:
            cols[f"label_{name}"] = pa.array(page.labels[name].ravel(), pa.int8())
    for name in world.objectives:
        cols[f"pred_{name}"] = pa.array(preds[name].ravel().astype(np.float32))
    cols["price"] = pa.array(world.item_price[req.cand].ravel().astype(np.float32))
    per_request, per_candidate = world.features(req, ts)
    for name, a in per_request.items():
        cols[name] = pa.array(rep(a))
    for name, a in per_candidate.items():
        cols[name] = pa.array(a.ravel())
    if page is not None:
        cols["propensity"] = pa.array(rep(page.propensity), pa.float64())
        for k, name in enumerate(world.config.fusion_inputs):
            cols[f"logging_w_{name}"] = pa.array(rep(page.weights[:, k].astype(np.float32)))
    return pa.table(cols)


def page_table(world: MarketplaceWorld, page: LoggedPage, request_id: np.ndarray, session_id: np.ndarray,
               ts: np.ndarray) -> pa.Table:
    """Contract rows (one per candidate) for a batch of logged pages."""
    return request_table(world, page.req, page.preds, request_id, session_id, ts, page)


def generate_shard(world: MarketplaceWorld, shard: int, n_requests: int) -> pa.Table:
    """Logged traffic of one shard: ``n_requests`` requests (sessions when enabled), deterministic
    in ``(seed, shard)`` whatever order shards are produced in."""
    cfg = world.config
    rng = np.random.default_rng([cfg.seed, STREAM_LOGS, shard])
    base_id = shard * MAX_REQUESTS_PER_SHARD
    gap = cfg.ms_between_requests
    if not cfg.session.enabled:
        req = world.sample_requests(n_requests, rng)
        page = serve_and_observe(world, req, rng)
        ids = base_id + np.arange(n_requests)
        ts = cfg.start_ts + (shard * MAX_REQUESTS_PER_SHARD + np.arange(n_requests)) * gap
        return page_table(world, page, ids, ids, ts)
    # Sessions: start a cohort of users, step every active session until it exits or hits the
    # cap, and repeat with new cohorts until n_requests requests are made.
    tables, made, n_sessions = [], 0, 0
    while made < n_requests:
        cohort = max(1, (n_requests - made) // 3)
        users = rng.integers(cfg.n_users, size=cohort)
        active = np.arange(cohort)
        for step in range(cfg.session.max_length):
            active = active[: n_requests - made]
            if not len(active):
                break
            req = world.sample_requests(len(active), rng, users=users[active])
            page = serve_and_observe(world, req, rng)
            ids = base_id + made + np.arange(len(active))
            session = base_id + n_sessions + active
            ts = cfg.start_ts + (session * cfg.session.max_length + step) * gap
            tables.append(page_table(world, page, ids, session, ts))
            made += len(active)
            active = active[rng.random(len(active)) < continue_probability(world, page)]
        n_sessions += cohort
    return pa.concat_tables(tables)


def write_logs(world: MarketplaceWorld, n_requests: int, out_dir: str | Path, shard_requests: int = 10_000,
               on_shard: Callable[[int], None] | None = None) -> list[Path]:
    """Write ``n_requests`` logged requests as Parquet shards ``logs/part-XXXXX.parquet``.

    Each shard is generated, written (temp file + rename) and released before the next.
    """
    paths = []
    for shard, n in shard_sizes(n_requests, shard_requests):
        paths.append(write_shard(world, shard, n, out_dir))
        if on_shard:
            on_shard(n)
    return paths


def shard_sizes(n_requests: int, shard_requests: int) -> list[tuple[int, int]]:
    """``[(shard, requests in it), ...]`` covering ``n_requests``."""
    if shard_requests > MAX_REQUESTS_PER_SHARD:
        raise ValueError(f"shard_requests must be <= {MAX_REQUESTS_PER_SHARD}")
    return [(shard, min(shard_requests, n_requests - start))
            for shard, start in enumerate(range(0, n_requests, shard_requests))]


def write_shard(world: MarketplaceWorld, shard: int, n: int, out_dir: str | Path) -> Path:
    """Generate shard ``shard`` (``n`` requests) and write ``logs/part-XXXXX.parquet``
    atomically; the file depends only on the world's config and ``(shard, n)``."""
    log_dir = Path(out_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    table = generate_shard(world, shard, n)
    path = log_dir / f"part-{shard:05d}.parquet"
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=128 * 1024)
    os.replace(tmp, path)
    return path


def write_world_state(world: MarketplaceWorld, out_dir: str | Path) -> None:
    """The world's config (enough to rebuild it) and its entities, for inspection and joins."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "world.json").write_text(json.dumps({"world": "marketplace", "config": world.config.model_dump(mode="json")}, indent=2))
    pq.write_table(pa.table({
        "item_id": np.arange(world.config.n_items), "category": world.item_cat, "price": world.item_price,
        "quality": world.item_quality, "rating": world.item_rating}), out / "items.parquet")
    seg_names = np.array([s.name for s in world.config.segments])
    pq.write_table(pa.table({
        "user_id": np.arange(world.config.n_users), "segment": seg_names[world.user_segment],
        "budget": np.exp(world.user_logbudget), "price_sensitivity": world.user_price_sens}), out / "users.parquet")
