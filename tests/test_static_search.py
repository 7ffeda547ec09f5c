"""static_search: methods find a known simplex optimum, include/budget/determinism, offline NDCG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from blendrank.algos.static_search import (
    METHODS,
    StaticSearchConfig,
    offline_ndcg_objective,
    search_weights,
)
from blendrank.fusion.formulas import fuse, fusion_features
from blendrank.metrics import ndcg_at_k

W_STAR = np.array([0.5, 0.3, 0.15, 0.05])
FAST = ["grid", "cem", "tpe", "cmaes"]


def concave(W: np.ndarray) -> np.ndarray:
    return -((W - W_STAR) ** 2).sum(1)


@pytest.mark.parametrize("method,budget,tol", [("grid", 300, 0.1), ("cem", 300, 0.02),
                                               ("tpe", 150, 0.05), ("cmaes", 300, 0.03)])
def test_methods_reach_known_optimum(method, budget, tol):
    res = search_weights(concave, 4, StaticSearchConfig(method=method, budget=budget))
    assert np.abs(res.best_weights - W_STAR).max() < tol
    assert res.best_weights.sum() == pytest.approx(1.0) and (res.best_weights >= 0).all()
    assert res.best_value == pytest.approx(float(concave(res.best_weights[None])[0]))
    assert res.best_value == max(v for _, v in res.history) and res.method == method


@pytest.mark.parametrize("method", [*FAST, "gp"])
def test_never_worse_than_include_and_budget_respected(method):
    prod = [2.0, 0.0, 1.0, 1.0]  # normalised to [0.5, 0, 0.25, 0.25]; value -0.1175
    cfg = StaticSearchConfig(method=method, budget=12, batch_size=4, cem_population=5,
                             include=[prod, [0, 0, 0, 1]])
    res = search_weights(concave, 4, cfg)
    include_values = concave(np.array([[0.5, 0, 0.25, 0.25], [0, 0, 0, 1]]))
    assert res.best_value >= include_values.max()
    assert res.n_evals == len(res.history) <= cfg.budget + len(cfg.include)
    np.testing.assert_allclose(res.history[0][0], [0.5, 0, 0.25, 0.25])  # include first


def test_include_optimum_is_returned_exactly():
    cfg = StaticSearchConfig(method="cem", budget=50, include=[W_STAR.tolist()])
    res = search_weights(concave, 4, cfg)
    np.testing.assert_array_equal(res.best_weights, W_STAR)
    assert res.best_value == 0.0


@pytest.mark.parametrize("method", FAST)
def test_deterministic_under_seed(method):
    def run(seed):
        res = search_weights(concave, 4, StaticSearchConfig(method=method, budget=40, seed=seed))
        return np.array([w for w, _ in res.history])

    np.testing.assert_array_equal(run(3), run(3))
    if method != "grid":
        assert not np.array_equal(run(3), run(4))


def test_progress_counts_every_evaluation_and_batches():
    seen, sizes = [], []

    def objective(W):
        sizes.append(len(W))
        return concave(W)

    cfg = StaticSearchConfig(method="cem", budget=95, cem_population=20, include=[[1, 1, 1, 1]])
    res = search_weights(objective, 4, cfg, progress=seen.append)
    assert sum(seen) == res.n_evals == 96
    assert sizes == [1, 20, 20, 20, 20, 15]  # include, then batched generations capped by budget


def test_single_objective_and_bad_include_length():
    res = search_weights(lambda W: W[:, 0], 1, StaticSearchConfig())
    assert res.best_weights.tolist() == [1.0] and res.n_evals == 1
    with pytest.raises(ValueError, match="K=4"):
        search_weights(concave, 4, StaticSearchConfig(include=[[1.0, 0.0]]))


def test_config_strict_and_documented():
    with pytest.raises(ValidationError):
        StaticSearchConfig(budgett=10)
    with pytest.raises(ValidationError):
        StaticSearchConfig(method="random")
    with pytest.raises(ValidationError):
        StaticSearchConfig(include=[[1.0, -0.5]])
    for name, field in StaticSearchConfig.model_fields.items():
        assert field.description and len(field.description) > 15, name
    assert set(StaticSearchConfig.model_fields["method"].annotation.__args__) == set(METHODS)


# ---------------------------------------------------------------------------------------------
# offline NDCG objective


def _logs(B=64, L=12, K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    preds = torch.rand(B, L, K, generator=g)
    mask = torch.arange(L).expand(B, L) < torch.randint(4, L + 1, (B, 1), generator=g)
    return preds, mask


def test_offline_ndcg_peaks_on_the_objective_that_orders_the_labels():
    preds, mask = _logs()
    # graded labels that follow the ordering of objective 1's predictions
    labels = {"a": (preds[..., 0] > 0.8).float(), "b": (preds[..., 1] * 4).floor()}
    obj = offline_ndcg_objective(fusion_features(preds), labels, mask, {"b": 1.0}, k=5)
    rng = np.random.default_rng(0)
    W = np.concatenate([np.eye(3), rng.dirichlet(np.ones(3), size=200)])
    values = obj(W)
    assert values.shape == (203,) and values.argmax() == 1
    assert values[1] == pytest.approx(1.0)
    res = search_weights(obj, 3, StaticSearchConfig(method="cem", budget=120))
    assert res.best_value == pytest.approx(1.0) and res.best_weights.argmax() == 1


def test_offline_ndcg_matches_metric_and_is_chunk_invariant():
    preds, mask = _logs(seed=1)
    labels = {"click": (preds[..., 0] + 0.3 * torch.rand(preds.shape[:2]) > 0.9).float(),
              "order": (preds[..., 2] > 0.85).float()}
    feats = fusion_features(preds)
    weights = {"click": 1.0, "order": 2.0}
    W = np.random.default_rng(1).dirichlet(np.ones(3), size=7)
    expected = [sum(a * ndcg_at_k(fuse(feats, torch.tensor(w, dtype=torch.float32)), labels[n],
                                  mask, 10).mean for n, a in weights.items()) for w in W]
    full = offline_ndcg_objective(feats, labels, mask, weights)(W)
    one = offline_ndcg_objective(feats, labels, mask, weights, chunk=2)(W)
    np.testing.assert_allclose(full, expected, rtol=1e-5)
    np.testing.assert_allclose(one, full, rtol=1e-6)
    with pytest.raises(ValueError, match="no labels"):
        offline_ndcg_objective(feats, labels, mask, {"gmv": 1.0})
