"""Logged requests, the page objective and the fusion of pages for off-policy estimation.

Shapes: ``B`` requests, ``L`` candidate slots per request (padded), ``P`` page positions,
``K`` fusion inputs. Positions are 1-based; 0 means "not shown". A page is ``[B, P]`` candidate
slot indices into ``L``, best first, with ``-1`` for an empty slot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from blendrank.errors import DataError

__all__ = [
    "LoggedRequests",
    "PageObjective",
    "check_propensity",
    "dirichlet_log_density",
    "logged_requests_from_table",
    "pages_from_weights",
    "positions_from_pages",
]


def dirichlet_log_density(w: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``log Dir(w; alpha)`` w.r.t. Lebesgue measure on the first ``K - 1`` coordinates.

    Args:
        w: ``[B, K]`` points on the simplex (strictly inside).
        alpha: ``[K]`` or ``[B, K]`` concentrations, > 0.

    Returns:
        ``[B]`` float64 log densities. Same computation as the worlds' logging policy, so a
        density recomputed here for the logging ``alpha`` is bit-identical to the logged one.
    """
    a = torch.tensor(np.asarray(alpha, dtype=np.float64))  # a copy: inputs may be read-only views
    return torch.distributions.Dirichlet(a).log_prob(
        torch.tensor(np.asarray(w, dtype=np.float64))).numpy()


def check_propensity(propensity: np.ndarray | None, n_requests: int) -> np.ndarray:
    """``[B]`` float64 propensities, or a :class:`DataError` naming the column ``propensity``.

    Weight-space importance weights divide by the logged density of the logged weight vector,
    so a missing, zero, negative or non-finite value makes them undefined.
    """
    if propensity is None:
        raise DataError(
            "column `propensity` is missing: weight-space estimators need the logging policy's "
            "density of each logged weight vector (the worlds log it; see docs/ope.md)")
    p = np.asarray(propensity, dtype=np.float64)
    if p.shape != (n_requests,):
        raise DataError(f"column `propensity` must have one value per request ({n_requests}); "
                        f"got shape {p.shape}")
    bad = ~np.isfinite(p) | (p <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"column `propensity`: {int(bad.sum())} request(s) have a missing, zero, negative or "
            f"non-finite value (first: request index {i}, value {p[i]!r}); it must be the "
            "logging policy's density (> 0, finite) of the logged weight vector")
    return p


