"""Fusion policies: request state → fusion weights on the simplex.

``DirichletPolicy`` is GRADE's policy (docs/grade.md): an MLP gives mean logits ``z(s)`` and a
concentration head ``c(s)``; ``m = (1 − ε)·softmax(z) + ε/K``, ``κ = κ_min + softplus(c)``, ``α = κ·m`` and
``π(w|s) = Dir(w; α)``. Serving uses the deterministic mean ``m(s)``. Ablations swap the
exploration law (Gaussian on logits then softmax, Gaussian on weights then clip-and-renormalise)
or fix ``κ``.

Shapes: ``B`` requests, ``K`` fusion inputs, ``G`` sampled weight vectors per request.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Exploration = Literal["dirichlet", "gaussian_logits", "gaussian_weights"]
ACTION_FLOOR = 1e-6


class StateEncoder(nn.Module):
    """Embeds categorical user/context features and concatenates numeric ones and list stats."""

    def __init__(self, cardinalities: list[int], n_numeric: int, emb_dim: int = 4):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(c, emb_dim) for c in cardinalities)
        self.out_dim = emb_dim * len(cardinalities) + n_numeric

    def forward(self, cat: Tensor, num: Tensor) -> Tensor:
        """``cat [B, n_cat]`` int64, ``num [B, n_num]`` float → ``[B, out_dim]``."""
        parts = [emb(cat[:, j]) for j, emb in enumerate(self.embeddings)]
        return torch.cat([*parts, num], dim=-1)


class DirichletPolicy(nn.Module):
    """``state → Dir(κ(s)·m(s))`` with a learned, state-dependent concentration."""

    def __init__(self, cardinalities: list[int], n_numeric: int, n_stats: int, k: int, hidden: tuple[int, ...] = (64, 64),
                 emb_dim: int = 4, kappa_min: float = 0.05, kappa_init: float = 20.0,
                 exploration: Exploration = "dirichlet", fixed_kappa: bool = False, gaussian_std_init: float = 0.3,
                 mean_floor: float = 0.05):
        super().__init__()
        if kappa_init <= kappa_min:
            raise ValueError("kappa_init must exceed kappa_min")
        self.k, self.kappa_min, self.exploration, self.fixed_kappa = k, kappa_min, exploration, fixed_kappa
        self.mean_floor = mean_floor
        self.encoder = StateEncoder(cardinalities, n_numeric, emb_dim)
        # List statistics are standardised with training-set moments (set_stats_normalizer).
        self.register_buffer("stats_mean", torch.zeros(n_stats))
        self.register_buffer("stats_std", torch.ones(n_stats))
        layers: list[nn.Module] = []
        d = self.encoder.out_dim + n_stats
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.trunk = nn.Sequential(*layers)
        self.mean_head = nn.Linear(d, k)
        self.conc_head = nn.Linear(d, 1)
        # softplus^-1(kappa_init - kappa_min): start at a chosen exploration width.
        c0 = math.log(math.expm1(kappa_init - kappa_min))
        nn.init.zeros_(self.conc_head.weight)
        nn.init.constant_(self.conc_head.bias, c0)
        self.log_std = nn.Parameter(torch.full((k,), math.log(gaussian_std_init)))  # Gaussian ablations only
        nn.init.zeros_(self.mean_head.weight)
        nn.init.zeros_(self.mean_head.bias)

    # ------------------------------------------------------------------ heads
    def set_stats_normalizer(self, stats: Tensor) -> None:
        """Store the mean and std of training list statistics ``[N, n_stats]``."""
        self.set_stats_moments(stats.mean(0), stats.std(0))

    @torch.no_grad()
    def set_stats_moments(self, mean: Tensor, std: Tensor) -> None:
        """Store the mean and std ``[n_stats]`` of the training list statistics (e.g. from a
        streaming pass); the std is floored at 1e-3."""
        self.stats_mean.copy_(mean)
        self.stats_std.copy_(std.clamp_min(1e-3))

    def heads(self, cat: Tensor, num: Tensor, stats: Tensor) -> tuple[Tensor, Tensor]:
        """Mean logits ``z [B, K]`` and concentration ``κ [B]`` from user/context features
        (``cat [B, n_cat]``, ``num [B, n_num]``) and list statistics ``stats [B, n_stats]``."""
        x = torch.cat([self.encoder(cat, num), (stats - self.stats_mean) / self.stats_std], -1)
        h = self.trunk(x)
        conc = self.conc_head(h).squeeze(-1)
        if self.fixed_kappa:
            conc = self.conc_head.bias.expand_as(conc)
        return self.mean_head(h), self.kappa_min + F.softplus(conc)

    def mean(self, z: Tensor) -> Tensor:
        """``m = (1 − ε)·softmax(z) + ε/K``: the floor ε keeps every input explorable."""
        m = torch.softmax(z, -1)
        return m if self.mean_floor == 0 else (1 - self.mean_floor) * m + self.mean_floor / self.k

    def mean_weights(self, cat: Tensor, num: Tensor, stats: Tensor) -> Tensor:
        """Deterministic serving weights ``m(s) [B, K]``."""
        return self.mean(self.heads(cat, num, stats)[0])

    # ------------------------------------------------------------------ distribution
    def alpha(self, z: Tensor, kappa: Tensor) -> Tensor:
        return (kappa.unsqueeze(-1) * self.mean(z)).clamp_min(1e-4)

    @torch.no_grad()
    def sample(self, z: Tensor, kappa: Tensor, g: int) -> Tensor:
        """``[B, G, K]`` actions from the exploration law (simplex weights, or logits for
        ``gaussian_logits``; see :meth:`to_weights`). Seed with ``torch.manual_seed``."""
        if self.exploration == "dirichlet":
            w = torch.distributions.Dirichlet(self.alpha(z, kappa)).sample((g,)).transpose(0, 1)
            w = w.clamp_min(ACTION_FLOOR)
            return w / w.sum(-1, keepdim=True)
        eps = torch.randn(z.shape[0], g, self.k)
        std = self.log_std.exp()
        if self.exploration == "gaussian_logits":
            return z.unsqueeze(1) + std * eps
        w = (self.mean(z).unsqueeze(1) + std * eps).clamp_min(0.0)
        return w / w.sum(-1, keepdim=True).clamp_min(1e-12)

    def to_weights(self, action: Tensor) -> Tensor:
        """Map sampled actions to simplex weights (identity except for Gaussian-on-logits)."""
        return torch.softmax(action, -1) if self.exploration == "gaussian_logits" else action

    def log_prob(self, z: Tensor, kappa: Tensor, action: Tensor) -> Tensor:
        """``log π(action | s)`` for ``action [B, G, K]`` → ``[B, G]``."""
        if self.exploration == "dirichlet":
            a = action.clamp_min(ACTION_FLOOR)
            a = a / a.sum(-1, keepdim=True)
            return torch.distributions.Dirichlet(self.alpha(z, kappa).unsqueeze(1)).log_prob(a)
        mean = z if self.exploration == "gaussian_logits" else self.mean(z)
        # Gaussian on weights: the density of the pre-clip sample is used as the (approximate)
        # likelihood of the renormalised action; documented as an ablation, not a true density.
        return torch.distributions.Normal(mean.unsqueeze(1), self.log_std.exp()).log_prob(action).sum(-1)

    def entropy(self, z: Tensor, kappa: Tensor) -> Tensor:
        """``[B]`` entropy of the exploration law."""
        if self.exploration == "dirichlet":
            return torch.distributions.Dirichlet(self.alpha(z, kappa)).entropy()
        return torch.distributions.Normal(torch.zeros_like(z), self.log_std.exp()).entropy().sum(-1)

    def kl(self, z: Tensor, kappa: Tensor, z_ref: Tensor, kappa_ref: Tensor) -> Tensor:
        """Exact ``KL(π_θ ‖ π_ref)`` per request ``[B]``."""
        if self.exploration == "dirichlet":
            return torch.distributions.kl_divergence(
                torch.distributions.Dirichlet(self.alpha(z, kappa)), torch.distributions.Dirichlet(self.alpha(z_ref, kappa_ref)))
        mean = z if self.exploration == "gaussian_logits" else self.mean(z)
        mean_ref = z_ref if self.exploration == "gaussian_logits" else self.mean(z_ref)
        var = self.log_std.exp() ** 2
        return ((mean - mean_ref) ** 2 / (2 * var)).sum(-1)
