"""The fusion a policy applies (:class:`FusionSpec`, saved as ``fusion.json``) and the formula
names, without torch: serving reads them, and a serving install has no torch
(:mod:`blendrank.fusion.artifact` re-exports them beside the torch policy files)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from blendrank.config import BaseConfig
from blendrank.errors import DataError

Formula = Literal["log_linear", "additive"]
FORMULAS: tuple[str, ...] = ("log_linear", "additive")
#: Feature roles a fusion policy reads (its state): user and context, never item features.
POLICY_ROLES = ("user", "context")


class FusionSpec(BaseConfig):
    """Which columns are fused and how; fitted on the training split and saved with a policy."""

    objectives: list[str] = Field(description="Objectives whose pred_<name> are fusion inputs, in order.")
    use_price: bool = Field(False, description="Add price / price_scale as the last fusion input.")
    price_scale: float = Field(1.0, gt=0, description="Median training price (price inputs are relative to it).")
    formula: Formula = Field("log_linear", description="Fusion formula.")
    floor: float = Field(1e-3, gt=0, description="Floor b_k inside log(x + b_k).")
    stats_top: int = Field(10, ge=1, description="Top-N size of the list statistics in the state.")

    @property
    def inputs(self) -> list[str]:
        return [*self.objectives, *(["price"] if self.use_price else [])]


def read_spec(path: Path) -> FusionSpec:
    """The :class:`FusionSpec` in a ``fusion.json``; DataError naming the file when unreadable."""
    try:
        return FusionSpec.model_validate_json(path.read_bytes())
    except (OSError, ValidationError, ValueError) as exc:
        raise DataError(f"{path}: unreadable or not a blendrank fusion.json ({first_line(exc)})") from None


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 160 characters of it), for one-line errors."""
    text = str(exc).splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__
