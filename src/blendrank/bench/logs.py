"""``blendrank bench --data``: fusion methods judged offline on any contract log.

The log is split by time, by a test filter (``test_where``), or read as ``train/valid/test``
files from a directory that has them; methods are tuned on ``valid`` (or ``train``) and reported
on ``test``: the objective's realised page value ``value@k`` and each of its terms (``click@k``,
``gmv@k``, ...) from the logged labels, per-objective NDCG@K and GAUC of the fused ranking and a
composite NDCG (objective-weighted), with bootstrap CIs over requests, and off-policy estimates.
Logs without ``pred_*`` columns get predictions from a per-task logistic model fitted on ``train``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import Field, model_validator

from blendrank.algos.grade.config import GRADEConfig
from blendrank.algos.grade.data import FusionSpec
from blendrank.algos.grade.trainer import GradePolicy
from blendrank.algos.integrated_rl.config import IntegratedRLConfig
from blendrank.algos.static_search.config import StaticSearchConfig
from blendrank.algos.static_search.search import search_weights
from blendrank.bench import registry
from blendrank.bench.ope import (
    RANDOMISED_COLUMN,
    examination_from_log,
    logged_from_table,
    page_objective,
    run_ope,
)
from blendrank.config import SEED_MAX, BaseConfig
from blendrank.data import splits as data_splits
from blendrank.data.contract import objectives_of
from blendrank.data.slates import Slates, to_slates
from blendrank.errors import ConfigError, DataError
from blendrank.fusion.formulas import Formula, fuse, fusion_features, position_discount, top_k
from blendrank.jsonio import write_json
from blendrank.metrics import bootstrap_ci, gauc, ndcg_at_k, paired_bootstrap_rel_lift
from blendrank.objective import (
    DEFAULT_SOURCE,
    PRICE,
    PRICE_TERM_LABELS,
    Objective,
    log_objective,
    term_factors,
)
from blendrank.ope import ArmTarget
from blendrank.rewards.components import page_value as discounted_page_value

SPLITS = ("train", "valid", "test")
#: Keys the business objective owns (docs/objective.md): a log bench reads them from
#: objective.yaml beside the data or --objective, never from its own config.
OBJECTIVE_KEYS = ("production_weights", "objective_weights", "value", "guardrails", "discount",
                  "page_size", "price_scale")


class LogBenchConfig(BaseConfig):
    """Offline bench on logs."""

    methods: list[str] = Field(default_factory=lambda: ["production", "static_search"], description="Arms to run (`blendrank methods` lists them); production is always the baseline.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the search and the bootstrap.")
    k: int = Field(10, ge=1, description="NDCG cut-off.")
    gain: str = Field("exp2", description="NDCG gain: exp2 or linear.")
    valid_frac: float = Field(0.15, gt=0, lt=0.5, description="Share of requests (by time) for validation when the log is one file.")
    test_frac: float = Field(0.15, gt=0, lt=0.5, description="Share of requests (by time) for test when the log is one file.")
    test_where: str | None = Field(None, description="Test split filter on one log, COLUMN OP VALUE (e.g. 'random_bool == 1', 'split == \"test\"'): matching requests are the test split, the rest split by time into train/valid (valid_frac of them); default the mapping's test_where, else a time split.")
    objective: str | None = Field(None, description="Objective YAML file (value, guard rails, production weights; "
                                  "docs/objective.md); null: objective.yaml beside the data, else the default it names.")
    fusion: Formula = Field("log_linear", description="Fusion formula.")
    fusion_floor: float = Field(1e-3, gt=0, description="Floor b_k inside log(p + b_k).")
    n_boot: int = Field(1000, ge=100, description="Bootstrap resamples.")
    static_search: StaticSearchConfig = Field(default_factory=StaticSearchConfig, description="static_search settings.")
    static_search_split: Literal["valid", "train"] = Field(
        "valid", description="Split static_search tunes on: valid (held out from every learned method), or train "
        "(the requests GRADE and ltr learn from: same data for every arm).")
    grade: GRADEConfig = Field(default_factory=GRADEConfig, description="GRADE settings (ltr = GRADE with stage2.steps=0).")
    integrated_rl: IntegratedRLConfig = Field(default_factory=IntegratedRLConfig, description="IntegratedRL-MTF settings (one offline round on the train split; the world-only keys are unused).")
    ope: bool = Field(True, description="Off-policy estimates of every arm's lift over production on the test split "
                      "(objective value and business metrics, 95% CIs; docs/ope.md): bench.json `ope`.")

    @model_validator(mode="before")
    @classmethod
    def _goal_lives_in_the_objective(cls, data: Any) -> Any:
        # A ConfigError (not a ValueError) leaves pydantic as is: one line naming the file to edit.
        for key in OBJECTIVE_KEYS if isinstance(data, dict) else ():
            if key in data:
                what = ("the composite NDCG weights are the objective's value"
                        if key == "objective_weights" else key)
                raise ConfigError(
                    f"{key}: not a bench setting; {what} belongs to the business objective: "
                    "write it in objective.yaml beside the data or in a file passed with --objective "
                    "(docs/objective.md), e.g. `production_weights: {click: 0.3, order: 0.7}`")
        return data


def load_splits(data: Path, mapping: Path | None, cfg: LogBenchConfig) -> dict[str, pa.Table]:
    return data_splits.load_splits(data, mapping, valid_frac=cfg.valid_frac, test_frac=cfg.test_frac,
                                   test_where=cfg.test_where)


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
    """``table``'s requests with the fused ``pred_<objectives>``, every label (the objective may
    value a behaviour that is not fused), price and position."""
    extra = [c for c in ("price", "position") if c in table.column_names]
    labels = [f"label_{o}" for o in objectives_of(table.column_names)]
    return to_slates(table, [f"pred_{o}" for o in objectives] + labels + extra)


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
        # Bootstrap over the requests GAUC uses (single-class requests have no AUC), as for NDCG.
        _, lo, hi = bootstrap_ci(g.per_request, cfg.n_boot, cfg.seed)
        metrics[f"gauc_{o}"] = {"mean": g.mean, "ci95": [lo, hi], "n_used": g.n_used,
                                "n_skipped": g.n_skipped}
    mean, lo, hi = bootstrap_ci(composite, cfg.n_boot, cfg.seed)
    metrics[f"composite_ndcg@{cfg.k}"] = {"mean": mean, "ci95": [lo, hi]}
    return metrics, composite.numpy()


@dataclass(frozen=True)
class LogGoal:
    """A log's objective resolved against its columns: what is fused and how it is judged."""

    objective: Objective
    source: str  # where the objective came from (file, legacy file or the default)
    is_default: bool  # no objective file: the default objective (equal weights) was used
    behaviours: list[str]  # fused pred_<name>, in order
    prod: np.ndarray  # [K] production weights over the fusion inputs (behaviours, then price)
    lam: np.ndarray  # [len(behaviours)] composite-NDCG weights: the objective's value of each behaviour
    price_scale: float  # unit of price as a fusion input and in GMV terms

    @property
    def inputs(self) -> list[str]:
        return [*self.behaviours, *(["price"] if self.objective.fuses_price else [])]

    def spec(self, cfg: LogBenchConfig) -> FusionSpec:
        return registry.fusion_spec(self.objective, self.behaviours, self.price_scale,
                                    formula=cfg.fusion, floor=cfg.fusion_floor)


