"""``blendrank bench`` in a world: every method on the same held-out requests, one simulated A/B.

Request sets come from independent streams of the world's generator: ``valid`` (tuning),
``eval`` (the A/B). Every arm fuses the same logged predictions except ``true_score``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from pydantic import Field, ValidationInfo, field_validator

from blendrank.algos.grade.config import GRADEConfig
from blendrank.algos.grade.data import build_batch
from blendrank.algos.grade.trainer import GradePolicy
from blendrank.algos.integrated_rl import IntegratedRLConfig, fit_integrated_rl
from blendrank.algos.static_search.config import StaticSearchConfig
from blendrank.algos.static_search.search import search_weights
from blendrank.bench import registry
from blendrank.bench.ab import (
    CommonRandomNumbers,
    compare_arms,
    metric_defs,
    oracle_share,
    realised_page,
)
from blendrank.bench.kuairand_sim import run_kuairand_sim_bench
from blendrank.bench.ope import examination_from_log, logged_from_table, page_objective, run_ope
from blendrank.bench.sessions import SESSION_METRICS, PageFn, simulate_arm_sessions
from blendrank.config import BaseConfig
from blendrank.data.contract import objectives_of
from blendrank.errors import ConfigError
from blendrank.jsonio import write_json
from blendrank.mtl.config import MTLConfig
from blendrank.mtl.fit import fit_mtl
from blendrank.objective import OBJECTIVE_FILE, Objective
from blendrank.ope import ArmTarget
from blendrank.worlds.logging_policy import STREAM_LOGS, generate_shard, request_table
from blendrank.worlds.marketplace import MarketplaceWorld, Requests, TruthBatch
from blendrank.worlds.oracle import (
    candidate_vectors,
    per_request_oracle,
    vector_metrics,
    vector_values,
)
from blendrank.worlds.presets import world_config

STREAM_VALID, STREAM_EVAL, STREAM_CRN, STREAM_SESSIONS = 3, 4, 5, 6
#: Guard-railed A/B metric -> (numerator, denominator) page totals.
GUARDED = {"ctr": ("clicks", None), "cvr": ("orders", "clicks"), "opm": ("orders", None), "gpm": ("gmv", None)}


# Bench defaults that differ from the libraries' (docs/evaluation.md; measured in docs/benchmarks.md).
# mtl: the worlds' logging policy ranks on taste the features cannot see, so the MTL position tower
# absorbs part of it; hiding half the positions in training keeps it in the towers, which rank the
# unshown candidates fusion re-ranks better.
BENCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "mtl": {"position_dropout": 0.5},
}


def _fill(defaults: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    """``value`` with ``defaults`` filled in wherever it is silent (nested dicts merged)."""
    out = copy.deepcopy(defaults)
    for key, v in value.items():
        out[key] = _fill(out[key], v) if isinstance(v, dict) and isinstance(out.get(key), dict) else v
    return out


class BenchConfig(BaseConfig):
    """A world bench: which world, which methods, how many requests."""

    world: str = Field("marketplace", description="World name.")
    preset: str = Field("default", description="World preset.")
    seed: int | None = Field(None, description="World seed (overrides the preset's).")
    world_overrides: list[str] = Field(default_factory=list, description="KEY=VALUE overrides of the world config.")
    methods: list[str] = Field(default_factory=lambda: ["production", "static_search", "segment_oracle", "oracle", "true_score"],
                               description="Arms to run; production is always added as the baseline.")
    eval_requests: int = Field(5000, ge=10, description="Held-out requests of the simulated A/B.")
    valid_requests: int = Field(2000, ge=10, description="Requests used to tune static_search.")
    n_boot: int = Field(1000, ge=100, description="Paired bootstrap resamples for the CIs.")
    oracle_grid_points: int = Field(300, ge=10, description="Simplex grid size of the oracle searches.")
    oracle_refine: int = Field(32, ge=0, description="Local refinement samples per request for the per-request oracle.")
    static_search: StaticSearchConfig = Field(default_factory=StaticSearchConfig, description="static_search settings.")
    log_requests: int = Field(20000, ge=10, description="Logged requests (production policy + exploration) that learned methods train on.")
    grade: GRADEConfig = Field(default_factory=GRADEConfig,
                               description="GRADE settings; its goal (R_prior, R_post, guard rails) comes from the "
                               "world's objective (docs/objective.md), the variants from the method registry.")
    integrated_rl: IntegratedRLConfig = Field(default_factory=IntegratedRLConfig, description="IntegratedRL-MTF settings (progressive explore-then-train rounds in the world).")
    predictor: Literal["world", "mtl"] = Field(
        "mtl", description="Predictions every arm fuses (but true_score): an MTL model trained on the logs (the "
        "deployed model), or the world's simulated deployed predictor (true logits + noise; faster).")
    mtl: MTLConfig = Field(default_factory=lambda: MTLConfig.model_validate(BENCH_DEFAULTS["mtl"]),
                           description="MTL model settings when predictor=mtl (bench defaults: "
                           "position_dropout=0.5, see docs/evaluation.md; --set mtl.position_dropout=0 undoes it).")
    save_training_logs: bool = Field(False, description="Also write the logs the learned methods train on (with the "
                                     "bench's MTL predictions) and the world's objective to OUT/training_logs/, so "
                                     "`blendrank train --data OUT/training_logs` fits the bench's GRADE.")
    probe_requests: int = Field(1000, ge=0, description="Validation requests on which learned methods' true value is logged along training (0 = off).")
    session_requests: int = Field(0, ge=0, description="Sessions per arm of the session-level A/B (whole sessions of the "
                                  "same users under each arm; needs world_overrides session.enabled=true; 0 = off). "
                                  "The oracle has no session arm.")
    guardrails: dict[Literal["ctr", "cvr", "opm", "gpm"], float] | None = Field(
        None,
        description="The objective's guard rails: A/B metric -> largest allowed relative loss against production; "
        "null = the world's (marketplace: {ctr: 0.005, cvr: 0.005, opm: 0}; kuairand-sim: none), {} = pure value. "
        "static_search maximises value subject to them (on the validation requests' truth); GRADE enforces them "
        "on its predicted pages; segment_oracle keeps them within each segment. The per-request oracle and "
        "true_score stay unconstrained.")
    eval_sessions: int = Field(1000, ge=10, description="kuairand-sim: held-out sessions of the simulated A/B.")
    valid_sessions: int = Field(300, ge=10, description="kuairand-sim: sessions under production whose requests tune static_search and segment_oracle.")
    ope: bool = Field(True, description="Off-policy estimates of every arm's lift from the logged traffic (never the "
                      "truth), validated against the simulated A/B lifts: bench.json `ope` (docs/ope.md).")

    @field_validator("mtl", mode="before")
    @classmethod
    def _bench_defaults(cls, value: Any, info: ValidationInfo) -> Any:
        # `--set mtl.epochs=3` gives a partial dict: keep the bench defaults under it.
        return _fill(BENCH_DEFAULTS[info.field_name], value) if isinstance(value, dict) else value


Predict = Callable[[Requests], dict[str, np.ndarray]]


def _request_table(world: MarketplaceWorld, req: Requests, preds: dict[str, np.ndarray]) -> pa.Table:
    n = len(req)
    return request_table(world, req, preds, np.arange(n), np.arange(n), world.config.start_ts + np.arange(n) * 1000)


def _mtl_predictor(world: MarketplaceWorld, logs: pa.Table, cfg: MTLConfig, log: Callable[[str], None]) -> tuple[Predict, pa.Table]:
    """Train the MTL model on the logs (last 15% of requests for early stopping) and return a
    request → predictions function, plus the logs with their pred_* columns replaced."""
    ids = np.unique(logs["request_id"].to_numpy())
    cut = ids[int(0.85 * len(ids))]
    train = logs.filter(pc.less(logs["request_id"], cut))
    valid = logs.filter(pc.greater_equal(logs["request_id"], cut))
    model = fit_mtl(train, valid, cfg, progress=False)
    log(f"mtl ({cfg.model}) trained on {train.num_rows:,} rows")

    def predict(req: Requests) -> dict[str, np.ndarray]:
        p = model.predict(_request_table(world, req, world.predictions(req)))
        return {o: p[o].reshape(req.cand.shape) for o in world.objectives}

    return predict, model.add_predictions(logs)


class WorldBatch:
    """One request set of a world with its truth and fusion inputs, computed once for every arm."""

    def __init__(self, world: MarketplaceWorld, stream: int, n: int, predict: Predict | None = None):
        self.world = world
        self.req: Requests = world.sample_requests(n, np.random.default_rng([world.config.seed, stream]))
        self.truth: TruthBatch = world.truth(self.req)
        self.preds = (predict or world.predictions)(self.req)
        self.inputs = world.fusion_inputs(self.req, self.preds)
        self.segment = world.user_segment[self.req.user]

    def values(self, weights: np.ndarray) -> np.ndarray:
        """``[B, M]`` page value for ``[M, K]`` shared or ``[B, M, K]`` per-request vectors."""
        return vector_values(self.world, self.inputs, self.truth, weights)


def _weights_pages(world: MarketplaceWorld, predict: Predict | None, w: np.ndarray) -> PageFn:
    """Session-A/B pages of one global weight vector."""
    w_t = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    return lambda req, ctx: world.rank(world.fusion_inputs(req, (predict or world.predictions)(req)), w_t)


def _segment_pages(world: MarketplaceWorld, predict: Predict | None, best: np.ndarray) -> PageFn:
    """Session-A/B pages of the segment oracle: its vector for each user's latent segment."""
    return lambda req, ctx: world.rank(world.fusion_inputs(req, (predict or world.predictions)(req)),
                                       torch.from_numpy(best[world.user_segment[req.user]].astype(np.float32)))


