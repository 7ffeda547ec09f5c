"""LambdaLoss: hand-computed values per scheme, padding invariance, gradients, truncation."""

from __future__ import annotations

import math

import pytest
import torch

from blendrank.losses.lambdaloss import WEIGHTINGS, lambda_loss, multi_objective_lambda_loss

LOG2 = math.log2
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


def sp(x: float) -> float:
    """-log2 sigmoid(x)."""
    return LOG2(1.0 + math.exp(-x))


# One request, 3 candidates. Predicted ranking: slot 1 (s=2, y=0), slot 2 (s=1, y=1),
# slot 0 (s=0.5, y=2). By rank r = 1, 2, 3: s = [2, 1, 0.5], y = [0, 1, 2].
S = torch.tensor([[0.5, 2.0, 1.0]], dtype=torch.float64)
Y = torch.tensor([[2.0, 0.0, 1.0]], dtype=torch.float64)
S_R = [2.0, 1.0, 0.5]
Z = 3.0 / 1.0 + 1.0 / LOG2(3.0)  # ideal DCG: gains (2^y - 1) = 3, 1, 0 at ranks 1, 2, 3
G = [0.0 / Z, 1.0 / Z, 3.0 / Z]  # normalised gains by predicted rank
D = [LOG2(2.0), LOG2(3.0), LOG2(4.0)]  # D_r = log2(1 + r)
PAIRS = [(1, 0), (2, 0), (2, 1)]  # 0-based ranks (i, j) with y_i > y_j


def _delta(d: int) -> float:
    """ndcgLoss2 position term |1/D(d) - 1/D(d + 1)|, D(x) = log2(1 + x)."""
    return abs(1.0 / LOG2(1.0 + d) - 1.0 / LOG2(2.0 + d))


def _hand(scheme: str) -> float:
    total = 0.0
    if scheme == "ndcgLoss1":
        for i in range(3):
            for j in range(3):
                if i != j:
                    total += G[i] / D[i] * sp(S_R[i] - S_R[j])
        return total
    for i, j in PAIRS:
        dG = abs(G[i] - G[j])
        lam = abs(1.0 / D[i] - 1.0 / D[j]) * dG
        nd2 = _delta(abs(i - j)) * dG
        w = {"rankNet": 1.0, "lambdaRank": lam, "ndcgLoss2": nd2, "ndcgLoss2PP": 10.0 * nd2 + lam}[scheme]
        total += w * sp(S_R[i] - S_R[j])
    return total


@pytest.mark.parametrize("scheme", WEIGHTINGS)
def test_hand_computed_values(scheme: str) -> None:
    got = lambda_loss(S, Y, None, weighting=scheme)
    assert float(got) == pytest.approx(_hand(scheme), rel=1e-10)


def test_allrank_scheme_spelling_and_unknown() -> None:
    a = lambda_loss(S, Y, weighting="ndcgLoss2_scheme")
    b = lambda_loss(S, Y, weighting="ndcgLoss2")
    assert float(a) == float(b)
    with pytest.raises(ValueError, match="unknown weighting"):
        lambda_loss(S, Y, weighting="ndcgLoss3")


def test_natural_log_and_sigma() -> None:
    got = lambda_loss(S, Y, weighting="rankNet", reduction_log="natural", sigma=2.0)
    want = sum(math.log(1.0 + math.exp(-2.0 * (S_R[i] - S_R[j]))) for i, j in PAIRS)
    assert float(got) == pytest.approx(want, rel=1e-10)


def test_linear_gain() -> None:
    z = 2.0 + 1.0 / LOG2(3.0)
    g = [0.0, 1.0 / z, 2.0 / z]
    want = sum(abs(1.0 / D[i] - 1.0 / D[j]) * abs(g[i] - g[j]) * sp(S_R[i] - S_R[j]) for i, j in PAIRS)
    got = lambda_loss(S, Y, weighting="lambdaRank", gain="linear")
    assert float(got) == pytest.approx(want, rel=1e-10)


