"""``blendrank world …``: simulated worlds with ground truth."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from blendrank.cli.common import ConfigOption, SetOption, check_writable_dir, fail, out, user_errors
from blendrank.progress import progress_bar
from blendrank.staging import staged_output_dir
from blendrank.worlds.generate import generate_world
from blendrank.worlds.presets import (
    KUAIRAND_SIM_PRESETS,
    PRESETS,
    kuairand_sim_config,
    world_config,
)

app = typer.Typer(help="Generate logs from a simulated world with known ground truth.", no_args_is_help=True)

WORLDS = ("marketplace", "kuairand-sim")


@app.command("generate")
@user_errors
def generate(
    out_dir: Path = typer.Option(..., "--out", help="Output directory (logs/ shards, world.json, summary.json)."),
    world: str = typer.Option("marketplace", "--world", help=f"World: {', '.join(WORLDS)}."),
    preset: str = typer.Option("default", "--preset", help=f"Preset: {', '.join(PRESETS)} (marketplace); "
                               f"{', '.join(KUAIRAND_SIM_PRESETS)} (kuairand-sim)."),
    requests: int = typer.Option(20_000, "--requests", min=1, help="Logged requests (each has `candidates` rows); marketplace."),
    sessions: int | None = typer.Option(None, "--sessions", min=1, help="kuairand-sim: logged sessions (default: the "
                                        "preset's log_sessions, the student's training logs)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed (overrides the preset's)."),
    config: Path | None = ConfigOption,
    overrides: list[str] | None = SetOption,
    shard_requests: int = typer.Option(10_000, "--shard-requests", min=1, max=1_000_000,
                                       help="Requests per Parquet shard; bounds memory."),
    eval_requests: int = typer.Option(2000, "--eval-requests", min=0,
                                      help="Held-out requests for the headroom report (0 skips it)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes generating log shards in parallel "
                                "(same files as 1; each holds one shard in memory)."),
) -> None:
    """Generate logged traffic (production policy + Dirichlet exploration) and the headroom report."""
    if world not in WORLDS:
        fail(f"--world {world!r}: unknown world; choose one of {', '.join(WORLDS)}")
    check_writable_dir(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        fail(f"--out {out_dir}: directory is not empty; choose a new directory (nothing was overwritten)")
    # Built in a hidden sibling directory and renamed to --out when complete: an interrupted or
    # killed run never leaves a directory that looks finished (readers refuse the staging one).
    if world == "kuairand-sim":
        from blendrank.worlds.kuairand_sim import generate_kuairand_sim

        kcfg = kuairand_sim_config(preset, str(config) if config else None, overrides, seed=seed)
        with staged_output_dir(out_dir, subdirs=("logs",)) as stage:
            s = generate_kuairand_sim(kcfg, stage, sessions, log=lambda m: out.print(m, highlight=False))
        out.print(f"[bold]kuairand-sim[/] preset={preset} seed={kcfg.seed}: {s['sessions']:,} sessions, "
                  f"{s['requests']:,} requests, {s['impressions']:,} impressions "
                  f"({s['impressions_per_session']['mean']:.1f} per session) -> {out_dir}")
        out.print("per-impression rates: " + ", ".join(f"{k} {v:.4f}" for k, v in s["rates"].items())
                  + f"; watch {s['watch_s_per_impression']:.1f} s")
        return
    cfg = world_config(preset, str(config) if config else None, overrides, seed=seed)
    with staged_output_dir(out_dir, subdirs=("logs",)) as stage, progress_bar() as bar:
        task = bar.add_task("generating", total=requests)
        summary = generate_world(cfg, requests, stage, shard_requests, eval_requests,
                                 on_shard=lambda n: bar.advance(task, n), workers=workers)
    out.print(f"[bold]marketplace[/] preset={preset} seed={cfg.seed}: {summary['requests']:,} requests, "
              f"{summary['impressions']:,} impressions in {summary['shards']} shards "
              f"({summary['seconds_logs']} s) -> {out_dir}")
    if "headroom" in summary:
        h = summary["headroom"]
        table = Table(title=f"Headroom on {h['n_requests']:,} held-out requests (business value per page)")
        for col in ("arm", "value", "vs best global"):
            table.add_column(col, justify="right" if col != "arm" else "left")
        for arm, v in h["value"].items():
            table.add_row(arm, f"{v:.4f}", f"{h['rel_to_best_global'][arm]:+.2%}")
        out.print(table)


@app.command("presets")
def presets() -> None:
    """List the marketplace and kuairand-sim presets."""
    for name in KUAIRAND_SIM_PRESETS:
        k = kuairand_sim_config(name)
        out.print(f"[bold]kuairand-sim {name}[/]: pool {k.max_pool or 'all'} videos (>= {k.pool_min_rows} rows), "
                  f"users {k.max_users or 'all'}, N {k.candidates}, page {k.page_size}, {k.log_sessions} logged sessions")
    for name in PRESETS:
        cfg = world_config(name)
        segs = ", ".join(f"{s.name} {s.share:.0%}" for s in cfg.segments)
        out.print(f"[bold]{name}[/]: seed {cfg.seed}, {cfg.n_items} items, objectives {cfg.objectives}, segments: {segs}")
