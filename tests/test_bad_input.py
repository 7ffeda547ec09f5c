"""Bad input across CLI, config, data, model directories and the service.

Every case must end in a clear user error: exit code 1, no Python traceback, and a message that
names the file or field and says what to do. ``docs/reliability.md`` lists every case (these and
the ones already covered elsewhere) with the message it produces.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_grade import cfg
from test_mtl import FAST, make_log
from typer.testing import CliRunner

from blendrank.algos.grade.trainer import fit_grade
from blendrank.cli.main import app
from blendrank.data.synthetic import two_type_log
from blendrank.mtl.config import MTLConfig
from blendrank.mtl.fit import fit_mtl

runner = CliRunner()


# ------------------------------------------------------------------------------------ running a case
def invoke(*args: str | Path) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def assert_user_error(result: Any, *needles: str) -> None:
    """Exit 1, no traceback (nothing escaped the CLI's error handling), every needle present."""
    out = flat(result.output)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "error:" in out, result.output
    for needle in needles:
        assert flat(needle) in out, f"{needle!r} not in:\n{result.output}"


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (what a failing command must leave untouched)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def base_log() -> pa.Table:
    return two_type_log(120, L=4)


def with_column(table: pa.Table, name: str, values: Any) -> pa.Table:
    arr = values if isinstance(values, pa.Array) else pa.array(values)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, arr)
    return table.append_column(name, arr)


def set_value(table: pa.Table, name: str, row: int, value: Any) -> pa.Table:
    values = table[name].to_pylist()
    values[row] = value
    return with_column(table, name, pa.array(values, type=table[name].type))


def write_table(tmp: Path, table: pa.Table, name: str = "in.parquet") -> None:
    pq.write_table(table, tmp / name)


