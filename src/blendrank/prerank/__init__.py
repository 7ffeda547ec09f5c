"""Prerank: pick N candidates per request from a world's item pool (docs/worlds.md).

A light two-tower model (user and item embeddings plus an item bias) trained on logged
impressions, with a popularity fallback for cold users and when no model is fitted.
"""

from blendrank.prerank.model import Prerank, PrerankConfig, fit_prerank, recall_at_n

__all__ = ["Prerank", "PrerankConfig", "fit_prerank", "recall_at_n"]
