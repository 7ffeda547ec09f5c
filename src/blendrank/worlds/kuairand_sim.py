"""The ``kuairand-sim`` world: a semi-synthetic short-video feed fitted to the real KuaiRand log.

* ground truth = the teacher (:mod:`blendrank.worlds.kuairand_sim_teacher`), an MMoE with user and
  video id embeddings fitted on the vendored log, plus a watch-time law;
* candidates = the prerank (:mod:`blendrank.prerank`, two-tower on the real clicks) picking ``N``
  videos per request from the real pool (videos with enough logged rows), minus those already
  shown in the session, with Gumbel noise;
* a page of ``K`` videos is consumed in order (single-column feed); after every video the user's
  satisfaction is updated from what they did and they may leave (mid-page);
* the deployed predictor is a smaller *student* MTL (features only, no ids) trained on sessions
  the world logged under the Dirichlet-exploring production policy; that policy itself fused the
  predictions of a *logger* MTL fitted on the real log (the previous production model).

This module holds the world (pool, users, the per-user score caches, the ground truth and the
page scoring); its config is :mod:`~blendrank.worlds.kuairand_sim_config`, the fitting of its
models :mod:`~blendrank.worlds.kuairand_sim_fit` and the session simulation and logging
:mod:`~blendrank.worlds.kuairand_sim_sessions`. Equations and defaults are in
``docs/worlds.md``. Shapes: ``B`` requests (active sessions), ``N`` candidates, ``P`` page size,
``K`` fusion inputs, ``I`` pool videos, ``T`` teacher outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from blendrank.errors import ConfigError
from blendrank.fusion.formulas import fuse, fusion_features, top_k
from blendrank.jsonio import write_json
from blendrank.metrics import auc
from blendrank.mtl.predictor import MTLPredictor
from blendrank.objective import Objective
from blendrank.worlds.kuairand_sim_config import (
    FEEDBACKS,
    FUSION_INPUTS,
    TRUTH,
    KuaiRandSimConfig,
    SessionSpec,
)
from blendrank.worlds.kuairand_sim_fit import (
    fit_logger,
    fit_offsets,
    fit_prerank,
    fit_student,
    log_rates,
    log_utility_moments,
    prerank_recall,
)
from blendrank.worlds.kuairand_sim_sessions import (
    logged_sessions,
    logging_policy,
    request_table,
    run_sessions,
    session_users,
    shown_rates,
)
from blendrank.worlds.kuairand_sim_teacher import (
    POST_CLICK,
    WATCH,
    KuaiRandTables,
    Teacher,
    default_cache_dir,
    fit_teacher,
)


class KuaiRandSimWorld:
    """Pool, users, teacher, prerank, logger and student of the kuairand-sim world."""

    def __init__(self, config: KuaiRandSimConfig, log: Callable[[str], None] = print):
        self.config = cfg = config
        self.log = log
        self.cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        self.tables = tables = KuaiRandTables()
        self.teacher: Teacher = fit_teacher(cfg.teacher, self.cache, log, tables)
        raw = tables.log
        uid, vid = raw["user_id"].to_numpy().astype(np.int64), raw["video_id"].to_numpy().astype(np.int64)
        date = raw["date"].to_numpy()
        # Pool: the most-logged videos (ties by id); users: the logged users (a seeded sample).
        v, vc = np.unique(vid, return_counts=True)
        order = np.lexsort((v, -vc))
        v, vc = v[order], vc[order]
        keep = vc >= cfg.pool_min_rows
        self.pool = v[keep][: cfg.max_pool]
        if len(self.pool) < cfg.candidates + cfg.page_size:
            raise ConfigError(f"kuairand-sim: pool of {len(self.pool)} videos is too small for candidates={cfg.candidates}")
        rng = np.random.default_rng([cfg.seed, 0])
        user_days = np.unique(np.stack([uid, date], 1), axis=0)[:, 0]
        all_users = np.unique(uid)
        if cfg.max_users is not None and cfg.max_users < len(all_users):
            all_users = np.sort(rng.choice(all_users, cfg.max_users, replace=False))
        self.user_ids = all_users
        # Real activity: impressions per active day (log, shrunk towards the mean for few days).
        n_imp = np.bincount(np.searchsorted(all_users, uid[np.isin(uid, all_users)]), minlength=len(all_users))
        n_days = np.bincount(np.searchsorted(all_users, user_days[np.isin(user_days, all_users)]), minlength=len(all_users))
        rate = np.log(n_imp / np.maximum(n_days, 1))
        self.user_days = n_days  # [U] real active days (the exit calibration weights users by them)
        self.activity_z = (rate - rate.mean()) / max(rate.std(), 1e-9) * n_days / (n_days + 2.0)
        self.exit_noise = rng.normal(size=len(all_users))  # ε_u, standard normal
        self.user_theta = self.exit_logits(cfg.session)
        dur = tables.videos["video_duration"].to_numpy(zero_copy_only=False).astype(float)
        dur_by_id = dict(zip(tables.video_ids.tolist(), np.nan_to_num(dur, nan=60_000.0).tolist()))
        self.item_duration_s = np.array([dur_by_id.get(int(i), 60_000.0) for i in self.pool]) / 1000.0
        # Utility normalisation under real production (the log): z(u) = (u − μ) / σ.
        self.utility_mean, self.utility_sd = log_utility_moments(raw, cfg.session.utility)
        self.prerank = fit_prerank(self, uid, vid, date)
        self.prerank_recall = prerank_recall(self, uid, vid, date)
        # Per-user score caches (see _rows): teacher outputs, and each predictor's predictions.
        self.truth_cache: dict[int, np.ndarray] = {}
        self.pred_cache: dict[str, dict[int, np.ndarray]] = {"logger": {}, "student": {}}
        self.models: dict[str, MTLPredictor] = {"logger": fit_logger(self)}
        self.log_rates = log_rates(raw, cfg.calibration.tab)
        self.offsets: dict[str, float] = {}
        self.calibration: dict[str, Any] = {}
        if cfg.calibration.match_log_rates:
            self.offsets, self.calibration = fit_offsets(self)
        self.models["student"], self.student_logs, self.student_valid = fit_student(self)
        self.pred_cache["logger"].clear()  # only the logs needed it

    def exit_logits(self, s: SessionSpec) -> np.ndarray:
        """``[U]`` per-user exit offsets θ_u = θ̄ − η·z_u + σ_θ·ε_u of session spec ``s``."""
        return s.exit_base - s.exit_activity * self.activity_z + s.exit_user_sd * self.exit_noise

    # ----------------------------------------------------------------------------- per-user caches
    def _rows(self, users: np.ndarray, items: np.ndarray, store: dict[int, np.ndarray], compute) -> np.ndarray:
        """``[B, N, C]`` cached per (user, pool item) outputs; missing pairs computed in one batch.

        Each touched user gets a ``[I, C]`` row block (NaN = not computed yet), so repeated
        candidates across steps and arms are scored once."""
        need_u, need_i = [], []
        for u, row in zip(users.tolist(), items):
            block = store.get(u)
            todo = row if block is None else row[np.isnan(block[row, 0])]
            if len(todo):
                need_u.append(np.full(len(todo), u))
                need_i.append(todo)
        if need_u:
            nu, ni = np.concatenate(need_u), np.concatenate(need_i)
            pairs = np.unique(np.stack([nu, ni], 1), axis=0)
            for s in range(0, len(pairs), 200_000):
                pu, pi = pairs[s : s + 200_000].T
                out = compute(self.tables.pair_table(self.user_ids[pu], self.pool[pi]))
                for u in np.unique(pu).tolist():
                    if u not in store:
                        store[u] = np.full((len(self.pool), out.shape[1]), np.nan, dtype=np.float32)
                    sel = pu == u
                    store[u][pi[sel]] = out[sel]
        return np.stack([store[u][row] for u, row in zip(users.tolist(), items)])

    def truth_of(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``[B, N, T]`` teacher outputs (:data:`TRUTH` order) for ``users [B]`` × pool ``items [B, N]``."""
        def compute(table):
            o = self.teacher.outputs(table, self.offsets, calibrated=self.config.calibration.platt)
            return np.stack([o[k] for k in TRUTH], -1)
        return self._rows(users, items, self.truth_cache, compute)

    def preds_of(self, users: np.ndarray, items: np.ndarray, model: str = "student") -> np.ndarray:
        """``[B, N, K]`` unconditional predictions of ``model`` (student or logger)."""
        def compute(table):
            p = self.models[model].predict(table)
            return np.stack([p[k] for k in FUSION_INPUTS], -1)
        return self._rows(users, items, self.pred_cache[model], compute)

    # ----------------------------------------------------------------------------- ground truth
    def expected(self, truth: np.ndarray) -> dict[str, np.ndarray]:
        """Expected watch seconds, unconditional feedback probabilities and value ``[...]``."""
        w, cfg = self.teacher.watch, self.config
        m = truth[..., TRUTH.index("watch_m")].astype(np.float64)
        pc_ = truth[..., 0].astype(np.float64)
        e1 = np.minimum(np.expm1(w.mean_log(m, True) + w.sd1**2 / 2), cfg.max_watch_s)
        e0 = np.minimum(np.expm1(w.mean_log(m, False) + w.sd0**2 / 2), cfg.max_watch_s)
        out = {"watch": pc_ * e1 + (1 - pc_) * e0, "click": pc_, "hate": truth[..., TRUTH.index("hate")].astype(np.float64)}
        for j, k in enumerate(POST_CLICK):
            out[k] = pc_ * truth[..., 1 + j]
        v = cfg.value
        out["value"] = v.watch * out["watch"] + v.hate * out["hate"] + sum(
            getattr(v, k) * out[k] for k in POST_CLICK if k != "long_view")
        return out

    def item_value(self, truth: np.ndarray) -> np.ndarray:
        return self.expected(truth)["value"]

    def production_weights(self) -> np.ndarray:
        w = np.array([self.config.production_weights.get(k, 0.0) for k in FUSION_INPUTS], dtype=float)
        if (w <= 0).any():
            raise ConfigError(f"production_weights must be positive for every input {list(FUSION_INPUTS)}")
        return w / w.sum()

    def objective(self, guardrails: dict[str, float] | None = None) -> Objective:
        """The world's own business objective: its value per impression (seconds watched, the
        post-click engagements, hate as a cost) as logged labels, and the production formula."""
        v = self.config.value
        value = {WATCH: v.watch / 1000.0, **{k: getattr(v, k) for k in POST_CLICK if k != "long_view"}, "hate": v.hate}
        return Objective(value=value, page_size=self.config.page_size, guardrails=guardrails or {},
                         production_weights=dict(zip(FUSION_INPUTS, self.production_weights().tolist())))

    def examination(self) -> np.ndarray:
        return self.config.exam_decay ** np.arange(self.config.page_size)

    def rank(self, inputs: torch.Tensor, weights: torch.Tensor) -> np.ndarray:
        """Fuse ``inputs [B, N, K]`` with ``weights`` (``[K]``, ``[B, K]`` or ``[B, G, K]``) → page positions."""
        feats = fusion_features(inputs, self.config.fusion, self.config.fusion_floor)
        idx, _ = top_k(fuse(feats, weights.to(feats.dtype)), None, self.config.page_size)
        return idx.numpy()

    def page_values(self, item_value: np.ndarray, pages: np.ndarray) -> np.ndarray:
        """Myopic expected value of pages ``[B, P]`` or ``[B, G, P]`` given ``item_value [B, N]``."""
        flat = pages.reshape(pages.shape[0], -1)
        v = np.take_along_axis(item_value, flat, 1).reshape(pages.shape)
        return (v * self.examination()[: pages.shape[-1]]).sum(-1)

    # ----------------------------------------------------------------------------- sessions
    # Functions of the world (kuairand_sim_sessions), bound as its methods.
    session_users = session_users
    run_sessions = run_sessions
    shown_rates = shown_rates
    logging_policy = logging_policy
    logged_sessions = logged_sessions
    request_table = request_table

    def student_quality(self) -> dict[str, Any]:
        """AUC and mean prediction vs rate of the student on the watched rows of its held-out
        logged sessions, next to the teacher's AUC on the same rows (the ceiling)."""
        rows = self.student_valid
        student = self.models["student"].predict(rows)
        teacher = self.teacher.predictor.predict(rows)
        out: dict[str, Any] = {"rows": rows.num_rows}
        for k in ("click", "long_view", "like"):
            y = torch.from_numpy(rows[f"label_{k}"].to_numpy().astype(np.float32))[None]
            out[k] = {"student_auc": auc(torch.from_numpy(student[k])[None], y, None),
                      "teacher_auc": auc(torch.from_numpy(teacher[k])[None], y, None),
                      "student_mean": float(student[k].mean()), "rate": float(y.mean())}
        return out

    def describe(self) -> dict[str, Any]:
        return {"world": "kuairand-sim", "seed": self.config.seed, "pool_videos": len(self.pool),
                "users": len(self.user_ids), "fusion_inputs": list(FUSION_INPUTS),
                "production_weights": dict(zip(FUSION_INPUTS, self.production_weights().round(4).tolist())),
                "prerank_recall": self.prerank_recall, "student_quality": self.student_quality(),
                "teacher_metrics": self.teacher.metrics, "utility_moments": [self.utility_mean, self.utility_sd],
                "teacher_platt": self.teacher.platt if self.config.calibration.platt else {},
                "teacher_offsets": self.offsets, "calibration": self.calibration}


