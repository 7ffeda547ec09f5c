"""``blendrank bench --data``: fusion methods judged offline on any contract log.

The log is split by time (or read as ``train/valid/test`` files from a directory that has them);
methods are tuned on ``valid`` and reported on ``test``: per-objective NDCG@K and GAUC of the
fused ranking, and a composite NDCG (objective-weighted), with bootstrap CIs over requests.
Logs without ``pred_*`` columns get predictions from a per-task logistic model fitted on ``train``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import yaml
from pydantic import Field

from blendrank.algos.grade.config import VARIANTS, GRADEConfig
from blendrank.algos.grade.data import FusionSpec
from blendrank.algos.grade.trainer import fit_grade
from blendrank.algos.integrated_rl.config import IntegratedRLConfig
from blendrank.algos.static_search.config import StaticSearchConfig
from blendrank.algos.static_search.objectives import offline_ndcg_objective
from blendrank.algos.static_search.search import search_weights
from blendrank.config import BaseConfig, apply_overrides
from blendrank.data import splits as data_splits
from blendrank.data.contract import objectives_of
from blendrank.data.slates import Slates, to_slates
from blendrank.errors import ConfigError
from blendrank.metrics import bootstrap_ci, gauc, ndcg_at_k, paired_bootstrap_rel_lift
from blendrank.fusion.formulas import Formula, fuse, fusion_features
from blendrank.jsonio import write_json

LOG_METHODS = ("production", "static_search", "ltr", "grade", *(f"grade:{v}" for v in VARIANTS), "integrated_rl")
SPLITS = ("train", "valid", "test")


class LogBenchConfig(BaseConfig):
    """Offline bench on logs."""

    methods: list[str] = Field(default_factory=lambda: ["production", "static_search"], description=f"Arms to run (any of {', '.join(LOG_METHODS)}); production is always the baseline.")
    seed: int = Field(0, description="Seed of the search and the bootstrap.")
    k: int = Field(10, ge=1, description="NDCG cut-off.")
    gain: str = Field("exp2", description="NDCG gain: exp2 or linear.")
    valid_frac: float = Field(0.15, gt=0, lt=0.5, description="Share of requests (by time) for validation when the log is one file.")
    test_frac: float = Field(0.15, gt=0, lt=0.5, description="Share of requests (by time) for test when the log is one file.")
    test_where: str | None = Field(None, description="Test split filter on one log, COLUMN OP VALUE (e.g. 'random_bool == 1', 'split == \"test\"'): matching requests are the test split, the rest split by time into train/valid (valid_frac of them); default the mapping's test_where, else a time split.")
    objective_weights: dict[str, float] | None = Field(None, description="lambda_k of the composite NDCG; default the production weights.")
    production_weights: dict[str, float] | None = Field(None, description="Production fusion weights; default production.yaml beside the data, else equal.")
    fusion: Formula = Field("log_linear", description="Fusion formula.")
    fusion_floor: float = Field(1e-3, gt=0, description="Floor b_k inside log(p + b_k).")
    n_boot: int = Field(1000, ge=100, description="Bootstrap resamples.")
    static_search: StaticSearchConfig = Field(default_factory=StaticSearchConfig, description="static_search settings.")
    static_search_split: Literal["valid", "train"] = Field(
        "valid", description="Split static_search tunes on: valid (held out from every learned method), or train "
        "(the requests GRADE and ltr learn from: same data for every arm).")
    grade: GRADEConfig = Field(default_factory=GRADEConfig, description="GRADE settings (ltr = GRADE with stage2.steps=0).")
    integrated_rl: IntegratedRLConfig = Field(default_factory=IntegratedRLConfig, description="IntegratedRL-MTF settings (one offline round on the train split; the world-only keys are unused).")


def load_splits(data: Path, mapping: Path | None, cfg: LogBenchConfig) -> dict[str, pa.Table]:
    return data_splits.load_splits(data, mapping, valid_frac=cfg.valid_frac, test_frac=cfg.test_frac, test_where=cfg.test_where)


def _production(data: Path, cfg: LogBenchConfig) -> tuple[dict[str, float] | None, list[str] | None, str]:
    """Production weights (config, else ``production.yaml`` beside the data) and, from that file,
    the objectives to fuse (e.g. KuaiRand leaves out the negative ``hate`` signal)."""
    if cfg.production_weights is not None:
        return cfg.production_weights, None, "config production_weights"
    prod_file = (data if data.is_dir() else data.parent) / "production.yaml"
    if not prod_file.exists():
        return None, None, "equal weights"
    try:
        content = yaml.safe_load(prod_file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{prod_file}: not valid YAML ({exc})") from None
    if not isinstance(content, dict) or not isinstance(content.get("weights"), dict):
        raise ConfigError(f"{prod_file}: expected a mapping with a 'weights: {{objective: weight}}' section")
    return content["weights"], content.get("objectives"), str(prod_file)


def _weight_vector(w: dict[str, float] | None, objectives: list[str], source: str) -> np.ndarray:
    if w is None:
        return np.full(len(objectives), 1.0 / len(objectives))
    unknown = set(w) - set(objectives)
    if unknown:
        raise ConfigError(f"{source}: weights name unknown objectives {sorted(unknown)}; known: {objectives}")
    vec = np.array([float(w.get(o, 0.0)) for o in objectives])
    if vec.sum() <= 0 or (vec < 0).any():
        raise ConfigError(f"{source}: weights must be non-negative with a positive sum")
    return vec / vec.sum()


def _ensure_predictions(splits: dict[str, pa.Table], log: Callable[[str], None]) -> tuple[dict[str, pa.Table], list[str]]:
    cols = splits["train"].column_names
    with_pred = [o for o in objectives_of(cols) if f"pred_{o}" in cols]
    if with_pred:
        return splits, with_pred
    from blendrank.mtl.logistic import LogisticConfig, fit_logistic

    log("no pred_* columns: fitting a per-task logistic model on train for the predictions")
    model = fit_logistic(splits["train"], splits["valid"], LogisticConfig())
    splits = {s: model.add_predictions(t) for s, t in splits.items()}
    cols = splits["train"].column_names
    return splits, [o for o in objectives_of(cols) if f"pred_{o}" in cols]


def _slates(table: pa.Table, objectives: list[str]) -> Slates:
    return to_slates(table, [f"pred_{o}" for o in objectives] + [f"label_{o}" for o in objectives])


def _evaluate(sl: Slates, scores: torch.Tensor, objectives: list[str], lam: np.ndarray,
              cfg: LogBenchConfig) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of the ranking ``scores [B, L]`` of the test requests ``sl``."""
    per_req = {}
    metrics: dict[str, Any] = {}
    composite = torch.zeros(len(sl))
    for o, l_ in zip(objectives, lam):
        labels = sl.columns[f"label_{o}"]
        nd = ndcg_at_k(scores, labels, sl.mask, cfg.k, gain=cfg.gain, empty="zero")
        per_req[o] = nd.per_request
        composite += float(l_) * nd.per_request
        mean, lo, hi = bootstrap_ci(nd.per_request, cfg.n_boot, cfg.seed)
        metrics[f"ndcg@{cfg.k}_{o}"] = {"mean": mean, "ci95": [lo, hi]}
        g = gauc(scores, labels, sl.mask)
        metrics[f"gauc_{o}"] = {"mean": g.mean, "n_used": g.n_used, "n_skipped": g.n_skipped}
    mean, lo, hi = bootstrap_ci(composite, cfg.n_boot, cfg.seed)
    metrics[f"composite_ndcg@{cfg.k}"] = {"mean": mean, "ci95": [lo, hi]}
    return metrics, composite.numpy()


