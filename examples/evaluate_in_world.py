"""Train GRADE from Python on an in-memory table with the world's objective, then measure it in
the world's simulated A/B beside production, as `blendrank eval --world` does.

    python examples/evaluate_in_world.py [OUT_DIR]

A small world and short runs keep it to well under a minute on a laptop CPU; the figures are
illustrative at this size, not a benchmark (docs/benchmarks.md has those).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from blendrank import evaluate, train
from blendrank.worlds.generate import generate_world
from blendrank.worlds.marketplace import MarketplaceWorld
from blendrank.worlds.presets import world_config

SMALL = ["n_items=400", "n_users=300", "candidates=20", "page_size=5"]


def main(out: Path) -> None:
    world_cfg = world_config("quick", overrides=SMALL, seed=0)
    generate_world(world_cfg, 1000, out / "world", eval_requests=0)
    # Any pyarrow table in the data contract: here the world's logged shards, read into memory.
    logs = pa.concat_tables(
        pq.read_table(p) for p in sorted((out / "world" / "logs").glob("*.parquet"))
    )
    objective = MarketplaceWorld(world_cfg).objective()  # what the world's business values

    policy = train(
        "grade",
        logs,
        objective=objective,
        config={"stage1": {"epochs": 1}, "stage2": {"steps": 30}},
    )
    print(f"objective: {objective.describe()}")

    # The same world (preset, overrides, seed); predictor=world: the arms fuse the world's
    # deployed predictions, like the logs the policy learnt from.
    bench = evaluate(
        policy,
        world="marketplace",
        preset="quick",
        seed=0,
        methods=["production"],
        config={
            "world_overrides": SMALL,
            "predictor": "world",
            "eval_requests": 1000,
            "n_boot": 200,
        },
        out=out / "eval",
    )
    lift = bench["lifts"]["policy"]["value"]
    print(
        f"policy vs production, value per page: {lift['rel']:+.2%} "
        f"(95% CI {lift['ci95'][0]:+.2%} to {lift['ci95'][1]:+.2%}); report in {out / 'eval'}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
