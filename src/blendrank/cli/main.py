"""Root of the ``blendrank`` command tree; each area registers its own sub-commands.

A command's module is imported only when that command runs (or ``--help`` lists it): ``blendrank
serve`` then loads no training code and no PyTorch, which a serving install does not have
(``pip install 'blendrank[serve]'``). The commands that need PyTorch import it first, and say
how to install it when it is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

import click
import typer
from rich.markup import escape
from typer import rich_utils
from typer.core import TyperGroup

from blendrank import __version__
from blendrank.cli.common import fail, show_data_warnings

#: Width of --help when it is not shown on a terminal (piped, captured): rich's default of 80
#: columns cuts long defaults and examples. A terminal keeps its own width; TERMINAL_WIDTH (typer's
#: setting) overrides both.
HELP_WIDTH = 120
if rich_utils.MAX_WIDTH is None and not sys.stdout.isatty():
    rich_utils.MAX_WIDTH = HELP_WIDTH

#: Every command, in --help order: name -> (module, attribute: a command function or a Typer
#: group of sub-commands).
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("blendrank.cli.data", "app"),
    "world": ("blendrank.cli.world", "app"),
    "mtl": ("blendrank.cli.mtl", "app"),
    "config": ("blendrank.cli.config_cmd", "app"),
    "demo": ("blendrank.cli.demo", "demo"),
    "bench": ("blendrank.cli.bench", "bench"),
    "report": ("blendrank.cli.report", "report"),
    "train": ("blendrank.cli.train", "train"),
    "eval": ("blendrank.cli.bench", "eval_policy"),
    "methods": ("blendrank.cli.methods", "methods"),
    "export": ("blendrank.cli.export", "export"),
    "serve": ("blendrank.cli.serve", "serve"),
}
#: Commands that run without PyTorch (``serve --backend torch`` checks for it itself).
TORCH_FREE = frozenset({"data", "report", "serve"})
TRAIN_EXTRA = "pip install 'blendrank[train]'"


def torch_missing() -> bool:
    """Whether PyTorch cannot be imported here (found without importing it)."""
    return importlib.util.find_spec("torch") is None


def _use_torch() -> None:
    """Import PyTorch and set its intra-op threads: small batched tensor ops run fastest on one
    thread; several threads on a busy 2-core machine were measured 5-10x slower.
    BLENDRANK_THREADS overrides."""
    import torch

    torch.set_num_threads(int(os.environ.get("BLENDRANK_THREADS", "1")))


def _needs_torch_command(name: str, summary: str) -> click.Command:
    """A stand-in for a command whose module cannot be imported without PyTorch: it takes any
    arguments and fails with how to install PyTorch."""

    def run(args: tuple[str, ...]) -> None:
        fail(f"blendrank {name} needs PyTorch: {TRAIN_EXTRA}")

    return click.Command(
        name, callback=run, help=escape(f"{summary} (needs PyTorch: {TRAIN_EXTRA})"),
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                          "help_option_names": []})


class LazyCommands(TyperGroup):
    """The root group: :data:`COMMANDS` are imported when first asked for."""

    loaded: dict[str, click.Command]

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        cache = self.__dict__.setdefault("loaded", {})
        if cmd_name not in cache:
            cache[cmd_name] = _load(cmd_name)
        return cache[cmd_name]


def _load(name: str) -> click.Command:
    module_name, attr = COMMANDS[name]
    if name not in TORCH_FREE:
        if torch_missing():
            return _needs_torch_command(name, _SUMMARIES.get(name, ""))
        _use_torch()
    target: Any = getattr(importlib.import_module(module_name), attr)
    if isinstance(target, typer.Typer):
        command = typer.main.get_group(target)
    else:
        single = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


#: One line per command for --help where PyTorch is missing (its module cannot be imported).
_SUMMARIES = {
    "world": "Generate logs from a simulated world with known ground truth.",
    "mtl": "Multi-task models (MMoE, PLE, shared-bottom): train on contract logs, add pred_* columns.",
    "config": "Inspect configuration: every field, its default and its meaning.",
    "demo": "Generate a world, train GRADE and the baselines, write a report.",
    "bench": "Train and compare fusion methods on a world or on logs.",
    "train": "Train one fusion method.",
    "eval": "Evaluate a trained policy on a world or on logs.",
    "methods": "List every fusion method the bench knows.",
    "export": "Export a trained policy for serving (ONNX).",
}

app = typer.Typer(
    name="blendrank",
    help="Personalized multi-task fusion for ranking: learn per-request fusion weights, "
    "compare them with baselines, serve them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=LazyCommands,
)


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
    show_data_warnings()


if __name__ == "__main__":
    app()
