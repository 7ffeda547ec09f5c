"""The MTL model on a marketplace world: calibration by decile and AUC per task on a held-out
shard, and training throughput.

The world is generated into ``--shards`` shards (each a block of consecutive requests); the first
``shards - 2`` train, the next one is validation (early stopping), the last one is held out.
Only shown rows are used, like in training. Two views of the held-out rows:

* **as logged**: predictions at the logged position (the MTL model's position tower applied)
  against the logged labels — what any model can be checked on with logs alone;
* **at position 1 vs the truth**: the position-free predictions (what ``mtl predict`` writes and
  what fusion uses) against the world's true examination-1 probabilities (calibration by decile:
  mean prediction vs mean true probability) and against labels drawn from those probabilities
  (AUC; seeded) — what the position tower is for;
* **all candidates vs the truth**: the same position-free predictions on *every* candidate of the
  held-out requests, shown or not (fusion re-ranks all of them): AUC on truth draws, calibration,
  and the mean within-request Spearman correlation with the true probabilities. A model that
  ranks the shown rows well can still rank the unshown ones badly, since the logging policy
  chose what was shown.

Compared: the world's own logged predictor (``pred_*`` in the logs: true logits plus noise and
per-segment miscalibration), the per-task logistic baseline (no position input), the MMoE on the
``f_*`` features, and the MMoE with ``user_id``/``item_id`` embeddings.

    python benchmarks/mtl_world.py [--preset quick] [--world-seed S] [--requests 20000]
        [--shards 5] [--deciles] [--set position_dropout=0.5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score

from blendrank.config import apply_overrides
from blendrank.data.io import parquet_files
from blendrank.data.stream import LogSource
from blendrank.mtl.config import MTLConfig
from blendrank.mtl.fit import fit_mtl
from blendrank.mtl.logistic import LogisticConfig, fit_logistic
from blendrank.worlds.generate import generate_world
from blendrank.worlds.marketplace import MarketplaceConfig, MarketplaceWorld, Requests
from blendrank.worlds.presets import world_config


def truth(world: MarketplaceWorld, table: pa.Table) -> dict[str, np.ndarray]:
    """True examination-1 probabilities of each row: pCTR and pCTCVR (= pCTR * pCVR)."""
    u = table["user_id"].to_numpy()
    req = Requests(
        user=u,
        query=table["f_ctx_query_cat"].to_numpy(),
        cand=table["item_id"].to_numpy()[:, None],
        pred_noise=np.zeros((len(u), 1, 2 + len(world.config.extra_objectives))),
    )
    t = world.truth(req)
    return {"click": t.click[:, 0], "order": t.click[:, 0] * t.order[:, 0]}


def rank_corr(request: np.ndarray, pred: np.ndarray, target: np.ndarray) -> float:
    """Mean over requests of the Spearman correlation between ``pred`` and ``target`` among the
    request's rows (every request must have the same number of rows; ties broken by order)."""
    order = np.argsort(request, kind="stable")
    n_req = len(np.unique(request))
    p = pred[order].reshape(n_req, -1)
    t = target[order].reshape(n_req, -1)
    rp = p.argsort(1).argsort(1).astype(np.float64)
    rt = t.argsort(1).argsort(1).astype(np.float64)
    rp -= rp.mean(1, keepdims=True)
    rt -= rt.mean(1, keepdims=True)
    den = np.sqrt((rp**2).sum(1) * (rt**2).sum(1))
    return float(np.mean((rp * rt).sum(1) / np.where(den > 0, den, 1.0)))


