"""Simulated A/B, world bench and offline bench on logs."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from blendrank.bench.ab import CommonRandomNumbers, compare_arms, metric_defs, realised_page
from blendrank.bench.world import BenchConfig, run_world_bench
from blendrank.cli.main import app
from blendrank.worlds.logging_policy import write_logs
from blendrank.worlds.marketplace import MarketplaceWorld
from blendrank.worlds.presets import world_config

SMALL_WORLD = ["n_items=400", "n_users=300", "candidates=20", "page_size=5"]


def small_bench(tmp_path, **kw) -> dict:
    kw = {"predictor": "world", "guardrails": {}, "world_overrides": SMALL_WORLD, **kw}  # fast, unconstrained unless asked
    cfg = BenchConfig(preset="quick", eval_requests=600, valid_requests=400, n_boot=200,
                      oracle_grid_points=60, oracle_refine=8, static_search={"budget": 80}, **kw)
    return run_world_bench(cfg, tmp_path, log=lambda s: None)


def test_world_bench_orders_the_reference_arms_and_writes_the_spec_layout(tmp_path):
    b = small_bench(tmp_path)
    on_disk = json.loads((tmp_path / "bench.json").read_text())
    assert on_disk["arms"] == b["arms"]
    for key in ("world", "config", "seed", "n_eval_requests", "baseline_arm", "value_metric", "arms", "lifts",
                "lifts_vs_static", "oracle_share", "timings_s", "arms_realised"):
        assert key in b
    v = {a: m["value"] for a, m in b["arms"].items()}
    assert v["true_score"] >= v["oracle"] >= v["segment_oracle"] >= v["static_search"]
    lo = b["lifts"]["static_search"]["value"]["ci95"][1]
    assert lo >= 0 or v["static_search"] >= v["production"], "static search not below production beyond noise"
    assert 0 <= b["oracle_share"]["static_search"] <= 1
    for arm, per_metric in b["lifts"].items():
        for m in ("ctr", "cvr", "opm", "gpm", "value"):
            rel, (ci_lo, ci_hi) = per_metric[m]["rel"], per_metric[m]["ci95"]
            assert ci_lo <= rel <= ci_hi, (arm, m)


def test_a_a_test_interval_covers_zero_about_95_percent():
    """Same arm, same requests, independent realised outcomes: the 95% CI must cover 0 ~95% of the time."""
    world = MarketplaceWorld(world_config("quick", overrides=SMALL_WORLD))
    defs = metric_defs([])
    covered, n_rep = 0, 200
    for rep in range(n_rep):
        rng = np.random.default_rng(rep)
        req = world.sample_requests(300, rng)
        truth = world.truth(req)
        page = world.true_score_page(truth)
        a = realised_page(world, truth, page, CommonRandomNumbers.draw(req, 0, rng))
        b = realised_page(world, truth, page, CommonRandomNumbers.draw(req, 0, rng))
        lo, hi = compare_arms({"a": a, "b": b}, defs, n_boot=300, seed=rep).lift("a", "b", "value")["ci95"]
        covered += lo <= 0 <= hi
    # Binomial(200, 0.95) is within [0.90, 0.99] with probability > 0.99.
    assert 0.90 <= covered / n_rep <= 0.99, covered / n_rep


def test_common_random_numbers_make_identical_arms_identical():
    world = MarketplaceWorld(world_config("quick", overrides=SMALL_WORLD))
    req = world.sample_requests(100, np.random.default_rng(0))
    truth = world.truth(req)
    crn = CommonRandomNumbers.draw(req, 0, np.random.default_rng(1))
    page = world.true_score_page(truth)
    a, b = realised_page(world, truth, page, crn), realised_page(world, truth, page, crn)
    assert all((a[k] == b[k]).all() for k in a)


@pytest.fixture(scope="module")
def world_log(tmp_path_factory):
    out = tmp_path_factory.mktemp("wl")
    write_logs(MarketplaceWorld(world_config("quick", overrides=SMALL_WORLD)), 900, out, shard_requests=450)
    return out / "logs"


def test_log_bench_runs_on_any_contract_log_through_a_mapping(tmp_path, world_log):
    # Rename columns to a foreign schema, write CSV, and map it back.
    t = pq.read_table(world_log).select(["request_id", "user_id", "ts", "item_id", "position", "label_click",
                                         "label_order", "pred_click", "pred_order", "price"])
    foreign = t.rename_columns(["sess", "uid", "time", "sku", "rank", "clicked", "bought", "p_ctr", "p_cvr", "cost"])
    import pyarrow.csv as pcsv
    pcsv.write_csv(foreign, tmp_path / "log.csv")
    (tmp_path / "map.yaml").write_text(
        "columns: {request_id: sess, user_id: uid, ts: time, item_id: sku, position: rank}\n"
        "labels: {click: clicked, order: bought}\npreds: {click: p_ctr, order: p_cvr}\nprice: cost\n")
    r = CliRunner().invoke(app, ["bench", "--data", str(tmp_path / "log.csv"), "--mapping", str(tmp_path / "map.yaml"),
                                 "--methods", "production,static_search", "--out", str(tmp_path / "b"),
                                 "--set", "n_boot=200", "--set", "static_search.budget=40"])
    assert r.exit_code == 0, r.output
    b = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert set(b["arms"]) == {"production", "static_search"}
    assert b["value_metric"] == "composite_ndcg@10"
    assert "ndcg@10_click" in b["offline"]["static_search"]
    assert b["lifts_vs_static"]["production"]["composite_ndcg@10"]["rel"] == pytest.approx(
        b["arms"]["production"]["composite_ndcg@10"] / b["arms"]["static_search"]["composite_ndcg@10"] - 1, abs=1e-9)
    assert (tmp_path / "b" / "report.html").exists()


@pytest.mark.parametrize("args, message", [
    (["--world", "marketplace", "--data", "x"], "exactly one"),
    ([], "exactly one"),
    (["--world", "marketplace", "--methods", "production,magic"], "magic"),
    (["--world", "mars"], "mars"),
    (["--world", "marketplace", "--set", "eval_requests=-5"], "eval_requests"),
    (["--data", "/nonexistent/log.parquet"], "nonexistent"),
])
def test_bench_bad_input_is_a_clear_error(tmp_path, args, message):
    r = CliRunner().invoke(app, ["bench", "--out", str(tmp_path / "b"), *args])
    assert r.exit_code == 1, r.output
    assert message in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_log_bench_on_the_kuairand_split(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["data", "kuairand", "--out", str(tmp_path / "kr")]).exit_code == 0
    r = runner.invoke(app, ["bench", "--data", str(tmp_path / "kr"), "--out", str(tmp_path / "b"),
                            "--set", "n_boot=200", "--set", "static_search.budget=60"])
    assert r.exit_code == 0, r.output
    b = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert "hate" not in b["objectives"] and "click" in b["objectives"]
    assert all(np.isfinite(b["offline"][m]["composite_ndcg@10"]["mean"]) for m in ("production", "static_search"))
    assert b["split_requests"]["test"] > 500


def test_world_bench_with_mtl_predictions(tmp_path):
    b = small_bench(tmp_path, methods=["production", "static_search", "grade"], predictor="mtl", log_requests=400,
                    mtl={"epochs": 1}, grade={"stage1": {"epochs": 1}, "stage2": {"steps": 3}}, probe_requests=50)
    assert b["predictor"] == "mtl" and "mtl" in b["timings_s"]
    assert all(np.isfinite(b["arms"][a]["value"]) for a in ("production", "static_search", "grade"))
    grade_curve = b["learning_curves"]["grade"]
    stages = [r["stage"] for r in grade_curve]  # Stage 1's epoch, then Stage 2's logged steps
    assert stages[0] == 1 and len(stages) > 1 and set(stages[1:]) == {2}
    assert "lambda_loss" in grade_curve[0] and "true_value" in grade_curve[1]
    seg = b["lifts_per_segment"]
    assert seg and all(set(arms) == {"static_search", "grade"} for arms in seg.values())
    assert all(len(v["value"]["ci95"]) == 2 for arms in seg.values() for v in arms.values())


def test_guardrails_constrain_static_search_and_reach_grade(tmp_path):
    free = small_bench(tmp_path / "free", methods=["production", "static_search"])
    guarded = small_bench(tmp_path / "g", methods=["production", "static_search", "grade", "segment_oracle"], log_requests=400,
                          guardrails={"ctr": 0.0, "opm": 0.0},
                          grade={"stage1": {"epochs": 1}, "stage2": {"steps": 3}}, probe_requests=0)
    assert guarded["bench_config"]["guardrails"] == {"ctr": 0.0, "opm": 0.0}
    # Unconstrained, the value-maximising vector gives up clicks or orders; constrained, it must
    # keep them (on the validation requests; the eval set is another sample, so allow noise).
    lifts = guarded["lifts"]["static_search"]
    assert lifts["ctr"]["rel"] > -0.01 and lifts["opm"]["rel"] > -0.01
    assert free["arms"]["static_search"]["value"] >= guarded["arms"]["static_search"]["value"] - 1e-9
    # The segment oracle picks on the eval requests themselves, so its guard rails hold exactly.
    seg = guarded["lifts"]["segment_oracle"]
    assert seg["ctr"]["rel"] >= -1e-9 and seg["opm"]["rel"] >= -1e-9
    assert any("guard/click/lambda" in r for r in guarded["learning_curves"]["grade"])


def test_session_ab_runs_whole_sessions_with_common_random_numbers(tmp_path):
    from blendrank.bench.sessions import simulate_arm_sessions

    world = MarketplaceWorld(world_config("quick", overrides=[*SMALL_WORLD, "session.enabled=true"]))
    prod = torch.from_numpy(world.production_weights()).float()
    same = lambda req, ctx: world.rank(world.fusion_inputs(req), prod)  # noqa: E731
    a = simulate_arm_sessions(world, same, 300, seed=1)
    b = simulate_arm_sessions(world, same, 300, seed=1)
    for k in a:  # the same arm twice: identical sessions, so every paired lift is exactly 0
        np.testing.assert_array_equal(a[k], b[k])
    assert a["length"].min() >= 1 and a["length"].max() <= world.config.session.max_length
    assert a["length"].mean() > 1.2  # the session model keeps some users
    # A page of the worst candidates loses value and clicks, and so session length too.
    worst = lambda req, ctx: world.rank(-world.fusion_inputs(req), prod)  # noqa: E731
    bad = simulate_arm_sessions(world, worst, 300, seed=1)
    assert bad["value"].mean() < a["value"].mean() and bad["length"].mean() < a["length"].mean()


def test_world_bench_reports_the_session_ab(tmp_path):
    b = small_bench(tmp_path, methods=["production", "static_search", "segment_oracle", "true_score"],
                    world_overrides=[*SMALL_WORLD, "session.enabled=true"], session_requests=200)
    s = b["sessions"]
    assert set(s["arms"]) == {"production", "static_search", "segment_oracle", "true_score"}
    assert s["arms"]["true_score"]["session_value"] > s["arms"]["production"]["session_value"]
    lift = s["lifts"]["true_score"]["session_value"]
    assert lift["ci95"][0] <= lift["rel"] <= lift["ci95"][1]
    with pytest.raises(Exception, match="session.enabled"):
        small_bench(tmp_path / "x", methods=["production"], session_requests=10)


def test_bench_defaults_survive_partial_overrides() -> None:
    from blendrank.algos.grade.config import GRADEConfig
    from blendrank.bench.world import BENCH_DEFAULTS, BenchConfig
    from blendrank.config import apply_overrides

    dropout = BENCH_DEFAULTS["mtl"]["position_dropout"]
    margin = GRADEConfig().reward.guardrail_margin  # one GRADE: the bench runs the library's defaults
    cfg = BenchConfig()
    assert cfg.mtl.position_dropout == dropout > 0 and cfg.grade == GRADEConfig() and margin > 0
    partial = BenchConfig.model_validate(apply_overrides({}, ["mtl.epochs=3", "grade.reward.a_post=0.5", "grade.seed=3"]))
    assert partial.mtl.epochs == 3 and partial.mtl.position_dropout == dropout
    assert partial.grade.reward.a_post == 0.5 and partial.grade.seed == 3 and partial.grade.reward.guardrail_margin == margin
    off = BenchConfig.model_validate(apply_overrides({}, ["mtl.position_dropout=0", "grade.reward.guardrail_margin=0"]))
    assert off.mtl.position_dropout == 0 and off.grade.reward.guardrail_margin == 0


def _log_in_production_order(tmp_path, n: int = 300, L: int = 6):
    """A two-type log whose positions are production's fused order (equal weights over click and
    order, log-linear), so the logged order *is* production's ranking; no objective file."""
    import pyarrow as pa

    from blendrank.data.synthetic import two_type_log

    t = two_type_log(n=n, L=L, seed=3)
    pc_, po = (
        t[c].to_numpy().reshape(n, L).astype(np.float64) for c in ("pred_click", "pred_order")
    )
    score = 0.5 * np.log(pc_ + 1e-3) + 0.5 * np.log(po + 1e-3)
    position = np.argsort(np.argsort(-score, 1), 1) + 1
    t = t.set_column(
        t.column_names.index("position"), "position", pa.array(position.ravel().astype(np.int32))
    )
    (tmp_path / "d").mkdir()
    pq.write_table(t, tmp_path / "d" / "log.parquet")
    return tmp_path / "d" / "log.parquet", t


