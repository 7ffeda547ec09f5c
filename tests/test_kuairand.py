"""KuaiRand: the vendored copy and its conversion to contract Parquet."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from blendrank.data.kuairand import (
    BINARY_LABELS,
    FEATURES,
    PRODUCTION_WEIGHTS,
    SPLITS,
    build_kuairand,
    load_vendored,
)
from blendrank.errors import DataError

SPLIT_NAMES = tuple(SPLITS)
ALL_DATES = [20220425 + i for i in range(6)] + [20220501 + i for i in range(8)]


@pytest.fixture(scope="module")
def raw() -> dict[str, pa.Table]:
    return load_vendored()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("kuairand")
    return out, build_kuairand(out)


@pytest.fixture(scope="module")
def tables(built: tuple[Path, dict]) -> dict[str, pa.Table]:
    out, _ = built
    return {name: pq.read_table(out / f"{name}.parquet") for name in SPLIT_NAMES}


def _date_of(table: pa.Table) -> np.ndarray:
    return table["request_id"].to_numpy() % 100_000_000


# ------------------------------------------------------------------------------ vendored copy


def test_vendored_copy_is_complete(raw: dict[str, pa.Table]) -> None:
    log = raw["log"]
    assert log.num_rows == 228_329
    assert log.num_columns == 19
    assert len(np.unique(log["user_id"].to_numpy())) == 25_156
    assert len(np.unique(log["video_id"].to_numpy())) == 6_361
    assert raw["users"].num_rows == 27_285 and raw["videos"].num_rows == 7_583
    dates = sorted(np.unique(log["date"].to_numpy()).tolist())
    assert dates == ALL_DATES


def test_vendored_licence_and_attribution_ship_with_the_package() -> None:
    root = files("blendrank") / "resources" / "kuairand"
    assert (root / "LICENSE").read_text().startswith("Attribution-ShareAlike 4.0 International")
    attribution = (root / "ATTRIBUTION.md").read_text()
    assert "CC BY-SA 4.0" in attribution and "Gao" in attribution and "CIKM" in attribution
    size = sum(
        (root / n).stat().st_size for n in ("log.parquet", "users.parquet", "videos.parquet")
    )
    assert size < 6_000_000


# ------------------------------------------------------------------------------ conversion


def test_summary_counts(built: tuple[Path, dict], tables: dict[str, pa.Table]) -> None:
    out, summary = built
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["raw"] == {
        "impressions": 228_329,
        "users": 25_156,
        "items": 6_361,
        "pseudo_requests": 120_496,
    }
    merged, dropped = summary["merged"], summary["dropped"]
    assert merged["exact_duplicate_rows"] == 5_885
    kept = sum(t.num_rows for t in tables.values())
    assert kept == summary["impressions"]
    assert 228_329 == kept + merged["rows"] + dropped["impressions_in_small_requests"]
    for name, table in tables.items():
        s = summary["splits"][name]
        assert s["impressions"] == table.num_rows
        assert s["requests"] == len(np.unique(table["request_id"].to_numpy()))
    assert summary["requests"] == sum(s["requests"] for s in summary["splits"].values())


def test_requests_have_min_items_and_positions(tables: dict[str, pa.Table]) -> None:
    for table in tables.values():
        rid = table["request_id"].to_numpy()
        _, sizes = np.unique(rid, return_counts=True)
        assert sizes.min() >= 5
        # positions are 1..n within each request, in ts order
        order = np.lexsort((table["position"].to_numpy(), rid))
        r, pos, ts = rid[order], table["position"].to_numpy()[order], table["ts"].to_numpy()[order]
        start = np.r_[True, r[1:] != r[:-1]]
        expected = np.arange(len(r)) - np.flatnonzero(start)[np.cumsum(start) - 1] + 1
        assert np.array_equal(pos, expected)
        assert np.all((ts[1:] >= ts[:-1]) | start[1:])
        # one user per request, one calendar day per request
        users = table["user_id"].to_numpy()[order]
        assert np.all((users[1:] == users[:-1]) | start[1:])


def test_pairs_match_a_plain_python_reference(
    raw: dict[str, pa.Table], tables: dict[str, pa.Table]
) -> None:
    """Group the raw log with dicts and sets (no numpy) and compare the kept (request, item) pairs."""
    log = raw["log"].select(["user_id", "video_id", "date", "time_ms"]).to_pydict()
    first_date: dict[tuple[int, int, int], int] = {}
    for u, v, d, t in zip(log["user_id"], log["video_id"], log["date"], log["time_ms"]):
        key = (u, v, t)
        first_date[key] = min(d, first_date.get(key, d))
    items: dict[tuple[int, int], set[int]] = {}
    for (u, v, _), d in first_date.items():
        items.setdefault((u, d), set()).add(v)
    expected = {
        (u * 100_000_000 + d, v) for (u, d), vs in items.items() if len(vs) >= 5 for v in vs
    }
    got = {
        pair
        for t in tables.values()
        for pair in zip(t["request_id"].to_pylist(), t["item_id"].to_pylist())
    }
    assert got == expected


def test_request_item_pairs_are_unique(tables: dict[str, pa.Table]) -> None:
    for table in tables.values():
        pairs = np.stack([table["request_id"].to_numpy(), table["item_id"].to_numpy()], 1)
        assert len(np.unique(pairs, axis=0)) == table.num_rows


def test_splits_are_disjoint_by_date_and_cover_the_days(tables: dict[str, pa.Table]) -> None:
    seen: list[int] = []
    for name, (lo, hi) in SPLITS.items():
        dates = np.unique(_date_of(tables[name]))
        assert dates.min() >= lo and dates.max() <= hi
        seen += dates.tolist()
    assert sorted(seen) == ALL_DATES  # every day lands in exactly one split
    ids = [set(t["request_id"].to_numpy().tolist()) for t in tables.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_labels_and_features(tables: dict[str, pa.Table]) -> None:
    for table in tables.values():
        for name in BINARY_LABELS:
            values = table[f"label_{name}"].to_numpy()
            assert set(np.unique(values).tolist()) <= {0, 1}
        play = table["label_play_time_ms"].to_numpy()
        assert play.dtype == np.float64 and play.min() >= 0
        assert "price" not in table.column_names
        f_cols = [c for c in table.column_names if c.startswith("f_")]
        assert f_cols == list(FEATURES)
        assert all(c.startswith(("f_user_", "f_item_", "f_ctx_")) for c in f_cols)
        assert all(table[c].null_count == 0 for c in f_cols)
        assert set(np.unique(table["f_ctx_hour"].to_numpy()).tolist()) <= set(range(24))


def test_production_weights_and_feature_schema(built: tuple[Path, dict]) -> None:
    out, _ = built
    prod = yaml.safe_load((out / "objective.yaml").read_text())
    assert prod["production_weights"] == PRODUCTION_WEIGHTS == prod["value"]
    assert abs(sum(prod["production_weights"].values()) - 1) < 1e-9
    center = pytest.importorskip("blendrank.features.center")
    from blendrank.config import load_config

    schema = load_config(center.FeatureSchema, out / "features.yaml")
    assert schema.names == list(FEATURES)


def test_output_passes_the_data_contract(tables: dict[str, pa.Table]) -> None:
    contract = pytest.importorskip("blendrank.data.contract")
    for name, table in tables.items():
        report = contract.validate_table(table, name)
        assert report.ok, [str(v) for v in report.violations]


# ------------------------------------------------------------------------------ rules on toy data


def _toy_source(raw: dict[str, pa.Table], tmp: Path) -> Path:
    """Six impressions of user 1 on 04-25 (with duplicates) plus two of user 2 on 04-26."""
    T = 1_650_900_000_000
    rows = [  # user, video, date, hourmin, time_ms, is_click, long_view, play_time_ms
        (1, 10, 20220425, 2300, T + 0, 0, 0, 100),
        (1, 10, 20220426, 0, T + 0, 1, 0, 100),  # exact duplicate logged on the next day too
        (1, 11, 20220425, 2300, T + 5, 0, 1, 900),
        (1, 12, 20220425, 2300, T + 3, 0, 0, 50),
        (1, 11, 20220425, 2300, T + 9, 1, 0, 300),  # same-day repeat of video 11
        (1, 13, 20220425, 2300, T + 3, 0, 0, 70),  # same time as video 12: tie -> video id
        (2, 10, 20220426, 1200, T + 50, 0, 0, 10),
        (2, 11, 20220426, 1200, T + 60, 0, 0, 10),
    ]
    cols = list(zip(*rows))
    schema = raw["log"].schema
    data = {name: [0] * len(rows) for name in schema.names}
    for name, values in zip(
        [
            "user_id",
            "video_id",
            "date",
            "hourmin",
            "time_ms",
            "is_click",
            "long_view",
            "play_time_ms",
        ],
        cols,
    ):
        data[name] = list(values)
    data["tab"] = [1] * len(rows)
    src = tmp / "src"
    src.mkdir()
    pq.write_table(pa.table(data).cast(schema), src / "log.parquet")
    users = raw["users"].filter(pc.is_in(raw["users"]["user_id"], pa.array([1, 2])))
    pq.write_table(users, src / "users.parquet")
    videos = raw["videos"].filter(pc.is_in(raw["videos"]["video_id"], pa.array([10, 12])))
    pq.write_table(videos, src / "videos.parquet")  # videos 11 and 13 have no features
    return src


def test_duplicate_rule_positions_and_fills(raw: dict[str, pa.Table], tmp_path: Path) -> None:
    src = _toy_source(raw, tmp_path)
    summary = build_kuairand(tmp_path / "out", min_items=2, source_dir=src)
    assert summary["merged"]["exact_duplicate_rows"] == 1
    assert summary["merged"]["same_day_repeat_rows"] == 1
    assert summary["raw"]["impressions"] == 8 and summary["impressions"] == 6
    train = pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()
    req1 = [r for r in train if r["user_id"] == 1]
    # the midnight duplicate stays on 04-25 (earliest date), with the click of its copy
    assert {r["request_id"] for r in req1} == {1 * 100_000_000 + 20220425}
    by_item = {r["item_id"]: r for r in req1}
    assert by_item[10]["label_click"] == 1 and by_item[10]["ts"] == 1_650_900_000_000
    # video 11: first impression kept (ts), labels = max over both impressions
    assert by_item[11]["ts"] == 1_650_900_000_005
    assert (by_item[11]["label_click"], by_item[11]["label_long_view"]) == (1, 1)
    assert by_item[11]["label_play_time_ms"] == 900.0
    # positions by (time_ms, video_id)
    assert [r["item_id"] for r in sorted(req1, key=lambda r: r["position"])] == [10, 12, 13, 11]
    # missing video features are filled explicitly and counted
    assert by_item[11]["f_item_tag"] == "UNKNOWN" and by_item[11]["f_item_author_id"] == -1
    assert summary["missing_filled"]["f_item_author_id"]["rows"] == 3  # 11, 13 and user 2's 11
    # min_items drops and counts: with 5, user 1's 4 items and user 2's 2 items go
    small = build_kuairand(tmp_path / "out5", min_items=5, source_dir=src)
    assert small["impressions"] == 0 and small["dropped"]["requests_below_min_items"] == 2


def test_bad_arguments_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="at least 1"):
        build_kuairand(tmp_path, min_items=0)
    with pytest.raises(DataError, match="overlap"):
        build_kuairand(tmp_path, splits={"a": (20220425, 20220430), "b": (20220430, 20220508)})
    with pytest.raises(DataError, match="not found"):
        build_kuairand(tmp_path, source_dir=tmp_path / "nowhere")


# ------------------------------------------------------------------------------ CLI


def test_cli_kuairand(tmp_path: Path) -> None:
    from blendrank.cli.main import app

    result = CliRunner().invoke(app, ["data", "kuairand", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "228,329" in result.output and "train" in result.output
    for name in (*(f"{s}.parquet" for s in SPLIT_NAMES), "summary.json", "objective.yaml"):
        assert (tmp_path / name).exists()

    bad = CliRunner().invoke(app, ["data", "kuairand", "--out", str(tmp_path), "--min-items", "0"])
    assert bad.exit_code == 1
    assert "at least 1" in bad.output
