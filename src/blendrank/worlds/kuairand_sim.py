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

Equations and defaults are in ``docs/worlds.md``. Shapes: ``B`` requests (active sessions),
``N`` candidates, ``P`` page size, ``K`` fusion inputs, ``I`` pool videos, ``T`` teacher outputs.
Everything is keyed by ``(seed, stream, session, …)``: the same sessions in every arm see the same
random numbers (common random numbers), so arms differ only by what they show.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from pydantic import Field, field_validator

from blendrank.config import BaseConfig
from blendrank.data.kuairand import PRODUCTION_WEIGHTS, SPLITS
from blendrank.errors import ConfigError
from blendrank.fusion.formulas import Formula, fuse, fusion_features, top_k
from blendrank.jsonio import read_json, write_json
from blendrank.mtl.config import MTLConfig
from blendrank.mtl.train import MTLPredictor, fit_mtl
from blendrank.objective import Objective
from blendrank.prerank import Prerank, PrerankConfig, fit_prerank, recall_at_n
from blendrank.worlds.kuairand_sim_teacher import (
    POST_CLICK,
    WATCH,
    KuaiRandTables,
    Teacher,
    TeacherConfig,
    default_cache_dir,
    fit_teacher,
    schema_yaml,
)
from blendrank.worlds.logging_policy import dirichlet_log_density

#: Fusion inputs: the deployed predictor's unconditional probabilities, in this order.
FUSION_INPUTS: tuple[str, ...] = tuple(PRODUCTION_WEIGHTS)
#: Teacher output columns of the truth arrays ``[..., T]``.
TRUTH = ("click", *POST_CLICK, "hate", "watch_m")
#: Feedbacks realised per impression (and reported as per-impression rates).
FEEDBACKS = ("click", *POST_CLICK, "hate")
STREAM_LOGS, STREAM_VALID, STREAM_EVAL, STREAM_CALIBRATION = 1, 3, 4, 5
_N_UNIFORMS = 3 + len(POST_CLICK)  # click, watch, hate, post-click feedbacks (+ exit drawn apart)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


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


def _student_mtl() -> MTLConfig:
    return MTLConfig(model="mmoe", objectives=list(FUSION_INPUTS), esmm={k: "click" for k in FUSION_INPUTS if k != "click"},
                     embedding_dim=8, expert_dims=[64, 32], n_experts=3, tower_dims=[32], epochs=6, patience=2,
                     wide_lr=0.02, position_bias_tower=False, seed=0)


def _logger_mtl() -> MTLConfig:
    return _student_mtl().model_copy(update={"expert_dims": [32], "n_experts": 2, "epochs": 3, "wide": True})


class SessionSpec(BaseConfig):
    """Satisfaction and exit model (per impression; see docs/worlds.md)."""

    beta: float = Field(0.9, ge=0, lt=1, description="Memory of the satisfaction S ← β·S + (1−β)·z(u).")
    exit_satisfaction: float = Field(1.0, ge=0, description="λ: exit-logit decrease per unit of satisfaction.")
    # κ, θ̄, σ_θ, η and ρ: fitted to the log's impressions per user-day (kuairand_sim_calibrate; docs/worlds.md).
    fatigue: float = Field(0.0, ge=0, description="κ: exit-logit increase per log(1 + impressions so far).")
    exit_base: float = Field(-3.76, description="θ̄: mean exit logit at zero satisfaction and no fatigue.")
    exit_user_sd: float = Field(0.0, ge=0, description="σ_θ: per-user random exit-logit offset.")
    exit_activity: float = Field(1.0, ge=0, description="η: exit-logit decrease per SD of the user's real "
                                 "(shrunk, log) impressions per active day.")
    max_impressions: int = Field(600, ge=1, description="Cap on impressions per session.")
    thinning: float = Field(0.0105, gt=0, le=1, description="ρ: share of a session's impressions the real log keeps "
                            "(KuaiRand-Pure is a sample of each user-day); not used by the simulation, only to "
                            "compare simulated session lengths with the log's impressions per user-day.")
    utility: dict[str, float] = Field(
        default_factory=lambda: {"watch": 1.0, "like": 2.0, "follow": 4.0, "comment": 3.0, "forward": 3.0,
                                 "profile_enter": 1.0, "hate": -6.0, "no_click": -0.3},
        description="Per-impression utility u = watch·log(1+s)/log(61) + Σ w_k·feedback_k (+ no_click if not clicked).")

    @field_validator("utility")
    @classmethod
    def _utility_keys(cls, value: dict[str, float]) -> dict[str, float]:
        allowed = {"watch", "hate", "no_click", *POST_CLICK}
        unknown, missing = set(value) - allowed, {"watch", "hate", "no_click"} - set(value)
        if unknown or missing:
            raise ValueError(f"utility keys must be among {sorted(allowed)} and include watch, hate and no_click "
                             f"(unknown: {sorted(unknown)}, missing: {sorted(missing)})")
        return value


