"""``world generate``: logs, world state and the headroom of the reference arms, in one directory."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from blendrank.worlds.logging_policy import write_logs, write_world_state
from blendrank.worlds.marketplace import MarketplaceConfig, MarketplaceWorld
from blendrank.worlds.oracle import headroom

STREAM_HEADROOM = 2  # generator stream of the held-out requests used for the headroom report


def headroom_report(world: MarketplaceWorld, n_requests: int) -> dict[str, Any]:
    """Mean page value of production, best global vector, segment oracle, oracle and true score
    on ``n_requests`` held-out requests, with relative gaps to the best global vector."""
    req = world.sample_requests(n_requests, np.random.default_rng([world.config.seed, STREAM_HEADROOM]))
    h = headroom(world, req, seed=world.config.seed)
    arms = ("production", "best_global", "segment_oracle", "oracle", "true_score")
    return {
        "n_requests": n_requests,
        "value": {a: getattr(h, a) for a in arms},
        "rel_to_best_global": {a: h.rel(a) for a in arms},
        "best_global_weights": dict(zip(world.config.fusion_inputs, h.global_weights.round(4).tolist())),
        "segment_weights": {s.name: dict(zip(world.config.fusion_inputs, w.round(4).tolist()))
                            for s, w in zip(world.config.segments, h.segment_weights)},
    }


def generate_world(config: MarketplaceConfig, n_requests: int, out_dir: str | Path, shard_requests: int = 10_000,
                   eval_requests: int = 2000, on_shard=None) -> dict[str, Any]:
    """Write ``out_dir/{world.json, items.parquet, users.parquet, logs/, summary.json}``."""
    out = Path(out_dir)
    t0 = time.perf_counter()
    world = MarketplaceWorld(config)
    write_world_state(world, out)
    paths = write_logs(world, n_requests, out, shard_requests=shard_requests, on_shard=on_shard)
    t_logs = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "world": "marketplace",
        "seed": config.seed,
        "requests": n_requests,
        "impressions": n_requests * config.candidates,
        "shards": len(paths),
        "objectives": config.objectives,
        "fusion_inputs": config.fusion_inputs,
        "production_weights": dict(zip(config.fusion_inputs, world.production_weights().round(4).tolist())),
        "segments": {s.name: float((world.user_segment == i).mean()) for i, s in enumerate(config.segments)},
        "seconds_logs": round(t_logs, 2),
    }
    if eval_requests > 0:
        summary["headroom"] = headroom_report(world, eval_requests)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