def generate_kuairand_sim(config, out_dir: str | Path, n_sessions: int | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """``world generate --world kuairand-sim``: logged sessions (logging policy, student
    predictions as ``pred_*``) in ``logs/``, ``world.json`` and ``summary.json``."""
    t0 = time.perf_counter()
    world = KuaiRandSimWorld(config, log=log)
    n = n_sessions or config.log_sessions
    logs = world.logged_sessions(n, predictor="student") if n != config.log_sessions else \
        world.models["student"].add_predictions(world.student_logs)
    out = Path(out_dir)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    pq.write_table(logs, out / "logs" / "part-00000.parquet", compression="zstd")
    shown = logs.filter(logs["position"].is_valid())
    sessions = np.unique(logs["session_id"].to_numpy(), return_counts=False)
    per_session = np.bincount(np.unique(shown["session_id"].to_numpy(), return_inverse=True)[1])
    summary = {
        **{k: v for k, v in world.describe().items() if k != "teacher_metrics"},
        "sessions": len(sessions), "requests": len(np.unique(logs["request_id"].to_numpy())),
        "rows": logs.num_rows, "impressions": shown.num_rows,
        "impressions_per_session": {"mean": float(per_session.mean()), "median": float(np.median(per_session)),
                                    "p90": float(np.percentile(per_session, 90))},
        "rates": {k: float(shown[f"label_{k}"].to_numpy().mean()) for k in FEEDBACKS},
        "watch_s_per_impression": float(shown["label_play_time_ms"].to_numpy().mean() / 1000.0),
        "teacher_metrics": world.teacher.metrics,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json(out / "world.json", {"world": "kuairand-sim", "config": config.model_dump(mode="json")})
    write_json(out / "summary.json", summary)
    return summary
