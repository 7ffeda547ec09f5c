"""``blendrank demo``: the main job on the embedded default world."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(out: Path = typer.Option(Path("runs/demo"), "--out", help="Output directory.")) -> None:
    raise typer.Exit(0)
