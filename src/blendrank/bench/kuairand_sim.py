"""``blendrank bench --world kuairand-sim``: every method on the same simulated sessions.

Each arm is a policy called at every request of every session; sessions are simulated online
(what an arm shows changes how long the user stays), with common random numbers across arms
(:meth:`KuaiRandSimWorld.run_sessions`). Tuning (static_search, segment_oracle) uses requests
recorded under production on ``valid`` sessions; learned methods train on the logs the student
was trained on. Paired bootstrap CIs are over sessions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blendrank.algos.grade.trainer import GradePolicy
from blendrank.algos.integrated_rl.ksim import fit_integrated_rl_ksim
from blendrank.algos.static_search.search import search_weights
from blendrank.bench import registry
from blendrank.bench.ab import compare_arms, oracle_share
from blendrank.bench.ope import examination_from_log, logged_from_table, page_objective, run_ope
from blendrank.data.contract import objectives_of
from blendrank.errors import ConfigError, DataError
from blendrank.objective import Objective
from blendrank.ope import ArmTarget
from blendrank.worlds.kuairand_sim import KuaiRandSimWorld
from blendrank.worlds.kuairand_sim_config import (
    FEEDBACKS,
    FUSION_INPUTS,
    STREAM_EVAL,
    STREAM_VALID,
    TRUTH,
)
from blendrank.worlds.kuairand_sim_sessions import StepContext
from blendrank.worlds.kuairand_sim_teacher import POST_CLICK
from blendrank.worlds.oracle import candidate_vectors
from blendrank.worlds.presets import kuairand_sim_config

#: metric -> (numerator, denominator, scale); rows are sessions ("requests" = per session).
SESSION_METRICS: dict[str, tuple[str, str, float]] = {
    "value": ("value", "requests", 1.0),
    "watch_per_session": ("watch_s", "requests", 1.0),
    "session_length": ("impressions", "requests", 1.0),
    "requests_per_session": ("pages", "requests", 1.0),
    "page_value": ("page_value", "pages", 1.0),
    "watch_per_impression": ("watch_s", "impressions", 1.0),
    **{f"{k}_rate": (k, "impressions", 1.0) for k in FEEDBACKS},
}
N_CLUSTERS = 6
#: off-policy estimate metric -> the session A/B metric it is compared with: the estimators value
#: one request's page, which is the A/B's page_value (its per-impression rates count consumed
#: videos of whole sessions, which a page-level estimate does not see)
OPE_METRIC_MAP = {"value": "page_value"}


class RecordedRequests:
    """Requests recorded under one policy: fusion inputs, true item values and users."""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []
        self.item_value: list[np.ndarray] = []
        self.user: list[np.ndarray] = []

    def record(self, ctx: StepContext, page: np.ndarray, feedback: dict[str, np.ndarray]) -> None:
        self.inputs.append(ctx.inputs)
        self.item_value.append(ctx.item_value)
        self.user.append(ctx.user)

    def values(self, world: KuaiRandSimWorld, weights: np.ndarray) -> np.ndarray:
        """``[R, M]`` myopic page value of every recorded request under each of ``weights [M, K]``."""
        w = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))
        out = []
        for x, v in zip(self.inputs, self.item_value):
            for s in range(0, len(x), 256):
                pages = world.rank(x[s : s + 256], w.expand(len(x[s : s + 256]), -1, -1))
                out.append(world.page_values(v[s : s + 256], pages))
        return np.concatenate(out)


def _kmeans(x: np.ndarray, k: int, seed: int, iters: int = 30) -> np.ndarray:
    """``[k, D]`` centroids of ``x [n, D]`` (Lloyd, k-means++-free: seeded random start)."""
    rng = np.random.default_rng(seed)
    c = x[rng.choice(len(x), size=min(k, len(x)), replace=False)]
    for _ in range(iters):
        a = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        c = np.stack([x[a == j].mean(0) if (a == j).any() else c[j] for j in range(len(c))])
    return c


def user_signature(world: KuaiRandSimWorld, users: np.ndarray, probe_items: np.ndarray) -> np.ndarray:
    """Ground-truth signature per user: teacher logits of click and each post-click feedback and
    expected log watch over a fixed probe set of videos, plus the user's exit offset (standardised
    by the caller). ``[B, D]``."""
    t = world.truth_of(users, np.broadcast_to(probe_items, (len(users), len(probe_items))))
    p = np.clip(t[..., : 1 + len(POST_CLICK)], 1e-6, 1 - 1e-6)
    logits = np.log(p / (1 - p)).mean(1)
    return np.column_stack([logits, t[..., TRUTH.index("watch_m")].mean(1), world.user_theta[users]])


def segment_policy(world: KuaiRandSimWorld, rec: RecordedRequests, grid: np.ndarray, prod: np.ndarray,
                   seed: int) -> tuple[Callable[[StepContext], np.ndarray], dict[str, Any]]:
    """The segment oracle: k-means clusters of the recorded users' ground-truth signatures, the
    best grid vector per cluster on the recorded requests, served by nearest centroid."""
    probe = np.random.default_rng([seed, 9]).choice(len(world.pool), size=min(64, len(world.pool)), replace=False)
    req_users = np.concatenate(rec.user)
    uniq = np.unique(req_users)
    sig = user_signature(world, uniq, probe)
    mu, sd = sig.mean(0), sig.std(0) + 1e-9
    cent = _kmeans((sig - mu) / sd, N_CLUSTERS, seed)

    def cluster(users: np.ndarray) -> np.ndarray:
        z = (user_signature(world, users, probe) - mu) / sd
        return ((z[:, None] - cent[None]) ** 2).sum(-1).argmin(1)

    cluster_of = dict(zip(uniq.tolist(), cluster(uniq).tolist()))
    req_cluster = np.array([cluster_of[u] for u in req_users.tolist()])
    values = rec.values(world, grid)
    seg_w = np.stack([grid[values[req_cluster == j].mean(0).argmax()] if (req_cluster == j).any() else prod
                      for j in range(len(cent))])

    def policy(c: StepContext) -> np.ndarray:
        return world.rank(c.inputs, torch.from_numpy(seg_w[cluster(c.user)]).float())

    return policy, {f"cluster_{j}": dict(zip(FUSION_INPUTS, w.round(4).tolist())) for j, w in enumerate(seg_w)}


def kuairand_sim_ope(world: KuaiRandSimWorld, logs: Any, objective: Objective, targets: dict[str, Any],
                     not_on_logs: dict[str, str], truth: dict[str, Any], n_boot: int) -> dict[str, Any]:
    """Every estimator's lift of every arm from the world's logged sessions (student predictions),
    validated against the session A/B's page value. ``targets``: arm -> ``[K]`` weights or
    ``fn(logs) -> [B, K]``. What the logs cannot support is reported under ``skipped``."""
    try:
        logged = logged_from_table(logs, objective, list(FUSION_INPUTS), list(FUSION_INPUTS), 1.0)
        exam, exam_source = examination_from_log(logged, world.config.page_size)
    except DataError as exc:
        return {"estimates": {}, "skipped": {"all": str(exc)}, "arms_skipped": not_on_logs}
    inputs = torch.from_numpy(logged.inputs.astype(np.float32))
    arms = {}
    for arm, target in targets.items():
        w = np.asarray(target(logs) if callable(target) else target, dtype=np.float64)
        pages = world.rank(inputs, torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
        arms[arm] = ArmTarget(pages=pages.astype(np.int64), weights=w)
    out = run_ope(logged, arms, page_objective(objective, 1.0, realised=True), exam, truth=truth,
                  metric_map=OPE_METRIC_MAP, n_boot=n_boot, seed=world.config.seed, skipped=not_on_logs)
    out["examination"] = {"source": exam_source, "fitted": exam.round(4).tolist(),
                          "world": world.examination().round(4).tolist()}
    out["metric_map"] = OPE_METRIC_MAP
    return out


def run_kuairand_sim_bench(cfg, out_dir: str | Path, log: Callable[[str], None] = print,
                           policies: dict[str, GradePolicy] | None = None) -> dict[str, Any]:
    """Run ``cfg.methods`` (production first) and the saved ``policies`` (arm name -> policy) in
    kuairand-sim and write ``bench.json``."""
    policies = policies or {}
    methods = [*registry.parse_methods(cfg.methods, "kuairand-sim"), *policies]
    wcfg = kuairand_sim_config(cfg.preset, overrides=cfg.world_overrides, seed=cfg.seed)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    world = KuaiRandSimWorld(wcfg, log=log)
    objective = world.objective(cfg.guardrails)
    log(f"objective: {objective.describe()}")
    timings["world"] = time.perf_counter() - t
    prod = objective.production_vector(list(FUSION_INPUTS))
    grade_notes: list[str] = []
    K = len(prod)
    prod_t = torch.from_numpy(prod).float()
    grid = candidate_vectors(K, extra=prod, max_points=cfg.oracle_grid_points, seed=wcfg.seed)
    grid_t = torch.from_numpy(grid)
    n_eval, n_valid = cfg.eval_sessions, cfg.valid_sessions

    valid: RecordedRequests | None = None

    def tuning_set() -> RecordedRequests:
        nonlocal valid
        if valid is None:
            valid = RecordedRequests()
            world.run_sessions(lambda c: world.rank(c.inputs, prod_t), n_valid, STREAM_VALID, record=valid.record)
        return valid

    def fixed(w: np.ndarray):
        wt = torch.from_numpy(np.asarray(w, dtype=np.float32))
        return lambda c: world.rank(c.inputs, wt)

    def oracle(c: StepContext) -> np.ndarray:
        pages = world.rank(c.inputs, grid_t.expand(len(c.user), -1, -1))  # [B, M, P]
        best = world.page_values(c.item_value, pages).argmax(1)
        return pages[np.arange(len(best)), best]

    totals: dict[str, dict[str, np.ndarray]] = {}
    weights_used: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    ope_targets: dict[str, Any] = {}  # arm -> its weights on the logged sessions (off-policy estimates)
    not_on_logs: dict[str, str] = {}
    student_logs = None
    for i, m in enumerate(methods, 1):
        t = time.perf_counter()
        log(f"[{i}/{len(methods)}] {m}: started")
        record = None  # a policy that reads the feedback of its pages (session context) also records it
        if m == "production":
            policy = fixed(prod)
            ope_targets[m] = prod
        elif m == "static_search":
            rec = tuning_set()
            ss = cfg.static_search.model_copy(update={"include": [prod.tolist(), *cfg.static_search.include]})
            res = search_weights(lambda W, rec=rec: rec.values(world, W).mean(0), K, ss)
            weights_used[m] = dict(zip(FUSION_INPUTS, np.round(res.best_weights, 4).tolist()))
            log(f"static_search ({ss.method}, {res.n_evals} vectors): {weights_used[m]}")
            policy = fixed(res.best_weights)
            ope_targets[m] = res.best_weights
        elif m == "segment_oracle":
            policy, weights_used[m] = segment_policy(world, tuning_set(), grid, prod, wcfg.seed)
            not_on_logs[m] = "its clusters read users' ground-truth signatures, which logs lack"
        elif m == "oracle":
            policy = oracle
            not_on_logs[m] = "it searches each request's truth, which logs lack"
        elif m == "true_score":
            policy = lambda c: np.argsort(-c.item_value, axis=1, kind="stable")[:, : wcfg.page_size]
            not_on_logs[m] = "it ranks by the truth, which logs lack"
        elif m in policies:
            pol = policies[m]
            if pol.spec.inputs != list(FUSION_INPUTS):
                raise ConfigError(f"{m}: the policy fuses {pol.spec.inputs}; kuairand-sim fuses {list(FUSION_INPUTS)}")

            def policy(c: StepContext, pol=pol) -> np.ndarray:
                return world.rank(c.inputs, pol.weights(pol.batch(world.request_table(c))).float())
            ope_targets[m] = lambda t, pol=pol: pol.weights(pol.batch(t)).numpy()
        elif registry.is_grade(m):
            if student_logs is None:
                student_logs = world.models["student"].add_predictions(world.student_logs)
            logs = student_logs
            spec = registry.fusion_spec(objective, list(FUSION_INPUTS), 1.0, formula=wcfg.fusion, floor=wcfg.fusion_floor)
            resolved = registry.grade_config(cfg.grade, objective, m, spec, objectives_of(logs.column_names), False)
            grade_notes = resolved.notes()
            pol = registry.fit_method(resolved, logs, objective, spec)

            def policy(c: StepContext, pol=pol) -> np.ndarray:
                w = pol.weights(pol.batch(world.request_table(c)))
                return world.rank(c.inputs, w.float())
            ope_targets[m] = lambda t, pol=pol: pol.weights(pol.batch(t)).numpy()
        elif m == "integrated_rl":
            irl = fit_integrated_rl_ksim(world, cfg.integrated_rl, ab_sessions=n_valid, log=log)
            curves[m] = irl.history
            runner = irl.runner()
            policy, record = runner, runner.record
            not_on_logs[m] = "it acts on the session state it accumulates, which a logged request lacks"
        totals[m] = world.run_sessions(policy, n_eval, STREAM_EVAL, record=record).totals
        timings[m] = time.perf_counter() - t
        tot = totals[m]
        log(f"[{i}/{len(methods)}] {m}: watch/session {tot['watch_s'].mean():.1f} s, "
            f"length {tot['impressions'].mean():.1f}, "
            f"page value {tot['page_value'].sum() / tot['pages'].sum():.2f} ({timings[m]:.1f} s)")

    ab = compare_arms(totals, SESSION_METRICS, cfg.n_boot, seed=wcfg.seed)
    # Rare feedbacks can be absent from the baseline on small runs: no lift then (None).
    lifts = {a: {k: ab.lift(a, "production", k) if ab.metrics["production"][k] else None for k in SESSION_METRICS}
             for a in ab.metrics if a != "production"}
    share = {}
    if "oracle" in ab.metrics:
        share = oracle_share({a: v["page_value"] for a, v in ab.metrics.items()})
    bench: dict[str, Any] = {
        "world": "kuairand-sim", "config": cfg.preset, "seed": wcfg.seed, "n_eval_sessions": n_eval,
        "baseline_arm": "production", "value_metric": "page_value",
        "arms_realised": ab.metrics, "lifts": lifts,
        "oracle_share": share,
        "learning_curves": curves,
        "oracle_share_watch_per_session": (oracle_share({a: v["watch_per_session"] for a, v in ab.metrics.items()})
                                           if "oracle" in ab.metrics else {}),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "weights": {"fusion_inputs": list(FUSION_INPUTS), "production": dict(zip(FUSION_INPUTS, prod.round(4).tolist())),
                    **weights_used},
        "world_summary": world.describe(),
        "ci_method": "paired percentile bootstrap over sessions (common random numbers across arms)",
        "metric_notes": {"value": "realised business value per session (seconds-equivalent)",
                         "page_value": "teacher-expected myopic value per request (what the oracles maximise)",
                         "oracle_share": "on page_value; sessions differ by arm, so it is not bounded by 1"},
        "objective": objective.model_dump(mode="json"),
        "grade_notes": grade_notes,
        "bench_config": cfg.model_dump(mode="json"),
    }
    if cfg.ope:
        t = time.perf_counter()
        if student_logs is None:
            student_logs = world.models["student"].add_predictions(world.student_logs)
        bench["ope"] = kuairand_sim_ope(world, student_logs, objective, ope_targets, not_on_logs, lifts, cfg.n_boot)
        timings["ope"] = time.perf_counter() - t
        bench["timings_s"]["ope"] = round(timings["ope"], 3)
        log(f"off-policy estimates ({timings['ope']:.1f} s): recommended {bench['ope'].get('recommended')}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(bench, indent=2, default=float))
    return bench

