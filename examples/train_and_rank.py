"""Train GRADE on a small generated marketplace world from Python, look at its per-request
weights, save and reload it, and rank requests in-process.

    python examples/train_and_rank.py [OUT_DIR]

Runs in well under a minute on a laptop CPU (a small world and a short training run).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from blendrank import load_policy, rank, train
from blendrank.worlds.generate import generate_world
from blendrank.worlds.presets import world_config


def main(out: Path) -> None:
    # A small marketplace world: 600 logged requests of 20 candidates, pages of 5.
    world_cfg = world_config(
        "quick", overrides=["n_items=400", "n_users=300", "candidates=20", "page_size=5"], seed=0
    )
    generate_world(world_cfg, 600, out / "world", eval_requests=0)
    logs = (
        out / "world" / "logs"
    )  # contract log shards, with the world's objective.yaml beside them

    # GRADE with the CLI's resolved defaults (objective.yaml beside the logs sets its goal);
    # fewer steps than the defaults to keep the example quick.
    policy = train("grade", logs, config={"stage1": {"epochs": 1}, "stage2": {"steps": 20}})
    print(f"trained {policy.method} on the fusion inputs {policy.inputs}")

    table = pq.read_table(min(logs.glob("*.parquet")))
    weights = policy.weights(table)
    w = np.column_stack([weights[f"weight_{name}"].to_numpy() for name in policy.inputs])
    print(
        f"{weights.num_rows} requests; mean weights "
        f"{dict(zip(policy.inputs, w.mean(0).round(3).tolist()))}"
    )

    policy.save(out / "policy")  # the directory `blendrank export` and `blendrank eval` take
    reloaded = load_policy(out / "policy")
    assert np.allclose(reloaded.weights_array(table)[1], w, atol=1e-6), (
        "a reloaded policy gives the same weights"
    )

    page = rank(reloaded, table, k=5)
    first = page.filter(pc.equal(page["request_id"], page["request_id"][0]))
    print(
        f"request {first['request_id'][0]}: items {first['item_id'].to_pylist()} "
        f"scores {np.round(first['score'].to_numpy(), 3).tolist()}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