def test_truncation_both_and_either() -> None:
    # ranks 1..4: s = [2, 1, 0.5, 0], y = [0, 1, 2, 0]
    s = torch.tensor([[0.5, 2.0, 1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[2.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    sr = [2.0, 1.0, 0.5, 0.0]
    # y_i > y_j pairs by 0-based rank: (1,0) (2,0) (1,3) (2,1) (2,3)
    both = lambda_loss(s, y, weighting="rankNet", k=2)
    assert float(both) == pytest.approx(sp(sr[1] - sr[0]), rel=1e-10)  # both ranks <= 2
    either = lambda_loss(s, y, weighting="rankNet", k=2, truncation="either")
    want = sum(sp(sr[i] - sr[j]) for i, j in [(1, 0), (2, 0), (1, 3), (2, 1)])  # (2,3) dropped
    assert float(either) == pytest.approx(want, rel=1e-10)
    full = lambda_loss(s, y, weighting="rankNet")
    want_full = want + sp(sr[2] - sr[3])
    assert float(full) == pytest.approx(want_full, rel=1e-10)


def test_truncation_changes_ideal_dcg() -> None:
    # k = 1: ideal DCG@1 = 3 (label 2 first); the only pair within the top 1 is none, so the
    # lambdaRank loss is 0 for "both" and counts pairs with rank 1 for "either".
    got = lambda_loss(S, Y, weighting="lambdaRank", k=1, truncation="either")
    g = [0.0, 1.0 / 3.0, 3.0 / 3.0]
    want = sum(abs(1.0 / D[i] - 1.0 / D[j]) * abs(g[i] - g[j]) * sp(S_R[i] - S_R[j]) for i, j in [(1, 0), (2, 0)])
    assert float(got) == pytest.approx(want, rel=1e-10)
    assert float(lambda_loss(S, Y, weighting="lambdaRank", k=1)) == 0.0


def _padded(s: torch.Tensor, y: torch.Tensor, extra: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Interleave `extra` padded slots holding garbage (NaN/inf scores, negative labels)."""
    gen = torch.Generator().manual_seed(seed)
    b, n = s.shape
    total = n + extra
    s_p = torch.empty(b, total, dtype=s.dtype)
    y_p = torch.empty(b, total, dtype=y.dtype)
    m_p = torch.zeros(b, total, dtype=torch.bool)
    slots = []
    for r in range(b):
        real = torch.randperm(total, generator=gen)[:n].sort().values
        slots.append(real)
        garbage_s = torch.tensor([float("nan"), float("inf"), 1e6, -5.0] * total, dtype=s.dtype)[:total]
        s_p[r] = garbage_s
        y_p[r] = torch.tensor([-1.0, 7.0, float("nan")] * total, dtype=y.dtype)[:total]
        s_p[r, real] = s[r]
        y_p[r, real] = y[r]
        m_p[r, real] = True
    return s_p, y_p, m_p, torch.stack(slots)


@pytest.mark.parametrize("scheme", WEIGHTINGS)
@pytest.mark.parametrize("truncation", ["both", "either"])
def test_padding_invariance(scheme: str, truncation: str) -> None:
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (5, 7), generator=gen).to(torch.float64)
    y[2] = 0.0  # an uninformative request in the batch
    s_p, y_p, m_p, slots = _padded(s, y, extra=4, seed=2)
    s = s.requires_grad_()
    s_p = s_p.requires_grad_()
    base = lambda_loss(s, y, None, weighting=scheme, k=4, truncation=truncation)
    padded = lambda_loss(s_p, y_p, m_p, weighting=scheme, k=4, truncation=truncation)
    assert torch.isfinite(padded)
    assert float(padded) == pytest.approx(float(base), rel=1e-12)
    (g,) = torch.autograd.grad(base, s)
    (g_p,) = torch.autograd.grad(padded, s_p)
    assert torch.isfinite(g_p).all()
    assert torch.allclose(g_p.gather(1, slots), g, atol=1e-12)
    assert float(g_p[~m_p].abs().sum()) == 0.0


@pytest.mark.parametrize("scheme", ["ndcgLoss2", "ndcgLoss2PP", "lambdaRank", "rankNet"])
def test_gradient_sign_pairwise(scheme: str) -> None:
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(4, 6, generator=gen).requires_grad_()
    y = torch.tensor([[2.0, 1.0, 0.0, 0.0, 1.0, 0.0]]).repeat(4, 1)
    loss = lambda_loss(s, y, weighting=scheme)
    (g,) = torch.autograd.grad(loss, s)
    assert (g[:, 0] < 0).all()  # most relevant: raising its score lowers the loss
    assert (g[:, 2] > 0).all()  # irrelevant: raising its score raises the loss
    # and a finite step confirms it
    with torch.no_grad():
        bumped = s.clone()
        bumped[:, 0] += 0.1
        assert float(lambda_loss(bumped, y, weighting=scheme)) < float(loss)


def test_gradient_sign_ndcg_loss1_irrelevant() -> None:
    s = torch.tensor([[0.3, -0.2, 0.9, 0.1]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 0.0, 2.0]])
    (g,) = torch.autograd.grad(lambda_loss(s, y, weighting="ndcgLoss1"), s)
    assert g[0, 1] > 0 and g[0, 2] > 0  # G = 0 rows: they only lose by being ranked up


@pytest.mark.parametrize("scheme", WEIGHTINGS)
def test_all_zero_request_is_zero_and_excluded(scheme: str) -> None:
    s = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[0.0, 1.0, 2.0, 0.0, 1.0], [0.0] * 5], dtype=torch.float64)
    per = lambda_loss(s, y, weighting=scheme, reduction="none")
    assert float(per[1]) == 0.0
    mean = lambda_loss(s, y, weighting=scheme)
    assert float(mean) == pytest.approx(float(per[0]), rel=1e-12)  # mean over informative only
    (g,) = torch.autograd.grad(mean, s)
    assert torch.isfinite(g).all() and float(g[1].abs().sum()) == 0.0
    only_zero = lambda_loss(s[1:], y[1:], weighting=scheme)
    assert float(only_zero) == 0.0
    (g0,) = torch.autograd.grad(only_zero, s)
    assert torch.isfinite(g0).all()


def test_reductions() -> None:
    s = torch.randn(3, 5, dtype=torch.float64)
    y = torch.tensor([[0, 1, 2, 0, 1], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]], dtype=torch.float64)
    per = lambda_loss(s, y, reduction="none")
    assert per.shape == (3,) and float(per[1]) == 0.0  # all equal labels: no pair
    assert float(lambda_loss(s, y, reduction="sum")) == pytest.approx(float(per.sum()))
    assert float(lambda_loss(s, y, reduction="mean")) == pytest.approx(float(per.sum() / 2))


def test_extreme_scores_finite() -> None:
    s = torch.tensor([[-1e4, 1e4, 0.0]], requires_grad=True)
    y = torch.tensor([[2.0, 0.0, 1.0]])
    loss = lambda_loss(s, y, weighting="rankNet")
    (g,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(loss) and torch.isfinite(g).all() and float(loss) > 1e3


def test_multi_objective_is_weighted_sum() -> None:
    gen = torch.Generator().manual_seed(4)
    s = torch.randn(6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    click = (torch.rand(6, 8, generator=gen) < 0.3).to(torch.float64)
    order = click * (torch.rand(6, 8, generator=gen) < 0.5).to(torch.float64)
    mask = torch.rand(6, 8, generator=gen) < 0.8
    kw = {"weighting": "ndcgLoss2PP", "k": 5}
    got = multi_objective_lambda_loss(s, {"click": click, "order": order, "x": click}, {"click": 1.0, "order": 3.0, "x": 0.0}, mask, **kw)
    want = 1.0 * lambda_loss(s, click, mask, **kw) + 3.0 * lambda_loss(s, order, mask, **kw)
    assert float(got) == pytest.approx(float(want), rel=1e-12)
    g1 = torch.autograd.grad(got, s)[0]
    g2 = torch.autograd.grad(want, s)[0]
    assert torch.allclose(g1, g2)
    none = multi_objective_lambda_loss(s, {"click": click}, {"click": 2.0}, mask, reduction="none", **kw)
    assert torch.allclose(none, 2.0 * lambda_loss(s, click, mask, reduction="none", **kw))


def test_multi_objective_errors_and_empty() -> None:
    s = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(KeyError):
        multi_objective_lambda_loss(s, {"click": torch.zeros(2, 3)}, {"order": 1.0})
    zero = multi_objective_lambda_loss(s, {"click": torch.ones(2, 3)}, {"click": 0.0})
    assert float(zero) == 0.0 and zero.requires_grad


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        lambda_loss(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match=">= 0"):
        lambda_loss(torch.zeros(1, 2), torch.tensor([[-1.0, 0.0]]))
    with pytest.raises(ValueError):
        lambda_loss(S, Y, k=0)
