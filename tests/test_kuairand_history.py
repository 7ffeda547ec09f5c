"""KuaiRand user-history features: earlier days only, hand-checked values, opt-in wiring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from blendrank.data.kuairand import FEATURES, build_kuairand, load_vendored
from blendrank.data.kuairand_history import (
    HISTORY_FEATURES,
    HISTORY_LABELS,
    PRIOR_STRENGTH,
    history_features,
    pair_key,
    past_totals,
    smoothed_lift,
)

A = PRIOR_STRENGTH


def _lift(positives: int, n: int, prior: float) -> float:
    """The smoothed-rate lift, written out by hand."""
    return (positives + A * prior) / (n + A) - prior


def _labels(n: int, **given: list[int]) -> dict[str, np.ndarray]:
    return {k: np.array(given.get(k, [0] * n)) for k in HISTORY_LABELS}


def _random_log(seed: int = 0, n: int = 400) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "user": rng.integers(0, 8, n),
        "item": rng.integers(0, 15, n),
        "author": rng.integers(-1, 5, n),
        "tag": rng.integers(-1, 4, n),
        "date": rng.choice([20220425, 20220426, 20220427, 20220501, 20220502], n),
    }


def _random_labels(seed: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.integers(0, 2, n) for k in HISTORY_LABELS}


# ------------------------------------------------------------------------------ building blocks


def test_past_totals_counts_strictly_earlier_days_per_key() -> None:
    keys = np.array([1, 1, 1, 2, 1, -1, 2])
    days = np.array([0, 0, 1, 1, 3, 0, 2])
    values = np.array([1, 0, 1, 1, 0, 1, 0])
    count, sums = past_totals(keys, days, values)
    # key 1: days 0 (two rows, one positive), 1, 3; key 2: days 1, 2; key -1 is missing
    assert count.tolist() == [0, 0, 2, 0, 3, 0, 1]
    assert sums[:, 0].tolist() == [0, 0, 1, 0, 2, 0, 1]


def test_pair_key_is_dense_and_marks_missing() -> None:
    k = pair_key(np.array([1, 1, 2, 1, 3]), np.array([5, 6, 5, 5, -1]))
    assert k[0] == k[3] and len({k[0], k[1], k[2]}) == 3 and k[4] == -1
    assert set(k[:4].tolist()) == {0, 1, 2}


def test_smoothed_lift_is_zero_without_history_and_tends_to_the_raw_lift() -> None:
    assert smoothed_lift(0, 0, 0.3) == 0.0
    assert smoothed_lift(3, 4, 0.5, strength=2.0) == pytest.approx((3 + 1.0) / 6 - 0.5)
    assert smoothed_lift(9_000, 10_000, 0.4) == pytest.approx(0.5, abs=1e-3)


# ------------------------------------------------------------------------------ hand-computed


def test_hand_computed_values_on_a_tiny_log() -> None:
    #        user item author tag   date       click long_view
    rows = [
        (1, 10, 100, 7, 20220425, 1, 1),
        (1, 11, 100, 8, 20220425, 0, 0),
        (2, 10, 100, 7, 20220425, 0, 1),
        (1, 10, 100, 7, 20220426, 0, 0),  # user 1 sees video 10 again on a later day
        (1, 12, 101, 7, 20220426, 1, 0),
        (3, 12, 101, -1, 20220427, 0, 0),  # unseen user, missing tag
        (1, 11, 100, 8, 20220427, 0, 0),
    ]
    user, item, author, tag, date, click, lview = (np.array(c) for c in zip(*rows))
    f = history_features(user, item, author, tag, date, _labels(7, click=click, long_view=lview))
    assert list(f) == list(HISTORY_FEATURES)
    # day 1 (04-25): no earlier day, every feature is 0
    for name, v in f.items():
        assert np.all(v[:3] == 0), name
    # global priors: click 1/3 before 04-26, 2/5 before 04-27; long view 2/3, 2/5
    g_click_2, g_lv_2, g_click_3 = 1 / 3, 2 / 3, 2 / 5
    # row 3: user 1 on 04-26 -> 2 earlier impressions, 1 click, 1 long view, 1 active day
    assert f["f_hist_user_n"][3] == 2 and f["f_hist_user_days"][3] == 1
    assert f["f_hist_user_click_lift"][3] == pytest.approx(_lift(1, 2, g_click_2))
    assert f["f_hist_user_long_view_lift"][3] == pytest.approx(_lift(1, 2, g_lv_2))
    # video 10 had 2 earlier impressions (users 1, 2): 1 click, 2 long views
    assert f["f_hist_item_n"][3] == 2
    assert f["f_hist_item_long_view_lift"][3] == pytest.approx(_lift(2, 2, g_lv_2))
    assert f["f_hist_author_n"][3] == 3  # author 100: all three 04-25 rows
    assert f["f_hist_user_tag_n"][3] == 1  # user 1 × tag 7 on 04-25
    assert f["f_hist_user_tag_click_lift"][3] == pytest.approx(_lift(1, 1, g_click_2))
    assert f["f_hist_user_author_n"][3] == 2 and f["f_hist_user_item_seen"][3] == 1
    # row 4: video 12 is new -> item features 0; user × tag 7 as row 3; not seen before
    assert f["f_hist_item_n"][4] == 0 and f["f_hist_item_click_lift"][4] == 0
    assert f["f_hist_user_tag_n"][4] == 1 and f["f_hist_user_item_seen"][4] == 0
    # row 5: an unseen user on 04-27 sits at the global rate (lift 0); missing tag -> 0
    assert f["f_hist_user_n"][5] == 0 and f["f_hist_user_click_lift"][5] == 0
    assert f["f_hist_user_tag_n"][5] == 0
    assert f["f_hist_item_n"][5] == 1  # video 12 on 04-26, clicked
    assert f["f_hist_item_click_lift"][5] == pytest.approx(_lift(1, 1, g_click_3))
    # row 6: user 1 on 04-27 -> 4 earlier impressions on 2 days, 2 clicks
    assert f["f_hist_user_n"][6] == 4 and f["f_hist_user_days"][6] == 2
    assert f["f_hist_user_click_lift"][6] == pytest.approx(_lift(2, 4, g_click_3))
    assert f["f_hist_user_item_seen"][6] == 1  # video 11 on 04-25


# ------------------------------------------------------------------------------ no leakage


@pytest.mark.parametrize("cut", [20220426, 20220427, 20220501])
def test_features_ignore_labels_of_the_same_and_later_days(cut: int) -> None:
    log = _random_log()
    n = len(log["date"])
    base = history_features(**log, labels=_random_labels(1, n))
    on_or_after = log["date"] >= cut
    changed = _random_labels(1, n)
    flipped = {k: np.where(on_or_after, 1 - v, v) for k, v in changed.items()}
    other = history_features(**log, labels=flipped)
    # rows on or before the cut day never see the cut day's or later labels
    upto = log["date"] <= cut
    for name in HISTORY_FEATURES:
        np.testing.assert_array_equal(base[name][upto], other[name][upto], err_msg=name)
    # ... while rows after it do
    later = log["date"] > cut
    assert any(not np.array_equal(base[n_][later], other[n_][later]) for n_ in HISTORY_FEATURES)


def test_features_change_when_an_earlier_day_changes() -> None:
    log = _random_log()
    n = len(log["date"])
    labels = _random_labels(1, n)
    base = history_features(**log, labels=labels)
    first_day = log["date"] == 20220425
    flipped = {k: np.where(first_day, 1 - v, v) for k, v in labels.items()}
    other = history_features(**log, labels=flipped)
    np.testing.assert_array_equal(
        base["f_hist_user_click_lift"][first_day], other["f_hist_user_click_lift"][first_day]
    )
    later = ~first_day
    assert not np.allclose(
        base["f_hist_user_click_lift"][later], other["f_hist_user_click_lift"][later]
    )
    assert not np.allclose(
        base["f_hist_item_long_view_lift"][later], other["f_hist_item_long_view_lift"][later]
    )
    # counts do not depend on labels at all
    np.testing.assert_array_equal(base["f_hist_user_n"], other["f_hist_user_n"])


def test_permuting_rows_permutes_features() -> None:
    log = _random_log(3)
    n = len(log["date"])
    labels = _random_labels(4, n)
    perm = np.random.default_rng(5).permutation(n)
    base = history_features(**log, labels=labels)
    shuffled = history_features(
        **{k: v[perm] for k, v in log.items()}, labels={k: v[perm] for k, v in labels.items()}
    )
    for name in HISTORY_FEATURES:
        np.testing.assert_allclose(base[name][perm], shuffled[name], err_msg=name)


# ------------------------------------------------------------------------------ build_kuairand


def _toy_source(tmp: Path) -> Path:
    """Three days of a few users on vendored videos (one video absent from the video table)."""
    raw = load_vendored()
    vids = raw["videos"]["video_id"].to_numpy()[:3].tolist()
    T = 1_650_900_000_000
    day = 86_400_000
    rows = [  # user, video, date, time_ms, is_click, long_view
        (1, vids[0], 20220425, T, 1, 1),
        (1, vids[1], 20220425, T + 1, 0, 0),
        (2, vids[0], 20220425, T + 2, 0, 1),
        (1, vids[0], 20220426, T + day, 0, 0),
        (1, vids[2], 20220426, T + day + 1, 1, 0),
        (2, 999_999, 20220426, T + day + 2, 1, 1),  # video without features
        (1, vids[1], 20220504, T + 9 * day, 0, 1),
        (1, vids[2], 20220504, T + 9 * day + 1, 1, 1),
    ]
    data = {name: [0] * len(rows) for name in raw["log"].schema.names}
    for name, values in zip(
        ["user_id", "video_id", "date", "time_ms", "is_click", "long_view"], zip(*rows)
    ):
        data[name] = list(values)
    data["hourmin"] = [1200] * len(rows)
    data["tab"] = [1] * len(rows)
    src = tmp / "src"
    src.mkdir()
    pq.write_table(pa.table(data).cast(raw["log"].schema), src / "log.parquet")
    users = raw["users"].filter(pc.is_in(raw["users"]["user_id"], pa.array([1, 2])))
    pq.write_table(users, src / "users.parquet")
    pq.write_table(raw["videos"], src / "videos.parquet")
    return src


def test_build_kuairand_history_is_opt_in(tmp_path: Path) -> None:
    src = _toy_source(tmp_path)
    off = build_kuairand(tmp_path / "off", min_items=1, source_dir=src)
    on = build_kuairand(tmp_path / "on", min_items=1, source_dir=src, history=True)
    t_off = pq.read_table(tmp_path / "off" / "train.parquet")
    t_on = pq.read_table(tmp_path / "on" / "train.parquet")
    assert not any(c.startswith("f_hist_") for c in t_off.column_names)
    assert "history" not in off and on["history"]["features"] == list(HISTORY_FEATURES)
    assert t_on.column_names == t_off.column_names + list(HISTORY_FEATURES)
    assert t_on.drop_columns(list(HISTORY_FEATURES)).equals(t_off)
    spec_off = yaml.safe_load((tmp_path / "off" / "features.yaml").read_text())["features"]
    spec_on = yaml.safe_load((tmp_path / "on" / "features.yaml").read_text())["features"]
    assert [s["name"] for s in spec_off] == list(FEATURES)
    assert [s["name"] for s in spec_on] == list(FEATURES) + list(HISTORY_FEATURES)
    hist = {s["name"]: s for s in spec_on if s["name"].startswith("f_hist_")}
    assert hist["f_hist_user_n"] == {
        "name": "f_hist_user_n", "kind": "numeric", "role": "user", "transform": "log1p_standard"
    }
    assert hist["f_hist_item_click_lift"]["role"] == "item"
    # min_items=1 keeps the single-video user-day (user 2 on 04-26)
    assert t_on.num_rows == 6 and on["dropped"]["requests_below_min_items"] == 0
    # user 2's 04-26 row: one earlier impression (04-25); unknown video -> no author history
    (r,) = [r for r in t_on.to_pylist() if r["item_id"] == 999_999]
    assert r["f_hist_user_n"] == 1 and r["f_hist_item_n"] == 0 and r["f_hist_author_n"] == 0
    valid = pq.read_table(tmp_path / "on" / "valid.parquet").to_pylist()
    assert [r["f_hist_user_n"] for r in valid] == [4.0, 4.0]  # user 1, 04-25 and 04-26


def test_build_kuairand_history_ignores_the_rows_own_day(tmp_path: Path) -> None:
    src = _toy_source(tmp_path)
    build_kuairand(tmp_path / "a", min_items=1, source_dir=src, history=True)
    log = pq.read_table(src / "log.parquet")
    is_last = pc.equal(log["date"], 20220504)
    flipped = log.set_column(
        log.schema.get_field_index("is_click"),
        "is_click",
        pc.if_else(is_last, pc.subtract(1, log["is_click"]), log["is_click"]).cast(
            log.schema.field("is_click").type
        ),
    )
    pq.write_table(flipped, src / "log.parquet")
    build_kuairand(tmp_path / "b", min_items=1, source_dir=src, history=True)
    a = pq.read_table(tmp_path / "a" / "valid.parquet")
    b = pq.read_table(tmp_path / "b" / "valid.parquet")
    assert not a["label_click"].equals(b["label_click"])
    for name in HISTORY_FEATURES:
        assert a[name].equals(b[name]), name


def test_cli_history_flag(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from blendrank.cli.main import app

    result = CliRunner().invoke(
        app, ["data", "kuairand", "--out", str(tmp_path), "--history", "--min-items", "1"]
    )
    assert result.exit_code == 0, result.output
    spec = yaml.safe_load((tmp_path / "features.yaml").read_text())["features"]
    assert [s["name"] for s in spec][-len(HISTORY_FEATURES) :] == list(HISTORY_FEATURES)
    test = pq.read_table(tmp_path / "test.parquet", columns=["f_hist_user_n"])
    assert test.num_rows == 42_251 and pc.max(test["f_hist_user_n"]).as_py() > 0
