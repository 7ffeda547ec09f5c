"""Shared pieces of the serving benchmarks: a small exported policy and request payloads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def tiny_export(out: Path) -> Path:
    """Train a small GRADE policy on a synthetic log shaped like the marketplace demo's (three
    categorical and three numeric user/context features, click/order predictions and a price,
    so K = 3 fusion inputs) and export it to ``out/export``."""
    import pyarrow as pa

    from blendrank.algos.grade.config import GRADEConfig
    from blendrank.algos.grade.trainer import fit_grade
    from blendrank.serve.export import export_policy

    rng = np.random.default_rng(0)
    n, L = 400, 8
    rep = lambda a: np.repeat(a, L)
    table = pa.table({
        "request_id": rep(np.arange(n)), "user_id": rep(np.arange(n)), "ts": rep(np.arange(n)),
        "item_id": np.tile(np.arange(L), n), "position": np.tile(np.arange(1, L + 1, dtype=np.int32), n),
        "label_click": (rng.random(n * L) < 0.2).astype(np.int8), "label_order": (rng.random(n * L) < 0.05).astype(np.int8),
        "pred_click": rng.uniform(0.01, 0.5, n * L).astype(np.float32),
        "pred_order": rng.uniform(0.001, 0.05, n * L).astype(np.float32),
        "price": rng.lognormal(3, 1, n * L).astype(np.float32),
        "f_user_segment": rep(rng.integers(5, size=n)), "f_user_device": rep(rng.integers(3, size=n)),
        "f_ctx_query": rep(rng.integers(20, size=n)),
        "f_user_activity": rep(rng.normal(size=n)).astype(np.float32),
        "f_user_avg_price": rep(rng.lognormal(3, 1, size=n)).astype(np.float32),
        "f_ctx_hour": rep(rng.integers(24, size=n)).astype(np.float32),
    })
    cfg = GRADEConfig.model_validate({"stage1": {"epochs": 1}, "stage2": {"steps": 2, "batch_size": 128},
                                      "reward": {"k": 4, "post_objective_weights": {"click": 1.0, "order": 1.0}}})
    fit_grade(table, cfg).save(out / "policy")
    export_policy(out / "policy", out / "export")
    return out / "export"


def payload(export: Path, n: int, seed: int = 0, layout: str = "columnar") -> dict:
    """A valid request with ``n`` candidates: columns per field (the fast path) or candidate objects."""
    m = json.loads((export / "manifest.json").read_text())
    rng = np.random.default_rng(seed)
    cols = {"item_id": list(range(n)),
            **{f"pred_{o}": rng.uniform(0.001, 0.5, n).round(6).tolist() for o in m["objectives"]}}
    if m["fusion"]["use_price"]:
        cols["price"] = rng.lognormal(3, 1, n).round(2).tolist()
    center = json.loads((export / "feature_center.json").read_text())["content"]
    user = {f: (center["categorical"][f]["vocab"] or [None])[int(rng.integers(len(center["categorical"][f]["vocab"]) or 1))]
            for f in m["categorical"]}
    user.update({f: round(float(center["numeric"][f]["mean"] + center["numeric"][f]["std"] * rng.normal()), 3)
                 for f in m["numeric"]})
    if layout == "rows":
        return {"user": user, "candidates": [dict(zip(cols, v)) for v in zip(*cols.values())], "k": 10}
    return {"user": user, "candidates": cols, "k": 10}


def markdown(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with (key, header) columns; floats shown with 3 significant digits."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
        return str(v)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---:" for _ in columns) + "|"
    return "\n".join([head, sep] + ["| " + " | ".join(cell(r.get(k, "")) for k, _ in columns) + " |" for r in rows])
