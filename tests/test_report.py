"""``blendrank report``: bench.json -> report.md + self-contained report.html with plots."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from blendrank.bench.report import format_table, load_bench, write_report
from blendrank.cli.report import report
from blendrank.errors import DataError

pytest.importorskip("matplotlib")

FIXTURE = Path(__file__).parent / "fixtures" / "bench_example.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(report)

    @app.command()
    def _other() -> None:  # a second command keeps `report` a named sub-command, as in main.py
        pass

    return app


def _bench_dir(tmp_path: Path, bench: dict | None = None) -> Path:
    d = tmp_path / "bench"
    d.mkdir()
    if bench is None:
        shutil.copy(FIXTURE, d / "bench.json")
    else:
        (d / "bench.json").write_text(json.dumps(bench))
    return d


def _embedded_pngs(html: str) -> list[bytes]:
    return [
        base64.b64decode(b)
        for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    ]


def _render(table) -> str:
    console = Console(width=250, record=True)
    console.print(table)
    return console.export_text()


def test_full_report_from_fixture(tmp_path):
    d = _bench_dir(tmp_path)
    md_path, html_path = write_report(d)
    assert (md_path, html_path) == (d / "report.md", d / "report.html")
    md, html = md_path.read_text(), html_path.read_text()

    for heading in (
        "Run",
        "Arms: expected metrics",
        "Arms: realised metrics",
        "Lifts vs baseline",
        "Lifts vs static_search",
        "Share of oracle gain",
        "Fusion weights per user segment",
        "Learning curves",
        "Timings",
    ):
        assert f"## {heading}" in md, heading
        assert heading in html, heading
    assert "## Offline" not in md
    assert "Metric conventions" in md and "OPM = orders per 1000 impressions" in md
    assert "| seed | 0 |" in md and "| n_eval_requests | 2,000 |" in md
    assert "production (baseline)" in md
    # lift of grade's value with its CI, as a percentage
    assert "+8.00% [+6.50%, +9.50%]" in md and "+8.00% [+6.50%, +9.50%]" in html
    assert "| total | 60.60 |" in md
    assert "| grade | big_spenders | 0.1 | 0.4 | 0.5 |" in md

    plots = {p.name for p in (d / "plots").glob("*.png")}
    assert plots == {
        "pareto.png",
        "lifts.png",
        "lifts_vs_static.png",
        "oracle_share.png",
        "weights.png",
        "learning_curves.png",
    }
    for name in plots:
        assert f"](plots/{name})" in md
        assert (d / "plots" / name).read_bytes().startswith(PNG_MAGIC)
    # the HTML is self-contained: every plot embedded, no file references
    pngs = _embedded_pngs(html)
    assert len(pngs) == len(plots) and all(p.startswith(PNG_MAGIC) for p in pngs)
    assert "plots/" not in html


def test_minimal_bench_with_only_arms(tmp_path):
    d = _bench_dir(
        tmp_path,
        {"arms": {"production": {"ctr": 0.1, "value": 1.0}, "grade": {"ctr": 0.12, "value": 1.1}}},
    )
    md_path, html_path = write_report(d)
    md = md_path.read_text()
    assert "## Arms: expected metrics" in md and "| grade | 0.12 | 1.1 |" in md
    for absent in ("Lifts", "oracle", "Timings", "Learning curves", "Offline"):
        assert f"## {absent}" not in md
    assert "<table>" in html_path.read_text()
    text = _render(format_table(load_bench(d)))
    assert "grade" in text and "0.12" in text and "lift" not in text


def test_log_only_bench(tmp_path):
    bench = {
        "data": "logs/kuairand",
        "config": "quick",
        "seed": 1,
        "offline": {
            "production": {
                "ndcg@10_click": {"mean": 0.31, "ci95": [0.30, 0.32]},
                "gauc_click": {"mean": 0.61, "ci95": [0.6, 0.62]},
            },
            "static_search": {
                "ndcg@10_click": {"mean": 0.335, "ci95": [0.325, 0.345]},
                "gauc_click": 0.63,
            },
        },
        "timings_s": {"mtl": 2.0, "static_search": 1.5},
    }
    d = _bench_dir(tmp_path, bench)
    md_path, html_path = write_report(d)
    md = md_path.read_text()
    assert "Offline bench on a log" in md and "## Ranking metrics on the test split" in md
    assert "| static_search | 0.335 [0.325, 0.345] | 0.63 |" in md
    assert "## Arms" not in md and "## Lifts" not in md and "## Page value" not in md
    assert {p.name for p in (d / "plots").glob("*.png")} == {"offline.png"}
    assert len(_embedded_pngs(html_path.read_text())) == 1
    text = _render(format_table(bench))
    assert "Offline" in text and "0.335 [0.325, 0.345]" in text


def _ci(mean: float, half: float = 0.01) -> dict:
    return {"mean": mean, "ci95": [mean - half, mean + half]}


#: A log bench's bench.json as ``bench --data`` writes it (the parts the report reads).
LOG_BENCH = {
    "data": "runs/scored.parquet",
    "mapping": "runs/mapping.yaml",
    "config": "logs",
    "seed": 0,
    "n_eval_requests": 75,
    "baseline_arm": "production",
    "value_metric": "composite_ndcg@10",
    "page_value_metric": "value@5",
    "realised_terms": {"click@5": "click", "gmv@5": "order*price"},
    "objective": {
        "value": {"click": 0.2, "order*price": 1.0},
        "discount": "log2",
        "page_size": 5,
        "guardrails": {},
        "production_weights": {"click": 0.7, "order": 0.3},
    },
    "objective_source": "runs/objective.yaml",
    "objective_default": False,
    "test_split": "the requests where random_bool == 1",
    "split_requests": {"train": 140, "valid": 25, "test": 75},
    "notes": [
        "integrated_rl: every session is one request (...), so the discount gamma = 0.9 has no "
        "effect"
    ],
    "arms": {
        a: {"value@5": v, "click@5": c, "gmv@5": g, "composite_ndcg@10": n}
        for a, v, c, g, n in (
            ("production", 1.2, 1.0, 1.0, 0.65),
            ("static_search", 1.5, 0.9, 1.32, 0.64),
            ("logged", 1.1, 1.05, 0.89, 0.69),
        )
    },
    "lifts": {
        "static_search": {
            "value@5": {"rel": 0.25, "ci95": [0.1, 0.4]},
            "gmv@5": {"rel": 0.32, "ci95": [0.12, 0.5]},
            "click@5": {"rel": -0.1, "ci95": [-0.2, 0.01]},
            "composite_ndcg@10": {"rel": -0.015, "ci95": [-0.05, 0.02]},
        },
        "logged": {"value@5": {"rel": -0.083, "ci95": [-0.2, 0.05]}},
    },
    "ci_method": "percentile bootstrap over test requests (paired for lifts)",
    "weights": {
        "fusion_inputs": ["click", "order"],
        "global": {"production": [0.7, 0.3], "static_search": [0.2, 0.8]},
    },
    "timings_s": {"data": 0.1, "static_search": 0.2},
}
LOG_BENCH["offline"] = {
    a: {
        **{m: _ci(v) for m, v in ms.items()},
        "gauc_click": {**_ci(0.55), "n_used": 60, "n_skipped": 15},
    }
    for a, ms in LOG_BENCH["arms"].items()
}


def test_log_bench_report_says_what_it_measured(tmp_path):
    d = _bench_dir(tmp_path, LOG_BENCH)
    md_path, html_path = write_report(d)
    md, html = md_path.read_text(), html_path.read_text()
    assert md.startswith("# blendrank bench report: offline on a log (scored.parquet)\n")
    for said in (
        "re-ranks the logged candidates of the requests where random_bool == 1 (75 requests)",
        "**Objective.** value = Σ_pos d(pos)·(0.2·click + 1·order*price), d = log2, first 5 "
        "positions; "
        "production fuses click 0.7, order 0.3 (from runs/objective.yaml)",
        "`value@k` = Σ over the first k positions",
        "`logged` is the order the log showed",
        "## Page value on the test split",
        "| static_search | 1.5 [1.49, 1.51] | 0.9 [0.89, 0.91] | 1.32 [1.31, 1.33] |",
        "## Ranking metrics on the test split",
        "| gauc_click |",
        "## Lifts vs production on the test split",
        "| static_search | +25.00% [+10.00%, +40.00%] | -10.00% [-20.00%, +1.00%] "
        "| +32.00% [+12.00%, +50.00%] |",
        "**Note.** integrated_rl: every session is one request",
        "## Fusion weights",
        "| static_search | 0.2 | 0.8 |",
        "## Timings",
    ):
        assert said in md, said
    # nothing a log bench did not measure: no world's truth, no A/B, no business-rate tables
    for unsaid in (
        "logs / logs",
        "true probabilities",
        "common random numbers",
        "Arms: expected",
        "realised metrics",
        "GPM",
        "CTR",
        "oracle",
        "Offline metrics on logs",
    ):
        assert unsaid.lower() not in md.lower().replace("no oracle", ""), unsaid
    assert {p.name for p in (d / "plots").glob("*.png")} == {
        "page_value.png",
        "offline.png",
        "lifts.png",
    }
    assert len(_embedded_pngs(html)) == 3 and "<h1>blendrank bench report: offline on a log" in html

    text = _render(format_table(LOG_BENCH))
    assert "Offline on the test split of scored.parquet" in text and "logs / logs" not in text
    assert "value@5 lift" in text and "+25.0% [+10.0%, +40.0%]" in text and "production *" in text
    assert "gmv@5" in text and "logged" in text


def test_log_bench_report_says_when_the_objective_is_the_default(tmp_path):
    bench = {
        **LOG_BENCH,
        "objective_default": True,
        "objective_source": "default: no objective.yaml beside runs/scored.parquet, so value = "
        "equal weights",
        "objective": {**LOG_BENCH["objective"], "production_weights": {"click": 0.5, "order": 0.5}},
    }
    md_path, _ = write_report(_bench_dir(tmp_path, bench))
    md = md_path.read_text()
    assert (
        "**Default objective.**" in md
        and "(from default: no objective.yaml beside runs/scored.parquet" in md
    )


def test_format_table_shows_value_lift_and_oracle_share():
    text = _render(format_table(json.loads(FIXTURE.read_text())))
    assert "value lift" in text and "baseline = production" in text
    assert "+8.0% [+6.5%, +9.5%]" in text  # grade
    assert "53.3%" in text  # grade's oracle share
    assert "production *" in text


def test_cli_writes_report_and_prints_table(tmp_path):
    d = _bench_dir(tmp_path)
    res = CliRunner().invoke(_app(), ["report", "--bench", str(d)])
    assert res.exit_code == 0, res.output
    assert "report.html" in res.output and "grade" in res.output
    assert (d / "report.md").is_file() and (d / "report.html").is_file()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"arms": {"production": {"ctr": 0.1}', "invalid JSON at line 1"),
        ("[1, 2]", "expected a JSON object"),
        ('{"arms": {"production": 3}}', "`arms.production` must be an object"),
        ('{"world": "marketplace"}', "no results"),
        ('{"arms": {"a": {}}, "lifts": [1]}', "`lifts` must be a JSON object"),
    ],
)
def test_cli_invalid_bench_json_exits_1_with_clear_message(tmp_path, content, needle):
    d = tmp_path / "bench"
    d.mkdir()
    (d / "bench.json").write_text(content)
    res = CliRunner().invoke(_app(), ["report", "--bench", str(d)])
    assert res.exit_code == 1
    assert "error:" in res.output and needle in res.output and "bench.json" in res.output
    assert "Traceback" not in res.output
    assert not (d / "report.md").exists()


def test_missing_dir_and_missing_bench_json(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        load_bench(tmp_path / "nope")
    with pytest.raises(DataError, match="bench.json not found.*blendrank bench"):
        load_bench(tmp_path)
    res = CliRunner().invoke(_app(), ["report", "--bench", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "no such directory" in res.output


# ----------------------------------------------------------------------------- summary and world-bench parts
def _fixture() -> dict:
    return json.loads(FIXTURE.read_text())


def _stage_curves(kl_end: float, value_end: float) -> list[dict]:
    """GRADE's records as the world bench writes them: Stage 1 epochs, then Stage 2 steps."""
    stage1 = [{"stage": 1, "epoch": e, "lambda_loss": 7.3 - 0.1 * e} for e in range(3)]
    stage2 = [{"stage": 2, "step": s, "reward": 1.0 + 0.01 * s, "kl": kl_end * s / 20,
               "true_value": 1.75 + (value_end - 1.75) * s / 20} for s in range(0, 21, 5)]
    return stage1 + stage2


