"""Thin functions over ``torch.distributed`` for running training under ``torchrun``.

Everything here is a no-op in a plain single-process run (``WORLD_SIZE`` unset or 1), so trainers
call these functions unconditionally. Gradients are synchronised by PyTorch's own
:class:`~torch.nn.parallel.DistributedDataParallel` (:func:`wrap_ddp`); see ``docs/scaling.md``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


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


def default_backend() -> str:
    """``$BLENDRANK_DIST_BACKEND``, else gloo. Set ``nccl`` for GPU training (MTL with
    ``device: cuda``); GRADE and IntegratedRL keep their tensors on the CPU and need gloo."""
    return os.environ.get("BLENDRANK_DIST_BACKEND") or "gloo"


def init_from_env(backend: str | None = None, timeout_s: float = 600.0) -> tuple[int, int]:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and return ``(rank, world_size)``.

    With ``WORLD_SIZE`` unset or 1 nothing is initialised and ``(0, 1)`` is returned. The
    backend is ``backend``, else :func:`default_backend`. With NCCL the process uses GPU
    ``LOCAL_RANK``. Calling it again after the group exists just returns the current pair."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws <= 1:
        return 0, 1
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE>1 but this PyTorch build has no torch.distributed")
    backend = backend or default_backend()
    if torch.cuda.is_available():  # one GPU per process on each machine
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def device() -> torch.device:
    """The device this rank trains on: its ``LOCAL_RANK`` GPU under NCCL, else the CPU."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def destroy() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place; returns it. Identity in a single process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


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


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on at least one rank (every rank gets the same answer)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device())
    return bool(all_reduce_sum(t).item() > 0)


def gather_objects(obj: T) -> list[T]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (picklable objects; identity in a single process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(items: Sequence[T] | torch.Tensor, rank_: int | None = None, world: int | None = None):
    """This rank's share ``items[rank::world]`` (everything in a single process)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return items[r::w]


def wrap_ddp(module: nn.Module) -> nn.Module:
    """``module`` wrapped in :class:`DistributedDataParallel` under torchrun (rank 0's parameters
    and buffers are broadcast to every rank at construction; gradients are averaged in buckets
    during ``backward``); ``module`` itself in a single process. All parameters used in a step
    must be used inside the wrapper's ``forward``. ``find_unused_parameters`` is on because
    ablations leave some heads unused."""
    if not is_distributed():
        return module
    dev = device()
    ids = [dev.index] if dev.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)
