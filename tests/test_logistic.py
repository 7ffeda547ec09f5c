"""Per-task logistic-regression baseline (blendrank.mtl.logistic)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError
from sklearn.metrics import roc_auc_score

from blendrank.errors import DataError
from blendrank.mtl.logistic import (
    LogisticConfig,
    LogisticPredictor,
    PerTaskLogistic,
    binary_objectives,
    fit_logistic,
)

N_CATS = 20
FAST = {"epochs": 3, "batch_size": 1024}


def _effects() -> np.ndarray:
    return np.random.default_rng(123).normal(0.0, 1.5, N_CATS)


def make_table(n: int, seed: int, *, unshown: float = 0.2) -> pa.Table:
    """click depends on f_cat only, like on f_num only; f_noise_* are pure noise."""
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, N_CATS, n)
    num = rng.normal(size=n)
    click_logit = _effects()[cat] - 1.0
    like_logit = 2.0 * num - 0.5
    click = (rng.random(n) < 1 / (1 + np.exp(-click_logit))).astype(np.int8)
    like = (rng.random(n) < 1 / (1 + np.exp(-like_logit))).astype(np.float64)
    position = rng.integers(1, 11, n)
    return pa.table(
        {
            "request_id": pa.array(np.arange(n) // 10),
            "item_id": pa.array(np.arange(n)),
            "position": pa.array(position, mask=rng.random(n) < unshown, type=pa.int32()),
            "f_cat": pa.array([f"c{v}" for v in cat]),
            "f_num": pa.array(num),
            "f_noise_cat": pa.array([f"n{v}" for v in rng.integers(0, 10, n)]),
            "f_noise_num": pa.array(rng.normal(size=n)),
            "label_click": pa.array(click),
            "label_like": pa.array(like),
            "label_play_time_ms": pa.array(rng.exponential(5000.0, n)),
        }
    )


@pytest.fixture(scope="module")
def train() -> pa.Table:
    return make_table(12_000, seed=1)


@pytest.fixture(scope="module")
def test_table() -> pa.Table:
    return make_table(4_000, seed=2, unshown=0.0)


@pytest.fixture(scope="module")
def predictor(train: pa.Table, test_table: pa.Table) -> LogisticPredictor:
    return fit_logistic(train, test_table, LogisticConfig(**FAST))


def test_learns_each_task_from_its_own_feature(
    predictor: LogisticPredictor, test_table: pa.Table
) -> None:
    assert predictor.objectives == ("click", "like")  # play_time_ms is not binary: skipped
    pred = predictor.predict(test_table)
    assert roc_auc_score(test_table["label_click"].to_numpy(), pred["click"]) > 0.7
    assert roc_auc_score(test_table["label_like"].to_numpy(), pred["like"]) > 0.7
    # each task (roughly) ignores the other task's feature and the noise features
    click_num, like_num = predictor.numeric_coef("click"), predictor.numeric_coef("like")
    assert abs(like_num["f_num"]) > 1.0
    assert abs(click_num["f_num"]) < 0.1 * abs(like_num["f_num"])
    assert abs(like_num["f_noise_num"]) < 0.1 * abs(like_num["f_num"])
    click_cat = predictor.categorical_coef("click", "f_cat")[1:]
    like_cat = predictor.categorical_coef("like", "f_cat")[1:]
    assert click_cat.std() > 0.5
    assert like_cat.std() < 0.2 * click_cat.std()
    # the learned category weights track the true effects
    vocab = predictor.center.categorical_state("f_cat").vocab
    true = _effects()[[int(v[1:]) for v in vocab]]
    assert np.corrcoef(true, click_cat)[0, 1] > 0.9


def test_predict_returns_float32_probabilities(
    predictor: LogisticPredictor, test_table: pa.Table
) -> None:
    pred = predictor.predict(test_table)
    assert list(pred) == ["click", "like"]
    for values in pred.values():
        assert values.dtype == np.float32 and values.shape == (test_table.num_rows,)
        assert np.all((values >= 0) & (values <= 1))


def test_add_predictions_adds_and_replaces_pred_columns(
    predictor: LogisticPredictor, test_table: pa.Table
) -> None:
    stale = test_table.append_column("pred_click", pa.array(np.full(test_table.num_rows, 2.0)))
    out = predictor.add_predictions(stale)
    assert out.num_rows == test_table.num_rows
    assert out.column_names == stale.column_names + ["pred_like"]  # pred_click replaced in place
    for name in ("pred_click", "pred_like"):
        assert out.schema.field(name).type == pa.float32()
        values = out[name].to_numpy()
        assert np.all((values >= 0) & (values <= 1))
    np.testing.assert_array_equal(
        out["pred_like"].to_numpy(), predictor.predict(test_table)["like"]
    )


def test_save_load_round_trip(
    predictor: LogisticPredictor, test_table: pa.Table, tmp_path: pytest.TempPathFactory
) -> None:
    predictor.save(tmp_path)
    loaded = LogisticPredictor.load(tmp_path)
    assert loaded.objectives == predictor.objectives
    assert loaded.config == predictor.config
    assert len(loaded.history) == len(predictor.history)
    before, after = predictor.predict(test_table), loaded.predict(test_table)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])


def test_load_rejects_incomplete_directory(tmp_path: pytest.TempPathFactory) -> None:
    with pytest.raises(DataError, match="not a saved logistic predictor"):
        LogisticPredictor.load(tmp_path)


def test_valid_history_reports_per_task_metrics(predictor: LogisticPredictor) -> None:
    assert [h["epoch"] for h in predictor.history] == [1, 2, 3]
    last = predictor.history[-1]["valid"]
    assert set(last) == {"click", "like"}
    assert last["click"]["auc"] > 0.7 and last["like"]["auc"] > 0.7
    assert predictor.history[-1]["train_loss"] < predictor.history[0]["train_loss"]


def test_training_step_changes_parameters() -> None:
    model = PerTaskLogistic([5, 3], n_numeric=2, n_tasks=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    cat = torch.stack(
        [torch.randint(0, 5, (64,), generator=gen), torch.randint(0, 3, (64,), generator=gen)], 1
    )
    num = torch.randn(64, 2, generator=gen)
    labels = (torch.rand(64, 2, generator=gen) < 0.3).float()
    mask = torch.ones(64, 2, dtype=torch.bool)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    loss = model.loss(cat, num, labels, mask, l2=1e-6)
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    for name in ("bias", "categorical.weight", "numeric.weight"):
        assert not torch.equal(before[name], after[name]), name
    assert model(cat, num).shape == (64, 2)


def test_summed_lookup_matches_embedding_bag() -> None:
    torch.manual_seed(0)
    model = PerTaskLogistic([4, 7, 3], n_numeric=0, n_tasks=3)
    with torch.no_grad():
        model.categorical.weight.normal_()
    bag = torch.nn.EmbeddingBag(14, 3, mode="sum")
    with torch.no_grad():
        bag.weight.copy_(model.categorical.weight)
    cat = torch.stack([torch.randint(0, c, (50,)) for c in (4, 7, 3)], 1)
    out_model = model(cat, torch.zeros(50, 0))
    out_bag = bag(cat + model.offsets) + model.bias
    torch.testing.assert_close(out_model, out_bag)
    g = torch.randn(50, 3)
    (out_model * g).sum().backward()
    (out_bag * g).sum().backward()
    torch.testing.assert_close(model.categorical.weight.grad, bag.weight.grad)


def test_tasks_are_independent(train: pa.Table, test_table: pa.Table) -> None:
    both = fit_logistic(train, None, LogisticConfig(**FAST))
    alone = fit_logistic(train, None, LogisticConfig(objectives=["click"], **FAST))
    np.testing.assert_allclose(
        both.predict(test_table)["click"], alone.predict(test_table)["click"], atol=1e-4
    )


def test_fit_is_seeded(train: pa.Table, test_table: pa.Table) -> None:
    config = LogisticConfig(epochs=1, batch_size=2048, seed=7)
    a = fit_logistic(train, None, config).predict(test_table)["click"]
    b = fit_logistic(train, None, config).predict(test_table)["click"]
    c = fit_logistic(train, None, config.model_copy(update={"seed": 8})).predict(test_table)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c["click"])


def test_trains_only_on_shown_rows(train: pa.Table) -> None:
    unseen = pa.array(
        [
            "only_unshown" if p is None else v
            for p, v in zip(train["position"].to_pylist(), train["f_cat"].to_pylist())
        ]
    )
    table = train.set_column(train.schema.get_field_index("f_cat"), "f_cat", unseen)
    fitted = fit_logistic(table, None, LogisticConfig(epochs=1, batch_size=4096))
    n_shown = train.num_rows - train["position"].null_count
    assert fitted.center.n_fit_rows == n_shown
    assert "only_unshown" not in fitted.center.categorical_state("f_cat").vocab
    # every row is still scored
    assert len(fitted.predict(table)["click"]) == table.num_rows


def test_binary_objectives_detection(train: pa.Table) -> None:
    assert binary_objectives(train) == ["click", "like"]
    flags = pa.table({"label_a": pa.array([True, False, None]), "label_b": [0.0, 0.5, 1.0]})
    assert binary_objectives(flags) == ["a"]


def test_no_binary_label_is_a_clear_data_error(train: pa.Table) -> None:
    table = train.drop_columns(["label_click", "label_like"])
    with pytest.raises(DataError, match="no binary label column.*label_play_time_ms"):
        fit_logistic(table, None, LogisticConfig())


def test_named_non_binary_objective_is_rejected(train: pa.Table) -> None:
    with pytest.raises(DataError, match="'label_play_time_ms' is not binary"):
        fit_logistic(train, None, LogisticConfig(objectives=["play_time_ms"]))
    with pytest.raises(DataError, match="'label_order' is not in the training table"):
        fit_logistic(train, None, LogisticConfig(objectives=["order"]))


def test_no_shown_rows_is_a_data_error(train: pa.Table) -> None:
    table = train.set_column(
        train.schema.get_field_index("position"),
        "position",
        pa.nulls(train.num_rows, type=pa.int32()),
    )
    with pytest.raises(DataError, match="no training rows"):
        fit_logistic(table, None, LogisticConfig())


def test_without_features_predicts_base_rate() -> None:
    table = pa.table({"label_click": pa.array([0, 0, 0, 1] * 50, type=pa.int8())})
    fitted = fit_logistic(table, None, LogisticConfig(epochs=1))
    np.testing.assert_allclose(fitted.predict(table)["click"], 0.25, atol=0.01)


def test_config_is_strict_and_strips_label_prefix() -> None:
    assert LogisticConfig(objectives=["label_click", "like"]).objectives == ["click", "like"]
    with pytest.raises(ValidationError):
        LogisticConfig(learning_rate=0.1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        LogisticConfig(embedding_dim=4)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        LogisticConfig(objectives=["click", "label_click"])
    for name, field in LogisticConfig.model_fields.items():
        assert field.description, name
