"""Two-tower candidate model with a popularity fallback.

Users and items are dense indices ``0..n_users-1`` / ``0..n_items-1`` (the world maps its ids).
Shapes: ``B`` requests, ``I`` items in the pool, ``N`` candidates kept, ``d`` embedding width.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from blendrank.config import BaseConfig
from blendrank.errors import ConfigError


class PrerankConfig(BaseConfig):
    """Two-tower prerank: training and candidate-sampling settings."""

    model: Literal["two_tower", "popularity"] = Field("two_tower", description="`two_tower` (learned, popularity for cold users) or `popularity` only.")
    dim: int = Field(8, ge=1, description="Embedding width of the user and item towers.")
    epochs: int = Field(4, ge=1, description="Passes over the logged impressions.")
    batch_size: int = Field(1024, ge=1, description="Impressions per Adam step.")
    lr: float = Field(0.05, gt=0, description="Adam learning rate.")
    l2: float = Field(1e-4, ge=0, description="L2 penalty on the embedding rows used in a batch.")
    sampled_negatives: int = Field(4, ge=0, description="Uniformly drawn pool items per training row added as "
                                   "negatives (the pool beyond the logged exposures must be ranked too).")
    logged_negatives: bool = Field(False, description="Also train on logged impressions without the positive "
                                   "signal as negatives. Off by default: under production's exposure bias they are "
                                   "mostly head videos, which teaches the model to avoid the head (measured on "
                                   "KuaiRand: recall@50 drops by a third).")
    min_user_positives: int = Field(5, ge=0, description="Users with fewer training positives are cold and "
                                    "get the popularity ranking.")
    popularity_smoothing: float = Field(1.0, gt=0, description="Added to every item's positive count "
                                        "before the log (popularity score = log(count + smoothing)).")
    temperature: float = Field(0.5, ge=0, description="Gumbel noise scale added to scores before the top-N "
                                "(0 = deterministic): spreads exposure beyond the head.")
    seed: int = Field(0, description="Seed of initialisation and shuffling.")


@dataclass
class Prerank:
    """A fitted prerank. ``user_vec`` is ``None`` when only popularity is available."""

    popularity: np.ndarray  # [I] log(positives + smoothing)
    user_vec: np.ndarray | None = None  # [U, d]
    item_vec: np.ndarray | None = None  # [I, d]
    item_bias: np.ndarray | None = None  # [I]
    user_warm: np.ndarray | None = None  # [U] bool
    temperature: float = 0.5

    @property
    def n_items(self) -> int:
        return len(self.popularity)

    def is_cold(self, users: np.ndarray) -> np.ndarray:
        """``[B]`` True where the popularity fallback is used (no model, unknown or cold user)."""
        users = np.asarray(users)
        if self.user_vec is None or self.user_warm is None:
            return np.ones(len(users), dtype=bool)
        known = (users >= 0) & (users < len(self.user_warm))
        cold = ~known
        cold[known] = ~self.user_warm[users[known]]
        return cold

    def scores(self, users: np.ndarray) -> np.ndarray:
        """``[B, I]`` candidate scores: two-tower logits for warm users, popularity for cold ones."""
        users = np.asarray(users)
        out = np.broadcast_to(self.popularity, (len(users), self.n_items)).astype(np.float32)
        cold = self.is_cold(users)
        if (~cold).any():
            warm = users[~cold]
            out[~cold] = self.user_vec[warm] @ self.item_vec.T + self.item_bias
        return out

    def candidates(self, users: np.ndarray, n: int, rng: np.random.Generator | None = None,
                   exclude: np.ndarray | None = None) -> np.ndarray:
        """``[B, N]`` distinct item indices per request: top-N of score + Gumbel noise.

        Args:
            users: ``[B]`` user indices.
            n: candidates per request (at most the pool size minus the excluded items).
            rng: source of the Gumbel noise (``None`` or temperature 0: deterministic top-N).
            exclude: optional ``[B, I]`` bool, items that must not be returned (already shown).
        """
        if n > self.n_items:
            raise ConfigError(f"prerank: {n} candidates requested from a pool of {self.n_items} items")
        s = self.scores(users)
        if rng is not None and self.temperature > 0:
            s = s + self.temperature * rng.gumbel(size=s.shape).astype(np.float32)
        if exclude is not None:
            s = np.where(exclude, -np.inf, s)
        idx = np.argpartition(-s, n - 1, axis=1)[:, :n]
        order = np.argsort(-np.take_along_axis(s, idx, 1), axis=1, kind="stable")
        return np.take_along_axis(idx, order, 1)

    def save(self, path: str | Path) -> None:
        arrays = {"popularity": self.popularity, "temperature": np.array(self.temperature)}
        if self.user_vec is not None:
            arrays.update(user_vec=self.user_vec, item_vec=self.item_vec, item_bias=self.item_bias, user_warm=self.user_warm)
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Prerank:
        z = np.load(path)
        get = lambda k: z[k] if k in z.files else None
        return cls(popularity=z["popularity"], user_vec=get("user_vec"), item_vec=get("item_vec"),
                   item_bias=get("item_bias"), user_warm=get("user_warm"), temperature=float(z["temperature"]))


def popularity_scores(items: np.ndarray, labels: np.ndarray, n_items: int, smoothing: float) -> np.ndarray:
    """``[I]`` log(positive count + smoothing) of each item."""
    counts = np.bincount(np.asarray(items)[np.asarray(labels) > 0], minlength=n_items)[:n_items]
    return np.log(counts + smoothing).astype(np.float32)


def fit_prerank(users: np.ndarray, items: np.ndarray, labels: np.ndarray, n_users: int, n_items: int,
                config: PrerankConfig | None = None) -> Prerank:
    """Fit the prerank on logged impressions.

    Args:
        users, items: ``[R]`` dense indices of each logged impression.
        labels: ``[R]`` 0/1 positive signal (e.g. click or long view).
        n_users, n_items: sizes of the index spaces (the pool is ``0..n_items-1``).

    The two-tower logit ``u·v + b_i`` is trained with binary cross-entropy on the positive
    impressions (and the others when ``logged_negatives``) plus ``sampled_negatives`` uniformly
    drawn pool items per row (label 0).
    """
    cfg = config or PrerankConfig()
    users, items, labels = (np.asarray(a) for a in (users, items, labels))
    if not (len(users) == len(items) == len(labels)):
        raise ConfigError("fit_prerank: users, items and labels must have the same length")
    pop = popularity_scores(items, labels, n_items, cfg.popularity_smoothing)
    if cfg.model == "popularity" or len(users) == 0:
        return Prerank(popularity=pop, temperature=cfg.temperature)
    positives = np.bincount(users[labels > 0], minlength=n_users)[:n_users]
    if not cfg.logged_negatives:
        keep = labels > 0
        users, items, labels = users[keep], items[keep], labels[keep]
    gen = torch.Generator().manual_seed(cfg.seed)
    u_emb = torch.nn.Embedding(n_users, cfg.dim)
    i_emb = torch.nn.Embedding(n_items, cfg.dim)
    with torch.no_grad():
        u_emb.weight.normal_(0, 0.1, generator=gen)
        i_emb.weight.normal_(0, 0.1, generator=gen)
    bias = torch.nn.Parameter(torch.from_numpy(pop - pop.mean()).clone())
    opt = torch.optim.Adam([u_emb.weight, i_emb.weight, bias], lr=cfg.lr)
    U, I, Y = torch.from_numpy(users.astype(np.int64)), torch.from_numpy(items.astype(np.int64)), torch.from_numpy(labels.astype(np.float32))
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(U), generator=gen)
        for s in range(0, len(U), cfg.batch_size):
            b = perm[s : s + cfg.batch_size]
            u, i, y = U[b], I[b], Y[b]
            if cfg.sampled_negatives:
                neg = torch.randint(n_items, (len(b) * cfg.sampled_negatives,), generator=gen)
                u = torch.cat([u, u.repeat(cfg.sampled_negatives)])
                i = torch.cat([i, neg])
                y = torch.cat([y, torch.zeros(len(neg))])
            ue, ie = u_emb(u), i_emb(i)
            logit = (ue * ie).sum(-1) + bias[i]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y)
            loss = loss + cfg.l2 * ((ue**2).sum(-1).mean() + (ie**2).sum(-1).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return Prerank(popularity=pop, user_vec=u_emb.weight.detach().numpy().copy(), item_vec=i_emb.weight.detach().numpy().copy(),
                   item_bias=bias.detach().numpy().copy(), user_warm=positives >= max(cfg.min_user_positives, 1),
                   temperature=cfg.temperature)


def recall_at_n(prerank: Prerank, users: np.ndarray, items: np.ndarray, n: int, chunk: int = 2048) -> float:
    """Share of held-out positive ``(user, item)`` pairs whose item is in the user's
    deterministic top-``n`` (no noise, nothing excluded); users scored ``chunk`` at a time."""
    users, items = np.asarray(users), np.asarray(items)
    if not len(users):
        return float("nan")
    uniq, inv = np.unique(users, return_inverse=True)
    hit = np.zeros(len(users), dtype=bool)
    for s in range(0, len(uniq), chunk):
        top = prerank.candidates(uniq[s : s + chunk], n)
        rows = (inv >= s) & (inv < s + chunk)
        hit[rows] = (top[inv[rows] - s] == items[rows, None]).any(1)
    return float(hit.mean())
