"""The exported head at serving time, without torch: the manifest's format name, the model
file's sha256 and an onnxruntime session over it. :mod:`blendrank.serve.export` (which needs
torch) writes what these read."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from blendrank.errors import DataError

MANIFEST_FORMAT = "blendrank.serving_export"
MANIFEST_VERSION = 1
INPUT_NAMES = ("cat", "num", "stats")
OUTPUT_NAME = "weights"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def onnx_session(path: str | Path, threads: int = 1):
    """An onnxruntime CPU session for an exported head."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise DataError("onnxruntime is not installed; `pip install 'blendrank[serve]'`") from exc
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def session_runner(session: Any):
    """``run(cat, num, stats) -> weights`` for a head session; inputs the graph dropped (e.g. an
    empty ``cat``) are not fed. The input names are read once: serving calls this per request."""
    names = {i.name for i in session.get_inputs()}
    feed_cat, feed_num, feed_stats = "cat" in names, "num" in names, "stats" in names
    output = [OUTPUT_NAME]

    def run(cat: np.ndarray, num: np.ndarray, stats: np.ndarray) -> np.ndarray:
        feeds = {}
        if feed_cat:
            feeds["cat"] = np.ascontiguousarray(cat, dtype=np.int64)
        if feed_num:
            feeds["num"] = np.ascontiguousarray(num, dtype=np.float32)
        if feed_stats:
            feeds["stats"] = np.ascontiguousarray(stats, dtype=np.float32)
        return session.run(output, feeds)[0]

    return run


def run_session(session: Any, cat: np.ndarray, num: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """Run a head session once (see :func:`session_runner`)."""
    return session_runner(session)(cat, num, stats)