def log_goal(data: Path | None, splits: dict[str, pa.Table], cfg: LogBenchConfig,
             log: Callable[[str], None], objective: Objective | None = None) -> LogGoal:
    """The objective of a log (``objective``, else ``cfg.objective``, else ``objective.yaml``
    beside it, else the default it states), checked against the columns; adds predictions when
    the log has none. ``data=None``: an in-memory table (no folder to find an objective in)."""
    splits_, predicted = _ensure_predictions(splits, log)
    splits.update(splits_)
    if objective is not None:
        source = "the objective given"
    else:
        default = {o: 1.0 / len(predicted) for o in predicted}
        objective, source = log_objective(data, cfg.objective, default_value=default)
    data = data if data is not None else "the table"
    log(f"objective from {source}: {objective.describe()}")
    behaviours = objective.fusion_behaviours(predicted)
    missing = [b for b in behaviours if b not in predicted]
    if missing:
        raise ConfigError(f"{source}: production_weights fuse {missing}, which have no label_/pred_ columns in {data}")
    cols = splits["train"].column_names
    if objective.fuses_price and "price" not in cols:
        raise ConfigError(f"{source}: production_weights fuse price but {data} has no price column; map one "
                          "(mapping `price:`) or drop price from production_weights")
    price_scale = objective.price_scale or (float(np.median(splits["train"]["price"].to_numpy())) if "price" in cols else 1.0)
    goal_inputs = [*behaviours, *(["price"] if objective.fuses_price else [])]
    prod = objective.production_vector(goal_inputs)
    lam = np.array([max(objective.value.get(o, 0.0), 0.0) for o in behaviours])
    lam = lam / lam.sum() if lam.sum() > 0 else prod[: len(behaviours)] / prod[: len(behaviours)].sum()
    return LogGoal(objective, source, source.startswith(DEFAULT_SOURCE), behaviours, prod, lam,
                   max(price_scale, 1e-6))


