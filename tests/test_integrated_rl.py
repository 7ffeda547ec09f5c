"""IntegratedRL-MTF: bound penalty, bounded exploration, targets, training steps, progressive run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from blendrank.algos.integrated_rl import IntegratedRLConfig, fit_integrated_rl
from blendrank.algos.integrated_rl.losses import (
    bootstrap_weight,
    bound_penalty,
    critic_targets,
    reduce_target,
)
from blendrank.algos.integrated_rl.rollout import action_box, product_pages, simulate_sessions
from blendrank.algos.integrated_rl.trainer import Learner, _to_torch, production_action
from blendrank.worlds.marketplace import MarketplaceWorld
from blendrank.worlds.presets import world_config

TINY = ["n_items=300", "n_users=200", "candidates=20", "page_size=5", "session.enabled=true"]


@pytest.fixture(scope="module")
def world() -> MarketplaceWorld:
    return MarketplaceWorld(world_config("quick", overrides=TINY))


def test_bound_penalty_zero_inside_and_monotone_outside():
    lo, hi = torch.tensor([[-0.15, 0.85]]), torch.tensor([[0.15, 1.15]])
    inside = torch.tensor([[0.0, 1.0], [-0.15, 1.15], [0.149, 0.851]])
    assert torch.all(bound_penalty(inside, lo.expand(3, -1), hi.expand(3, -1), 10.0) == 0)
    out = torch.linspace(0.0, 1.0, 21)
    for sign, dim in [(1, 0), (-1, 0), (1, 1), (-1, 1)]:
        a = torch.tensor([[0.0, 1.0]]).repeat(21, 1)
        edge = (hi if sign > 0 else lo)[0, dim]
        a[:, dim] = edge + sign * out
        d = bound_penalty(a, lo.expand(21, -1), hi.expand(21, -1), 10.0)
        assert d[0] == 0 and torch.all(d[1:] > 0)
        assert torch.all(torch.diff(d) > 0)
        # Exponential growth: d = exp(10 * excess) - 1.
        assert torch.allclose(d, torch.expm1(10 * out), rtol=1e-5)
    # The bootstrap weight is 1 inside and decays outside.
    assert torch.all(bootstrap_weight(inside, lo.expand(3, -1), hi.expand(3, -1), 10.0) == 1)
    phi = bootstrap_weight(torch.tensor([[0.25, 1.0], [0.5, 1.0]]), lo.expand(2, -1), hi.expand(2, -1), 10.0)
    assert torch.allclose(phi, torch.tensor([math.exp(-1.0), math.exp(-3.5)]))


def test_exploration_never_leaves_its_box(world):
    cfg = IntegratedRLConfig()
    K = len(world.config.fusion_inputs)
    low, high = action_box(K, (cfg.power_min, cfg.power_max), (cfg.log10_bias_min, cfg.log10_bias_max))
    rng = np.random.default_rng(0)
    centre = lambda s: np.tile(production_action(world, cfg), (len(s), 1)) + rng.normal(scale=0.5, size=(len(s), 2 * K))
    data = simulate_sessions(world, centre, 200, np.random.default_rng(1), 0.15, low, high)
    assert len(data) > 200  # sessions continue
    assert np.all(data.action >= data.lo - 1e-6) and np.all(data.action <= data.hi + 1e-6)
    assert np.allclose(data.hi - data.lo, 0.3, atol=1e-5)
    assert np.all(data.action >= low - 1e-6) and np.all(data.action <= high + 1e-6)
    cont = data.done == 0
    assert cont.any() and np.allclose(data.next_hi[cont] - data.next_lo[cont], 0.3, atol=1e-5)
    assert np.all(np.isfinite(data.reward)) and np.all(data.reward >= 0)


def test_production_action_reproduces_production_pages(world):
    req = world.sample_requests(50, np.random.default_rng(3))
    inputs = world.fusion_inputs(req)
    a = np.tile(production_action(world, IntegratedRLConfig()), (50, 1))
    prod = world.rank(inputs, torch.from_numpy(world.production_weights()).float())
    assert (product_pages(world, inputs, a) == prod).mean() > 0.98


def test_targets_match_hand_computation():
    # Two groups x three members, two transitions; the second leaves the trusted interval by 0.1.
    r = torch.tensor([[1.0, 0.5], [0.2, 0.0]])
    done = torch.tensor([0.0, 0.0])
    q_next = torch.tensor([[[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]],
                           [[0.0, 1.0], [0.0, 3.0], [0.0, 2.0]]])
    a_next = torch.tensor([[0.1], [0.35]])
    lo, hi = torch.tensor([[0.0], [0.0]]), torch.tensor([[0.25], [0.25]])
    phi = bootstrap_weight(a_next, lo, hi, 5.0)
    y = critic_targets(r, done, q_next, phi, 0.9, "mean", 1.0)
    std1 = math.sqrt(2 / 3)  # population std of (1, 2, 3) and of (1, 3, 2)
    w = math.exp(-5 * 0.1)
    expected = torch.tensor([[1.0 + 0.9 * (2 - std1), 0.5 + 0.9 * w * 2.0],
                             [0.2 + 0.9 * 0.0, 0.0 + 0.9 * w * (2 - std1)]])
    assert torch.allclose(y, expected, atol=1e-6)
    y_min = critic_targets(r, torch.tensor([0.0, 1.0]), q_next, phi, 0.9, "min", 0.5)
    expected_min = torch.tensor([[1.0 + 0.9 * (1 - 0.5 * std1), 0.5], [0.2, 0.0]])
    assert torch.allclose(y_min, expected_min, atol=1e-6)
    assert torch.allclose(reduce_target(q_next[:, :1], "mean", 1.0), q_next[:, 0])  # one member: no std


def test_training_step_changes_parameters(world):
    cfg = IntegratedRLConfig(actor_every=1)
    K = len(world.config.fusion_inputs)
    low, high = action_box(K, (cfg.power_min, cfg.power_max), (cfg.log10_bias_min, cfg.log10_bias_max))
    init = production_action(world, cfg)
    data = simulate_sessions(world, lambda s: np.tile(init, (len(s), 1)), 50, np.random.default_rng(0), 0.15, low, high)
    mean, std = data.state.mean(0), data.state.std(0) + 1e-3
    learner = Learner(cfg, data.state.shape[1], low, high, init)
    before = [p.detach().clone() for p in [*learner.actor.parameters(), *learner.critic.parameters()]]
    t_before = [p.detach().clone() for p in learner.critic_t.parameters()]
    out = learner.step(_to_torch(data, np.arange(len(data)), mean, std))
    after = [*learner.actor.parameters(), *learner.critic.parameters()]
    assert all(not torch.equal(b, a) for b, a in zip(before, after))
    assert any(not torch.equal(b, a) for b, a in zip(t_before, learner.critic_t.parameters()))
    assert all(math.isfinite(v) for v in out.values())


def test_short_progressive_run(world):
    cfg = IntegratedRLConfig(rounds=2, sessions_per_round=80, steps_per_round=30, eval_requests=100)
    pol = fit_integrated_rl(world, cfg)
    assert [h["round"] for h in pol.history] == [0, 1]
    assert pol.history[1]["transitions"] > pol.history[0]["transitions"] > 80
    for h in pol.history:
        for k in ("critic_loss", "q_mean", "actor_loss", "ab_value"):
            assert math.isfinite(h[k]), k
    req = world.sample_requests(30, np.random.default_rng(9))
    pages = pol.pages(world, req)
    assert pages.shape == (30, world.config.page_size)
    assert all(len(set(row)) == len(row) for row in pages.tolist())
    assert np.all((pages >= 0) & (pages < world.config.candidates))


def test_bench_arm(tmp_path):
    from blendrank.bench.world import BenchConfig, run_world_bench

    cfg = BenchConfig(preset="quick", world_overrides=TINY, methods=["production", "integrated_rl"], eval_requests=50, predictor="world",
                      n_boot=100, integrated_rl=IntegratedRLConfig(rounds=1, sessions_per_round=40, steps_per_round=5,
                                                                   eval_requests=20))
    bench = run_world_bench(cfg, tmp_path, log=lambda s: None)
    assert "integrated_rl" in bench["arms"] and "integrated_rl" in bench["lifts"]
    (rec,) = bench["learning_curves"]["integrated_rl"]
    assert len(rec["trace"]["step"]) == 5 and rec["trace"]["step"][-1] == 5


def test_report_plots_the_rounds_and_the_loss_and_q_curves(tmp_path):
    from blendrank.algos.integrated_rl.trainer import step_trace
    from blendrank.bench.report import write_report
    from blendrank.jsonio import write_json

    stats = [{"critic_loss": 1.0 / (i + 1), "q_mean": 0.01 * i, **({"actor_loss": -1.0} if i % 2 else {})} for i in range(40)]
    rounds = [{"round": r, "transitions": 100 * (r + 1), "ab_value": 1.0 + 0.1 * r, "ab_production_value": 1.0,
               "ab_lift": 0.1 * r, "critic_loss": 0.1, "q_mean": 2.0, "mean_action": [0.5, -3.0],
               "trace": step_trace(stats, 40 * r, points=10)} for r in range(3)]
    write_json(tmp_path / "bench.json", {"arms": {"production": {"value": 1.0}, "integrated_rl": {"value": 1.2}},
                                         "learning_curves": {"integrated_rl": rounds, "grade": [{"step": 0, "reward": 1.0}]}})
    md, html = write_report(tmp_path)
    text = md.read_text()
    section = text.split("## IntegratedRL-MTF rounds", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 3 and "+20.00%" in rows[2]
    assert "plots/integrated_rl.png" in section and (tmp_path / "plots" / "integrated_rl.png").stat().st_size > 1000
    assert "integrated_rl" not in text.split("## Learning curves", 1)[1].split("\n## ", 1)[0]  # no duplicate
    assert rounds[1]["trace"]["step"][0] == 44 and rounds[1]["trace"]["step"][-1] == 80
    assert rounds[0]["trace"]["critic_loss"][0] == round((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4, 6)
