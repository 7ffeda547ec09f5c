"""Session-level simulated A/B: every arm serves whole sessions of the same users.

With the world's session model on, what a page shows changes whether the user asks for another
page, so a per-request A/B misses part of the effect (the multi-step return IntegratedRL-MTF
optimises). Here each arm serves ``n`` sessions from their first request until the user leaves
(or ``session.max_length``), with common random numbers: session ``i`` at step ``t`` gets the same
request (user, query, candidates) in every arm, the same uniforms decide its realised clicks and
orders, and the same uniform decides whether it continues. Page value is credited in expectation
under the truth (like the per-request A/B); lengths follow the realised clicks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from blendrank.bench.ab import CommonRandomNumbers, realised_page
from blendrank.worlds.logging_policy import continue_given_clicks
from blendrank.worlds.marketplace import MarketplaceWorld, Requests

#: ``pages(req, ctx)`` → shown pages ``[B, P]`` for requests ``req`` whose sessions have context
#: ``ctx [B, 5]`` (step, log1p clicks so far, last page's clicks, orders and value; see
#: ``integrated_rl.rollout.session_context``).
PageFn = Callable[[Requests, np.ndarray], np.ndarray]

SESSION_METRICS = {
    "session_value": ("value", "requests", 1.0),
    "session_length": ("length", "requests", 1.0),
    "value_per_request": ("value", "length", 1.0),
    "clicks_per_session": ("clicks", "requests", 1.0),
    "orders_per_session": ("orders", "requests", 1.0),
    "gmv_per_session": ("gmv", "requests", 1.0),
}
"""Session metrics as ``compare_arms`` definitions (a unit is one session)."""


def _take(req: Requests, rows: np.ndarray) -> Requests:
    return Requests(req.user[rows], req.query[rows], req.cand[rows], req.pred_noise[rows])


def simulate_arm_sessions(world: MarketplaceWorld, pages: PageFn, n_sessions: int, seed: int) -> dict[str, np.ndarray]:
    """Serve ``n_sessions`` sessions with ``pages``; per-session totals ``[n]`` of the expected
    ``value``, ``clicks``, ``orders``, ``gmv`` and the realised ``length``. Deterministic in
    ``seed`` and identical across arms wherever their sessions are."""
    cfg = world.config
    max_len = cfg.session.max_length if cfg.session.enabled else 1
    users = np.random.default_rng([seed, 0]).integers(cfg.n_users, size=n_sessions)
    totals = {k: np.zeros(n_sessions) for k in ("value", "clicks", "orders", "gmv", "length")}
    ctx = np.zeros((n_sessions, 5))
    active = np.arange(n_sessions)
    for step in range(max_len):
        if not len(active):
            break
        # Every session's request at this step is drawn whether or not it is still active (CRN).
        rng = np.random.default_rng([seed, 1, step])
        req_all = world.sample_requests(n_sessions, rng, users=users)
        crn_all = CommonRandomNumbers.draw(req_all, len(cfg.extra_objectives), rng)
        u_continue = rng.random(n_sessions)
        req = _take(req_all, active)
        truth = world.truth(req)
        shown = pages(req, ctx[active])
        expected = world.page_metrics(truth, shown)
        realised = realised_page(world, truth, shown, CommonRandomNumbers(crn_all.u[active]))
        for k in ("value", "clicks", "orders", "gmv"):
            totals[k][active] += expected[k]
        totals["length"][active] += 1
        c = ctx[active]
        c[:, 0] = (step + 1) / max_len
        c[:, 1] = np.log1p(np.expm1(c[:, 1]) + realised["clicks"])
        c[:, 2], c[:, 3], c[:, 4] = realised["clicks"], realised["orders"], realised["value"]
        ctx[active] = c
        if not cfg.session.enabled:
            break
        active = active[u_continue[active] < continue_given_clicks(world, realised["clicks"])]
    return totals
