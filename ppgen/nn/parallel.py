"""Collectives for data-parallel training on ``torch.distributed``; each is a no-op in a single process.

A network whose training step changes state outside the gradients (the VQ-VAE's EMA codebook)
sums its batch statistics here, so N processes, each on its shard of a batch, update that state
exactly as one process on the whole batch does. The process group itself is set up by the
training loop (:mod:`ppgen.inference.distributed`).
"""

from __future__ import annotations

import torch
from torch import distributed as dist


def world_size() -> int:
    """How many processes train together (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if world_size() > 1 else 0


def all_sum_(*tensors: torch.Tensor) -> None:
    """Replace every tensor by its sum over the processes, in place (one collective for all of them)."""
    if world_size() == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1).to(tensors[0].dtype) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """The rows of ``t`` of every process, concatenated in rank order (each process holds as many rows)."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def broadcast_(t: torch.Tensor, src: int = 0) -> None:
    """Overwrite ``t`` with process ``src``'s value, in place."""
    if world_size() > 1:
        dist.broadcast(t, src)