def _grade(cfg: LogBenchConfig, goal: LogGoal, method: str, train: pa.Table) -> registry.ResolvedGrade:
    base = cfg.grade.model_copy(update={"seed": cfg.seed})
    return registry.grade_config(base, goal.objective, method, goal.spec(cfg), objectives_of(train.column_names),
                                 "price" in train.column_names)


def _featurise(sl: Slates, goal: LogGoal, cfg: LogBenchConfig) -> torch.Tensor:
    parts = [sl.columns[f"pred_{o}"] for o in goal.behaviours]
    if goal.objective.fuses_price:
        parts.append(sl.columns["price"] / goal.price_scale)
    return fusion_features(torch.stack(parts, -1), cfg.fusion, cfg.fusion_floor)


def tune_static(table: pa.Table, goal: LogGoal, cfg: LogBenchConfig):
    """Static search on one split for the objective's realised page value (``value@k`` of the
    logged labels, :func:`page_value`); returns a ``SearchResult``."""
    valid = _slates(table, goal.behaviours)
    features = _featurise(valid, goal, cfg)

    def mean_value(weights: np.ndarray) -> np.ndarray:  # [M, K] -> [M]
        return np.array([float(page_value(valid, fuse(features, torch.as_tensor(w, dtype=torch.float32)),
                                          goal.objective).mean()) for w in weights])

    ss = cfg.static_search.model_copy(update={"include": [goal.prod.tolist(), *cfg.static_search.include], "seed": cfg.seed})
    return search_weights(mean_value, len(goal.inputs), ss)


def term_columns(term: str) -> list[str]:
    """The slate columns a term multiplies: ``"order*price"`` -> ``["label_order", "price"]``."""
    return [f"label_{f}" if f != PRICE else PRICE for f in term_factors(term)]


def term_metric(term: str, k: int) -> str:
    """A term's name as an offline metric: ``click@10``, ``gmv@10`` for ``order*price``."""
    return f"{PRICE_TERM_LABELS.get(term, term)}@{k}"


def _term_amount(sl: Slates, term: str) -> torch.Tensor:
    """``[B, L]`` each candidate's logged amount of ``term`` (a price term: label × price)."""
    item = torch.ones_like(sl.mask, dtype=torch.float32)
    for c in term_columns(term):
        item = item * torch.nan_to_num(sl.columns[c].float(), nan=0.0)
    return item


def _page_total(sl: Slates, scores: torch.Tensor, item: torch.Tensor, objective: Objective) -> torch.Tensor:
    """``[B]`` Σ_pos d(pos) · ``item`` over the page ``scores [B, L]`` shows (the objective's
    ``page_size`` and discount; empty slots count 0)."""
    idx, valid = top_k(scores, sl.mask, objective.page_size)
    disc = position_discount(idx.shape[-1], objective.discount)
    return discounted_page_value(idx.where(valid, -1)[:, None], item, disc)[:, 0]


def page_term(sl: Slates, scores: torch.Tensor, term: str, objective: Objective) -> torch.Tensor:
    """``[B]`` the realised total of one term on the page ``scores [B, L]`` shows: Σ_pos d(pos) ·
    logged label (a price term: label × price), over the objective's ``page_size`` positions and
    with its discount ``d``; candidates the log did not show have no feedback and count 0. The
    term's columns must be in ``sl``."""
    return _page_total(sl, scores, _term_amount(sl, term), objective)


