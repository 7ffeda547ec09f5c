"""``blendrank data …``: contract validation and dataset adapters."""

from __future__ import annotations

from pathlib import Path

import typer

from blendrank.cli.common import out, user_errors

app = typer.Typer(help="Validate logs against the data contract; convert datasets to it.", no_args_is_help=True)


@app.command("kuairand")
@user_errors
def kuairand(
    out_dir: Path = typer.Option(..., "--out", help="Output directory for the contract Parquet."),
    min_items: int = typer.Option(
        5, "--min-items", help="Drop pseudo-requests (user-days) with fewer distinct videos."
    ),
) -> None:
    """Convert the vendored KuaiRand-Pure log to contract Parquet (train/valid/test by date)."""
    from blendrank.data.kuairand import build_kuairand, format_summary

    summary = build_kuairand(out_dir, min_items=min_items)
    out.print(format_summary(summary))
    out.print(f"wrote {', '.join(summary['files'])} to {out_dir} (data: KuaiRand, CC BY-SA 4.0)")