def test_summary_comes_first_with_the_winner_its_ci_version_and_date(tmp_path):
    from blendrank import __version__
    from blendrank.bench.summary import CEILING_ARMS

    bench = _fixture()
    d = _bench_dir(tmp_path, bench)
    (d / "run.json").write_text(json.dumps({"blendrank_version": "0.0.9", "timestamp": "2026-01-02T03:04:05+00:00",
                                            "git": {"commit": "0123456789abcdef", "dirty": False}}))
    md = write_report(d)[0].read_text()
    assert md.index("## Summary") < md.index("## Run") < md.index("## Arms: expected metrics")
    summary = md[md.index("## Summary"):md.index("## Run")]
    lifts = bench["lifts"]
    best = max((a for a in lifts if a not in CEILING_ARMS), key=lambda a: lifts[a]["value"]["rel"])
    assert best == "grade"  # the fixture's best candidate; oracle and true_score lift more but read the truth
    assert "**`grade` wins on `value`**: `grade` +8.00% [+6.50%, +9.50%] vs `production`" in summary
    assert "It captures 53% of the oracle's gain over `production`." in summary
    assert "Next: `ltr` +5.00% [+3.50%, +6.50%] (the two CIs overlap)." in summary  # they touch at 6.5%
    assert "Ceilings, which read the world's truth" in summary and "`oracle` +15.00%" in summary
    assert "| static_search | +3.00% [+1.50%, +4.50%] | above | 20.0% |" in summary
    assert re.search(rf"Report written by blendrank {re.escape(__version__)} on \d{{4}}-\d\d-\d\d\.", summary)
    assert "The bench ran blendrank 0.0.9 on 2026-01-02 (commit 0123456789ab)." in summary
    html = (d / "report.html").read_text()
    assert html.index("<h2>Summary</h2>") < html.index("<h2>Run</h2>")


