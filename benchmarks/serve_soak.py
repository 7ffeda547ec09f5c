"""Bounded soak test of the HTTP service on loopback: zero 5xx and bounded memory under load.

    python benchmarks/serve_soak.py [--minutes 10] [--concurrency 4] [--model EXPORT_DIR]
                                    [--warmup-s 60] [--max-growth-mb 50] [--slow-clients 300]
                                    [--json-out FILE]

Starts the real server (``blendrank serve``, uvicorn, 127.0.0.1) on an export directory (without
``--model`` a small GRADE policy is trained on a synthetic log and exported to a temp directory),
then drives it for ``--minutes`` with ``--concurrency`` client threads. The traffic mix covers
every endpoint: ``/v1/rank`` with 1..500 candidates, ``/v1/weights``, ``/healthz``, ``/metrics``,
malformed requests (which must get a 4xx, never a 5xx) and, every ``--reload-every-s`` seconds,
``POST /admin/reload`` alternating between a good copy of the model (must be 200) and a corrupt one
(must be rejected with 422 while the old model keeps serving).

Alongside, a slow-client attack keeps ``--slow-clients`` connections that start ``POST /v1/rank``
and never finish it (half the headers, or the headers and a trickle of body bytes), opening a new
one whenever the server closes one. The normal clients must still see only the expected statuses,
and the server's open file descriptors (/proc/<pid>/fd, sampled with the memory) must stay under
its connection cap plus ``FD_SLACK``.

The server's resident memory (VmRSS from /proc/<pid>/status) is sampled every ``--sample-s``
seconds. Growth is measured from the end of the warm-up (allocator pools, onnxruntime arenas and
the per-size tensor caches fill during it) to the end of the run, and also as a least-squares
slope over the post-warm-up samples. Exit status 1 when any 5xx, any transport error, any
unexpected status, growth above ``--max-growth-mb`` or too many open files occurred; the summary
is printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import free_port, payload, start, tiny_export

TOKEN = "soak-token"
#: Candidate counts of /v1/rank requests, drawn uniformly (the service's default cap is 1000).
SIZES = (1, 5, 20, 50, 100, 200, 500)
#: The server's connection cap for the run (``blendrank serve --max-connections``).
MAX_CONNECTIONS = 200
#: Open files of the server besides client connections (model, listening socket, threads' pipes),
#: plus connections closed by eviction that the event loop has not released yet.
FD_SLACK = 200


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slow_client_loop(port: int, n: int, stop_at: float, counts: Counter[str]) -> None:
    """Keep ``n`` connections that never finish their request; replace each one the server
    closes (408 or eviction) and trickle a body byte on the others every second."""
    head = b"POST /v1/rank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n"

    def half_sent(i: int) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(head[:30] if i % 2 else head + b"\r\n{")
        s.setblocking(False)
        counts["opened"] += 1
        return s

    socks: list[socket.socket] = []
    try:
        while time.time() < stop_at:
            while len(socks) < n and time.time() < stop_at:
                try:
                    socks.append(half_sent(len(socks)))
                except OSError:
                    counts["connect_failed"] += 1
                    time.sleep(0.05)
            time.sleep(1.0)
            alive = []
            for i, s in enumerate(socks):
                try:
                    data = s.recv(4096)
                    gone = True  # b"" (closed) or a 408
                    counts["closed_with_408" if data.startswith(b"HTTP/1.1 408") else "closed"] += 1
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                    counts["reset"] += 1
                if not gone and i % 2 == 0:
                    try:
                        s.send(b" ")
                    except OSError:
                        gone = True
                if gone:
                    s.close()
                else:
                    alive.append(s)
            socks = alive
    finally:
        for s in socks:
            s.close()


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def bad_bodies(export: Path) -> list[tuple[str, bytes]]:
    """Malformed requests the service must answer with a 4xx."""
    good = payload(export, 5, layout="rows")  # candidate objects: one of them is made bad below
    first_pred = next(k for k in good["candidates"][0] if k.startswith("pred_"))
    return [
        ("not json", b"{not json"),
        ("wrong json type", json.dumps([1, 2, 3]).encode()),
        ("missing candidates", json.dumps({"user": good["user"]}).encode()),
        ("unknown feature", json.dumps({**good, "user": {**good["user"], "f_nope": 1}}).encode()),
        ("pred out of range", json.dumps(
            {**good, "candidates": [{**good["candidates"][0], first_pred: 7.0}]}).encode()),
        ("k is text", json.dumps({**good, "k": "ten"}).encode()),
        ("too many candidates", json.dumps(payload(export, 1001)).encode()),
    ]


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_kind: Counter[tuple[str, int]] = Counter()
        self.transport_errors: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.lat_ms: list[float] = []

    def record(self, kind: str, status: int, expected: set[int], dt: float) -> None:
        with self.lock:
            self.by_kind[(kind, status)] += 1
            if kind == "rank":
                self.lat_ms.append(dt * 1000)
            if status not in expected and len(self.unexpected) < 20:
                self.unexpected.append(f"{kind}: {status} (expected {sorted(expected)})")


def client_loop(base: str, export: Path, stop_at: float, seed: int, stats: Stats) -> None:
    import httpx

    rng = np.random.default_rng(seed)
    bodies = {n: [json.dumps(payload(export, n, seed * 100 + s)).encode() for s in range(4)] for n in SIZES}
    bad = bad_bodies(export)
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=base, timeout=30) as c:
        while time.time() < stop_at:
            u = rng.random()
            try:
                t0 = time.perf_counter()
                if u < 0.70:
                    n = int(rng.choice(SIZES))
                    r = c.post("/v1/rank", content=bodies[n][int(rng.integers(4))], headers=headers)
                    stats.record("rank", r.status_code, {200}, time.perf_counter() - t0)
                elif u < 0.82:
                    r = c.post("/v1/weights", content=bodies[20][0], headers=headers)
                    stats.record("weights", r.status_code, {200}, 0)
                elif u < 0.88:
                    r = c.get("/healthz")
                    stats.record("healthz", r.status_code, {200}, 0)
                elif u < 0.91:
                    r = c.get("/metrics")
                    stats.record("metrics", r.status_code, {200}, 0)
                else:
                    name, b = bad[int(rng.integers(len(bad)))]
                    r = c.post("/v1/rank", content=b, headers=headers)
                    stats.record(f"bad:{name}", r.status_code, {413, 422}, 0)
            except httpx.HTTPError as exc:
                with stats.lock:
                    stats.transport_errors[type(exc).__name__] += 1


def reload_loop(base: str, good: Path, corrupt: Path, stop_at: float, every_s: float, stats: Stats) -> None:
    import httpx

    auth = {"Authorization": f"Bearer {TOKEN}"}
    i = 0
    with httpx.Client(base_url=base, timeout=60) as c:
        while time.time() + every_s < stop_at:
            time.sleep(every_s)
            target, expected = (good, {200}) if i % 2 == 0 else (corrupt, {422})
            try:
                r = c.post("/admin/reload", json={"path": str(target)}, headers=auth)
                stats.record("reload_good" if i % 2 == 0 else "reload_corrupt", r.status_code, expected, 0)
            except httpx.HTTPError as exc:
                with stats.lock:
                    stats.transport_errors[type(exc).__name__] += 1
            i += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="Duration of the load, warm-up included.")
    ap.add_argument("--concurrency", type=int, default=4, help="Client threads.")
    ap.add_argument("--model", type=Path, help="Export directory (default: a tiny trained export).")
    ap.add_argument("--warmup-s", type=float, default=None,
                    help="Warm-up excluded from the growth bound (default 10%% of the run, 10..60 s).")
    ap.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period.")
    ap.add_argument("--max-growth-mb", type=float, default=50.0, help="Allowed RSS growth after warm-up.")
    ap.add_argument("--reload-every-s", type=float, default=30.0,
                    help="Period of /admin/reload calls (0 disables them).")
    ap.add_argument("--slow-clients", type=int, default=300,
                    help="Connections of the slow-client attack (0 disables it); above the server's "
                         f"--max-connections {MAX_CONNECTIONS} to exercise its eviction.")
    ap.add_argument("--read-timeout-s", type=float, default=5.0, help="The server's --read-timeout.")
    ap.add_argument("--json-out", type=Path, help="Also write the summary here.")
    args = ap.parse_args(argv)
    duration = args.minutes * 60
    warmup = args.warmup_s if args.warmup_s is not None else min(60.0, max(10.0, duration / 10))
    if warmup >= duration:
        ap.error(f"--warmup-s {warmup:g} must be shorter than the run ({duration:g} s)")

    import torch

    torch.set_num_threads(1)
    # SIGTERM (e.g. a CI timeout) unwinds through `finally`, so the server never outlives us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="serve_soak_"))
    export = tiny_export(tmp) if args.model is None else Path(shutil.copytree(args.model, tmp / "export"))
    good, corrupt = tmp / "reload_good", tmp / "reload_corrupt"
    shutil.copytree(export, good)
    shutil.copytree(export, corrupt)
    (corrupt / "model.onnx").write_bytes(b"corrupt onnx model")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "BLENDRANK_RELOAD_TOKEN": TOKEN}
    cmd = [sys.executable, "-m", "blendrank.cli.main", "serve", "--model", str(export), "--port", str(port),
           "--model-root", str(tmp), "--max-connections", str(MAX_CONNECTIONS),
           "--read-timeout", str(args.read_timeout_s), "--no-access-log"]  # stderr: a pipe read at the end
    server = start(cmd, port, env)
    stats = Stats()
    samples: list[tuple[float, float]] = []
    fds: list[int] = []
    slow: Counter[str] = Counter()
    try:
        t_start = time.time()
        stop_at = t_start + duration
        samples.append((0.0, rss_mb(server.pid)))

        def sampler() -> None:
            while time.time() < stop_at and server.poll() is None:
                time.sleep(args.sample_s)
                samples.append((time.time() - t_start, rss_mb(server.pid)))
                fds.append(open_fds(server.pid))

        with ThreadPoolExecutor(args.concurrency + 3) as ex:
            futures = [ex.submit(sampler)]
            if args.slow_clients > 0:
                futures.append(ex.submit(slow_client_loop, port, args.slow_clients, stop_at, slow))
            if args.reload_every_s > 0:
                futures.append(ex.submit(reload_loop, base, good, corrupt, stop_at, args.reload_every_s, stats))
            futures += [ex.submit(client_loop, base, export, stop_at, seed, stats)
                        for seed in range(args.concurrency)]
            for f in futures:
                f.result()
        alive = server.poll() is None
        samples.append((time.time() - t_start, rss_mb(server.pid) if alive else float("nan")))
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    post = t >= warmup
    rss_warm = float(rss[post][0]) if post.any() else float("nan")
    growth = float(rss[-1] - rss_warm)
    slope = float(np.polyfit(t[post] / 60, rss[post], 1)[0]) if post.sum() >= 3 else float("nan")
    total = sum(stats.by_kind.values())
    n5xx = sum(n for (_, st), n in stats.by_kind.items() if st >= 500)
    lat = np.array(stats.lat_ms) if stats.lat_ms else np.array([float("nan")])
    summary = {
        "minutes": args.minutes, "concurrency": args.concurrency, "warmup_s": warmup,
        "requests": total, "rps": round(total / duration, 1),
        "status_5xx": n5xx, "transport_errors": dict(stats.transport_errors),
        "unexpected_status": stats.unexpected, "server_alive": alive,
        "by_kind": {f"{k} {st}": n for (k, st), n in sorted(stats.by_kind.items())},
        "rank_p50_ms": round(float(np.percentile(lat, 50)), 2), "rank_p99_ms": round(float(np.percentile(lat, 99)), 2),
        "rss_mb": {"start": round(float(rss[0]), 1), "after_warmup": round(rss_warm, 1),
                   "end": round(float(rss[-1]), 1), "max": round(float(np.nanmax(rss)), 1)},
        "growth_after_warmup_mb": round(growth, 1), "slope_after_warmup_mb_per_min": round(slope, 3),
        "max_growth_mb": args.max_growth_mb, "rss_samples": len(samples),
        "rss_per_minute_mb": [round(float(rss[np.argmin(np.abs(t - 60 * m))]), 1)
                              for m in range(int(duration // 60) + 1)],
        "load_average": list(os.getloadavg()),
        "slow_clients": args.slow_clients, "slow_client_connections": dict(slow),
        "server_fds_max": max(fds, default=0), "server_fds_bound": MAX_CONNECTIONS + FD_SLACK,
    }
    problems = []
    if n5xx:
        problems.append(f"{n5xx} responses with a 5xx status")
    if stats.transport_errors:
        problems.append(f"transport errors {dict(stats.transport_errors)}")
    if stats.unexpected:
        problems.append(f"unexpected statuses, e.g. {stats.unexpected[:3]}")
    if not alive:
        problems.append("the server exited during the run")
    if max(fds, default=0) > MAX_CONNECTIONS + FD_SLACK:
        problems.append(f"the server had {max(fds)} open files (bound {MAX_CONNECTIONS + FD_SLACK})")
    if not growth <= args.max_growth_mb:
        problems.append(f"RSS grew {growth:.1f} MB after warm-up (bound {args.max_growth_mb:g} MB)")
    summary["ok"], summary["problems"] = not problems, problems
    text = json.dumps(summary, indent=1)
    print(text, flush=True)
    if args.json_out:
        args.json_out.write_text(text)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
