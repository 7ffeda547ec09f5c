"""blendrank: personalized multi-task fusion for ranking.

The Python API (:mod:`blendrank.api`) is importable from here: ``from blendrank import train,
load_policy, evaluate, rank, Policy``. It is loaded on first use, so ``import blendrank`` (and
the serving modules under it) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = ("Policy", "train", "load_policy", "evaluate", "rank")
__all__ = ["Policy", "__version__", "evaluate", "load_policy", "rank", "train"]


def __getattr__(name: str) -> Any:
    if name in _API:
        try:
            api = importlib.import_module("blendrank.api")
        except ModuleNotFoundError as exc:
            if exc.name != "torch":
                raise
            # A serving install has no PyTorch; the API trains, so it needs it.
            raise ModuleNotFoundError(f"blendrank.{name} needs PyTorch: pip install 'blendrank[train]'",
                                      name="torch") from None
        return getattr(api, name)
    raise AttributeError(f"module 'blendrank' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
