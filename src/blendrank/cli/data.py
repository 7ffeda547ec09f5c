"""``blendrank data …``: contract validation and dataset adapters."""

from __future__ import annotations

import typer

app = typer.Typer(help="Validate logs against the data contract; convert datasets to it.", no_args_is_help=True)
