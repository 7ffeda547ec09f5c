"""GRADE reward components: posterior (logged feedback), prior (model predictions), rules.

Shapes: ``N`` requests, ``G`` weight vectors per request (the GRPO group), ``L`` candidate
slots (padded), ``P`` shown positions (the page, e.g. from ``fusion.top_k``), ``K`` fusion
inputs. Every function is pure, batched over ``N x G`` and gathers per-candidate values at the
``[N, G, P]`` page indices (no ``[N, G, L]`` sort and no ``[.., L, L]`` tensor). Per-objective
work is done once per request on ``[N, L]`` and folded into one per-candidate value, so the
``[N, G, P]`` part costs one gather whatever the number of objectives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from blendrank.metrics import gain_values

Gain = Literal["exp2", "linear"]
RatioRules = Mapping[tuple[int, int], float] | Sequence[tuple[int, int, float]]

__all__ = [
    "examination_ips_weights",
    "fit_position_bias",
    "guardrail_margins",
    "page_value",
    "posterior_reward",
    "prior_reward",
    "rule_penalty",
]


def _check_order(order: Tensor, n: int) -> None:
    if order.dim() != 3 or order.shape[0] != n:
        raise ValueError(f"order must be [N, G, P] with N = {n}; got {tuple(order.shape)}")


def page_value(order: Tensor, value: Tensor, discount: Tensor) -> Tensor:
    """``sum_p discount[p] * value[n, order[n, g, p]]``: discounted value of each page.

    Args:
        order: ``[N, G, P]`` candidate indices, best first. Negative indices are empty slots.
        value: ``[N, L]`` per-candidate value (0 on padding).
        discount: ``[D]`` weight per position; positions ``>= D`` count 0, ``D > P`` is cut.

    Returns:
        ``[N, G]``.
    """
    n, g, p = order.shape
    p = min(p, discount.shape[0])
    idx = order[..., :p]
    picked = value.gather(1, idx.clamp_min(0).reshape(n, g * p)).view(n, g, p)
    picked = picked.where(idx >= 0, 0.0)
    return picked @ discount[:p].to(picked.dtype)


def posterior_reward(
    order: Tensor,
    labels: Mapping[str, Tensor],
    mask: Tensor | None,
    objective_weights: Mapping[str, float],
    *,
    k: int,
    gain: Gain | Mapping[str, Gain] = "exp2",
    propensity_weights: Tensor | None = None,
    normalize: bool = True,
) -> Tensor:
    """``R_post``: weighted NDCG@k of the observed labels under each re-ranking.

    ``R_post[n, g] = sum_t a_t * DCG_t(order[n, g]) / IDCG_t[n]`` with
    ``DCG = sum_{p < k} gain(y) * u / log2(p + 2)`` (``p`` 0-based) and ``u`` the IPS weight of
    the candidate (1 without ``propensity_weights``). ``IDCG`` is the ideal DCG@k of the same
    (weighted) gains over all real candidates, so each NDCG stays in [0, 1]. An objective with
    no positive label in a request contributes 0 to it (a constant within the group, hence no
    advantage).

    Args:
        order: ``[N, G, P]`` candidate indices of each re-ranked page, best first (from
            ``fusion.top_k`` over ``[N, G, L]`` scores). Only the first ``min(k, P)`` count.
        labels: objective name -> ``[N, L]`` observed feedback, >= 0 (0/1, or graded, e.g. GMV).
        mask: ``[N, L]`` bool, True for real candidates (None: all real).
        objective_weights: name -> ``a_t``; zero weights are skipped.
        k: NDCG cut-off.
        gain: ``"exp2"`` (``2^y - 1``), ``"linear"`` (``y``; use it for GMV-valued labels), or a
            mapping name -> gain (names left out use ``"exp2"``).
        propensity_weights: ``[N, L]`` IPS weight of each candidate, e.g.
            :func:`examination_ips_weights` of its logged position; None = no correction.
        normalize: divide by ``IDCG`` (NDCG); False returns the weighted DCG, which keeps each
            request's magnitude (an expensive order outweighs a cheap one).

    Returns:
        ``[N, G]`` rewards, in ``[0, sum_t a_t]`` when normalised.
    """
    names = [name for name, a in objective_weights.items() if a != 0]
    missing = [name for name in names if name not in labels]
    if missing:
        raise KeyError(f"objective_weights name objectives without labels: {missing}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}")
    if not names:
        return torch.zeros(order.shape[:2])
    ref = labels[names[0]]
    n, n_slots = ref.shape
    _check_order(order, n)
    dtype = ref.dtype if ref.is_floating_point() else torch.float32
    mask = torch.ones(n, n_slots, dtype=torch.bool, device=ref.device) if mask is None else mask.bool()
    kk = min(k, n_slots)
    disc = 1.0 / torch.log2(torch.arange(kk, device=ref.device, dtype=dtype) + 2.0)
    value = torch.zeros(n, n_slots, dtype=dtype, device=ref.device)
    for name in names:  # T is small; each step is [N, L] work plus one top-k
        g_name = gain if isinstance(gain, str) else gain.get(name, "exp2")
        y = labels[name].to(dtype).where(mask, 0.0)
        gains = gain_values(y, g_name)
        if propensity_weights is not None:
            gains = gains * propensity_weights.to(dtype).where(mask, 0.0)
        if not normalize:
            value = value + float(objective_weights[name]) * gains
            continue
        idcg = torch.topk(gains, kk, dim=-1).values @ disc  # [N]
        scale = float(objective_weights[name]) / idcg.where(idcg > 0, 1.0)
        value = value + gains * scale.where(idcg > 0, 0.0)[:, None]
    return page_value(order, value, disc)


def examination_ips_weights(
    position: Tensor, exam: Tensor, clip: float = 10.0, unshown: float = 0.0
) -> Tensor:
    """IPS weight ``min(1 / exam[pos - 1], clip)`` of each candidate's logged position.

    Args:
        position: ``[N, L]`` 1-based logged positions; 0, negative or NaN = not shown.
        exam: ``[P]`` relative examination propensity per position (position 1 = 1), e.g. from
            :func:`fit_position_bias`; positions beyond ``P`` use ``exam[-1]``.
        clip: upper bound on a weight (variance control).
        unshown: weight of candidates that were not shown (they carry no observed feedback).

    Returns:
        ``[N, L]`` weights.
    """
    if exam.dim() != 1 or exam.numel() == 0:
        raise ValueError(f"exam must be a non-empty [P] tensor; got {tuple(exam.shape)}")
    pos = torch.nan_to_num(position.to(torch.float64), nan=0.0)
    shown = pos >= 1
    idx = (pos.clamp(1, exam.numel()) - 1).long()
    dtype = exam.dtype if exam.is_floating_point() else torch.float32
    w = (1.0 / exam.to(dtype).clamp_min(1e-12))[idx].clamp_max(clip)
    return w.where(shown, torch.as_tensor(unshown, dtype=dtype))


def fit_position_bias(
    position: Tensor,
    clicks: Tensor,
    mask: Tensor | None,
    max_pos: int,
    *,
    min_exam: float = 1e-3,
) -> Tensor:
    """Relative examination by position from a log: click rate per position / rate at position 1.

    This simple estimator attributes the whole decline of the click rate with position to
    examination. On a log ranked by a sensible policy the better items sit on top, so it
    *overstates* the position effect (and IPS then over-corrects); it is unbiased only on
    randomised traffic. Pass ``mask`` selecting randomised requests when the log has them.

    Args:
        position: ``[N, L]`` 1-based logged positions; 0, negative or NaN = not shown.
        clicks: ``[N, L]`` click labels (> 0 counts as a click).
        mask: ``[N, L]`` bool, impressions to use (None: every shown candidate).
        max_pos: ``P``, positions estimated; impressions at lower positions are ignored.
        min_exam: floor of the returned propensities.

    Returns:
        ``[P]`` propensities with ``exam[0] = 1``. A position without impressions takes the
        value of the position above it (forward fill).

    Raises:
        ValueError: when position 1 has no click (nothing to normalise by).
    """
    return position_bias_from_counts(*position_click_counts(position, clicks, mask, max_pos), min_exam=min_exam)


def position_click_counts(position: Tensor, clicks: Tensor, mask: Tensor | None, max_pos: int) -> tuple[Tensor, Tensor]:
    """Impressions and clicks per position ``1..max_pos`` (``([P], [P])`` float64; arguments as
    :func:`fit_position_bias`). Counts of several parts of a log add up (streamed logs)."""
    pos = torch.nan_to_num(position.to(torch.float64), nan=0.0)
    use = (pos >= 1) & (pos <= max_pos)
    if mask is not None:
        use &= mask.bool()
    idx = (pos[use] - 1).long()
    clk = (clicks[use] > 0).to(torch.float64)
    shows = torch.zeros(max_pos, dtype=torch.float64).index_add_(0, idx, torch.ones_like(clk))
    hits = torch.zeros(max_pos, dtype=torch.float64).index_add_(0, idx, clk)
    return shows, hits


def position_bias_from_counts(shows: Tensor, hits: Tensor, *, min_exam: float = 1e-3) -> Tensor:
    """:func:`fit_position_bias` from :func:`position_click_counts` (``[P]`` propensities)."""
    max_pos = len(shows)
    has = shows > 0
    rate = hits / shows.clamp_min(1.0)
    if not bool(has[0]) or float(rate[0]) <= 0:
        raise ValueError("position 1 has no click in the selected impressions; cannot normalise")
    # forward fill positions without impressions
    last = torch.where(has, torch.arange(max_pos), torch.zeros(max_pos, dtype=torch.long))
    last = torch.cummax(last, 0).values
    exam = (rate[last] / rate[0]).clamp_min(min_exam)
    return exam.to(torch.float32)


def _parse_term(term: str, available: set[str]) -> list[str]:
    factors = [f.strip() for f in term.split("*")]
    unknown = [f for f in factors if f != "price" and f not in available]
    if not factors or unknown:
        raise KeyError(
            f"prior term {term!r}: unknown factor(s) {unknown}; a term is a prediction name or a "
            f"product like 'order*price' (GMV); predictions: {sorted(available)}"
        )
    return factors


def prior_reward(
    order: Tensor,
    preds: Mapping[str, Tensor],
    price: Tensor | None,
    coefs: Mapping[str, float],
    discount: Tensor,
    *,
    price_scale: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """``R_prior``: expected business value of each page under the model predictions.

    ``R_prior[n, g] = sum_p d(p) * v[n, order[n, g, p]]`` with per-candidate value
    ``v = sum_terms c_term * prod_{f in term} x_f``, where a factor ``x_f`` is a prediction
    ``preds[f]`` or ``price / price_scale`` for ``f = "price"``. So ``{"click": c1, "order":
    c2, "order*price": c3}`` gives ``c1*p_click + c2*p_order + c3*p_order*price/price_scale``
    (expected clicks, orders and GMV when ``p_order`` is per impression; use
    ``"click*cvr*price"`` when the model predicts CVR given click).

    Args:
        order: ``[N, G, P]`` page indices, best first.
        preds: name -> ``[N, L]`` predictions.
        price: ``[N, L]`` prices (needed only by terms with a ``price`` factor).
        coefs: term -> coefficient; zero coefficients are skipped.
        discount: ``[D]`` position weights, e.g. ``fusion.position_discount(P)``; positions
            ``>= D`` count 0.
        price_scale: price divisor (e.g. the median price) so GMV has a scale near 1.
        mask: ``[N, L]`` bool, True for real candidates (None: all real).

    Returns:
        ``[N, G]`` discounted expected value.
    """
    terms = {t: float(c) for t, c in coefs.items() if c != 0}
    if not terms:
        return torch.zeros(order.shape[:2], dtype=discount.dtype, device=order.device)
    parsed = {t: _parse_term(t, set(preds)) for t in terms}
    needs_price = any("price" in f for f in parsed.values())
    if needs_price and price is None:
        raise ValueError("a prior term uses 'price' but price is None")
    first = next((f for fs in parsed.values() for f in fs if f != "price"), None)
    ref = preds[first] if first is not None else price
    assert ref is not None
    n, n_slots = ref.shape
    _check_order(order, n)
    dtype = discount.dtype if discount.is_floating_point() else torch.float32
    value = torch.zeros(n, n_slots, dtype=dtype, device=ref.device)
    cache: dict[str, Tensor] = {}
    for term, c in terms.items():
        prod: Tensor | float = c
        for f in parsed[term]:
            if f not in cache:
                x = preds[f] if f != "price" else price
                assert x is not None
                cache[f] = x.to(dtype) / (price_scale if f == "price" else 1.0)
            prod = prod * cache[f]
        value = value + prod
    if mask is not None:
        value = value.where(mask.bool(), 0.0)
    return page_value(order, value, discount.to(dtype))


def rule_penalty(
    weights: Tensor,
    *,
    min_weights: Tensor | Sequence[float] | None = None,
    max_ratio: RatioRules | None = None,
    anchor: Tensor | Sequence[float] | None = None,
    trust_radius: float | None = None,
) -> Tensor:
    """``R_rule``: hinge penalties on the weight format; 0 when every rule holds.

    ``R_rule = sum_k relu(min_k - w_k) + sum_{(i, j, r)} relu(w_i - r * w_j)
    + relu(||w - anchor||_1 - trust_radius)``.
    The ratio rule ``w_i / w_j <= r`` is written ``w_i - r * w_j <= 0``: the same constraint,
    but bounded and in weight units like the other two terms (a true-ratio hinge explodes when
    a Dirichlet sample puts ``w_j`` near 0).

    Args:
        weights: ``[N, G, K]`` sampled fusion weights (or any ``[..., K]``).
        min_weights: ``[K]`` per-input minimums (None = no rule).
        max_ratio: ``{(i, j): r}`` or ``[(i, j, r), ...]`` with input indices ``i, j`` (None =
            no rule).
        anchor: ``[K]`` or ``[N, K]`` production weights, centre of the trust region.
        trust_radius: L1 radius around ``anchor``; needs ``anchor``.

    Returns:
        ``[N, G]`` (the leading shape of ``weights``) non-negative penalties.
    """
    w = weights
    out = torch.zeros(w.shape[:-1], dtype=w.dtype, device=w.device)
    if min_weights is not None:
        lo = torch.as_tensor(min_weights, dtype=w.dtype, device=w.device)
        out = out + torch.relu(lo - w).sum(-1)
    if max_ratio:
        rules = [(i, j, r) for (i, j), r in max_ratio.items()] if isinstance(max_ratio, Mapping) else list(max_ratio)
        ii = torch.tensor([int(r[0]) for r in rules], device=w.device)
        jj = torch.tensor([int(r[1]) for r in rules], device=w.device)
        rr = torch.tensor([float(r[2]) for r in rules], dtype=w.dtype, device=w.device)
        out = out + torch.relu(w[..., ii] - rr * w[..., jj]).sum(-1)
    if trust_radius is not None:
        if anchor is None:
            raise ValueError("trust_radius needs anchor (the production weights)")
        a = torch.as_tensor(anchor, dtype=w.dtype, device=w.device)
        if a.dim() == 2 and w.dim() == 3:
            a = a[:, None, :]
        out = out + torch.relu((w - a).abs().sum(-1) - trust_radius)
    return out


def guardrail_margins(
    order: Tensor,
    anchor_order: Tensor,
    preds: Mapping[str, Tensor],
    price: Tensor | None,
    guardrails: Mapping[str, float],
    discount: Tensor,
    *,
    price_scale: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Per-request margins of business guard rails on predicted page metrics.

    A guard rail ``"num": tol`` asks the batch total of the predicted metric ``num`` (a prior
    term such as ``"click"`` or ``"order*price"``, position-discounted as in ``R_prior``) to stay
    within ``tol`` (relative) of the anchor pages' total; ``"num/den": tol`` does the same for a
    ratio of totals (``"order/click"`` is CVR). The margin of request ``n`` is normalised so that
    its batch mean is ``>= 0`` exactly when the aggregate constraint holds::

        margin[n, g] = (num(page[n, g]) - (1 - tol) * r_a * den(page[n, g])) / mean_n num(anchor[n])
        r_a = sum_n num(anchor[n]) / sum_n den(anchor[n])        (den(.) := num(anchor[n]), r_a := 1 without a ratio)

    so a Lagrangian reward ``sum_m lambda_m * margin_m`` lets some requests trade a guarded
    metric for value while the total stays within bounds.

    Args:
        order: ``[N, G, P]`` pages to judge, best first.
        anchor_order: ``[N, 1, P]`` or ``[N, P]`` pages of the anchor (production) weights.
        preds, price, discount, price_scale, mask: as in :func:`prior_reward`.
        guardrails: metric -> allowed relative loss ``tol`` < 1 (below 0: a required gain).

    Returns:
        ``[N, G, M]`` margins, guard rails in ``guardrails`` order.
    """
    if anchor_order.dim() == 2:
        anchor_order = anchor_order.unsqueeze(1)

    terms = {t for name in guardrails for t in name.split("/")}  # each page total computed once
    page = {t: prior_reward(order, preds, price, {t: 1.0}, discount, price_scale=price_scale, mask=mask) for t in terms}
    anchor = {t: prior_reward(anchor_order, preds, price, {t: 1.0}, discount, price_scale=price_scale, mask=mask)[:, 0]
              for t in terms}  # [N]
    out = []
    for name, tol in guardrails.items():
        num, _, den = name.partition("/")
        scale = anchor[num].mean().clamp_min(1e-12)
        if den:
            ratio_a = anchor[num].sum() / anchor[den].sum().clamp_min(1e-12)
            floor = (1.0 - tol) * ratio_a * page[den]
        else:
            floor = (1.0 - tol) * anchor[num][:, None]
        out.append((page[num] - floor) / scale)
    return torch.stack(out, dim=-1)
