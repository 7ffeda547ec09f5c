"""``blendrank demo``: the main job on the embedded default (the marketplace world, `quick`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from blendrank.cli.common import fail, out, user_errors

DEMO_METHODS = ["production", "static_search", "ltr", "grade", "segment_oracle", "oracle", "true_score"]


@user_errors
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", help="Output directory (replaced if it holds a previous demo)."),
    preset: str = typer.Option("quick", "--preset", help="Marketplace preset."),
    requests: int = typer.Option(5000, "--requests", min=100, help="Logged requests to generate."),
) -> None:
    """Generate a world, validate its logs, run the bench and print the comparison table."""
    from blendrank.bench.report import format_table, write_report
    from blendrank.bench.world import BenchConfig, run_world_bench
    from blendrank.data.io import load_log
    from blendrank.worlds.generate import generate_world
    from blendrank.worlds.presets import world_config

    if out_dir.exists():
        if not (out_dir / ".blendrank-demo").exists():
            fail(f"--out {out_dir}: exists and is not a previous demo directory; choose another path")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    (out_dir / ".blendrank-demo").touch()
    cfg = world_config(preset)
    out.rule(f"1/3 world generate: marketplace/{preset}, {requests:,} requests")
    summary = generate_world(cfg, requests, out_dir / "world", eval_requests=0)
    out.print(f"{summary['impressions']:,} impressions in {summary['seconds_logs']} s -> {out_dir / 'world'}")
    out.rule("2/3 data validate")
    _, report = load_log(out_dir / "world" / "logs")
    s = report.summary
    out.print(f"valid: {s.requests:,} requests, {s.impressions:,} impressions, label rates "
              + ", ".join(f"{k} {v:.4f}" for k, v in s.label_rates.items()))
    out.rule("3/3 bench: simulated A/B on held-out requests")
    bench = run_world_bench(BenchConfig(preset=preset, methods=DEMO_METHODS), out_dir / "bench",
                            log=lambda m: out.print(m, highlight=False))
    md, _ = write_report(out_dir / "bench")
    out.print(format_table(bench))
    out.print(f"report: {md}")
