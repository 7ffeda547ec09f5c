"""``blendrank eval``: a saved policy measured in the bench's own harness, beside production."""

from __future__ import annotations

from pathlib import Path

import typer

from blendrank.algos.grade.trainer import GradePolicy
from blendrank.bench.logs import LogBenchConfig, run_log_bench
from blendrank.bench.world import BenchConfig, run_world_bench
from blendrank.cli.bench import finish
from blendrank.cli.common import ConfigOption, SetOption, check_writable_dir, fail, note_replaced, out, user_errors
from blendrank import tracking
from blendrank.config import load_config


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
