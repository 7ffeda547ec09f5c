"""Ranking metrics against sklearn / torchmetrics oracles, hand computations and brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from blendrank.metrics import (
    auc,
    bootstrap_ci,
    dcg_at_k,
    gauc,
    mrr,
    ndcg_at_k,
    ndcg_of_ranking,
    paired_bootstrap_rel_lift,
)

sk = pytest.importorskip("sklearn.metrics")
tm_retrieval = pytest.importorskip("torchmetrics.retrieval")


def make_batch(seed: int, b: int = 40, l: int = 12, tied: bool = True, graded: bool = True):
    """Random padded batch: variable lengths (>= 2), scores with ties, graded labels."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, l + 1, (b,), generator=g)
    mask = torch.arange(l) < lengths[:, None]
    scores = torch.rand(b, l, generator=g, dtype=torch.float64)
    if tied:
        scores = (scores * 4).floor() / 4  # few distinct values: many ties
    labels = torch.randint(0, 4 if graded else 2, (b, l), generator=g).to(torch.float64)
    labels[0, :] = 0.0  # one all-irrelevant request
    scores = scores.masked_fill(~mask, 123.0)  # garbage in padding
    labels = labels.masked_fill(~mask, 7.0)
    return scores, labels, mask


def real(x: torch.Tensor, mask: torch.Tensor, i: int) -> np.ndarray:
    return x[i][mask[i]].numpy()


# ------------------------------------------------------------------------------------------ NDCG


@pytest.mark.parametrize("k", [None, 1, 3, 5])
@pytest.mark.parametrize("tied", [True, False])
def test_ndcg_linear_matches_sklearn(k, tied):
    scores, labels, mask = make_batch(0, tied=tied)
    res = ndcg_at_k(scores, labels, mask, k, gain="linear", ties="average", empty="zero")
    want = [
        sk.ndcg_score(real(labels, mask, i)[None], real(scores, mask, i)[None], k=k)
        for i in range(scores.shape[0])
    ]
    np.testing.assert_allclose(res.per_request.numpy(), want, atol=1e-12)
    assert res.n_used == scores.shape[0] and res.n_skipped == 0


def test_ndcg_sort_ties_matches_sklearn_ignore_ties_without_ties():
    scores, labels, mask = make_batch(1, tied=False)
    res = ndcg_at_k(scores, labels, mask, 4, gain="linear", ties="sort", empty="zero")
    want = [
        sk.ndcg_score(
            real(labels, mask, i)[None], real(scores, mask, i)[None], k=4, ignore_ties=True
        )
        for i in range(scores.shape[0])
    ]
    np.testing.assert_allclose(res.per_request.numpy(), want, atol=1e-12)


def test_ndcg_exp2_equals_sklearn_on_transformed_labels():
    scores, labels, mask = make_batch(2)
    res = ndcg_at_k(scores, labels, mask, 5, empty="zero")  # default gain exp2
    want = [
        sk.ndcg_score(2.0 ** real(labels, mask, i)[None] - 1, real(scores, mask, i)[None], k=5)
        for i in range(scores.shape[0])
    ]
    np.testing.assert_allclose(res.per_request.numpy(), want, atol=1e-12)


def test_ndcg_exp2_by_hand():
    scores = torch.tensor([[3.0, 2.0, 1.0]])
    labels = torch.tensor([[0.0, 1.0, 2.0]])
    dcg = 1 / math.log2(3) + 3 / math.log2(4)
    idcg = 3 + 1 / math.log2(3)
    assert dcg_at_k(scores, labels, None).item() == pytest.approx(dcg, rel=1e-6)
    assert ndcg_at_k(scores, labels, None).mean == pytest.approx(dcg / idcg, rel=1e-6)
    # k=2: DCG@2 = 1/log2(3), IDCG@2 = 3 + 1/log2(3)
    got = ndcg_at_k(scores, labels, None, 2).mean
    assert got == pytest.approx((1 / math.log2(3)) / (3 + 1 / math.log2(3)), rel=1e-6)
    # all tied: every position gets the mean gain (0 + 1 + 3) / 3
    tied = dcg_at_k(torch.zeros(1, 3), labels, None).item()
    assert tied == pytest.approx(4 / 3 * (1 + 1 / math.log2(3) + 0.5), rel=1e-6)


def test_ndcg_average_ties_is_expectation_over_tie_breaks():
    scores = torch.tensor([[1.0, 1.0, 0.5, 1.0, 0.5, 0.0]])
    labels = torch.tensor([[2.0, 0.0, 1.0, 3.0, 0.0, 1.0]])
    perms = [
        p
        for p in itertools.permutations(range(6))
        if all(scores[0, p[i]] >= scores[0, p[i + 1]] for i in range(5))
    ]
    for k in (None, 2, 4):
        vals = [
            ndcg_at_k(torch.tensor([[6.0 - i for i in range(6)]]), labels[:, list(p)], None, k).mean
            for p in perms
        ]
        assert ndcg_at_k(scores, labels, None, k).mean == pytest.approx(np.mean(vals), rel=1e-6)


