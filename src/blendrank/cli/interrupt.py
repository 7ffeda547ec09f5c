"""Ctrl-C (SIGINT) during a training command: one line saying what was kept and how to go on."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from blendrank.checkpoint import CHECKPOINT_FILE, checkpoint_position
from blendrank.cli.common import err

F = TypeVar("F", bound=Callable[..., Any])

#: Exit status of a run stopped by SIGINT: 128 + 2, what a shell reports for Ctrl-C.
INTERRUPTED_EXIT = 130


def interrupted_message(out_dir: Path) -> str:
    """What an interrupted training run into ``out_dir`` kept, and how to continue or restart."""
    position = checkpoint_position(out_dir)
    if position is None:
        return (f"interrupted before the first checkpoint; nothing was kept in {out_dir}; run the "
                "same command again to start over")
    return (f"interrupted; kept the checkpoint {out_dir / CHECKPOINT_FILE} ({position}); run the "
            "same command again to resume from it, or add --no-resume to start over")


def keeps_checkpoint_on_interrupt(fn: F) -> F:
    """Wrap a training command whose ``out_dir`` (``--out``) holds its checkpoint: SIGINT prints
    :func:`interrupted_message` on stderr (rank 0 only under torchrun) and exits
    :data:`INTERRUPTED_EXIT`, never with a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            # The process group is gone by now (commands destroy it on the way out): RANK says
            # which process this is.
            if os.environ.get("RANK", "0") == "0":
                err.print(interrupted_message(Path(kwargs["out_dir"])), highlight=False,
                          soft_wrap=True, markup=False)
            raise typer.Exit(INTERRUPTED_EXIT) from None

    return wrapper  # type: ignore[return-value]