def _policy_pages(world: MarketplaceWorld, predict: Predict | None, pol: Any) -> PageFn:
    """Session-A/B pages of a learned per-request policy (GRADE, ltr) from what it sees at serving."""
    def pages(req: Requests, ctx: np.ndarray) -> np.ndarray:
        preds = (predict or world.predictions)(req)
        w = pol.weights(pol.batch(_request_table(world, req, preds)))
        return world.rank(world.fusion_inputs(req, preds), w)
    return pages


LOG_SHARD_REQUESTS = 10_000


def _training_logs(world: MarketplaceWorld, n: int) -> pa.Table:
    """Logged traffic of the production policy with exploration (the logs' first shards)."""
    per_shard = LOG_SHARD_REQUESTS
    return pa.concat_tables([generate_shard(world, i, min(per_shard, n - s)) for i, s in enumerate(range(0, n, per_shard))])


def _logged_requests(world: MarketplaceWorld, logs: pa.Table) -> Requests | None:
    """The :class:`Requests` behind :func:`_training_logs` (redrawn from the shards' generator
    streams, checked against the logged items), for arms that serve from requests rather than
    a table (integrated_rl); None when they cannot be redrawn (session logs)."""
    if world.config.session.enabled:
        return None
    n = len(np.unique(logs["request_id"].to_numpy()))
    parts = [world.sample_requests(min(LOG_SHARD_REQUESTS, n - s),
                                   np.random.default_rng([world.config.seed, STREAM_LOGS, i]))
             for i, s in enumerate(range(0, n, LOG_SHARD_REQUESTS))]
    req = Requests(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("user", "query", "cand", "pred_noise")))
    if req.cand.size != logs.num_rows or not np.array_equal(req.cand.ravel(), logs["item_id"].to_numpy()):
        return None
    return req


