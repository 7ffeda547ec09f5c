"""kuairand-sim against the real log: per-impression rates and session lengths, before and after
calibration, and the exit-model fit that chose the session defaults.

For each variant, ``--sessions`` logging-policy sessions (the logger's predictions fused with
Dirichlet-explored production weights, the policy that produces the student's training logs) are
simulated; printed: the per-impression rate of every feedback, watch seconds per impression,
impressions per session (mean, median, p90), the share of impressions taken by the top 10% of
the pool, and the shape of impressions per user-day after thinning each impression with the
fitted ρ (the log keeps a small sample of each real day), next to the real log's (tab 1 rates;
every row for the day lengths).

Variants: ``uncalibrated`` (no Platt scaling, no logit offsets, the uncalibrated exit model) and
``calibrated`` (the defaults). ``--fit-exits N`` also replays the exit-model grid on N no-exit
sessions and prints its best cells (what the session defaults were chosen from). The student is
not needed here, so the worlds are built with ``log_sessions=10``.

    python benchmarks/kuairand_sim_calibration.py [--preset default] [--sessions 1000] [--fit-exits 400] [--cache DIR]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from blendrank.worlds.kuairand_sim import KuaiRandSimWorld
from blendrank.worlds.kuairand_sim_calibrate import (
    day_length_histogram,
    exit_trace,
    fit_exit_model,
    real_day_lengths,
    thinned_histogram,
)
from blendrank.worlds.kuairand_sim_config import FEEDBACKS, STREAM_LOGS
from blendrank.worlds.presets import kuairand_sim_config

#: The uncalibrated world: no Platt scaling, no rate matching, the unfitted exit model.
UNCALIBRATED = ["calibration.platt=false", "calibration.match_log_rates=false", "session.exit_base=-4.6",
                "session.exit_activity=0.5", "session.exit_user_sd=0.5", "session.fatigue=0.25",
                "session.max_impressions=200"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--sessions", type=int, default=1000, help="logging-policy sessions per variant")
    ap.add_argument("--fit-exits", type=int, default=0, help="no-exit sessions for the exit-model grid (0: skip)")
    ap.add_argument("--cache", default=None, help="model cache directory")
    args = ap.parse_args()
    torch.set_num_threads(1)
    common = ["log_sessions=10"] + ([f"cache_dir={args.cache}"] if args.cache else [])
    rows = {}
    for name, extra in (("uncalibrated", UNCALIBRATED), ("calibrated", [])):
        t0 = time.perf_counter()
        world = KuaiRandSimWorld(kuairand_sim_config(args.preset, overrides=[*common, *extra]), log=lambda s: None)
        rows[name] = (world, world_stats(world, args.sessions))
        print(f"{name}: built and simulated in {time.perf_counter() - t0:.0f} s; offsets {world.offsets}")
    world = rows["calibrated"][0]
    print(f"Platt scaling (a·logit + b): {world.teacher.platt}")
    log, rho = world.log_rates, world.config.session.thinning
    real = day_length_histogram(real_day_lengths(world))
    print(f"\n| | log (tab {world.config.calibration.tab}) | " + " | ".join(rows) + " |")
    print("|---|---:|" + "---:|" * len(rows))
    for k in (*FEEDBACKS, "watch_s"):
        print(f"| {k} | {log[k]:.4f} | " + " | ".join(f"{s['rates'][k]:.4f}" for _, s in rows.values()) + " |")
    for k in ("impressions_mean", "impressions_median", "impressions_p90"):
        print(f"| {k.replace('_', ' ')} | | " + " | ".join(f"{s['rates'][k]:.1f}" for _, s in rows.values()) + " |")
    print("| top 10% of pool: share of impressions | 0.60 | " + " | ".join(f"{s['top10_share']:.3f}" for _, s in rows.values()) + " |")
    print(f"\nImpressions per user-day, log vs simulated sessions thinned with ρ = {rho} (sessions weighted by "
          "their user's real active days):\n")
    print("| | 1 | 2 | 3 | 4 | 5 | 6 | 7 | ≥ 8 |")
    print("|---|" + "---:|" * 8)
    print("| log | " + " | ".join(f"{x:.3f}" for x in real / real.sum()) + " |")
    for name, (_, s) in rows.items():
        print(f"| {name} | " + " | ".join(f"{x:.3f}" for x in s["day_share"]) + " |")
    if args.fit_exits:
        t0 = time.perf_counter()
        res = fit_exit_model(world, exit_trace(world, args.fit_exits))
        print(f"\nExit-model grid ({args.fit_exits} no-exit sessions, {time.perf_counter() - t0:.0f} s), best cells:\n")
        print("| σ_θ | η | κ | θ̄ (mean 60) | ρ | χ² | median | p90 |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in res["cells"][:6]:
            print(f"| {c['exit_user_sd']} | {c['exit_activity']} | {c['fatigue']} | {c['exit_base']} | {c['rho']:.4f} | "
                  f"{c['chi2']:.0f} | {c['median']:.0f} | {c['p90']:.0f} |")


def world_stats(world: KuaiRandSimWorld, n_sessions: int) -> dict:
    """Rates and lengths of ``n_sessions`` logging-policy sessions (stream of the student's logs),
    exposure concentration, and the thinned day-length shares at the world's ρ."""
    store = {"weights": [], "propensity": []}
    items: list[np.ndarray] = []

    def record(ctx, page, fb):
        items.append(np.take_along_axis(ctx.cand, page, 1)[fb["consumed"]])

    rng = np.random.default_rng([world.config.seed, STREAM_LOGS, 3])
    res = world.run_sessions(world.logging_policy(rng, store), n_sessions, STREAM_LOGS, predictor="logger", record=record)
    tot, lengths = res.totals, res.totals["impressions"]
    rates = {k: float(tot[k].sum() / lengths.sum()) for k in FEEDBACKS}
    rates |= {"watch_s": float(tot["watch_s"].sum() / lengths.sum()), "impressions_mean": float(lengths.mean()),
              "impressions_median": float(np.median(lengths)), "impressions_p90": float(np.percentile(lengths, 90))}
    per_item = np.sort(np.bincount(np.concatenate(items), minlength=len(world.pool)))[::-1]
    users = world.session_users(n_sessions, STREAM_LOGS)
    share = thinned_histogram(lengths, world.user_days[users].astype(float), world.config.session.thinning)
    return {"rates": rates, "top10_share": float(per_item[: len(world.pool) // 10].sum() / per_item.sum()),
            "day_share": share}


if __name__ == "__main__":
    main()
