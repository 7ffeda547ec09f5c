"""Named configurations of the marketplace and kuairand-sim worlds.

``default`` has clear personalisation headroom; ``homogeneous`` has one segment (none);
``bargain``, ``multi_objective`` and ``luxury`` differ in seed, segment mix, prices and number
of objectives and are not used for tuning any method.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

from blendrank.config import BaseConfig, load_config
from blendrank.errors import ConfigError
from blendrank.worlds.kuairand_sim_config import KuaiRandSimConfig
from blendrank.worlds.marketplace import MarketplaceConfig

ConfigT = TypeVar("ConfigT", bound=BaseConfig)

_BROWSERS = dict(name="browsers", click_bias=0.0, order_bias=-4.0, budget_log_mean=3.5, price_sensitivity=0.8,
                 pred_order_bias=1.2, age_bucket_mean=1.0)
_BARGAIN = dict(name="bargain_hunters", click_bias=-1.0, order_bias=-1.5, budget_log_mean=3.0, price_sensitivity=2.0,
                pred_order_bias=-0.8, pred_click_bias=0.4, age_bucket_mean=2.5)
_DECISIVE = dict(name="decisive_buyers", click_bias=-1.5, order_bias=-0.3, budget_log_mean=5.5, price_sensitivity=0.3,
                 pred_click_bias=-0.3, age_bucket_mean=4.0)

_BASE: dict[str, Any] = dict(
    segments=[dict(_BROWSERS, share=0.5), dict(_BARGAIN, share=0.3), dict(_DECISIVE, share=0.2)],
)

PRESETS: dict[str, dict[str, Any]] = {
    "default": _BASE,
    "quick": dict(_BASE, n_items=1500, n_users=3000),
    "homogeneous": dict(
        seed=11,
        segments=[dict(name="everyone", share=1.0, click_bias=-1.0, order_bias=-1.5, budget_log_mean=4.5,
                       budget_log_std=0.1, price_sensitivity=0.8)],
    ),
    "bargain": dict(
        seed=3,
        segments=[dict(_BROWSERS, share=0.2), dict(_BARGAIN, share=0.6), dict(_DECISIVE, share=0.2)],
        price_log_mean_range=(2.0, 5.0),
    ),
    "luxury": dict(
        seed=5,
        n_items=3000,
        segments=[dict(_BROWSERS, share=0.35), dict(_DECISIVE, share=0.45),
                  dict(_BARGAIN, share=0.2, budget_log_mean=3.8)],
        price_log_mean_range=(3.5, 6.5),
        value=dict(click=0.5, order=0.5, gmv=1.0),
    ),
    "multi_objective": dict(
        seed=7,
        segments=[dict(_BROWSERS, share=0.4, extra_shift={"cart": 0.5, "favorite": 1.0}),
                  dict(_BARGAIN, share=0.35, extra_shift={"cart": 1.0}),
                  dict(_DECISIVE, share=0.25, extra_shift={"favorite": -1.0})],
        extra_objectives=[
            dict(name="cart", base_logit=-1.0, quality_coef=0.4, order_coupling=0.8, value_weight=0.3),
            dict(name="favorite", base_logit=-2.5, quality_coef=0.8, order_coupling=0.2, value_weight=0.5),
        ],
    ),
}


def _preset_config(model: type[ConfigT], world: str, presets: dict[str, dict[str, Any]],
                   preset: str, config_path: str | None, overrides: list[str] | None,
                   seed: int | None) -> ConfigT:
    """``model`` from preset ``preset`` of ``presets`` (the ``world``'s), then an optional YAML
    file, then ``--set`` overrides (and ``--seed``)."""
    if preset not in presets:
        raise ConfigError(f"unknown {world} preset {preset!r}; choose one of {', '.join(presets)}")
    base = copy.deepcopy(presets[preset])  # overrides must never edit the shared preset
    if seed is not None:
        base["seed"] = seed
    return load_config(model, config_path, overrides, base=base)


def world_config(preset: str = "default", config_path: str | None = None, overrides: list[str] | None = None,
                 seed: int | None = None) -> MarketplaceConfig:
    """Preset, then an optional YAML file, then ``--set`` overrides (and ``--seed``)."""
    return _preset_config(MarketplaceConfig, "marketplace", PRESETS, preset, config_path, overrides,
                          seed)


# ----------------------------------------------------------------------------- kuairand-sim
#: Small world sizes (pool, users, candidates, logged sessions, session cap) for fast runs.
_KSIM_SMALL: dict[str, Any] = dict(max_pool=500, candidates=30, log_sessions=300,
                                   session=dict(max_impressions=60, exit_base=-2.7))
#: A teacher fitted in seconds on a subsample (tests); its AUCs are well below the full teacher's.
_KSIM_TINY_TEACHER: dict[str, Any] = dict(
    max_train_rows=6000,
    mtl=dict(model="mmoe", objectives=["click", "long_view", "like", "follow", "comment", "forward", "profile_enter",
                                       "hate", "play_time_ms"], regression=["play_time_ms"],
             esmm={k: "click" for k in ("long_view", "like", "follow", "comment", "forward", "profile_enter")},
             id_features=["user_id", "item_id"], embedding_dim=4, expert_dims=[16], n_experts=2, tower_dims=[8],
             min_count=3, epochs=2, patience=1, batch_size=512, position_bias_tower=False))

KUAIRAND_SIM_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "quick": dict(_KSIM_SMALL),
    "tiny": dict(_KSIM_SMALL, max_pool=300, max_users=1500, candidates=20, log_sessions=150,
                 session=dict(max_impressions=30, exit_base=-3.0), teacher=_KSIM_TINY_TEACHER, logger_max_rows=6000,
                 calibration=dict(sessions=60),
                 student=dict(objectives=["click", "long_view", "like", "follow", "comment", "forward", "profile_enter"],
                              esmm={k: "click" for k in ("long_view", "like", "follow", "comment", "forward", "profile_enter")},
                              embedding_dim=4, expert_dims=[16], n_experts=2, tower_dims=[8], epochs=2, patience=1,
                              position_bias_tower=False),
                 logger=dict(objectives=["click", "long_view", "like", "follow", "comment", "forward", "profile_enter"],
                             esmm={k: "click" for k in ("long_view", "like", "follow", "comment", "forward", "profile_enter")},
                             embedding_dim=4, expert_dims=[8], n_experts=1, tower_dims=[8], epochs=1, patience=1,
                             position_bias_tower=False)),
}


def kuairand_sim_config(preset: str = "default", config_path: str | None = None, overrides: list[str] | None = None,
                        seed: int | None = None) -> KuaiRandSimConfig:
    """kuairand-sim config: preset, then an optional YAML file, then ``--set`` overrides (and ``--seed``)."""
    return _preset_config(KuaiRandSimConfig, "kuairand-sim", KUAIRAND_SIM_PRESETS, preset,
                          config_path, overrides, seed)
