"""``blendrank bench``: every method side by side, in a world (simulated A/B) or on logs (offline);
``blendrank eval``: a saved policy measured in the same harness, beside production."""

from __future__ import annotations

from pathlib import Path

import typer

from blendrank import tracking
from blendrank.algos.grade.trainer import GradePolicy
from blendrank.bench.logs import LogBenchConfig, run_log_bench
from blendrank.bench.report import format_table, write_report
from blendrank.bench.world import BenchConfig, run_world_bench
from blendrank.cli.common import (
    ConfigOption,
    SetOption,
    check_writable_dir,
    fail,
    note_replaced,
    out,
    user_errors,
)
from blendrank.config import load_config


@user_errors
def bench(
    out_dir: Path = typer.Option(..., "--out", help="Output directory for bench.json and the report."),
    world: str | None = typer.Option(None, "--world", help="World to run the simulated A/B in: marketplace or kuairand-sim."),
    preset: str = typer.Option("default", "--preset", help="World preset."),
    data: Path | None = typer.Option(None, "--data", help="Contract log (file or directory) for an offline bench."),
    mapping: Path | None = typer.Option(None, "--mapping", help="YAML column mapping for --data."),
    objective: Path | None = typer.Option(
        None, "--objective", help="Objective YAML for --data (value, guard rails, production weights; "
        "docs/objective.md). Default: objective.yaml beside the data, else the default it names."),
    methods: str | None = typer.Option(
        None, "--methods", help="Comma-separated methods (production is always the baseline). Default: "
        "production,static_search,segment_oracle,oracle,true_score in a world; production,static_search on logs."),
    seed: int | None = typer.Option(None, "--seed", help="Seed (world seed, or split/search seed on logs)."),
    eval_requests: int | None = typer.Option(None, "--eval-requests", min=10, help="Held-out A/B requests (world; sessions in kuairand-sim)."),
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
) -> None:
    """Run the methods, write bench.json and a report, and print the comparison table."""
    if (world is None) == (data is None):
        fail("give exactly one of --world NAME (simulated A/B) or --data PATH (offline on logs)")
    check_writable_dir(out_dir)
    note_replaced(out_dir, ("bench.json", "report.md", "report.html"))
    method_list = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    if world is not None:
        base = {"world": world, "preset": preset, "seed": seed}
        if method_list:
            base["methods"] = method_list
        if eval_requests is not None:
            base["eval_sessions" if world == "kuairand-sim" else "eval_requests"] = eval_requests
        cfg = load_config(BenchConfig, config, overrides, base=base)
        if world not in ("marketplace", "kuairand-sim"):
            fail(f"--world {world!r}: unknown world; available: marketplace, kuairand-sim")
        result = run_world_bench(cfg, out_dir, log=lambda s: out.print(s, highlight=False))
    else:
        base = {"seed": seed or 0, "objective": str(objective) if objective else None}
        if method_list:
            base["methods"] = method_list
        cfg = load_config(LogBenchConfig, config, overrides, base=base)
        result = run_log_bench(cfg, data, mapping, out_dir, log=lambda s: out.print(s, highlight=False))
    tracking.write_run_record(out_dir, "bench", cfg.model_dump(mode="json"), result.get("seed"),
                              world=world, data=str(data) if data is not None else None)
    finish(result, out_dir)


def finish(result: dict, out_dir: Path) -> None:
    md, html = write_report(out_dir)
    out.print(format_table(result))
    out.print(f"bench.json, {md.name} and {html.name} written to {out_dir}")


@user_errors
def eval_policy(
    policy: Path = typer.Option(..., "--policy", help="Trained policy directory (`blendrank train --method grade|ltr`)."),
    out_dir: Path = typer.Option(..., "--out", help="Output directory for bench.json and the report."),
    world: str | None = typer.Option(None, "--world", help="World of the simulated A/B: marketplace or kuairand-sim."),
    preset: str = typer.Option("default", "--preset", help="World preset."),
    data: Path | None = typer.Option(None, "--data", help="Contract log (file or directory): offline metrics on its test split."),
    mapping: Path | None = typer.Option(None, "--mapping", help="YAML column mapping for --data."),
    objective: Path | None = typer.Option(None, "--objective", help="Objective YAML for --data (default: objective.yaml beside it)."),
    methods: str = typer.Option("production", "--methods", help="Comma-separated bench methods to run beside the policy."),
    seed: int | None = typer.Option(None, "--seed", help="World seed (or split/search seed on logs)."),
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
) -> None:
    """Measure a saved policy as the arm `policy` next to production (and --methods): the world's
    simulated A/B, or the offline metrics of a log's test split, exactly as `blendrank bench` does."""
    if (world is None) == (data is None):
        fail("give exactly one of --world NAME (simulated A/B) or --data PATH (offline on logs)")
    check_writable_dir(out_dir)
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    pol = GradePolicy.load(policy)
    note_replaced(out_dir, ("bench.json", "report.md", "report.html"))
    say = lambda s: out.print(s, highlight=False)  # noqa: E731
    if world is not None:
        if world not in ("marketplace", "kuairand-sim"):
            fail(f"--world {world!r}: unknown world; available: marketplace, kuairand-sim")
        cfg = load_config(BenchConfig, config, overrides, base={"world": world, "preset": preset, "seed": seed,
                                                                "methods": method_list})
        result = run_world_bench(cfg, out_dir, log=say, policies={"policy": pol})
    else:
        base = {"seed": seed or 0, "methods": method_list, "objective": str(objective) if objective else None}
        cfg = load_config(LogBenchConfig, config, overrides, base=base)
        result = run_log_bench(cfg, data, mapping, out_dir, log=say, policies={"policy": pol})
    tracking.write_run_record(out_dir, "eval", cfg.model_dump(mode="json"), result.get("seed"),
                              policy=str(policy), world=world,
                              data=str(data) if data is not None else None)
    finish(result, out_dir)
