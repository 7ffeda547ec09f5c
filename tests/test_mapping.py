"""A real log through a mapping file: date-time ts, dict mappings, test filters and split choice,
no user ids, calibration, `config show`, wide help, and the CSV walkthrough end to end."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from blendrank.cli.main import app
from blendrank.data.calibration import calibration, expected_calibration_error
from blendrank.data.contract import validate_table
from blendrank.data.filters import filter_mask, parse_filter
from blendrank.data.io import load_log, read_log
from blendrank.data.mapping import ColumnMapping, apply_mapping, parse_mapping
from blendrank.data.splits import load_splits
from blendrank.errors import ConfigError, DataError, DataWarning

runner = CliRunner()


def invoke(*args: str | Path) -> Any:
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result


def flat(text: str) -> str:
    return " ".join(text.split())


def write_csv(path: Path, cols: dict[str, list[Any]]) -> Path:
    records = zip(*cols.values(), strict=True)
    lines = [",".join(cols)] + [",".join("" if v is None else str(v) for v in r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def small_log(ts: list[Any]) -> pa.Table:
    """Three requests of two candidates with the given per-row ``ts`` values."""
    return pa.table({
        "request_id": [1, 1, 2, 2, 3, 3],
        "user_id": [7, 7, 8, 8, 7, 7],
        "ts": ts,
        "item_id": [10, 11, 10, 12, 11, 13],
        "label_click": [1, 0, 0, 1, 0, 0],
    })


# ----------------------------------------------------------------------------- 1. timestamps
ISO = ["2024-01-02 10:00:00", "2024-01-02T10:00:00", "2024-01-02T10:00:00.250",
       "2024-01-02T11:00:00+01:00", "2024-01-02T10:00:00Z", "2024-01-02"]
EPOCH_2024_01_02 = 1_704_153_600_000  # 2024-01-02T00:00:00Z in ms


def test_iso_strings_become_utc_ms() -> None:
    out = apply_mapping(small_log(ISO), ColumnMapping())
    assert out["ts"].type == pa.int64()
    ten = EPOCH_2024_01_02 + 10 * 3_600_000
    assert out["ts"].to_pylist() == [ten, ten, ten + 250, ten, ten, EPOCH_2024_01_02]
    assert validate_table(out, "t").ok


def test_timezone_applies_to_wall_clock_values_only() -> None:
    out = apply_mapping(small_log(ISO), parse_mapping({"ts_timezone": "Europe/Paris"}))
    ten = EPOCH_2024_01_02 + 10 * 3_600_000
    hour = 3_600_000
    # naive strings are Paris wall clock (UTC+1 in January); offsets and Z are instants
    assert out["ts"].to_pylist() == [ten - hour, ten - hour, ten - hour + 250, ten, ten,
                                     EPOCH_2024_01_02 - hour]


def test_ts_format_parses_with_strptime() -> None:
    ts = ["02/01/2024 10:00", "02/01/2024 10:00", "03/01/2024 10:00", "03/01/2024 10:00",
          "04/01/2024 10:00", "04/01/2024 10:00"]
    out = apply_mapping(small_log(ts), parse_mapping({"ts_format": "%d/%m/%Y %H:%M"}))
    ten = EPOCH_2024_01_02 + 10 * 3_600_000
    assert out["ts"].to_pylist()[::2] == [ten, ten + 86_400_000, ten + 2 * 86_400_000]


def test_arrow_timestamps_and_dates() -> None:
    naive = pa.array([0, 0, 1, 1, 2, 2], pa.timestamp("s"))
    aware = pa.array([0, 0, 1, 1, 2, 2], pa.timestamp("s", "Asia/Tokyo"))
    tokyo = parse_mapping({"ts_timezone": "Asia/Tokyo"})
    assert apply_mapping(small_log(naive), ColumnMapping())["ts"].to_pylist()[::2] == [0, 1000, 2000]
    # naive = Tokyo wall clock (UTC+9); a zoned timestamp is an instant whatever ts_timezone says
    nine = 9 * 3_600_000
    assert apply_mapping(small_log(naive), tokyo)["ts"].to_pylist()[::2] == [-nine, 1000 - nine,
                                                                             2000 - nine]
    assert apply_mapping(small_log(aware), tokyo)["ts"].to_pylist()[::2] == [0, 1000, 2000]
    dates = pa.array([0, 0, 1, 1, 2, 2], pa.date32())
    assert apply_mapping(small_log(dates), ColumnMapping())["ts"].to_pylist()[::2] == [
        0, 86_400_000, 2 * 86_400_000]


def test_csv_date_times_inferred_as_timestamps(tmp_path: Path) -> None:
    rows = small_log(ISO[:1] * 6).to_pydict()
    rows.pop("ts")
    path = write_csv(tmp_path / "log.csv", {**rows, "time": ["2024-01-02 10:00:00"] * 6})
    assert pacsv.read_csv(path)["time"].type == pa.timestamp("s")  # Arrow's CSV inference
    table = read_log(path, {"columns": {"ts": "time"}})
    assert table["ts"].type == pa.int64()
    assert set(table["ts"].to_pylist()) == {EPOCH_2024_01_02 + 10 * 3_600_000}


def test_unparseable_date_time_names_file_column_and_value(tmp_path: Path) -> None:
    rows = small_log(ISO[:1] * 6).to_pydict()
    rows.pop("ts")
    times = ["2024-01-02 10:00:00"] * 4 + ["yesterday", "2024-01-02 10:00:00"]
    path = write_csv(tmp_path / "log.csv", {**rows, "time": times})
    with pytest.raises(DataError) as err:
        read_log(path, {"columns": {"ts": "time"}})
    msg = str(err.value)
    assert "log.csv" in msg and "column 'time'" in msg and "'yesterday' (row 4)" in msg
    assert "ts_format" in msg
    with pytest.raises(DataError, match=r"cannot parse '2024-01-02 10:00:00' \(row 0\) with "
                                        r"ts_format '%d/%m/%Y'"):
        read_log(path, {"columns": {"ts": "time"}, "ts_format": "%d/%m/%Y"})


@pytest.mark.parametrize(("mapping", "needle"), [
    ({"ts_timezone": "Europe/Pariss"}, "unknown time zone 'Europe/Pariss'"),
    ({"ts_format": "YYYY-MM-DD"}, "no % code"),
    ({"test_where": "random_bool = 1"}, "expected COLUMN OP VALUE"),
    ({"test_where": "random_bool == yes"}, "expected a number, a quoted string or true/false"),
])
def test_bad_mapping_values_name_the_key(mapping: dict[str, Any], needle: str) -> None:
    with pytest.raises(DataError) as err:
        parse_mapping(mapping, "map.yaml")
    assert f"key {next(iter(mapping))}" in str(err.value) and needle in str(err.value)


# ----------------------------------------------------------------------------- 3. dict mapping
def test_read_log_takes_a_dict_mapping(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pq.write_table(small_log([1000] * 6).rename_columns(
        ["session", "user_id", "ts", "item_id", "clicked"]), path)
    table = read_log(path, {"columns": {"request_id": "session"}, "labels": {"click": "clicked"}})
    assert {"request_id", "label_click"} <= set(table.column_names)
    with pytest.raises(DataError, match="key columns.sesion: unknown key"):
        read_log(path, {"columns": {"sesion": "session"}})
    with pytest.raises(DataError, match="expected a YAML path, a dict or a ColumnMapping"):
        read_log(path, 42)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- 4. filters, splits
def test_filter_grammar() -> None:
    t = pa.table({"flag": [0, 1, None], "split": ["train", "test", "test"],
                  "b": [True, False, True], "x": [0.5, 1.5, 2.5]})
    cases = {"flag == 1": [False, True, False], "split == \"test\"": [False, True, True],
             "split != 'test'": [True, False, False], "b == 1": [True, False, True],
             "x >= 1.5": [False, True, True], "x<1": [True, False, False],
             "b == false": [False, True, False]}
    for text, expected in cases.items():
        assert filter_mask(t, parse_filter(text)).to_pylist() == expected, text
    for bad in ("flag", "flag === 1", "flag == ", "flag == 1 and x > 0", "1 == flag"):
        with pytest.raises(ConfigError, match="filter"):
            parse_filter(bad)
    with pytest.raises(DataError, match="no column 'flg'; available columns: flag, split"):
        filter_mask(t, parse_filter("flg == 1"), "log.csv")
    with pytest.raises(DataError, match="column 'split' is string but the value 1 is int; quote"):
        filter_mask(t, parse_filter("split == 1"))
    with pytest.raises(DataError, match="column 'flag' is int64 .* compare it with a number"):
        filter_mask(t, parse_filter("flag == '1'"))


def timed_log(n: int = 40, per: int = 3) -> pa.Table:
    """``n`` requests at increasing ts (shuffled row order), every 4th flagged random."""
    req = np.repeat(np.arange(n), per)
    order = np.random.default_rng(0).permutation(n)
    rows = np.concatenate([np.flatnonzero(req == r) for r in order])
    return pa.table({
        "request_id": req[rows], "user_id": req[rows] % 7, "ts": req[rows] * 1000,
        "item_id": np.tile(np.arange(per), n)[rows], "label_click": (req[rows] % 2)[:],
        "random_bool": (req[rows] % 4 == 0).astype(np.int8),
    })


def _requests(t: pa.Table) -> set[int]:
    return set(pc.unique(t["request_id"]).to_pylist())


def test_time_split_is_the_bench_split(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pq.write_table(timed_log(), path)
    s = load_splits(path, None, valid_frac=0.15, test_frac=0.15)
    first_ts = {r: r * 1000 for r in range(40)}
    lo, hi = np.quantile(sorted(first_ts.values()), [0.7, 0.85])
    assert _requests(s["train"]) == {r for r, t in first_ts.items() if t < lo}
    assert _requests(s["valid"]) == {r for r, t in first_ts.items() if lo <= t < hi}
    assert _requests(s["test"]) == {r for r, t in first_ts.items() if t >= hi}
    from blendrank.bench.logs import LogBenchConfig
    from blendrank.bench.logs import load_splits as bench_splits

    same = bench_splits(path, None, LogBenchConfig())
    assert all(same[k].equals(s[k]) for k in s)


def test_split_directory(tmp_path: Path) -> None:
    t = timed_log()
    for name, part in (("train", t.slice(0, 60)), ("valid", t.slice(60, 30)),
                       ("test", t.slice(90))):
        pq.write_table(part, tmp_path / f"{name}.parquet")
    s = load_splits(tmp_path, None, valid_frac=0.15, test_frac=0.15)
    assert [s[k].num_rows for k in ("train", "valid", "test")] == [60, 30, 30]
    with pytest.raises(ConfigError, match="split into train/valid/test files already"):
        load_splits(tmp_path, None, valid_frac=0.15, test_frac=0.15, test_where="random_bool == 1")


def test_test_where_sends_matching_requests_to_test(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pq.write_table(timed_log(), path)
    s = load_splits(path, None, valid_frac=0.2, test_frac=0.15, test_where="random_bool == 1")
    flagged = {r for r in range(40) if r % 4 == 0}
    assert _requests(s["test"]) == flagged
    rest = sorted(set(range(40)) - flagged)  # 30 requests: the latest 20% by time are valid
    cut = np.quantile(np.array(rest) * 1000, 0.8)
    assert _requests(s["valid"]) == {r for r in rest if r * 1000 >= cut}
    assert _requests(s["train"]) == {r for r in rest if r * 1000 < cut}
    # from the mapping, by its source name (the mapping renames `session` to request_id)
    pq.write_table(timed_log().rename_columns(
        ["session", "user_id", "ts", "item_id", "label_click", "random_bool"]), path)
    mapping = {"columns": {"request_id": "session"}, "test_where": "session >= 36"}
    s2 = load_splits(path, mapping, valid_frac=0.2, test_frac=0.15)
    assert _requests(s2["test"]) == {36, 37, 38, 39}
    s3 = load_splits(path, mapping, valid_frac=0.2, test_frac=0.15, test_where="random_bool == 1")
    assert _requests(s3["test"]) == flagged  # the argument wins over the mapping


def test_test_where_errors(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pq.write_table(timed_log(), path)
    kw = {"valid_frac": 0.15, "test_frac": 0.15}
    with pytest.raises(DataError, match="matches only some rows of 40 request"):
        load_splits(path, None, test_where="item_id == 0", **kw)
    with pytest.raises(DataError, match="matches no request"):
        load_splits(path, None, test_where="random_bool == 5", **kw)
    with pytest.raises(DataError, match="matches every request"):
        load_splits(path, None, test_where="random_bool >= 0", **kw)
    with pytest.raises(DataError, match="no column 'randomised'"):
        load_splits(path, None, test_where="randomised == 1", **kw)
    with pytest.raises(ConfigError, match="test_where: filter 'random_bool': expected COLUMN OP VALUE"):
        load_splits(path, None, test_where="random_bool", **kw)


# ----------------------------------------------------------------------------- 5. no user id
def test_no_user_column_is_a_warning_and_filled_in(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pq.write_table(small_log([1000] * 6).drop_columns(["user_id"]), path)
    with pytest.warns(DataWarning, match="no user_id column.*its own session"):
        table, report = load_log(path)
    assert report.ok and table["user_id"].equals(table["request_id"])
    result = invoke("data", "validate", path)
    assert result.exit_code == 0 and "warning: " in result.output
    assert "session methods (integrated_rl) will treat every request as its own session" in flat(
        result.output)


def test_one_request_per_user_is_a_warning(tmp_path: Path) -> None:
    table = small_log([1000] * 6)
    report = validate_table(table.set_column(1, "user_id", table["request_id"]), "log.csv")
    assert report.ok
    assert len(report.warnings) == 1 and "every user_id has exactly one request" in report.warnings[0]
    assert report.warnings[0].startswith("log.csv: ")
    assert validate_table(table, "log.csv").warnings == []  # user 7 has two requests
    path = tmp_path / "log.parquet"
    pq.write_table(table, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_log(path)  # no warning


# ----------------------------------------------------------------------------- 6. calibration
def test_ece_and_ratio() -> None:
    pred = np.array([0.05, 0.05, 0.95, 0.95])
    label = np.array([0.0, 0.0, 1.0, 1.0])
    assert expected_calibration_error(pred, label) == pytest.approx(0.05)
    # one bin: |mean pred - rate|
    assert expected_calibration_error(np.full(4, 0.3), np.array([0, 0, 0, 1.0])) == pytest.approx(
        0.05)
    assert expected_calibration_error(np.array([1.0]), np.array([1.0])) == 0.0  # 1.0 in last bin
    c = calibration(np.full(10, 0.07), np.r_[np.ones(1), np.zeros(9)])
    assert c.ratio == pytest.approx(0.7) and not c.far_off
    assert calibration(np.full(100, 0.7), np.r_[np.ones(10), np.zeros(90)]).far_off
    # one positive is too few to judge a 7x ratio; nor is a zero rate
    assert not calibration(np.full(10, 0.7), np.r_[np.ones(1), np.zeros(9)]).far_off
    assert not calibration(np.full(3, 0.1), np.zeros(3)).far_off
    assert calibration(np.full(3, 0.1), np.zeros(3)).ratio == math.inf
    assert math.isnan(calibration(np.zeros(3), np.zeros(3)).ratio)


def test_validate_reports_calibration_and_warns_far_off(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 2000
    p = rng.uniform(0.0, 0.3, n)
    label = (rng.random(n) < p).astype(np.int8)
    table = pa.table({
        "request_id": np.arange(n) // 4, "user_id": np.arange(n) // 40, "ts": np.arange(n) // 4,
        "item_id": np.arange(n) % 4, "label_click": label, "pred_click": p,
        "label_order": label, "pred_order": np.minimum(p * 7, 1.0),
    })
    report = validate_table(table, "log.parquet")
    cal = report.summary.calibration
    assert cal["click"].ratio == pytest.approx(1.0, abs=0.15) and cal["click"].ece < 0.05
    assert cal["order"].ratio > 4 and cal["order"].far_off
    assert [w for w in report.warnings if "pred_order" in w] and not [
        w for w in report.warnings if "pred_click" in w]
    path = tmp_path / "log.parquet"
    pq.write_table(table, path)
    out = flat(invoke("data", "validate", path).output)
    assert "calibration click" in out and "calibration order" in out and "ECE" in out
    assert "warning: " in out and "pred_order: mean prediction" in out and "(outside [0.5, 2]" in out


# ----------------------------------------------------------------------------- 7, 8. CLI help
def test_help_does_not_cut_defaults() -> None:
    out = invoke("bench", "--help").output
    assert "production,static_search,segment_oracle,oracle,true_score" in out
    assert "…" not in out


@pytest.mark.parametrize("name", ["bench", "train", "grade", "static_search", "integrated_rl",
                                  "mtl", "logbench", "LogBenchConfig"])
def test_config_show_lists_every_field(name: str) -> None:
    from blendrank.cli.config_cmd import config_fields, find_config

    result = invoke("config", "show", name)
    assert result.exit_code == 0, result.output
    cls, _ = find_config(name)
    rows = list(config_fields(cls))
    assert len(rows) >= len(cls.model_fields)
    for key, _type, default, _desc in rows:
        assert f"{key} (" in result.output
    if name == "logbench":
        assert "static_search.budget (int) = 400" in result.output
        assert "test_where (str | None) = null" in result.output
        assert "grade.stage2." in result.output


def test_config_show_unknown_and_misspelled_key_points_to_it(tmp_path: Path) -> None:
    result = invoke("config", "show", "benchh")
    assert result.exit_code == 1 and "choose one of bench, logbench" in flat(result.output)
    result = invoke("bench", "--data", tmp_path / "x.csv", "--out", tmp_path / "o",
                    "--set", "test_wher=x == 1")
    assert result.exit_code == 1
    assert "`blendrank config show LogBenchConfig` lists every field" in flat(result.output)


# ----------------------------------------------------------------------------- walkthrough
MAPPING = """\
columns:
  request_id: srch_id
  ts: date_time
  item_id: prop_id
  position: position
