"""The ``marketplace`` world: a seeded generative model of e-commerce search with known ground truth.

Equations and every parameter are documented in ``docs/worlds.md``. Shapes: ``B`` requests,
``L`` candidates per request, ``P`` shown page size, ``K`` fusion inputs (objective predictions
followed by the relative price).

The world is fully determined by its config (entities from ``seed``); request streams are drawn
from independent generators keyed by ``(seed, stream, chunk)`` so shards can be produced in any
order or in parallel and still be identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field, model_validator

from blendrank.config import BaseConfig
from blendrank.fusion.formulas import Formula, fuse, fusion_features, top_k
from blendrank.objective import Objective


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


class SegmentSpec(BaseConfig):
    """One latent user segment. Users draw their parameters around the segment's values."""

    name: str = Field(description="Segment name, e.g. 'browsers'.")
    share: float = Field(gt=0, description="Relative share of users in this segment.")
    click_bias: float = Field(description="Mean click-propensity logit a_u.")
    order_bias: float = Field(description="Mean post-click purchase-propensity logit b_u.")
    budget_log_mean: float = Field(description="Mean of log budget (price units).")
    budget_log_std: float = Field(0.4, gt=0, description="Std of log budget across users.")
    price_sensitivity: float = Field(ge=0, description="Mean gamma_u: order-logit penalty per unit of log-price over budget.")
    pred_click_bias: float = Field(0.0, description="Logit miscalibration of the logged click predictor for this segment.")
    pred_order_bias: float = Field(0.0, description="Logit miscalibration of the logged post-click order predictor.")
    extra_shift: dict[str, float] = Field(default_factory=dict, description="Per extra-objective logit shift for this segment.")
    age_bucket_mean: float = Field(2.0, description="Mean of the observable age bucket feature (0..5), a noisy segment hint.")


class ExtraObjectiveSpec(BaseConfig):
    """A post-click behaviour beyond click and order (e.g. add-to-cart, favourite)."""

    name: str = Field(description="Objective name; becomes label_<name> / pred_<name>.")
    base_logit: float = Field(description="Base post-click logit.")
    quality_coef: float = Field(0.5, description="Weight of item quality in the logit.")
    order_coupling: float = Field(0.5, description="Weight of the order logit (correlation with buying).")
    value_weight: float = Field(0.0, ge=0, description="Weight of this behaviour in the business value.")


class ValueSpec(BaseConfig):
    """The world's business value of a shown page (expected, position-discounted by examination)."""

    click: float = Field(0.4, ge=0, description="Value of one click.")
    order: float = Field(0.0, ge=0, description="Value of one order.")
    gmv: float = Field(1.0, ge=0, description="Value of one unit of GMV, in units of the world's median price.")


class SessionSpec(BaseConfig):
    """Optional session model: after each page the user continues with P(continue | satisfaction)."""

    enabled: bool = Field(False, description="Generate multi-request sessions.")
    continue_base: float = Field(0.0, description="Continue logit at zero satisfaction.")
    continue_slope: float = Field(1.5, description="Continue logit per expected click on the last page.")
    max_length: int = Field(10, ge=1, description="Cap on requests per session.")


