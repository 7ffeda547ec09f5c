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

import torch

from blendrank import distributed as dist
from blendrank.algos.grade.config import GRADEConfig
from blendrank.algos.grade.trainer import fit_grade
from blendrank.config import apply_overrides
from blendrank.data.synthetic import two_type_log


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