def _world_ope(world: MarketplaceWorld, logs: pa.Table, objective: Objective, targets: dict[str, Any],
               not_on_logs: dict[str, str], truth: dict[str, Any], n_boot: int) -> dict[str, Any]:
    """Every estimator's lift of every arm from the logged traffic, validated against the A/B.

    ``targets``: arm -> ``("weights", [K] or fn(logs) -> [B, K])`` or ``("pages", fn(req) -> [B, P])``.
    """
    wcfg = world.config
    logged = logged_from_table(logs, objective, wcfg.objectives, wcfg.fusion_inputs, world.price_scale)
    exam, exam_source = examination_from_log(logged, wcfg.page_size)
    inputs = torch.from_numpy(logged.inputs.astype(np.float32))
    arms: dict[str, ArmTarget] = {}
    skipped = dict(not_on_logs)
    req = None
    for arm, (kind, target) in targets.items():
        if kind == "weights":
            w = np.asarray(target(logs) if callable(target) else target, dtype=np.float64)
            pages = world.rank(inputs, torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
            arms[arm] = ArmTarget(pages=pages.astype(np.int64), weights=w)
        else:
            req = req if req is not None else _logged_requests(world, logs)
            if req is None:
                skipped[arm] = "its pages need the logged requests, which session logs cannot redraw"
                continue
            arms[arm] = ArmTarget(pages=np.asarray(target(req), dtype=np.int64))
    out = run_ope(logged, arms, page_objective(objective, world.price_scale, realised=True), exam,
                  truth=truth, n_boot=n_boot, seed=wcfg.seed, skipped=skipped)
    out["examination"] = {"source": exam_source, "fitted": exam.round(4).tolist(),
                          "world": world.examination().round(4).tolist()}
    return out


def _truth_probe(world: MarketplaceWorld, n: int, predict: Predict | None):
    """``probe(policy, spec, center)`` → the policy's true mean page value on ``n`` validation
    requests (mean weights), logged along training next to the rewards it optimises."""
    if n <= 0:
        return None
    probe_set = WorldBatch(world, STREAM_VALID, n, predict)
    table = _request_table(world, probe_set.req, probe_set.preds)
    cache: dict[int, Any] = {}

    def probe(policy, spec, center) -> dict[str, float]:
        batch = cache.setdefault(id(center), build_batch(table, spec, center))
        with torch.no_grad():
            w = policy.mean_weights(batch.cat, batch.num, batch.stats).numpy()
        return {"true_value": float(probe_set.values(w[:, None, :]).mean())}

    return probe


def save_training_logs(logs: pa.Table, objective: Objective, out_dir: Path) -> Path:
    """Write the bench's training logs as a split directory (train = every logged request, which
    is what the bench's GRADE learns from; valid/test = the last 15% of them, for the methods
    that tune on a held-out split) with the objective beside them."""
    folder = out_dir / "training_logs"
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.unique(logs["request_id"].to_numpy())
    tail = logs.filter(pc.greater_equal(logs["request_id"], ids[int(0.85 * len(ids))]))
    for name, table in (("train", logs), ("valid", tail), ("test", tail)):
        pq.write_table(table, folder / f"{name}.parquet")
    (folder / OBJECTIVE_FILE).write_text(objective.to_yaml())
    return folder


def check_policy_inputs(pol: GradePolicy, inputs: list[str], name: str) -> None:
    if pol.spec.inputs != list(inputs):
        raise ConfigError(f"{name}: the policy fuses {pol.spec.inputs} but this bench fuses {list(inputs)}; "
                          "evaluate it where its fusion inputs exist")


def _guarded_value(metrics: dict[str, np.ndarray], base: dict[str, np.ndarray], guardrails: dict[str, float]) -> np.ndarray:
    """``[M]`` mean value of ``M`` vectors (``metrics``: name -> ``[B, M]``) minus a steep penalty
    for every guard rail broken against production's totals (``base``: name -> ``[B]``) — an exact
    penalty: vectors that keep the guard rails keep their value. No guard rails: the mean value."""
    totals = {k: v.sum(0) for k, v in metrics.items()}
    ref = {k: v.sum() for k, v in base.items()}

    def ratio_of(t: dict[str, np.ndarray], metric: str) -> np.ndarray:
        num, den = GUARDED[metric]
        return t[num] / t[den] if den else t[num]

    n = len(metrics["value"])
    penalty = sum(np.maximum(0.0, (1 - tol) - ratio_of(totals, m) / ratio_of(ref, m)) for m, tol in guardrails.items())
    return totals["value"] / n - 100.0 * (ref["value"] / n) * penalty


def run_world_bench(cfg: BenchConfig, out_dir: str | Path, log: Callable[[str], None] = print,
                    policies: dict[str, GradePolicy] | None = None) -> dict[str, Any]:
    """Run every method, and every saved policy in ``policies`` (arm name -> policy, for
    ``blendrank eval``), and write ``bench.json``; returns its content."""
    policies = policies or {}
    if cfg.world == "kuairand-sim":
        return run_kuairand_sim_bench(cfg, out_dir, log=log, policies=policies)
    methods = [*registry.parse_methods(cfg.methods, "marketplace"), *policies]
    wcfg = world_config(cfg.preset, overrides=cfg.world_overrides, seed=cfg.seed)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    world = MarketplaceWorld(wcfg)
    objective = world.objective(cfg.guardrails)
    log(f"objective: {objective.describe()}")
    timings["world"] = time.perf_counter() - t
    logs = eval_table = probe = predict = None
    if cfg.predictor == "mtl":
        t = time.perf_counter()
        logs = _training_logs(world, cfg.log_requests)
        predict, logs = _mtl_predictor(world, logs, cfg.mtl, log)
        timings["mtl"] = time.perf_counter() - t
    if cfg.save_training_logs:
        logs = logs if logs is not None else _training_logs(world, cfg.log_requests)
        save_training_logs(logs, objective, Path(out_dir))
    ev = WorldBatch(world, STREAM_EVAL, cfg.eval_requests, predict)
    K = ev.inputs.shape[-1]
    prod = objective.production_vector(wcfg.fusion_inputs)
    weights: dict[str, np.ndarray] = {}  # arm -> [B, K]
    curves: dict[str, list[dict[str, Any]]] = {}
    pages: dict[str, np.ndarray] = {}  # arm -> [B, P]
    session_pages: dict[str, PageFn] = {}  # arm -> pages(req, session ctx) for the session A/B
    grade_notes: list[str] = []  # what of the objective GRADE's rewards cannot see
    ope_targets: dict[str, Any] = {}  # arm -> its target on the logged requests (off-policy estimates)
    not_on_logs: dict[str, str] = {}  # arm -> why it has none

    for i, m in enumerate(methods, 1):
        t = time.perf_counter()
        log(f"[{i}/{len(methods)}] {m}: started")
        if m == "production":
            weights[m] = np.broadcast_to(prod, (len(ev.req), K))
            session_pages[m] = _weights_pages(world, predict, prod)
            ope_targets[m] = ("weights", prod)
        elif m == "static_search":
            valid = WorldBatch(world, STREAM_VALID, cfg.valid_requests, predict)
            ss = cfg.static_search.model_copy(update={"include": [prod.tolist(), *cfg.static_search.include]})
            base = {k: v[:, 0] for k, v in vector_metrics(world, valid.inputs, valid.truth, prod[None]).items()}
            res = search_weights(lambda W, valid=valid, base=base: _guarded_value(
                vector_metrics(world, valid.inputs, valid.truth, W), base, objective.guardrails), K, ss)
            weights[m] = np.broadcast_to(res.best_weights, (len(ev.req), K))
            session_pages[m] = _weights_pages(world, predict, res.best_weights)
            ope_targets[m] = ("weights", res.best_weights)
            log(f"static_search ({ss.method}, {res.n_evals} vectors): {np.round(res.best_weights, 3).tolist()}")
        elif m in ("segment_oracle", "oracle"):
            grid = candidate_vectors(K, extra=prod, max_points=cfg.oracle_grid_points, seed=wcfg.seed)
            grid_metrics = vector_metrics(world, ev.inputs, ev.truth, grid)
            values = grid_metrics["value"]
            if m == "segment_oracle":  # under the same guard rails, held within each segment
                base = {k: v[:, 0] for k, v in vector_metrics(world, ev.inputs, ev.truth, prod[None]).items()}
                best = np.tile(prod, (len(wcfg.segments), 1))  # [S, K]; segments absent from eval keep production
                for s in np.unique(ev.segment):
                    rows = ev.segment == s
                    seg_metrics = {k: v[rows] for k, v in grid_metrics.items()}
                    best[s] = grid[_guarded_value(seg_metrics, {k: v[rows] for k, v in base.items()}, objective.guardrails).argmax()]
                w = best[ev.segment]
                session_pages[m] = _segment_pages(world, predict, best)
                ope_targets[m] = ("weights", lambda t, best=best: best[
                    world.user_segment[t["user_id"].to_numpy()[:: ev.req.cand.shape[1]]]])
            else:
                w, _ = per_request_oracle(world, ev.inputs, ev.truth, values, grid, refine=cfg.oracle_refine, seed=wcfg.seed)
                not_on_logs[m] = "its weights are searched on each request's truth, which logs lack"
            weights[m] = w
        elif m == "true_score":
            pages[m] = world.true_score_page(ev.truth)
            session_pages[m] = lambda req, ctx: world.true_score_page(world.truth(req))
            not_on_logs[m] = "it ranks by the truth, which logs lack"
        elif m == "integrated_rl":
            # The same predictions as every other arm: a shallow copy of the world whose deployed
            # predictor is the MTL model (truth, features and fusion stay the world's).
            irl_world = copy.copy(world)
            if predict is not None:
                irl_world.predictions = predict  # type: ignore[method-assign]
            irl = fit_integrated_rl(irl_world, cfg.integrated_rl, log=log)
            pages[m] = irl.pages(irl_world, ev.req)
            session_pages[m] = irl.session_pages(irl_world)
            ope_targets[m] = ("pages", lambda r, irl=irl, irl_world=irl_world: irl.pages(irl_world, r))
            curves[m] = irl.history
        elif m in policies:  # a saved policy, served as it would be deployed
            if eval_table is None:
                eval_table = _request_table(world, ev.req, ev.preds)
            pol = policies[m]
            check_policy_inputs(pol, wcfg.fusion_inputs, m)
            weights[m] = pol.weights(pol.batch(eval_table)).numpy()
            session_pages[m] = _policy_pages(world, predict, pol)
            ope_targets[m] = ("weights", lambda t, pol=pol: pol.weights(pol.batch(t)).numpy())
        elif registry.is_grade(m):
            if logs is None:
                logs = _training_logs(world, cfg.log_requests)
            if eval_table is None:
                eval_table = _request_table(world, ev.req, ev.preds)
                probe = _truth_probe(world, cfg.probe_requests, predict)
            spec = registry.fusion_spec(objective, wcfg.objectives, world.price_scale)
            resolved = registry.grade_config(cfg.grade, objective, m, spec, objectives_of(logs.column_names), True)
            grade_notes = resolved.notes()
            pol = registry.fit_method(resolved, logs, objective, spec, probe=probe)
            weights[m] = pol.weights(pol.batch(eval_table)).numpy()
            session_pages[m] = _policy_pages(world, predict, pol)
            ope_targets[m] = ("weights", lambda t, pol=pol: pol.weights(pol.batch(t)).numpy())
            curves[m] = [r for r in pol.history if "step" in r or "epoch" in r]  # Stage 1 and 2
        timings[m] = time.perf_counter() - t
        if m in weights:
            pages[m] = world.rank(ev.inputs, torch.from_numpy(np.ascontiguousarray(weights[m], dtype=np.float32)))
        log(f"[{i}/{len(methods)}] {m}: done in {timings[m]:.1f} s")

    crn = CommonRandomNumbers.draw(ev.req, len(wcfg.extra_objectives), np.random.default_rng([wcfg.seed, STREAM_CRN]))
    defs = metric_defs([o.name for o in wcfg.extra_objectives])
    expected = {a: world.page_metrics(ev.truth, p) for a, p in pages.items()}
    realised = {a: realised_page(world, ev.truth, p, crn) for a, p in pages.items()}
    ab = compare_arms(expected, defs, cfg.n_boot, seed=wcfg.seed)
    ab_real = compare_arms(realised, defs, cfg.n_boot, seed=wcfg.seed)

    def lifts(result, base: str) -> dict[str, Any]:
        return {a: {m: result.lift(a, base, m) for m in defs} for a in result.metrics if a != base}

    seg_names = [s.name for s in wcfg.segments]
    value_def = {"value": defs["value"]}  # per segment: the business value only
    per_segment_ab = {seg_names[s]: compare_arms({a: {q: x[ev.segment == s] for q, x in e.items()}
                                                  for a, e in expected.items()}, value_def, cfg.n_boot, seed=wcfg.seed)
                      for s in np.unique(ev.segment)}
    bench: dict[str, Any] = {
        "world": cfg.world, "config": cfg.preset, "seed": wcfg.seed, "n_eval_requests": cfg.eval_requests,
        "baseline_arm": "production", "value_metric": "value",
        "arms": ab.metrics, "arms_realised": ab_real.metrics,
        "lifts": lifts(ab, "production"),
        "lifts_realised": lifts(ab_real, "production"),
        "lifts_per_segment": {seg: {a: {"value": res.lift(a, "production", "value")} for a in res.metrics
                                    if a != "production"} for seg, res in per_segment_ab.items()},
        "oracle_share": oracle_share({a: v["value"] for a, v in ab.metrics.items()}) if "oracle" in ab.metrics else {},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "weights": {
            "fusion_inputs": wcfg.fusion_inputs,
            "per_segment": {a: {seg_names[s]: w[ev.segment == s].mean(0).round(4).tolist() for s in np.unique(ev.segment)}
                            for a, w in weights.items()},
        },
        "learning_curves": {a: [{k: v for k, v in r.items() if k != "mean_weights"} for r in c] for a, c in curves.items()},
        "predictor": cfg.predictor,
        "ci_method": "paired percentile bootstrap over requests (common random numbers across arms)",
        "objective": objective.model_dump(mode="json"),
        "grade_notes": grade_notes,
        "bench_config": cfg.model_dump(mode="json"),
    }
    if "static_search" in ab.metrics:
        bench["lifts_vs_static"] = lifts(ab, "static_search")
    if cfg.session_requests:
        if not wcfg.session.enabled:
            raise ConfigError("session_requests > 0 needs the world's session model: --set "
                              "'world_overrides=[\"session.enabled=true\"]'")
        t = time.perf_counter()
        per_session = {a: simulate_arm_sessions(world, fn, cfg.session_requests, seed=wcfg.seed + STREAM_SESSIONS)
                       for a, fn in session_pages.items()}
        sab = compare_arms(per_session, SESSION_METRICS, cfg.n_boot, seed=wcfg.seed)
        bench["sessions"] = {"n_sessions": cfg.session_requests, "arms": sab.metrics,
                             "lifts": {a: {m: sab.lift(a, "production", m) for m in SESSION_METRICS}
                                       for a in sab.metrics if a != "production"}}
        timings["sessions"] = time.perf_counter() - t
        bench["timings_s"]["sessions"] = round(timings["sessions"], 3)
    if cfg.ope:
        t = time.perf_counter()
        if logs is None:
            logs = _training_logs(world, cfg.log_requests)
        bench["ope"] = _world_ope(world, logs, objective, ope_targets, not_on_logs, bench["lifts"], cfg.n_boot)
        timings["ope"] = time.perf_counter() - t
        bench["timings_s"]["ope"] = round(timings["ope"], 3)
        log(f"off-policy estimates ({timings['ope']:.1f} s): recommended {bench['ope']['recommended']}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", bench)  # atomic: a failed run never leaves half a bench.json
    return bench
