"""IntegratedRL-MTF in kuairand-sim: exploring sessions give chained transitions inside their
trusted intervals whose rewards add up to the world's session values; progressive rounds run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blendrank.algos.grade.data import FusionSpec, fit_policy_features
from blendrank.algos.integrated_rl import IntegratedRLConfig
from blendrank.algos.integrated_rl.ksim import (
    KsimStates,
    SessionRunner,
    fit_integrated_rl_ksim,
    production_ksim_action,
)
from blendrank.algos.integrated_rl.rollout import action_box
from blendrank.errors import ConfigError
from blendrank.worlds.kuairand_sim import KuaiRandSimWorld
from blendrank.worlds.kuairand_sim_config import FUSION_INPUTS, STREAM_EVAL
from blendrank.worlds.presets import kuairand_sim_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cache = tmp_path_factory.mktemp("ksim_cache")
    return KuaiRandSimWorld(kuairand_sim_config("tiny", overrides=[f"cache_dir={cache}"]), log=lambda s: None)


@pytest.mark.slow
def test_exploring_sessions_chain_transitions_and_sum_to_the_session_value(world):
    cfg = IntegratedRLConfig()
    K = len(FUSION_INPUTS)
    low, high = action_box(K, (cfg.power_min, cfg.power_max), (cfg.log10_bias_min, cfg.log10_bias_max))
    init = production_ksim_action(world, cfg)
    logs = world.models["student"].add_predictions(world.student_logs)
    states = KsimStates(world, FusionSpec(objectives=list(FUSION_INPUTS), floor=world.config.fusion_floor), fit_policy_features(logs))
    rng = np.random.default_rng(0)
    centre = lambda s: np.tile(init, (len(s), 1)) + rng.normal(scale=0.3, size=(len(s), len(init)))
    run = SessionRunner(world, states, centre, low, high, 0.15, np.random.default_rng(1))
    totals = world.run_sessions(run, 40, STREAM_EVAL, record=run.record).totals
    data = run.transitions(groups=2)
    session = np.concatenate([s["session"] for s in run.steps])
    assert len(data) == totals["pages"].sum() > 40  # one transition per request; sessions continue
    assert np.all(data.action >= data.lo - 1e-6) and np.all(data.action <= data.hi + 1e-6)
    assert np.all(data.action >= low - 1e-6) and np.all(data.action <= high + 1e-6)
    assert np.allclose(data.hi - data.lo, 0.3, atol=1e-5)
    # Rewards (watch part + engagement part) add up to each session's realised value.
    per_session = np.bincount(session, weights=data.value.astype(np.float64), minlength=40)
    np.testing.assert_allclose(per_session, totals["value"], rtol=1e-4, atol=1e-2)
    # Each session ends exactly once; a continuing request's next state is its session's next request.
    assert np.bincount(session, weights=data.done, minlength=40).tolist() == [1.0] * 40
    first = np.flatnonzero(data.done == 0)[0]
    later = np.flatnonzero(session == session[first])
    nxt = later[np.searchsorted(later, first) + 1]
    np.testing.assert_array_equal(data.next_state[first], data.state[nxt])
    np.testing.assert_array_equal(data.next_lo[first], data.lo[nxt])
    assert np.any(data.state[nxt, -5:] != 0)  # the session context saw the first page's feedback


@pytest.mark.slow
def test_progressive_rounds_in_kuairand_sim(world):
    cfg = IntegratedRLConfig(rounds=2, sessions_per_round=40, steps_per_round=20)
    pol = fit_integrated_rl_ksim(world, cfg, ab_sessions=30)
    assert [h["round"] for h in pol.history] == [0, 1]
    assert pol.history[1]["transitions"] > pol.history[0]["transitions"] > 40
    for h in pol.history:
        for k in ("critic_loss", "q_mean", "actor_loss", "ab_value", "ab_production_value"):
            assert math.isfinite(h[k]), k
    run = pol.runner()
    tot = world.run_sessions(run, 20, STREAM_EVAL, record=run.record).totals
    assert np.all(tot["pages"] >= 1) and np.isfinite(tot["value"]).all()


@pytest.mark.slow
def test_product_fusion_needs_the_log_linear_world(world):
    other = world.config.model_copy(update={"fusion": "additive"})
    base, world.config = world.config, other
    try:
        with pytest.raises(ConfigError, match="fusion=log_linear"):
            production_ksim_action(world, IntegratedRLConfig())
    finally:
        world.config = base