def page_value(sl: Slates, scores: torch.Tensor, objective: Objective) -> torch.Tensor:
    """``[B]`` the objective's realised value of the page ``scores [B, L]`` shows: Σ_terms value ·
    :func:`page_term` (terms whose columns the log lacks count 0: see :func:`reported_terms`),
    with the page ranked once."""
    item = torch.zeros_like(sl.mask, dtype=torch.float32)
    for term, coef in objective.value.items():
        if coef != 0 and all(c in sl.columns for c in term_columns(term)):
            item = item + float(coef) * _term_amount(sl, term)
    return _page_total(sl, scores, item, objective)


def reported_terms(sl: Slates, goal: LogGoal) -> tuple[list[str], list[str]]:
    """(terms whose realised totals the bench reports, objective terms the log cannot value).
    Reported: every valued objective term the log has the columns of, every fused behaviour, and
    GMV (``order*price``) when the log has orders and prices."""
    terms = [t for t, v in goal.objective.value.items() if v != 0]
    terms += [b for b in goal.behaviours if b not in terms]
    if "order*price" not in terms and "order" in terms:
        terms.append("order*price")
    have = [t for t in terms if all(c in sl.columns for c in term_columns(t))]
    missing = [t for t, v in goal.objective.value.items() if v != 0 and t not in have]
    return have, missing