def grade_defaults(grade: GRADEConfig, objectives: list[str], lam: np.ndarray) -> dict[str, Any]:
    """GRADE on logs: R_post and Stage 1 weight each objective's NDCG by the composite's λ, and
    R_prior values the page by the same λ on the predictions."""
    data = grade.model_dump(mode="json")
    weights = {o: float(w) for o, w in zip(objectives, lam) if w > 0}
    data["reward"]["post_objective_weights"] = weights
    data["reward"]["prior_coefs"] = weights
    return data


def _grade_config(cfg: LogBenchConfig, method: str, objectives: list[str], lam: np.ndarray) -> GRADEConfig:
    data = grade_defaults(cfg.grade, objectives, lam)
    data["seed"] = cfg.seed
    overrides = ["stage2.steps=0"] if method == "ltr" else VARIANTS[method.split(":", 1)[1]] if ":" in method else []
    return GRADEConfig.model_validate(apply_overrides(data, overrides))


def production_setup(data: Path, splits: dict[str, pa.Table], cfg: LogBenchConfig,
                     log: Callable[[str], None]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Fused objectives, production weights and composite-NDCG weights λ for a log."""
    splits_, objectives = _ensure_predictions(splits, log)
    splits.update(splits_)
    prod_map, prod_objectives, prod_source = _production(Path(data), cfg)
    if prod_objectives:
        missing = [o for o in prod_objectives if o not in objectives]
        if missing:
            raise ConfigError(f"{prod_source}: objectives {missing} have no label_/pred_ columns in {data}")
        objectives = list(prod_objectives)
    prod = _weight_vector(prod_map, objectives, prod_source)
    # Composite NDCG weights: the business's priorities, i.e. the production weights by default.
    lam = (_weight_vector(cfg.objective_weights, objectives, "objective_weights")
           if cfg.objective_weights is not None else prod)
    return objectives, prod, lam


def _featurise(sl: Slates, objectives: list[str], cfg: LogBenchConfig) -> torch.Tensor:
    return fusion_features(torch.stack([sl.columns[f"pred_{o}"] for o in objectives], -1), cfg.fusion, cfg.fusion_floor)


def tune_static(table: pa.Table, objectives: list[str], prod: np.ndarray, lam: np.ndarray, cfg: LogBenchConfig):
    """Static search on one split's composite NDCG; returns a ``SearchResult``."""
    valid = _slates(table, objectives)
    labels = {o: valid.columns[f"label_{o}"] for o in objectives}
    objective = offline_ndcg_objective(_featurise(valid, objectives, cfg), labels, valid.mask,
                                       dict(zip(objectives, lam)), k=cfg.k, gain=cfg.gain)
    ss = cfg.static_search.model_copy(update={"include": [prod.tolist(), *cfg.static_search.include], "seed": cfg.seed})
    return search_weights(objective, len(objectives), ss)


def _integrated_rl(splits: dict[str, pa.Table], test: Slates, objectives: list[str], prod: np.ndarray, lam: np.ndarray,
                   cfg: LogBenchConfig, log: Callable[[str], None]) -> tuple[torch.Tensor, np.ndarray, list[dict[str, Any]]]:
    """One offline round of IntegratedRL-MTF on train: its test scores ``[B, L]`` (aligned with
    ``test``), its powers ``[B, K]`` (the weights of the report) and its per-round history."""
    from blendrank.algos.integrated_rl.logs import (
        LogSetup,
        fit_integrated_rl_logs,
        production_log_action,
    )

    if cfg.fusion != "log_linear":
        raise ConfigError(f"integrated_rl starts from the production fusion as a product fusion, which needs "
                          f"fusion=log_linear (got {cfg.fusion!r}); drop integrated_rl from --methods or set fusion=log_linear")
    icfg = cfg.integrated_rl.model_copy(update={"seed": cfg.seed})
    setup = LogSetup(objectives, lam.tolist(), production_log_action(prod, cfg.fusion_floor, icfg).tolist(), cfg.k, cfg.gain)
    pol = fit_integrated_rl_logs(splits["train"], splits["valid"], setup, icfg, floor=cfg.fusion_floor, log=log)
    request_id, scores, action = pol.scores(splits["test"])
    if not np.array_equal(request_id, test.request_id) or scores.shape != test.mask.shape:
        raise AssertionError("integrated_rl: test requests out of step with the bench's")  # both come from to_slates
    powers = action[:, :len(objectives)].numpy()
    # Reported as weights: powers on the simplex (the product fusion's ranking at equal biases).
    return scores.float(), powers / np.maximum(powers.sum(1, keepdims=True), 1e-12), pol.history


def run_log_bench(cfg: LogBenchConfig, data: Path, mapping: Path | None, out_dir: str | Path,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Tune on valid, report on test, write ``bench.json``; returns its content."""
    unknown = [m for m in cfg.methods if m not in LOG_METHODS]
    if unknown:
        raise ConfigError(f"--methods: not available on logs: {', '.join(unknown)}; available: {', '.join(LOG_METHODS)}")
    methods = ["production"] + [m for m in dict.fromkeys(cfg.methods) if m != "production"]
    timings: dict[str, float] = {}
    t = time.perf_counter()
    splits = load_splits(Path(data), mapping, cfg)
    objectives, prod, lam = production_setup(Path(data), splits, cfg, log)
    test = _slates(splits["test"], objectives)
    f_test = _featurise(test, objectives, cfg)
    timings["data"] = time.perf_counter() - t
    weights = {"production": prod}
    if "static_search" in methods:
        t = time.perf_counter()
        res = tune_static(splits[cfg.static_search_split], objectives, prod, lam, cfg)
        weights["static_search"] = res.best_weights
        timings["static_search"] = time.perf_counter() - t
        log(f"static_search ({cfg.static_search.method}, {res.n_evals} vectors): "
            f"{dict(zip(objectives, np.round(res.best_weights, 3).tolist()))}")
    curves = {}
    for m in [m for m in methods if m == "ltr" or m.startswith("grade")]:
        t = time.perf_counter()
        pol = fit_grade(splits["train"], _grade_config(cfg, m, objectives, lam), anchor=prod.tolist(),
                        spec=FusionSpec(objectives=objectives, formula=cfg.fusion, floor=cfg.fusion_floor))
        weights[m] = pol.weights(pol.batch(splits["test"])).numpy()
        curves[m] = [{k: v for k, v in r.items() if k != "mean_weights"} for r in pol.history if "step" in r]
        timings[m] = time.perf_counter() - t
    scores = {m: fuse(f_test, torch.as_tensor(w, dtype=torch.float32)) for m, w in weights.items()}
    if "integrated_rl" in methods:
        t = time.perf_counter()
        scores["integrated_rl"], weights["integrated_rl"], curves["integrated_rl"] = _integrated_rl(
            splits, test, objectives, prod, lam, cfg, log)
        timings["integrated_rl"] = time.perf_counter() - t
    offline, composite = {}, {}
    for m in methods:
        offline[m], composite[m] = _evaluate(test, scores[m], objectives, lam, cfg)
    value_metric = f"composite_ndcg@{cfg.k}"

    def lifts_vs(base: str) -> dict[str, dict[str, dict[str, Any]]]:
        out = {}
        for m in methods:
            if m != base:
                rel, lo, hi = paired_bootstrap_rel_lift(composite[m], composite[base], cfg.n_boot, cfg.seed)
                out[m] = {value_metric: {"rel": rel, "ci95": [lo, hi]}}
        return out

    lifts = lifts_vs("production")
    bench = {
        "data": str(data), "config": "logs", "seed": cfg.seed, "n_eval_requests": len(test),
        "baseline_arm": "production", "value_metric": value_metric,
        "objectives": objectives, "objective_weights": dict(zip(objectives, lam.round(4).tolist())),
        "arms": {m: {k: v["mean"] for k, v in offline[m].items()} for m in methods},
        "offline": offline, "lifts": lifts,
        "weights": {"fusion_inputs": objectives,
                    "global": {m: np.round(np.atleast_2d(w).mean(0), 4).tolist() for m, w in weights.items()}},
        "learning_curves": curves,
        "split_requests": {s: int(pc.count_distinct(t_["request_id"]).as_py()) for s, t_ in splits.items()},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "ci_method": "percentile bootstrap over test requests (paired for lifts)",
        "bench_config": cfg.model_dump(mode="json"),
    }
    if "static_search" in methods:
        bench["lifts_vs_static"] = lifts_vs("static_search")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", bench)  # atomic: a failed run never leaves half a bench.json
    return bench
