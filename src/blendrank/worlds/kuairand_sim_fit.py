"""Fitting the models of the ``kuairand-sim`` world to the real KuaiRand log.

* the prerank (:mod:`blendrank.prerank`, two-tower on the real clicks) and its recall;
* the *logger* MTL fitted on the real log (the previous production model), whose predictions the
  Dirichlet-exploring production policy fused when the world logged its sessions;
* the per-head logit offsets that calibrate the teacher to the log's per-impression rates;
* the deployed *student* MTL (features only, no ids) trained on the sessions the world logged.

Each is cached in the world's cache directory under a digest of the parts of the config it
depends on (see docs/worlds.md). The functions take the world
(:class:`~blendrank.worlds.kuairand_sim.KuaiRandSimWorld`) for its tables, pool, users and cache.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from blendrank.data.kuairand import SPLITS
from blendrank.jsonio import read_json, write_json
from blendrank.mtl.fit import fit_mtl
from blendrank.mtl.predictor import MTLPredictor
from blendrank.prerank import Prerank, recall_at_n
from blendrank.prerank import fit_prerank as fit_two_tower
from blendrank.worlds.kuairand_sim_config import FUSION_INPUTS, STREAM_CALIBRATION
from blendrank.worlds.kuairand_sim_sessions import _sigmoid, logged_sessions, shown_rates
from blendrank.worlds.kuairand_sim_teacher import POST_CLICK, WATCH, schema_yaml

if TYPE_CHECKING:
    from blendrank.worlds.kuairand_sim import KuaiRandSimWorld


def _solve_offset(logit: np.ndarray, weight: np.ndarray | None, target: float) -> float:
    """The δ with mean(weight · sigmoid(logit + δ)) = target (bisection; ``weight`` None = 1).
    ``[R]`` arrays; the mean is monotone in δ, so the root is unique when reachable."""
    w = np.ones(len(logit)) if weight is None else weight
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if (w * _sigmoid(logit + mid)).mean() < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def log_utility_moments(log: pa.Table, w: dict[str, float]) -> tuple[float, float]:
    """Mean and SD of the per-impression utility (weights ``w``) over the real log's rows."""
    watch = log[WATCH].to_numpy() / 1000.0
    cols = {"like": "is_like", "follow": "is_follow", "comment": "is_comment", "forward": "is_forward",
            "profile_enter": "is_profile_enter", "hate": "is_hate"}
    u = w["watch"] * np.log1p(watch) / np.log(61.0) + w["no_click"] * (1 - log["is_click"].to_numpy())
    for k, c in cols.items():
        u = u + w.get(k, 0.0) * log[c].to_numpy()
    return float(u.mean()), float(u.std())


def log_rates(log: pa.Table, tab: int | None) -> dict[str, float]:
    """The real log's per-impression rate of every feedback (rows of feed tab ``tab``; None: all)."""
    sel = np.ones(log.num_rows, dtype=bool) if tab is None else log["tab"].to_numpy() == tab
    cols = {"click": "is_click", "long_view": "long_view", "like": "is_like", "follow": "is_follow",
            "comment": "is_comment", "forward": "is_forward", "profile_enter": "is_profile_enter", "hate": "is_hate"}
    out = {k: float(log[c].to_numpy()[sel].mean()) for k, c in cols.items()}
    out["watch_s"] = float(log[WATCH].to_numpy()[sel].mean() / 1000.0)
    return out


def fit_offsets(world: KuaiRandSimWorld) -> tuple[dict[str, float], dict[str, Any]]:
    """Per-head logit offsets (and the calibration report) such that logging-policy sessions
    reproduce the log's per-impression rates: click and hate directly, each post-click rate
    through P(click)·P(k | click). Fitted on the shown videos of ``calibration.sessions``
    sessions, re-simulated ``calibration.rounds`` times; cached by the world config.
    ``world.offsets`` holds each round's offsets while fitting (the sessions are scored with
    them)."""
    cfg, cal = world.config, world.config.calibration
    path = world.cache / f"kuairand-sim-offsets-{cfg.digest('student', 'value', 'log_sessions')}.json"
    if path.is_file():
        stored = read_json(path)
        return stored["offsets"], stored["calibration"]
    before, users, items = shown_rates(world, cal.sessions, STREAM_CALIBRATION)
    rounds = []
    for _ in range(cal.rounds):
        pairs = world.tables.pair_table(world.user_ids[users], world.pool[items])
        lg = world.teacher.logits(pairs, cfg.calibration.platt)
        click = _solve_offset(lg["click"], None, world.log_rates["click"])
        p_click = _sigmoid(lg["click"] + click)
        world.offsets = {"click": click, "hate": _solve_offset(lg["hate"], None, world.log_rates["hate"])}
        for k in POST_CLICK:
            if k != "long_view":  # long_view follows the 18-s rule on the watch time, not its head
                world.offsets[k] = _solve_offset(lg[k], p_click, world.log_rates[k])
        world.truth_cache.clear()
        rates, users, items = shown_rates(world, cal.sessions, STREAM_CALIBRATION)
        rounds.append(rates)
    calibration = {"log": world.log_rates, "before": before, "rounds": rounds}
    # Start the logged sessions from empty caches, as a world that loads the offsets does: the
    # networks' outputs may differ in the last bit with the batch a pair was scored in.
    world.truth_cache.clear()
    world.pred_cache["logger"].clear()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"offsets": world.offsets, "calibration": calibration})
    return world.offsets, calibration