@dataclass(frozen=True)
class PageObjective:
    """The business value of a page: ``V = sum_p d(p) * sum_t c_t * prod_{f in t} y_f``.

    Attributes:
        coefs: term -> coefficient; a term is a behaviour name (``"click"``) or a product of
            behaviours and ``price`` (``"order*price"`` is GMV, price divided by
            ``price_scale``).
        discount: ``[P]`` weight of realised feedback at each position, ``d(p)``. Ones when the
            value counts every realised behaviour (the worlds' A/B value): examination is
            already in the feedback and is *not* a discount (it is the estimators'
            ``examination``).
        price_scale: price divisor inside value terms (e.g. the median price).
    """

    coefs: Mapping[str, float]
    discount: np.ndarray
    price_scale: float = 1.0
    terms: tuple[tuple[float, tuple[str, ...]], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        terms = []
        for term, c in self.coefs.items():
            factors = tuple(f.strip() for f in term.split("*"))
            if not all(factors):
                raise ValueError(f"objective term {term!r} has an empty factor")
            if float(c) != 0.0:
                terms.append((float(c), factors))
        object.__setattr__(self, "terms", tuple(terms))
        object.__setattr__(self, "discount", np.asarray(self.discount, dtype=np.float64))
        if self.discount.ndim != 1 or self.discount.size == 0:
            raise ValueError(f"discount must be [P]; got shape {self.discount.shape}")
        if not self.price_scale > 0:
            raise ValueError(f"price_scale must be > 0; got {self.price_scale}")

    def behaviours(self) -> set[str]:
        """Behaviour names the value needs (every factor but ``price``)."""
        return {f for _, fs in self.terms for f in fs if f != "price"}

    def item_value(self, per_item: Mapping[str, np.ndarray], price: np.ndarray | None) -> np.ndarray:
        """``[B, L]`` ``sum_t c_t * prod_f x_f`` of per-item behaviours ``x`` (labels or
        predictions, name -> ``[B, L]``); ``price`` ``[B, L]`` for terms with a price factor."""
        missing = sorted(self.behaviours() - set(per_item))
        if missing:
            raise DataError(f"the objective needs behaviour(s) {missing}; available: "
                            f"{sorted(per_item)}")
        shape = next(iter(per_item.values())).shape if per_item else np.shape(price)
        out = np.zeros(shape, dtype=np.float64)
        for c, factors in self.terms:
            prod = np.full(shape, c, dtype=np.float64)
            for f in factors:
                if f == "price":
                    if price is None:
                        raise DataError("an objective term uses `price` but the log has no price")
                    prod = prod * (np.asarray(price, dtype=np.float64) / self.price_scale)
                else:
                    prod = prod * per_item[f]
            out += prod
        return out


@dataclass(frozen=True)
class LoggedRequests:
    """Logged traffic, one padded row per request.

    Attributes:
        position: ``[B, L]`` int, logged 1-based position, 0 = not shown (and padding).
        labels: behaviour -> ``[B, L]`` realised feedback (0 where not shown).
        preds: behaviour -> ``[B, L]`` model predictions at examination 1 (the MTL's).
        price: ``[B, L]`` or None.
        mask: ``[B, L]`` bool, True for real candidates.
        inputs: ``[B, L, K]`` fusion inputs (only :func:`pages_from_weights` reads them), or None.
        weights: ``[B, K]`` logged fusion weight vector per request, or None.
        propensity: ``[B]`` logging density of ``weights``, or None; checked when given.
    """

    position: np.ndarray
    labels: Mapping[str, np.ndarray]
    preds: Mapping[str, np.ndarray]
    price: np.ndarray | None = None
    mask: np.ndarray | None = None
    inputs: np.ndarray | None = None
    weights: np.ndarray | None = None
    propensity: np.ndarray | None = None

    def __post_init__(self) -> None:
        pos = np.asarray(self.position)
        if pos.ndim != 2:
            raise ValueError(f"position must be [B, L]; got shape {pos.shape}")
        pos = np.nan_to_num(pos.astype(np.float64), nan=0.0).astype(np.int64)
        if (pos < 0).any():
            raise DataError("column `position` has negative values; use 0 (or null) for not shown")
        B, L = pos.shape
        object.__setattr__(self, "position", pos)
        mask = np.ones((B, L), bool) if self.mask is None else np.asarray(self.mask, bool)
        if mask.shape != (B, L):
            raise ValueError(f"mask must be [B, L] = {(B, L)}; got {mask.shape}")
        object.__setattr__(self, "mask", mask)
        for kind in ("labels", "preds"):
            arrays = {k: np.asarray(v, dtype=np.float64) for k, v in getattr(self, kind).items()}
            for k, v in arrays.items():
                if v.shape != (B, L):
                    raise ValueError(f"{kind}[{k!r}] must be [B, L] = {(B, L)}; got {v.shape}")
            object.__setattr__(self, kind, arrays)
        if self.price is not None:
            object.__setattr__(self, "price", np.asarray(self.price, dtype=np.float64))
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float64)
            if w.ndim != 2 or w.shape[0] != B:
                raise ValueError(f"weights must be [B, K] with B = {B}; got {w.shape}")
            object.__setattr__(self, "weights", w)
        if self.propensity is not None:
            object.__setattr__(self, "propensity", check_propensity(self.propensity, B))

    @property
    def n_requests(self) -> int:
        return self.position.shape[0]


def pages_from_weights(inputs: np.ndarray, weights: np.ndarray, page_size: int,
                       mask: np.ndarray | None = None, floor: float = 1e-3) -> np.ndarray:
    """Top-``page_size`` pages of the log-linear fusion ``score = sum_k w_k log(x_k + floor)``.

    Args:
        inputs: ``[B, L, K]`` non-negative fusion inputs.
        weights: ``[K]`` or ``[B, K]``.
        page_size: ``P``.
        mask: ``[B, L]`` True for real candidates (None: all real).
        floor: keeps the log finite at 0.

    Returns:
        ``[B, P]`` int64 slot indices, best first (stable on ties); ``-1`` where a request has
        fewer than ``P`` real candidates.
    """
    x = np.log(np.asarray(inputs, dtype=np.float64) + floor)
    w = np.asarray(weights, dtype=np.float64)
    score = x @ w if w.ndim == 1 else np.einsum("blk,bk->bl", x, w)
    if mask is not None:
        score = np.where(mask, score, -np.inf)
    order = np.argsort(-score, axis=1, kind="stable")[:, :page_size]
    if mask is not None:
        order = np.where(np.take_along_axis(mask, order, 1), order, -1)
    return order.astype(np.int64)