def _integrated_rl(splits: dict[str, pa.Table], test: Slates, goal: LogGoal,
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
    if goal.objective.fuses_price:
        raise ConfigError(f"{goal.source}: integrated_rl on logs fuses predictions only, but the production weights "
                          "fuse price; drop integrated_rl from --methods or price from production_weights")
    icfg = cfg.integrated_rl.model_copy(update={"seed": cfg.seed})
    objectives = goal.behaviours
    setup = LogSetup(objectives, goal.lam.tolist(), production_log_action(goal.prod, cfg.fusion_floor, icfg).tolist(),
                     cfg.k, cfg.gain)
    pol = fit_integrated_rl_logs(splits["train"], splits["valid"], setup, icfg, floor=cfg.fusion_floor, log=log)
    # fit_integrated_rl_logs logs its own session note (one-request sessions) as it starts
    request_id, scores, action = pol.scores(splits["test"])
    if not np.array_equal(request_id, test.request_id) or scores.shape != test.mask.shape:
        raise AssertionError("integrated_rl: test requests out of step with the bench's")  # both come from to_slates
    powers = action[:, :len(objectives)].numpy()
    # Reported as weights: powers on the simplex (the product fusion's ranking at equal biases).
    return scores.float(), powers / np.maximum(powers.sum(1, keepdims=True), 1e-12), pol.history


def log_ope(table: pa.Table, test: Slates, scores: dict[str, torch.Tensor], weights: dict[str, np.ndarray],
            goal: LogGoal, n_boot: int, seed: int) -> dict[str, Any]:
    """Every estimator's lift of every arm over production on the test requests.

    ``scores``: arm -> ``[B, L]`` scores aligned with ``test``; ``weights``: arm -> ``[K]`` or
    ``[B, K]`` fusion weights where the arm has them (weight-space estimators). Examination comes
    from the requests flagged in a ``randomised`` column when the log has one, else from the
    log's clicks by position. No A/B truth here, so no validation.
    """
    rows = table.take(pa.array(test.row[test.mask.numpy()]))  # the test requests in slate order
    try:
        logged = logged_from_table(rows, goal.objective, goal.behaviours, goal.inputs, goal.price_scale)
        randomised = None
        if RANDOMISED_COLUMN in rows.column_names:
            flag = np.asarray(rows[RANDOMISED_COLUMN].fill_null(False).to_numpy(zero_copy_only=False), bool)
            randomised = np.zeros(logged.position.shape, bool)
            randomised[logged.mask] = flag  # rows are in (request, slot) order
            randomised = randomised.any(1)
        exam, source = examination_from_log(logged, goal.objective.page_size, randomised)
    except DataError as exc:
        return {"estimates": {}, "skipped": {"all": str(exc)}}
    P = goal.objective.page_size
    arms = {}
    for m, sc in scores.items():
        idx, valid = top_k(sc, test.mask, P)
        pages = np.where(valid.numpy(), idx.numpy(), -1).astype(np.int64)
        if pages.shape[1] < P:  # requests with fewer than P candidates: empty slots
            pages = np.pad(pages, ((0, 0), (0, P - pages.shape[1])), constant_values=-1)
        w = weights.get(m)
        arms[m] = ArmTarget(pages=pages, weights=None if w is None else np.asarray(w, dtype=np.float64))
    out = run_ope(logged, arms, page_objective(goal.objective, goal.price_scale, realised=False), exam,
                  n_boot=n_boot, seed=seed)
    out["examination"] = {"source": source, "fitted": exam.round(4).tolist()}
    return out


def objective_used(goal: LogGoal) -> dict[str, Any]:
    """The objective as the bench used it: production weights over the fusion inputs (normalised;
    never null) and the price scale resolved."""
    used = goal.objective.model_dump(mode="json")
    used["production_weights"] = dict(zip(goal.inputs, goal.prod.round(6).tolist()))
    if goal.objective.fuses_price or any(PRICE in term_factors(t) for t in used["value"]):
        used["price_scale"] = round(goal.price_scale, 6)
    return used


def _notes(goal: LogGoal, unvalued: list[str],
           irl_history: list[dict[str, Any]] | None) -> list[str]:
    """What a reader of the results must know about how they were measured."""
    notes = []
    if goal.is_default:
        notes.append(f"objective: {goal.source}")
    if unvalued:
        notes.append(f"objective terms {unvalued} have no logged columns in the test split "
                     "(label_<name>, price), so they count 0 in the page value")
    for rec in irl_history or []:
        if rec.get("note"):
            notes.append(f"integrated_rl: {rec['note']}")
    return notes


def run_log_bench(cfg: LogBenchConfig, data: Path, mapping: Path | None, out_dir: str | Path,
                  log: Callable[[str], None] = print, policies: dict[str, GradePolicy] | None = None) -> dict[str, Any]:
    """Tune on valid, report on test, write ``bench.json``; returns its content. ``policies``
    (arm name -> saved policy, for ``blendrank eval``) are reported as arms too."""
    policies = policies or {}
    methods = [*registry.parse_methods(cfg.methods, "logs"), *policies]
    timings: dict[str, float] = {}
    t = time.perf_counter()
    splits = load_splits(Path(data), mapping, cfg)
    goal = log_goal(Path(data), splits, cfg, log)
    objectives = goal.behaviours
    test = _slates(splits["test"], objectives)
    f_test = _featurise(test, goal, cfg)
    timings["data"] = time.perf_counter() - t
    weights = {"production": goal.prod}
    if "static_search" in methods:
        t = time.perf_counter()
        log("static_search: started")
        res = tune_static(splits[cfg.static_search_split], goal, cfg)
        weights["static_search"] = res.best_weights
        timings["static_search"] = time.perf_counter() - t
        log(f"static_search ({cfg.static_search.method}, {res.n_evals} vectors): "
            f"{dict(zip(goal.inputs, np.round(res.best_weights, 3).tolist()))} "
            f"({timings['static_search']:.1f} s)")
    curves = {}
    grade_notes: list[str] = []
    for m in [m for m in methods if registry.is_grade(m)]:
        t = time.perf_counter()
        log(f"{m}: started")
        resolved = _grade(cfg, goal, m, splits["train"])
        grade_notes = resolved.notes()
        pol = registry.fit_method(resolved, splits["train"], goal.objective, goal.spec(cfg))
        weights[m] = pol.weights(pol.batch(splits["test"])).numpy()
        curves[m] = [{k: v for k, v in r.items() if k != "mean_weights"} for r in pol.history if "step" in r]
        timings[m] = time.perf_counter() - t
        log(f"{m}: done in {timings[m]:.1f} s")
    for m, pol in policies.items():
        if pol.spec.inputs != goal.inputs:
            raise ConfigError(f"{m}: the policy fuses {pol.spec.inputs} but the objective ({goal.source}) fuses "
                              f"{goal.inputs}; evaluate it with the objective it was trained for (--objective)")
        weights[m] = pol.weights(pol.batch(splits["test"])).numpy()
    scores = {m: fuse(f_test, torch.as_tensor(w, dtype=torch.float32)) for m, w in weights.items()}
    if "logged" in methods:  # the order the log showed: shown items by position, unshown after
        pos = torch.nan_to_num(test.columns["position"], nan=1e9) if "position" in test.columns else None
        if pos is None:
            raise ConfigError(f"{data}: the logged arm needs a position column; map one or drop logged from --methods")
        scores["logged"] = -pos
    if "integrated_rl" in methods:
        t = time.perf_counter()
        log("integrated_rl: started")
        scores["integrated_rl"], weights["integrated_rl"], curves["integrated_rl"] = _integrated_rl(
            splits, test, goal, cfg, log)
        timings["integrated_rl"] = time.perf_counter() - t
        log(f"integrated_rl: done in {timings['integrated_rl']:.1f} s")
    offline, composite = {}, {}
    realised: dict[str, dict[str, np.ndarray]] = {}  # arm -> value@k / term@k -> [B] per request
    P = goal.objective.page_size
    value_name = f"value@{P}"
    terms, unvalued = reported_terms(test, goal)
    if unvalued:
        log(f"objective terms {unvalued} have no logged columns: they count 0 in {value_name}")
    for m in methods:
        offline[m], composite[m] = _evaluate(test, scores[m], objectives, goal.lam, cfg)
        realised[m] = {value_name: page_value(test, scores[m], goal.objective).numpy()}
        realised[m].update({term_metric(t, P): page_term(test, scores[m], t, goal.objective).numpy()
                            for t in terms})
        for name, per_request in realised[m].items():
            mean, lo, hi = bootstrap_ci(per_request, cfg.n_boot, cfg.seed)
            offline[m][name] = {"mean": mean, "ci95": [lo, hi]}
    value_metric = f"composite_ndcg@{cfg.k}"

    def lifts_vs(base: str) -> dict[str, dict[str, dict[str, Any]]]:
        out = {}
        for m in methods:
            if m != base:
                rel, lo, hi = paired_bootstrap_rel_lift(composite[m], composite[base], cfg.n_boot, cfg.seed)
                out[m] = {value_metric: {"rel": rel, "ci95": [lo, hi]}}
                for name, base_values in realised[base].items():
                    if base_values.sum() > 0:  # a relative lift needs a non-zero baseline
                        rel, lo, hi = paired_bootstrap_rel_lift(realised[m][name], base_values,
                                                                cfg.n_boot, cfg.seed)
                        out[m][name] = {"rel": rel, "ci95": [lo, hi]}
        return out

    lifts = lifts_vs("production")
    ope = None
    if cfg.ope:
        t = time.perf_counter()
        weight_arms = {m: w for m, w in weights.items() if m != "integrated_rl"}  # its are powers
        ope = log_ope(splits["test"], test, {m: scores[m] for m in methods}, weight_arms, goal, cfg.n_boot, cfg.seed)
        timings["ope"] = time.perf_counter() - t
    notes = _notes(goal, unvalued, curves.get("integrated_rl"))
    used = objective_used(goal)
    bench = {
        "data": str(data), "mapping": str(mapping) if mapping is not None else None,
        "config": "logs",
        "seed": cfg.seed, "n_eval_requests": len(test),
        "baseline_arm": "production", "value_metric": value_metric, "page_value_metric": value_name,
        "realised_terms": {term_metric(t, P): t for t in terms},
        "objectives": objectives, "objective_weights": dict(zip(objectives, goal.lam.round(4).tolist())),
        "objective": used, "objective_source": goal.source, "objective_default": goal.is_default,
        "test_split": data_splits.describe_test_split(Path(data), mapping, test_frac=cfg.test_frac,
                                                      test_where=cfg.test_where),
        "notes": notes, "grade_notes": grade_notes,
        "arms": {m: {k: v["mean"] for k, v in offline[m].items()} for m in methods},
        "offline": offline, "lifts": lifts,
        "weights": {"fusion_inputs": goal.inputs,
                    "global": {m: np.round(np.atleast_2d(w).mean(0), 4).tolist() for m, w in weights.items()}},
        "learning_curves": curves,
        "split_requests": {s: int(pc.count_distinct(t_["request_id"]).as_py()) for s, t_ in splits.items()},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "ci_method": "percentile bootstrap over test requests (paired for lifts)",
        # the settings, with the objective and production weights actually used (not the null
        # that means "find objective.yaml"): a record of the run, not a config to load again
        "bench_config": {**cfg.model_dump(mode="json"), "objective": used,
                         "objective_source": goal.source,
                         "production_weights": used["production_weights"]},
    }
    if "static_search" in methods:
        bench["lifts_vs_static"] = lifts_vs("static_search")
    if ope is not None:
        bench["ope"] = ope
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", bench)  # atomic: a failed run never leaves half a bench.json
    return bench
