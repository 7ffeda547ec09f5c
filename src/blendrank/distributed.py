"""Thin helpers over ``torch.distributed`` for running training under ``torchrun``.

Everything here is a no-op in a plain single-process run (``WORLD_SIZE`` unset or 1), so code
can call these helpers unconditionally. See ``docs/scaling.md``.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single-process run): the rank that logs and writes files."""
    return rank() == 0


def init_from_env(backend: str | None = None, timeout_s: float = 600.0) -> tuple[int, int]:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``) and return ``(rank, world_size)``.

    With ``WORLD_SIZE`` unset or 1 nothing is initialised and ``(0, 1)`` is returned. The
    backend is ``backend``, else ``$BLENDRANK_DIST_BACKEND``, else ``gloo`` (CPU training).
    Calling it again after the group exists just returns the current ``(rank, world_size)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws <= 1:
        return 0, 1
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE>1 but this PyTorch build has no torch.distributed")
    dist.init_process_group(backend=backend or os.environ.get("BLENDRANK_DIST_BACKEND", "gloo"),
                            timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def destroy() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks, in place; returns it. Identity in a single process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped per-rank tensors along dim 0, in rank order."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, 0)


def all_reduce_grads(module: torch.nn.Module) -> None:
    """Average the gradients of ``module`` over ranks in one flat all-reduce (what
    ``DistributedDataParallel`` does in buckets). Parameters without a gradient are skipped;
    every rank must have the same set of them (true when all ranks run the same graph)."""
    if not is_distributed():
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_mean(flat)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n