def test_summary_says_when_no_method_is_distinguishable(tmp_path):
    bench = {"arms": {"production": {"value": 1.0}, "grade": {"value": 1.001}},
             "baseline_arm": "production", "value_metric": "value",
             "lifts": {"grade": {"value": {"rel": 0.001, "ci95": [-0.002, 0.004]}}}}
    md = write_report(_bench_dir(tmp_path, bench))[0].read_text()
    assert "**No method is distinguishable from `production` on `value`**" in md
    assert "| grade | +0.10% [-0.20%, +0.40%] | level | – |" in md


def test_kl_runaway_without_probe_gain_is_flagged():
    from blendrank.bench.summary import kl_runaway

    assert [f.method for f in kl_runaway({"grade": _stage_curves(12.0, 1.74)})] == ["grade"]
    (flag,) = kl_runaway({"grade": _stage_curves(12.0, 1.75)})  # flat probe value: no rise
    assert flag.final_kl == pytest.approx(12.0) and flag.first_value == flag.last_value == pytest.approx(1.75)
    assert kl_runaway({"grade": _stage_curves(12.0, 1.80)}) == []  # the probe value rose
    assert kl_runaway({"grade": _stage_curves(8.0, 1.70)}) == []  # KL stayed under the threshold
    assert kl_runaway({"grade": [{"step": 0, "kl": 20.0}]}) == []  # no probe value: not judged