def test_logged_arm_is_the_order_the_log_showed(tmp_path):
    import pyarrow as pa

    log, table = _log_in_production_order(tmp_path)
    args = ["--methods", "production,logged", "--set", "n_boot=100", "--set", "ope=false"]
    r = CliRunner().invoke(app, ["bench", "--data", str(log), "--out", str(tmp_path / "b"), *args])
    assert r.exit_code == 0, r.output
    b = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert set(b["arms"]) == {"production", "logged"} and "logged" in b["lifts"]
    assert b["arms"]["logged"] == pytest.approx(b["arms"]["production"], abs=1e-9)
    assert b["lifts"]["logged"]["value@10"]["rel"] == pytest.approx(0.0, abs=1e-9)
    # no objective file: the default is used, and bench.json and the report say so
    assert b["objective_default"] and b["notes"][0].startswith(
        "objective: default: no objective.yaml"
    )
    assert b["bench_config"]["production_weights"] == {"click": 0.5, "order": 0.5}
    md = (tmp_path / "b" / "report.md").read_text()
    assert "**Default objective.**" in md and "| logged |" in md

    # the same log shown in reverse: now logged is another ranking than production's
    rev = table.set_column(
        table.column_names.index("position"),
        "position",
        pa.array((7 - table["position"].to_numpy()).astype(np.int32)),
    )
    pq.write_table(rev, tmp_path / "d" / "log.parquet")
    r = CliRunner().invoke(app, ["bench", "--data", str(log), "--out", str(tmp_path / "b2"), *args])
    assert r.exit_code == 0, r.output
    b2 = json.loads((tmp_path / "b2" / "bench.json").read_text())
    assert b2["arms"]["production"] == pytest.approx(b["arms"]["production"], abs=1e-9)
    assert (
        b2["arms"]["logged"]["composite_ndcg@10"]
        < b2["arms"]["production"]["composite_ndcg@10"] - 0.05
    )


