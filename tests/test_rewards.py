"""GRADE reward components and the composite reward."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from pydantic import ValidationError

from blendrank.fusion.formulas import fuse, position_discount, top_k
from blendrank.rewards.components import (
    examination_ips_weights,
    fit_position_bias,
    page_value,
    posterior_reward,
    prior_reward,
    rule_penalty,
)
from blendrank.rewards.composite import CompositeRewardConfig, RewardOutput, composite_reward

LOG2 = math.log2


def _disc(p: int) -> float:
    """DCG discount at 0-based position p."""
    return 1.0 / LOG2(p + 2.0)


# --------------------------------------------------------------------------- posterior


def test_posterior_highest_for_label_sorted_ranking() -> None:
    click = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0, 0.0]])
    order_lab = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    perms = torch.tensor(list(itertools.permutations(range(6)))[::7])[None, :, :4]  # [1, G, 4]
    ideal = torch.tensor([[[3, 1, 0, 2]]])
    order = torch.cat([perms, ideal], dim=1)
    r = posterior_reward(order, {"click": click, "order": order_lab}, None, {"click": 1.0, "order": 2.0}, k=4)
    assert r.shape == (1, order.shape[1])
    assert float(r[0, -1]) == pytest.approx(3.0)  # both NDCGs are 1
    assert float(r.max()) == pytest.approx(3.0)
    assert float(r[0, :-1].min()) < 3.0


def test_posterior_hand_value_graded_and_padding() -> None:
    # 5 slots, slot 4 is padding with a garbage label
    y = torch.tensor([[2.0, 0.0, 1.0, 0.0, float("nan")]])
    gmv = torch.tensor([[30.0, 0.0, 10.0, 0.0, 99.0]])
    mask = torch.tensor([[True, True, True, True, False]])
    order = torch.tensor([[[1, 2, 0], [4, 0, 2]]])  # second page starts with the padding slot
    r = posterior_reward(order, {"y": y, "gmv": gmv}, mask, {"y": 1.0, "gmv": 0.5}, k=3, gain={"y": "exp2", "gmv": "linear"})
    idcg_y = 3 * _disc(0) + 1 * _disc(1)
    idcg_g = 30 * _disc(0) + 10 * _disc(1)
    want0 = (1 * _disc(1) + 3 * _disc(2)) / idcg_y + 0.5 * (10 * _disc(1) + 30 * _disc(2)) / idcg_g
    want1 = (3 * _disc(1) + 1 * _disc(2)) / idcg_y + 0.5 * (30 * _disc(1) + 10 * _disc(2)) / idcg_g
    assert torch.allclose(r, torch.tensor([[want0, want1]]), rtol=1e-6)


def test_posterior_unnormalised_is_the_weighted_dcg() -> None:
    gmv = torch.tensor([[30.0, 0.0, 10.0], [0.0, 2.0, 0.0]])
    order = torch.tensor([[[2, 0, 1]], [[1, 0, 2]]])
    r = posterior_reward(order, {"gmv": gmv}, None, {"gmv": 0.5}, k=3, gain="linear", normalize=False)
    # unlike NDCG (1.0 for the second request's ideal page), the expensive order counts for more
    want = torch.tensor([[0.5 * (10 * _disc(0) + 30 * _disc(1))], [0.5 * 2 * _disc(0)]])
    assert torch.allclose(r, want, rtol=1e-6)


def test_posterior_k_cut_and_empty_request() -> None:
    click = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    order = torch.tensor([[[0, 1, 2]], [[0, 1, 2]]])
    r = posterior_reward(order, {"click": click}, None, {"click": 1.0}, k=2)
    assert float(r.abs().sum()) == 0.0  # clicked item below k; empty request gives 0


def test_ips_reduces_logged_ranking_relative_to_alternative() -> None:
    # Logged page A, B, C, D at positions 1..4; clicks on A (pos 1) and D (pos 4).
    click = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    position = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    exam = torch.tensor([1.0, 0.5, 1.0 / 3.0, 0.25])
    logged = [0, 1, 2, 3]
    alternative = [3, 1, 2, 0]  # the same clicked items, D promoted to the top
    order = torch.tensor([[logged, alternative]])
    plain = posterior_reward(order, {"click": click}, None, {"click": 1.0}, k=4)
    assert float(plain[0, 0]) == pytest.approx(float(plain[0, 1]))  # raw clicks cannot tell them apart
    ipw = examination_ips_weights(position, exam)
    assert torch.allclose(ipw, torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    ips = posterior_reward(order, {"click": click}, None, {"click": 1.0}, k=4, propensity_weights=ipw)
    ideal = 4 * _disc(0) + 1 * _disc(1)
    assert float(ips[0, 0]) == pytest.approx((1 * _disc(0) + 4 * _disc(3)) / ideal, rel=1e-6)
    assert float(ips[0, 1]) == pytest.approx((4 * _disc(0) + 1 * _disc(3)) / ideal, rel=1e-6)
    assert float(ips[0, 0]) < float(ips[0, 1])


def test_examination_ips_weights_edges() -> None:
    position = torch.tensor([[1.0, 0.0, float("nan"), 3.0, 9.0]])
    exam = torch.tensor([1.0, 0.5, 0.05])
    w = examination_ips_weights(position, exam, clip=10.0)
    assert torch.allclose(w, torch.tensor([[1.0, 0.0, 0.0, 10.0, 10.0]]))  # clip, unshown, beyond P
    w1 = examination_ips_weights(position.long().clamp_min(0), exam, clip=100.0, unshown=1.0)
    assert torch.allclose(w1, torch.tensor([[1.0, 1.0, 1.0, 20.0, 20.0]]))


def test_fit_position_bias_click_rates() -> None:
    # 40 requests x 4 slots; positions 1..3 shown, slot 4 not shown. Click rates 0.5, 0.25, 0.1.
    n = 40
    position = torch.tensor([[1, 2, 3, 0]] * n, dtype=torch.float32)
    clicks = torch.zeros(n, 4)
    clicks[:20, 0] = 1
    clicks[:10, 1] = 1
    clicks[:4, 2] = 1
    clicks[:, 3] = 1  # not shown: ignored
    exam = fit_position_bias(position, clicks, None, max_pos=5)
    assert torch.allclose(exam, torch.tensor([1.0, 0.5, 0.2, 0.2, 0.2]))  # 4, 5 forward-filled
    sub = torch.zeros(n, 4, dtype=torch.bool)
    sub[:10] = True  # only the first 10 requests: rates 1, 1, 0.4
    assert torch.allclose(fit_position_bias(position, clicks, sub, max_pos=3), torch.tensor([1.0, 1.0, 0.4]))
    with pytest.raises(ValueError, match="position 1"):
        fit_position_bias(position, torch.zeros(n, 4), None, max_pos=3)


# --------------------------------------------------------------------------- prior


def test_prior_reward_by_hand() -> None:
    click = torch.tensor([[0.5, 0.2, 0.1]])
    order_p = torch.tensor([[0.1, 0.05, 0.0]])
    price = torch.tensor([[10.0, 20.0, 30.0]])
    coefs = {"click": 1.0, "order": 2.0, "order*price": 0.5}
    disc = position_discount(2)
    order = torch.tensor([[[0, 1], [2, 0]]])
    r = prior_reward(order, {"click": click, "order": order_p}, price, coefs, disc, price_scale=10.0)

    def v(i: int) -> float:
        c, o, pr = click[0, i].item(), order_p[0, i].item(), price[0, i].item()
        return 1.0 * c + 2.0 * o + 0.5 * o * pr / 10.0

    d1, d2 = 1.0, 1.0 / LOG2(3.0)
    assert torch.allclose(r, torch.tensor([[d1 * v(0) + d2 * v(1), d1 * v(2) + d2 * v(0)]]), rtol=1e-6)


def test_prior_reward_chained_terms_mask_and_errors() -> None:
    preds = {"click": torch.tensor([[0.5, float("nan")]]), "cvr": torch.tensor([[0.2, float("nan")]])}
    price = torch.tensor([[50.0, float("nan")]])
    order = torch.tensor([[[0, 1], [1, 0]]])
    mask = torch.tensor([[True, False]])
    r = prior_reward(order, preds, price, {"click*cvr*price": 1.0, "click": 0.0}, torch.ones(2), mask=mask)
    assert torch.allclose(r, torch.full((1, 2), 0.5 * 0.2 * 50.0))
    with pytest.raises(KeyError, match="order\\*price"):
        prior_reward(order, preds, price, {"gmv": 1.0}, torch.ones(2))
    with pytest.raises(ValueError, match="price"):
        prior_reward(order, preds, None, {"click*price": 1.0}, torch.ones(2))


def test_page_value_short_discount_truncates() -> None:
    value = torch.tensor([[1.0, 2.0, 4.0]])
    order = torch.tensor([[[2, 1, 0], [0, -1, 2]]])
    assert torch.allclose(page_value(order, value, torch.tensor([1.0, 0.5])), torch.tensor([[5.0, 1.0]]))


# --------------------------------------------------------------------------- rules


def test_rule_penalty_zero_inside_positive_outside() -> None:
    w = torch.tensor([[[0.4, 0.4, 0.2], [0.05, 0.75, 0.2]]])  # [1, 2, 3]
    kw = {
        "min_weights": [0.1, 0.1, 0.0],
        "max_ratio": [(1, 0, 3.0)],
        "anchor": [0.4, 0.4, 0.2],
        "trust_radius": 0.3,
    }
    p = rule_penalty(w, **kw)
    assert float(p[0, 0]) == 0.0
    # second: min 0.1 - 0.05 = 0.05; ratio 0.75 - 3*0.05 = 0.6; L1 = 0.35 + 0.35 + 0 = 0.7 -> 0.4
    assert float(p[0, 1]) == pytest.approx(0.05 + 0.6 + 0.4, rel=1e-6)
    assert float(rule_penalty(w)[0].abs().sum()) == 0.0  # no rules
    dict_form = rule_penalty(w, max_ratio={(1, 0): 3.0})
    assert float(dict_form[0, 1]) == pytest.approx(0.6, rel=1e-6)
    per_request_anchor = rule_penalty(w, anchor=torch.tensor([[0.05, 0.75, 0.2]]), trust_radius=0.0)
    assert float(per_request_anchor[0, 1]) == 0.0 and float(per_request_anchor[0, 0]) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="anchor"):
        rule_penalty(w, trust_radius=0.1)


# --------------------------------------------------------------------------- composite


def _batch(seed: int = 0, n: int = 6, g: int = 4, n_slots: int = 8, k_in: int = 3):
    gen = torch.Generator().manual_seed(seed)
    preds = {"click": torch.rand(n, n_slots, generator=gen) * 0.3}
    preds["order"] = preds["click"] * torch.rand(n, n_slots, generator=gen) * 0.2
    price = torch.rand(n, n_slots, generator=gen) * 100 + 1
    labels = {
        "click": (torch.rand(n, n_slots, generator=gen) < 0.3).float(),
        "order": (torch.rand(n, n_slots, generator=gen) < 0.1).float(),
    }
    mask = torch.rand(n, n_slots, generator=gen) < 0.9
    weights = torch.distributions.Dirichlet(torch.ones(k_in)).sample((n, g))
    features = torch.rand(n, n_slots, k_in, generator=gen)
    order, _ = top_k(fuse(features, weights), mask, 5)
    position = torch.arange(1, n_slots + 1, dtype=torch.float32).expand(n, n_slots)
    return {"order": order, "weights": weights, "labels": labels, "mask": mask, "preds": preds, "price": price, "position": position}


def _cfg(**kw) -> CompositeRewardConfig:
    base = {"k": 5, "price_scale": 50.0, "min_weights": [0.1, 0.1, 0.0], "anchor": [0.4, 0.4, 0.2], "trust_radius": 0.3}
    base.update(kw)
    return CompositeRewardConfig(**base)


def test_composite_weight_zero_equals_sum_of_others() -> None:
    b = _batch()
    full = composite_reward(_cfg(a_post=1.0, a_prior=2.0, a_rule=0.5), **b)
    assert isinstance(full, RewardOutput) and full.total.shape == (6, 4)
    assert torch.allclose(full.total, full.post + 2.0 * full.prior - 0.5 * full.rule)
    assert float(full.rule.sum()) > 0  # Dirichlet(1) samples break some rule
    no_prior = composite_reward(_cfg(a_post=1.0, a_prior=0.0, a_rule=0.5), **b)
    assert float(no_prior.prior.abs().sum()) == 0.0
    assert torch.allclose(no_prior.total, full.post - 0.5 * full.rule)
    no_post = composite_reward(_cfg(a_post=0.0, a_prior=2.0, a_rule=0.5), order=b["order"], weights=b["weights"], preds=b["preds"], price=b["price"], mask=b["mask"])
    assert torch.allclose(no_post.total, 2.0 * full.prior - 0.5 * full.rule)
    no_rule = composite_reward(_cfg(a_rule=0.0), **b)
    assert float(no_rule.rule.abs().sum()) == 0.0
    assert torch.allclose(no_rule.total, full.post + full.prior)
    keys = set(full.metrics())
    assert {"reward", "reward_std", "rewards/post/mean", "rewards/prior/mean", "rewards/rule/mean"} <= keys


def test_composite_normalize_and_ips_paths() -> None:
    b = _batch(1)
    raw = composite_reward(_cfg(), **b)
    norm = composite_reward(_cfg(normalize="per_component_batch_std"), **b)
    want = raw.post / (raw.post.std() + 1e-6) + raw.prior / (raw.prior.std() + 1e-6) - raw.rule / (raw.rule.std() + 1e-6)
    assert torch.allclose(norm.total, want, rtol=1e-5)
    assert torch.equal(norm.post, raw.post)  # components stay raw for logging
    exam = torch.tensor([1.0, 0.6, 0.4, 0.3])
    via_pos = composite_reward(_cfg(ips=True), exam=exam, **b)
    ipw = examination_ips_weights(b["position"], exam, clip=10.0)
    via_w = composite_reward(_cfg(ips=True), propensity_weights=ipw, **b)
    assert torch.allclose(via_pos.post, via_w.post)
    assert not torch.allclose(via_pos.post, raw.post)
    with pytest.raises(ValueError, match="ips"):
        composite_reward(_cfg(ips=True), order=b["order"], labels=b["labels"], weights=b["weights"], preds=b["preds"], price=b["price"])


def test_composite_config_is_strict_and_documented() -> None:
    for name, field in CompositeRewardConfig.model_fields.items():
        assert field.description, name
    with pytest.raises(ValidationError):
        CompositeRewardConfig(a_psot=1.0)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        CompositeRewardConfig(a_post=-1.0)
    with pytest.raises(ValidationError):
        CompositeRewardConfig(post_objective_weights={"click": 0.0})
    cfg = CompositeRewardConfig(max_ratio=[(0, 1, 2.0)])
    assert CompositeRewardConfig.model_validate_json(cfg.model_dump_json()) == cfg


# --------------------------------------------------------------------------- guard rails


def test_guardrail_margins_hand_computed_and_aggregate_sign() -> None:
    from blendrank.rewards.components import guardrail_margins

    click = torch.tensor([[0.4, 0.1, 0.2], [0.3, 0.3, 0.0]])
    order = torch.tensor([[0.1, 0.1, 0.0], [0.0, 0.2, 0.0]])
    disc = torch.ones(1)  # page of one slot, no discount
    anchor = torch.tensor([[0], [0]])  # clicks 0.4 + 0.3, orders 0.1 + 0.0
    pages = torch.tensor([[[1], [2]], [[1], [2]]])  # [N=2, G=2, P=1]
    m = guardrail_margins(pages, anchor, {"click": click, "order": order}, None, {"click": 0.1}, disc)
    # (click(page) - 0.9 * click(anchor)) / mean click(anchor) = (x - 0.9 a) / 0.35
    want = torch.tensor([[(0.1 - 0.36) / 0.35, (0.2 - 0.36) / 0.35], [(0.3 - 0.27) / 0.35, (0.0 - 0.27) / 0.35]])
    torch.testing.assert_close(m[..., 0], want)
    # CVR = total orders / total clicks; anchor ratio 0.1 / 0.7.
    m = guardrail_margins(pages, anchor, {"click": click, "order": order}, None, {"order/click": 0.0}, disc)
    r_a = 0.1 / 0.7
    assert m[0, 0, 0].item() == pytest.approx((0.1 - r_a * 0.1) / 0.05)
    # The mean margin is >= 0 exactly when the aggregate constraint holds.
    for tol in (0.3, 0.5):  # page g=0 totals 0.4 clicks vs 0.7 for the anchor: holds at 0.5 only
        m = guardrail_margins(pages, anchor, {"click": click}, None, {"click": tol}, disc)[:, 0, 0]
        assert bool(m.mean() >= 0) == (0.4 >= (1 - tol) * 0.7)


def test_composite_adds_lagrangian_guard_term() -> None:
    click = torch.tensor([[0.4, 0.1, 0.2]])
    cfg = CompositeRewardConfig(a_post=0, k=1, prior_coefs={"click": 1.0}, guardrails={"click": 0.0})
    pages = torch.tensor([[[0], [1]]])
    base = composite_reward(cfg, pages, preds={"click": click}, anchor_order=torch.tensor([[0]]))
    torch.testing.assert_close(base.guard, torch.zeros(1, 2))  # multipliers default to 0
    out = composite_reward(cfg, pages, preds={"click": click}, anchor_order=torch.tensor([[0]]),
                           guard_multipliers=torch.tensor([2.0]))
    torch.testing.assert_close(out.guard, 2.0 * out.prior.abs().mean() * out.margins[..., 0])
    torch.testing.assert_close(out.total, out.prior + out.guard)
    with pytest.raises(ValidationError, match="relative loss"):
        CompositeRewardConfig(guardrails={"click": 1.5})


def test_guardrails_belong_to_the_rule_component() -> None:
    cfg = CompositeRewardConfig(a_rule=0, guardrails={"click": 0.0})
    assert cfg.active_guardrails == {}
    assert CompositeRewardConfig(guardrails={"click": 0.0}, guardrail_margin=0).active_guardrails == {"click": 0.0}
    assert CompositeRewardConfig(guardrails={"click": 0.01}).active_guardrails == {"click": pytest.approx(0.0075)}


def test_guardrail_margin_tightens_every_rail() -> None:
    cfg = CompositeRewardConfig(guardrails={"click": 0.005, "order": 0.0}, guardrail_margin=0.005)
    assert cfg.active_guardrails == pytest.approx({"click": 0.0, "order": -0.005})
    assert CompositeRewardConfig(a_rule=0, guardrails={"click": 0.005}, guardrail_margin=0.005).active_guardrails == {}
    # A tightened rail with a required gain: the anchor's own page now misses it.
    click = torch.tensor([[0.4, 0.1]])
    pages = torch.tensor([[[0], [1]]])
    out = composite_reward(cfg.model_copy(update={"a_post": 0.0, "k": 1, "prior_coefs": {"click": 1.0}}), pages,
                           preds={"click": click, "order": click}, anchor_order=torch.tensor([[0]]))
    assert out.margins[0, 0, 0].item() == pytest.approx(0.0, abs=1e-6)  # click: tol 0, page == anchor
    assert out.margins[0, 0, 1].item() == pytest.approx(-0.005, rel=1e-4)  # order: must gain 0.5%


def test_value_model_recovers_a_linear_expectation_from_streamed_parts() -> None:
    from blendrank.rewards.value_model import (
        Moments,
        fit_ridge,
        predict_value,
        r_squared,
        value_design,
    )

    g = torch.Generator().manual_seed(0)
    inputs = torch.rand(400, 6, 2, generator=g)
    terms = inputs[..., :1] * 3.0
    design = value_design(terms, inputs, 1e-3)  # [1, term, x1, x2, log x1, log x2]
    true = torch.tensor([0.5, 2.0, 0.0, -1.0, 0.3, 0.0])
    y = design @ true + 0.01 * torch.randn(400, 6, generator=g)
    shown = (torch.rand(400, 6, generator=g) < 0.7).float()
    first, second = shown.clone(), shown.clone()
    first[200:], second[:200] = 0, 0
    m = Moments.of(design, y, first) + Moments.of(design, y, second)  # two streamed parts = one fit
    beta = fit_ridge(m, ridge=0.0)
    assert torch.allclose(predict_value(design, beta), design @ true, atol=0.02)
    assert r_squared(m, beta) > 0.99
    noise = torch.randn(400, 6, generator=g)  # a target the regressors do not explain
    flat = fit_ridge(Moments.of(design, noise, shown), ridge=1e-3)
    assert predict_value(design, flat).std() < 0.1 and r_squared(Moments.of(design, noise, shown), flat) < 0.05