def deciles(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean prediction and mean target per prediction decile, and the expected calibration error
    (mean |pred - target| over the deciles, weighted by size)."""
    order = np.argsort(pred, kind="stable")
    bins = np.array_split(order, 10)
    p = np.array([pred[b].mean() for b in bins])
    t = np.array([target[b].mean() for b in bins])
    ece = float(sum(len(b) * abs(pi - ti) for b, pi, ti in zip(bins, p, t)) / len(pred))
    return p, t, ece


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--shards", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="MTL seed")
    ap.add_argument("--world-seed", type=int, default=None, help="world seed (default: the preset's)")
    ap.add_argument("--deciles", action="store_true", help="print the decile tables")
    ap.add_argument("--out", default=None, help="keep the generated world here (reused)")
    ap.add_argument("--set", action="append", default=[], help="MTLConfig overrides (both MMoEs)")
    args = ap.parse_args()

    root = Path(args.out or tempfile.mkdtemp(prefix="mtl_world_"))
    cfg = world_config(args.preset)
    if args.world_seed is not None:
        cfg = cfg.model_copy(update={"seed": args.world_seed})
    t0 = time.perf_counter()
    if not (root / "world.json").is_file():
        generate_world(
            cfg, args.requests, root, shard_requests=args.requests // args.shards, eval_requests=0
        )
    gen_s = time.perf_counter() - t0
    world = MarketplaceWorld(
        MarketplaceConfig.model_validate(json.loads((root / "world.json").read_text())["config"])
    )
    files = parquet_files(root / "logs")
    train = LogSource("train", tuple(files[:-2]))
    valid = LogSource("valid", (files[-2],))
    held_all = pq.read_table(files[-1])
    held = held_all.filter(pc.is_valid(held_all["position"]))
    n_train = sum(b.num_rows for b in train.batches(["position"]))
    true = truth(world, held)
    rng = np.random.default_rng(12345)
    drawn = {k: (rng.random(len(v)) < v).astype(int) for k, v in true.items()}
    true_all = truth(world, held_all)
    drawn_all = {k: (rng.random(len(v)) < v).astype(int) for k, v in true_all.items()}
    request_all = held_all["request_id"].to_numpy()
    objectives = world.objectives

    rows = {}
    rows["logged predictor (world)"] = {
        "as_logged": {o: held[f"pred_{o}"].to_numpy() for o in objectives},
        "pos1": {o: held[f"pred_{o}"].to_numpy() for o in objectives},
        "all": {o: held_all[f"pred_{o}"].to_numpy() for o in objectives},
    }
    t0 = time.perf_counter()
    lr = fit_logistic(pa.Table.from_batches(list(train.batches())), None, LogisticConfig())
    lr_s = time.perf_counter() - t0
    p = lr.predict(held)
    rows["logistic (per task)"] = {"as_logged": p, "pos1": p, "all": lr.predict(held_all)}
    timing = {"logistic": (lr_s, None)}
    for name, extra in (
        ("MMoE (f_* features)", {}),
        ("MMoE + user/item ids", {"id_features": ["user_id", "item_id"]}),
    ):
        mcfg = MTLConfig.model_validate(
            apply_overrides({"seed": args.seed, **extra}, list(args.set))
        )
        t0 = time.perf_counter()
        m = fit_mtl(train, valid, mcfg, progress=False)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pos1 = m.predict(held)
        pred_s = time.perf_counter() - t0
        rows[name] = {"as_logged": m.predict(held, position=True), "pos1": pos1, "all": m.predict(held_all)}
        timing[name] = (fit_s, m.training, len(held) / pred_s)

    print(
        f"world {args.preset}: {args.requests:,} requests ({args.requests * cfg.candidates:,} "
        f"impressions, generated in {gen_s:.0f}s); training {n_train:,} shown rows "
        f"({len(files) - 2} shards), validation 1 shard, held-out {len(held):,} shown rows"
    )
    print()

    def table(columns: list[str], cells, ceiling: str) -> None:
        """One markdown row per predictor: ``cells(r, o)`` gives objective ``o``'s cells."""
        print("| predictor | " + " | ".join(c.format(o=o) for o in objectives for c in columns) + " |")
        print("|---|" + "---:|" * (len(columns) * len(objectives)))
        for name, r in rows.items():
            print(f"| {name} | " + " | ".join(c for o in objectives for c in cells(r, o)) + " |")
        print(f"| truth (ceiling) | {ceiling} |")

    def shown_cells(r: dict, o: str) -> list[str]:
        y = held[f"label_{o}"].to_numpy()
        a = r["as_logged"][o].astype(np.float64)
        b = r["pos1"][o].astype(np.float64)
        return [f"{roc_auc_score(y, a):.4f}", f"{deciles(a, y)[2]:.4f}",
                f"{roc_auc_score(drawn[o], b):.4f}", f"{deciles(b, true[o])[2]:.4f}"]

    def all_cells(r: dict, o: str) -> list[str]:
        c = r["all"][o].astype(np.float64)
        return [f"{roc_auc_score(drawn_all[o], c):.4f}", f"{deciles(c, true_all[o])[2]:.4f}",
                f"{rank_corr(request_all, c, true_all[o]):.3f}"]

    table(["{o} AUC as logged", "{o} ECE as logged", "{o} AUC pos 1 (truth draws)", "{o} ECE pos 1 vs truth"],
          shown_cells, " | ".join(f"- | - | {roc_auc_score(drawn[o], true[o]):.4f} | 0" for o in objectives))
    print()
    print(f"All {len(held_all):,} held-out candidates (shown or not), position-free predictions vs the truth:")
    print()
    table(["{o} AUC (truth draws)", "{o} ECE", "{o} within-request rank corr"], all_cells,
          " | ".join(f"{roc_auc_score(drawn_all[o], true_all[o]):.4f} | 0 | 1" for o in objectives))

    print()
    print("| model | fit wall (s) | epochs (best) | train impressions/s | predict rows/s |")
    print("|---|---:|---:|---:|---:|")
    print(f"| logistic | {timing['logistic'][0]:.1f} | 2 | - | - |")
    for name, (fit_s, tr, pred_rate) in ((k, v) for k, v in timing.items() if k != "logistic"):
        print(
            f"| {name} | {fit_s:.1f} | {tr['epochs']} ({tr['best_epoch']}) | "
            f"{tr['impressions_per_s']:,.0f} | {pred_rate:,.0f} |"
        )

    if args.deciles:
        for name in ("MMoE (f_* features)", "MMoE + user/item ids"):
            for o in objectives:
                p_l, t_l, _ = deciles(rows[name]["as_logged"][o], held[f"label_{o}"].to_numpy())
                p_1, t_1, _ = deciles(rows[name]["pos1"][o], true[o])
                print(f"\n{name}, {o}: calibration by decile")
                print(
                    "| decile | mean pred as logged | observed rate | mean pred pos 1 | true pos-1 prob |"
                )
                print("|---:|---:|---:|---:|---:|")
                for d in range(10):
                    print(
                        f"| {d + 1} | {p_l[d]:.4f} | {t_l[d]:.4f} | {p_1[d]:.4f} | {t_1[d]:.4f} |"
                    )


if __name__ == "__main__":
    main()