def test_logged_arm_needs_positions(tmp_path):
    log, table = _log_in_production_order(tmp_path)
    pq.write_table(table.drop_columns(["position"]), log)
    r = CliRunner().invoke(
        app,
        [
            "bench",
            "--data",
            str(log),
            "--out",
            str(tmp_path / "b"),
            "--methods",
            "production,logged",
            "--set",
            "n_boot=100",
        ],
    )
    assert r.exit_code == 1 and "the logged arm needs a position column" in r.output


@pytest.mark.parametrize(
    "setting",
    [
        "production_weights=[0.3,0.7]",
        "production_weights={click: 1}",
        "objective_weights={click: 1}",
        "guardrails={ctr: 0.01}",
    ],
)
def test_objective_settings_point_to_the_objective_file(tmp_path, setting):
    r = CliRunner().invoke(
        app,
        [
            "bench",
            "--data",
            str(tmp_path / "log.csv"),
            "--out",
            str(tmp_path / "b"),
            "--set",
            setting,
        ],
    )
    assert r.exit_code == 1 and "Traceback" not in r.output
    text = " ".join(r.output.split())
    assert f"{setting.split('=')[0]}: not a bench setting" in text
    assert (
        "objective.yaml beside the data or in a file passed with --objective (docs/objective.md)"
        in text
    )
