"""GRADE Stage 2 on a small deterministic synthetic log, in one process or under torchrun.

    python scripts/ddp_grade.py --out one.json
    python -m torch.distributed.run --standalone --nproc_per_node=2 scripts/ddp_grade.py --out two.json

Both write (from rank 0) the per-step Stage-2 losses and the final policy parameters; with the
same global batch (``--batch``, a multiple of the number of processes) they must agree within
float tolerance (tests/test_distributed.py). See docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pyarrow as pa
import torch

from blendrank import distributed as dist
from blendrank.algos.grade.config import GRADEConfig
from blendrank.algos.grade.trainer import fit_grade
from blendrank.config import apply_overrides


def two_type_log(n: int = 1500, L: int = 8, seed: int = 0) -> pa.Table:
    """Type-0 users click the items with the highest pred_click, type-1 users order the items
    with the highest pred_order: the best weights differ completely by user type.
    (Copied from tests/test_grade.py.)"""
    rng = np.random.default_rng(seed)
    p_click = rng.uniform(0.05, 0.95, (n, L))
    p_order = rng.uniform(0.05, 0.95, (n, L))
    utype = rng.integers(2, size=n)
    rank_c = np.argsort(np.argsort(-p_click, 1), 1)
    rank_o = np.argsort(np.argsort(-p_order, 1), 1)
    click = ((rank_c < 2) & (utype[:, None] == 0)).astype(np.int8)
    order = ((rank_o < 2) & (utype[:, None] == 1)).astype(np.int8)
    rep = lambda a: np.repeat(a, L)
    return pa.table({
        "request_id": rep(np.arange(n)), "user_id": rep(np.arange(n)), "ts": rep(np.arange(n) * 1000),
        "item_id": np.tile(np.arange(L), n), "position": np.tile(np.arange(1, L + 1, dtype=np.int32), n),
        "label_click": click.ravel(), "label_order": order.ravel(),
        "pred_click": p_click.ravel().astype(np.float32), "pred_order": p_order.ravel().astype(np.float32),
        "f_user_type": rep(utype), "f_item_x": rng.normal(size=n * L).astype(np.float32),
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file written by rank 0")
    ap.add_argument("--requests", type=int, default=400, help="requests in the synthetic log")
    ap.add_argument("--steps", type=int, default=5, help="Stage-2 steps")
    ap.add_argument("--batch", type=int, default=128, help="global Stage-2 batch (requests per step, all ranks)")
    ap.add_argument("--generations", type=int, default=8, help="stage2.num_generations")
    ap.add_argument("--iterations", type=int, default=2, help="stage2.num_iterations")
    ap.add_argument("--set", action="append", default=[], help="extra GRADE config override key=value")
    args = ap.parse_args()
    torch.set_num_threads(1)
    _rank, world = dist.init_from_env()
    cfg = GRADEConfig.model_validate(apply_overrides(
        {"seed": 0, "log_every": 1, "stage1": {"epochs": 1},
         "stage2": {"steps": args.steps, "batch_size": args.batch, "num_generations": args.generations,
                    "num_iterations": args.iterations},
         "reward": {"a_prior": 0.0, "k": 4, "post_objective_weights": {"click": 1.0, "order": 1.0}}}, args.set))
    table = two_type_log(args.requests)
    rows: list[dict] = []
    t = time.perf_counter()
    pol = fit_grade(table, cfg, log=rows.append)
    secs = time.perf_counter() - t
    if dist.is_main():
        stage2 = [r for r in rows if r.get("stage") == 2 and "step" in r]
        with open(args.out, "w") as f:
            json.dump({"world_size": world, "fit_seconds": secs,
                       "losses": [r["loss"] for r in stage2], "rewards": [r["reward"] for r in stage2],
                       "params": {k: v.tolist() for k, v in pol.policy.state_dict().items()}}, f)
        print(f"world_size={world} fit_seconds={secs:.2f} final_loss={stage2[-1]['loss']:.6f}")
    dist.barrier()
    dist.destroy()


if __name__ == "__main__":
    main()
