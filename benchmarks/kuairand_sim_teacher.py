"""The kuairand-sim teacher's held-out quality on the real test days (05-06 … 05-08).

Prints, per feedback: AUC over every test-day impression, and GAUC over the *standard* test
split (``blendrank data kuairand``: pseudo-requests with >= 5 videos, GAUC uniform over requests,
single-class requests skipped) — the same rows and metric as the MTL figures in
docs/benchmarks.md ("Real logs"), for comparison; then the teacher's calibration on every test-day
impression, per decile of the prediction, without and with its Platt scaling (fitted on the
validation days; the world applies it). The teacher is fitted once and cached
(``$BLENDRANK_CACHE`` or ``~/.cache/blendrank``; ``--cache DIR`` to choose).

    python benchmarks/kuairand_sim_teacher.py [--cache DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from mtl_kuairand import per_request_gauc

from blendrank.data.kuairand import build_kuairand
from blendrank.worlds.kuairand_sim_teacher import (
    TEACHER_BINARY,
    KuaiRandTables,
    TeacherConfig,
    _fit_rows,
    calibration_deciles,
    fit_teacher,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=None, help="teacher cache directory")
    args = ap.parse_args()
    t0 = time.perf_counter()
    tables = KuaiRandTables()
    teacher = fit_teacher(TeacherConfig(), args.cache, tables=tables)
    fit_s = time.perf_counter() - t0
    std = Path(tempfile.mkdtemp(prefix="ksim_teacher_")) / "std"
    build_kuairand(std, min_items=5)
    test = pq.read_table(std / "test.parquet")
    pred = teacher.predictor.predict(test)
    m = teacher.metrics
    print(f"teacher: {m['train_impressions']:,} training impressions, {m['epochs']} epochs; "
          f"loaded/fitted in {fit_s:.0f} s; test days: {m['test_impressions']:,} impressions")
    print("\n| feedback | test rate | AUC (all test impressions) | log loss (base rate) | "
          "GAUC standard split | requests |")
    print("|---|---:|---:|---:|---:|---:|")
    for k in TEACHER_BINARY:
        g = per_request_gauc(test, pred[k], k)
        used = ~np.isnan(g)
        print(f"| {k} | {m[f'rate_{k}']:.4f} | {m[f'auc_{k}']:.4f} | {m[f'logloss_{k}']:.4f} "
              f"({m[f'base_logloss_{k}']:.4f}) | {np.nanmean(g):.4f} | {int(used.sum()):,} |")
    calibration_report(teacher, tables)


def calibration_report(teacher, tables: KuaiRandTables) -> None:
    """Predicted vs observed per decile on every test-day impression, raw and Platt-scaled."""
    _, _, test = _fit_rows(TeacherConfig(), tables)
    print("\nPlatt scaling (a·logit + b), fitted on the validation days: "
          + ", ".join(f"{k} ({a:.3f}, {b:+.3f})" for k, (a, b) in teacher.platt.items()))
    for k in ("click", "long_view", "like"):
        y = test[f"label_{k}"].to_numpy()
        rows = {}
        for name, cal in (("raw", False), ("Platt", True)):
            o = teacher.outputs(test, calibrated=cal)
            rows[name] = calibration_deciles(o[k] if k == "click" else o["click"] * o[k], y)
        print(f"\n{k} (test rate {y.mean():.4f}; mean prediction raw {np.mean([r['pred'] for r in rows['raw']]):.4f}, "
              f"Platt {np.mean([r['pred'] for r in rows['Platt']]):.4f}; ECE raw {_ece(rows['raw']):.4f}, "
              f"Platt {_ece(rows['Platt']):.4f})\n")
        print("| decile | " + " | ".join(str(i + 1) for i in range(10)) + " |")
        print("|---|" + "---:|" * 10)
        for name in ("raw", "Platt"):
            print(f"| {name}: predicted / observed | " + " | ".join(
                f"{r['pred']:.3f} / {r['observed']:.3f}" for r in rows[name]) + " |")


def _ece(rows: list[dict]) -> float:
    """Expected calibration error over equal-count deciles: mean |predicted − observed|."""
    return float(np.mean([abs(r["pred"] - r["observed"]) for r in rows]))


if __name__ == "__main__":
    main()
