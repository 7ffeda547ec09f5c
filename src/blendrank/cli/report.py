"""``blendrank report --bench DIR``: bench.json -> report.md + report.html with plots."""

from __future__ import annotations

from pathlib import Path

import typer

from blendrank.bench.report import format_table, load_bench, write_report
from blendrank.cli.common import out, user_errors


@user_errors
def report(
    bench: Path = typer.Option(
        ...,
        "--bench",
        help="Directory written by `blendrank bench` (holds bench.json); report.md, report.html "
        "and plots/ are written there.",
    ),
) -> None:
    """Write a Markdown + self-contained HTML report with plots from DIR/bench.json."""
    data = load_bench(bench)
    md_path, html_path = write_report(bench, data)
    out.print(format_table(data))
    out.print(f"report -> {md_path}\n          {html_path}", highlight=False, soft_wrap=True)
