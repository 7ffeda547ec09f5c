"""The business objective: the file format, and every consumer reading it (none writing it again)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from blendrank.algos.grade.config import GRADEConfig
from blendrank.algos.grade.data import FusionSpec
from blendrank.bench import registry
from blendrank.bench.logs import LogBenchConfig, log_goal, page_value, tune_static
from blendrank.cli.main import app
from blendrank.data.slates import to_slates
from blendrank.errors import ConfigError
from blendrank.objective import Objective, load_objective, log_objective
from blendrank.worlds.marketplace import MarketplaceWorld
from blendrank.worlds.presets import world_config

runner = CliRunner()
FUSION = FusionSpec(objectives=["click", "order"], use_price=True, price_scale=10.0)
MARKET = {"value": {"click": 0.4, "order*price": 1.0}, "guardrails": {"ctr": 0.005, "cvr": 0.005, "opm": 0.0},
          "production_weights": {"click": 0.5, "order": 0.35, "price": 0.15}}


def _grade(objective: Objective, method: str = "grade") -> GRADEConfig:
    return registry.grade_config(GRADEConfig(), objective, method, FUSION, ["click", "order"], True).config


def test_yaml_round_trip_and_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "objective.yaml"
    path.write_text(Objective.model_validate(MARKET).to_yaml())
    assert load_objective(path) == Objective.model_validate(MARKET)
    for text, needle in [("value: {click: 1}\nbogus: 1\n", "bogus"),
                         ("value: {click: 0}\n", "non-zero"),
                         ("value: {'price': 1}\n", "behaviour"),
                         ("value: {click: 1}\nguardrails: {ctr: 1.5}\n", "[0, 1)"),
                         ("value: {click: 1}\nproduction_weights: {click: -1}\n", "non-negative"),
                         ("- not a mapping\n", "mapping")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=str(path).replace(".", r"\.")) as err:
            load_objective(path)
        assert needle in str(err.value)
    path.write_bytes(b"value: {click: \xff}\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_objective(path)


def test_log_objective_sources(tmp_path: Path) -> None:
    default, source = log_objective(tmp_path / "log.parquet", default_value={"click": 0.5, "order": 0.5})
    assert default.value == {"click": 0.5, "order": 0.5} and default.production_weights is None
    assert "objective.yaml" in source and "--objective" in source  # says what it used and where to change it
    (tmp_path / "production.yaml").write_text("objectives: [click, order]\nweights: {click: 3, order: 1}\n")
    legacy, source = log_objective(tmp_path / "log.parquet")
    assert legacy.production_weights == {"click": 3.0, "order": 1.0} and "objective.yaml instead" in source
    (tmp_path / "objective.yaml").write_text("value: {click: 1, order*price: 2}\n")
    obj, source = log_objective(tmp_path / "log.parquet")
    assert obj.value == {"click": 1, "order*price": 2} and source.endswith("objective.yaml")


# ----------------------------------------------------------------------------- one test per consumer
def test_grade_prior_post_and_rails_read_the_objective() -> None:
    base = _grade(Objective.model_validate(MARKET))
    assert base.reward.prior_coefs == {"click": 0.4, "order*price": 1.0}
    assert base.reward.post_objective_weights == {"click": 0.4, "gmv": 1.0} and base.reward.post_gain == "linear"
    assert base.reward.guardrails == {"click": 0.005, "order/click": 0.005, "order": 0.0}
    other = _grade(Objective.model_validate({**MARKET, "value": {"click": 2.0, "order": 1.0}, "guardrails": {"gpm": 0.01}}))
    assert other.reward.prior_coefs == {"click": 2.0, "order": 1.0}
    assert other.reward.post_objective_weights == {"click": 2.0, "order": 1.0}
    assert other.reward.guardrails == {"order*price": 0.01}
    # Stage 1 grades the labels by R_post's weights unless told otherwise.
    assert base.stage1.objective_weights is None


def test_registry_variants_apply_after_the_objective() -> None:
    obj = Objective.model_validate(MARKET)
    assert _grade(obj, "ltr").stage2.steps == 0
    assert _grade(obj, "grade:post_only").reward.a_prior == 0 and _grade(obj, "grade:post_only").reward.prior_coefs
    with pytest.raises(ConfigError, match="not available"):
        registry.parse_methods(["grade:nope"], "marketplace")
    with pytest.raises(ConfigError, match="logged"):
        registry.parse_methods(["logged"], "marketplace")


def test_unpredicted_terms_are_reported() -> None:
    obj = Objective(value={"play_time_ms": 0.001, "like": 100.0, "follow": 600.0},
                    production_weights={"click": 0.5, "like": 0.5})
    spec = FusionSpec(objectives=["click", "like"])
    resolved = registry.grade_config(GRADEConfig(), obj, "grade", spec, ["click", "like", "play_time_ms"], False)
    assert resolved.config.reward.prior_coefs == {"like": 100.0}
    assert resolved.unvalued_prior == ["play_time_ms", "follow"] and resolved.unvalued_post == ["follow"]
    assert any("calibrated value model" in n for n in resolved.notes()) and any("follow" in n for n in resolved.notes())
    # R_post and the calibrated R_prior's target: the realised value of what was logged
    assert resolved.config.reward.post_objective_weights == {"play_time_ms": 0.001, "like": 100.0}


def _tiny_log() -> pa.Table:
    rng = np.random.default_rng(0)
    n_req, L = 200, 5
    rid = np.repeat(np.arange(n_req), L)
    p_click, p_order = rng.uniform(0.01, 0.9, n_req * L), rng.uniform(0.01, 0.9, n_req * L)
    click, order = rng.random(n_req * L) < p_click, rng.random(n_req * L) < p_order  # each predicted by its own model
    return pa.table({"request_id": rid, "user_id": rid % 7, "item_id": np.tile(np.arange(L), n_req),
                     "ts": rid * 1000, "position": pa.array(np.tile(np.arange(1, L + 1), n_req), pa.int32()),
                     "label_click": click.astype(np.int8), "label_order": order.astype(np.int8),
                     "pred_click": p_click, "pred_order": p_order, "price": rng.uniform(1, 50, n_req * L)})


def test_static_search_and_integrated_rl_weights_read_the_objective(tmp_path: Path) -> None:
    log = _tiny_log()
    splits = {"train": log, "valid": log, "test": log}
    goals = []
    for value in ({"click": 1.0, "order": 0.0001}, {"click": 0.0001, "order": 1.0}):
        (tmp_path / "objective.yaml").write_text(Objective(value=value).to_yaml())
        goals.append(log_goal(tmp_path, dict(splits), LogBenchConfig(), log=lambda s: None))
    assert goals[0].lam[0] > 0.99 and goals[1].lam[1] > 0.99  # composite NDCG / IntegratedRL reward weights
    cfg = LogBenchConfig(static_search={"budget": 40})
    found = [tune_static(log, g, cfg).best_weights for g in goals]
    assert found[0][0] > found[1][0]  # the click-valued objective searches a click-heavier vector


def test_page_value_hand_computed() -> None:
    t = pa.table({"request_id": [0, 0, 0], "label_click": [1, 0, 1], "label_order": [0, 0, 1],
                  "price": [10.0, 5.0, 20.0]})
    sl = to_slates(t, ["label_click", "label_order", "price"])
    obj = Objective(value={"click": 1.0, "order*price": 0.5}, page_size=2)
    assert float(page_value(sl, torch.tensor([[3.0, 2.0, 1.0]]), obj)[0]) == pytest.approx(1.0)
    # page [2, 1]: item 2 = 1 + 0.5·20 = 11 at position 1, item 1 = 0 at position 2
    assert float(page_value(sl, torch.tensor([[1.0, 2.0, 3.0]]), obj)[0]) == pytest.approx(11.0)
    cheap = Objective(value={"click": 1.0, "order*price": 0.1}, page_size=2)
    assert float(page_value(sl, torch.tensor([[1.0, 2.0, 3.0]]), cheap)[0]) == pytest.approx(3.0)


def test_world_objective_is_its_value_and_production() -> None:
    world = MarketplaceWorld(world_config("quick", overrides=["value.click=0.7"]))
    obj = world.objective()
    assert obj.value["click"] == 0.7 and obj.price_scale == world.price_scale
    assert list(obj.production_weights) == world.config.fusion_inputs
    assert np.allclose(obj.production_vector(world.config.fusion_inputs), world.production_weights())


def test_export_falls_back_to_the_objectives_production_weights(tmp_path: Path, small_world_logs: Path) -> None:
    logs = small_world_logs
    r = runner.invoke(app, ["train", "--method", "ltr", "--data", str(logs), "--out", str(tmp_path / "pol"),
                            "--set", "stage1.epochs=1"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", "--policy", str(tmp_path / "pol"), "--out", str(tmp_path / "exp")])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    prod = load_objective(logs.parent / "objective.yaml").production_weights
    assert manifest["fusion_inputs"] == ["click", "order", "price"]
    assert np.allclose(manifest["fallback_weights"], np.array(list(prod.values())) / sum(prod.values()), atol=1e-6)


def test_the_goal_cannot_be_written_a_second_time_in_the_grade_config() -> None:
    base = GRADEConfig.model_validate({"reward": {"guardrails": {"nope": 0.5}}})
    with pytest.raises(ConfigError, match=r"reward.guardrails is read from the business objective \(guardrails\)"):
        registry.grade_config(base, Objective.model_validate(MARKET), "grade", FUSION, ["click", "order"], True)
    base = GRADEConfig.model_validate({"reward": {"prior_coefs": {"click": 1.0}}})
    with pytest.raises(ConfigError, match="objective.yaml"):
        registry.grade_config(base, Objective.model_validate(MARKET), "grade", FUSION, ["click", "order"], True)


@pytest.mark.parametrize("override, needle", [
    ({"reward": {"max_ratio": [[0, 9, 2.0]]}}, "max_ratio entry [0, 9, 2.0]"),
    ({"reward": {"min_weights": [0.1]}}, "min_weights has 1 entries"),
    ({"policy": {"hidden": [-1]}}, "hidden"),
    ({"seed": -5}, "seed"),
    ({"seed": 10**23}, "seed"),
])
def test_rule_settings_are_checked_before_any_work(override: dict, needle: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=re.escape(needle)):
        registry.grade_config(GRADEConfig.model_validate(override), Objective.model_validate(MARKET), "grade",
                              FUSION, ["click", "order"], True)


def test_a_repeated_key_in_the_objective_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "objective.yaml"
    path.write_text("value: {click: 1}\nvalue: {order: 1}\n")
    with pytest.raises(ConfigError, match=str(path).replace(".", r"\.")):
        load_objective(path)
