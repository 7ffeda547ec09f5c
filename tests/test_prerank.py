"""Prerank: the two-tower model recalls held-out positives better than chance; fallbacks."""

import numpy as np
import pytest

from blendrank.errors import ConfigError
from blendrank.prerank import Prerank, PrerankConfig, fit_prerank, recall_at_n


def _synthetic(seed: int = 0, n_users: int = 300, n_items: int = 400, per_user: int = 40):
    """Users and items in 4 latent clusters; a user clicks mostly items of their own cluster."""
    rng = np.random.default_rng(seed)
    u_cl, i_cl = rng.integers(4, size=n_users), rng.integers(4, size=n_items)
    users = np.repeat(np.arange(n_users), per_user)
    items = rng.integers(n_items, size=len(users))
    p = np.where(u_cl[users] == i_cl[items], 0.8, 0.02)
    labels = (rng.random(len(users)) < p).astype(np.int8)
    # Held-out positives: one fresh in-cluster item per user.
    held = np.array([rng.choice(np.flatnonzero(i_cl == u_cl[u])) for u in range(n_users)])
    return users, items, labels, np.arange(n_users), held, n_users, n_items


def test_two_tower_recall_beats_random_and_popularity():
    users, items, labels, hu, hi, nu, ni = _synthetic()
    model = fit_prerank(users, items, labels, nu, ni, PrerankConfig(epochs=10, batch_size=128, min_user_positives=1, seed=0))
    n = 50
    recall = recall_at_n(model, hu, hi, n)
    pop = recall_at_n(Prerank(popularity=model.popularity), hu, hi, n)
    assert recall > 2 * n / ni  # random recall@N is N / I
    assert recall > pop + 0.1


def test_cold_users_and_missing_model_use_popularity():
    users, items, labels, _, _, nu, ni = _synthetic(n_users=50, n_items=100, per_user=20)
    model = fit_prerank(users, items, labels, nu + 5, ni, PrerankConfig(epochs=1, min_user_positives=1))
    cold_user = nu + 2  # in the index space, never logged
    assert model.is_cold(np.array([cold_user, 0, -1, 10_000])).tolist() == [True, False, True, True]
    s = model.scores(np.array([cold_user, 0]))
    np.testing.assert_allclose(s[0], model.popularity)
    assert not np.allclose(s[1], model.popularity)
    pop_only = fit_prerank(users, items, labels, nu, ni, PrerankConfig(model="popularity"))
    assert pop_only.user_vec is None and pop_only.is_cold(np.array([0])).all()
    top = pop_only.candidates(np.array([0]), 5)[0]
    assert set(top) == set(np.argsort(-pop_only.popularity, kind="stable")[:5]) or \
        np.allclose(np.sort(pop_only.popularity[top]), np.sort(pop_only.popularity)[-5:])


def test_candidates_are_distinct_exclude_and_deterministic(tmp_path):
    users, items, labels, _, _, nu, ni = _synthetic(n_users=40, n_items=60, per_user=10)
    model = fit_prerank(users, items, labels, nu, ni, PrerankConfig(epochs=1))
    exclude = np.zeros((3, ni), dtype=bool)
    exclude[:, :30] = True
    a = model.candidates(np.array([0, 1, 2]), 20, np.random.default_rng(1), exclude)
    b = model.candidates(np.array([0, 1, 2]), 20, np.random.default_rng(1), exclude)
    np.testing.assert_array_equal(a, b)
    assert all(len(set(r)) == 20 for r in a) and (a >= 30).all()
    model.save(tmp_path / "p.npz")
    again = Prerank.load(tmp_path / "p.npz")
    np.testing.assert_array_equal(again.candidates(np.array([0, 1, 2]), 20), model.candidates(np.array([0, 1, 2]), 20))
    with pytest.raises(ConfigError, match="pool"):
        model.candidates(np.array([0]), ni + 1)