class MarketplaceConfig(BaseConfig):
    """Every parameter of the marketplace world. See docs/worlds.md for the equations."""

    seed: int = Field(0, description="Seed for the world's entities and request streams.")
    n_items: int = Field(5000, ge=10, description="Items in the pool.")
    n_categories: int = Field(20, ge=1, description="Item categories (also the query space).")
    n_users: int = Field(20000, ge=1, description="Users.")
    latent_dim: int = Field(8, ge=1, description="Dimension of user/item latent vectors.")
    segments: list[SegmentSpec] = Field(description="Latent user segments.")
    extra_objectives: list[ExtraObjectiveSpec] = Field(default_factory=list, description="Post-click objectives beyond click and order.")
    value: ValueSpec = Field(default_factory=ValueSpec, description="Business value weights.")
    candidates: int = Field(50, ge=2, description="Candidates per request (L).")
    page_size: int = Field(10, ge=1, description="Items shown per page (P).")
    position_bias: float = Field(0.8, ge=0, description="eta in the examination probability 1/pos^eta.")
    query_relevance: float = Field(3.0, ge=0, description="Candidate-sampling log-boost of the query's own category.")
    affinity_scale: float = Field(1.0, ge=0, description="Weight of user-item latent affinity in the click logit.")
    quality_click: float = Field(0.5, description="Weight of item quality in the click logit.")
    quality_order: float = Field(0.6, description="Weight of item quality in the order logit.")
    price_click: float = Field(0.3, ge=0, description="Click-logit penalty per unit of log-price over budget.")
    price_log_mean_range: tuple[float, float] = Field((2.5, 5.5), description="Range of per-category mean log price.")
    price_log_std: float = Field(0.8, gt=0, description="Within-category std of log price.")
    pred_noise: float = Field(0.5, ge=0, description="Std of per-(request,item) logit noise of the logged predictor.")
    pred_item_noise: float = Field(0.3, ge=0, description="Std of a fixed per-item logit error of the logged predictor.")
    fusion: Formula = Field("log_linear", description="Fusion formula used by the logging policy.")
    fusion_floor: float = Field(1e-3, gt=0, description="Floor b_k inside log(p + b_k).")
    production_weights: list[float] | None = Field(None, description="Production fusion weights over [objectives..., price]; default puts most weight on click and order.")
    logging_concentration: float = Field(200.0, gt=0, description="kappa_0: logged weights ~ Dir(kappa_0 * production).")
    session: SessionSpec = Field(default_factory=SessionSpec, description="Session model.")
    ms_between_requests: int = Field(1000, ge=1, description="Mean gap between request timestamps (ms).")
    start_ts: int = Field(1_700_000_000_000, description="Timestamp of the first request (ms).")

    @model_validator(mode="after")
    def _check(self) -> MarketplaceConfig:
        if self.page_size > self.candidates:
            raise ValueError("page_size must not exceed candidates")
        names = [o.name for o in self.extra_objectives]
        if len(set(names)) != len(names) or {"click", "order", "price"} & set(names):
            raise ValueError("extra objective names must be unique and not click/order/price")
        if self.production_weights is not None:
            k = 3 + len(self.extra_objectives)
            if len(self.production_weights) != k or min(self.production_weights) <= 0:
                raise ValueError(f"production_weights needs {k} positive entries (objectives..., price)")
        return self

    @property
    def objectives(self) -> list[str]:
        return ["click", "order", *[o.name for o in self.extra_objectives]]

    @property
    def fusion_inputs(self) -> list[str]:
        return [*self.objectives, "price"]


#: The marketplace business's guard rails: CTR and CVR may lose 0.5%, orders per impression nothing.
DEFAULT_GUARDRAILS: dict[str, float] = {"ctr": 0.005, "cvr": 0.005, "opm": 0.0}


@dataclass(frozen=True)
class Requests:
    """A batch of requests. ``cand`` holds item indices ``[B, L]``."""

    user: np.ndarray  # [B] int
    query: np.ndarray  # [B] int category
    cand: np.ndarray  # [B, L] int item index
    pred_noise: np.ndarray  # [B, L, 2 + E] logit noise of the logged predictor

    def __len__(self) -> int:
        return len(self.user)


@dataclass(frozen=True)
class TruthBatch:
    """True probabilities at examination 1 (position-free), all ``[B, L]``."""

    click: np.ndarray
    order: np.ndarray  # post-click conversion
    extras: np.ndarray  # [B, L, E] post-click extra behaviours
    price: np.ndarray

    def item_value(self, value: ValueSpec, extra_weights: np.ndarray, price_scale: float) -> np.ndarray:
        """Expected value of showing each candidate at examination 1: ``[B, L]``."""
        post = value.click + self.order * (value.order + value.gmv * self.price / price_scale)
        if extra_weights.size:
            post = post + self.extras @ extra_weights
        return self.click * post


