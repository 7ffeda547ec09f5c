"""GRADE's streamed training requests: a Parquet log read in record batches and built
buffer by buffer holds the same requests as the whole-table build, passes visit every request
once, any stream position replays exactly, and whole-log statistics match the in-memory ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from blendrank.algos.grade.data import (
    RequestBatch,
    RequestLog,
    batches_of,
    build_batch,
    fit_fusion_spec,
    fit_policy_features,
    shuffled_requests,
)
from blendrank.data.synthetic import two_type_log
from blendrank.errors import DataError
from blendrank.rewards.components import fit_position_bias, position_bias_from_counts


def _shards(table: pa.Table, root: Path, rows_per_file: int) -> Path:
    """Write ``table`` as shards whose boundaries fall inside requests' neighbourhoods (any row)."""
    root.mkdir()
    for i, lo in enumerate(range(0, table.num_rows, rows_per_file)):
        pq.write_table(table.slice(lo, rows_per_file), root / f"part-{i:03d}.parquet", row_group_size=50)
    return root


def _ragged_log(n: int = 400) -> pa.Table:
    """two_type_log with requests of 3..8 candidates (so chunks have different widths)."""
    t = two_type_log(n, L=8)
    keep = np.arange(8)[None, :] < np.random.default_rng(1).integers(3, 9, size=n)[:, None]
    return t.filter(pa.array(keep.ravel()))


def _assert_same(a: RequestBatch, b: RequestBatch) -> None:
    assert list(a.request_id) == list(b.request_id)
    for name in ("cat", "num", "inputs", "features", "stats", "mask", "shown", "position", "price"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), msg=name)
    assert a.labels.keys() == b.labels.keys()
    for k in a.labels:
        torch.testing.assert_close(a.labels[k], b.labels[k])


