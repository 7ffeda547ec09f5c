"""One small, seeded training run of any trainer, in one process or under torchrun; the harness of
the scale-out and kill-and-resume tests (tests/test_distributed.py, tests/test_resume.py) and of
benchmarks/scaling.py.

    python scripts/train_job.py --trainer grade --out runs/one
    python -m torch.distributed.run --standalone --nproc_per_node=2 scripts/train_job.py \\
        --trainer mtl --data runs/world/logs --out runs/two

Rank 0 writes ``<out>/result.json``: the loss trajectory, the final parameters and timings.
``--checkpoint-every N`` checkpoints into ``<out>`` (and resumes from it when one is there);
``--hang-after-checkpoint K`` prints ``CHECKPOINTED`` after the K-th checkpoint and then sleeps,
so that a test can ``kill -9`` the run at a known point. Trainers: ``mtl`` (fit_mtl on a Parquet
log split by time), ``ltr`` (GRADE Stage 1 only), ``grade`` (Stage 1 + Stage 2),
``integrated_rl`` (a tiny session world).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from blendrank import distributed as dist
from blendrank.checkpoint import Checkpointer
from blendrank.config import apply_overrides

TINY_WORLD = ["n_items=300", "n_users=200", "candidates=20", "page_size=5", "session.enabled=true"]


def _hang_after(k: int) -> None:
    """Make the K-th checkpoint save announce itself and block (the test kills us there)."""
    save, count = Checkpointer.save, [0]

    def hanging(self: Checkpointer, state: dict[str, Any]) -> None:
        save(self, state)
        count[0] += 1
        if count[0] == k:
            print("CHECKPOINTED", flush=True)
            time.sleep(600)

    Checkpointer.save = hanging  # type: ignore[method-assign]


RESUMED: list[bool] = []


def _record_resume() -> None:
    """Note whether the trainer found a checkpoint to continue from (reported in result.json)."""
    load = Checkpointer.load

    def recording(self: Checkpointer) -> dict[str, Any] | None:
        state = load(self)
        RESUMED.append(state is not None)
        return state

    Checkpointer.load = recording  # type: ignore[method-assign]


def _params(module: torch.nn.Module) -> dict[str, list]:
    return {k: v.detach().float().reshape(-1).tolist() for k, v in module.state_dict().items()
            if v.is_floating_point()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    ckpt = {"checkpoint_dir": args.out if args.checkpoint_every else None,
            "checkpoint_every": args.checkpoint_every or 1}
    if args.trainer == "mtl":
        from blendrank.mtl.config import MTLConfig
        from blendrank.mtl.data import resolve_data
        from blendrank.mtl.fit import fit_mtl

        cfg = MTLConfig.model_validate(apply_overrides(
            {"epochs": args.epochs, "batch_size": args.batch, "lr": 0.01, "expert_dims": [16], "tower_dims": [8],
             "read_batch_rows": 1000, "shuffle_buffer_rows": 4000, "patience": 10, "seed": 0, "threads": 1}, args.set))
        splits = resolve_data(args.data, cfg.split)
        pred = fit_mtl(splits.train, splits.valid, cfg, progress=False, lanes=args.lanes, **ckpt)
        return {"losses": [h["train_loss"] for h in pred.history], "valid": [h["valid_loss"] for h in pred.history],
                "rows": pred.training["rows"], "params": _params(pred.model),
                "throughput": pred.training["impressions_per_s"], "throughput_unit": "training impressions/s"}
    if args.trainer in ("grade", "ltr"):
        from blendrank.algos.grade.config import GRADEConfig
        from blendrank.algos.grade.trainer import fit_grade
        from blendrank.data.synthetic import two_type_log

        cfg = GRADEConfig.model_validate(apply_overrides(
            {"seed": 0, "log_every": 1, "stage1": {"epochs": args.epochs, "batch_size": args.batch},
             "stage2": {"steps": 0 if args.trainer == "ltr" else args.steps, "batch_size": args.batch,
                        "num_generations": 8, "num_iterations": 2},
             "reward": {"a_prior": 0.0, "k": 4, "post_objective_weights": {"click": 1.0, "order": 1.0}}}, args.set))
        # A Parquet log is streamed by fit_grade (never loaded whole); else a small synthetic table.
        data = args.data if args.data is not None else two_type_log(args.requests)
        pol = fit_grade(data, cfg, **ckpt)
        s1 = [r["lambda_loss"] for r in pol.history if "lambda_loss" in r]
        s2 = [r for r in pol.history if r.get("stage") == 2 and "step" in r]
        secs = {r["stage"]: r["seconds"] for r in pol.history if "seconds" in r and "step" not in r}
        s2_rate = [r["requests_per_s"] for r in pol.history if "requests_per_s" in r]
        return {"losses": s1 + [r["loss"] for r in s2], "rewards": [r["reward"] for r in s2],
                "params": _params(pol.policy), "stage_seconds": secs,
                "throughput": s2_rate[-1] if s2_rate else None, "throughput_unit": "Stage-2 requests/s"}
    if args.trainer == "integrated_rl":
        from blendrank.algos.integrated_rl import IntegratedRLConfig, fit_integrated_rl
        from blendrank.worlds.marketplace import MarketplaceWorld
        from blendrank.worlds.presets import world_config

        world = MarketplaceWorld(world_config("quick", overrides=TINY_WORLD))
        cfg = IntegratedRLConfig.model_validate(apply_overrides(
            {"rounds": 2, "sessions_per_round": args.requests // 5, "steps_per_round": args.steps,
             "batch_size": args.batch, "eval_requests": 100, "actor_every": 2}, args.set))
        pol = fit_integrated_rl(world, cfg, **ckpt)
        return {"losses": [h["critic_loss"] for h in pol.history], "rewards": [h["ab_value"] for h in pol.history],
                "params": _params(pol.actor)}
    raise SystemExit(f"unknown --trainer {args.trainer}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trainer", required=True, choices=["mtl", "ltr", "grade", "integrated_rl"])
    ap.add_argument("--out", required=True, type=Path, help="output directory (result.json, checkpoint.pt)")
    ap.add_argument("--data", type=Path, help="Parquet log (mtl; grade/ltr: instead of the synthetic log)")
    ap.add_argument("--requests", type=int, default=300, help="synthetic requests (grade, ltr) / 5x sessions (integrated_rl)")
    ap.add_argument("--epochs", type=int, default=2, help="MTL epochs / Stage-1 epochs")
    ap.add_argument("--steps", type=int, default=4, help="Stage-2 steps / IntegratedRL steps per round")
    ap.add_argument("--batch", type=int, default=96, help="global batch (a multiple of the number of processes)")
    ap.add_argument("--lanes", type=int, default=None, help="MTL data lanes (default: number of processes)")
    ap.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every N steps (0: none)")
    ap.add_argument("--hang-after-checkpoint", type=int, default=0, help="block after the K-th checkpoint")
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    return ap.parse_args(argv)


def main() -> None:
    args = parse()
    torch.set_num_threads(1)
    _rank, world = dist.init_from_env()
    if args.hang_after_checkpoint:
        _hang_after(args.hang_after_checkpoint)
    _record_resume()
    t = time.perf_counter()
    result = run(args)
    import resource

    result.update(world_size=world, seconds=time.perf_counter() - t, resumed=any(RESUMED),
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if dist.is_main():
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "result.json").write_text(json.dumps(result))
        print(f"{args.trainer}: world_size={world} seconds={result['seconds']:.2f} final_loss={result['losses'][-1]:.6f}")
    dist.barrier()
    dist.destroy()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
