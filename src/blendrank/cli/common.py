"""Shared CLI plumbing: user errors become one red message and exit code 1."""

from __future__ import annotations

import errno
import functools
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from blendrank.errors import BlendrankError, DataWarning

F = TypeVar("F", bound=Callable[..., Any])

out = Console()
if not out.is_terminal:  # piped output (make demo, CI logs): wide enough for the bench table
    out = Console(width=130)
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    # The message is text, never markup: rich would drop "[nan, 1.0]" or "blendrank[report]".
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def show_data_warnings() -> None:
    """Print every :class:`DataWarning` as one yellow ``warning:`` line on stderr (each time it
    is issued); other warnings keep Python's default display."""
    default = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, DataWarning):
            err.print(f"[bold yellow]warning:[/] {escape(str(message))}", highlight=False,
                      soft_wrap=True)
        else:
            default(message, category, *args, **kwargs)

    if getattr(warnings.showwarning, "_blendrank", False):
        return
    show._blendrank = True  # type: ignore[attr-defined]
    warnings.showwarning = show
    warnings.simplefilter("always", DataWarning)


def user_errors(fn: F) -> F:
    """Turn :class:`BlendrankError` raised by a command into a clear message and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BlendrankError as exc:
            fail(str(exc))
        except OSError as exc:  # disk full, permissions, a file where a directory should be, ...
            if exc.errno == errno.EINTR:  # a read cut short by Ctrl-C: an interruption
                raise KeyboardInterrupt from None
            # A full disk during a copy names the source first: the destination is where it failed.
            target = exc.filename2 if exc.errno == errno.ENOSPC and exc.filename2 else exc.filename
            where = target if target is not None else "file system"
            fail(f"{where}: {exc.strerror or exc}; check that the path exists, is the right kind "
                 "(file or directory) and is writable")

    return wrapper  # type: ignore[return-value]


def note_replaced(out_dir: Path, names: tuple[str, ...], when: str = "when this run succeeds") -> None:
    """Say so when ``out_dir`` already holds outputs that this command will replace (never silent)."""
    present = [n for n in names if (out_dir / n).exists()]
    if present:
        out.print(f"note: {escape(str(out_dir))} already holds {', '.join(present)}; replaced {when} "
                  "(use a new --out to keep them)", highlight=False)


def check_writable_dir(path: Path, option: str = "--out") -> None:
    """Fail fast, before any work, when ``path`` cannot become an output directory: it is a
    file, an ancestor is a file, or the nearest existing ancestor is not writable (probed by
    creating and removing a temp file, which also catches read-only mounts and root)."""
    if path.exists() and not path.is_dir():
        raise BlendrankError(f"{option} {path}: exists and is not a directory; choose a directory path")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise BlendrankError(f"{option} {path}: {parent} is a file, so the directory cannot be created; "
                             "choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".blendrank-write-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BlendrankError(f"{option} {path}: {parent} is not writable ({exc.strerror or exc}); "
                             "choose a writable directory") from None


SetOption = typer.Option(
    None, "--set", help="Override a config field, KEY=VALUE (repeatable; dotted keys for sections)."
)
ConfigOption = typer.Option(None, "--config", help="YAML config file (unknown keys are rejected).")
