"""The ground-truth "teacher" of the kuairand-sim world: an MMoE with user and video id embeddings
fitted on the full vendored KuaiRand-Pure log (train days, early-stopped on the validation days),
plus a watch-time law and per-head Platt scaling fitted on the validation days. See
``docs/worlds.md``.

The teacher is *stateless* in (user, video): no hour or tab context, so its outputs can be cached
per pair. It sees only the basic user / video features (no whole-month per-video statistics,
which leak the test days) and the ids.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import yaml
from pydantic import Field

from blendrank.config import BaseConfig
from blendrank.data.kuairand import (
    BINARY_LABELS,
    FEATURES,
    SPLITS,
    _finish_feature,
    _lookup,
    load_vendored,
)
from blendrank.jsonio import read_json, write_json
from blendrank.metrics import auc, gauc
from blendrank.mtl.config import MTLConfig
from blendrank.mtl.fit import fit_mtl
from blendrank.mtl.predictor import MTLPredictor

#: Feedbacks modelled by the teacher (all 0/1) and the ESMM parent of the post-click ones.
TEACHER_BINARY: tuple[str, ...] = tuple(BINARY_LABELS)
POST_CLICK: tuple[str, ...] = ("long_view", "like", "follow", "comment", "forward", "profile_enter")
#: User and video features the teacher and the student see (the log's hour / tab context is not
#: used: the world is stateless in context).
SIM_FEATURES = {name: f for name, f in FEATURES.items() if f.source != "log"}
WATCH = "play_time_ms"
TEACHER_DIR = "teacher"


def default_cache_dir() -> Path:
    """``$BLENDRANK_CACHE`` or ``~/.cache/blendrank``: where the fitted teacher is kept."""
    root = os.environ.get("BLENDRANK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "blendrank")
    return Path(root)


def _teacher_mtl() -> MTLConfig:
    return MTLConfig(
        model="mmoe", objectives=[*TEACHER_BINARY, WATCH], regression=[WATCH],
        esmm={k: "click" for k in POST_CLICK}, id_features=["user_id", "item_id"],
        embedding_dim=16, expert_dims=[128, 64], n_experts=4, tower_dims=[64], oov_dropout=0.1,
        min_count=3, epochs=8, patience=2, batch_size=1024, lr=2e-3, wide_lr=0.02, position_bias_tower=False,
        threads=2,
    )


class TeacherConfig(BaseConfig):
    """How the teacher is fitted (changing any field refits it; fits are cached by its hash)."""

    mtl: MTLConfig = Field(default_factory=_teacher_mtl, description="The teacher network (MMoE with id embeddings).")
    max_train_rows: int | None = Field(None, ge=1000, description="Subsample the training (and validation) days "
                                       "to at most this many impressions (tests); null uses all of them.")
    seed: int = Field(0, description="Seed of the training-row subsample.")

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


class KuaiRandTables:
    """The vendored raw tables with id → row lookups for building feature columns of any pair."""

    def __init__(self) -> None:
        raw = load_vendored()
        self.log, self.users, self.videos = raw["log"], raw["users"], raw["videos"]
        self.user_ids = self.users["user_id"].to_numpy().astype(np.int64)
        self.video_ids = self.videos["video_id"].to_numpy().astype(np.int64)
        self.videos = self.videos.append_column(
            "first_tag", pc.list_element(pc.split_pattern(self.videos["tag"].fill_null(""), ","), 0))

    def features(self, user_ids: np.ndarray, video_ids: np.ndarray) -> dict[str, pa.Array]:
        """``f_*`` columns (the kuairand conversion's fills) for aligned ``user_ids, video_ids``."""
        src = {"user": self.users.take(_lookup(np.asarray(user_ids), self.user_ids)),
               "video": self.videos.take(_lookup(np.asarray(video_ids), self.video_ids))}
        return {name: _finish_feature(src[f.source][f.column].combine_chunks(), f.kind)[0] for name, f in SIM_FEATURES.items()}

    def pair_table(self, user_ids: np.ndarray, video_ids: np.ndarray) -> pa.Table:
        """Contract-like rows (``user_id``, ``item_id``, ``f_*``) for the teacher / student."""
        cols = {"user_id": pa.array(np.asarray(user_ids, dtype=np.int64)), "item_id": pa.array(np.asarray(video_ids, dtype=np.int64))}
        return pa.table({**cols, **self.features(user_ids, video_ids)})

    def impressions(self) -> pa.Table:
        """Every logged impression once per (user, video, time) with labels, date and features."""
        log = self.log
        uid, vid, t = (log[c].to_numpy().astype(np.int64) for c in ("user_id", "video_id", "time_ms"))
        _, first = np.unique(np.stack([uid, vid, t], 1), axis=0, return_index=True)
        rows = np.sort(first)
        table = self.pair_table(uid[rows], vid[rows])
        table = table.append_column("ts", pa.array(t[rows])).append_column("date", pa.array(log["date"].to_numpy()[rows].astype(np.int64)))
        for k, c in BINARY_LABELS.items():
            table = table.append_column(f"label_{k}", pa.array(log[c].to_numpy()[rows].astype(np.int8)))
        return table.append_column(f"label_{WATCH}", pa.array(log[WATCH].to_numpy()[rows].astype(np.float64)))


def schema_yaml() -> str:
    """Declared FeatureSchema of :data:`SIM_FEATURES` (the ids are added as id_features)."""
    specs = [{"name": n, "kind": f.kind, "role": f.role, **({"transform": f.transform} if f.kind == "numeric" else {})}
             for n, f in SIM_FEATURES.items()]
    return yaml.safe_dump({"features": specs}, sort_keys=False)


def _split(table: pa.Table, name: str) -> pa.Table:
    lo, hi = SPLITS[name]
    d = table["date"]
    return table.filter(pc.and_(pc.greater_equal(d, lo), pc.less_equal(d, hi)))


@dataclass
class WatchLaw:
    """log1p(watch seconds) ~ N(a + b·m, sd²) given click (``a1, b1, sd1``) or not (``a0, b0, sd0``),
    where m is the teacher's regression output (its log1p play-time estimate, in log1p ms)."""

    a1: float
    b1: float
    sd1: float
    a0: float
    b0: float
    sd0: float

    @classmethod
    def fit(cls, m: np.ndarray, watch_s: np.ndarray, click: np.ndarray) -> WatchLaw:
        out = []
        for sel in (click > 0, click == 0):
            x, y = m[sel], np.log1p(watch_s[sel])
            b, a = np.polyfit(x, y, 1)
            out += [float(a), float(b), float(np.std(y - (a + b * x)))]
        return cls(*out[:3], *out[3:])

    def mean_log(self, m: np.ndarray, clicked: bool) -> np.ndarray:
        return (self.a1 + self.b1 * m) if clicked else (self.a0 + self.b0 * m)


def fit_platt(logit: np.ndarray, y: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """Platt scaling: ``(a, b)`` minimising the log loss of ``sigmoid(a·logit + b)`` against
    ``y`` (``[R]`` each), by Newton's method on the two parameters (a tiny ridge keeps it
    defined when a head is constant)."""
    x = np.stack([np.asarray(logit, dtype=np.float64), np.ones(len(logit))], 1)
    y = np.asarray(y, dtype=np.float64)
    w = np.array([1.0, 0.0])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) + 1e-6 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return float(w[0]), float(w[1])


#: Teacher heads with a logit (in :meth:`Teacher.logits` order): click, the conditional
#: post-click rates, hate.
HEADS: tuple[str, ...] = ("click", *POST_CLICK, "hate")


@dataclass
class Teacher:
    """The fitted teacher: network, watch law, held-out metrics and per-head Platt scaling
    (``platt[head] = (a, b)``, applied as ``a·logit + b``; empty = identity)."""

    predictor: MTLPredictor
    watch: WatchLaw
    metrics: dict[str, Any]
    platt: dict[str, tuple[float, float]] = field(default_factory=dict)

    def logits(self, table: pa.Table, calibrated: bool = True) -> dict[str, np.ndarray]:
        """Per row: the logit of ``click``, of each post-click rate *given a click*, of ``hate``
        (Platt-scaled unless ``calibrated=False``), and ``watch_m``, the regression output
        (log1p ms) that drives the watch law."""
        p = self.predictor
        raw = p.raw(table).numpy().astype(np.float64)
        lay = p.layout
        res = {k: raw[:, lay.index(k)] for k in HEADS}
        if calibrated:
            for k, (a, b) in self.platt.items():
                res[k] = a * res[k] + b
        mean, std = p.target_moments[WATCH]
        res["watch_m"] = raw[:, lay.index(WATCH)] * std + mean
        return res

    def outputs(self, table: pa.Table, offsets: dict[str, float] | None = None, calibrated: bool = True) -> dict[str, np.ndarray]:
        """Per row: ``click`` P(click); ``<post-click>`` P(feedback | click); ``hate`` P(hate);
        ``watch_m`` (see :meth:`logits`). ``offsets`` adds a logit shift per head (the world's
        fit to the log's rates)."""
        lg = self.logits(table, calibrated)
        res = {k: 1.0 / (1.0 + np.exp(-(lg[k] + (offsets or {}).get(k, 0.0)))) for k in HEADS}
        res["watch_m"] = lg["watch_m"]
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in res.items()}