def positions_from_pages(pages: np.ndarray, n_slots: int) -> np.ndarray:
    """``[B, L]`` 1-based positions of a ``[B, P]`` page (0 = not shown, ``-1`` slots skipped)."""
    pos = np.zeros((pages.shape[0], n_slots), dtype=np.int64)
    rows, cols = np.nonzero(pages >= 0)
    pos[rows, pages[rows, cols]] = cols + 1
    return pos


def _column(table: pa.Table, name: str, why: str) -> np.ndarray:
    if name not in table.column_names:
        raise DataError(f"the log has no column `{name}` ({why})")
    return table.column(name).to_numpy(zero_copy_only=False)


def logged_requests_from_table(
    table: pa.Table,
    behaviours: Sequence[str],
    *,
    fusion_inputs: Sequence[str] | None = None,
    price_scale: float = 1.0,
    require_propensity: bool = True,
    label_only: Sequence[str] = (),
) -> LoggedRequests:
    """Contract rows (one per candidate, a request's rows in candidate order) -> padded arrays.

    Columns read: ``request_id``, ``position`` (null = not shown), ``label_<b>`` and ``pred_<b>``
    for each behaviour, ``price`` when present, ``propensity`` and ``logging_w_<input>`` when
    ``fusion_inputs`` is given (the first row of each request is used), and only ``label_<b>``
    for each behaviour of ``label_only`` (feedback no model predicts, e.g. watch time: the
    estimators that read predictions then cannot value it). Fusion inputs are
    ``pred_<input>``, or ``price / price_scale`` for the input ``price``. Requests keep the order
    of their first row; a page's slot ``l`` is the request's ``l``-th row.

    Raises:
        DataError: a needed column is missing, or ``propensity`` is missing/zero/non-finite
            while ``require_propensity``.
    """
    rid = _column(table, "request_id", "one id per request")
    uniq, first, inverse = np.unique(rid, return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
    req = rank[inverse]  # request index in order of first appearance
    order = np.argsort(req, kind="stable")
    counts = np.bincount(req, minlength=len(uniq))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.empty(len(rid), np.int64)
    slot[order] = np.arange(len(rid)) - np.repeat(starts, counts)
    B, L = len(uniq), int(counts.max()) if len(counts) else 0

    def pad(values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        out = np.full((B, L), fill, dtype=np.float64)
        out[req, slot] = values
        return out

    mask = np.zeros((B, L), bool)
    mask[req, slot] = True
    pos = table.column("position") if "position" in table.column_names else None
    if pos is None:
        raise DataError("the log has no column `position` (logged position, null = not shown)")
    position = pad(pos.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64))
    labels = {b: pad(_column(table, f"label_{b}", "realised feedback"))
              for b in [*behaviours, *label_only]}
    preds = {b: pad(_column(table, f"pred_{b}", "model predictions")) for b in behaviours}
    price = pad(_column(table, "price", "")) if "price" in table.column_names else None
    inputs = weights = propensity = None
    head = first[np.argsort(first, kind="stable")]  # first row of each request, in order
    if fusion_inputs is not None:
        cols = []
        for name in fusion_inputs:
            if name == "price":
                if price is None:
                    raise DataError("the fusion input `price` needs a `price` column")
                cols.append(price / price_scale)
            else:
                cols.append(pad(_column(table, f"pred_{name}", "fusion input")))
        inputs = np.stack(cols, axis=-1)
        if all(f"logging_w_{n}" in table.column_names for n in fusion_inputs):
            weights = np.stack([_column(table, f"logging_w_{n}", "")[head].astype(np.float64)
                                for n in fusion_inputs], axis=1)
    if "propensity" in table.column_names:
        propensity = table.column("propensity").to_numpy(zero_copy_only=False)[head]
        propensity = np.asarray(propensity, dtype=np.float64)  # nulls become NaN: rejected
    elif require_propensity:
        check_propensity(None, B)
    if require_propensity and weights is None:
        names = ", ".join(f"`logging_w_{n}`" for n in fusion_inputs or ["<input>"])
        raise DataError(f"the log lacks the logged weight columns {names} that go with "
                        "`propensity`; pass fusion_inputs naming the logged inputs")
    return LoggedRequests(position=position, labels=labels, preds=preds, price=price, mask=mask,
                          inputs=inputs, weights=weights, propensity=propensity)
