"""Multi-task model (blendrank.mtl: models, data, train, CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import typer
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from blendrank.cli.mtl import app as mtl_app
from blendrank.data.io import read_raw
from blendrank.data.stream import LogSource
from blendrank.errors import ConfigError, DataError
from blendrank.mtl.config import MTLConfig
from blendrank.mtl.data import Encoder, resolve_data, shuffled_minibatches
from blendrank.mtl.evaluate import evaluate_mtl
from blendrank.mtl.fit import fit_mtl
from blendrank.mtl.models import MTLNetwork, NetworkSpec, build_layout, task_losses
from blendrank.mtl.predictor import MTLPredictor
from blendrank.mtl.train import predict_parquet

N_CATS = 12
FAST = {"epochs": 3, "batch_size": 256, "lr": 0.01, "expert_dims": [16], "tower_dims": [8]}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def make_log(n_requests: int, seed: int, *, per_request: int = 10, shown: int = 8) -> pa.Table:
    """click depends on f_cat (and position), conversion on f_num; rows past ``shown`` are
    unshown candidates (null position, zero labels)."""
    rng = np.random.default_rng(seed)
    n = n_requests * per_request
    effects = np.random.default_rng(99).normal(0.0, 1.5, N_CATS)
    cat = rng.integers(0, N_CATS, n)
    num = rng.normal(size=n)
    slot = np.tile(np.arange(1, per_request + 1), n_requests)
    is_shown = slot <= shown
    click_p = _sigmoid(effects[cat] - 0.5 - 0.15 * (slot - 1))
    click = (rng.random(n) < click_p) & is_shown
    order = click & (rng.random(n) < _sigmoid(2.0 * num - 1.0))
    play = np.where(click, np.exp(rng.normal(8.0 + 0.5 * num, 0.3)), 0.0)
    req = np.repeat(np.arange(n_requests), per_request)
    return pa.table(
        {
            "request_id": pa.array(req, pa.int64()),
            "user_id": pa.array(req % 50, pa.int64()),
            "ts": pa.array(1_700_000_000_000 + req * 1000, pa.int64()),
            "item_id": pa.array(rng.integers(0, 10_000, n), pa.int64()),
            "position": pa.array(np.where(is_shown, slot, 0), pa.int32(), mask=~is_shown),
            "label_click": pa.array(click.astype(np.int8)),
            "label_order": pa.array(order.astype(np.int8)),
            "label_play_time_ms": pa.array(play),
            "f_cat": pa.array([f"c{v}" for v in cat]),
            "f_num": pa.array(num),
            "f_user_seg": pa.array(req % 3, pa.int64()),
        }
    )


@pytest.fixture(scope="module")
def train_log() -> pa.Table:
    return make_log(600, seed=1)


@pytest.fixture(scope="module")
def test_log() -> pa.Table:
    return make_log(200, seed=2)


@pytest.fixture(scope="module")
def predictor(train_log: pa.Table, test_log: pa.Table) -> MTLPredictor:
    return fit_mtl(train_log, test_log, MTLConfig(**FAST), progress=False)


def _spec(model: str = "mmoe", **kw: object) -> NetworkSpec:
    layout = build_layout(["click", "order", "play"], ["play"], {"order": "click"})
    base: dict[str, object] = {
        "model": model,
        "cardinalities": (5, 7),
        "n_numeric": 3,
        "layout": layout,
        "expert_dims": (8,),
        "tower_dims": (4,),
        "position_tasks": (0,),
        "max_position": 5,
    }
    base.update(kw)
    return NetworkSpec(**base)  # type: ignore[arg-type]


def _inputs(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack(
        [torch.randint(0, 5, (n,), generator=g), torch.randint(0, 7, (n,), generator=g)], 1
    )
    return cat, torch.randn(n, 3, generator=g)


# ------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("model", ["mmoe", "ple", "shared_bottom"])
def test_shapes_position_tower_and_masking(model: str) -> None:
    torch.manual_seed(0)
    net = MTLNetwork(_spec(model, ple_levels=2, ple_task_experts=2))
    cat, num = _inputs()
    raw = net(cat, num)
    assert raw.shape == (32, 3)
    if model == "mmoe":
        gates = net.backbone.gates(net.embed(cat, num)[0])
        assert gates.shape == (32, 3, 4)
        assert torch.allclose(gates.sum(-1), torch.ones(32, 3))
    # position tower: only the click logit moves, position 1 and unknown (0) add nothing
    with torch.no_grad():
        assert net.position_bias is not None
        net.position_bias.copy_(torch.arange(6.0).unsqueeze(1))
    pos = torch.tensor([0, 1, 2, 5, 9] * 6 + [1, 1])
    shifted = net(cat, num, pos)
    expected = torch.tensor([0.0, 0.0, 2.0, 5.0, 5.0] * 6 + [0.0, 0.0])
    assert torch.allclose(shifted[:, 0] - raw[:, 0], expected, atol=1e-6)
    assert torch.equal(shifted[:, 1:], raw[:, 1:])
    # masked labels do not enter the loss
    labels = torch.randint(0, 2, (32, 3)).float()
    mask = torch.rand(32, 3) > 0.3
    sums, counts = task_losses(raw, labels, mask, net.layout)
    flipped = torch.where(mask, labels, 1.0 - labels)
    sums2, counts2 = task_losses(raw, flipped, mask, net.layout)
    assert torch.allclose(sums, sums2) and torch.equal(counts, counts2)
    assert torch.equal(counts, mask.sum(0).float())


def test_esmm_loss_is_the_log_loss_of_the_product() -> None:
    torch.manual_seed(0)
    net = MTLNetwork(_spec())
    cat, num = _inputs(64)
    raw = net(cat, num)
    labels = torch.randint(0, 2, (64, 3)).float()
    mask = torch.ones(64, 3, dtype=torch.bool)
    sums, _ = task_losses(raw, labels, mask, net.layout)
    p = torch.sigmoid(raw[:, 0]) * torch.sigmoid(raw[:, 1])
    ref = torch.nn.functional.binary_cross_entropy(p, labels[:, 1], reduction="sum")
    assert torch.allclose(sums[1], ref, rtol=1e-4)
    out = net.outputs(raw)
    assert torch.equal(out[:, 1], torch.sigmoid(raw[:, 0]) * torch.sigmoid(raw[:, 1]))
    assert torch.equal(out[:, 2], raw[:, 2])  # regression stays raw


def test_layout_rejects_esmm_without_parent() -> None:
    with pytest.raises(ValueError, match="parent 'click' is not modelled"):
        build_layout(["order"], [], {"order": "click"})
    with pytest.raises(ValueError):
        MTLConfig(esmm={"order": "click", "click": "view"})  # chains


@pytest.mark.parametrize("model", ["mmoe", "ple", "shared_bottom"])
def test_every_parameter_changes_after_a_step(model: str) -> None:
    torch.manual_seed(0)
    net = MTLNetwork(_spec(model))
    with torch.no_grad():  # zero-initialised parts need a nudge to receive gradients
        for name, p in net.named_parameters():
            if name.startswith(("wide", "position")):
                p.add_(0.01 * torch.randn_like(p))
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    cat, num = _inputs(64)
    pos = torch.randint(1, 6, (64,))
    raw, _, penalty = net.forward_full(cat, num, pos)
    labels = torch.randint(0, 2, (64, 3)).float()
    sums, counts = task_losses(raw, labels, torch.ones(64, 3, dtype=torch.bool), net.layout)
    loss = (sums / counts).sum() + 1e-3 * penalty
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss.backward()
    opt.step()
    unchanged = [k for k, v in net.named_parameters() if torch.equal(v, before[k])]
    assert not unchanged


# -------------------------------------------------------------------------------- data


def test_shuffle_buffer_yields_every_row_once(train_log: pa.Table, predictor: MTLPredictor) -> None:
    enc = Encoder(predictor.center, predictor.layout, predictor.target_moments, use_position=True)
    src = LogSource.of("train", train_log)
    rows = src.batches(enc.columns() + ["request_id"], batch_size=700)
    seen = []
    sizes = []
    for b in shuffled_minibatches(
        rows, enc, batch_size=128, buffer_rows=1000, generator=torch.Generator().manual_seed(0)
    ):
        sizes.append(len(b))
        seen.append(b)
    n_shown = train_log.num_rows - train_log["position"].null_count
    assert sum(sizes) == n_shown
    assert all(s == 128 for s in sizes[:-1]) and 0 < sizes[-1] <= 128
    assert all(b.position is not None and bool((b.position >= 1).all()) for b in seen)


def test_time_split_of_a_dataset(tmp_path: Path) -> None:
    log = make_log(100, seed=3)
    (tmp_path / "logs").mkdir()
    pq.write_table(log.slice(0, 500), tmp_path / "logs" / "part-0.parquet")
    pq.write_table(log.slice(500), tmp_path / "logs" / "part-1.parquet")
    splits = resolve_data(tmp_path / "logs")
    assert splits.how == "time" and splits.cutoffs is not None
    reqs = {
        name: {r for b in src.batches(["request_id"]) for r in b.column(0).to_pylist()}
        for name, src in (("train", splits.train), ("valid", splits.valid), ("test", splits.test))
    }
    assert [len(r) for r in reqs.values()] == [70, 15, 15]
    assert max(reqs["train"]) < min(reqs["valid"]) and max(reqs["valid"]) < min(reqs["test"])
    (tmp_path / "partial").mkdir()
    pq.write_table(log, tmp_path / "partial" / "train.parquet")
    with pytest.raises(DataError, match="not valid.parquet, test.parquet"):
        resolve_data(tmp_path / "partial")


# ---------------------------------------------------------------------------- training


def test_learns_beats_base_rate_and_esmm_identity(
    predictor: MTLPredictor, test_log: pa.Table
) -> None:
    assert predictor.objectives == ("click", "order")
    assert predictor.regression == ("play_time_ms",)
    assert predictor.esmm == {"order": "click"}
    shown = test_log.filter(test_log["position"].is_valid())
    pred = predictor.predict(shown)
    cvr = predictor.predict_cvr(shown)
    assert np.array_equal(pred["order"], pred["click"] * cvr["order"])  # exactly
    assert np.all((pred["order"] <= pred["click"]) & (pred["order"] >= 0))
    y = shown["label_click"].to_numpy()
    assert roc_auc_score(y, pred["click"]) > 0.7
    # the ESMM head learned the conversion signal (f_num) through clicks only
    clicked = y == 1
    assert roc_auc_score(shown["label_order"].to_numpy()[clicked], cvr["order"][clicked]) > 0.7
    est = predictor.estimate(shown)["play_time_ms"]
    assert est.dtype == np.float32 and np.all(est >= 0)
    metrics = evaluate_mtl(predictor, test_log)
    assert metrics["click"]["gauc"] > 0.6 and metrics["click"]["gauc_requests"] > 100
    assert metrics["play_time_ms"]["kind"] == "regression"
    assert len(predictor.history) >= 1 and "valid_loss" in predictor.history[0]


@pytest.mark.parametrize("model", ["mmoe", "ple", "shared_bottom"])
def test_each_model_beats_the_base_rate(
    model: str, train_log: pa.Table, test_log: pa.Table
) -> None:
    cfg = MTLConfig(model=model, objectives=["click"], **FAST)
    p = fit_mtl(train_log, None, cfg, progress=False)
    shown = test_log.filter(test_log["position"].is_valid())
    y = shown["label_click"].to_numpy().astype(float)
    prob = np.clip(p.predict(shown, position=True)["click"].astype(float), 1e-6, 1 - 1e-6)
    logloss = -np.mean(y * np.log(prob) + (1 - y) * np.log1p(-prob))
    rate = y.mean()
    base = -(rate * np.log(rate) + (1 - rate) * np.log1p(-rate))
    assert logloss < base - 0.02
    assert roc_auc_score(y, prob) > 0.7


def test_save_load_round_trip_is_identical(
    predictor: MTLPredictor, test_log: pa.Table, tmp_path: Path
) -> None:
    predictor.save(tmp_path / "m")
    loaded = MTLPredictor.load(tmp_path / "m")
    a, b = predictor.add_predictions(test_log), loaded.add_predictions(test_log)
    for col in ("pred_click", "pred_order", "est_play_time_ms"):
        assert np.array_equal(a[col].to_numpy(), b[col].to_numpy())
    assert loaded.config == predictor.config and loaded.esmm == predictor.esmm
    (tmp_path / "m" / "meta.json").write_text("{}")
    with pytest.raises(DataError, match="expected format"):
        MTLPredictor.load(tmp_path / "m")


def test_seeded_and_rng_state_preserved(train_log: pa.Table) -> None:
    cfg = MTLConfig(objectives=["click"], **{**FAST, "epochs": 1})
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = fit_mtl(train_log, None, cfg, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    b = fit_mtl(train_log, None, cfg, progress=False)
    for (k, v), (_, w) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(v, w), k


def test_bad_training_input(train_log: pa.Table) -> None:
    no_labels = train_log.drop_columns(["label_click", "label_order", "label_play_time_ms"])
    with pytest.raises(DataError, match="no label columns"):
        fit_mtl(no_labels, None, MTLConfig(**FAST), progress=False)
    with pytest.raises(DataError, match="objective\\(s\\) \\['like'\\]"):
        fit_mtl(train_log, None, MTLConfig(objectives=["like"], **FAST), progress=False)
    with pytest.raises(ConfigError, match="task_weights"):
        fit_mtl(train_log, None, MTLConfig(task_weights={"nope": 1.0}, **FAST), progress=False)
    unshown = train_log.filter(train_log["position"].is_null())
    with pytest.raises(DataError, match="no training rows"):
        fit_mtl(unshown, None, MTLConfig(**FAST), progress=False)


# --------------------------------------------------------------------------------- CLI


def _cli() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(mtl_app, name="mtl")
    return root


@pytest.fixture(scope="module")
def world_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from blendrank.cli.main import app as main_app

    out = tmp_path_factory.mktemp("world") / "w"
    res = CliRunner().invoke(
        main_app,
        [
            "world",
            "generate",
            "--preset",
            "quick",
            "--requests",
            "600",
            "--shard-requests",
            "300",
            "--eval-requests",
            "0",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    return out / "logs"


def test_cli_train_and_predict_on_a_world_log(world_logs: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(
        _cli(),
        [
            "mtl",
            "train",
            "--data",
            str(world_logs),
            "--out",
            str(tmp_path / "m"),
            "--quiet",
            "--set",
            "epochs=2",
            "--set",
            "expert_dims=[16]",
            "--set",
            "tower_dims=[8]",
        ],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["model"] == "mmoe" and metrics["split"] == "time"
    assert set(metrics["test"]) == {"click", "order"} and metrics["esmm"] == {"order": "click"}
    assert metrics["test"]["click"]["auc"] > 0.5
    assert metrics["training"]["impressions_per_s"] > 0 and metrics["position_tower"]
    res = runner.invoke(
        _cli(),
        [
            "mtl",
            "predict",
            "--model",
            str(tmp_path / "m"),
            "--data",
            str(world_logs),
            "--out",
            str(tmp_path / "pred"),
        ],
    )
    assert res.exit_code == 0, res.output
    out = pq.read_table(tmp_path / "pred")
    src = read_raw(world_logs)  # the shards only: logs/ also holds objective.yaml
    assert out.num_rows == src.num_rows and out.column_names == src.column_names
    p = out["pred_click"].to_numpy()
    assert np.all((p >= 0) & (p <= 1)) and not np.array_equal(p, src["pred_click"].to_numpy())
    from blendrank.data.contract import validate_table

    assert validate_table(out, "pred").ok


def test_predict_parquet_single_file_and_no_overwrite(
    predictor: MTLPredictor, test_log: pa.Table, tmp_path: Path
) -> None:
    pq.write_table(test_log, tmp_path / "in.parquet")
    [path] = predict_parquet(
        predictor, tmp_path / "in.parquet", tmp_path / "o.parquet", batch_rows=300
    )
    got = pq.read_table(path)
    ref = predictor.add_predictions(test_log)
    assert np.array_equal(got["pred_order"].to_numpy(), ref["pred_order"].to_numpy())
    assert "est_play_time_ms" in got.column_names
    with pytest.raises(DataError, match="overwrite its input"):
        predict_parquet(predictor, tmp_path / "in.parquet", tmp_path / "in.parquet")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "{tmp}/nope", "--out", "{tmp}/o"], "no such file or directory"),
        (["train", "--data", "{tmp}/nolabels.parquet", "--out", "{tmp}/o"], "no label columns"),
        (
            ["train", "--data", "{tmp}/nolabels.parquet", "--out", "{tmp}/o", "--model", "xgb"],
            "expected one of mmoe, ple, shared_bottom",
        ),
        (["train", "--data", "{tmp}/nolabels.parquet", "--out", "{tmp}/o", "--set", "lr=-1"], "lr"),
        (
            [
                "predict",
                "--model",
                "{tmp}/nope",
                "--data",
                "{tmp}/nolabels.parquet",
                "--out",
                "{tmp}/p",
            ],
            "no such model directory",
        ),
    ],
)
def test_cli_bad_input_is_a_clear_error(args: list[str], message: str, tmp_path: Path) -> None:
    log = make_log(60, seed=4).drop_columns(["label_click", "label_order", "label_play_time_ms"])
    pq.write_table(log, tmp_path / "nolabels.parquet")
    res = CliRunner().invoke(_cli(), ["mtl", *[a.format(tmp=tmp_path) for a in args]])
    assert res.exit_code == 1, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_examination_mode_multiplies_the_probability() -> None:
    torch.manual_seed(0)
    net = MTLNetwork(_spec(position_mode="examination"))
    cat, num = _inputs(40)
    pos = torch.tensor([1, 2, 3, 0] * 10)
    raw, off, _ = net.forward_full(cat, num, pos)
    assert off is not None and torch.equal(raw, net(cat, num))  # raw ignores the position
    assert torch.all(off[pos <= 1] == 0) and torch.all(off[pos >= 2][:, 0] < 0)
    assert torch.all(off[:, 1:] == 0)
    labels = torch.randint(0, 2, (40, 3)).float()
    mask = torch.ones(40, 3, dtype=torch.bool)
    sums, _ = task_losses(raw, labels, mask, net.layout, off)
    exam = torch.exp(off[:, 0])
    p_click = exam * torch.sigmoid(raw[:, 0])
    p_order = p_click * torch.sigmoid(raw[:, 1])
    bce = torch.nn.functional.binary_cross_entropy
    assert torch.allclose(sums[0], bce(p_click, labels[:, 0], reduction="sum"), rtol=1e-4)
    assert torch.allclose(sums[1], bce(p_order, labels[:, 1], reduction="sum"), rtol=1e-4)
    out = net.outputs(raw, off)
    assert torch.allclose(out[:, 0], p_click) and torch.allclose(out[:, 1], p_order)


def test_position_dropout_hides_positions_in_training_only(train_log: pa.Table, test_log: pa.Table) -> None:
    base = fit_mtl(train_log, test_log, MTLConfig(**FAST), progress=False)
    hidden = fit_mtl(train_log, test_log, MTLConfig(**FAST, position_dropout=0.5), progress=False)
    bias_base, bias_hidden = base.model.position_bias, hidden.model.position_bias
    assert bias_base is not None and bias_hidden is not None
    # Same seed and data: only the hidden positions differ, and the tower still learns from the rest.
    assert not torch.equal(bias_base, bias_hidden)
    assert float(bias_hidden.detach().abs().max()) > 0.0
    p = hidden.predict(test_log)["click"]
    assert np.isfinite(p).all() and not np.allclose(p, base.predict(test_log)["click"])
    with pytest.raises(ValueError):
        MTLConfig(position_dropout=1.0)


@pytest.mark.parametrize("mode", ["logit", "examination"])
def test_hidden_positions_share_one_learned_effect(mode: str) -> None:
    net = MTLNetwork(_spec(position_mode=mode))
    assert net.position_bias is not None
    with torch.no_grad():
        net.position_bias.copy_(torch.arange(net.position_bias.numel(), dtype=torch.float32).view_as(net.position_bias) - 3.0)
    effect = net.position_effect(torch.tensor([-1, 0, 1, 2, 3]))
    assert torch.all(effect[1:3] == 0)  # unknown and position 1: no effect
    assert torch.all(effect[0] != 0) and torch.all(effect[0] != effect[3])  # hidden: row 0's own effect
    expected = net.position_bias[0] if mode == "logit" else -torch.nn.functional.softplus(net.position_bias[0])
    assert torch.allclose(effect[0], expected)