def test_flag_and_stage_titled_learning_curves_in_the_report(tmp_path):
    bench = _fixture()
    bench["learning_curves"] = {"grade": _stage_curves(12.0, 1.74)}
    md = write_report(_bench_dir(tmp_path, bench))[0].read_text()
    summary = md[md.index("## Summary"):md.index("## Run")]
    curves = md[md.index("## Learning curves"):]
    for part in (summary, curves):
        assert "**Flag: `grade`.** Its KL to the reference reached 12 (above 10)" in part
        assert "(1.75 at the first logged step, 1.74 at the last)" in part
    assert "| grade: Stage 1 (per epoch) | lambda_loss | 3 | 7.3 | 7.1 |" in curves
    assert "| grade: Stage 2 (per step) | true_value | 5 |" in curves
    # the probe value leads Stage 2's panels (SCALAR_TITLES order), then the others
    rows = [line.split(" | ")[1] for line in curves.splitlines() if line.startswith("| grade: Stage 2")]
    assert rows == ["true_value", "reward", "kl"]

    calm = _fixture()
    calm["learning_curves"] = {"grade": _stage_curves(12.0, 1.80)}
    (tmp_path / "calm").mkdir()
    assert "**Flag" not in write_report(_bench_dir(tmp_path / "calm", calm))[0].read_text()