class CalibrationSpec(BaseConfig):
    """How the teacher's outputs are calibrated to the real log (see docs/worlds.md)."""

    platt: bool = Field(True, description="Apply the teacher's per-head Platt scaling (fitted on the validation "
                        "days: click and hate on every impression, post-click rates on the clicked ones).")
    match_log_rates: bool = Field(True, description="Shift each head's logit by a constant so that the per-impression "
                                  "rates of logging-policy sessions match the log's (tab `tab`): the simulated logger "
                                  "picks the teacher's favourites far better than Kuaishou's production did.")
    tab: int | None = Field(1, description="Log rows whose rates are the targets (the feed tab; null: every row).")
    sessions: int = Field(300, ge=10, description="Logging-policy sessions simulated per fitting round.")
    rounds: int = Field(2, ge=1, description="Fitting rounds (exits depend on the rates, so the shown videos move a little).")


class ValueSpec(BaseConfig):
    """Business value of an impression, in seconds-equivalent (teacher expectation for oracles)."""

    watch: float = Field(1.0, description="Per second watched.")
    like: float = Field(120.0, description="Per like.")
    follow: float = Field(600.0, description="Per follow.")
    comment: float = Field(300.0, description="Per comment.")
    forward: float = Field(600.0, description="Per forward.")
    profile_enter: float = Field(20.0, description="Per profile visit.")
    hate: float = Field(-900.0, description="Per hate (negative).")

    def post_click(self) -> np.ndarray:
        """Weights of the post-click feedbacks in :data:`POST_CLICK` order (long_view has none)."""
        return np.array([getattr(self, k) if k != "long_view" else 0.0 for k in POST_CLICK])


class KuaiRandSimConfig(BaseConfig):
    """Every parameter of the kuairand-sim world (see docs/worlds.md)."""

    seed: int = Field(0, description="Seed of the user sample, per-user exit offsets and every stream.")
    pool_min_rows: int = Field(5, ge=1, description="Pool: videos with at least this many logged impressions.")
    max_pool: int | None = Field(None, ge=10, description="Keep only the most-logged videos of the pool (null: all).")
    max_users: int | None = Field(None, ge=10, description="Sample this many of the logged users (null: all).")
    candidates: int = Field(50, ge=2, description="N: candidates the prerank returns per request.")
    page_size: int = Field(6, ge=1, description="K: videos per page, consumed in order.")
    max_watch_s: float = Field(600.0, gt=0, description="Cap on one sampled watch time (s).")
    long_view_s: float = Field(18.0, gt=0, description="long_view = watch ≥ min(this, video duration).")
    exam_decay: float = Field(0.9, gt=0, le=1, description="Position discount γ^(p−1) of the myopic page value "
                              "that the oracles maximise (the chance of still being there).")
    fusion: Formula = Field("log_linear", description="Fusion formula of every arm.")
    fusion_floor: float = Field(1e-3, gt=0, description="Floor b_k inside log(p + b_k).")
    production_weights: dict[str, float] = Field(default_factory=lambda: dict(PRODUCTION_WEIGHTS),
                                                 description="Production fusion weights per input (normalised).")
    logging_concentration: float = Field(200.0, gt=0, description="κ₀: logged weights ~ Dir(κ₀·production).")
    logger_max_rows: int | None = Field(None, ge=1000, description="Subsample the real training days to this many "
                                        "impressions for the logger MTL (tests); null uses all.")
    log_sessions: int = Field(1500, ge=10, description="Logged sessions the student is trained on.")
    prerank: PrerankConfig = Field(default_factory=PrerankConfig, description="Prerank (two-tower on real clicks).")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="Ground-truth teacher fit.")
    student: MTLConfig = Field(default_factory=_student_mtl, description="The deployed student MTL.")
    logger: MTLConfig = Field(default_factory=_logger_mtl, description="The logging policy's MTL (fitted on the real log).")
    session: SessionSpec = Field(default_factory=SessionSpec, description="Session / exit model.")
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec, description="Calibration of the "
                                         "teacher's outputs to the real log's rates.")
    value: ValueSpec = Field(default_factory=ValueSpec, description="Business value.")
    cache_dir: str | None = Field(None, description="Where fitted teacher / logger / student are cached "
                                  "(null: $BLENDRANK_CACHE or ~/.cache/blendrank).")

    @property
    def fusion_inputs(self) -> list[str]:
        return list(FUSION_INPUTS)

    @property
    def objectives(self) -> list[str]:
        return list(FUSION_INPUTS)

    def digest(self, *exclude: str) -> str:
        data = self.model_dump(mode="json", exclude={"cache_dir", *exclude})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class StepContext:
    """What a policy sees at one request step (``truth`` / ``item_value`` only for oracle arms)."""

    session: np.ndarray  # [B] session index
    user: np.ndarray  # [B] user index
    cand: np.ndarray  # [B, N] pool index
    inputs: torch.Tensor  # [B, N, K] fusion inputs (deployed predictions)
    item_value: np.ndarray  # [B, N] true expected value of each candidate (oracles only)
    step: int


