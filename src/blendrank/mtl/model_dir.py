"""A saved predictor's directory, shared by the logistic baseline and the MTL model: the weights
(``torch.save``), ``feature_center.json``, ``config.json`` and ``meta.json`` (format, version and
what the model needs to be rebuilt). Every file is written atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from blendrank.checkpoint import atomic_torch_save
from blendrank.config import BaseConfig
from blendrank.errors import DataError
from blendrank.features.center import FeatureCenter
from blendrank.jsonio import read_json, write_json

CENTER_FILE = "feature_center.json"
CONFIG_FILE = "config.json"
META_FILE = "meta.json"

__all__ = [
    "CENTER_FILE",
    "CONFIG_FILE",
    "META_FILE",
    "make_readable",
    "read_meta",
    "save_model_dir",
]


def make_readable(path: str | Path) -> None:
    """Give a ``mkstemp`` file (mode 0600) the usual permissions (0666 minus the umask), as the
    JSON files beside it have."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def save_model_dir(
    directory: str | Path,
    *,
    weights_file: str,
    state: Mapping[str, torch.Tensor],
    center: FeatureCenter,
    config: BaseConfig,
    meta: dict[str, Any],
) -> Path:
    """Write ``state`` (a state dict) to ``weights_file``, the feature center, ``config`` and
    ``meta`` into ``directory`` (created), each file atomically; returns ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    make_readable(atomic_torch_save(state, directory / weights_file))
    center.save(directory / CENTER_FILE)
    write_json(directory / CONFIG_FILE, config.model_dump(mode="json"))
    write_json(directory / META_FILE, meta)
    return directory


def read_meta(
    directory: Path, *, weights_file: str, file_format: str, version: int, what: str, fix: str = ""
) -> dict[str, Any]:
    """``meta.json`` of a directory written by :func:`save_model_dir`, after checking that every
    file is there and the format and version are ``file_format`` / ``version``; a
    :class:`DataError` names the directory as not ``what`` (``fix`` is appended)."""
    files = (weights_file, CENTER_FILE, CONFIG_FILE, META_FILE)
    missing = [f for f in files if not (directory / f).is_file()]
    if missing:
        raise DataError(f"{directory}: not {what} (missing {missing}){fix}")
    meta = read_json(directory / META_FILE)
    if meta.get("format") != file_format or meta.get("version") != version:
        raise DataError(
            f"{directory / META_FILE}: expected format {file_format!r} version "
            f"{version}, got {meta.get('format')!r} version {meta.get('version')!r}"
        )
    return meta
