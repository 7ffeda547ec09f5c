"""``blendrank data …``: contract validation and dataset adapters."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from blendrank.cli.common import check_writable_dir, err, fail, out, user_errors
from blendrank.data.contract import (
    REQUEST_KINDS,
    STRUCTURAL_KINDS,
    Kind,
    Summary,
    ValidationReport,
    Violation,
    validate_table,
)
from blendrank.data.io import read_log

app = typer.Typer(help="Validate logs against the data contract; convert datasets to it.", no_args_is_help=True)


#: How many names the summary lists before eliding the rest.
_MAX_NAMES = 8


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _names(names: list[str]) -> str:
    """``"3: a, b, c"``, eliding after :data:`_MAX_NAMES` names; ``"-"`` when empty."""
    if not names:
        return "-"
    more = f", … (+{len(names) - _MAX_NAMES})" if len(names) > _MAX_NAMES else ""
    return f"{len(names)}: {', '.join(names[:_MAX_NAMES])}{more}"


def _where(v: Violation) -> str:
    """Count and first rows of a violation, in words."""
    if v.kind in STRUCTURAL_KINDS:
        return "whole column" if v.kind is not Kind.EMPTY else "-"
    text = _plural(v.count, "request" if v.kind in REQUEST_KINDS else "row")
    if v.first_rows:
        text += f"\nfirst rows: {', '.join(map(str, v.first_rows))}"
    return text


def _violations_table(report: ValidationReport) -> Table:
    table = Table(
        title=f"{len(report.violations)} data contract violation(s) in {report.source}",
        title_justify="left",
        show_lines=True,
    )
    table.add_column("column / kind", no_wrap=True)
    table.add_column("count", overflow="fold")
    table.add_column("problem", ratio=3)
    table.add_column("fix", style="green", ratio=2)
    for v in report.violations:
        where = f"[bold]{escape(v.column)}[/]\n[red]{v.kind}[/]"
        table.add_row(where, _where(v), v.message, v.fix)
    return table


def _summary_table(s: Summary, source: str) -> Table:
    table = Table(title=f"{source}: valid", title_justify="left", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("requests", f"{s.requests:,}")
    table.add_row("impressions", f"{s.impressions:,}")
    table.add_row("users / items", f"{s.users:,} / {s.items:,}")
    table.add_row(
        "candidates per request",
        f"min {s.candidates_min}, median {s.candidates_median:g}, max {s.candidates_max}",
    )
    rates = ", ".join(f"{o} {r:.4g}" for o, r in s.label_rates.items())
    table.add_row("label rates (means)", rates)
    if s.preds:
        table.add_row("predictions", ", ".join(s.preds))
    for o, c in s.calibration.items():
        flag = "  [yellow](far off)[/]" if c.far_off else ""
        table.add_row(
            f"calibration {escape(o)}",
            f"mean pred {c.mean_pred:.4g} vs rate {c.rate:.4g} (x{c.ratio:.3g}), "
            f"ECE {c.ece:.3g}{flag}",
        )
    if s.ts_min is not None:
        table.add_row("ts range (ms)", f"{s.ts_min} .. {s.ts_max}")
    table.add_row("optional columns", ", ".join(s.optional) or "-")
    table.add_row("features", _names(s.features))
    if s.ignored_columns:
        table.add_row("ignored columns", _names(s.ignored_columns))
    if s.dropped_requests:
        table.add_row(
            "dropped small requests",
            f"{_plural(s.dropped_requests, 'request')} "
            f"({_plural(s.dropped_impressions, 'impression')})",
        )
    return table


@app.command("validate")
@user_errors
def validate(
    path: Path = typer.Argument(..., help="Parquet file, directory of Parquet shards, or CSV(.gz)."),
    mapping: Path | None = typer.Option(
        None, "--mapping", help="YAML column mapping onto the contract (docs/data_contract.md)."
    ),
    min_candidates: int = typer.Option(
        2, "--min-candidates", min=1, help="Requests with fewer candidates are 'small'."
    ),
    drop_small_requests: bool = typer.Option(
        False, "--drop-small-requests", help="Drop (and count) small requests instead of failing."
    ),
) -> None:
    """Check a log against the data contract: list every violation (exit 1) or summarize it
    (with the calibration of every pred_* column against its label), then print warnings: no
    user ids, predictions far from their label's rate."""
    report = validate_table(
        read_log(path, mapping),
        str(path),
        min_candidates=min_candidates,
        small_requests="drop" if drop_small_requests else "error",
    )
    if not report.ok:
        out.print(_violations_table(report))
        fail(f"{path}: {len(report.violations)} data contract violation(s); see the table above")
    assert report.summary is not None  # a report without violations always has a summary
    out.print(_summary_table(report.summary, str(path)))
    for message in report.warnings:
        err.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


@app.command("kuairand")
@user_errors
def kuairand(
    out_dir: Path = typer.Option(..., "--out", help="Output directory for the contract Parquet."),
    min_items: int = typer.Option(
        5,
        "--min-items",
        help="Drop pseudo-requests (user-days) with fewer distinct videos; 1 keeps single-video "
        "days (training data only: evaluation needs >= 2).",
    ),
    history: bool = typer.Option(
        False,
        "--history/--no-history",
        help="Add f_hist_* user-history features (counts and smoothed rates from strictly "
        "earlier days only; docs/kuairand.md).",
    ),
) -> None:
    """Convert the vendored KuaiRand-Pure log to contract Parquet (train/valid/test by date)."""
    from blendrank.data.kuairand import build_kuairand, format_summary

    check_writable_dir(out_dir)
    summary = build_kuairand(out_dir, min_items=min_items, history=history)
    out.print(format_summary(summary))
    out.print(f"wrote {', '.join(summary['files'])} to {out_dir} (data: KuaiRand, CC BY-SA 4.0)")