def fit_teacher_platt(teacher: Teacher, valid: pa.Table) -> dict[str, tuple[float, float]]:
    """Per-head Platt scaling on the validation days: click and hate on every impression, the
    post-click heads (conditional rates) on the clicked ones."""
    lg = teacher.logits(valid, calibrated=False)
    clicked = valid["label_click"].to_numpy() > 0
    out = {}
    for k in HEADS:
        y = valid[f"label_{k}"].to_numpy()
        sel = slice(None) if k in ("click", "hate") else clicked
        out[k] = fit_platt(lg[k][sel], y[sel])
    return out


def calibration_deciles(pred: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Reliability table: rows sorted by ``pred`` cut into ``bins`` equal-count groups; per
    group the mean prediction, the observed rate and the row count."""
    order = np.argsort(pred, kind="stable")
    return [{"pred": float(pred[g].mean()), "observed": float(y[g].mean()), "rows": len(g)}
            for g in np.array_split(order, bins)]


def _held_out_metrics(teacher_pred: MTLPredictor, table: pa.Table, base_rates: dict[str, float]) -> dict[str, Any]:
    """AUC, GAUC over user-days and log loss (with the training base rate's log loss beside it)
    per feedback over the test days' impressions."""
    preds = teacher_pred.predict(table)
    rid = table["user_id"].to_numpy() * 100_000_000 + table["date"].to_numpy()
    order = np.argsort(rid, kind="stable")
    _, starts, counts = np.unique(rid[order], return_index=True, return_counts=True)
    L = int(counts.max())
    slot = np.arange(len(order)) - np.repeat(starts, counts)
    row = np.repeat(np.arange(len(starts)), counts)
    out: dict[str, Any] = {"test_impressions": table.num_rows}
    for k in TEACHER_BINARY:
        y = table[f"label_{k}"].to_numpy()
        s = torch.from_numpy(preds[k].astype(np.float32))
        out[f"auc_{k}"] = auc(s[None, :], torch.from_numpy(y[None, :].astype(np.float32)), None)
        S = torch.zeros((len(starts), L))
        Y = torch.zeros((len(starts), L))
        M = torch.zeros((len(starts), L), dtype=torch.bool)
        S[row, slot] = s[order]
        Y[row, slot] = torch.from_numpy(y[order].astype(np.float32))
        M[row, slot] = True
        g = gauc(S, Y, M)
        out[f"gauc_{k}"] = float(g.mean)
        out[f"gauc_requests_{k}"] = g.n_used
        out[f"rate_{k}"] = float(y.mean())
        p = np.clip(preds[k].astype(np.float64), 1e-7, 1 - 1e-7)
        b = min(max(base_rates[k], 1e-7), 1 - 1e-7)
        out[f"logloss_{k}"] = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
        out[f"base_logloss_{k}"] = float(-(y * np.log(b) + (1 - y) * np.log(1 - b)).mean())
        out[f"mean_pred_{k}"] = float(preds[k].mean())
    return out


def fit_teacher(config: TeacherConfig | None = None, cache_dir: str | Path | None = None, log=print,
                tables: KuaiRandTables | None = None) -> Teacher:
    """The teacher for ``config``: loaded from ``cache_dir/teacher-<hash>`` when fitted before,
    otherwise fitted on the vendored log (a few minutes on 2 cores) and saved there."""
    cfg = config or TeacherConfig()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    model_dir = root / f"{TEACHER_DIR}-{cfg.digest()}"
    if (model_dir / "teacher.json").is_file():
        meta = read_json(model_dir / "teacher.json")
        teacher = Teacher(MTLPredictor.load(model_dir / "mtl"), WatchLaw(**meta["watch"]), meta["metrics"])
        if "platt" not in meta:  # fitted before Platt scaling existed: add it (seconds), keep the fit
            train, valid, _ = _fit_rows(cfg, tables or KuaiRandTables())
            meta["platt"] = fit_teacher_platt(teacher, valid)
            write_json(model_dir / "teacher.json", meta)
        teacher.platt = {k: tuple(v) for k, v in meta["platt"].items()}
        return teacher
    train, valid, test = _fit_rows(cfg, tables or KuaiRandTables())
    model_dir.mkdir(parents=True, exist_ok=True)
    schema = model_dir / "features.yaml"
    schema.write_text(schema_yaml())
    log(f"fitting the kuairand-sim teacher on {train.num_rows:,} impressions (valid {valid.num_rows:,})")
    pred = fit_mtl(train, valid, cfg.mtl, features_file=schema, progress=False)
    m_valid = Teacher(pred, WatchLaw(0, 0, 0, 0, 0, 0), {}).outputs(valid)["watch_m"]
    watch = WatchLaw.fit(m_valid.astype(np.float64), valid[f"label_{WATCH}"].to_numpy() / 1000.0, valid["label_click"].to_numpy())
    metrics = _held_out_metrics(pred, test, {k: float(train[f"label_{k}"].to_numpy().mean()) for k in TEACHER_BINARY})
    metrics["train_impressions"] = train.num_rows
    metrics["epochs"] = len(pred.history)
    teacher = Teacher(pred, watch, metrics)
    teacher.platt = fit_teacher_platt(teacher, valid)
    pred.save(model_dir / "mtl")
    write_json(model_dir / "teacher.json", {"config": cfg.model_dump(mode="json"), "watch": watch.__dict__,
                                            "metrics": metrics, "platt": teacher.platt})
    return teacher


def _fit_rows(cfg: TeacherConfig, tables: KuaiRandTables) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Train / validation / test days' impressions (train and validation subsampled per ``cfg``)."""
    imp = tables.impressions()
    train, valid, test = (_split(imp, s) for s in ("train", "valid", "test"))
    if cfg.max_train_rows is not None and train.num_rows > cfg.max_train_rows:
        pick = np.sort(np.random.default_rng(cfg.seed).choice(train.num_rows, cfg.max_train_rows, replace=False))
        train = train.take(pa.array(pick))
        if valid.num_rows > cfg.max_train_rows:
            pick = np.sort(np.random.default_rng(cfg.seed + 1).choice(valid.num_rows, cfg.max_train_rows, replace=False))
            valid = valid.take(pa.array(pick))
    return train, valid, test

