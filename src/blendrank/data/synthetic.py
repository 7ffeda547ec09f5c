"""Small synthetic contract logs with a known best fusion, for tests, examples and scripts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def two_type_log(n: int = 1500, L: int = 8, seed: int = 0) -> pa.Table:
    """Type-0 users click the items with the highest pred_click, type-1 users order the items
    with the highest pred_order: the best weights differ completely by user type."""
    rng = np.random.default_rng(seed)
    p_click = rng.uniform(0.05, 0.95, (n, L))
    p_order = rng.uniform(0.05, 0.95, (n, L))
    utype = rng.integers(2, size=n)
    rank_c = np.argsort(np.argsort(-p_click, 1), 1)
    rank_o = np.argsort(np.argsort(-p_order, 1), 1)
    click = ((rank_c < 2) & (utype[:, None] == 0)).astype(np.int8)
    order = ((rank_o < 2) & (utype[:, None] == 1)).astype(np.int8)
    rep = lambda a: np.repeat(a, L)  # noqa: E731
    return pa.table({
        "request_id": rep(np.arange(n)), "user_id": rep(np.arange(n)), "ts": rep(np.arange(n) * 1000),
        "item_id": np.tile(np.arange(L), n), "position": np.tile(np.arange(1, L + 1, dtype=np.int32), n),
        "label_click": click.ravel(), "label_order": order.ravel(),
        "pred_click": p_click.ravel().astype(np.float32), "pred_order": p_order.ravel().astype(np.float32),
        "f_user_type": rep(utype), "f_item_x": rng.normal(size=n * L).astype(np.float32),
    })
