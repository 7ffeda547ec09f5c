"""``blendrank world …``: simulated worlds with ground truth."""

from __future__ import annotations

import typer

app = typer.Typer(help="Generate logs from a simulated world with known ground truth.", no_args_is_help=True)
