"""``blendrank methods``: the method registry — every name ``--methods`` and ``--method`` accept."""

from __future__ import annotations

from rich.table import Table

from blendrank.bench.registry import REGISTRY
from blendrank.cli.common import out

_CONTEXTS = ("marketplace", "kuairand-sim", "logs", "train")


def methods() -> None:
    """List every registered method and where it runs (world benches, log benches, `train`)."""
    table = Table(title="blendrank methods")
    table.add_column("method")
    for c in _CONTEXTS:
        table.add_column(c, justify="center")
    table.add_column("what it is")
    for m in REGISTRY.values():
        table.add_row(m.name, *("✓" if c in m.contexts else "" for c in _CONTEXTS), m.summary)
    out.print(table)