@pytest.mark.parametrize("k", [None, 3])
def test_ndcg_matches_torchmetrics(k):
    scores, labels, mask = make_batch(3, tied=True)
    indexes = torch.arange(scores.shape[0])[:, None].expand_as(scores)[mask]
    metric = tm_retrieval.RetrievalNormalizedDCG(empty_target_action="skip", top_k=k)
    want = metric(scores[mask].float(), labels[mask].long(), indexes=indexes).item()
    res = ndcg_at_k(scores, labels, mask, k, gain="linear", ties="average", empty="skip")
    assert res.mean == pytest.approx(want, abs=1e-5)
    assert res.n_skipped == 1


def test_ndcg_empty_and_single_candidate():
    scores = torch.tensor([[0.3, 0.1, 0.2], [0.9, 5.0, 5.0], [0.1, 0.2, 0.3]])
    labels = torch.tensor([[0.0, 0.0, 0.0], [2.0, 9.0, 9.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])
    skip = ndcg_at_k(scores, labels, mask)
    assert math.isnan(skip.per_request[0]) and skip.per_request[1] == 1.0
    assert math.isnan(skip.per_request[2])
    assert (skip.n_used, skip.n_skipped, skip.mean) == (1, 2, 1.0)
    assert ndcg_at_k(scores, labels, mask, empty="zero").per_request.tolist() == [0.0, 1.0, 0.0]
    assert ndcg_at_k(scores, labels, mask, empty="one").per_request.tolist() == [1.0, 1.0, 1.0]
    labels[1, 0] = 0.0
    none = ndcg_at_k(scores, labels, mask)
    assert none.n_used == 0 and math.isnan(none.mean)


def test_ndcg_of_ranking_matches_ndcg_at_k():
    scores, labels, mask = make_batch(4, tied=False)
    k = 5
    order = scores.masked_fill(~mask, -math.inf).topk(k, dim=-1).indices  # may point at padding
    got = ndcg_of_ranking(order, labels, mask, empty="zero")
    want = ndcg_at_k(scores, labels, mask, k, ties="sort", empty="zero")
    torch.testing.assert_close(got.per_request, want.per_request)
    # -1 marks an empty slot; an all-empty page scores 0 where there is something relevant.
    blank = ndcg_of_ranking(torch.full((scores.shape[0], k), -1), labels, mask, empty="skip")
    assert blank.n_skipped == 1 and torch.all(blank.per_request[1:] == 0)


# ------------------------------------------------------------------------------------------- MRR


def test_mrr_without_ties_matches_torchmetrics():
    g = torch.Generator().manual_seed(5)
    scores = torch.rand(30, 10, generator=g) + 0.01  # torchmetrics ignores preds <= 0
    labels = (torch.rand(30, 10, generator=g) < 0.2).float()
    mask = torch.arange(10) < torch.randint(1, 11, (30, 1), generator=g)
    indexes = torch.arange(30)[:, None].expand_as(scores)[mask]
    for k in (None, 3):
        metric = tm_retrieval.RetrievalMRR(empty_target_action="skip", top_k=k)
        want = metric(scores[mask], labels[mask].long(), indexes=indexes).item()
        res = mrr(scores, labels, mask, k)
        assert res.mean == pytest.approx(want, abs=1e-6)
        assert res.n_skipped == int((~(labels.bool() & mask).any(-1)).sum())


def test_mrr_average_ties_is_expectation_over_tie_breaks():
    g = torch.Generator().manual_seed(6)
    for _ in range(10):
        scores = torch.randint(0, 3, (1, 6), generator=g).float()
        labels = (torch.rand(1, 6, generator=g) < 0.4).float()
        labels[0, 0] = 1.0
        for k in (None, 2):
            vals = []
            for p in itertools.permutations(range(6)):
                if all(scores[0, p[i]] >= scores[0, p[i + 1]] for i in range(5)):
                    first = next(i for i in range(6) if labels[0, p[i]] > 0) + 1
                    vals.append(1 / first if k is None or first <= k else 0.0)
            assert mrr(scores, labels, None, k).mean == pytest.approx(np.mean(vals), rel=1e-6)
    assert mrr(torch.ones(1, 4), torch.tensor([[0.0, 1, 0, 0]]), None, ties="sort").mean == 0.5


# ------------------------------------------------------------------------------------------- AUC


def test_auc_matches_sklearn_with_ties_and_padding():
    scores, labels, mask = make_batch(7, graded=False)
    want = sk.roc_auc_score(labels[mask].numpy(), scores[mask].numpy())
    assert auc(scores, labels, mask) == pytest.approx(want, abs=1e-12)
    assert math.isnan(auc(scores, torch.zeros_like(labels), mask))


def test_gauc_matches_sklearn_per_request():
    scores, labels, mask = make_batch(8, graded=False)
    scores[1, :] = 0.5  # constant prediction
    labels[2, :] = 1.0  # single class
    res = gauc(scores, labels, mask)
    aucs, weights, used = [], [], []
    for i in range(scores.shape[0]):
        y, s = real(labels, mask, i), real(scores, mask, i)
        ok = 0 < y.sum() < len(y) and s.min() < s.max()
        used.append(ok)
        if ok:
            aucs.append(sk.roc_auc_score(y, s))
            weights.append(len(y))
    np.testing.assert_allclose(res.per_request.numpy()[used], aucs, atol=1e-12)
    assert np.isnan(res.per_request.numpy()[~np.array(used)]).all()
    assert (res.n_used, res.n_skipped) == (sum(used), len(used) - sum(used))
    assert res.mean == pytest.approx(np.mean(aucs))
    weighted = gauc(scores, labels, mask, weighting="impressions")
    assert weighted.mean == pytest.approx(np.average(aucs, weights=weights))
    keep_all = gauc(scores, labels, mask, skip_single_class=False, skip_constant_pred=False)
    assert keep_all.n_used == scores.shape[0]
    assert keep_all.per_request[1] == 0.5 and keep_all.per_request[2] == 0.5


def test_gauc_matches_torchmetrics():
    g = torch.Generator().manual_seed(9)
    scores = torch.rand(25, 8, generator=g)
    labels = (torch.rand(25, 8, generator=g) < 0.4).float()
    labels[:, 0], labels[:, 1] = 1.0, 0.0  # both classes everywhere
    mask = torch.arange(8) < torch.randint(2, 9, (25, 1), generator=g)
    indexes = torch.arange(25)[:, None].expand_as(scores)[mask]
    want = tm_retrieval.RetrievalAUROC()(scores[mask], labels[mask].long(), indexes=indexes)
    assert gauc(scores, labels, mask).mean == pytest.approx(want.item(), abs=1e-6)


# ---------------------------------------------------------------------------- invariance, shapes


def test_padding_and_permutation_invariance():
    scores, labels, mask = make_batch(10)
    b, l = scores.shape
    g = torch.Generator().manual_seed(11)
    junk_s = torch.randn(b, 5, generator=g, dtype=torch.float64) * 1e3
    junk_s[:, 0] = math.nan
    junk_y = torch.full((b, 5), math.nan, dtype=torch.float64)
    big_s, big_y = torch.cat([scores, junk_s], 1), torch.cat([labels, junk_y], 1)
    big_m = torch.cat([mask, torch.zeros(b, 5, dtype=torch.bool)], 1)
    perm = torch.randperm(l + 5, generator=g)  # padding lands between real candidates
    big_s, big_y, big_m = big_s[:, perm], big_y[:, perm], big_m[:, perm]

    def all_metrics(s, y, m):
        return [
            ndcg_at_k(s, y, m, 3).per_request,
            ndcg_at_k(s, y, m, gain="linear", empty="zero").per_request,
            mrr(s, y, m).per_request,
            gauc((s > 0.4).double() * s, (y > 1).double(), m).per_request,
            torch.tensor([auc(s, (y > 1).double(), m)]),
        ]

    for a, c in zip(all_metrics(scores, labels, mask), all_metrics(big_s, big_y, big_m)):
        torch.testing.assert_close(a, c, equal_nan=True)


def test_bad_inputs_raise():
    s = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="labels must be >= 0"):
        ndcg_at_k(s, -torch.ones(2, 3), None)
    with pytest.raises(ValueError, match="k must be"):
        ndcg_at_k(s, s, None, 0)
    with pytest.raises(ValueError, match="gain"):
        ndcg_at_k(s, s, None, gain="log")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        mrr(s, torch.zeros(3), None)


