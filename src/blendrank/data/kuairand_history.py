"""Leakage-free user-history features for KuaiRand (``build_kuairand(..., history=True)``).

Every ``f_hist_*`` value of a row on day *d* is computed from impressions on days strictly
before *d* (the log's ``date``): nothing from the row's own day or later enters it, so a
feature never carries the label it sits next to, nor a label of the same pseudo-request. Counts
are cumulative sums over earlier days, per key (user, video, author, user × tag, user × author,
user × video); rates are smoothed toward the global rate of the same earlier days and stored as
a **lift** over that global rate (smoothed rate − global rate)::

    lift = (positives + a · g) / (n + a) − g        g = global rate on days < d,  a = strength

so a user or video with no history has lift exactly 0 (it sits at the global rate), and the
first log day — where no earlier day exists and ``g`` is undefined — is 0 for every row rather
than a guess. Centering removes the day-to-day drift of ``g``, which is constant within a
pseudo-request anyway (GAUC ranks within one). Everything is vectorised (``np.unique`` /
``np.bincount`` / ``np.cumsum``); no Python loop runs over rows. See ``docs/kuairand.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple

import numpy as np

#: Objectives whose past rates become features (the labels the MTL benchmark reports).
HISTORY_LABELS: tuple[str, ...] = ("click", "long_view", "like", "profile_enter")
#: Prior strength ``a`` of the smoothing: a key with n earlier impressions moves n / (n + a) of
#: the way from the global rate to its own rate *(our choice)*.
PRIOR_STRENGTH = 10.0


class HistoryFeature(NamedTuple):
    """One ``f_hist_`` column: its Feature Center role and numeric transform."""

    role: Literal["user", "item"]
    transform: Literal["standard", "log1p_standard"]
    description: str


def _lifts(prefix: str, role: Literal["user", "item"], labels: tuple[str, ...], who: str):
    return {
        f"{prefix}_{k}_lift": HistoryFeature(
            role, "standard", f"{who}: smoothed past {k} rate − global past {k} rate"
        )
        for k in labels
    }


#: f_hist_<key>_<stat> -> HistoryFeature (all numeric float64, no missing values). User-only
#: features have role ``user`` (known at request time); the rest depend on the candidate video.
HISTORY_FEATURES: dict[str, HistoryFeature] = {
    "f_hist_user_n": HistoryFeature("user", "log1p_standard", "user: past impressions"),
    "f_hist_user_days": HistoryFeature("user", "log1p_standard", "user: past active days"),
    **_lifts("f_hist_user", "user", HISTORY_LABELS, "user"),
    "f_hist_item_n": HistoryFeature("item", "log1p_standard", "video: past impressions"),
    **_lifts("f_hist_item", "item", HISTORY_LABELS, "video"),
    "f_hist_author_n": HistoryFeature("item", "log1p_standard", "author: past impressions"),
    **_lifts("f_hist_author", "item", ("click", "long_view"), "author (all users)"),
    "f_hist_user_tag_n": HistoryFeature(
        "item", "log1p_standard", "user × video's first tag: past impressions"
    ),
    **_lifts("f_hist_user_tag", "item", ("click", "long_view"), "user × first tag"),
    "f_hist_user_author_n": HistoryFeature(
        "item", "log1p_standard", "user × author: past impressions"
    ),
    **_lifts("f_hist_user_author", "item", ("click", "long_view"), "user × author"),
    "f_hist_user_item_seen": HistoryFeature(
        "item", "standard", "1 if the user was shown this video on an earlier day, else 0"
    ),
}


def day_index(dates: np.ndarray) -> np.ndarray:
    """Dense 0-based rank of each ``yyyymmdd`` date (equal dates share a rank, order kept)."""
    return np.unique(np.asarray(dates), return_inverse=True)[1].reshape(-1).astype(np.int64)


def pair_key(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense int64 id of each ``(a, b)`` pair; ``-1`` where either id is negative (missing)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    out = np.full(len(a), -1, dtype=np.int64)
    ok = (a >= 0) & (b >= 0)
    if ok.any():
        pairs = np.stack([a[ok], b[ok]], axis=1)
        out[ok] = np.unique(pairs, axis=0, return_inverse=True)[1].reshape(-1)
    return out


def past_totals(
    keys: np.ndarray, days: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: how many rows with the same key lie on strictly earlier days, and their sums.

    Args:
        keys: ``[N]`` int key of each row; rows with a negative key (missing) get zeros and
            contribute nothing.
        days: ``[N]`` int day of each row (any order-preserving integer, e.g. :func:`day_index`).
        values: ``[N, M]`` integer values to sum (0/1 labels); ``[N]`` is read as ``[N, 1]``.

    Returns:
        ``(count [N], sums [N, M])`` as int64: rows of the same key on days ``< days[i]``, and the
        column sums of ``values`` over those rows. Rows on the same day never see each other.
    """
    keys = np.asarray(keys, dtype=np.int64)
    days = np.asarray(days, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64).reshape(len(keys), -1)
    count = np.zeros(len(keys), dtype=np.int64)
    sums = np.zeros(values.shape, dtype=np.int64)
    valid = keys >= 0
    if not valid.any():
        return count, sums
    d0 = days[valid].min()
    n_days = int(days[valid].max() - d0) + 1
    code = keys[valid] * n_days + (days[valid] - d0)
    groups, inv = np.unique(code, return_inverse=True)  # sorted by key, then day
    inv = inv.reshape(-1)
    per_group = np.column_stack(
        [np.bincount(inv, minlength=len(groups)).astype(np.int64)]
        + [
            np.bincount(inv, weights=values[valid, j], minlength=len(groups)).astype(np.int64)
            for j in range(values.shape[1])
        ]
    )
    # Exclusive cumulative sum inside each key's run of (key, day) groups: earlier days only.
    before = np.cumsum(per_group, axis=0) - per_group
    g_key = groups // n_days
    first = np.r_[True, g_key[1:] != g_key[:-1]]
    run = np.cumsum(first) - 1
    before -= before[np.flatnonzero(first)][run]
    count[valid] = before[inv, 0]
    sums[valid] = before[inv, 1:]
    return count, sums