Policy = Callable[[StepContext], np.ndarray]  # -> [B, P] candidate positions


@dataclass
class SessionResult:
    """Per-session totals ``[S]`` and (optionally) the recorded requests."""

    totals: dict[str, np.ndarray]
    requests: list[dict[str, np.ndarray]] = field(default_factory=list)


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
        self.utility_mean, self.utility_sd = self._log_utility_moments()
        self.prerank = self._fit_prerank(uid, vid, date)
        self.prerank_recall = self._prerank_recall(uid, vid, date)
        self._truth: dict[int, np.ndarray] = {}
        self._preds: dict[str, dict[int, np.ndarray]] = {"logger": {}, "student": {}}
        self.models: dict[str, MTLPredictor] = {"logger": self._fit_logger()}
        self.log_rates = self._log_rates()
        self.offsets: dict[str, float] = {}
        self.calibration: dict[str, Any] = {}
        if cfg.calibration.match_log_rates:
            self._fit_offsets()
        self.student_logs: pa.Table | None = None
        self.models["student"] = self._fit_student()
        self._preds["logger"].clear()  # only the logs needed it

    def exit_logits(self, s: SessionSpec) -> np.ndarray:
        """``[U]`` per-user exit offsets θ_u = θ̄ − η·z_u + σ_θ·ε_u of session spec ``s``."""
        return s.exit_base - s.exit_activity * self.activity_z + s.exit_user_sd * self.exit_noise

    # ----------------------------------------------------------------------------- setup
    def _log_utility_moments(self) -> tuple[float, float]:
        log, w = self.tables.log, self.config.session.utility
        watch = log[WATCH].to_numpy() / 1000.0
        cols = {"like": "is_like", "follow": "is_follow", "comment": "is_comment", "forward": "is_forward",
                "profile_enter": "is_profile_enter", "hate": "is_hate"}
        u = w["watch"] * np.log1p(watch) / np.log(61.0) + w["no_click"] * (1 - log["is_click"].to_numpy())
        for k, c in cols.items():
            u = u + w.get(k, 0.0) * log[c].to_numpy()
        return float(u.mean()), float(u.std())

    def _log_rates(self) -> dict[str, float]:
        """The real log's per-impression rate of every feedback (rows of ``calibration.tab``)."""
        log, tab = self.tables.log, self.config.calibration.tab
        sel = np.ones(log.num_rows, dtype=bool) if tab is None else log["tab"].to_numpy() == tab
        cols = {"click": "is_click", "long_view": "long_view", "like": "is_like", "follow": "is_follow",
                "comment": "is_comment", "forward": "is_forward", "profile_enter": "is_profile_enter", "hate": "is_hate"}
        out = {k: float(log[c].to_numpy()[sel].mean()) for k, c in cols.items()}
        out["watch_s"] = float(log[WATCH].to_numpy()[sel].mean() / 1000.0)
        return out

    def shown_rates(self, n_sessions: int, stream: int) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        """Per-impression feedback rates and watch of ``n_sessions`` logging-policy sessions, with
        the ``[R]`` user and pool indices of their shown impressions."""
        users, items = [], []

        def record(ctx: StepContext, page: np.ndarray, fb: dict[str, np.ndarray]) -> None:
            shown = fb["consumed"]
            users.append(np.broadcast_to(ctx.user[:, None], page.shape)[shown])
            items.append(np.take_along_axis(ctx.cand, page, 1)[shown])

        rng = np.random.default_rng([self.config.seed, stream, 3])
        res = self.run_sessions(self.logging_policy(rng, {"weights": [], "propensity": []}), n_sessions, stream,
                                predictor="logger", record=record)
        n = res.totals["impressions"].sum()
        rates = {k: float(res.totals[k].sum() / n) for k in FEEDBACKS}
        rates["watch_s"] = float(res.totals["watch_s"].sum() / n)
        lengths = res.totals["impressions"]
        rates |= {"impressions_mean": float(lengths.mean()), "impressions_median": float(np.median(lengths)),
                  "impressions_p90": float(np.percentile(lengths, 90))}
        return rates, np.concatenate(users), np.concatenate(items)

    def _fit_offsets(self) -> None:
        """Per-head logit offsets (``self.offsets``) such that logging-policy sessions reproduce the
        log's per-impression rates: click and hate directly, each post-click rate through
        P(click)·P(k | click). Fitted on the shown videos of ``calibration.sessions`` sessions,
        re-simulated ``calibration.rounds`` times; cached by the world config."""
        cfg, cal = self.config, self.config.calibration
        path = self.cache / f"kuairand-sim-offsets-{cfg.digest('student', 'value', 'log_sessions')}.json"
        if path.is_file():
            stored = read_json(path)
            self.offsets, self.calibration = stored["offsets"], stored["calibration"]
            return
        before, users, items = self.shown_rates(cal.sessions, STREAM_CALIBRATION)
        rounds = []
        for _ in range(cal.rounds):
            lg = self.teacher.logits(self.tables.pair_table(self.user_ids[users], self.pool[items]), cfg.calibration.platt)
            click = _solve_offset(lg["click"], None, self.log_rates["click"])
            p_click = _sigmoid(lg["click"] + click)
            self.offsets = {"click": click, "hate": _solve_offset(lg["hate"], None, self.log_rates["hate"])}
            for k in POST_CLICK:
                if k != "long_view":  # long_view follows the 18-s rule on the watch time, not its head
                    self.offsets[k] = _solve_offset(lg[k], p_click, self.log_rates[k])
            self._truth.clear()
            rates, users, items = self.shown_rates(cal.sessions, STREAM_CALIBRATION)
            rounds.append(rates)
        self.calibration = {"log": self.log_rates, "before": before, "rounds": rounds}
        # Start the logged sessions from empty caches, as a world that loads the offsets does: the
        # networks' outputs may differ in the last bit with the batch a pair was scored in.
        self._truth.clear()
        self._preds["logger"].clear()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"offsets": self.offsets, "calibration": self.calibration})

    def _fit_prerank(self, uid, vid, date) -> Prerank:
        lo, hi = SPLITS["train"]
        sel = (date >= lo) & (date <= hi) & np.isin(uid, self.user_ids) & np.isin(vid, self.pool)
        pool_index = {int(v): i for i, v in enumerate(self.pool)}
        items = np.array([pool_index[int(v)] for v in vid[sel]], dtype=np.int64)
        users = np.searchsorted(self.user_ids, uid[sel])
        label = self.tables.log["is_click"].to_numpy()[sel]
        path = self.cache / f"kuairand-sim-prerank-{self.config.digest('teacher', 'student', 'logger', 'session', 'value', 'log_sessions')}.npz"
        if path.is_file():
            return Prerank.load(path)
        pr = fit_prerank(users, items, label, len(self.user_ids), len(self.pool), self.config.prerank)
        path.parent.mkdir(parents=True, exist_ok=True)
        pr.save(path)
        return pr

    def _prerank_recall(self, uid, vid, date) -> dict[str, float]:
        """Recall@N of the test days' clicked pool videos: two-tower (with fallback) vs popularity."""
        lo, hi = SPLITS["test"]
        sel = ((date >= lo) & (date <= hi) & np.isin(uid, self.user_ids) & np.isin(vid, self.pool)
               & (self.tables.log["is_click"].to_numpy() > 0))
        pool_index = {int(v): i for i, v in enumerate(self.pool)}
        items = np.array([pool_index[int(v)] for v in vid[sel]], dtype=np.int64)
        users = np.searchsorted(self.user_ids, uid[sel])
        N = self.config.candidates
        return {"n": N, "pairs": int(sel.sum()), "two_tower": recall_at_n(self.prerank, users, items, N),
                "popularity": recall_at_n(Prerank(popularity=self.prerank.popularity), users, items, N),
                "random": N / len(self.pool), "cold_share": float(self.prerank.is_cold(users).mean())}

    def _fit_logger(self) -> MTLPredictor:
        """The logging policy's predictor: a small MTL fitted on the real log's training days."""
        cfg = self.config
        key = cfg.logger.model_dump_json() + str(cfg.logger_max_rows)
        path = self.cache / f"kuairand-sim-logger-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        if (path / "meta.json").is_file():
            return MTLPredictor.load(path)
        imp = self.tables.impressions()
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
        self.log(f"fitting the logging policy's MTL on {train.num_rows:,} real impressions")
        model = fit_mtl(train.select(keep), valid.select(keep), cfg.logger, features_file=path.parent / "kuairand-sim-features.yaml", progress=False)
        model.save(path)
        return model

    def _fit_student(self) -> MTLPredictor:
        """The deployed student: trained on sessions this world logged (logger predictions fused)."""
        cfg = self.config
        path = self.cache / f"kuairand-sim-student-{cfg.digest()}"
        logs = self.logged_sessions(cfg.log_sessions)
        self.student_logs = logs
        ids = np.unique(logs["session_id"].to_numpy())
        cut = ids[int(0.85 * len(ids))]
        self.student_valid = logs.filter(pc.and_(pc.greater_equal(logs["session_id"], cut), logs["position"].is_valid()))
        if (path / "meta.json").is_file():
            return MTLPredictor.load(path)
        keep = [c for c in logs.column_names if c.startswith(("f_", "label_")) or c == "position"]
        train = logs.filter(pc.less(logs["session_id"], cut)).select(keep)
        valid = logs.filter(pc.greater_equal(logs["session_id"], cut)).select(keep)
        train = train.drop_columns([f"label_{k}" for k in ("hate", WATCH)])
        valid = valid.drop_columns([f"label_{k}" for k in ("hate", WATCH)])
        schema = self.cache / "kuairand-sim-features.yaml"
        schema.write_text(schema_yaml())
        self.log(f"fitting the student MTL on {train.num_rows:,} logged rows")
        model = fit_mtl(train, valid, cfg.student, features_file=schema, progress=False)
        model.save(path)
        return model

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
        return self._rows(users, items, self._truth, compute)

    def preds_of(self, users: np.ndarray, items: np.ndarray, model: str = "student") -> np.ndarray:
        """``[B, N, K]`` unconditional predictions of ``model`` (student or logger)."""
        def compute(table):
            p = self.models[model].predict(table)
            return np.stack([p[k] for k in FUSION_INPUTS], -1)
        return self._rows(users, items, self._preds[model], compute)

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
    def session_users(self, n: int, stream: int) -> np.ndarray:
        """``[n]`` user indices of ``n`` sessions of ``stream`` (users drawn uniformly)."""
        return np.random.default_rng([self.config.seed, stream, 0]).integers(len(self.user_ids), size=n)

    def run_sessions(self, policy: Policy, n_sessions: int, stream: int, predictor: str = "student",
                     record: Callable[[StepContext, np.ndarray, dict[str, np.ndarray]], None] | None = None,
                     trace: np.ndarray | None = None, exits: bool = True) -> SessionResult:
        """Simulate ``n_sessions`` sessions of ``stream`` under ``policy``.

        ``trace`` (``[n_sessions, max_impressions]``, optional) receives the satisfaction S after
        every impression; ``exits=False`` runs every session to the cap (the exit calibration
        replays exits on the trace: what is shown up to an exit does not depend on the exit model).

        Every session's random numbers (prerank noise, feedback, watch, exits) are keyed by
        ``(seed, stream, session)`` and consumed per impression slot, so two arms that show the
        same video at the same slot see the same reaction.
        """
        cfg, s = self.config, self.config.session
        users = self.session_users(n_sessions, stream)
        cap, P, N, I = s.max_impressions, cfg.page_size, cfg.candidates, len(self.pool)
        rngs = [np.random.default_rng([cfg.seed, stream, 1, i]) for i in range(n_sessions)]
        crn = np.random.default_rng([cfg.seed, stream, 2]).random((n_sessions, cap, _N_UNIFORMS + 1))
        z_watch = torch.special.ndtri(torch.from_numpy(np.clip(crn[..., 1], 1e-9, 1 - 1e-9))).numpy()
        theta = self.user_theta[users]
        S = np.zeros(n_sessions)
        n = np.zeros(n_sessions, dtype=np.int64)
        alive = np.ones(n_sessions, dtype=bool)
        shown = np.zeros((n_sessions, I), dtype=bool)
        tot = {k: np.zeros(n_sessions) for k in ("impressions", "pages", "watch_s", "value", "page_value", *FEEDBACKS)}
        w_u, w_v = s.utility, cfg.value
        post_w = cfg.value.post_click()
        util_post = np.array([w_u.get(k, 0.0) for k in POST_CLICK])
        step = 0
        while alive.any():
            act = np.flatnonzero(alive)
            noise = np.stack([rngs[i].gumbel(size=I).astype(np.float32) for i in act]) * self.prerank.temperature
            scores = np.where(shown[act], -np.inf, self.prerank.scores(users[act]) + noise)
            cand = np.argpartition(-scores, N - 1, axis=1)[:, :N]
            truth = self.truth_of(users[act], cand)  # [B, N, T]
            preds = self.preds_of(users[act], cand, predictor)
            ctx = StepContext(session=act, user=users[act], cand=cand, inputs=torch.from_numpy(preds).float(),
                              item_value=self.item_value(truth), step=step)
            page = np.asarray(policy(ctx))  # [B, P]
            tot["pages"][act] += 1
            tot["page_value"][act] += self.page_values(ctx.item_value, page)
            item = np.take_along_axis(cand, page, 1)
            tr = np.take_along_axis(truth, page[..., None], 1)  # [B, P, T]
            fb = {k: np.zeros(page.shape, dtype=np.int8) for k in FEEDBACKS}
            watch_pg = np.zeros(page.shape)
            consumed = np.zeros(page.shape, dtype=bool)
            here = np.ones(len(act), dtype=bool)
            for p in range(P):
                b = np.flatnonzero(here)
                if not len(b):
                    break
                sess, slot = act[b], n[act[b]]
                u = crn[sess, slot]
                t = tr[b, p]
                click = u[:, 0] < t[:, 0]
                m = t[:, TRUTH.index("watch_m")].astype(np.float64)
                w = self.teacher.watch
                mu = np.where(click, w.mean_log(m, True), w.mean_log(m, False))
                sd = np.where(click, w.sd1, w.sd0)
                watch = np.minimum(np.expm1(np.maximum(mu + sd * z_watch[sess, slot], 0.0)), cfg.max_watch_s)
                post = click[:, None] & (u[:, 3 : 3 + len(POST_CLICK)] < t[:, 1 : 1 + len(POST_CLICK)])
                lv = watch >= np.minimum(cfg.long_view_s, self.item_duration_s[item[b, p]])
                post[:, 0] = lv  # long_view follows the 18-s rule on the sampled watch time
                hate = u[:, 2] < t[:, TRUTH.index("hate")]
                util = (w_u["watch"] * np.log1p(watch) / np.log(61.0) + post @ util_post + w_u["hate"] * hate
                        + w_u["no_click"] * ~click)
                S[sess] = s.beta * S[sess] + (1 - s.beta) * (util - self.utility_mean) / self.utility_sd
                if trace is not None:
                    trace[sess, slot] = S[sess]
                value = w_v.watch * watch + post @ post_w + w_v.hate * hate
                fb["click"][b, p] = click
                for j, k in enumerate(POST_CLICK):
                    fb[k][b, p] = post[:, j]
                fb["hate"][b, p] = hate
                watch_pg[b, p] = watch
                consumed[b, p] = True
                shown[sess, item[b, p]] = True
                n[sess] += 1
                tot["impressions"][sess] += 1
                tot["watch_s"][sess] += watch
                tot["value"][sess] += value
                for k in FEEDBACKS:
                    tot[k][sess] += fb[k][b, p]
                leave = n[sess] >= cap
                if exits:
                    leave |= u[:, -1] < _sigmoid(theta[sess] + s.fatigue * np.log1p(n[sess]) - s.exit_satisfaction * S[sess])
                alive[sess[leave]] = False
                here[b[leave]] = False
            if record is not None:
                record(ctx, page, {"consumed": consumed, "watch_s": watch_pg, **fb})
            step += 1
        tot["requests"] = tot["pages"]
        return SessionResult(tot)

    # ----------------------------------------------------------------------------- logging
    def logging_policy(self, rng: np.random.Generator, store: dict[str, list]) -> Policy:
        """Production weights with Dirichlet exploration; weights and propensities go to ``store``."""
        alpha = self.config.logging_concentration * self.production_weights()

        def policy(ctx: StepContext) -> np.ndarray:
            w = np.clip(rng.dirichlet(alpha, size=len(ctx.user)), 1e-12, None)
            w /= w.sum(1, keepdims=True)
            store["weights"].append(w)
            store["propensity"].append(np.exp(dirichlet_log_density(w, alpha)))
            return self.rank(ctx.inputs, torch.from_numpy(w).float())

        return policy

    def logged_sessions(self, n_sessions: int, stream: int = STREAM_LOGS, predictor: str = "logger") -> pa.Table:
        """Contract rows (every candidate of every request) of sessions under the logging policy.

        ``position`` is the 1-based slot for videos the user actually watched (null for the rest,
        including page videos after an exit); ``pred_*`` are ``predictor``'s predictions."""
        store: dict[str, list] = {"weights": [], "propensity": []}
        tables: list[pa.Table] = []
        counter = [0]

        def record(ctx: StepContext, page: np.ndarray, fb: dict[str, np.ndarray]) -> None:
            B, N = ctx.cand.shape
            position = np.zeros((B, N), dtype=np.int32)
            rows = np.arange(B)[:, None]
            position[rows, page] = np.where(fb["consumed"], np.arange(1, page.shape[1] + 1), 0)
            labels = {k: np.zeros((B, N), dtype=np.int8) for k in FEEDBACKS}
            for k in FEEDBACKS:
                labels[k][rows, page] = fb[k]
            watch = np.zeros((B, N))
            watch[rows, page] = fb["watch_s"] * 1000.0
            rid = counter[0] + np.arange(B)
            counter[0] += B
            w, prop = store["weights"][-1], store["propensity"][-1]
            t = self.tables.pair_table(np.repeat(self.user_ids[ctx.user], N), self.pool[ctx.cand.ravel()])
            cols = {"request_id": np.repeat(rid, N), "session_id": np.repeat(ctx.session, N),
                    "ts": np.repeat(ctx.session * 1000 + ctx.step, N).astype(np.int64) * 60_000}
            for name, a in cols.items():
                t = t.append_column(name, pa.array(a.astype(np.int64)))
            t = t.append_column("position", pa.array(position.ravel(), pa.int32(), mask=position.ravel() == 0))
            for k in FEEDBACKS:
                t = t.append_column(f"label_{k}", pa.array(labels[k].ravel()))
            t = t.append_column(f"label_{WATCH}", pa.array(watch.ravel()))
            for j, k in enumerate(FUSION_INPUTS):
                t = t.append_column(f"pred_{k}", pa.array(ctx.inputs[..., j].numpy().ravel()))
            t = t.append_column("propensity", pa.array(np.repeat(prop, N)))
            for j, k in enumerate(FUSION_INPUTS):
                t = t.append_column(f"logging_w_{k}", pa.array(np.repeat(w[:, j], N).astype(np.float32)))
            tables.append(t)

        rng = np.random.default_rng([self.config.seed, stream, 3])
        self.run_sessions(self.logging_policy(rng, store), n_sessions, stream, predictor=predictor, record=record)
        return pa.concat_tables(tables)

    def request_table(self, ctx: StepContext) -> pa.Table:
        """Serving-time contract rows of one step (what a learned policy sees)."""
        N = ctx.cand.shape[1]
        t = self.tables.pair_table(np.repeat(self.user_ids[ctx.user], N), self.pool[ctx.cand.ravel()])
        rid = np.repeat(ctx.session * 10_000 + ctx.step, N).astype(np.int64)
        t = t.append_column("request_id", pa.array(rid)).append_column("ts", pa.array(rid * 1000))
        for j, k in enumerate(FUSION_INPUTS):
            t = t.append_column(f"pred_{k}", pa.array(ctx.inputs[..., j].numpy().ravel()))
        return t

    def student_quality(self) -> dict[str, Any]:
        """AUC and mean prediction vs rate of the student on the watched rows of its held-out
        logged sessions, next to the teacher's AUC on the same rows (the ceiling)."""
        from blendrank.metrics import auc

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