labels:
  click: click_bool
  booking: booking_bool
features:
  stars: prop_starrating
  price: price_usd
price: price_usd
test_where: random_bool == 1
"""


OBJECTIVE = """\
# What a results page is worth: clicks a little, bookings' revenue most.
value:
  click: 0.2
  booking*price: 1.0      # GMV: booking_bool x price_usd, in units of price_scale
discount: log2
page_size: 5              # the first five positions of a page are valued
guardrails: {}
production_weights:       # the hand-set ranking formula the site runs today
  click: 0.7
  booking: 0.3
price_scale: 100          # GMV in hundreds of dollars
"""


def walkthrough_csv(path: Path, n_requests: int = 240, per: int = 6, seed: int = 0) -> Path:
    """A search log as real ones come: string ids, ISO date-times, no user column, a 0/1
    randomised-order flag per request, prices, clicks and bookings, no predictions."""
    rng = np.random.default_rng(seed)
    req = np.repeat(np.arange(n_requests), per)
    pos = np.tile(np.arange(1, per + 1), n_requests)
    quality = rng.normal(size=req.size)
    random_bool = np.repeat(rng.random(n_requests) < 0.3, per).astype(int)
    click = (rng.random(req.size) < 1 / (1 + np.exp(-(quality - 0.3 * pos)))).astype(int)
    booking = click * (rng.random(req.size) < 0.3).astype(int)
    t0 = np.datetime64("2024-03-01T08:00:00")
    times = [str(t0 + np.timedelta64(int(r) * 600, "s")).replace("T", " ") for r in req]
    cols = {
        "srch_id": [f"s{r:05d}" for r in req],
        "date_time": times,
        "prop_id": [f"p{int(v)}" for v in rng.integers(0, 500, req.size) * 10 + pos],
        "position": pos.tolist(),
        "prop_starrating": rng.integers(1, 6, req.size).tolist(),
        "price_usd": np.round(rng.uniform(40, 300, req.size), 2).tolist(),
        "random_bool": random_bool.tolist(),
        "click_bool": click.tolist(),
        "booking_bool": booking.tolist(),
    }
    return write_csv(path, cols)


def test_walkthrough_csv_log_through_one_mapping(tmp_path: Path) -> None:
    log = walkthrough_csv(tmp_path / "searches.csv")
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING)

    result = invoke("data", "validate", log, "--mapping", mapping)
    assert result.exit_code == 0, result.output
    out = flat(result.output)
    assert "240 " in out and "warning: " in out and "no user_id column" in out

    mtl_cfg = ["--set", "epochs=2", "--set", "batch_size=256", "--set", "expert_dims=[8]",
               "--set", "tower_dims=[4]"]
    result = invoke("mtl", "train", "--data", log, "--mapping", mapping, "--out",
                    tmp_path / "mtl", "--quiet", *mtl_cfg)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "mtl" / "metrics.json").read_text())
    assert set(metrics["objectives"]) == {"click", "booking"} and metrics["split"] == "loaded"

    preds = tmp_path / "scored.parquet"
    result = invoke("mtl", "predict", "--model", tmp_path / "mtl", "--data", log, "--mapping",
                    mapping, "--out", preds)
    assert result.exit_code == 0, result.output
    scored = pq.read_table(preds)
    # the rows as stored, plus the predictions: the same mapping reads them again
    assert {"srch_id", "date_time", "pred_click", "pred_booking"} <= set(scored.column_names)
    assert scored.num_rows == 240 * 6

    # the objective beside the data: every command that reads scored.parquet finds it; the
    # walkthrough in the docs shows this very file
    doc = (Path(__file__).parents[1] / "docs" / "data_contract.md").read_text()
    assert f"```yaml\n{OBJECTIVE}```" in doc
    (tmp_path / "objective.yaml").write_text(OBJECTIVE)
    result = invoke(
        "bench",
        "--data",
        preds,
        "--mapping",
        mapping,
        "--out",
        tmp_path / "bench",
        "--methods",
        "production,static_search,logged",
        "--set",
        "static_search.budget=20",
        "--set",
        "n_boot=100",
    )
    assert result.exit_code == 0, result.output
    assert f"objective from {tmp_path / 'objective.yaml'}" in flat(result.output)
    bench = json.loads((tmp_path / "bench" / "bench.json").read_text())
    raw = pacsv.read_csv(log)
    flagged = pc.count_distinct(raw.filter(pc.equal(raw["random_bool"], 1))["srch_id"]).as_py()
    assert bench["split_requests"]["test"] == flagged
    assert sum(bench["split_requests"].values()) == 240
    assert bench["test_split"] == "the requests where random_bool == 1"
    # the objective and production weights actually used, recorded with the run
    assert (
        bench["objective_source"] == str(tmp_path / "objective.yaml")
        and not bench["objective_default"]
    )
    used = bench["bench_config"]["production_weights"]
    assert used == pytest.approx({"click": 0.7, "booking": 0.3})
    assert bench["bench_config"]["objective"]["value"] == {"click": 0.2, "booking*price": 1.0}
    # the logged order is an arm; the page value and each term (GMV here) per arm, with lifts
    assert set(bench["arms"]) == {"production", "static_search", "logged"}
    assert bench["realised_terms"] == {
        "click@5": "click",
        "booking*price@5": "booking*price",
        "booking@5": "booking",
    }
    for arm in ("production", "static_search", "logged"):
        for metric in ("value@5", "click@5", "booking*price@5", "gauc_booking"):
            lo, hi = bench["offline"][arm][metric]["ci95"]
            assert lo <= bench["offline"][arm][metric]["mean"] <= hi, (arm, metric)
    assert {"value@5", "click@5", "booking*price@5"} <= set(bench["lifts"]["logged"])
    # value@k is the objective's sum of its terms
    prod = bench["offline"]["production"]
    assert prod["value@5"]["mean"] == pytest.approx(
        0.2 * prod["click@5"]["mean"] + prod["booking*price@5"]["mean"], rel=1e-5
    )

    result = invoke("report", "--bench", tmp_path / "bench")
    assert result.exit_code == 0, result.output
    md = (tmp_path / "bench" / "report.md").read_text()
    assert md.startswith("# blendrank bench report: offline on a log (scored.parquet)")
    for said in (
        "the requests where random_bool == 1",
        "## Page value on the test split",
        "| logged |",
        "booking*price@5",
        "**Objective.**",
    ):
        assert said in md, said
    for unsaid in (
        "logs / logs",
        "true probabilities",
        "common random numbers",
        "GPM",
        "oracle share",
    ):
        assert unsaid not in md, unsaid
