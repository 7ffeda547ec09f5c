"""Data contract: validation kinds, mapping, readers/writers and `blendrank data validate`."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from blendrank.cli.main import app
from blendrank.data.contract import (
    Kind,
    contract_schema,
    format_violations,
    objectives_of,
    validate_table,
)
from blendrank.data.io import iter_record_batches, load_log, read_log, write_parquet
from blendrank.data.mapping import ColumnMapping, apply_mapping, load_mapping
from blendrank.errors import DataError

runner = CliRunner()

Rows = dict[str, list[Any]]


def good_rows() -> Rows:
    """Three requests of two candidates each; every optional column present and valid."""
    return {
        "request_id": [1, 1, 2, 2, 3, 3],
        "user_id": [7, 7, 8, 8, 7, 7],
        "ts": [1000, 1000, 2000, 2000, 3000, 3000],
        "item_id": [10, 11, 10, 12, 11, 13],
        "position": [1, 2, 1, None, 1, 2],
        "label_click": [1, 0, 0, 1, 0, 0],
        "label_order": [0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
        "pred_click": [0.4, 0.1, 0.2, 0.3, 0.05, 0.5],
        "price": [9.5, 3.0, 9.5, 20.0, 3.0, 1.0],
        "propensity": [0.5, 0.5, 0.9, 0.1, 0.5, 0.5],
        "f_age": [30, 30, 41, 41, 30, 30],
        "comment": ["a", "b", "c", "d", "e", "f"],
    }


def write(tmp_path: Path, rows: Rows | pa.Table, fmt: str = "parquet") -> Path:
    """Write rows as Parquet, or as CSV text (mixed types allowed; None is an empty cell)."""
    path = tmp_path / f"log.{fmt}"
    if fmt == "parquet":
        pq.write_table(rows if isinstance(rows, pa.Table) else pa.table(rows), path)
        return path
    cols = rows.to_pydict() if isinstance(rows, pa.Table) else rows
    records = zip(*cols.values(), strict=True)
    lines = [",".join(cols)] + [",".join("" if v is None else str(v) for v in r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def validate_cli(*args: str | Path) -> Any:
    result = runner.invoke(app, ["data", "validate", *map(str, args)])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result


def edit(**changes: Any) -> Callable[[Rows], Rows]:
    """A row modifier: replace a column (value) or drop it (None)."""

    def apply(rows: Rows) -> Rows:
        for name, value in changes.items():
            if value is None:
                rows.pop(name)
            else:
                rows[name] = value
        return rows

    return apply


def set_at(column: str, row: int, value: Any) -> Callable[[Rows], Rows]:
    def apply(rows: Rows) -> Rows:
        rows[column][row] = value
        return rows

    return apply


# (id, modifier, file format, column, kind, first offending rows)
BAD_CASES = [
    ("missing item_id", edit(item_id=None), "csv", "item_id", Kind.MISSING_COLUMN, []),
    (
        "no label",
        edit(label_click=None, label_order=None, pred_click=None),
        "csv",
        "label_*",
        Kind.NO_LABEL,
        [],
    ),
    ("bad label name", edit(label_=[0] * 6), "parquet", "label_", Kind.BAD_NAME, []),
    (
        "pred without label",
        edit(pred_cart=[0.1] * 6),
        "parquet",
        "pred_cart",
        Kind.PRED_WITHOUT_LABEL,
        [],
    ),
    ("string in ts", set_at("ts", 3, "yesterday"), "csv", "ts", Kind.WRONG_DTYPE, [3]),
    (
        "fractional request_id",
        edit(request_id=[1.0, 1.0, 2.5, 2.5, 3.0, 3.0]),
        "parquet",
        "request_id",
        Kind.WRONG_DTYPE,
        [2, 3],
    ),
    (
        "integral float ts",
        edit(ts=[1e3, 1e3, 2e3, 2e3, 3e3, 3e3]),
        "parquet",
        "ts",
        Kind.WRONG_DTYPE,
        [],
    ),
    ("text label", set_at("label_click", 4, "yes"), "csv", "label_click", Kind.WRONG_DTYPE, [4]),
    (
        "float position",
        edit(position=[1.0, 2.0, 1.0, 2.0, 1.0, 2.0]),
        "parquet",
        "position",
        Kind.WRONG_DTYPE,
        [],
    ),
    ("null item_id", set_at("item_id", 2, None), "csv", "item_id", Kind.NULL, [2]),
    ("null label", set_at("label_order", 5, None), "parquet", "label_order", Kind.NULL, [5]),
    (
        "NaN pred",
        set_at("pred_click", 1, float("nan")),
        "parquet",
        "pred_click",
        Kind.NON_FINITE,
        [1],
    ),
    (
        "inf feature",
        edit(f_score=[0.1, float("inf"), 0.2, 0.3, 0.4, 0.5]),
        "csv",
        "f_score",
        Kind.NON_FINITE,
        [1],
    ),
    ("pred > 1", set_at("pred_click", 4, 1.7), "csv", "pred_click", Kind.PRED_RANGE, [4]),
    (
        "negative label",
        set_at("label_order", 0, -1.0),
        "csv",
        "label_order",
        Kind.NEGATIVE_LABEL,
        [0],
    ),
    ("negative price", set_at("price", 3, -2.0), "csv", "price", Kind.NEGATIVE_PRICE, [3]),
    ("position 0", set_at("position", 0, 0), "csv", "position", Kind.BAD_POSITION, [0]),
    (
        "zero propensity",
        set_at("propensity", 2, 0.0),
        "parquet",
        "propensity",
        Kind.BAD_PROPENSITY,
        [2],
    ),
    ("negative propensity", set_at("propensity", 5, -1.5), "csv", "propensity", Kind.BAD_PROPENSITY, [5]),
    ("duplicate item", set_at("item_id", 1, 10), "csv", "request_id, item_id", Kind.DUPLICATE, [1]),
    (
        "small request",
        edit(request_id=[1, 1, 2, 2, 3, 4]),
        "csv",
        "request_id",
        Kind.SMALL_REQUEST,
        [4, 5],
    ),
    ("two users", set_at("user_id", 3, 9), "csv", "request_id", Kind.MULTI_USER_REQUEST, [2]),
]


@pytest.mark.parametrize(
    ("modify", "fmt", "column", "kind", "rows"),
    [case[1:] for case in BAD_CASES],
    ids=[case[0] for case in BAD_CASES],
)
def test_bad_input_exits_1_naming_column_and_kind(
    tmp_path: Path,
    modify: Callable[[Rows], Rows],
    fmt: str,
    column: str,
    kind: Kind,
    rows: list[int],
) -> None:
    path = write(tmp_path, modify(good_rows()), fmt)
    result = validate_cli(path)
    assert result.exit_code == 1, result.output
    assert column in result.output and str(kind) in result.output
    assert "data contract violation" in result.output

    report = validate_table(read_log(path), str(path))
    found = [v for v in report.violations if v.kind is kind and v.column == column]
    assert len(found) == 1, format_violations(report)
    assert found[0].first_rows == rows
    assert found[0].file == str(path) and found[0].fix


def test_distinct_bad_kinds_covered() -> None:
    assert len({case[4] for case in BAD_CASES}) >= 15


def test_empty_table(tmp_path: Path) -> None:
    path = write(tmp_path, pa.table(good_rows()).slice(0, 0))
    result = validate_cli(path)
    assert result.exit_code == 1
    assert "(table)" in result.output and str(Kind.EMPTY) in result.output


def test_every_violation_is_reported_at_once(tmp_path: Path) -> None:
    rows = good_rows()
    for modify in (
        set_at("pred_click", 0, 2.0),
        set_at("price", 1, -1.0),
        set_at("item_id", 3, 10),
    ):
        rows = modify(rows)
    report = validate_table(pa.table(rows), "mem")
    kinds = {v.kind for v in report.violations}
    assert kinds == {Kind.PRED_RANGE, Kind.NEGATIVE_PRICE, Kind.DUPLICATE}
    assert not report.ok
    text = format_violations(report)
    assert "mem: 3 data contract violation(s)" in text and "pred_click" in text


def test_broken_id_column_does_not_cascade() -> None:
    rows = edit(request_id=["a", None, "b", "b", "c", "c"])(good_rows())
    report = validate_table(pa.table(rows), "mem")
    assert [(v.column, v.kind) for v in report.violations] == [("request_id", Kind.NULL)]
    assert report.summary is None


def test_valid_file_exits_0_with_summary(tmp_path: Path) -> None:
    path = write(tmp_path, good_rows(), "csv")
    result = validate_cli(path)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "valid" in out and "requests" in out and "impressions" in out
    assert "click 0.3333" in out and "order 0.1667" in out
    assert "min 2, median 2, max 2" in out
    assert "comment" in out  # ignored column is reported

    report = validate_table(read_log(path), str(path))
    s = report.summary
    assert report.ok and s is not None
    assert (s.requests, s.impressions, s.users, s.items) == (3, 6, 2, 4)
    assert s.objectives == ["click", "order"] and s.preds == ["click"]
    assert s.features == ["f_age"] and s.ignored_columns == ["comment"]
    assert s.optional == ["position", "price", "propensity"]
    assert (s.ts_min, s.ts_max) == (1000, 3000)


def test_drop_small_requests_counts_them(tmp_path: Path) -> None:
    rows = edit(request_id=[1, 1, 2, 2, 3, 4])(good_rows())
    path = write(tmp_path, rows, "csv")
    result = validate_cli(path, "--drop-small-requests")
    assert result.exit_code == 0, result.output
    assert "2 requests (2 impressions)" in result.output

    report = validate_table(read_log(path), "x", small_requests="drop")
    assert report.ok and report.summary is not None
    assert report.summary.dropped_requests == 2 and report.summary.requests == 2
    assert report.table.num_rows == 4 and report.table.column("request_id").to_pylist() == [
        1,
        1,
        2,
        2,
    ]

    # min-candidates 3 drops everything: that is an error, not a silent empty result
    result = validate_cli(path, "--drop-small-requests", "--min-candidates", "3")
    assert result.exit_code == 1 and str(Kind.EMPTY) in result.output


def test_contract_schema_tables_validate() -> None:
    schema = contract_schema(
        ["click", "order"],
        {"age": pa.int32()},
        with_preds=True,
        with_price=True,
        with_propensity=True,
    )
    assert objectives_of(schema.names) == ["click", "order"]
    assert "f_age" in schema.names and not schema.field("request_id").nullable
    rows = good_rows()
    rows.pop("comment")
    rows["pred_order"] = [0.5] * 6
    table = pa.table(rows).select(schema.names).cast(schema)
    report = validate_table(table, "mem")
    assert report.ok, format_violations(report)


def test_first_occurrence_codes_match_numpy() -> None:
    rng = np.random.default_rng(0)
    req = np.repeat(np.arange(200), 5)
    rng.shuffle(req)
    rows = {
        "request_id": req,
        "user_id": req // 2,
        "ts": req,
        "item_id": rng.integers(0, 6, req.size),
        "label_click": np.zeros(req.size),
    }
    report = validate_table(pa.table(rows), "mem")
    dup = [v for v in report.violations if v.kind is Kind.DUPLICATE]
    keys = req * 10 + rows["item_id"]
    _, first = np.unique(keys, return_index=True)
    expected = np.setdiff1d(np.arange(req.size), first)
    assert dup[0].count == expected.size and dup[0].first_rows == expected[:5].tolist()


# --------------------------------------------------------------------------------------------
# mapping

MAPPING_YAML = """\
columns: {request_id: session, user_id: uid, ts: time_s, item_id: vid, position: rank}
labels: {click: is_click, order: is_buy}
preds: {click: p_ctr}
features: {age: user_age}
price: cost
propensity: prop
ts_unit: s
"""


def renamed_rows() -> Rows:
    rows = good_rows()
    renames = {
        "request_id": "session",
        "user_id": "uid",
        "item_id": "vid",
        "position": "rank",
        "label_click": "is_click",
        "label_order": "is_buy",
        "pred_click": "p_ctr",
        "f_age": "user_age",
        "price": "cost",
        "propensity": "prop",
    }
    out = {renames.get(k, k): v for k, v in rows.items() if k != "ts"}
    out["time_s"] = [1, 1, 2, 2, 3, 3]
    out["session"] = [f"s{r}" for r in rows["request_id"]]  # string ids are fine
    return out


def test_mapping_round_trip(tmp_path: Path) -> None:
    path = write(tmp_path, renamed_rows(), "csv")
    mapping = tmp_path / "map.yaml"
    mapping.write_text(MAPPING_YAML)
    result = validate_cli(path, "--mapping", mapping)
    assert result.exit_code == 0, result.output

    table = read_log(path, mapping)
    assert table.column("ts").to_pylist() == [1000, 1000, 2000, 2000, 3000, 3000]
    assert table.column("request_id").to_pylist()[0] == "s1"
    assert {"label_click", "label_order", "pred_click", "f_age", "price", "propensity"} <= set(
        table.column_names
    )
    assert "session" not in table.column_names and "comment" in table.column_names
    loaded, report = load_log(path, load_mapping(mapping))
    assert loaded.num_rows == 6 and report.summary is not None and report.summary.requests == 3


def test_unknown_mapping_key_is_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path, renamed_rows(), "csv")
    mapping = tmp_path / "map.yaml"
    mapping.write_text(MAPPING_YAML.replace("columns:", "colums:") + "extra_key: 1\n")
    result = validate_cli(path, "--mapping", mapping)
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert str(mapping) in out and "colums" in out and "extra_key" in out and "unknown key" in out

    mapping.write_text("columns: {request_id: session, sesion_id: x}\n")
    with pytest.raises(DataError, match=r"columns\.sesion_id: unknown key"):
        load_mapping(mapping)


def test_mapped_column_absent_lists_available_columns(tmp_path: Path) -> None:
    path = write(tmp_path, renamed_rows(), "csv")
    mapping = tmp_path / "map.yaml"
    mapping.write_text(MAPPING_YAML.replace("is_buy", "is_purchase"))
    result = validate_cli(path, "--mapping", mapping)
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert (
        "labels.order" in out and "'is_purchase' not found" in out and "available columns:" in out
    )
    assert "is_buy" in out


def test_mapping_target_clash_is_an_error() -> None:
    table = pa.table({"request_id": [1], "session": [2]})
    mapping = ColumnMapping.model_validate({"columns": {"request_id": "session"}})
    with pytest.raises(DataError, match="already has a column request_id"):
        apply_mapping(table, mapping, source="t", mapping_source="m.yaml")


# --------------------------------------------------------------------------------------------
# io


def test_truncated_parquet_is_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path, good_rows())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    result = validate_cli(path)
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "not a Parquet file or truncated" in out and "re-export" in out and path.name in out
    with pytest.raises(DataError, match="truncated"):
        list(iter_record_batches(path))


def test_csv_gz_and_shard_directory(tmp_path: Path) -> None:
    table = pa.table(good_rows())
    csv_path = write(tmp_path, table, "csv")
    gz = tmp_path / "log.csv.gz"
    gz.write_bytes(gzip.compress(csv_path.read_bytes()))
    assert read_log(gz).num_rows == 6

    shards = tmp_path / "shards"
    write_parquet(table.slice(0, 4), shards / "part-0.parquet")
    write_parquet(table.slice(4), shards / "part-1.parquet")
    (shards / "_SUCCESS").write_text("")
    assert read_log(shards).equals(table)
    assert validate_cli(shards).exit_code == 0

    batches = list(iter_record_batches(shards, ["request_id", "label_click"], batch_size=3))
    assert [b.num_rows for b in batches] == [3, 1, 2]
    assert batches[0].schema.names == ["request_id", "label_click"]
    with pytest.raises(DataError, match=r"missing column.*nope"):
        list(iter_record_batches(shards, ["nope"]))

    write_parquet(table.slice(0, 2).drop_columns(["price"]), shards / "part-2.parquet")
    with pytest.raises(DataError, match="schema differs"):
        read_log(shards)


def test_write_parquet_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.parquet"
    write_parquet(pa.table({"x": [1, 2]}), path)
    write_parquet(pa.table({"x": [3]}), path)  # overwrite
    assert pq.read_table(path).column("x").to_pylist() == [3]
    assert [p.name for p in path.parent.iterdir()] == ["b.parquet"]


def test_unreadable_inputs(tmp_path: Path) -> None:
    assert "no such file" in validate_cli(tmp_path / "missing.parquet").output
    other = tmp_path / "log.json"
    other.write_text("{}")
    assert "unsupported file type" in validate_cli(other).output
    (tmp_path / "empty").mkdir()
    assert "no .parquet files" in validate_cli(tmp_path / "empty").output
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b\n1,2\n3\n")
    result = validate_cli(bad_csv)
    assert result.exit_code == 1 and "cannot read as CSV" in result.output


def test_load_log_raises_listing_every_violation(tmp_path: Path) -> None:
    rows = set_at("price", 0, -1.0)(set_at("pred_click", 0, 3.0)(good_rows()))
    path = write(tmp_path, rows)
    with pytest.raises(DataError) as info:
        load_log(path)
    assert "negative_price" in str(info.value) and "pred_out_of_range" in str(info.value)
