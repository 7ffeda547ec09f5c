"""Serving load test on loopback: latency (p50/p99) and throughput of ``POST /v1/rank`` at 50,
200 and 500 candidates, next to a trivial endpoint (JSON in, constant out) on the same stack, and
the in-process batched path (``Ranker.rank_batch``).

    python benchmarks/serve_load.py [--model EXPORT_DIR] [--requests 2000] [--seconds 20] [--concurrency 8]

Without ``--model`` a small GRADE policy is trained on a synthetic log and exported to a temp
directory. Servers run as ``uvicorn`` subprocesses bound to 127.0.0.1; each configuration stops
after ``--requests`` requests or ``--seconds`` seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

CANDIDATES = (50, 200, 500)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_export(out: Path) -> Path:
    import pyarrow as pa

    from blendrank.algos.grade.config import GRADEConfig
    from blendrank.algos.grade.trainer import fit_grade
    from blendrank.serve.export import export_policy

    rng = np.random.default_rng(0)
    n, L = 400, 8
    rep = lambda a: np.repeat(a, L)  # noqa: E731
    table = pa.table({
        "request_id": rep(np.arange(n)), "user_id": rep(np.arange(n)), "ts": rep(np.arange(n)),
        "item_id": np.tile(np.arange(L), n), "position": np.tile(np.arange(1, L + 1, dtype=np.int32), n),
        "label_click": (rng.random(n * L) < 0.2).astype(np.int8), "label_order": (rng.random(n * L) < 0.05).astype(np.int8),
        "pred_click": rng.uniform(0.01, 0.5, n * L).astype(np.float32),
        "pred_order": rng.uniform(0.001, 0.05, n * L).astype(np.float32),
        "f_user_segment": rep(rng.integers(5, size=n)), "f_ctx_query": rep(rng.integers(20, size=n)),
        "f_user_activity": rep(rng.normal(size=n)).astype(np.float32),
    })
    cfg = GRADEConfig.model_validate({"stage1": {"epochs": 1}, "stage2": {"steps": 2, "batch_size": 128},
                                      "reward": {"k": 4, "post_objective_weights": {"click": 1.0, "order": 1.0}}})
    fit_grade(table, cfg).save(out / "policy")
    export_policy(out / "policy", out / "export")
    return out / "export"


def payload(export: Path, n: int, seed: int = 0) -> dict:
    m = json.loads((export / "manifest.json").read_text())
    rng = np.random.default_rng(seed)
    cands = [{"item_id": i, **{f"pred_{o}": float(rng.uniform(0.001, 0.5)) for o in m["objectives"]},
              **({"price": float(rng.lognormal(3, 1))} if m["fusion"]["use_price"] else {})} for i in range(n)]
    return {"user": {f: None for f in m["categorical"] + m["numeric"]}, "candidates": cands, "k": 10}


TRIVIAL_APP = """
from fastapi import FastAPI, Request
app = FastAPI()
@app.post("/trivial")
async def trivial(request: Request):
    await request.json()
    return {"ok": True}
"""


def start(cmd: list[str], port: int, env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start in 60 s")


def load(url: str, body: bytes, requests: int, seconds: float, concurrency: int) -> dict:
    import httpx

    lat: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.perf_counter() + seconds
    counter = iter(range(requests))

    def worker() -> None:
        nonlocal errors
        with httpx.Client(timeout=30) as c:
            c.post(url, content=body, headers={"content-type": "application/json"})  # warm the connection
            while time.perf_counter() < stop:
                with lock:
                    if next(counter, None) is None:
                        return
                t0 = time.perf_counter()
                r = c.post(url, content=body, headers={"content-type": "application/json"})
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    errors += r.status_code != 200

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        for f in [ex.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {"n": len(a), "errors": errors, "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "rps": len(a) / wall}


def in_process(export: Path, n_cand: int, batch: int = 256, reps: int = 20) -> float:
    import torch

    from blendrank.serve.ranker import Ranker

    rk = Ranker.load(export)
    cat, num, inputs, mask, _, _ = rk.encode([payload(export, n_cand, s) for s in range(batch)])
    rk.rank_batch(cat, num, inputs, mask, 10)
    t0 = time.perf_counter()
    for _ in range(reps):
        rk.rank_batch(cat, num, inputs, mask, 10)
    torch.set_num_threads(1)
    return batch * reps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
    export = args.model or tiny_export(tmp)
    (tmp / "trivial_app.py").write_text(TRIVIAL_APP)
    rows = []
    p_rank, p_triv = free_port(), free_port()
    exe = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": str(tmp)}
    servers = [start([str(exe / "blendrank"), "serve", "--model", str(export), "--port", str(p_rank)], p_rank),
               start([sys.executable, "-m", "uvicorn", "trivial_app:app", "--port", str(p_triv), "--log-level", "warning"],
                     p_triv, env)]
    try:
        for n in CANDIDATES:
            body = json.dumps(payload(export, n)).encode()
            for name, url in (("trivial", f"http://127.0.0.1:{p_triv}/trivial"), ("rank", f"http://127.0.0.1:{p_rank}/v1/rank")):
                r = load(url, body, args.requests, args.seconds, args.concurrency)
                rows.append({"endpoint": name, "candidates": n, "body_kb": len(body) / 1024, **r})
                print(f"{name:8s} L={n:4d} body={len(body) / 1024:6.1f} KiB  n={r['n']:5d} err={r['errors']}  "
                      f"p50={r['p50_ms']:7.2f} ms  p99={r['p99_ms']:7.2f} ms  {r['rps']:8.1f} req/s", flush=True)
    finally:
        for s in servers:
            s.terminate()
            s.wait(10)
    for n in CANDIDATES:
        rps = in_process(export, n)
        rows.append({"endpoint": "rank_batch(in-process, B=256)", "candidates": n, "rps": rps})
        print(f"rank_batch in-process B=256 L={n:4d}: {rps:,.0f} requests/s", flush=True)
    print(json.dumps({"cpu_count": os.cpu_count(), "concurrency": args.concurrency, "rows": rows}))


if __name__ == "__main__":
    main()
