"""Speed and memory of ``world generate``: wall time for 1M impressions and peak RSS as N grows.

Each size runs in a fresh process through the public CLI; peak RSS must stay flat as N grows
(memory is bounded by the shard size, not by N).

    python benchmarks/world_generate_speed.py [--sizes 20000,100000] [--preset default]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

CHILD = """
import resource, sys
from blendrank.cli.main import app
try:
    app(sys.argv[1:])
except SystemExit as e:
    assert not e.code, e.code
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run(preset: str, requests: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", CHILD, "world", "generate", "--preset", preset, "--requests", str(requests),
               "--eval-requests", "0", "--out", f"{tmp}/w"]
        t = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
    rss = int(res.stdout.split("MAXRSS_KB")[1].split()[0]) / 1024
    return {"requests": requests, "impressions": requests * 50, "wall_s": round(wall, 2), "peak_rss_mb": round(rss, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20000,200000", help="comma-separated request counts (50 rows each)")
    ap.add_argument("--preset", default="default")
    args = ap.parse_args()
    rows = [run(args.preset, int(n)) for n in args.sizes.split(",")]
    print("| requests | impressions | wall (s, incl. start-up) | impressions/s | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['requests']:,} | {r['impressions']:,} | {r['wall_s']} | {r['impressions'] / r['wall_s']:,.0f} | {r['peak_rss_mb']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
