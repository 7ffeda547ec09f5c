"""Root of the ``blendrank`` command tree; each area registers its own sub-commands."""

from __future__ import annotations

import os
import sys

import torch
import typer
from typer import rich_utils

from blendrank import __version__
from blendrank.cli import config_cmd
from blendrank.cli import data as data_cli
from blendrank.cli import mtl as mtl_cli
from blendrank.cli import world as world_cli
from blendrank.cli.bench import bench, eval_policy
from blendrank.cli.common import show_data_warnings
from blendrank.cli.demo import demo
from blendrank.cli.export import export
from blendrank.cli.methods import methods
from blendrank.cli.report import report
from blendrank.cli.serve import serve
from blendrank.cli.train import train

#: Width of --help when it is not shown on a terminal (piped, captured): rich's default of 80
#: columns cuts long defaults and examples. A terminal keeps its own width; TERMINAL_WIDTH (typer's
#: setting) overrides both.
HELP_WIDTH = 120
if rich_utils.MAX_WIDTH is None and not sys.stdout.isatty():
    rich_utils.MAX_WIDTH = HELP_WIDTH

app = typer.Typer(
    name="blendrank",
    help="Personalized multi-task fusion for ranking: learn per-request fusion weights, "
    "compare them with baselines, serve them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_cli.app, name="data")
app.add_typer(world_cli.app, name="world")
app.add_typer(mtl_cli.app, name="mtl")
app.add_typer(config_cmd.app, name="config")
app.command("demo")(demo)
app.command("bench")(bench)
app.command("report")(report)
app.command("train")(train)
app.command("eval")(eval_policy)
app.command("methods")(methods)
app.command("export")(export)
app.command("serve")(serve)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"blendrank {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """blendrank command line."""
    # Small batched tensor ops run fastest on one intra-op thread; several threads on a busy
    # 2-core machine were measured 5-10x slower. BLENDRANK_THREADS overrides.
    torch.set_num_threads(int(os.environ.get("BLENDRANK_THREADS", "1")))
    show_data_warnings()


if __name__ == "__main__":
    app()