def test_per_segment_lifts_section_or_a_note(tmp_path):
    bench = _fixture()
    md = write_report(_bench_dir(tmp_path, bench))[0].read_text()
    assert "## Lifts per user segment" not in md and "no per-segment lifts" in md
    bench["lifts_per_segment"] = {
        "browsers": {"grade": {"value": {"rel": 0.02, "ci95": [0.01, 0.03]}},
                     "static_search": {"value": {"rel": -0.01, "ci95": [-0.02, 0.0]}}},
        "big_spenders": {"grade": {"value": {"rel": 0.12, "ci95": [0.1, 0.14]}},
                         "static_search": {"value": {"rel": 0.05, "ci95": [0.03, 0.07]}}},
    }
    (tmp_path / "seg").mkdir()
    d = _bench_dir(tmp_path / "seg", bench)
    md = write_report(d)[0].read_text()
    sec = md[md.index("## Lifts per user segment"):]
    assert "| arm | browsers | big_spenders |" in sec
    assert "| grade | +2.00% [+1.00%, +3.00%] | +12.00% [+10.00%, +14.00%] |" in sec
    assert "](plots/segment_lifts.png)" in sec and (d / "plots" / "segment_lifts.png").is_file()
    assert "no per-segment lifts" not in md


def test_metrics_with_the_same_lifts_are_drawn_once(tmp_path, monkeypatch):
    import blendrank.bench.report as report_module
    from blendrank.bench.summary import same_lifts

    data = {"a": {"opm": (0.1, 0.05, 0.15), "orders_per_request": (0.1, 0.05, 0.15), "ctr": (0.1, 0.0, 0.2)},
            "b": {"opm": (-0.2, -0.3, -0.1), "orders_per_request": (-0.2, -0.3, -0.1), "ctr": (-0.2, -0.3, -0.1)}}
    assert same_lifts(data, ["ctr", "opm", "orders_per_request"]) == {"orders_per_request": "opm"}

    bench = _fixture()
    for arm, per_metric in bench["lifts"].items():
        for i, entry in enumerate(per_metric.values()):  # the fixture's metrics all lift alike: make them differ
            entry["rel"], entry["ci95"] = entry["rel"] * (1 + i), [x * (1 + i) for x in entry["ci95"]]
        per_metric["orders_per_request"] = dict(per_metric["opm"])
    drawn: dict[str, list[str]] = {}
    real = report_module._plot_ci_panels

    def spy(data, metrics, arms, path, **kw):
        drawn[path.name] = list(metrics)
        return real(data, metrics, arms, path, **kw)

    monkeypatch.setattr(report_module, "_plot_ci_panels", spy)
    md = write_report(_bench_dir(tmp_path, bench))[0].read_text()
    assert "orders_per_request" not in drawn["lifts.png"] and "opm" in drawn["lifts.png"]
    assert drawn["lifts.png"] == ["ctr", "cvr", "opm", "gpm", "value"]
    assert "Drawn once: `orders_per_request` has the same lifts as `opm`" in md
    lifts_table = md.split("## Lifts vs baseline")[1].split("## ")[0]
    assert "| arm | ctr | cvr | opm | gpm | value | orders_per_request |" in lifts_table  # tables keep it


def test_ceiling_arms_are_the_registry_oracle_family():
    from blendrank.bench.registry import REGISTRY
    from blendrank.bench.summary import CEILING_ARMS

    assert set(CEILING_ARMS) == {name for name, m in REGISTRY.items() if m.family == "oracle"}
