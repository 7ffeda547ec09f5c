"""Shared CLI plumbing: user errors become one red message and exit code 1."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from blendrank.errors import BlendrankError

F = TypeVar("F", bound=Callable[..., Any])

out = Console()
if not out.is_terminal:  # piped output (make demo, CI logs): wide enough for the bench table
    out = Console(width=130)
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def user_errors(fn: F) -> F:
    """Turn :class:`BlendrankError` raised by a command into a clear message and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BlendrankError as exc:
            fail(str(exc))

    return wrapper  # type: ignore[return-value]


SetOption = typer.Option(
    None, "--set", help="Override a config field, KEY=VALUE (repeatable; dotted keys for sections)."
)
ConfigOption = typer.Option(None, "--config", help="YAML config file (unknown keys are rejected).")
