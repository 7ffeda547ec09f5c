"""Where ``POST /admin/reload`` may load an export from: inside one configured model root.

A reload names a directory; without a bound, anyone holding the token could make the service
open any path on the server, and a ``fusion.json`` that is a link to another file would have that
file parsed (and its content quoted in the error). :func:`confined_export_dir` resolves the
requested directory (relative paths against the root), requires it and every file in it to stay
inside the root after following links, and its messages name only the path as the client sent
it, never a server path.
"""

from __future__ import annotations

import os
from pathlib import Path

from blendrank.errors import DataError

MAX_ECHO_CHARS = 200  # of the requested path, in messages


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def confined_export_dir(root: str | Path, requested: str) -> Path:
    """The real path of the export directory ``requested`` (absolute, or relative to ``root``).

    DataError when it is outside ``root`` (after following links), is not a directory, or holds
    a link whose target is outside ``root``. Messages quote ``requested`` (shortened), nothing
    else of the server's file system."""
    shown = requested if len(requested) <= MAX_ECHO_CHARS else requested[:MAX_ECHO_CHARS] + "…"
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, requested))  # an absolute `requested` wins
    if "\x00" in requested or not _inside(real, real_root):
        raise DataError(
            f"{shown!r} is outside the model root; give a directory under it "
            "(a relative path is taken from the root)"
        )
    if not os.path.isdir(real):
        raise DataError(f"{shown!r}: no such export directory under the model root")
    for base, dirs, files in os.walk(real):
        for name in dirs + files:
            entry = os.path.join(base, name)
            if os.path.islink(entry) and not _inside(os.path.realpath(entry), real_root):
                rel = os.path.relpath(entry, real)
                raise DataError(
                    f"{shown!r}: {rel} is a link that leads out of the model root; "
                    "copy the file into the export directory instead"
                )
    return Path(real)
