"""Actor and ensemble critics of IntegratedRL-MTF: small MLPs; the ``G x M`` critics are one
batched ensemble (a stack of independent weights evaluated with ``bmm``)."""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import Tensor, nn


class EnsembleLinear(nn.Module):
    """``n`` independent linear layers applied to ``x [n, B, in]`` → ``[n, B, out]``."""

    def __init__(self, n: int, d_in: int, d_out: int):
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, d_out).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleCritic(nn.Module):
    """``groups x members`` critics ``Q_ij(s, a)``; ``forward`` returns ``[G, M, B]``."""

    def __init__(self, state_dim: int, action_dim: int, hidden: list[int], groups: int, members: int):
        super().__init__()
        self.groups, self.members = groups, members
        n, dims = groups * members, [state_dim + action_dim, *hidden]
        self.layers = nn.ModuleList(EnsembleLinear(n, a, b) for a, b in pairwise(dims))
        self.head = EnsembleLinear(n, dims[-1], 1)

    def forward(self, state: Tensor, action: Tensor) -> Tensor:
        n = self.groups * self.members
        x = torch.cat([state, action], -1).unsqueeze(0).expand(n, -1, -1)
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x).squeeze(-1).view(self.groups, self.members, -1)


class Actor(nn.Module):
    """Deterministic policy ``mu(s)``: MLP → tanh → affine map onto the action box ``[low, high]``.

    The last layer starts at (almost) zero weights with its bias set so that every state maps to
    ``init_action`` (the production fusion), the baseline policy of the first exploration round.
    """

    def __init__(self, state_dim: int, low: Tensor, high: Tensor, hidden: list[int], init_action: Tensor):
        super().__init__()
        self.register_buffer("low", low.float())
        self.register_buffer("high", high.float())
        dims, layers = [state_dim, *hidden], []
        for a, b in pairwise(dims):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(dims[-1], len(low))
        with torch.no_grad():
            self.head.weight.mul_(0.01)
            u = ((init_action.float() - self.low) / (self.high - self.low) * 2 - 1).clamp(-0.99, 0.99)
            self.head.bias.copy_(torch.atanh(u))

    def forward(self, state: Tensor) -> Tensor:
        u = torch.tanh(self.head(self.body(state)))
        return self.low + (u + 1) * 0.5 * (self.high - self.low)


def polyak(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) * target + tau * source``."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            t.lerp_(s, tau)
