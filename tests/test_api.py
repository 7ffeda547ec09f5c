"""The Python API (``from blendrank import train, load_policy, rank, evaluate``): the same
policy as ``blendrank train``, weights, save/load, in-process ranking, evaluation, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

import blendrank
from blendrank import Policy, evaluate, load_policy, rank, train
from blendrank.algos.grade.config import GRADEConfig
from blendrank.cli.main import app
from blendrank.data.synthetic import two_type_log
from blendrank.errors import ConfigError, DataError
from blendrank.objective import Objective

FAST = {"stage1": {"epochs": 1}, "stage2": {"steps": 6}}
FAST_SET = ["--set", "stage1.epochs=1", "--set", "stage2.steps=6"]
TWO_TYPE = Objective(value={"click": 0.5, "order": 0.5})


@pytest.fixture(scope="module")
def log_table() -> pa.Table:
    return two_type_log(300, L=6)


@pytest.fixture(scope="module")
def grade_policy(log_table: pa.Table) -> Policy:
    return train("grade", log_table, objective=TWO_TYPE, config=FAST)


def test_the_api_is_importable_from_the_package() -> None:
    assert blendrank.train is train and "rank" in dir(blendrank)
    with pytest.raises(AttributeError):
        blendrank.no_such_thing  # noqa: B018


def test_api_and_cli_train_the_same_policy(tmp_path: Path, small_world_logs: Path) -> None:
    """Same data, same config: the CLI's policy and the API's give identical weights, and both
    resolved GRADE's goal from the world's objective.yaml the same way."""
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--method",
            "grade",
            "--data",
            str(small_world_logs),
            "--out",
            str(tmp_path / "cli"),
            *FAST_SET,
        ],
    )
    assert r.exit_code == 0, r.output
    from_cli = load_policy(tmp_path / "cli")
    from_api = train("grade", small_world_logs, config=FAST)
    table = pq.read_table(min(small_world_logs.glob("*.parquet")))
    ids_cli, w_cli = from_cli.weights_array(table)
    ids_api, w_api = from_api.weights_array(table)
    assert np.array_equal(ids_cli, ids_api)
    np.testing.assert_allclose(w_api, w_cli, atol=1e-6)
    assert (
        from_api.record["config"] == from_cli.record["config"]
    )  # the resolved config, in run.json
    assert from_api.record["config"]["reward"][
        "prior_coefs"
    ]  # goal from the objective, not the defaults
    assert from_cli.method == "grade" and from_cli.objective == from_api.objective


def test_weights_are_one_simplex_row_per_request(grade_policy: Policy, log_table: pa.Table) -> None:
    w = grade_policy.weights(log_table)
    assert w.column_names == ["request_id", "weight_click", "weight_order"]
    assert w.num_rows == 300
    total = np.asarray(w["weight_click"]) + np.asarray(w["weight_order"])
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    # Two user types that want opposite weights: the policy is per request, not one vector.
    assert np.asarray(w["weight_click"]).std() > 0


def test_save_load_round_trip(tmp_path: Path, grade_policy: Policy, log_table: pa.Table) -> None:
    grade_policy.save(tmp_path / "p")
    assert {"policy.pt", "fusion.json", "config.json", "objective.yaml", "run.json"} <= {
        p.name for p in (tmp_path / "p").iterdir()
    }
    back = load_policy(tmp_path / "p")
    np.testing.assert_allclose(
        back.weights_array(log_table)[1], grade_policy.weights_array(log_table)[1], atol=1e-6
    )
    assert back.objective == TWO_TYPE and back.method == "grade"
    record = json.loads((tmp_path / "p" / "run.json").read_text())
    assert record["method"] == "grade" and record["blendrank_version"] == blendrank.__version__


def test_rank_returns_each_requests_top_k_by_fused_score(
    grade_policy: Policy, log_table: pa.Table
) -> None:
    page = rank(grade_policy, log_table, k=3)
    assert page.column_names == ["request_id", "item_id", "rank", "score"]
    assert page.num_rows == 300 * 3
    # Recompute request 7's page from its weights: log-linear fusion of its predictions.
    ids, w = grade_policy.weights_array(log_table)
    rows = log_table.filter(pa.compute.equal(log_table["request_id"], 7))
    feats = np.log(
        np.column_stack([rows["pred_click"].to_numpy(), rows["pred_order"].to_numpy()]) + 1e-3
    )
    expected = rows["item_id"].to_numpy()[
        np.argsort(-(feats @ w[list(ids).index(7)]), kind="stable")[:3]
    ]
    mine = page.filter(pa.compute.equal(page["request_id"], 7))
    assert mine["item_id"].to_pylist() == expected.tolist()
    assert mine["rank"].to_pylist() == [1, 2, 3]
    assert np.all(np.diff(mine["score"].to_numpy()) <= 0)


def test_rank_of_short_requests_keeps_only_real_candidates(
    grade_policy: Policy, log_table: pa.Table
) -> None:
    short = log_table.filter(pa.compute.less(log_table["item_id"], 2))  # 2 candidates per request
    page = rank(grade_policy, short, k=5)
    assert page.num_rows == 300 * 2


def test_static_search_policy_weights_save_and_rank(tmp_path: Path, log_table: pa.Table) -> None:
    pol = train("static_search", log_table, objective=TWO_TYPE, config={"budget": 20})
    w = pol.weights_array(log_table)[1]
    assert np.allclose(w, w[0]) and w.shape == (300, 2)  # one global vector
    pol.save(tmp_path / "s")
    back = load_policy(tmp_path / "s")
    assert back.method == "static_search"
    np.testing.assert_allclose(back.weights_array(log_table)[1], w, atol=1e-6)
    assert rank(back, log_table, k=2).num_rows == 600


def test_a_dataframe_is_accepted_when_pandas_is_installed(log_table: pa.Table) -> None:
    pd = pytest.importorskip("pandas")
    df = log_table.to_pandas()
    assert isinstance(df, pd.DataFrame)
    pol = train("ltr", df, objective=TWO_TYPE, config=FAST)
    assert pol.weights(df).num_rows == 300


def test_a_table_without_an_objective_uses_the_default_not_a_file_in_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_table: pa.Table
) -> None:
    (tmp_path / "objective.yaml").write_text(
        "value: {nonsense: 1.0}\nproduction_weights: {nonsense: 1.0}\n"
    )
    monkeypatch.chdir(tmp_path)
    pol = train("ltr", log_table, config={"stage1": {"epochs": 1}})
    assert pol.objective == Objective(value={"click": 0.5, "order": 0.5})
    assert pol.record["objective_source"].startswith("default: no objective given with the table")


def test_a_config_object_and_overrides_are_the_cli_s(log_table: pa.Table) -> None:
    cfg = GRADEConfig.model_validate(FAST)
    pol = train("grade", log_table, objective=TWO_TYPE, config=cfg, overrides=["stage2.beta=0"])
    assert pol.record["config"]["stage2"]["beta"] == 0
    assert pol.record["config"]["stage2"]["steps"] == 6


def test_evaluate_on_a_log_measures_the_policy_beside_production(
    tmp_path: Path, grade_policy: Policy, log_table: pa.Table
) -> None:
    pq.write_table(log_table, tmp_path / "log.parquet")
    (tmp_path / "objective.yaml").write_text(TWO_TYPE.to_yaml())
    bench = evaluate(
        grade_policy, data=tmp_path / "log.parquet", config={"n_boot": 100}, out=tmp_path / "e"
    )
    assert set(bench["arms"]) == {"production", "policy"}
    assert "policy" in bench["lifts"] and (tmp_path / "e" / "bench.json").is_file()


@pytest.mark.parametrize(
    "call, error, needle",
    [
        (lambda t, p: train("xgb", t), ConfigError, "--method 'xgb': choose one of"),
        (
            lambda t, p: train("grade", 42),
            DataError,
            "expected a pyarrow.Table, a pandas.DataFrame or a path",
        ),
        (
            lambda t, p: train("grade", "/no/such/log.parquet"),
            DataError,
            "no such file or directory",
        ),
        (lambda t, p: train("grade", t, config={"stage2": {"bogus": 1}}), ConfigError, "bogus"),
        (
            lambda t, p: train(
                "grade",
                t.drop_columns(["pred_click", "pred_order"]),
                objective=TWO_TYPE,
                config=FAST,
            ),
            DataError,
            "no pred_<objective> columns",
        ),
        (lambda t, p: train("grade", t.drop_columns(["item_id"])), DataError, "item_id"),
        (lambda t, p: rank(p, t.drop_columns(["pred_order"])), DataError, "pred_order"),
        (lambda t, p: rank(p, t, k=0), ConfigError, "k must be >= 1"),
        (lambda t, p: rank(p, "."), DataError, "not a path"),
        (lambda t, p: evaluate(p), ConfigError, "exactly one of world= (simulated A/B) or data="),
        (lambda t, p: evaluate(p, world="mars"), ConfigError, "unknown world"),
        (lambda t, p: load_policy("/no/such/policy"), DataError, "no such policy directory"),
    ],
)
def test_bad_input_is_one_clear_error(
    call, error, needle, log_table: pa.Table, grade_policy: Policy
) -> None:
    with pytest.raises(error) as exc:
        call(log_table, grade_policy)
    assert needle in str(exc.value)


def test_scores_match_the_serving_fusion(grade_policy: Policy, log_table: pa.Table) -> None:
    """Policy.scores is the fusion every bench and the ranker apply: log(p + b) · w."""
    scores, mask = grade_policy.scores(log_table)
    _, w = grade_policy.weights_array(log_table)
    batch = grade_policy.model.batch(log_table)
    expected = (batch.features * torch.as_tensor(w, dtype=torch.float32)[:, None, :]).sum(-1)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    assert bool(mask.all())


def test_on_row_sees_every_logged_step_and_checkpoints_leave_the_result_alone(
    tmp_path: Path, log_table: pa.Table
) -> None:
    rows: list[dict] = []
    cfg = {"stage1": {"epochs": 1}, "stage2": {"steps": 4}, "log_every": 1}
    first = train(
        "grade",
        log_table,
        objective=TWO_TYPE,
        config=cfg,
        on_row=rows.append,
        checkpoint_dir=tmp_path,
        checkpoint_every=2,
    )
    assert [r["step"] for r in rows if r.get("stage") == 2 and "step" in r] == [0, 1, 2, 3]
    assert [r["epoch"] for r in rows if r.get("stage") == 1 and "epoch" in r] == [0]
    assert not (tmp_path / "checkpoint.pt").exists()  # removed when training finishes
    again = train("grade", log_table, objective=TWO_TYPE, config=cfg)
    np.testing.assert_allclose(
        again.weights_array(log_table)[1], first.weights_array(log_table)[1], atol=1e-6
    )


def test_integrated_rl_policy_weights_save_and_rank(tmp_path: Path) -> None:
    table = two_type_log(200, L=5)
    pol = train("integrated_rl", table, objective=TWO_TYPE)
    _, w = pol.weights_array(table)
    assert w.shape == (200, 2) and np.allclose(w.sum(1), 1.0)
    pol.save(tmp_path / "irl")
    back = load_policy(tmp_path / "irl")
    assert back.method == "integrated_rl"
    np.testing.assert_allclose(back.weights_array(table)[1], w, atol=1e-6)
    page = rank(back, table, k=2)
    scores, _ = back.scores(table)
    assert page["score"].to_numpy()[0] == pytest.approx(float(scores[0].max()), abs=1e-5)