def smoothed_lift(
    positives: np.ndarray, n: np.ndarray, prior: np.ndarray, strength: float = PRIOR_STRENGTH
) -> np.ndarray:
    """``(positives + a·prior) / (n + a) − prior``: the smoothed rate's lift over ``prior``.

    0 when ``n`` is 0 (whatever the prior), tending to ``positives / n − prior`` as ``n`` grows.
    """
    positives = np.asarray(positives, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    return (positives + strength * prior) / (n + strength) - prior


def history_features(
    user: np.ndarray,
    item: np.ndarray,
    author: np.ndarray,
    tag: np.ndarray,
    date: np.ndarray,
    labels: Mapping[str, np.ndarray],
    strength: float = PRIOR_STRENGTH,
) -> dict[str, np.ndarray]:
    """The :data:`HISTORY_FEATURES` of every row of an impression log, from earlier days only.

    Args:
        user, item: ``[N]`` int ids.
        author, tag: ``[N]`` int ids of the video's author and first tag; ``-1`` = missing (the
            author / tag features of such rows are 0: no history is attributed to them).
        date: ``[N]`` ``yyyymmdd`` (or any ordered day number); history uses dates strictly
            before the row's.
        labels: objective -> ``[N]`` 0/1 labels; must hold every name in :data:`HISTORY_LABELS`.
        strength: prior strength ``a`` of :func:`smoothed_lift`.

    Returns:
        ``f_hist_*`` name -> ``[N]`` float64, in :data:`HISTORY_FEATURES` order. Each row is one
        impression (one row per user, video and day is expected; a repeat counts twice).
    """
    missing = [k for k in HISTORY_LABELS if k not in labels]
    if missing:
        raise ValueError(f"history_features: labels {missing} are required")
    days = day_index(date)
    y = np.column_stack([np.asarray(labels[k], dtype=np.int64) for k in HISTORY_LABELS])
    col = {k: i for i, k in enumerate(HISTORY_LABELS)}
    g_n, g_pos = past_totals(np.zeros(len(days), dtype=np.int64), days, y)
    with np.errstate(invalid="ignore", divide="ignore"):
        prior = np.where(g_n[:, None] > 0, g_pos / np.maximum(g_n, 1)[:, None], 0.0)

    user = np.asarray(user, dtype=np.int64)
    keys = {
        "user": user,
        "item": np.asarray(item, dtype=np.int64),
        "author": np.asarray(author, dtype=np.int64),
        "user_tag": pair_key(user, tag),
        "user_author": pair_key(user, author),
    }
    out: dict[str, np.ndarray] = {}
    for key_name, key in keys.items():
        n, pos = past_totals(key, days, y)
        out[f"f_hist_{key_name}_n"] = n.astype(np.float64)
        for k, j in col.items():
            name = f"f_hist_{key_name}_{k}_lift"
            if name in HISTORY_FEATURES:
                out[name] = smoothed_lift(pos[:, j], n, prior[:, j], strength)
    # Active days: the number of distinct earlier days, via one row per (user, day).
    ud = pair_key(user, days)
    first_of_day = np.zeros(len(user), dtype=np.int64)
    first_of_day[np.unique(ud, return_index=True)[1]] = 1
    out["f_hist_user_days"] = past_totals(user, days, first_of_day)[1][:, 0].astype(np.float64)
    seen, _ = past_totals(pair_key(user, keys["item"]), days, np.zeros(len(user)))
    out["f_hist_user_item_seen"] = (seen > 0).astype(np.float64)
    return {name: out[name] for name in HISTORY_FEATURES}
