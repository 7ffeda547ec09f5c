"""Off-policy estimates in the benches: the world bench's `ope` layout and validation, the
recommendation rule, and estimates on a log bench."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from blendrank.bench.logs import LogBenchConfig, run_log_bench
from blendrank.bench.ope import examination_from_log, recommend
from blendrank.bench.world import BenchConfig, run_world_bench
from blendrank.ope import LoggedRequests
from blendrank.worlds.logging_policy import write_logs
from blendrank.worlds.marketplace import MarketplaceWorld
from blendrank.worlds.presets import world_config

SMALL_WORLD = ["n_items=400", "n_users=300", "candidates=20", "page_size=5"]
METRICS = {"ctr", "cvr", "opm", "gpm", "value"}


def _finite_lifts(estimates: dict) -> None:
    for est, per_arm in estimates.items():
        for arm, per_metric in per_arm.items():
            assert METRICS <= set(per_metric), (est, arm)
            for m, lift in per_metric.items():
                lo, hi = lift["ci95"]
                assert all(math.isfinite(x) for x in (lift["rel"], lo, hi)), (est, arm, m)
                assert lo <= hi, (est, arm, m)


@pytest.fixture(scope="module")
def world_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("ope_world")
    cfg = BenchConfig(
        preset="quick",
        eval_requests=600,
        valid_requests=400,
        n_boot=200,
        oracle_grid_points=60,
        oracle_refine=8,
        static_search={"budget": 60},
        predictor="world",
        guardrails={},
        world_overrides=SMALL_WORLD,
        log_requests=1500,
        probe_requests=0,
        methods=["production", "static_search", "segment_oracle", "oracle", "grade"],
        grade={"stage1": {"epochs": 1}, "stage2": {"steps": 3}},
    )
    return run_world_bench(cfg, out, log=lambda s: None), out


def test_world_bench_writes_the_ope_layout_with_finite_numbers(world_bench):
    b, out = world_bench
    assert (
        json.loads((out / "bench.json").read_text())["ope"]["recommended"]
        == b["ope"]["recommended"]
    )
    ope = b["ope"]
    assert {"estimates", "validation", "recommended"} <= set(ope)
    assert {"dm", "item_ips", "item_snips", "item_dr", "weight_ips", "weight_snips"} == set(
        ope["estimates"]
    )
    for per_arm in ope["estimates"].values():
        assert set(per_arm) == {
            "static_search",
            "segment_oracle",
            "grade",
        }  # every arm with weights but the baseline
    assert "oracle" in ope["arms_skipped"]  # it needs each request's truth
    _finite_lifts(ope["estimates"])
    assert ope["recommended"] in ope["validation"]
    assert "ope" in b["timings_s"] and b["timings_s"]["ope"] > 0


def test_report_plots_estimates_against_the_ab(world_bench):
    from blendrank.bench.report import write_report

    b, out = world_bench
    md, _ = write_report(out)
    text = md.read_text()
    assert "Off-policy estimates vs the simulated A/B" in text
    assert f"{b['ope']['recommended']} (recommended)" in text
    assert (out / "plots" / "ope_vs_ab.png").stat().st_size > 0


def test_world_bench_validation_numbers_are_in_range(world_bench):
    b, _ = world_bench
    for est, v in b["ope"]["validation"].items():
        assert v["n_pairs"] == 3 * len(METRICS), est  # three arms, every business metric
        assert 0 <= v["coverage"] <= 1 and -1 <= v["spearman"] <= 1, est
        assert v["sign_agreement"] is None or 0 <= v["sign_agreement"] <= 1, est
        # coverage recomputed from the two layouts
        pairs = [
            (e, b["lifts"][a][m]["rel"])
            for a, per in b["ope"]["estimates"][est].items()
            for m, e in per.items()
            if m in METRICS
        ]
        covered = np.mean([e["ci95"][0] <= t <= e["ci95"][1] for e, t in pairs])
        assert v["coverage"] == pytest.approx(covered), est


def test_world_bench_without_ope_has_no_ope_key(tmp_path):
    cfg = BenchConfig(
        preset="quick",
        eval_requests=200,
        valid_requests=100,
        n_boot=100,
        predictor="world",
        world_overrides=SMALL_WORLD,
        methods=["production", "static_search"],
        static_search={"budget": 20},
        ope=False,
    )
    b = run_world_bench(cfg, tmp_path, log=lambda s: None)
    assert "ope" not in b and "ope" not in b["timings_s"]


def test_recommendation_prefers_full_sign_agreement_then_coverage_then_spearman():
    v = {
        "a": {"coverage": 0.95, "sign_agreement": 0.8, "spearman": 1.0, "n_pairs": 10},
        "b": {"coverage": 0.7, "sign_agreement": 1.0, "spearman": 0.2, "n_pairs": 10},
        "c": {"coverage": 0.7, "sign_agreement": 1.0, "spearman": 0.9, "n_pairs": 10},
        "d": {"coverage": None, "sign_agreement": None, "spearman": None, "n_pairs": 0},
    }
    assert recommend(v) == "c"
    assert recommend({k: v[k] for k in ("a", "d")}) == "a"
    assert recommend({"d": v["d"]}) is None


def test_examination_uses_randomised_requests_when_flagged():
    # Two requests: production-like (good items on top, clicks fall fast) and a randomised one
    # whose clicks fall only with examination.
    pos = np.array([[1, 2, 3], [1, 2, 3]])
    clicks = np.array([[1, 0, 0], [1, 1, 0]], dtype=float)
    logged = LoggedRequests(position=pos, labels={"click": clicks}, preds={"click": clicks})
    everything, src_all = examination_from_log(logged, 3)
    randomised, src_rand = examination_from_log(logged, 3, randomised=np.array([False, True]))
    assert everything[1] == pytest.approx(0.5) and randomised[1] == pytest.approx(1.0)
    assert "randomised" in src_rand and "randomised" not in src_all


def test_log_bench_writes_estimates_for_every_arm(tmp_path):
    world = MarketplaceWorld(world_config("quick", overrides=SMALL_WORLD))
    write_logs(world, 900, tmp_path / "w", shard_requests=450)
    (tmp_path / "objective.yaml").write_text(
        world.objective({}).to_yaml()
    )  # fuses price, as logged
    cfg = LogBenchConfig(
        methods=["production", "static_search", "logged"],
        n_boot=200,
        static_search={"budget": 30},
        objective=str(tmp_path / "objective.yaml"),
    )
    b = run_log_bench(cfg, tmp_path / "w" / "logs", None, tmp_path / "b", log=lambda s: None)
    ope = b["ope"]
    assert "validation" not in ope  # no truth on logs
    for est in ("dm", "item_ips", "item_snips", "item_dr"):
        assert set(ope["estimates"][est]) == {"static_search", "logged"}, est
    assert set(ope["estimates"]["weight_ips"]) == {
        "static_search"
    }  # the logged order has no weights
    _finite_lifts(ope["estimates"])
    assert "clicks by position" in ope["examination"]["source"]
    from blendrank.bench.report import write_report

    md, _ = write_report(tmp_path / "b")
    assert "Off-policy estimates of the lift vs production" in md.read_text()
    assert (
        json.loads((tmp_path / "b" / "bench.json").read_text())["ope"]["estimates"].keys()
        == ope["estimates"].keys()
    )


def test_integrated_rl_is_estimated_from_its_pages_on_the_redrawn_logged_requests(tmp_path):
    from blendrank.algos.integrated_rl import IntegratedRLConfig

    cfg = BenchConfig(
        preset="quick",
        world_overrides=SMALL_WORLD,
        methods=["production", "integrated_rl"],
        eval_requests=100,
        predictor="world",
        n_boot=100,
        log_requests=300,
        integrated_rl=IntegratedRLConfig(
            rounds=1, sessions_per_round=40, steps_per_round=5, eval_requests=20
        ),
    )
    ope = run_world_bench(cfg, tmp_path, log=lambda s: None)["ope"]
    for est in ("dm", "item_ips", "item_snips", "item_dr"):
        assert set(ope["estimates"][est]) == {"integrated_rl"}, est
    _finite_lifts({k: ope["estimates"][k] for k in ("dm", "item_dr")})
    # its actions are product-fusion powers and biases, not weight vectors: no weight-space estimate
    assert "weight_ips" not in ope["estimates"] and "weight_ips" in ope["skipped"]


def test_decreasing_fit_pools_violators_and_fills_positions_without_impressions():
    from blendrank.bench.ope import decreasing_fit

    fit = decreasing_fit(np.array([0.5, 0.3, 0.4, 0.0, 0.2]), np.array([10.0, 1.0, 3.0, 0.0, 1.0]))
    assert fit[0] == 0.5 and fit[1] == fit[2] == pytest.approx((0.3 + 3 * 0.4) / 4)
    assert fit[3] == fit[2] and fit[4] == 0.2  # no impressions at 4: the position above's value
    assert np.all(np.diff(fit) <= 0)
    assert np.array_equal(decreasing_fit(np.array([3.0, 2.0, 1.0]), np.ones(3)), [3.0, 2.0, 1.0])
