"""Scale-out benchmark: throughput with 1 and 2 processes (torchrun, gloo), peak memory
against the size of the log (MTL and GRADE stream: memory must stay flat at 10x the data), and how
the cost of each stage grows with the number of logged requests.

    python benchmarks/scaling.py [--requests 10000] [--out runs/scaling] [--json runs/scaling.json]
                                 [--only growth,processes,memory,grade_memory,worldgen]

``grade_memory``: GRADE (Stage 1 one epoch + Stage 2 20 steps x 512 requests x G = 16) streamed
from the Parquet log at 1x, 2x, 4x and 10x the requests: peak RSS, the streaming passes before
training (scan + summary), the Stage-1 epoch and Stage 2.

Every measurement is a fresh process running scripts/train_job.py (peak RSS is the process's
``ru_maxrss``; under torchrun, rank 0's). Logs come from the ``quick`` marketplace world
(50 candidates, 10 shown per request; 8 shards per log). One intra-op thread per
process. On a 2-core box two processes compete with each other (and with anything else running):
read the 1-vs-2 figures with the load average printed next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "scripts" / "train_job.py"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def job(args: list[str], nproc: int = 1) -> dict[str, Any]:
    cmd = [sys.executable, str(JOB), *args] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(JOB), *args]
    t = time.perf_counter()
    r = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, check=False)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    out = Path(args[args.index("--out") + 1])
    res = json.loads((out / "result.json").read_text())
    res["wall_s"] = time.perf_counter() - t
    return res


def world(n_requests: int, out: Path, workers: int = 1) -> float:
    """Generate the quick world's logs (seconds); reused when already there."""
    from blendrank.worlds.generate import generate_world
    from blendrank.worlds.presets import world_config

    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())["seconds_logs"]
    t = time.perf_counter()
    generate_world(world_config("quick"), n_requests, out, shard_requests=max(1000, n_requests // 8),
                   eval_requests=0, workers=workers)
    return time.perf_counter() - t


SECTIONS = ("growth", "processes", "memory", "grade_memory", "worldgen")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10_000, help="requests of the 1x log")
    ap.add_argument("--out", type=Path, default=Path("runs/scaling"))
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--skip-10x", action="store_true", help="skip the 10x memory runs")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections among {', '.join(SECTIONS)}")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if only - set(SECTIONS):
        raise SystemExit(f"--only: unknown section(s) {sorted(only - set(SECTIONS))}; choose among {', '.join(SECTIONS)}")
    n, out = args.requests, args.out
    report: dict[str, Any] = {"requests_1x": n, "load_start": load()}
    mtl = ["--trainer", "mtl", "--epochs", "1", "--batch", "1024"]
    stage2 = ["--trainer", "grade", "--epochs", "0", "--steps", "20", "--batch", "512",
              "--set", "stage2.num_generations=16"]

    # ---- cost growth with the number of requests: world gen, MTL (1 epoch), Stage 1 (1 epoch), Stage 2
    growth = []
    for mult in (1, 2, 4) if "growth" in only else ():
        data = out / f"world_{mult}x"
        gen_s = world(n * mult, data)
        m = job([*mtl, "--data", str(data / "logs"), "--out", str(out / f"mtl_{mult}x")])
        g = job(["--trainer", "grade", "--epochs", "1", "--steps", "20", "--batch", "512",
                 "--set", "stage2.num_generations=16", "--data", str(data / "logs"), "--out", str(out / f"grade_{mult}x")])
        row = {"requests": n * mult, "world_gen_s": round(gen_s, 2), "mtl_epoch_s": round(m["seconds"], 2),
               "mtl_rows": m["rows"], "stage1_epoch_s": round(g["stage_seconds"]["1"], 2),
               "stage2_20_steps_s": round(g["stage_seconds"]["2"], 2), "grade_total_s": round(g["seconds"], 2),
               "grade_peak_rss_mb": round(g["peak_rss_mb"]), "mtl_peak_rss_mb": round(m["peak_rss_mb"]), "load": load()}
        growth.append(row)
        print("growth", row, flush=True)
    report["growth"] = growth

    # ---- 1 vs 2 processes (same global batch)
    procs = []
    pairs = (("mtl", mtl, out / "world_2x" / "logs"), ("stage2", stage2, out / "world_1x" / "logs"))
    for name, base, data in pairs if "processes" in only else ():
        for nproc in (1, 2):
            r = job([*base, "--data", str(data), "--out", str(out / f"{name}_p{nproc}")], nproc=nproc)
            row = {"trainer": name, "processes": nproc, "throughput": round(r["throughput"]),
                   "unit": r["throughput_unit"], "fit_s": round(r["seconds"], 2), "wall_s": round(r["wall_s"], 2),
                   "load": load()}
            procs.append(row)
            print("procs", row, flush=True)
    report["processes"] = procs

    # ---- peak memory of MTL training against the size of the log (streaming)
    mem = []
    for mult in ((1, 10) if not args.skip_10x else (1,)) if "memory" in only else ():
        data = out / f"world_{mult}x"
        world(n * mult, data)
        size = sum(f.stat().st_size for f in (data / "logs").glob("*.parquet"))
        r = job([*mtl, "--data", str(data / "logs"), "--out", str(out / f"mem_{mult}x")])
        row = {"log": f"{mult}x", "requests": n * mult, "parquet_mb": round(size / 2**20, 1),
               "train_rows": r["rows"], "peak_rss_mb": round(r["peak_rss_mb"]), "fit_s": round(r["seconds"], 1),
               "load": load()}
        mem.append(row)
        print("memory", row, flush=True)
    report["memory"] = mem

    # ---- GRADE streamed: peak memory and cost against the size of the log
    gmem = []
    for mult in ((1, 2, 4, 10) if not args.skip_10x else (1, 2, 4)) if "grade_memory" in only else ():
        data = out / f"world_{mult}x"
        world(n * mult, data)
        size = sum(f.stat().st_size for f in (data / "logs").glob("*.parquet"))
        r = job(["--trainer", "grade", "--epochs", "1", "--steps", "20", "--batch", "512", "--set",
                 "stage2.num_generations=16", "--data", str(data / "logs"), "--out", str(out / f"grade_mem_{mult}x")])
        s1, s2 = r["stage_seconds"]["1"], r["stage_seconds"]["2"]
        row = {"log": f"{mult}x", "requests": n * mult, "parquet_mb": round(size / 2**20, 1),
               "peak_rss_mb": round(r["peak_rss_mb"]), "passes_s": round(r["seconds"] - s1 - s2, 2),
               "stage1_epoch_s": round(s1, 2), "stage2_20_steps_s": round(s2, 2),
               "stage2_requests_per_s": round(r["throughput"]), "load": load()}
        gmem.append(row)
        print("grade memory", row, flush=True)
    report["grade_memory"] = gmem

    # ---- world generation: serial vs 2 worker processes (same files)
    gen = []
    for workers in (1, 2) if "worldgen" in only else ():
        secs = world(n * 4, out / f"gen_w{workers}", workers)
        gen.append({"requests": n * 4, "workers": workers, "seconds": round(secs, 2), "load": load()})
        print("worldgen", gen[-1], flush=True)
    report["world_generation"] = gen
    report["load_end"] = load()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
