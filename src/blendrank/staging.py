"""Output directories that appear only when complete, and how readers notice incomplete ones.

A generator that dies half-way (SIGINT, ``kill -9``, a full disk) must not leave something that
looks like a finished output. :func:`staged_output_dir` builds the output in a hidden sibling
directory (``.<name>.incomplete-XXXX``, same file system) that holds an :data:`INCOMPLETE_MARKER`
file, and renames it to the final name only when the build succeeded. :func:`incomplete_reason`
tells a reader that a path lies in such a directory, or in an output of ``world generate`` that
has no ``summary.json`` (the file it writes last).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from blendrank.errors import BlendrankError

INCOMPLETE_MARKER = ".incomplete"
#: ``world generate``'s outputs: ``world.json`` first, ``summary.json`` last.
WORLD_STATE, WORLD_SUMMARY = "world.json", "summary.json"


class Interrupted(BlendrankError):
    """The build was interrupted (SIGINT); its partial output was removed."""


@contextmanager
def staged_output_dir(out_dir: str | Path, subdirs: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a hidden staging directory next to ``out_dir`` (with ``subdirs`` created, each
    holding the marker too); rename it to ``out_dir`` (absent or an empty directory) when the
    block succeeds. On an error or SIGINT the staging directory is removed and the error raised
    (SIGINT as :class:`Interrupted`); after ``kill -9`` it stays, marked incomplete."""
    out = Path(out_dir)
    stage = _staging_dir(out)
    markers = [stage / INCOMPLETE_MARKER]
    for sub in subdirs:
        (stage / sub).mkdir(parents=True)
        markers.append(stage / sub / INCOMPLETE_MARKER)
    for marker in markers:
        marker.write_text(
            "written while this directory is being generated; removed when it is complete\n"
        )
    try:
        yield stage
    except KeyboardInterrupt:
        shutil.rmtree(stage, ignore_errors=True)
        raise Interrupted(
            f"interrupted; the partial output was removed and {out} was not written; "
            "run the command again"
        ) from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    for marker in markers:
        marker.unlink()
    try:
        if out.is_dir():
            out.rmdir()  # empty (checked by the caller); a directory that filled meanwhile stays
        os.replace(stage, out)
    except OSError as exc:
        raise BlendrankError(
            f"{out}: cannot move the complete output into place ({exc.strerror or exc}); "
            f"it is in {stage}"
        ) from None


def _staging_dir(out: Path) -> Path:
    """A new hidden directory beside ``out`` (same file system, so renames are atomic)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.incomplete-", dir=out.parent))
    umask = os.umask(0o022)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make the output private to its owner
    return stage


@contextmanager
def staged_files(out_dir: str | Path, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a hidden staging directory next to ``out_dir``, for an output that may replace an
    earlier one (a re-export) or share its directory with other files. When the block
    succeeds: ``out_dir`` absent or empty -> the staging directory is renamed to it; else each
    file of the staging directory is moved over its namesake in ``out_dir`` (``os.replace``,
    atomic per file), the names in ``last`` last, and other files there stay. On an error or
    SIGINT the staging directory is removed, ``out_dir`` is untouched and the error is raised
    (SIGINT as :class:`Interrupted`)."""
    out = Path(out_dir)
    stage = _staging_dir(out)
    (stage / INCOMPLETE_MARKER).write_text(
        "written while this directory is being built; removed when it is complete\n")
    try:
        yield stage
    except KeyboardInterrupt:
        shutil.rmtree(stage, ignore_errors=True)
        raise Interrupted(f"interrupted; {out} was not changed; run the command again") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    (stage / INCOMPLETE_MARKER).unlink()
    try:
        if not out.exists() or (out.is_dir() and not any(out.iterdir())):
            if out.is_dir():
                out.rmdir()
            os.replace(stage, out)
            return
        names = sorted(p.name for p in stage.iterdir())
        for name in sorted(names, key=lambda n: last.index(n) + 1 if n in last else 0):
            os.replace(stage / name, out / name)
        stage.rmdir()
    except OSError as exc:
        raise BlendrankError(
            f"{out}: cannot move the complete output into place ({exc.strerror or exc}); "
            f"it is in {stage}"
        ) from None


def incomplete_reason(path: str | Path) -> str | None:
    """Why ``path`` (a file or directory) is part of an incomplete output, or None.

    Looks at ``path`` and its two parents (an output's root, its ``logs/`` directory, a shard in
    it): a staging marker, or a ``world.json`` without ``summary.json``."""
    p = Path(path).absolute()
    near = [p, *list(p.parents)[:2]] if p.is_dir() else list(p.parents)[:3]
    for d in near:
        if (d / INCOMPLETE_MARKER).is_file():
            return f"{d} is still being generated, or its generation was killed"
        if (d / WORLD_STATE).is_file() and not (d / WORLD_SUMMARY).exists():
            return (f"{d} has {WORLD_STATE} but no {WORLD_SUMMARY}: its generation stopped "
                    "before it finished")
    return None
