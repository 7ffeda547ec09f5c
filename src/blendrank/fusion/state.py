"""Policy state: user/context features plus summary statistics of the candidate list."""

from __future__ import annotations

import torch
from torch import Tensor


def list_stats(features: Tensor, mask: Tensor, top: int = 10) -> Tensor:
    """Summary of each fusion feature over a request's real candidates.

    Args:
        features: ``[B, L, K]`` fusion features (e.g. ``log(p + b)`` per objective, log price).
        mask: ``[B, L]`` True on real candidates.
        top: size of the "top" set whose mean is reported (by each feature separately).

    Returns:
        ``[B, 4K]``: per feature its mean, std, max and top-``top`` mean, then nothing else;
        requests with no candidate give zeros.
    """
    m = mask.unsqueeze(-1).to(features.dtype)
    n = m.sum(1).clamp_min(1.0)
    mean = (features * m).sum(1) / n
    var = (((features - mean.unsqueeze(1)) * m) ** 2).sum(1) / n
    neg = torch.finfo(features.dtype).min
    masked = features.masked_fill(~mask.unsqueeze(-1), neg)
    t = min(top, features.shape[1])
    top_vals = masked.topk(t, dim=1).values  # [B, t, K]
    top_valid = top_vals > neg / 2
    top_mean = (top_vals * top_valid).sum(1) / top_valid.sum(1).clamp_min(1)
    mx = torch.where(mask.any(1, keepdim=True), masked.max(1).values, torch.zeros_like(mean))
    return torch.cat([mean, var.sqrt(), mx, top_mean], -1)
