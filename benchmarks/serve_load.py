"""Serving load test on loopback: ``POST /v1/rank`` next to a trivial FastAPI endpoint, same run.

    python benchmarks/serve_load.py --quick          # 200 candidates, 5 s per phase (~1 min)
    python benchmarks/serve_load.py                  # 50, 200 and 500 candidates, 10 s per phase
    python benchmarks/serve_load.py --model runs/export --seconds 20 --concurrency 8 --rate 300

Both servers are uvicorn subprocesses, one worker each, bound to 127.0.0.1: ``blendrank serve``
and a trivial app whose endpoint parses the same JSON body and returns a constant. The load
generator is this process (an asyncio HTTP/1.1 keep-alive client, far cheaper per request than
httpx, so it steals less CPU from the server on a small box). For each candidate count and
endpoint, two phases, each bounded in time and in concurrent connections:

* ``max``: closed loop, ``--concurrency`` connections each sending its next request as soon as
  the previous answer arrives → the throughput ceiling and its latencies;
* ``rate``: open loop at ``--rate`` requests/s (arrivals on a fixed schedule, served by at most
  ``--concurrency`` connections); latency counts from the scheduled send time, so time spent
  queued behind a slow server is included.

A last phase repeats ``max`` on ``/v1/rank`` while the model is reloaded (``POST /admin/reload``,
validated and swapped) every ``--reload-every`` seconds: its non-200 count must be 0.

Also reported: the mean number of requests per policy call (the service ranks requests that
arrive together as one batch), the server's CPU time per request (from /proc, so less sensitive to other load on
the machine than wall-clock figures) and the load average. Ends with a Markdown table and the
serving goals (p99 ≤ 20 ms at 200 candidates and 300 req/s; ≥ 50% of the trivial
endpoint's throughput). Without ``--model`` a small policy is trained and exported first (~10 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serve_common import markdown, payload, tiny_export

TRIVIAL_APP = """
from fastapi import FastAPI, Request
app = FastAPI()
@app.post("/trivial")
async def trivial(request: Request):
    await request.json()
    return {"ok": True}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}") from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server on port {port} did not start in 120 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_request(path: str, port: int, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    status = int((await reader.readline()).split(b" ", 2)[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def _phase(port: int, request: bytes, seconds: float, concurrency: int, rate: float | None) -> dict:
    lat: list[float] = []
    statuses: dict[int, int] = {}
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]
    for r, w in conns:  # warm every connection (and the server's code paths)
        await _exchange(r, w, request)
    t0 = time.perf_counter()
    stop = t0 + seconds
    queue: asyncio.Queue[float | None] = asyncio.Queue()

    async def closed(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            st = await _exchange(r, w, request)
            lat.append(time.perf_counter() - t)
            statuses[st] = statuses.get(st, 0) + 1

    async def opened(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while (scheduled := await queue.get()) is not None:
            st = await _exchange(r, w, request)
            lat.append(time.perf_counter() - scheduled)
            statuses[st] = statuses.get(st, 0) + 1

    async def schedule() -> None:
        i = 0
        while (due := t0 + i / rate) < stop:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait(due)
            i += 1
        for _ in conns:
            queue.put_nowait(None)

    if rate is None:
        await asyncio.gather(*(closed(r, w) for r, w in conns))
    else:
        await asyncio.gather(schedule(), *(opened(r, w) for r, w in conns))
    wall = time.perf_counter() - t0
    for _, w in conns:
        w.close()
    a = np.asarray(lat) * 1000
    return {"n": len(a), "rps": len(a) / wall, "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()),
            "non_200": sum(n for s, n in statuses.items() if s != 200),
            "5xx": sum(n for s, n in statuses.items() if s >= 500)}


def batch_counters(port: int) -> tuple[float, float]:
    """(policy calls, requests ranked by them) from a blendrank server's /metrics."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    vals = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("blendrank_rank_batch")}
    return vals.get("blendrank_rank_batches_total", 0.0), vals.get("blendrank_rank_batched_requests_total", 0.0)


def phase(name: str, proc: subprocess.Popen, port: int, path: str, body: bytes, seconds: float,
          concurrency: int, rate: float | None) -> dict:
    cpu0 = cpu_seconds(proc.pid)
    b0 = batch_counters(port) if name == "rank" else None
    res = asyncio.run(_phase(port, http_request(path, port, body), seconds, concurrency, rate))
    if b0 is not None:
        b1 = batch_counters(port)
        res["mean_batch"] = (b1[1] - b0[1]) / max(b1[0] - b0[0], 1)
    # The warm-up requests (one per connection) are in the CPU time too: a small overcount.
    res["server_cpu_us"] = (cpu_seconds(proc.pid) - cpu0) / max(res["n"] + concurrency, 1) * 1e6
    res.update({"endpoint": name, "mode": "max" if rate is None else f"{rate:g}/s", "load": os.getloadavg()[0]})
    print(f"{name:8s} {res['mode']:>6s}  n={res['n']:6d} non-200={res['non_200']}  {res['rps']:7.0f} req/s  "
          f"p50={res['p50_ms']:6.2f} ms  p99={res['p99_ms']:6.2f} ms  server CPU {res['server_cpu_us']:5.0f} µs/req  "
          f"load {res['load']:.2f}" + (f"  mean batch {res['mean_batch']:.2f}" if "mean_batch" in res else ""),
          flush=True)
    return res


def reload_loop(port: int, token: str, dirs: list[Path], every: float, stop: threading.Event,
                results: list[int]) -> None:
    """POST /admin/reload every ``every`` seconds, alternating between ``dirs``; HTTP statuses."""
    import urllib.error
    import urllib.request

    i = 0
    while not stop.wait(every):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/admin/reload", method="POST",
                                     data=json.dumps({"path": str(dirs[i % len(dirs)])}).encode(),
                                     headers={"Authorization": f"Bearer {token}", "content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                results.append(r.status)
        except urllib.error.HTTPError as exc:
            results.append(exc.code)
        i += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="Export directory (default: train and export a small policy).")
    ap.add_argument("--quick", action="store_true", help="200 candidates only, 5 s per phase.")
    ap.add_argument("--candidates", type=int, nargs="+", help="Candidate counts (default 50 200 500; --quick: 200).")
    ap.add_argument("--seconds", type=float, help="Seconds per phase (default 10; --quick: 5).")
    ap.add_argument("--concurrency", type=int, default=8, help="Open connections per phase.")
    ap.add_argument("--rate", type=float, default=300.0, help="Offered load of the open-loop phase, requests/s.")
    ap.add_argument("--layout", choices=("columnar", "rows"), default="columnar", help="Candidate layout of the body.")
    ap.add_argument("--reload-every", type=float, default=1.0,
                    help="Last phase: closed loop on /v1/rank while the model is reloaded every this many seconds.")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    lengths = args.candidates or ([200] if args.quick else [50, 200, 500])
    seconds = args.seconds or (5.0 if args.quick else 10.0)
    tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
    # reloads go to directories under the served export's parent (the service's model root)
    export = tiny_export(tmp) if args.model is None else Path(shutil.copytree(args.model, tmp / "export"))
    (tmp / "trivial_app.py").write_text(TRIVIAL_APP)
    src = str(Path(__file__).resolve().parents[1] / "src")
    token = secrets.token_hex(8)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(tmp), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "BLENDRANK_RELOAD_TOKEN": token}
    twin = tmp / "export_twin"  # reloads alternate between the export and a copy of it
    shutil.copytree(export, twin)
    p_rank, p_triv = free_port(), free_port()
    load0 = os.getloadavg()
    # (no access log: stderr is a pipe read only at the end, and the trivial app logs none either)
    rank = start([sys.executable, "-m", "blendrank.cli.main", "serve", "--model", str(export), "--port", str(p_rank),
                  "--host", "127.0.0.1", "--no-access-log"], p_rank, env)
    triv = start([sys.executable, "-m", "uvicorn", "trivial_app:app", "--host", "127.0.0.1", "--port", str(p_triv),
                  "--workers", "1", "--log-level", "warning", "--no-access-log"], p_triv, env)
    rows = []
    try:
        for n in lengths:
            body = json.dumps(payload(export, n, layout=args.layout)).encode()
            for rate in (None, args.rate):
                for name, proc, port, path in (("trivial", triv, p_triv, "/trivial"), ("rank", rank, p_rank, "/v1/rank")):
                    r = phase(name, proc, port, path, body, seconds, args.concurrency, rate)
                    rows.append({"candidates": n, "body_kib": len(body) / 1024, **r})
        n = 200 if 200 in lengths else lengths[0]
        body = json.dumps(payload(export, n, layout=args.layout)).encode()
        stop, reloads = threading.Event(), []
        reloader = threading.Thread(target=reload_loop, args=(p_rank, token, [twin, export], args.reload_every, stop, reloads))
        reloader.start()
        try:
            r = phase("rank", rank, p_rank, "/v1/rank", body, seconds, args.concurrency, None)
        finally:
            stop.set()
            reloader.join(120)
        r["mode"] = f"max + {len(reloads)} reloads"
        rows.append({"candidates": n, "body_kib": len(body) / 1024, **r})
        print(f"reloads during the last phase: {len(reloads)}, statuses {sorted(set(reloads))}", flush=True)
    finally:
        for proc in (rank, triv):
            proc.terminate()
            proc.wait(10)
    print()
    print(markdown(rows, [("candidates", "L"), ("body_kib", "body KiB"), ("endpoint", "endpoint"), ("mode", "load"),
                          ("rps", "req/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
                          ("server_cpu_us", "server CPU µs/req"), ("mean_batch", "mean batch"), ("non_200", "non-200"),
                          ("load", "load avg")]))
    print()
    get = {(r["candidates"], r["endpoint"], r["mode"]): r for r in rows}
    rate_mode = f"{args.rate:g}/s"
    for n in lengths:
        rk, tr = get[(n, "rank", "max")], get[(n, "trivial", "max")]
        at = get[(n, "rank", rate_mode)]
        print(f"L={n}: /v1/rank p99 at {rate_mode} = {at['p99_ms']:.1f} ms (goal ≤ 20 at L=200), achieved "
              f"{at['rps']:.0f} req/s; max throughput {rk['rps']:.0f} vs trivial {tr['rps']:.0f} req/s = "
              f"{rk['rps'] / tr['rps']:.0%} (goal ≥ 50%); server CPU {rk['server_cpu_us']:.0f} vs "
              f"{tr['server_cpu_us']:.0f} µs/req = {tr['server_cpu_us'] / rk['server_cpu_us']:.0%}")
    print(f"5xx: {sum(r['5xx'] for r in rows)}; {os.cpu_count()} CPUs, load average before {load0[0]:.2f}, "
          f"after {os.getloadavg()[0]:.2f}; concurrency {args.concurrency}, {seconds:g} s per phase, {args.layout} bodies")
    if args.json_out:
        args.json_out.write_text(json.dumps({"rows": rows, "cpu_count": os.cpu_count(), "load_before": load0,
                                             "concurrency": args.concurrency, "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