def fit_prerank(world: KuaiRandSimWorld, uid: np.ndarray, vid: np.ndarray, date: np.ndarray) -> Prerank:
    """The two-tower prerank on the real log's training days (``uid`` / ``vid`` / ``date``: its
    ``[R]`` columns) of the world's users and pool; cached by the world config."""
    lo, hi = SPLITS["train"]
    sel = (date >= lo) & (date <= hi) & np.isin(uid, world.user_ids) & np.isin(vid, world.pool)
    pool_index = {int(v): i for i, v in enumerate(world.pool)}
    items = np.array([pool_index[int(v)] for v in vid[sel]], dtype=np.int64)
    users = np.searchsorted(world.user_ids, uid[sel])
    label = world.tables.log["is_click"].to_numpy()[sel]
    digest = world.config.digest('teacher', 'student', 'logger', 'session', 'value', 'log_sessions')
    path = world.cache / f"kuairand-sim-prerank-{digest}.npz"
    if path.is_file():
        return Prerank.load(path)
    pr = fit_two_tower(users, items, label, len(world.user_ids), len(world.pool), world.config.prerank)
    path.parent.mkdir(parents=True, exist_ok=True)
    pr.save(path)
    return pr


def prerank_recall(world: KuaiRandSimWorld, uid: np.ndarray, vid: np.ndarray,
                   date: np.ndarray) -> dict[str, float]:
    """Recall@N of the test days' clicked pool videos: two-tower (with fallback) vs popularity."""
    lo, hi = SPLITS["test"]
    sel = ((date >= lo) & (date <= hi) & np.isin(uid, world.user_ids) & np.isin(vid, world.pool)
           & (world.tables.log["is_click"].to_numpy() > 0))
    pool_index = {int(v): i for i, v in enumerate(world.pool)}
    items = np.array([pool_index[int(v)] for v in vid[sel]], dtype=np.int64)
    users = np.searchsorted(world.user_ids, uid[sel])
    N = world.config.candidates
    return {"n": N, "pairs": int(sel.sum()), "two_tower": recall_at_n(world.prerank, users, items, N),
            "popularity": recall_at_n(Prerank(popularity=world.prerank.popularity), users, items, N),
            "random": N / len(world.pool), "cold_share": float(world.prerank.is_cold(users).mean())}


def fit_logger(world: KuaiRandSimWorld) -> MTLPredictor:
    """The logging policy's predictor: a small MTL fitted on the real log's training days."""
    cfg = world.config
    key = cfg.logger.model_dump_json() + str(cfg.logger_max_rows)
    path = world.cache / f"kuairand-sim-logger-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (path / "meta.json").is_file():
        return MTLPredictor.load(path)
    imp = world.tables.impressions()
    d = imp["date"]
    lo, hi = SPLITS["train"]
    train = imp.filter(pc.and_(pc.greater_equal(d, lo), pc.less_equal(d, hi)))
    lo, hi = SPLITS["valid"]
    valid = imp.filter(pc.and_(pc.greater_equal(d, lo), pc.less_equal(d, hi)))
    if cfg.logger_max_rows is not None and train.num_rows > cfg.logger_max_rows:
        pick = np.random.default_rng([cfg.seed, 5]).choice(train.num_rows, cfg.logger_max_rows, replace=False)
        train = train.take(pa.array(np.sort(pick)))
    keep = [c for c in train.column_names if c.startswith("f_") or c in {f"label_{o}" for o in FUSION_INPUTS}]
    path.mkdir(parents=True, exist_ok=True)
    (path.parent / "kuairand-sim-features.yaml").write_text(schema_yaml())
    world.log(f"fitting the logging policy's MTL on {train.num_rows:,} real impressions")
    model = fit_mtl(train.select(keep), valid.select(keep), cfg.logger,
                    features_file=path.parent / "kuairand-sim-features.yaml", progress=False)
    model.save(path)
    return model


def fit_student(world: KuaiRandSimWorld) -> tuple[MTLPredictor, pa.Table, pa.Table]:
    """The deployed student, trained on sessions this world logged (logger predictions fused),
    with those logged sessions and the shown rows of its held-out sessions."""
    cfg = world.config
    path = world.cache / f"kuairand-sim-student-{cfg.digest()}"
    logs = logged_sessions(world, cfg.log_sessions)
    ids = np.unique(logs["session_id"].to_numpy())
    cut = ids[int(0.85 * len(ids))]
    held_out = pc.greater_equal(logs["session_id"], cut)
    valid_rows = logs.filter(pc.and_(held_out, logs["position"].is_valid()))
    if (path / "meta.json").is_file():
        return MTLPredictor.load(path), logs, valid_rows
    keep = [c for c in logs.column_names if c.startswith(("f_", "label_")) or c == "position"]
    train = logs.filter(pc.less(logs["session_id"], cut)).select(keep)
    valid = logs.filter(pc.greater_equal(logs["session_id"], cut)).select(keep)
    train = train.drop_columns([f"label_{k}" for k in ("hate", WATCH)])
    valid = valid.drop_columns([f"label_{k}" for k in ("hate", WATCH)])
    schema = world.cache / "kuairand-sim-features.yaml"
    schema.write_text(schema_yaml())
    world.log(f"fitting the student MTL on {train.num_rows:,} logged rows")
    model = fit_mtl(train, valid, cfg.student, features_file=schema, progress=False)
    model.save(path)
    return model, logs, valid_rows