@pytest.mark.parametrize("read_rows, buffer", [(37, 50), (1000, 64), (100_000, 10_000)])
def test_streamed_buffers_hold_the_whole_table_build(tmp_path: Path, read_rows: int, buffer: int):
    table = _ragged_log()
    path = _shards(table, tmp_path / "log", 333)  # shard and batch boundaries cut requests
    log = RequestLog.scan(path, read_batch_rows=read_rows, buffer_requests=buffer)
    whole = build_batch(table, fit_fusion_spec(table), fit_policy_features(table))
    assert log.n_requests == len(whole) == 400 and log.width == 8
    bufs = list(log.buffers())
    assert all(len(b) == buffer for b in bufs[:-1]) and 0 < len(bufs[-1]) <= buffer
    _assert_same(RequestBatch.concat(bufs), whole)
    assert log.spec == fit_fusion_spec(table)
    # whole-log statistics from the streaming pass = those of the in-memory build
    s = log.summary(4)
    torch.testing.assert_close(s.stats_mean, whole.stats.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.stats_std, whole.stats.std(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(position_bias_from_counts(s.shows, s.clicks),
                               fit_position_bias(whole.position, whole.labels["click"], whole.shown, 4))


def test_passes_visit_every_request_once_and_positions_replay_exactly(tmp_path: Path):
    log = RequestLog.scan(_shards(two_type_log(300), tmp_path / "log", 500), read_batch_rows=200, buffer_requests=64)
    two_passes = [rid for part in shuffled_requests(log, 7, 2, passes=2) for rid in part.request_id]
    first, second = two_passes[:300], two_passes[300:]
    assert sorted(first) == sorted(second) == list(range(300)) and first != second  # reshuffled per pass
    assert first[:64] != sorted(first[:64])  # shuffled inside a buffer ...
    assert sorted(first[:64]) == list(range(64))  # ... but buffers come in log order
    for start in (0, 5, 64, 299, 300, 417):
        again = [rid for part in shuffled_requests(log, 7, 2, start=start, passes=2) for rid in part.request_id]
        assert again == two_passes[start:]
    sizes = [len(b) for b in batches_of(shuffled_requests(log, 7, 1), 48)]
    assert sizes == [48] * 6 + [12]
    other_seed = [rid for part in shuffled_requests(log, 8, 2) for rid in part.request_id]
    assert other_seed != first


def test_a_log_within_one_buffer_is_built_once(tmp_path: Path):
    log = RequestLog.scan(two_type_log(100), buffer_requests=100)
    assert next(log.buffers()) is next(log.buffers())


def test_requests_must_be_adjacent_in_a_parquet_log(tmp_path: Path):
    table = two_type_log(50)
    order = np.argsort(np.tile(np.arange(8), 50), kind="stable")  # rows of each request scattered
    path = tmp_path / "scattered.parquet"
    pq.write_table(table.take(pa.array(order)), path)
    with pytest.raises(DataError, match="scattered.parquet: the rows of a request are not adjacent"):
        RequestLog.scan(path, read_batch_rows=64)
    # an in-memory table is regrouped instead (requests in first-appearance order)
    log = RequestLog.scan(table.take(pa.array(order)))
    assert log.n_requests == 50 and log.width == 8


def test_fit_grade_streams_a_parquet_log_like_the_same_table(tmp_path: Path):
    from blendrank.algos.grade.config import GRADEConfig
    from blendrank.algos.grade.trainer import fit_grade

    table = two_type_log(300)
    path = _shards(table, tmp_path / "log", 700)
    cfg = GRADEConfig.model_validate({"stage1": {"epochs": 1, "batch_size": 64},
                                      "stage2": {"steps": 3, "batch_size": 64, "num_generations": 4},
                                      "data": {"shuffle_buffer_requests": 100, "read_batch_rows": 300},
                                      "reward": {"a_prior": 0.0, "k": 4,
                                                 "post_objective_weights": {"click": 1.0, "order": 1.0}}})
    a, b = fit_grade(table, cfg), fit_grade(path, cfg)
    for (name, x), y in zip(a.policy.state_dict().items(), b.policy.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name)


def test_feature_kinds_of_a_streamed_log_are_those_of_the_whole_table(tmp_path: Path):
    """An integer feature with few values early in the log and many later is numeric, as
    FeatureSchema.infer on the whole table says, though the first record batch alone says
    categorical."""
    table = two_type_log(400)
    late_many = np.repeat(np.where(np.arange(400) < 200, np.arange(400) % 5, np.arange(400)), 8)
    table = table.append_column("f_user_score", pa.array(late_many, pa.int64()))
    path = tmp_path / "log.parquet"
    pq.write_table(table, path)
    streamed = RequestLog.scan(path, read_batch_rows=100).center.schema
    assert streamed == fit_policy_features(table).schema
    assert streamed.get("f_user_score").kind == "numeric" and streamed.get("f_user_type").kind == "categorical"


def test_a_csv_path_gets_a_clear_error(tmp_path: Path):
    path = tmp_path / "log.csv"
    path.write_text("request_id,pred_click\n1,0.5\n")
    with pytest.raises(DataError, match=r"log\.csv: GRADE streams Parquet logs"):
        RequestLog.scan(path)


def _reused_id(n: int, reused: int, as_: int, user_too: bool = True) -> pa.Table:
    """two_type_log(n) where request ``reused`` takes request ``as_``'s id (and, with
    ``user_too``, keeps its own user: then the id spans two users, as data validate reports)."""
    t = two_type_log(n)
    rid = t["request_id"].to_numpy().copy()
    rid[rid == reused] = as_
    t = t.set_column(0, "request_id", pa.array(rid, t["request_id"].type))
    if not user_too:
        uid = t["user_id"].to_numpy().copy()
        uid[rid == as_] = uid[rid == as_][0]
        t = t.set_column(1, "user_id", pa.array(uid, t["user_id"].type))
    return t


@pytest.mark.parametrize("as_strings", [False, True])
def test_a_request_id_reused_far_apart_is_found_before_training(tmp_path: Path, as_strings: bool):
    """Request 250 reuses request 10's id, ~1,900 rows later (chunks of 500 rows never see both):
    the stream reports the violations `data validate` finds on the whole file, same kinds,
    counts and rows, and the adjacency streaming needs."""
    from blendrank.algos.grade.data import validate_log_stream
    from blendrank.data.contract import format_violations, validate_table

    t = _reused_id(300, 250, 10)
    if as_strings:
        t = t.set_column(0, "request_id", pc.cast(t["request_id"], pa.string()))
    path = tmp_path / "train.parquet"
    pq.write_table(t, path)
    whole = format_violations(validate_table(t, str(path)))
    assert "multi_user_request" in whole and "duplicate_item" in whole
    with pytest.raises(DataError) as exc:
        validate_log_stream(path, read_batch_rows=500)
    streamed = str(exc.value)
    assert streamed.startswith(whole + "\n"), streamed
    assert "request_id=" in streamed and "in rows 80 and 2000" in streamed
    assert "adjacent" in streamed
    # the training pass itself refuses it too (fit_grade on a path, without validate_log_stream)
    with pytest.raises(DataError, match="request_id=.*comes back after other requests"):
        RequestLog.scan(path, read_batch_rows=500)
    pq.write_table(two_type_log(300), path)
    validate_log_stream(path, read_batch_rows=500)  # a valid log passes


def test_a_reused_id_data_validate_accepts_is_still_refused_by_the_stream(tmp_path: Path):
    """Same user, other items: `data validate` reads one request of 16 candidates; streaming
    would read two, so it refuses, naming the id and both rows."""
    from blendrank.algos.grade.data import validate_log_stream
    from blendrank.data.contract import validate_table

    t = _reused_id(300, 250, 10, user_too=False)
    t = t.set_column(t.column_names.index("item_id"), "item_id",
                     pc.add(t["item_id"], pa.array(np.where(np.arange(t.num_rows) >= 2000, 100, 0))
                            ))
    path = tmp_path / "train.parquet"
    pq.write_table(t, path)
    assert validate_table(t, str(path)).ok
    with pytest.raises(DataError) as exc:
        validate_log_stream(path, read_batch_rows=500)
    assert "data contract violation" not in str(exc.value)
    assert ("1 request id(s) come back after other requests, e.g. request_id=10 in rows 80 and 2000"
            in str(exc.value))


def test_chunk_violations_are_counted_in_rows_of_the_whole_log(tmp_path: Path):
    from blendrank.algos.grade.data import validate_log_stream

    t = two_type_log(300)
    pred = t["pred_click"].to_numpy().copy()
    pred[2001] = np.nan
    pq.write_table(t.set_column(t.column_names.index("pred_click"), "pred_click", pa.array(pred)),
                   tmp_path / "train.parquet")
    with pytest.raises(DataError, match=r"nan_or_inf \(1; first rows 2001\)"):
        validate_log_stream(tmp_path / "train.parquet", read_batch_rows=500)


def test_seen_request_ids_remember_every_id_exactly():
    from blendrank.data.request_ids import SeenRequestIds

    rng = np.random.default_rng(0)
    seen, python = SeenRequestIds(), set()
    for _ in range(60):  # many levels merged
        ids = rng.integers(0, 5000, size=rng.integers(1, 90))
        again = seen.add(pa.array(ids))
        expect = []
        for i in ids.tolist():
            expect.append(i in python)
            python.add(i)
        assert again.tolist() == expect
