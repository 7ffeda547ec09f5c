"""GRPO maths: group advantages, clipped surrogate, KL estimators."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Dirichlet

from blendrank.losses.grpo import GRPOLossOutput, dirichlet_kl, group_advantages, grpo_loss, k3_kl

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


# --------------------------------------------------------------------------- advantages


def test_group_batch_none_scaling_by_hand() -> None:
    r = torch.tensor([[0.0, 2.0], [0.0, 4.0]], dtype=torch.float64)
    eps = 1e-4
    adv, zero = group_advantages(r, "group", eps)
    s1, s2 = math.sqrt(2.0), math.sqrt(8.0)  # unbiased std of (0, 2) and (0, 4)
    want = torch.tensor([[-1 / (s1 + eps), 1 / (s1 + eps)], [-2 / (s2 + eps), 2 / (s2 + eps)]], dtype=torch.float64)
    assert torch.allclose(adv, want)
    assert not zero.any()
    adv_b, _ = group_advantages(r, "batch", eps)
    sb = math.sqrt(((0 - 1.5) ** 2 + (2 - 1.5) ** 2 + (0 - 1.5) ** 2 + (4 - 1.5) ** 2) / 3)
    assert torch.allclose(adv_b, torch.tensor([[-1.0, 1.0], [-2.0, 2.0]], dtype=torch.float64) / (sb + eps))
    adv_n, _ = group_advantages(r, "none")
    assert torch.equal(adv_n, torch.tensor([[-1.0, 1.0], [-2.0, 2.0]], dtype=torch.float64))


def test_batch_scaling_keeps_group_magnitudes_group_scaling_equalises() -> None:
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(8, 16, generator=gen) * torch.linspace(1.0, 10.0, 8)[:, None]
    g, _ = group_advantages(r, "group")
    b, _ = group_advantages(r, "batch")
    assert torch.allclose(g.std(dim=1), torch.ones(8), atol=1e-3)  # every group has unit std
    ratio = b.std(dim=1) / r.std(dim=1)  # one common factor for all groups
    assert torch.allclose(ratio, ratio[0].expand(8), rtol=1e-5)
    assert torch.allclose(g.mean(1), torch.zeros(8), atol=1e-5)
    assert torch.allclose(b.mean(1), torch.zeros(8), atol=1e-5)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_zero_variance_groups_zero_advantage_and_gradient(scale: str) -> None:
    r = torch.tensor([[0.3] * 5, [1.0, 2.0, 0.0, 1.0, 3.0], [0.1] * 5])
    adv, zero = group_advantages(r, scale)
    assert zero.tolist() == [True, False, True]
    assert float(adv[0].abs().sum()) == 0.0 and float(adv[2].abs().sum()) == 0.0
    logp = torch.randn(3, 5, requires_grad=True)
    out = grpo_loss(logp, logp.detach() + 0.05 * torch.randn(3, 5), adv)
    (g,) = torch.autograd.grad(out.loss, logp)
    assert float(g[0].abs().sum()) == 0.0 and float(g[2].abs().sum()) == 0.0
    assert float(g[1].abs().sum()) > 0.0


def test_nonfinite_rewards_left_out() -> None:
    r = torch.tensor([[1.0, float("nan"), 3.0, 2.0]])
    adv, zero = group_advantages(r, "none")
    assert torch.equal(adv, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))
    assert not zero.any()
    adv1, zero1 = group_advantages(torch.tensor([[float("nan"), 2.0]]), "group")
    assert zero1.all() and float(adv1.abs().sum()) == 0.0


def test_advantage_input_checks() -> None:
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(4))
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(2, 2), "grp")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- clipped surrogate

RATIOS = [0.5, 0.79, 0.9, 1.0, 1.1, 1.21, 1.25, 1.5]


def _grads(eps: float, eps_high: float | None) -> tuple[torch.Tensor, torch.Tensor, GRPOLossOutput]:
    ratios = torch.tensor(RATIOS, dtype=torch.float64)
    adv = torch.tensor([[1.0] * len(RATIOS), [-1.0] * len(RATIOS)], dtype=torch.float64)
    logp_old = torch.zeros(2, len(RATIOS), dtype=torch.float64)
    logp_new = ratios.log().repeat(2, 1).requires_grad_()
    out = grpo_loss(logp_new, logp_old, adv, epsilon=eps, epsilon_high=eps_high)
    (g,) = torch.autograd.grad(out.loss, logp_new)
    return g, adv, out


@pytest.mark.parametrize("eps_high", [None, 0.28])
def test_clip_zero_gradient_exactly_where_expected(eps_high: float | None) -> None:
    eps = 0.2
    hi = eps if eps_high is None else eps_high
    g, _adv, out = _grads(eps, eps_high)
    n = g.numel()
    for row, a in enumerate([1.0, -1.0]):
        for col, rho in enumerate(RATIOS):
            clipped = (a > 0 and rho > 1 + hi) or (a < 0 and rho < 1 - eps)
            if clipped:
                assert float(g[row, col]) == 0.0, (a, rho)
            else:  # d/dlogp of -rho*A/n = -rho*A/n
                assert float(g[row, col]) == pytest.approx(-rho * a / n, rel=1e-12), (a, rho)
    n_low = sum(r < 1 - eps for r in RATIOS)
    n_high = sum(r > 1 + hi for r in RATIOS)
    assert float(out.clip_frac_low) == pytest.approx(n_low / n)
    assert float(out.clip_frac_high) == pytest.approx(n_high / n)
    assert float(out.ratio_mean) == pytest.approx(sum(RATIOS) / len(RATIOS))


def test_epsilon_high_asymmetry() -> None:
    sym, _, out_sym = _grads(0.2, None)
    asym, _, out_asym = _grads(0.2, 0.28)
    col = RATIOS.index(1.25)  # inside 1 + 0.28, outside 1 + 0.2
    assert float(sym[0, col]) == 0.0 and float(asym[0, col]) != 0.0
    low = RATIOS.index(0.79)  # lower side unchanged by epsilon_high
    assert float(sym[1, low]) == 0.0 and float(asym[1, low]) == 0.0
    assert float(out_asym.clip_frac_high) < float(out_sym.clip_frac_high)
    assert float(out_asym.clip_frac_low) == float(out_sym.clip_frac_low)


def test_loss_value_by_hand() -> None:
    logp_old = torch.zeros(1, 3, dtype=torch.float64)
    logp_new = torch.tensor([[math.log(1.5), math.log(0.5), math.log(1.1)]], dtype=torch.float64)
    adv = torch.tensor([[2.0, -1.0, -0.5]], dtype=torch.float64)
    out = grpo_loss(logp_new, logp_old, adv, epsilon=0.2)
    # min(1.5*2, 1.2*2) = 2.4; min(-0.5, -0.8) = -0.8; min(-0.55, -0.55) = -0.55
    assert float(out.loss_objective) == pytest.approx(-(2.4 - 0.8 - 0.55) / 3)
    assert float(out.loss) == float(out.loss_objective)
    assert float(out.loss_kl) == 0.0 and float(out.loss_entropy) == 0.0
    assert math.isnan(float(out.kl)) and math.isnan(float(out.entropy))


def test_kl_and_entropy_terms() -> None:
    logp = torch.zeros(2, 3, requires_grad=True)
    adv = torch.zeros(2, 3)
    kl_state = torch.tensor([0.1, 0.3], requires_grad=True)
    ent = torch.tensor([1.0, 2.0], requires_grad=True)
    out = grpo_loss(logp, logp.detach(), adv, beta=0.04, kl=kl_state, entropy=ent, entropy_coef=0.01)
    assert float(out.loss_kl) == pytest.approx(0.04 * 0.2)
    assert float(out.loss_entropy) == pytest.approx(-0.01 * 1.5)
    assert float(out.loss) == pytest.approx(0.04 * 0.2 - 0.01 * 1.5)
    assert float(out.kl) == pytest.approx(0.2) and float(out.entropy) == pytest.approx(1.5)
    gk, ge = torch.autograd.grad(out.loss, [kl_state, ent])
    assert torch.allclose(gk, torch.full((2,), 0.02)) and torch.allclose(ge, torch.full((2,), -0.005))
    per_sample = torch.tensor([[0.1, 0.2, 0.3], [0.0, 0.0, 0.6]])
    out2 = grpo_loss(logp, logp.detach(), adv, beta=1.0, kl=per_sample)
    assert float(out2.loss_kl) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="beta"):
        grpo_loss(logp, logp.detach(), adv, beta=0.1)
    # beta = 0 with a KL: logged, not in the loss
    out3 = grpo_loss(logp, logp.detach(), adv, kl=kl_state)
    assert float(out3.loss_kl) == 0.0 and float(out3.kl) == pytest.approx(0.2)


def test_mask_drops_samples() -> None:
    logp_old = torch.zeros(2, 2)
    logp_new = torch.zeros(2, 2, requires_grad=True)
    adv = torch.tensor([[1.0, -1.0], [5.0, 7.0]])
    mask = torch.tensor([[True, True], [False, False]])
    out = grpo_loss(logp_new, logp_old, adv, mask=mask, kl=torch.tensor([1.0, 9.0]))
    assert float(out.loss_objective) == 0.0  # only row 0: (1 - 1) / 2
    assert float(out.kl) == 1.0
    (g,) = torch.autograd.grad(out.loss, logp_new)
    assert float(g[1].abs().sum()) == 0.0


def test_extreme_ratio_stays_finite() -> None:
    logp_new = torch.tensor([[500.0, -500.0, 0.0]], requires_grad=True)
    out = grpo_loss(logp_new, torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 1.0]]))
    (g,) = torch.autograd.grad(out.loss, logp_new)
    assert torch.isfinite(out.loss) and torch.isfinite(g).all()


def test_output_is_frozen_and_shape_checked() -> None:
    out = grpo_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2))
    with pytest.raises(AttributeError):
        out.loss = torch.zeros(())  # type: ignore[misc]
    with pytest.raises(ValueError):
        grpo_loss(torch.zeros(1, 2), torch.zeros(2, 1), torch.zeros(1, 2))


# --------------------------------------------------------------------------- KL


def test_dirichlet_kl_exact_properties() -> None:
    a = torch.tensor([[2.0, 3.0, 1.5], [1.0, 1.0, 1.0]], requires_grad=True)
    b = torch.tensor([[2.5, 2.5, 2.0], [1.0, 1.0, 1.0]])
    kl = dirichlet_kl(a, b)
    assert kl.shape == (2,) and float(kl[0]) > 0 and float(kl[1]) == pytest.approx(0.0, abs=1e-6)
    (g,) = torch.autograd.grad(kl.sum(), a)
    assert torch.isfinite(g).all()


def test_k3_matches_exact_kl_in_expectation() -> None:
    torch.manual_seed(0)
    alpha_p = torch.tensor([2.0, 3.0, 1.5], dtype=torch.float64)
    alpha_q = torch.tensor([2.5, 2.5, 2.0], dtype=torch.float64)
    p, q = Dirichlet(alpha_p), Dirichlet(alpha_q)
    w = p.sample((200_000,)).clamp_min(1e-300)
    k3 = k3_kl(p.log_prob(w)[None], q.log_prob(w)[None])[0]
    exact = float(dirichlet_kl(alpha_p[None], alpha_q[None])[0])
    se = float(k3.std()) / math.sqrt(k3.numel())
    assert (k3 >= 0).all()
    assert abs(float(k3.mean()) - exact) < 4 * se + 1e-4, (float(k3.mean()), exact, se)


def test_k3_values() -> None:
    lp = torch.tensor([[0.0, -1.0, 2.0]])
    ref = torch.tensor([[0.0, 0.0, 1.0]])
    r = ref - lp
    assert torch.allclose(k3_kl(lp, ref), torch.exp(r) - r - 1)
    assert float(k3_kl(lp, lp).abs().sum()) == 0.0
