"""JSON files of model directories: atomic write, checked read."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from blendrank.errors import DataError


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file in the same directory + ``os.replace``): a failure at any
    point leaves the previous file, if any, and no temp file."""
    text = json.dumps(data, indent=1, allow_nan=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write one JSON object per line (e.g. a training history)."""
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object; a clear :class:`DataError` names the file when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); the file is corrupt or truncated, "
                        "restore it or write it again") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data
