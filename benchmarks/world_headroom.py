"""Personalisation headroom of the marketplace presets (docs/worlds.md).

For each preset, on held-out requests: the business value per page of production, the best single
global weight vector, the segment oracle, the per-request oracle and the true-score ranking, all
fusing the same logged predictions (except true_score). The ``homogeneous`` preset is also run
with a noise-free predictor to separate structural headroom from the per-request oracle's fit of
prediction noise.

    python benchmarks/world_headroom.py [--requests 20000] [--out runs/bench_headroom.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from blendrank.worlds.generate import headroom_report
from blendrank.worlds.marketplace import MarketplaceWorld
from blendrank.worlds.presets import PRESETS, world_config

CASES = [(p, []) for p in PRESETS if p != "quick"] + [
    ("homogeneous", ["pred_noise=0", "pred_item_noise=0"]),
    ("default", ["pred_noise=0", "pred_item_noise=0"]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--out", default="runs/bench_headroom.json")
    args = ap.parse_args()
    rows = []
    print("| preset | predictor | production | segment oracle | oracle | true score | seconds |")
    print("|---|---|---|---|---|---|---|")
    for preset, overrides in CASES:
        t = time.perf_counter()
        rep = headroom_report(MarketplaceWorld(world_config(preset, overrides=overrides)), args.requests)
        sec = time.perf_counter() - t
        rel = rep["rel_to_best_global"]
        kind = "noise-free" if overrides else "logged"
        rows.append({"preset": preset, "predictor": kind, **rep, "seconds": sec})
        print(f"| {preset} | {kind} | {rel['production']:+.2%} | {rel['segment_oracle']:+.2%} | "
              f"{rel['oracle']:+.2%} | {rel['true_score']:+.2%} | {sec:.1f} |", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
