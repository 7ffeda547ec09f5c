"""GRADE Stage 2 throughput: requests/s of a full GRPO step (sampling, re-ranking, composite
reward, advantages, ``num_iterations`` updates), and how it grows with G and with candidates.

    python benchmarks/grade_throughput.py [--steps 30] [--batch 512] [--guardrails] [--anchor]

``--guardrails`` adds the world bench's default guard rails (CTR, CVR, orders against a
production anchor): two more fusions and top-Ks per step (anchor and mean-policy pages).

``--anchor`` also times, interleaved with the real step (G = 16, 50 candidates) in one run, a
bare torch loop doing only what any GRPO step over fusion weights must: sample G Dirichlet
vectors per request, log-linear fuse the candidates, top-10, discounted gain — no network, no
update — and reports the real step's throughput as a share of it (medians of the rounds).

Synthetic logged requests (random predictions, labels and positions) with K = 3 fusion inputs;
one intra-op thread (the CLI default).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import torch

from blendrank.algos.grade.config import GRADEConfig
from blendrank.algos.grade.data import build_batch, fit_fusion_spec, fit_policy_features
from blendrank.algos.grade.trainer import make_policy, train_stage2


def synthetic_log(n: int, L: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    rep = lambda a: np.repeat(a, L)  # noqa: E731
    shown = np.tile(np.arange(L) < 10, n)
    return pa.table({
        "request_id": rep(np.arange(n)), "user_id": rep(rng.integers(1000, size=n)), "ts": rep(np.arange(n)),
        "item_id": np.tile(np.arange(L), n),
        "position": pa.array(np.tile(np.arange(1, L + 1, dtype=np.int32), n), mask=~shown),
        "label_click": (rng.random(n * L) < 0.1 * shown).astype(np.int8),
        "label_order": (rng.random(n * L) < 0.02 * shown).astype(np.int8),
        "pred_click": rng.uniform(0.01, 0.5, n * L).astype(np.float32),
        "pred_order": rng.uniform(0.001, 0.05, n * L).astype(np.float32),
        "price": rng.lognormal(4, 0.8, n * L).astype(np.float32),
        "f_user_segment_hint": rep(rng.integers(5, size=n)), "f_ctx_query": rep(rng.integers(20, size=n)),
        "f_user_activity": rep(rng.normal(size=n)).astype(np.float32),
    })


GUARDRAILS = {"click": 0.005, "order/click": 0.005, "order": 0.0}


def measure(n_req: int, L: int, G: int, steps: int, batch: int, guardrails: bool = False) -> float:
    table = synthetic_log(n_req, L)
    spec = fit_fusion_spec(table)
    data = build_batch(table, spec, fit_policy_features(table))
    cfg = GRADEConfig.model_validate({"stage2": {"steps": steps, "batch_size": batch, "num_generations": G},
                                      "reward": {"prior_coefs": {"click": 0.4, "order*price": 1.0},
                                                 "post_objective_weights": {"click": 0.4, "gmv": 1.0},
                                                 "post_gain": "linear",
                                                 "guardrails": GUARDRAILS if guardrails else {}}})
    anchor = torch.tensor([0.5, 0.35, 0.15]) if guardrails else None
    policy = make_policy(cfg.policy, list(data.cat.max(0).values + 1), data.num.shape[1], data.stats.shape[1], data.inputs.shape[-1])
    policy.set_stats_normalizer(data.stats)
    torch.manual_seed(0)
    train_stage2(policy, data, cfg, spec, anchor, lambda r: None)  # warm-up (allocator, first-call overheads)
    t = time.perf_counter()
    train_stage2(policy, data, cfg, spec, anchor, lambda r: None)
    return steps * batch / (time.perf_counter() - t)


def bare_loop(n_req: int, L: int, G: int, steps: int, batch: int, page: int = 10) -> float:
    """Requests/s of the anchor: Dirichlet sample → log-linear fuse → top-``page`` → discounted gain."""
    g = torch.Generator().manual_seed(0)
    feats = torch.log(torch.rand(n_req, L, 3, generator=g) + 1e-3)
    gain = torch.rand(n_req, L, generator=g)
    disc = 1.0 / torch.log2(torch.arange(page, dtype=torch.float32) + 2)
    alpha = torch.full((batch, 3), 10.0)
    t = time.perf_counter()
    for step in range(steps):
        rows = torch.arange(step * batch, (step + 1) * batch) % n_req
        w = torch.distributions.Dirichlet(alpha).sample((G,)).transpose(0, 1)  # [N, G, K]
        scores = torch.einsum("nlk,ngk->ngl", feats[rows], w)
        top = scores.topk(page, dim=-1).indices  # [N, G, page]
        value = (torch.gather(gain[rows][:, None].expand(-1, G, -1), 2, top) * disc).sum(-1)
        value.mean().item()
    return steps * batch / (time.perf_counter() - t)


def anchor_ratio(steps: int, batch: int, guardrails: bool, rounds: int = 5) -> tuple[float, float, float]:
    """(real step req/s, anchor req/s, ratio): medians over ``rounds`` interleaved pairs."""
    real, bare = [], []
    for _ in range(rounds):
        real.append(measure(4000, 50, 16, steps, batch, guardrails))
        bare.append(bare_loop(4000, 50, 16, steps, batch))
    r, b = float(np.median(real)), float(np.median(bare))
    return r, b, r / b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--guardrails", action="store_true", help="with the bench's default guard rails")
    ap.add_argument("--anchor", action="store_true", help="only the real step vs the bare torch loop (G=16, 50 candidates)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.anchor:
        real, bare, ratio = anchor_ratio(args.steps, args.batch, args.guardrails)
        print(f"| real GRADE step | bare torch loop | share |\n|---|---|---|\n| {real:,.0f} req/s | {bare:,.0f} req/s | {ratio:.0%} |")
        return
    print("| G | candidates | requests/s |\n|---|---|---|")
    for G, L in [(4, 50), (8, 50), (16, 50), (32, 50), (16, 20), (16, 100), (16, 200)]:
        rps = measure(4000, L, G, args.steps, args.batch, args.guardrails)
        print(f"| {G} | {L} | {rps:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