def truncated(tmp: Path) -> None:
    write_table(tmp, base_log())
    data = (tmp / "in.parquet").read_bytes()
    (tmp / "in.parquet").write_bytes(data[: len(data) // 2])


def csv_log(tmp: Path, times: list[str] | None = None, extra: str = "") -> None:
    """A 4-request CSV log with ISO date-times, string ids and no user column, and its mapping
    (``extra`` appended to it)."""
    times = times or [f"2024-03-01 {8 + r // 2:02d}:00:00" for r in range(8)]
    rows = [f"s{r // 2},{times[r]},i{r % 2},{r % 2},{r % 2 + 1}" for r in range(8)]
    (tmp / "log.csv").write_text("srch,time,item,clicked,pos\n" + "\n".join(rows) + "\n")
    (tmp / "map.yaml").write_text("columns: {request_id: srch, ts: time, item_id: item, position: pos}\n"
                                  "labels: {click: clicked}\n" + extra)


def renamed(tmp: Path) -> None:
    """The log under a user's own column names (for mapping cases)."""
    t = base_log()
    t = t.rename_columns(["session", "uid", "time_ms", "sku", *t.column_names[4:]])
    write_table(tmp, t)


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny trained GRADE policy, its export and a tiny MTL model, each for corrupting."""
    root = tmp_path_factory.mktemp("models")
    pq.write_table(base_log(), root / "log.parquet")
    fit_grade(two_type_log(200, L=6), cfg("stage1.epochs=1", "stage2.steps=2")).save(root / "policy")
    from blendrank.serve.export import export_policy

    export_policy(root / "policy", root / "export")
    mtl_log = make_log(150, seed=1)
    pq.write_table(mtl_log, root / "mtl_log.parquet")
    fit_mtl(mtl_log, None, MTLConfig(**{**FAST, "epochs": 1}), progress=False).save(root / "mtl")
    return {"root": root, "log": root / "log.parquet", "policy": root / "policy",
            "export": root / "export", "mtl": root / "mtl", "mtl_log": root / "mtl_log.parquet"}


# ------------------------------------------------------------------------------------ CLI cases
@dataclass(frozen=True)
class Case:
    """One bad input: ``args`` may use {tmp} (the test's directory), {log} (a valid log with
    predictions), {policy}, {export}, {mtl} (trained model directories) and {mtl_log}."""

    id: str
    area: str
    what: str
    args: list[str]
    needles: list[str]
    setup: Callable[[Path], Any] | None = field(default=None, compare=False)
    #: (model fixture, file, new content): copy the model directory to {tmp}/model and replace
    #: the file's content (None deletes it; b"half" keeps its first half).
    corrupt: tuple[str, str, bytes | None] | None = None


def corrupt(model: str, name: str, content: bytes | None) -> dict[str, Any]:
    return {"corrupt": (model, name, content)}


TRAIN = ["train", "--method", "grade", "--out", "{tmp}/out", "--data"]
MTL_TRAIN = ["mtl", "train", "--out", "{tmp}/out", "--quiet", "--data"]
GRADE_CFG = ["train", "--method", "grade", "--data", "{log}", "--out", "{tmp}/out", "--set"]
EXPORT = ["export", "--out", "{tmp}/exp", "--policy", "{tmp}/model"]
PREDICT = ["mtl", "predict", "--data", "{mtl_log}", "--out", "{tmp}/pred", "--model", "{tmp}/model"]
NOT_PARQUET = "not a Parquet file or truncated"

CASES: list[Case] = [
    # ---- data files
    Case("truncated parquet (train)", "data", "first half of a valid Parquet file", TRAIN + ["{tmp}/in.parquet"],
         ["in.parquet", NOT_PARQUET, "re-export it"], truncated),
    Case("truncated parquet (mtl train)", "data", "first half of a valid Parquet file",
         MTL_TRAIN + ["{tmp}/in.parquet"], ["in.parquet", NOT_PARQUET, "re-export it"], truncated),
    Case("not a parquet file", "data", "CSV text saved as in.parquet", ["data", "validate", "{tmp}/in.parquet"],
         ["in.parquet", NOT_PARQUET, "magic bytes not found"],
         lambda t: (t / "in.parquet").write_text("request_id,item_id\n1,2\n")),
    Case("zero-byte file", "data", "empty in.parquet (0 bytes)", TRAIN + ["{tmp}/in.parquet"],
         ["in.parquet", NOT_PARQUET, "0 bytes"], lambda t: (t / "in.parquet").write_bytes(b"")),
    Case("zero rows", "data", "valid schema, no rows", TRAIN + ["{tmp}/in.parquet"],
         ["empty_table", "the table has no rows", "check the export"],
         lambda t: write_table(t, base_log().slice(0, 0))),
    Case("zero rows (mtl train)", "data", "valid schema, no rows", MTL_TRAIN + ["{tmp}/in.parquet"],
         ["in.parquet", "0 request(s): too few to split"], lambda t: write_table(t, make_log(5, 1).slice(0, 0))),
    Case("string label", "data", "label_click stored as text yes/no", TRAIN + ["{tmp}/in.parquet"],
         ["label_click", "wrong_dtype", "text where 0/1, bool or a float is expected (e.g. 'yes')"],
         lambda t: write_table(t, with_column(base_log(), "label_click",
                                               ["yes" if v else "no" for v in base_log()["label_click"].to_pylist()]))),
    Case("float request_id", "data", "request_id as float64 with fractions", TRAIN + ["{tmp}/in.parquet"],
         ["request_id", "wrong_dtype", "fractional values", "floats lose ids above 2**53"],
         lambda t: write_table(t, with_column(base_log(), "request_id",
                                               base_log()["request_id"].to_numpy() + 0.5))),
    Case("float ts", "data", "ts as whole-number doubles", TRAIN + ["{tmp}/in.parquet"],
         ["ts", "wrong_dtype", "cast it to an integer type"],
         lambda t: write_table(t, with_column(base_log(), "ts", base_log()["ts"].to_numpy().astype(float)))),
    Case("missing required column", "data", "item_id column dropped", TRAIN + ["{tmp}/in.parquet"],
         ["item_id", "missing_column", "map an existing column onto it with --mapping"],
         lambda t: write_table(t, base_log().drop_columns(["item_id"]))),
    Case("missing mapping keys", "data", "mapping without `columns:` for renamed id columns",
         ["data", "validate", "{tmp}/in.parquet", "--mapping", "{tmp}/map.yaml"],
         ["3 data contract violation(s)", "request_id", "missing_column", "columns present:", "session"],
         lambda t: (renamed(t), (t / "map.yaml").write_text("labels: {click: label_click}\n"))),
    Case("mapping names a nonexistent column", "data", "columns.request_id: sessionid (absent)",
         ["train", "--method", "grade", "--data", "{tmp}/in.parquet", "--mapping", "{tmp}/map.yaml", "--out", "{tmp}/o"],
         ["map.yaml", "key columns.request_id: column 'sessionid' not found", "available columns: session"],
         lambda t: (renamed(t), (t / "map.yaml").write_text(
             "columns: {request_id: sessionid, user_id: uid, ts: time_ms, item_id: sku}\n"))),
    Case("mapping not UTF-8", "data", "mapping file in UTF-16",
         ["data", "validate", "{log}", "--mapping", "{tmp}/map.yaml"],
         ["map.yaml: YAML file is not UTF-8 text (byte 0: invalid start byte); save it as UTF-8"],
         lambda t: (t / "map.yaml").write_bytes("ts_unit: ms\n".encode("utf-16"))),
    Case("duplicate key in mapping", "data", "`columns:` twice in the mapping file",
         ["data", "validate", "{tmp}/in.parquet", "--mapping", "{tmp}/map.yaml"],
         ["map.yaml: not valid YAML (key 'columns' appears twice (lines 1 and 2); keep one)"],
         lambda t: (renamed(t), (t / "map.yaml").write_text(
             "columns: {request_id: session, user_id: uid, ts: time_ms, item_id: sku}\ncolumns: {user_id: uid}\n"))),
    Case("ts_unit s overflows", "data", "`ts_unit: s` with a ts of 10**17 (already ms, or garbage)",
         ["data", "validate", "{tmp}/in.parquet", "--mapping", "{tmp}/map.yaml"],
         ["map.yaml: key ts_unit: s, but column ts has a value (100000000000000000)",
          "overflows int64 milliseconds; check that ts is in seconds"],
         lambda t: (write_table(t, with_column(base_log(), "ts", pa.array([10**17] * base_log().num_rows))),
                    (t / "map.yaml").write_text("ts_unit: s\n"))),
    Case("error text with square brackets", "data", "mapping onto a column named `sess[ion]` (absent)",
         ["data", "validate", "{tmp}/in.parquet", "--mapping", "{tmp}/map.yaml"],
         ["key columns.request_id: column 'sess[ion]' not found", "available columns: session"],
         lambda t: (renamed(t), (t / "map.yaml").write_text("columns: {request_id: 'sess[ion]'}\n"))),
    Case("NaN in a float16 prediction", "data", "pred_click stored as float16 with one NaN",
         ["data", "validate", "{tmp}/in.parquet"], ["pred_click", "1 data contract violation(s)"],
         lambda t: write_table(t, set_value(with_column(base_log(), "pred_click", pa.array(
             base_log()["pred_click"].to_numpy().astype(np.float16))), "pred_click", 3, float("nan")))),
    Case("mapping YAML syntax error", "data", "unclosed [ in the mapping file",
         ["data", "validate", "{log}", "--mapping", "{tmp}/map.yaml"],
         ["column mapping", "map.yaml: not valid YAML"], lambda t: (t / "map.yaml").write_text("labels: [click\n")),
    Case("empty split (time split)", "data", "every request has the same ts", TRAIN + ["{tmp}/in.parquet"],
         ["in.parquet: the train split is empty", "needs more requests spread over time"],
         lambda t: write_table(t, with_column(base_log(), "ts", np.zeros(base_log().num_rows, np.int64)))),
    Case("empty split (mtl train)", "data", "every request has the same ts", MTL_TRAIN + ["{tmp}/in.parquet"],
         ["in.parquet", "cannot split", "too few distinct ts values"],
         lambda t: write_table(t, with_column(make_log(50, 1), "ts", np.zeros(500, np.int64)))),
    Case("negative label (mtl train)", "data", "label_click = -1 in one row", MTL_TRAIN + ["{tmp}/in.parquet"],
         ["label_click: value -1; labels are 0/1 or a non-negative finite amount", "blendrank data validate"],
         lambda t: write_table(t, set_value(make_log(150, 1), "label_click", 3, -1))),
    Case("inf label (mtl train)", "data", "label_play_time_ms = inf in one row", MTL_TRAIN + ["{tmp}/in.parquet"],
         ["label_play_time_ms: value inf", "Fix or drop these rows"],
         lambda t: write_table(t, set_value(make_log(150, 1), "label_play_time_ms", 3, float("inf")))),
    Case("string ts (mtl train)", "data", "ts stored as text", MTL_TRAIN + ["{tmp}/in.parquet"],
         ["in.parquet: column 'ts' is string; it must be an integer (ms since the epoch)"],
         lambda t: write_table(t, with_column(make_log(150, 1), "ts", [str(v) for v in make_log(150, 1)["ts"].to_pylist()]))),
    Case("NaN prediction", "data", "pred_click = NaN in one row", TRAIN + ["{tmp}/in.parquet"],
         ["pred_click", "nan_or_inf", "first rows 3", "NaN/inf is never a valid value"],
         lambda t: write_table(t, set_value(base_log(), "pred_click", 3, float("nan")))),
    Case("inf feature", "data", "f_item_x = inf in one row", TRAIN + ["{tmp}/in.parquet"],
         ["f_item_x", "nan_or_inf", "use null for missing feature values"],
         lambda t: write_table(t, set_value(base_log(), "f_item_x", 5, float("inf")))),
    Case("negative propensity", "data", "propensity -0.5 in one row", TRAIN + ["{tmp}/in.parquet"],
         ["propensity", "bad_propensity", "must be > 0"],
         lambda t: write_table(t, with_column(base_log(), "propensity", [0.5] * 2 + [-0.5] + [0.5] * 477))),
    Case("duplicate (request_id, item_id)", "data", "item 0 twice in request 0", TRAIN + ["{tmp}/in.parquet"],
         ["duplicate_item", "request_id=0, item_id=0", "deduplicate (request_id, item_id)"],
         lambda t: write_table(t, set_value(base_log(), "item_id", 1, 0))),
    Case("prediction out of [0, 1]", "data", "pred_order = 3.5 (a logit)", TRAIN + ["{tmp}/in.parquet"],
         ["pred_order", "pred_out_of_range", "write sigmoid outputs (not logits)"],
         lambda t: write_table(t, set_value(base_log(), "pred_order", 7, 3.5))),
    Case("no predictions to fuse", "data", "log without pred_* for `train`", TRAIN + ["{tmp}/in.parquet"],
         ["no pred_<objective> columns to fuse", "blendrank mtl predict"],
         lambda t: write_table(t, base_log().drop_columns(["pred_click", "pred_order"]))),
    Case("nonexistent --data", "paths", "--data path that does not exist", TRAIN + ["{tmp}/nope.parquet"],
         ["nope.parquet: no such file or directory"]),
    Case("--data directory without Parquet", "paths", "empty directory", MTL_TRAIN + ["{tmp}/emptydir"],
         ["emptydir", "no .parquet files"], lambda t: (t / "emptydir").mkdir()),
    # ---- config
    Case("negative lr", "config", "--set stage1.lr=-1", GRADE_CFG + ["stage1.lr=-1"],
         ["stage1.lr: Input should be greater than 0"]),
    Case("group size 1", "config", "--set stage2.num_generations=1", GRADE_CFG + ["stage2.num_generations=1"],
         ["stage2.num_generations: Input should be greater than or equal to 2"]),
    Case("epsilon > 1", "config", "--set stage2.epsilon=1.5", GRADE_CFG + ["stage2.epsilon=1.5"],
         ["stage2.epsilon: Input should be less than 1"]),
    Case("K=0 (reward top-k)", "config", "--set reward.k=0", GRADE_CFG + ["reward.k=0"],
         ["reward.k: Input should be greater than or equal to 1"]),
    Case("K=0 (bench NDCG@K)", "config", "bench --data LOG --set k=0",
         ["bench", "--data", "{log}", "--out", "{tmp}/b", "--set", "k=0"], ["k: Input should be greater than or equal to 1"]),
    Case("negative epochs (GRADE)", "config", "--set stage1.epochs=-2", GRADE_CFG + ["stage1.epochs=-2"],
         ["stage1.epochs: Input should be greater than or equal to 0"]),
    Case("negative epochs (MTL)", "config", "mtl train --set epochs=-1",
         MTL_TRAIN + ["{mtl_log}", "--set", "epochs=-1"], ["epochs: Input should be greater than or equal to 1"]),
    Case("unknown key", "config", "--set stage2.stepz=3", GRADE_CFG + ["stage2.stepz=3"],
         ["stage2.stepz: unknown key (check the spelling", "`blendrank config show GRADEConfig` lists every field"]),
    Case("unknown key in YAML", "config", "--config with `stage1: {epoch: 2}`",
         ["train", "--method", "grade", "--data", "{log}", "--out", "{tmp}/o", "--config", "{tmp}/c.yaml"],
         ["c.yaml: invalid configuration", "stage1.epoch: unknown key"],
         lambda t: (t / "c.yaml").write_text("stage1:\n  epoch: 2\n")),
    Case("wrong type", "config", "--set stage2.steps=abc", GRADE_CFG + ["stage2.steps=abc"],
         ["stage2.steps: Input should be a valid integer"]),
    Case("section given a scalar", "config", "--set stage2=3", GRADE_CFG + ["stage2=3"],
         ["stage2: Input should be a valid dictionary"]),
    Case("--set without =", "config", "--set stage1.epochs", GRADE_CFG + ["stage1.epochs"],
         ["--set 'stage1.epochs': expected KEY=VALUE"]),
    Case("config YAML syntax error", "config", "--config with an unclosed [",
         ["train", "--method", "grade", "--data", "{log}", "--out", "{tmp}/o", "--config", "{tmp}/c.yaml"],
         ["c.yaml: not valid YAML", "line 2"], lambda t: (t / "c.yaml").write_text("stage1:\n  epochs: [1\n")),
    Case("config YAML not a mapping", "config", "--config holding a list",
         ["train", "--method", "grade", "--data", "{log}", "--out", "{tmp}/o", "--config", "{tmp}/c.yaml"],
         ["c.yaml: top level must be a mapping of key: value, got list"], lambda t: (t / "c.yaml").write_text("- 1\n")),
    Case("config file missing", "config", "--config nope.yaml",
         ["train", "--method", "grade", "--data", "{log}", "--out", "{tmp}/o", "--config", "{tmp}/nope.yaml"],
         ["nope.yaml: config file not found"]),
    Case("config file not UTF-8", "config", "--config saved as Latin-1 (`# café` with byte 0xe9)",
         ["train", "--method", "grade", "--data", "{log}", "--out", "{tmp}/o", "--config", "{tmp}/c.yaml"],
         ["c.yaml: YAML file is not UTF-8 text (byte 5: invalid continuation byte); save it as UTF-8"],
         lambda t: (t / "c.yaml").write_bytes("# café\nstage1:\n  epochs: 1\n".encode("latin-1"))),
    Case("duplicate key in config", "config", "--config with `epochs:` twice under stage1",
         ["train", "--method", "grade", "--data", "{log}", "--out", "{tmp}/o", "--config", "{tmp}/c.yaml"],
         ["c.yaml: not valid YAML (key 'epochs' appears twice (lines 2 and 3); keep one)"],
         lambda t: (t / "c.yaml").write_text("stage1:\n  epochs: 1\n  epochs: 2\n")),
    Case("duplicate key in --set", "config", "--set 'stage1={epochs: 1, epochs: 2}'",
         GRADE_CFG + ["stage1={{epochs: 1, epochs: 2}}"],
         ["--set 'stage1={epochs: 1, epochs: 2}': value is not valid YAML (key 'epochs' appears twice"]),
    Case("unknown preset", "config", "bench --world marketplace --preset nope",
         ["bench", "--world", "marketplace", "--preset", "nope", "--out", "{tmp}/b"],
         ["unknown marketplace preset 'nope'; choose one of default, quick"]),
    Case("unknown method", "config", "train --method xgb", ["train", "--method", "xgb", "--data", "{log}", "--out", "{tmp}/o"],
         ["--method 'xgb': choose one of static_search, grade, ltr"]),
    Case("unknown variant", "config", "bench --data LOG --methods grade:nope",
         ["bench", "--data", "{log}", "--out", "{tmp}/b", "--methods", "production,grade:nope"],
         ["--methods: grade:nope not available in logs benches", "grade:no_kl"]),
    Case("unknown MTL architecture", "config", "mtl train --model xgb", MTL_TRAIN + ["{mtl_log}", "--model", "xgb"],
         ["--model 'xgb': expected one of mmoe, ple, shared_bottom"]),
    # ---- output paths
    Case("--out is a file (train)", "paths", "--out pointing at an existing file",
         ["train", "--method", "static_search", "--data", "{log}", "--out", "{tmp}/afile"],
         ["--out", "afile: exists and is not a directory"], lambda t: (t / "afile").write_text("keep me")),
    Case("--out is a file (mtl train)", "paths", "--out pointing at an existing file",
         ["mtl", "train", "--data", "{mtl_log}", "--out", "{tmp}/afile"],
         ["afile: exists and is not a directory"], lambda t: (t / "afile").write_text("keep me")),
    Case("--out is a file (bench)", "paths", "--out pointing at an existing file",
         ["bench", "--data", "{log}", "--out", "{tmp}/afile"],
         ["afile: exists and is not a directory"], lambda t: (t / "afile").write_text("keep me")),
    Case("--out is a file (export)", "paths", "--out pointing at an existing file",
         ["export", "--policy", "{policy}", "--out", "{tmp}/afile"],
         ["afile: exists and is not a directory"], lambda t: (t / "afile").write_text("keep me")),
    Case("--out is a file (world generate)", "paths", "--out pointing at an existing file",
         ["world", "generate", "--requests", "10", "--out", "{tmp}/afile"],
         ["afile: exists and is not a directory"], lambda t: (t / "afile").write_text("keep me")),
    Case("--out under a file", "paths", "--out afile/sub",
         ["mtl", "predict", "--model", "{mtl}", "--data", "{mtl_log}", "--out", "{tmp}/afile/sub"],
         ["afile is a file, so the directory cannot be created"], lambda t: (t / "afile").write_text("keep me")),
    Case("--out not writable", "paths", "--out under /sys (read-only)",
         ["train", "--method", "static_search", "--data", "{log}", "--out", "/sys/blendrank-out"],
         ["--out /sys/blendrank-out: /sys is not writable", "choose a writable directory"]),
    Case("report on a file", "paths", "report --bench pointing at a file", ["report", "--bench", "{tmp}/afile"],
         ["--bench", "afile: no such directory"], lambda t: (t / "afile").write_text("x")),
    # ---- model directories
    Case("export: policy missing policy.pt", "model dir", "policy directory without policy.pt", EXPORT,
         ["not a trained policy directory (missing policy.pt)", "blendrank train --method grade"],
         **corrupt("policy", "policy.pt", None)),
    Case("export: corrupt policy.pt", "model dir", "policy.pt overwritten with garbage", EXPORT,
         ["policy.pt: corrupt or truncated policy weights (not a PyTorch weights file)",
          "re-train with `blendrank train --method grade`"],
         **corrupt("policy", "policy.pt", b"garbage\x00")),
    Case("export: truncated policy.pt", "model dir", "policy.pt cut in half", EXPORT,
         ["policy.pt: corrupt or truncated policy weights"], **corrupt("policy", "policy.pt", b"half")),
    Case("export: corrupt config.json", "model dir", "config.json overwritten with garbage", EXPORT,
         ["config.json: corrupt or not a blendrank config.json", "Invalid JSON"],
         **corrupt("policy", "config.json", b"garbage")),
    Case("export: corrupt fusion.json", "model dir", "fusion.json = {\"objectives\": 3}", EXPORT,
         ["fusion.json: corrupt or not a blendrank fusion.json", "objectives"],
         **corrupt("policy", "fusion.json", b'{"objectives": 3}')),
    Case("export: corrupt feature_center.json", "model dir", "feature_center.json overwritten with garbage",
         EXPORT, ["feature_center.json: feature center file is not valid JSON", "corrupt"],
         **corrupt("policy", "feature_center.json", b"garbage")),
    Case("mtl predict: missing model.pt", "model dir", "MTL model directory without model.pt", PREDICT,
         ["not a saved MTL model (missing ['model.pt'])", "blendrank mtl train"], **corrupt("mtl", "model.pt", None)),
    Case("mtl predict: corrupt model.pt", "model dir", "model.pt overwritten with garbage", PREDICT,
         ["model.pt: cannot load weights, the file is corrupt or truncated (not a PyTorch weights file)", "re-train with `blendrank mtl train`"],
         **corrupt("mtl", "model.pt", b"garbage\x00")),
    Case("mtl predict: corrupt meta.json", "model dir", "meta.json overwritten with garbage", PREDICT,
         ["meta.json: not valid JSON", "restore it or write it again"], **corrupt("mtl", "meta.json", b"garbage")),
    Case("mtl predict: no such model", "model dir", "--model pointing nowhere",
         ["mtl", "predict", "--data", "{mtl_log}", "--out", "{tmp}/pred", "--model", "{tmp}/nope"],
         ["nope: no such model directory"]),
    Case("serve: missing model dir", "model dir", "serve --model nope", ["serve", "--model", "{tmp}/nope"],
         ["not an export directory (no manifest.json)", "blendrank export"]),
    Case("serve: corrupt manifest", "model dir", "manifest.json overwritten with garbage",
         ["serve", "--model", "{tmp}/model"], ["unreadable manifest.json"],
         **corrupt("export", "manifest.json", b"garbage")),
    Case("serve: foreign manifest", "model dir", "manifest.json = {\"format\": \"other\"}",
         ["serve", "--model", "{tmp}/model"], ["manifest.json: not a blendrank serving manifest"],
         **corrupt("export", "manifest.json", b'{"format": "other"}')),
    Case("unparseable date-time ts", "data", "an ISO date-time column with the text 'yesterday'",
         ["data", "validate", "{tmp}/log.csv", "--mapping", "{tmp}/map.yaml"],
         ["log.csv: column 'time' (ts): cannot parse 'yesterday' (row 3)", "set ts_format in the mapping"],
         lambda t: csv_log(t, times=["2024-03-01 08:00:00"] * 3 + ["yesterday"] + ["2024-03-01 09:00:00"] * 4)),
    Case("date-time not matching ts_format", "data", "day-first date-times, ts_format year-first",
         ["mtl", "train", "--out", "{tmp}/out", "--data", "{tmp}/log.csv", "--mapping", "{tmp}/map.yaml"],
         ["column 'time' (ts): cannot parse '01/03/2024 08:00' (row 0) with ts_format '%Y-%m-%d %H:%M'"],
         lambda t: csv_log(t, times=["01/03/2024 08:00"] * 8, extra="ts_format: '%Y-%m-%d %H:%M'\n")),
    Case("unknown ts_timezone", "data", "ts_timezone: Europe/Pariss",
         ["bench", "--data", "{tmp}/log.csv", "--mapping", "{tmp}/map.yaml", "--out", "{tmp}/out"],
         ["map.yaml: invalid column mapping", "key ts_timezone", "unknown time zone 'Europe/Pariss'"],
         lambda t: csv_log(t, extra="ts_timezone: Europe/Pariss\n")),
    Case("bad test_where", "config", "--set test_where='random_bool = 1' (one =)",
         ["bench", "--data", "{tmp}/log.csv", "--mapping", "{tmp}/map.yaml", "--out", "{tmp}/out",
          "--set", "test_where=random_bool = 1"],
         ["test_where: filter 'random_bool = 1': expected COLUMN OP VALUE"], lambda t: csv_log(t)),
    Case("test_where unknown column", "data", "the mapping's test_where names an absent column",
         ["bench", "--data", "{tmp}/log.csv", "--mapping", "{tmp}/map.yaml", "--out", "{tmp}/out"],
         ["filter 'randomised == 1': no column 'randomised'", "available columns:"],
         lambda t: csv_log(t, extra="test_where: randomised == 1\n")),
    Case("test_where splits requests", "data", "test_where on an item-level column",
         ["bench", "--data", "{tmp}/log.csv", "--mapping", "{tmp}/map.yaml", "--out", "{tmp}/out"],
         ["test_where 'item == \"i1\"' matches only some rows of 4 request(s)", "request-level column"],
         lambda t: csv_log(t, extra="test_where: item == \"i1\"\n")),
    Case("serve: unknown backend", "model dir", "serve --backend tensorrt",
         ["serve", "--model", "{export}", "--backend", "tensorrt"], ["backend 'tensorrt': choose one of onnx, torch"]),
]


def _prepare(case: Case, tmp: Path, models: dict[str, Path]) -> list[str]:
    if case.setup is not None:
        case.setup(tmp)
    if case.corrupt is not None:
        model, name, content = case.corrupt
        shutil.copytree(models[model], tmp / "model")
        target = tmp / "model" / name
        if content is None:
            target.unlink()
        elif content == b"half":
            target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        else:
            target.write_bytes(content)
    fmt = {"tmp": str(tmp), **{k: str(v) for k, v in models.items()}}
    return [a.format(**fmt) for a in case.args]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_bad_input_is_a_clear_error(case: Case, tmp_path: Path, models: dict[str, Path]) -> None:
    if case.id == "--out not writable" and Path("/sys/blendrank-out").exists():
        pytest.skip("/sys is writable here")
    args = _prepare(case, tmp_path, models)
    before = tree_digest(tmp_path)
    result = invoke(*args)
    assert_user_error(result, *case.needles)
    # A failing command writes nothing: no file of the test directory was changed or removed.
    after = tree_digest(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cases_cover_every_input_area() -> None:
    assert len(CASES) >= 35
    assert {c.area for c in CASES} == {"data", "config", "paths", "model dir"}


# ------------------------------------------------------------------------- not writable (non-root)
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_out_directory(tmp_path: Path, models: dict[str, Path]) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        result = invoke("train", "--method", "static_search", "--data", models["log"], "--out", ro / "x")
        assert_user_error(result, f"{ro} is not writable", "Permission denied")
    finally:
        ro.chmod(0o700)


def test_oserror_while_writing_is_a_clear_error(tmp_path: Path, models: dict[str, Path], monkeypatch) -> None:
    """A write that fails after the up-front checks (disk full, a race) is still one clear line."""
    import blendrank.bench.fit as train_fit

    def disk_full(path: Path, data: Any) -> None:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(train_fit, "write_json", disk_full)
    result = invoke("train", "--method", "static_search", "--data", models["log"], "--out", tmp_path / "o",
                    "--set", "budget=5")
    assert_user_error(result, "static_weights.json: No space left on device", "is writable")


# ------------------------------------------------------------------------- existing outputs
def test_failing_retrain_keeps_the_existing_policy(tmp_path: Path, models: dict[str, Path]) -> None:
    out = tmp_path / "policy"
    shutil.copytree(models["policy"], out)
    before = tree_digest(out)
    bad = tmp_path / "bad.parquet"
    pq.write_table(base_log().drop_columns(["item_id"]), bad)
    for args in (["--data", bad], ["--data", models["log"], "--set", "stage2.epsilon=2"],
                 ["--data", tmp_path / "missing.parquet"]):
        assert_user_error(invoke("train", "--method", "grade", "--out", out, *args))
        assert tree_digest(out) == before


def test_replacing_outputs_is_announced(tmp_path: Path, models: dict[str, Path]) -> None:
    """A successful re-run into the same --out replaces its outputs, but never silently."""
    args = ["train", "--method", "static_search", "--data", models["log"], "--out", tmp_path / "s", "--set", "budget=3"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert "note:" not in first.output
    second = invoke(*args)
    assert second.exit_code == 0, second.output
    assert f"note: {tmp_path / 's'} already holds static_weights.json; replaced when this run succeeds" in flat(
        second.output)


def test_failing_export_keeps_the_existing_export(tmp_path: Path, models: dict[str, Path]) -> None:
    out = tmp_path / "export"
    shutil.copytree(models["export"], out)
    before = tree_digest(out)
    broken = tmp_path / "policy"
    shutil.copytree(models["policy"], broken)
    (broken / "policy.pt").write_bytes(b"garbage")
    assert_user_error(invoke("export", "--policy", broken, "--out", out), "corrupt or truncated policy weights")
    assert_user_error(invoke("export", "--policy", models["policy"], "--out", out, "--fallback-weights", "1"),
                      "--fallback-weights", "one per fusion input")
    assert tree_digest(out) == before


def test_world_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "w"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_user_error(invoke("world", "generate", "--requests", "10", "--out", out),
                      "directory is not empty", "nothing was overwritten")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_demo_refuses_a_foreign_directory(tmp_path: Path) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_user_error(invoke("demo", "--out", out), "exists and is not a previous demo directory")
    assert (out / "notes.txt").read_text() == "mine"


def test_mtl_predict_checks_every_shard_before_writing(tmp_path: Path, models: dict[str, Path]) -> None:
    """A bad second shard must not leave the output half new, half old."""
    shards = tmp_path / "in"
    shards.mkdir()
    log = make_log(40, seed=3)
    pq.write_table(log.slice(0, 200), shards / "part-0.parquet")
    pq.write_table(log.slice(200), shards / "part-1.parquet")
    out = tmp_path / "pred"
    assert invoke("mtl", "predict", "--model", models["mtl"], "--data", shards, "--out", out).exit_code == 0
    before = tree_digest(out)
    data = (shards / "part-1.parquet").read_bytes()
    (shards / "part-1.parquet").write_bytes(data[: len(data) // 2])
    pq.write_table(log.slice(0, 200).drop_columns(["f_num"]).append_column("f_num", pa.array([0.0] * 200)),
                   shards / "part-0.parquet")  # changed input: would change part-0's predictions
    assert_user_error(invoke("mtl", "predict", "--model", models["mtl"], "--data", shards, "--out", out),
                      "part-1.parquet", NOT_PARQUET)
    assert tree_digest(out) == before
    assert_user_error(invoke("mtl", "predict", "--model", models["mtl"], "--data", shards / "part-0.parquet",
                             "--out", shards / "part-0.parquet"), "would overwrite its input")


def test_write_json_is_atomic(tmp_path: Path, monkeypatch) -> None:
    """A failure while serialising or while swapping the file in leaves the previous file intact
    and no temp file behind."""
    import blendrank.jsonio as jsonio

    path = tmp_path / "bench.json"
    jsonio.write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        jsonio.write_json(path, {"a": object()})

    def fail_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(jsonio.os, "replace", fail_replace)
    with pytest.raises(OSError, match="No space left"):
        jsonio.write_json(path, {"a": 2})
    monkeypatch.undo()
    assert jsonio.read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]


# ------------------------------------------------------------------------- degenerate but valid data
def test_constant_objective_trains_and_reports_undefined_auc(tmp_path: Path) -> None:
    """All-zero labels for one objective: training works; AUC is reported as undefined, not a
    crash and not a made-up 0.5."""
    log = make_log(150, seed=1)
    log = with_column(log, "label_order", pa.array(np.zeros(log.num_rows, np.int8)))
    pq.write_table(log, tmp_path / "log.parquet")
    r = invoke("mtl", "train", "--data", tmp_path / "log.parquet", "--out", tmp_path / "m", "--quiet",
               "--set", "epochs=1", "--set", "expert_dims=[8]", "--set", "tower_dims=[4]")
    assert r.exit_code == 0, r.output
    assert "AUC/GAUC of order undefined (every test label is 0)" in flat(r.output)
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert math.isnan(metrics["test"]["order"]["auc"]) and metrics["test"]["order"]["rate"] == 0.0
    assert 0.0 <= metrics["test"]["click"]["auc"] <= 1.0

    grade_log = with_column(base_log(), "label_order", pa.array(np.zeros(480, np.int8)))
    pq.write_table(grade_log, tmp_path / "g.parquet")
    r = invoke("train", "--method", "grade", "--data", tmp_path / "g.parquet", "--out", tmp_path / "g",
               "--set", "stage1.epochs=1", "--set", "stage2.steps=2", "--set", "stage2.batch_size=32",
               "--set", "log_every=1")
    assert r.exit_code == 0, r.output
    history = [json.loads(line) for line in (tmp_path / "g" / "history.jsonl").read_text().splitlines()]
    assert all(math.isfinite(row["reward"]) for row in history if "reward" in row)


def test_all_zero_predictions_bench_is_finite(tmp_path: Path) -> None:
    log = base_log()
    for col in ("pred_click", "pred_order"):
        log = with_column(log, col, pa.array(np.zeros(log.num_rows, np.float32)))
    pq.write_table(log, tmp_path / "log.parquet")
    r = invoke("bench", "--data", tmp_path / "log.parquet", "--out", tmp_path / "b",
               "--set", "n_boot=100", "--set", "static_search.budget=5")
    assert r.exit_code == 0, r.output
    bench = json.loads((tmp_path / "b" / "bench.json").read_text())
    values = [bench["arms"][m]["composite_ndcg@10"] for m in ("production", "static_search")]
    assert all(math.isfinite(v) for v in values) and values[0] == values[1]  # no signal: any weights tie


def test_non_contiguous_positions_are_valid(tmp_path: Path) -> None:
    """Positions with gaps (1, 3, 5, …: filtered logs) are valid; so are huge positions."""
    log = with_column(base_log(), "position", pa.array(np.tile([1, 3, 5, 40], 120), pa.int32()))
    pq.write_table(log, tmp_path / "log.parquet")
    assert invoke("data", "validate", tmp_path / "log.parquet").exit_code == 0
    mlog = make_log(150, seed=1)
    pos = [None if p is None else p * 1000 for p in mlog["position"].to_pylist()]
    pq.write_table(with_column(mlog, "position", pa.array(pos, pa.int32())), tmp_path / "m.parquet")
    r = invoke("mtl", "train", "--data", tmp_path / "m.parquet", "--out", tmp_path / "m", "--quiet",
               "--set", "epochs=1", "--set", "expert_dims=[8]", "--set", "tower_dims=[4]")
    assert r.exit_code == 0, r.output


# ------------------------------------------------------------------------- service
TOKEN = "t0ken"


def rank_body(n: int = 4) -> dict[str, Any]:
    return {"user": {"f_user_type": 1}, "k": 2,
            "candidates": [{"item_id": i, "pred_click": 0.1 + 0.1 * i, "pred_order": 0.3} for i in range(n)]}


SERVICE_CASES: list[tuple[str, str, Any, int, str]] = [
    # (id, what, payload (bytes = raw body), status, message excerpt)
    ("oversize payload", "400 kB body, limit 100 kB", b"[" + b"0," * 200_000 + b"0]", 413, "larger than 100000 bytes"),
    ("too many candidates", "21 candidates, limit 20", rank_body(21), 422, "more than the limit 20"),
    ("feature given as a list", "user.f_user_type = [1, 2, 3]", {**rank_body(), "user": {"f_user_type": [1, 2, 3]}},
     422, "user.f_user_type must be a number, string, boolean or null, got list"),
    ("missing feature", "user = {}", {**rank_body(), "user": {}}, 422,
     "missing feature(s) ['f_user_type'] (send null for a missing value)"),
    ("unknown feature", "user.f_nope = 1", {**rank_body(), "user": {"f_user_type": 1, "f_nope": 1}}, 422,
     "unknown feature(s) ['f_nope'] (the model reads ['f_user_type'])"),
    ("candidate missing a prediction", "candidate without pred_order",
     {**rank_body(), "candidates": [{"item_id": 1, "pred_click": 0.2}]}, 422,
     "candidates[0]: missing field(s) ['pred_order']"),
    ("wrong JSON type (array body)", "[1, 2, 3]", [1, 2, 3], 422, "the request must be a JSON object with fields"),
    ("wrong JSON type (candidates)", "candidates = \"abc\"", {**rank_body(), "candidates": "abc"}, 422,
     "candidates must be an object of columns"),
    ("missing field", "no candidates field", {"user": {"f_user_type": 1}}, 422,
     "or a list of candidate objects, got NoneType"),
    ("unknown top-level field", "extra field `userz`", {**rank_body(), "userz": {}}, 422,
     "unknown field(s) ['userz']"),
    ("k = 0", "k = 0", {**rank_body(), "k": 0}, 422, "k must be an integer in [1, 20], got 0"),
    ("NaN prediction", "pred_click: NaN (raw JSON)",
     b'{"user": {"f_user_type": 1}, "candidates": [{"item_id": 1, "pred_click": NaN, "pred_order": 0.1}]}',
     422, "candidates[0].pred_click must be a probability in [0, 1], got nan"),
    ("prediction out of range", "pred_click = 1.5",
     {**rank_body(), "candidates": [{"item_id": 1, "pred_click": 1.5, "pred_order": 0.1}]}, 422,
     "pred_click must be a probability in [0, 1], got 1.5"),
    ("not JSON", "{not json", b"{not json", 422, "request body is not valid JSON"),
]


def make_client(export: Path, **kwargs: Any) -> Any:
    pytest.importorskip("fastapi")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from blendrank.serve.app import create_app

    return TestClient(create_app(export, **kwargs))


@pytest.fixture(scope="module")
def client(models: dict[str, Path]) -> Any:
    return make_client(models["export"], reload_token=TOKEN, max_body_bytes=100_000, max_candidates=20)


@pytest.mark.serve
@pytest.mark.parametrize(("payload", "status", "message"), [c[2:] for c in SERVICE_CASES],
                         ids=[c[0] for c in SERVICE_CASES])
@pytest.mark.parametrize("endpoint", ["/v1/rank", "/v1/weights"])
def test_service_bad_input_is_a_4xx_with_a_message(client: Any, endpoint: str, payload: Any, status: int,
                                                   message: str) -> None:
    if isinstance(payload, bytes):
        r = client.post(endpoint, content=payload, headers={"content-type": "application/json"})
    else:
        r = client.post(endpoint, json=payload)
    assert r.status_code == status, r.text
    assert message in r.text
    assert client.post(endpoint, json=rank_body()).status_code == 200  # still serving


@pytest.mark.serve
def test_service_wrong_route_method_and_reload_body(client: Any) -> None:
    assert client.post("/v2/rank", json=rank_body()).status_code == 404
    assert client.get("/v1/rank").status_code == 405
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post("/admin/reload", json={"path": 5}, headers=auth)
    assert r.status_code == 422 and "path" in r.text
    assert client.post("/admin/reload", json={"path": "x"}, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.post("/admin/reload", json={"path": "x"}, headers={"Authorization": "Basic abc"}).status_code == 401
    assert "invalid reload token" in client.post("/admin/reload", json={"path": "x"},
                                                 headers={"Authorization": "Bearer wrong"}).text


@pytest.mark.serve
def test_reload_to_corrupt_model_keeps_serving_the_old_one(client: Any, models: dict[str, Path],
                                                           tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = client.post("/v1/rank", json=rank_body()).json()
    for name, content in (("model.onnx", b"garbage"), ("manifest.json", b"{"), ("feature_center.json", b"[]")):
        bad = models["export"].parent / f"corrupt-{name}"  # inside the model root (the export's parent)
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(models["export"], bad)
        (bad / name).write_bytes(content)
        r = client.post("/admin/reload", json={"path": bad.name}, headers=auth)
        assert r.status_code == 422 and "still serving the previous model" in r.text, r.text
        assert str(models["export"].parent) not in r.text  # no server path in the answer
        assert client.get("/healthz", headers=auth).json()["path"] == str(models["export"])
        assert client.post("/v1/rank", json=rank_body()).json() == before


@pytest.mark.serve
def test_serving_a_corrupt_model_degrades_to_the_fallback(models: dict[str, Path], tmp_path: Path) -> None:
    """`blendrank serve` on an export whose model.onnx is corrupt starts, says so, and serves the
    static fallback weights (flagged) rather than failing requests."""
    bad = tmp_path / "bad"
    shutil.copytree(models["export"], bad)
    (bad / "model.onnx").write_bytes(b"garbage")
    c = make_client(bad)
    health = c.get("/healthz").json()
    assert health["status"] == "degraded" and health["model_ok"] is False
    r = c.post("/v1/rank", json=rank_body())
    assert r.status_code == 200 and r.json()["fallback"] is True


# ------------------------------------------------------------------------- the real executable
def test_real_cli_process_prints_no_traceback(tmp_path: Path) -> None:
    """Through the installed entry point (not CliRunner): exit 1, one `error:` line on stderr."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    (tmp_path / "in.parquet").write_bytes(b"PAR1 not really")
    proc = subprocess.run([sys.executable, "-m", "blendrank.cli.main", "train", "--method", "grade",
                           "--data", str(tmp_path / "in.parquet"), "--out", str(tmp_path / "o")],
                          check=False, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert flat(proc.stderr).startswith(f"error: {tmp_path / 'in.parquet'}: {NOT_PARQUET}")


def test_float16_columns_are_read_as_float32(tmp_path: Path) -> None:
    """float16 predictions, labels and prices are valid (read as float32, exactly); before, Arrow
    had no kernel for them and validation died with a traceback."""
    from blendrank.data.io import iter_record_batches, read_log

    t = base_log()
    for name in ("pred_click", "label_click"):
        t = with_column(t, name, pa.array(t[name].to_numpy().astype(np.float16)))
    t = with_column(t, "price", pa.array(np.linspace(0, 99, t.num_rows).astype(np.float16)))
    write_table(tmp_path, t)
    result = invoke("data", "validate", tmp_path / "in.parquet")
    assert result.exit_code == 0, result.output
    assert "valid" in result.output
    read = read_log(tmp_path / "in.parquet")
    streamed = pa.Table.from_batches(list(iter_record_batches(tmp_path / "in.parquet")))
    for table in (read, streamed):
        for name in ("pred_click", "label_click", "price"):
            assert table.schema.field(name).type == pa.float32()
            assert table[name].to_pylist() == t[name].cast(pa.float32()).to_pylist()


# ------------------------------------------------------- streamed training, export, usage errors
def test_streamed_train_refuses_a_request_id_reused_far_apart(tmp_path: Path) -> None:
    """`train` on a split directory streams train.parquet; a request id reused 23,000 rows later
    (beyond one read of 16,384 rows) is refused before training, with the violations `data
    validate` reports on the whole file."""
    t = two_type_log(3000)
    rid = t["request_id"].to_numpy().copy()
    rid[rid == 2900] = 10
    t = with_column(t, "request_id", pa.array(rid, t["request_id"].type))
    for name in ("train", "valid", "test"):
        pq.write_table(t if name == "train" else two_type_log(50), tmp_path / f"{name}.parquet")
    validate = invoke("data", "validate", tmp_path / "train.parquet")
    assert validate.exit_code == 1
    for kind in ("multi_user_request", "duplicate_item"):
        assert kind in validate.output
    result = invoke("train", "--method", "grade", "--data", tmp_path, "--out", tmp_path / "out",
                    "--set", "stage1.epochs=1", "--set", "stage2.steps=1")
    assert_user_error(result, "train.parquet: 2 data contract violation(s)",
                      "duplicate_item (8; first rows 23200",
                      "multi_user_request (1; first rows 80)",
                      "request_id=10 in rows 80 and 23200")
    assert not (tmp_path / "out" / "policy.pt").exists()


def test_disk_full_export_names_the_output_and_leaves_nothing(
        tmp_path: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC while copying the policy's files (shutil names the source file first): the message
    names --out, no partial export directory is left, and an existing export stays as it was."""
    import blendrank.serve.export as serve_export

    real_copy = shutil.copyfile

    def full_disk(src: Any, dst: Any, *a: Any, **k: Any) -> Any:
        if Path(src).name == "policy.pt":  # half the file written, then the disk is full
            Path(dst).write_bytes(Path(src).read_bytes()[:100])
            raise OSError(errno.ENOSPC, "No space left on device", str(src), None, str(dst))
        return real_copy(src, dst, *a, **k)

    existing = tmp_path / "existing"
    shutil.copytree(models["export"], existing)
    before = tree_digest(existing)
    monkeypatch.setattr(serve_export.shutil, "copyfile", full_disk)  # shutil's own: patched for all
    fresh = tmp_path / "fresh"
    result = invoke("export", "--policy", models["policy"], "--out", fresh)
    assert_user_error(result, f"--out {fresh}: no space left on the device", "choose another --out")
    assert "policy.pt" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]  # no partial or staging dir
    result = invoke("export", "--policy", models["policy"], "--out", existing)
    assert_user_error(result, "no space left")
    assert tree_digest(existing) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]
    monkeypatch.undo()
    # a re-export into the existing directory replaces its files (manifest.json last)
    ok = invoke("export", "--policy", models["policy"], "--out", existing)
    assert ok.exit_code == 0, ok.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]
    assert json.loads((existing / "manifest.json").read_text())["model_sha256"] == hashlib.sha256(
        (existing / "model.onnx").read_bytes()).hexdigest()


@pytest.mark.parametrize("args, needle", [
    (["train", "--method", "grade", "--out", "o"], "Missing option '--data'"),
    (["train", "--nope"], "No such option: --nope"),
    (["train", "--method", "grade", "--data", "d", "--out", "o", "--checkpoint-every", "0"],
     "Invalid value for '--checkpoint-every'"),
    (["export", "--policy"], "Option '--policy' requires an argument"),
    (["nope"], "No such command 'nope'"),
])
def test_usage_errors_exit_2_without_a_traceback(args: list[str], needle: str) -> None:
    """A command line the parser cannot take (click's usage errors) exits 2, click's convention
    for usage errors, with one boxed error; a bad input it can take exits 1."""
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and needle in flat(result.output), result.output


def test_a_full_disk_during_a_copy_names_the_destination(capsys: pytest.CaptureFixture[str]) -> None:
    """shutil's copy names the source first; where the disk filled is the destination."""
    import typer

    from blendrank.cli.common import user_errors

    @user_errors
    def copying() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/in/policy.pt", None, "/out/policy.pt")

    with pytest.raises(typer.Exit) as exc:
        copying()
    assert exc.value.exit_code == 1
    err = flat(capsys.readouterr().err)
    assert "error: /out/policy.pt: No space left on device" in err and "/in/" not in err


def test_repeated_column_names_are_named_not_called_truncated(tmp_path: Path) -> None:
    t = pa.Table.from_arrays([pa.array([1, 1]), pa.array([1, 2]), pa.array([0, 1])],
                             names=["request_id", "request_id", "item_id"])
    pq.write_table(t, tmp_path / "dup.parquet")
    result = invoke("data", "validate", tmp_path / "dup.parquet")
    assert_user_error(result, "column name(s) ['request_id'] appear more than once")
    assert "truncated" not in result.output
