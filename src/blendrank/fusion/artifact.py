"""The trained-policy artifact: the fusion it applies (:class:`FusionSpec`), the policy network's
configuration (:class:`PolicyConfig`) and the files a policy directory holds, validated in one
place for training, ``export``, ``eval`` and serving.

A policy directory: ``policy.pt`` (weights and shapes), ``fusion.json`` (:class:`FusionSpec`),
``config.json`` (the training config; its ``policy`` section builds the network),
``feature_center.json`` (the user/context feature transform, read by the caller).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field

from blendrank.checkpoint import atomic_torch_save
from blendrank.config import BaseConfig
from blendrank.errors import DataError
from blendrank.fusion.policy import DirichletPolicy, Exploration

# The artifact's torch-free half (serving reads it) lives in blendrank.fusion.spec.
from blendrank.fusion.spec import POLICY_ROLES, FusionSpec, first_line, read_spec  # noqa: F401

POLICY_FILES = ("policy.pt", "feature_center.json", "fusion.json", "config.json")


class PolicyConfig(BaseConfig):
    """The fusion policy network ``state → Dir(κ(s)·m(s))``."""

    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [64, 64],
                                                      description="MLP hidden sizes (each ≥ 1).")
    emb_dim: int = Field(4, ge=1, description="Embedding size of each user/context categorical feature.")
    kappa_min: float = Field(0.05, gt=0, description="κ_min: floor of the Dirichlet total concentration.")
    kappa_init: float = Field(30.0, gt=0, description="Initial total concentration κ (exploration width).")
    exploration: Exploration = Field("dirichlet", description="Exploration law: dirichlet (GRADE), gaussian_logits, gaussian_weights (ablations).")
    fixed_kappa: bool = Field(False, description="Use one learned κ for all states instead of the state-dependent head (ablation).")
    gaussian_std_init: float = Field(0.1, gt=0, description="Initial std of the Gaussian ablations.")
    mean_floor: float = Field(0.05, ge=0, lt=1, description="ε in m = (1−ε)·softmax(z) + ε/K: keeps every fusion input "
                              "explorable (without it Stage 1 can drive an input's weight, and so its Dirichlet α, to ~0 "
                              "and Stage 2 never samples it again).")


def make_policy(cfg: PolicyConfig, cardinalities: list[int], n_numeric: int, n_stats: int, k: int) -> DirichletPolicy:
    return DirichletPolicy(cardinalities, n_numeric, n_stats, k, hidden=tuple(cfg.hidden), emb_dim=cfg.emb_dim,
                           kappa_min=cfg.kappa_min, kappa_init=cfg.kappa_init, exploration=cfg.exploration,
                           fixed_kappa=cfg.fixed_kappa, gaussian_std_init=cfg.gaussian_std_init,
                           mean_floor=cfg.mean_floor)


def save_policy(out: Path, policy: DirichletPolicy, spec: FusionSpec, cardinalities: list[int], n_numeric: int,
                config_json: str) -> None:
    """Write ``policy.pt``, ``fusion.json`` and ``config.json`` (the caller writes the feature center)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"state_dict": policy.state_dict(), "cardinalities": list(cardinalities), "n_numeric": n_numeric,
                       "n_stats": int(policy.stats_mean.numel()), "k": policy.k}, out / "policy.pt")
    (out / "fusion.json").write_text(spec.model_dump_json(indent=2))
    (out / "config.json").write_text(config_json)


def load_policy(path: str | Path) -> tuple[DirichletPolicy, FusionSpec, dict[str, Any]]:
    """The policy network (eval mode), its fusion spec and its training config (a dict) from a
    policy directory; DataError naming the missing or corrupt file."""
    path = Path(path)
    missing = [n for n in POLICY_FILES if not (path / n).exists()]
    if missing:
        raise DataError(f"{path}: not a trained policy directory (missing {', '.join(missing)}); "
                        "train one with `blendrank train --method grade`")
    spec = read_spec(path / "fusion.json")
    try:
        config = json.loads((path / "config.json").read_text())
        policy_cfg = PolicyConfig.model_validate(config.get("policy", {}))
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"{path / 'config.json'}: unreadable or not a blendrank training config ({first_line(exc)})") from None
    try:
        blob = torch.load(path / "policy.pt", weights_only=True)
        policy = make_policy(policy_cfg, blob["cardinalities"], blob["n_numeric"], blob["n_stats"], blob["k"])
        policy.load_state_dict(blob["state_dict"])
    except Exception as exc:  # noqa: BLE001 - whatever torch raises, the file is unusable
        raise DataError(f"{path / 'policy.pt'}: corrupt or truncated policy weights ({first_line(exc)})") from None
    if policy.k != len(spec.inputs):
        raise DataError(f"{path}: policy has {policy.k} outputs but fusion.json lists {len(spec.inputs)} inputs {spec.inputs}")
    return policy.eval(), spec, config
