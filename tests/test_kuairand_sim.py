"""kuairand-sim: teacher quality, determinism, responsive exits and a bench with every method.

The world tests share one ``tiny`` world (teacher fitted on a 6k-impression subsample, cached in
a temporary directory): about a minute on 2 cores, hence ``slow``.
"""

import numpy as np
import pytest
import torch

from blendrank.bench.world import BenchConfig, run_world_bench
from blendrank.errors import ConfigError
from blendrank.worlds.kuairand_sim import KuaiRandSimWorld
from blendrank.worlds.kuairand_sim_calibrate import (
    day_length_histogram,
    exit_trace,
    replay_lengths,
    thinned_histogram,
)
from blendrank.worlds.kuairand_sim_config import STREAM_EVAL
from blendrank.worlds.kuairand_sim_fit import _solve_offset
from blendrank.worlds.kuairand_sim_teacher import WatchLaw, calibration_deciles, fit_platt
from blendrank.worlds.presets import kuairand_sim_config


def test_watch_law_recovers_a_linear_log_watch():
    rng = np.random.default_rng(0)
    m = rng.normal(8, 1, size=20_000)
    click = rng.random(20_000) < 0.5
    y = np.where(click, 1.0 + 0.3 * m, 0.2 + 0.05 * m) + rng.normal(0, np.where(click, 0.8, 0.3))
    law = WatchLaw.fit(m, np.expm1(y), click.astype(int))
    assert law.b1 == pytest.approx(0.3, abs=0.03) and law.sd1 == pytest.approx(0.8, abs=0.03)
    assert law.b0 == pytest.approx(0.05, abs=0.02) and law.sd0 == pytest.approx(0.3, abs=0.02)


def test_platt_recovers_slope_and_bias():
    rng = np.random.default_rng(0)
    logit = rng.normal(0, 2, size=50_000)
    y = rng.random(50_000) < 1 / (1 + np.exp(-(0.6 * logit - 0.4)))
    a, b = fit_platt(logit, y)
    assert a == pytest.approx(0.6, abs=0.03) and b == pytest.approx(-0.4, abs=0.03)
    rows = calibration_deciles(1 / (1 + np.exp(-(a * logit + b))), y.astype(float))
    assert len(rows) == 10 and max(abs(r["pred"] - r["observed"]) for r in rows) < 0.03


def test_offset_hits_the_target_rate_with_and_without_a_parent():
    rng = np.random.default_rng(1)
    logit, parent = rng.normal(1, 1.5, size=5000), rng.random(5000)
    d = _solve_offset(logit, None, 0.3)
    assert (1 / (1 + np.exp(-(logit + d)))).mean() == pytest.approx(0.3, abs=1e-6)
    d = _solve_offset(logit, parent, 0.1)
    assert (parent / (1 + np.exp(-(logit + d)))).mean() == pytest.approx(0.1, abs=1e-6)


def test_thinned_histogram_matches_binomial_thinning():
    rng = np.random.default_rng(2)
    lengths = rng.integers(1, 120, size=400)
    weights = rng.integers(1, 5, size=400).astype(float)
    rho = 0.05
    kept = rng.binomial(np.repeat(lengths, 400), rho)
    w = np.repeat(weights, 400)
    sim = np.array([w[(np.minimum(kept, 8) == k) & (kept > 0)].sum() for k in range(1, 9)])
    np.testing.assert_allclose(thinned_histogram(lengths, weights, rho), sim / sim.sum(), atol=0.01)
    np.testing.assert_array_equal(day_length_histogram(np.array([1, 1, 2, 9, 30])), [2, 1, 0, 0, 0, 0, 0, 2])


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


@pytest.mark.slow
def test_teacher_is_calibrated_to_the_logs_rates(world):
    """Platt scaling is fitted, and logging-policy sessions reproduce the log's click rate
    (realised over ~1,000 impressions of the tiny world: ± 0.05)."""
    assert set(world.teacher.platt) >= {"click", "like", "hate"} and world.offsets["click"] != 0
    rates = world.calibration["rounds"][-1]
    assert rates["click"] == pytest.approx(world.log_rates["click"], abs=0.05)


@pytest.mark.slow
def test_replayed_exits_equal_simulated_session_lengths(world):
    """The exit calibration's replay of a no-exit trace gives exactly the lengths that
    run_sessions gives with exits (deterministic policy, same stream)."""
    prod = torch.from_numpy(world.production_weights()).float()
    policy = lambda c: world.rank(c.inputs, prod)
    trace = exit_trace(world, 60, STREAM_EVAL, policy=policy, predictor="student")
    real = world.run_sessions(policy, 60, STREAM_EVAL).totals["impressions"]
    np.testing.assert_array_equal(replay_lengths(world, trace, world.config.session), real)
    longer = world.config.session.model_copy(update={"exit_base": world.config.session.exit_base - 2})
    assert replay_lengths(world, trace, longer).mean() > real.mean()
