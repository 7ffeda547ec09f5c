"""One method registry: `train` resolves the GRADE that `bench` runs, and `eval --policy`
measures a trained policy in the bench's own harness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SMALL_WORLD as SMALL
from typer.testing import CliRunner

from blendrank.algos.grade.config import GRADEConfig
from blendrank.bench import registry
from blendrank.bench.logs import LogBenchConfig, load_splits, log_goal
from blendrank.bench.world import BenchConfig
from blendrank.cli.main import app
from blendrank.data.contract import objectives_of
from blendrank.worlds.marketplace import MarketplaceWorld
from blendrank.worlds.presets import world_config

runner = CliRunner()


def test_train_and_bench_resolve_the_identical_grade(small_world_logs: Path) -> None:
    logs = small_world_logs
    world = MarketplaceWorld(world_config("quick", overrides=SMALL, seed=0))
    # the bench's resolution: the world's objective, its fusion inputs, the bench's GRADE settings
    spec_b = registry.fusion_spec(world.objective(), world.config.objectives, world.price_scale)
    splits = load_splits(logs, None, LogBenchConfig())
    labels = objectives_of(splits["train"].column_names)
    bench = registry.grade_config(BenchConfig().grade, world.objective(), "grade", spec_b, labels, True)
    # train's resolution: the objective.yaml the world wrote beside its logs, GRADE's defaults
    goal = log_goal(logs, splits, LogBenchConfig(), log=lambda s: None)
    spec_t = goal.spec(LogBenchConfig())
    train = registry.grade_config(GRADEConfig(), goal.objective, "grade", spec_t, labels, True)
    assert spec_t == spec_b and spec_t.use_price
    assert train.config == bench.config
    assert train.config.reward.guardrails and train.config.reward.prior_coefs["order*price"] > 0


@pytest.mark.slow
def test_train_then_eval_reproduces_the_bench_grade_arm(tmp_path: Path) -> None:
    common = ["--set", "eval_requests=600", "--set", "valid_requests=300", "--set", "n_boot=200",
              "--set", "log_requests=1500", "--set", "mtl.epochs=2", "--set", "probe_requests=0",
              *sum((["--set", f"world_overrides={json.dumps(SMALL)}"],), [])]
    grade_sets = ["--set", "grade.stage1.epochs=1", "--set", "grade.stage2.steps=30", "--set", "grade.stage2.batch_size=128"]
    r = runner.invoke(app, ["bench", "--world", "marketplace", "--preset", "quick", "--methods", "production,grade",
                            "--out", str(tmp_path / "bench"), "--set", "save_training_logs=true", *common, *grade_sets])
    assert r.exit_code == 0, r.output
    bench = json.loads((tmp_path / "bench" / "bench.json").read_text())
    r = runner.invoke(app, ["train", "--method", "grade", "--data", str(tmp_path / "bench" / "training_logs"),
                            "--out", str(tmp_path / "policy"), "--set", "stage1.epochs=1", "--set", "stage2.steps=30",
                            "--set", "stage2.batch_size=128"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", "--policy", str(tmp_path / "policy"), "--world", "marketplace", "--preset", "quick",
                            "--out", str(tmp_path / "eval"), *common])
    assert r.exit_code == 0, r.output
    ev = json.loads((tmp_path / "eval" / "bench.json").read_text())
    assert ev["arms"]["production"] == bench["arms"]["production"]  # the same requests, predictor and truth
    lift_b, lift_e = bench["lifts"]["grade"]["value"], ev["lifts"]["policy"]["value"]
    lo, hi = lift_b["ci95"]
    assert lo - 1e-3 <= lift_e["rel"] <= hi + 1e-3, (lift_b, lift_e)
