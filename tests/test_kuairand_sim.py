"""kuairand-sim: teacher quality, determinism, responsive exits and a bench with every method.

The world tests share one ``tiny`` world (teacher fitted on a 6k-impression subsample, cached in
a temporary directory): about a minute on 2 cores, hence ``slow``.
"""

import numpy as np
import pytest
import torch

from blendrank.errors import ConfigError
from blendrank.eval.bench import BenchConfig, run_world_bench
from blendrank.worlds.kuairand_sim import STREAM_EVAL, KuaiRandSimWorld
from blendrank.worlds.kuairand_sim_teacher import WatchLaw
from blendrank.worlds.presets import kuairand_sim_config


def test_watch_law_recovers_a_linear_log_watch():
    rng = np.random.default_rng(0)
    m = rng.normal(8, 1, size=20_000)
    click = rng.random(20_000) < 0.5
    y = np.where(click, 1.0 + 0.3 * m, 0.2 + 0.05 * m) + rng.normal(0, np.where(click, 0.8, 0.3))
    law = WatchLaw.fit(m, np.expm1(y), click.astype(int))
    assert law.b1 == pytest.approx(0.3, abs=0.03) and law.sd1 == pytest.approx(0.8, abs=0.03)
    assert law.b0 == pytest.approx(0.05, abs=0.02) and law.sd0 == pytest.approx(0.3, abs=0.02)


def test_bad_preset_and_utility_are_config_errors():
    with pytest.raises(ConfigError, match="kuairand-sim preset"):
        kuairand_sim_config("nope")
    with pytest.raises(ConfigError, match="missing: \\['hate', 'no_click'\\]"):
        kuairand_sim_config("tiny", overrides=["session.utility={watch: 1}"])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("ksim_cache"))


@pytest.fixture(scope="module")
def world(cache):
    return KuaiRandSimWorld(kuairand_sim_config("tiny", overrides=[f"cache_dir={cache}"]), log=lambda s: None)


@pytest.mark.slow
def test_teacher_beats_the_base_rate(world):
    m = world.teacher.metrics
    for k in ("click", "long_view"):
        assert m[f"auc_{k}"] > 0.55
        assert m[f"logloss_{k}"] < m[f"base_logloss_{k}"]


@pytest.mark.slow
def test_sessions_are_deterministic_and_keyed_by_stream(world, cache):
    prod = torch.from_numpy(world.production_weights()).float()
    policy = lambda c: world.rank(c.inputs, prod)
    a = world.run_sessions(policy, 40, STREAM_EVAL).totals
    b = world.run_sessions(policy, 40, STREAM_EVAL).totals
    c = world.run_sessions(policy, 40, STREAM_EVAL + 10).totals
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["watch_s"], c["watch_s"])
    # A second world from the same config (teacher, logger, student loaded from the cache).
    again = KuaiRandSimWorld(world.config, log=lambda s: None)
    assert again.student_logs.equals(world.student_logs)
    d = again.run_sessions(lambda c: again.rank(c.inputs, prod), 40, STREAM_EVAL).totals
    np.testing.assert_array_equal(a["value"], d["value"])


@pytest.mark.slow
def test_exits_respond_to_what_is_shown(world):
    """Ranking by true value keeps users longer than ranking against it (the tiny teacher is
    nearly flat, so the satisfaction effect is amplified here: λ = 8, β = 0.5)."""
    P, base = world.config.page_size, world.config
    world.config = base.model_copy(update={"session": base.session.model_copy(update={"exit_satisfaction": 8.0, "beta": 0.5})})
    try:
        best = world.run_sessions(lambda c: np.argsort(-c.item_value, 1)[:, :P], 150, STREAM_EVAL).totals
        worst = world.run_sessions(lambda c: np.argsort(c.item_value, 1)[:, :P], 150, STREAM_EVAL).totals
    finally:
        world.config = base
    assert best["impressions"].mean() > worst["impressions"].mean()
    assert best["watch_s"].mean() > worst["watch_s"].mean()
    rate = best["click"].sum() / best["impressions"].sum()
    assert 0.2 < rate < 0.9


@pytest.mark.slow
def test_bench_runs_every_method_and_orders_the_ceilings(world, cache, tmp_path):
    methods = ["production", "static_search", "segment_oracle", "oracle", "true_score", "ltr", "grade", "integrated_rl"]
    cfg = BenchConfig(world="kuairand-sim", preset="tiny", methods=methods, eval_sessions=60, valid_sessions=30,
                      n_boot=200, world_overrides=[f"cache_dir={cache}"],
                      grade={"stage2": {"steps": 5}, "stage1": {"epochs": 1}},
                      integrated_rl={"rounds": 2, "sessions_per_round": 30, "steps_per_round": 10})
    bench = run_world_bench(cfg, tmp_path, log=lambda s: None)
    arms = bench["arms_realised"]
    assert list(arms) == methods
    for a in arms.values():
        assert {"watch_per_session", "session_length", "click_rate", "like_rate", "value", "page_value"} <= set(a)
    pv = {a: v["page_value"] for a, v in arms.items()}
    assert pv["true_score"] >= pv["oracle"] >= pv["production"]
    assert bench["oracle_share"]["oracle"] == pytest.approx(1.0)
    assert set(bench["lifts"]) == set(methods) - {"production"}
    assert (tmp_path / "bench.json").is_file()
    assert [r["round"] for r in bench["learning_curves"]["integrated_rl"]] == [0, 1]
