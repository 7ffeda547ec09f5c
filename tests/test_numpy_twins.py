"""The serving numpy twins agree with the torch fusion path they copy (the one parity test)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blendrank.fusion.formulas import fuse, fusion_features, top_k
from blendrank.fusion.numpy_twins import (
    FULL_SORT_MAX_ELEMENTS,
    fuse_np,
    fusion_features_np,
    list_stats_np,
    top_k_np,
    top_single_np,
)
from blendrank.fusion.state import list_stats


@pytest.mark.parametrize("formula", ["log_linear", "additive"])
def test_features_stats_scores_and_page_match_torch(formula: str) -> None:
    rng = np.random.default_rng(0)
    for n in (1, 7, 30):
        values = rng.uniform(0, 1, size=(6, 3, n)).astype(np.float32)  # [B, K, L]
        mask = rng.random((6, n)) < 0.6
        mask[0], mask[1], mask[2] = False, True, np.arange(n) == 0  # empty, full, one candidate
        as_torch = torch.from_numpy(values.transpose(0, 2, 1).copy())  # [B, L, K]
        f_ref = fusion_features(as_torch, formula, 1e-3)
        f = fusion_features_np(values, formula, 1e-3)
        np.testing.assert_allclose(f, f_ref.numpy().transpose(0, 2, 1), atol=1e-6, rtol=0)
        ref = list_stats(f_ref, torch.from_numpy(mask), 10).numpy()
        np.testing.assert_allclose(list_stats_np(f, mask, 10), ref, atol=1e-5, rtol=0)
        full = list_stats(f_ref, torch.ones(6, n, dtype=torch.bool), 10)
        np.testing.assert_allclose(list_stats_np(f, None, 10), full.numpy(), atol=1e-5, rtol=0)
        w = rng.dirichlet(np.ones(3), size=6).astype(np.float32)
        scores = fuse_np(w, f)
        np.testing.assert_allclose(scores, fuse(f_ref, torch.from_numpy(w)).numpy(), atol=1e-5, rtol=0)
        page = min(3, n)
        idx, _ = top_k(torch.from_numpy(scores[:1]), None, page)
        found = top_single_np(scores[:1], page)
        assert found is None or found[0].tolist() == idx.tolist()
        masked = np.where(mask, scores, -np.inf).astype(np.float32)
        for page in {1, min(3, n), n}:
            ref_idx, valid = top_k(torch.from_numpy(scores), torch.from_numpy(mask), page)
            got_idx, got_top = top_k_np(masked, page)
            # the same real candidates in the same order (padding beyond them is unordered)
            np.testing.assert_array_equal(np.where(valid, got_idx, -1), np.where(valid, ref_idx, -1))
            np.testing.assert_array_equal(np.isfinite(got_top), valid.numpy())


def test_top_k_np_orders_ties_by_candidate_and_puts_padding_last() -> None:
    scores = np.array([[0.5, 2.0, 0.5, -np.inf, 2.0, 1.0]], np.float32)
    idx, top = top_k_np(scores, 4)
    assert idx.tolist() == [[1, 4, 5, 0]] or idx.tolist() == [[1, 4, 5, 2]]
    assert top.tolist() == [[2.0, 2.0, 1.0, 0.5]]
    idx, top = top_k_np(scores, 6)
    assert idx.tolist() == [[1, 4, 5, 0, 2, 3]] and top[0, -1] == -np.inf
    # many rows: the select-then-sort path, against torch.topk (random scores: no ties)
    rng = np.random.default_rng(1)
    big = rng.normal(size=(8, 300)).astype(np.float32)
    big[:, 250:] = -np.inf
    assert big.size > FULL_SORT_MAX_ELEMENTS
    for page in (1, 10, 299, 300):
        ref_top, ref_idx = torch.topk(torch.from_numpy(big), page, dim=-1)
        got_idx, got_top = top_k_np(big, page)
        np.testing.assert_array_equal(got_top, ref_top.numpy())
        real = np.isfinite(got_top)
        np.testing.assert_array_equal(got_idx[real], ref_idx.numpy()[real])
