"""In-process serving speed on one core: ``Ranker.rank_batch`` (policy + list statistics + fusion
+ top-K) against bare fuse-and-top-K of the same shapes, and one request through ``Ranker.rank``.

    python benchmarks/serve_inprocess.py [--quick | --profile] [--model EXPORT_DIR]

Everything runs on one thread (torch and onnxruntime). The baselines get the same ``[B, L, K]``
inputs and per-request weights ``[B, K]`` and do only fusion and top-K, no policy or statistics:
``torch`` with the project's own ``fusion_features`` / ``fuse`` / ``top_k`` (what training and
evaluation run), and ``numpy`` as lean as we could write it (numpy log and matmul, torch.topk).
The three are timed in interleaved rounds (each round runs each once, in turn) so that on a shared
machine they see the same background load; figures are medians over rounds, ratios the median of
the per-round ratios. The load average is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serve_common import markdown, payload, tiny_export


def interleaved(fns: dict, min_seconds: float, rounds: int = 7) -> dict[str, np.ndarray]:
    """Seconds per call of each function, per round: every round times every function once, in
    turn, so that on a shared machine they see the same background load. Each timed loop is
    calibrated to about ``min_seconds / rounds / len(fns)``."""
    loops = {}
    for name, fn in fns.items():
        fn()
        n, t = 1, 0.0
        while t < min_seconds / rounds / len(fns):
            n *= 2
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            t = time.perf_counter() - t0
        loops[name] = n
    out = {name: np.empty(rounds) for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            n = loops[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            out[name][r] = (time.perf_counter() - t0) / n
    return out


def latency_us(fn, n: int) -> tuple[float, float]:
    """Median and p99 of single-call latencies in µs."""
    fn()
    ts = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        ts[i] = time.perf_counter() - t0
    return float(np.median(ts) * 1e6), float(np.percentile(ts, 99) * 1e6)


def contenders(rk, cat: np.ndarray, num: np.ndarray, inputs: np.ndarray, mask: np.ndarray) -> dict:
    """The ranker and the two bare fuse-and-top-K baselines on the same ``[B, L, K]`` inputs; the
    baselines get the weights the ranker computed."""
    import torch

    from blendrank.fusion.formulas import fuse, fusion_features, top_k

    spec = rk.spec
    w = rk.rank_batch(cat, num, inputs, mask, 10)[0]
    x_t, m_t, w_t = torch.from_numpy(inputs), torch.from_numpy(mask), torch.from_numpy(w)
    floor = np.float32(spec.floor)

    def torch_bare():
        f = fusion_features(x_t, spec.formula, spec.floor)
        return top_k(fuse(f, w_t), m_t, 10)

    def numpy_bare():
        s = np.matmul(np.log(inputs + floor), w[:, :, None])[..., 0]
        return torch.topk(torch.from_numpy(s), 10, dim=-1)

    return {"rank": lambda: rk.rank_batch(cat, num, inputs, mask, 10), "torch": torch_bare, "numpy": numpy_bare}


def profile(export: Path, n_cand: int = 200, n: int = 4000) -> dict[str, float]:
    """Median µs of each step of one request through ``Ranker.rank`` (columnar candidates), timed
    in sequence inside one loop so that each step sees the cache state of a real request: parse
    (validation), Feature Center encoding of the user, fusion features, list statistics, policy,
    fusion, top-K and the result objects. Mirrors ``Ranker.rank_parsed`` for one request."""
    import torch

    from blendrank.serve import ranker as ranker_module
    from blendrank.serve.ranker import Ranker, RankResult, list_stats_np

    torch.set_num_threads(1)
    rk = Ranker.load(export, threads=1)
    req = payload(export, n_cand, seed=1)
    names = ("parse", "encode user", "fusion features", "list statistics", "policy", "fusion", "top-K",
             "results", "total")
    ts = np.zeros((n, len(names)))
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        p = rk.parse(req)
        t1 = clock()
        cat, num = rk._encode_users([p.user])
        t2 = clock()
        feats = rk._features(p.values[None])
        t3 = clock()
        stats = list_stats_np(feats, None, rk.spec.stats_top)
        t4 = clock()
        w, fallback = rk.policy_weights(cat, num, stats)
        t5 = clock()
        scores = np.matmul(w[:, None, :], feats)[:, 0]
        t6 = clock()
        page = min(p.k, scores.shape[1])
        found = ranker_module._top_single(scores, page)
        if found is None:
            top, idx = torch.topk(torch.from_numpy(scores), page, dim=-1)
            found = idx.numpy(), top.numpy()
        idx, top = found
        t7 = clock()
        RankResult(item_ids=[p.item_ids[j] for j in idx[0].tolist()], scores=top[0].tolist(),
                   weights=dict(zip(rk.inputs, w[0].tolist())), fallback=fallback)
        t8 = clock()
        ts[i, :-1] = np.diff([t0, t1, t2, t3, t4, t5, t6, t7, t8])
        ts[i, -1] = t8 - t0
    return {k: float(v) for k, v in zip(names, np.median(ts[n // 10:], axis=0) / 1e3)}


def run(export: Path, batches: tuple[int, ...], lengths: tuple[int, ...], min_seconds: float) -> dict:
    import torch

    from blendrank.serve.ranker import Ranker

    torch.set_num_threads(1)
    rk = Ranker.load(export, threads=1)
    assert rk.model_ok, rk.fallback_reason
    rows = []
    for n_cand in lengths:
        for b in batches:
            reqs = [payload(export, n_cand, seed=s) for s in range(b)]
            cat, num, inputs, mask, _, _ = rk.encode(reqs)
            inputs = np.ascontiguousarray(inputs)  # [B, L, K] as a caller would hold it
            t = interleaved(contenders(rk, cat, num, inputs, mask), min_seconds)
            t_rank, t_torch, t_numpy = (float(np.median(t[m])) for m in ("rank", "torch", "numpy"))
            row = {"candidates": n_cand, "batch": b, "rank_batch_rps": b / t_rank,
                   "torch_bare_rps": b / t_torch, "numpy_bare_rps": b / t_numpy,
                   # ratios per round (same background load), then the median
                   "vs_torch": float(np.median(t["torch"] / t["rank"])),
                   "vs_numpy": float(np.median(t["numpy"] / t["rank"])), "load": os.getloadavg()[0]}
            rows.append(row)
            print(f"L={n_cand} B={b}: rank_batch {row['rank_batch_rps']:,.0f} req/s, bare torch "
                  f"{row['torch_bare_rps']:,.0f} ({row['vs_torch']:.0%}), bare numpy {row['numpy_bare_rps']:,.0f} "
                  f"({row['vs_numpy']:.0%}), load {row['load']:.2f}", flush=True)
    singles = []
    for n_cand in lengths:
        for layout in ("columnar", "rows"):
            req = payload(export, n_cand, seed=1, layout=layout)
            med, p99 = latency_us(lambda req=req: rk.rank([req]), 3000)
            singles.append({"candidates": n_cand, "layout": layout, "median_us": med, "p99_us": p99,
                            "load": os.getloadavg()[0]})
            print(f"single request L={n_cand} {layout}: median {med:.0f} µs, p99 {p99:.0f} µs", flush=True)
    return {"batched": rows, "single": singles}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="Export directory (default: train and export a small policy).")
    ap.add_argument("--quick", action="store_true", help="200 candidates, B=64 and 256, short loops.")
    ap.add_argument("--profile", action="store_true",
                    help="Only the step-by-step profile of one request at 200 candidates (~10 s).")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    export = args.model or tiny_export(Path(tempfile.mkdtemp(prefix="serve_inprocess_")))
    load0 = os.getloadavg()
    if args.profile:
        steps = profile(export)
        print(markdown([{"step": k, "us": v} for k, v in steps.items()], [("step", "step of one request"),
                                                                           ("us", "median µs")]))
        print(f"\nload average before {load0[0]:.2f}, after {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        if args.json_out:
            args.json_out.write_text(json.dumps({"profile_us": steps, "load_before": load0}, indent=2))
        return
    if args.quick:
        res = run(export, (64, 256), (200,), 1.0)
    else:
        res = run(export, (1, 64, 256), (50, 200, 500), 3.0)
    res.update({"cpu_count": os.cpu_count(), "load_before": load0, "load_after": os.getloadavg(),
                "k": len(json.loads((export / "manifest.json").read_text())["fusion_inputs"])})
    print()
    print(markdown(res["batched"], [("candidates", "L"), ("batch", "B"), ("rank_batch_rps", "rank_batch req/s"),
                                    ("torch_bare_rps", "bare torch fuse+top-K req/s"), ("vs_torch", "rank / torch"),
                                    ("numpy_bare_rps", "bare numpy fuse+top-K req/s"), ("vs_numpy", "rank / numpy"),
                                    ("load", "load avg")]))
    print()
    print(markdown(res["single"], [("candidates", "L"), ("layout", "candidates as"), ("median_us", "Ranker.rank median µs"),
                                   ("p99_us", "p99 µs"), ("load", "load avg")]))
    print(f"\nK = {res['k']} fusion inputs, one thread; load average before {load0[0]:.2f}, "
          f"after {res['load_after'][0]:.2f} on {os.cpu_count()} CPUs")
    if args.json_out:
        args.json_out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