class MarketplaceWorld:
    """Entities and response model of the marketplace world (see docs/worlds.md)."""

    def __init__(self, config: MarketplaceConfig):
        self.config = cfg = config
        rng = np.random.default_rng([cfg.seed, 0])
        d, C = cfg.latent_dim, cfg.n_categories
        # Items: category, price (log-normal per category), quality, latent vector.
        self.cat_emb = rng.normal(size=(C, d)) / np.sqrt(d)
        cat_pop = rng.dirichlet(np.full(C, 2.0))
        self.item_cat = rng.choice(C, size=cfg.n_items, p=cat_pop)
        lo, hi = cfg.price_log_mean_range
        cat_price_mu = rng.uniform(lo, hi, size=C)
        self.item_price = np.exp(rng.normal(cat_price_mu[self.item_cat], cfg.price_log_std)).astype(np.float64)
        self.item_quality = rng.normal(size=cfg.n_items)
        self.item_vec = self.cat_emb[self.item_cat] + rng.normal(scale=0.5 / np.sqrt(d), size=(cfg.n_items, d))
        self.item_logpop = 0.7 * self.item_quality + rng.normal(scale=0.5, size=cfg.n_items)
        self.item_pred_err = rng.normal(scale=cfg.pred_item_noise, size=(cfg.n_items, 2 + len(cfg.extra_objectives)))
        self.price_scale = float(np.median(self.item_price))
        # Users: segment, latent vector, propensities, budget, price sensitivity.
        shares = np.array([s.share for s in cfg.segments], dtype=float)
        self.user_segment = rng.choice(len(cfg.segments), size=cfg.n_users, p=shares / shares.sum())
        seg = cfg.segments
        pick = lambda attr: np.array([getattr(s, attr) for s in seg])[self.user_segment]  # noqa: E731
        self.user_vec = rng.normal(size=(cfg.n_users, d)) / np.sqrt(d) * 2.0
        self.user_click = pick("click_bias") + rng.normal(scale=0.3, size=cfg.n_users)
        self.user_order = pick("order_bias") + rng.normal(scale=0.3, size=cfg.n_users)
        self.user_logbudget = rng.normal(pick("budget_log_mean"), pick("budget_log_std"))
        self.user_price_sens = pick("price_sensitivity") * np.exp(rng.normal(scale=0.2, size=cfg.n_users))
        self.user_query_logits = self.user_vec @ self.cat_emb.T * 2.0 + np.log(cat_pop)[None, :]
        E = len(cfg.extra_objectives)
        self.seg_extra_shift = np.array([[s.extra_shift.get(o.name, 0.0) for o in cfg.extra_objectives] for s in seg]).reshape(len(seg), E)
        self.seg_pred_bias = np.array([[s.pred_click_bias, s.pred_order_bias] for s in seg])
        # Observable user features: noisy hints of the latent segment and propensities.
        self.user_age_bucket = np.clip(np.rint(rng.normal(pick("age_bucket_mean"), 1.0)), 0, 5).astype(np.int64)
        self.user_device = rng.choice(3, size=cfg.n_users, p=[0.6, 0.3, 0.1])
        self.user_clicks_30d = rng.poisson(30 * _sigmoid(self.user_click))
        self.user_orders_30d = rng.poisson(30 * _sigmoid(self.user_click) * _sigmoid(self.user_order))
        self.user_avg_price = np.exp(self.user_logbudget + rng.normal(scale=0.3, size=cfg.n_users))
        self.item_rating = self.item_quality + rng.normal(scale=0.5, size=cfg.n_items)
        self.extra_weights = np.array([o.value_weight for o in cfg.extra_objectives], dtype=float)

    # ----------------------------------------------------------------------------- requests
    @property
    def objectives(self) -> list[str]:
        return self.config.objectives

    def production_weights(self) -> np.ndarray:
        """Production fusion weights over ``fusion_inputs`` (on the simplex)."""
        cfg = self.config
        if cfg.production_weights is not None:
            w = np.array(cfg.production_weights, dtype=float)
        else:
            # Hand-set default: mostly CTR and CTCVR, a little price, small extras.
            w = np.array([0.5, 0.35] + [0.05] * len(cfg.extra_objectives) + [0.1])
        return w / w.sum()

    def objective(self, guardrails: dict[str, float] | None = None) -> Objective:
        """The world's own business objective: its true value (clicks, orders, GMV in units of
        the median price, extra behaviours), the production formula, and the guard rails
        (default :data:`DEFAULT_GUARDRAILS`)."""
        v = self.config.value
        extras = {o.name: o.value_weight for o in self.config.extra_objectives}
        return Objective(value={"click": v.click, "order": v.order, "order*price": v.gmv, **extras},
                         page_size=self.config.page_size,
                         guardrails=DEFAULT_GUARDRAILS if guardrails is None else guardrails,
                         production_weights=dict(zip(self.config.fusion_inputs, self.production_weights().tolist())),
                         price_scale=self.price_scale)

    def sample_requests(self, n: int, rng: np.random.Generator, users: np.ndarray | None = None) -> Requests:
        """Draw ``n`` requests: user, query category, and ``L`` distinct candidates each."""
        cfg = self.config
        user = rng.integers(cfg.n_users, size=n) if users is None else np.asarray(users)
        # Query category ~ softmax(user preference) via Gumbel-max.
        q_logits = self.user_query_logits[user] + rng.gumbel(size=(n, cfg.n_categories))
        query = q_logits.argmax(1)
        # Candidates without replacement: Gumbel top-L over popularity + query relevance.
        cand = np.empty((n, cfg.candidates), dtype=np.int64)
        base = torch.from_numpy(self.item_logpop)
        for s in range(0, n, 512):
            q = query[s : s + 512]
            logits = base[None, :] + cfg.query_relevance * torch.from_numpy(self.item_cat[None, :] == q[:, None])
            g = torch.from_numpy(rng.gumbel(size=(len(q), cfg.n_items)))
            cand[s : s + 512] = torch.topk(logits + g, cfg.candidates, dim=1).indices.numpy()
        noise = rng.normal(scale=cfg.pred_noise, size=(n, cfg.candidates, 2 + len(cfg.extra_objectives)))
        return Requests(user=user, query=query, cand=cand, pred_noise=noise)

    # ----------------------------------------------------------------------------- ground truth
    def _logits(self, req: Requests) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cfg = self.config
        u, c = req.user[:, None], req.cand
        affinity = np.einsum("bd,bld->bl", self.user_vec[req.user], self.item_vec[c])
        over_budget = _softplus(np.log(self.item_price[c]) - self.user_logbudget[u])
        click = (
            self.user_click[u]
            + cfg.affinity_scale * affinity
            + cfg.quality_click * self.item_quality[c]
            + 0.5 * (self.item_cat[c] == req.query[:, None])
            - cfg.price_click * over_budget
        )
        order = self.user_order[u] + cfg.quality_order * self.item_quality[c] + 0.5 * affinity - self.user_price_sens[u] * over_budget
        E = len(cfg.extra_objectives)
        extras = np.empty(c.shape + (E,))
        seg = self.user_segment[req.user]
        for j, o in enumerate(cfg.extra_objectives):
            extras[..., j] = o.base_logit + o.quality_coef * self.item_quality[c] + o.order_coupling * order + self.seg_extra_shift[seg, j][:, None]
        return click, order, extras

    def truth(self, req: Requests) -> TruthBatch:
        click, order, extras = self._logits(req)
        return TruthBatch(click=_sigmoid(click), order=_sigmoid(order), extras=_sigmoid(extras), price=self.item_price[req.cand])

    def predictions(self, req: Requests) -> dict[str, np.ndarray]:
        """The logged (deployed) predictor: true logits + per-segment miscalibration + noise.

        Returns ``pred_<objective>`` arrays ``[B, L]`` of unconditional probabilities per
        impression (``pred_order`` = pCTR·pCVR, extras likewise), plus ``pred_cvr``.
        """
        click, order, extras = self._logits(req)
        seg = self.user_segment[req.user]
        err = self.item_pred_err[req.cand] + req.pred_noise
        p_click = _sigmoid(click + self.seg_pred_bias[seg, 0][:, None] + err[..., 0])
        p_cvr = _sigmoid(order + self.seg_pred_bias[seg, 1][:, None] + err[..., 1])
        out = {"click": p_click, "order": p_click * p_cvr, "cvr": p_cvr}
        for j, o in enumerate(self.config.extra_objectives):
            out[o.name] = p_click * _sigmoid(extras[..., j] + err[..., 2 + j])
        return out

    def fusion_inputs(self, req: Requests, preds: dict[str, np.ndarray] | None = None) -> torch.Tensor:
        """``[B, L, K]`` fusion inputs: objective predictions then price / median price."""
        preds = self.predictions(req) if preds is None else preds
        cols = [preds[name] for name in self.objectives] + [self.item_price[req.cand] / self.price_scale]
        return torch.from_numpy(np.stack(cols, axis=-1)).float()

    def features(self, req: Requests, ts: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Observable ``f_*`` features: per request (user and context, ``[B]``) and per candidate
        (item, ``[B, L]``). The latent segment and propensities are never exposed."""
        user = req.user
        per_request = {
            "f_user_age_bucket": self.user_age_bucket[user],
            "f_user_device": self.user_device[user],
            "f_user_clicks_30d": self.user_clicks_30d[user].astype(np.float32),
            "f_user_orders_30d": self.user_orders_30d[user].astype(np.float32),
            "f_user_avg_price": self.user_avg_price[user].astype(np.float32),
            "f_ctx_query_cat": req.query,
            "f_ctx_hour": (np.asarray(ts) // 3_600_000) % 24,
        }
        per_candidate = {
            "f_item_cat": self.item_cat[req.cand],
            "f_item_rating": self.item_rating[req.cand].astype(np.float32),
            "f_item_log_price": np.log(self.item_price[req.cand]).astype(np.float32),
        }
        return per_request, per_candidate

    def examination(self) -> np.ndarray:
        """``[P]`` examination probability of each shown position."""
        pos = np.arange(1, self.config.page_size + 1, dtype=float)
        return pos ** -self.config.position_bias

    def page_metrics(self, truth: TruthBatch, shown: np.ndarray) -> dict[str, np.ndarray]:
        """Expected outcomes of showing ``shown`` (``[B, P]`` or ``[B, G, P]`` candidate indices).

        Returns per-request (or per request × group) expected clicks, orders, gmv, extra
        behaviours and the business ``value``.
        """
        exam = self.examination()[: shown.shape[-1]]
        flat = shown.reshape(shown.shape[0], -1)
        take = lambda a: np.take_along_axis(a, flat, axis=1).reshape(shown.shape)  # noqa: E731
        clicks_at = take(truth.click) * exam
        orders_at = clicks_at * take(truth.order)
        gmv_at = orders_at * take(truth.price)
        v = self.config.value
        out = {"impressions": np.full(shown.shape[:-1], float(shown.shape[-1])), "clicks": clicks_at.sum(-1), "orders": orders_at.sum(-1), "gmv": gmv_at.sum(-1)}
        value = v.click * out["clicks"] + v.order * out["orders"] + v.gmv * out["gmv"] / self.price_scale
        for j, o in enumerate(self.config.extra_objectives):
            ex = clicks_at * np.take_along_axis(truth.extras[..., j], flat, axis=1).reshape(shown.shape)
            out[o.name] = ex.sum(-1)
            value = value + o.value_weight * out[o.name]
        out["value"] = value
        return out

    def rank(self, inputs: torch.Tensor, weights: torch.Tensor) -> np.ndarray:
        """Fuse ``inputs [B, L, K]`` with ``weights`` (``[K]``, ``[B, K]`` or ``[B, G, K]``) and
        return the shown page's candidate indices ``[B, P]`` or ``[B, G, P]``."""
        feats = fusion_features(inputs, self.config.fusion, self.config.fusion_floor)
        idx, _ = top_k(fuse(feats, weights.to(feats.dtype)), None, self.config.page_size)
        return idx.numpy()

    def true_score_page(self, truth: TruthBatch) -> np.ndarray:
        """The true-score ceiling: rank by each candidate's true expected value. ``[B, P]``."""
        iv = truth.item_value(self.config.value, self.extra_weights, self.price_scale)
        return np.argsort(-iv, axis=1, kind="stable")[:, : self.config.page_size]