# ------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_covers_and_is_reproducible():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, 2000)
    mean, lo, hi = bootstrap_ci(x, n_boot=1000, seed=1)
    assert lo < 1.0 < hi and lo < mean < hi and hi - lo < 0.2
    assert bootstrap_ci(x, n_boot=1000, seed=1) == (mean, lo, hi)
    with_nan = torch.tensor(np.r_[x, np.nan, np.nan])
    assert bootstrap_ci(with_nan, n_boot=1000, seed=1) == (mean, lo, hi)
    assert bootstrap_ci(x, n_boot=1000, seed=2) != (mean, lo, hi)
    intervals = [bootstrap_ci(rng.normal(0, 1, 200), 400, seed=s) for s in range(200)]
    assert 0.88 <= np.mean([lo_ < 0.0 < hi_ for _, lo_, hi_ in intervals]) <= 0.99
    assert all(math.isnan(v) for v in bootstrap_ci([math.nan]))


def test_paired_bootstrap_rel_lift():
    rng = np.random.default_rng(3)
    b = rng.uniform(1, 2, 500)
    rel, lo, hi = paired_bootstrap_rel_lift(1.1 * b, b, seed=0)
    assert rel == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    a = b + rng.normal(0.05, 0.1, 500)
    rel, lo, hi = paired_bootstrap_rel_lift(a, b, n_boot=2000, seed=0)
    assert lo < rel < hi and lo > 0
    unpaired = bootstrap_ci(a - b, n_boot=2000, seed=0)  # same resamples: lift = diff / mean(b)
    assert rel == pytest.approx(unpaired[0] / b.mean())
    assert paired_bootstrap_rel_lift(a, b, n_boot=2000, seed=0) == (rel, lo, hi)
    with pytest.raises(ValueError):
        paired_bootstrap_rel_lift(a, b[:-1])
