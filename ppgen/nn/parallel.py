"""Collectives for data-parallel training on ``torch.distributed``; each is a no-op in a single process.

A network whose training step changes state outside the gradients (the VQ-VAE's EMA codebook)
sums its batch statistics here, so N processes, each on its shard of a batch, update that state
exactly as one process on the whole batch does, and draws what stands for the whole batch (a
restarted code's row) from the torch stream every process shares during a step
(:func:`whole_batch_draws`). The process group itself is set up by the training loop
(:mod:`ppgen.inference.distributed`), and so is that stream.
"""

from __future__ import annotations

import contextlib

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


class SharedStream:
    """A torch RNG stream beside the process's own, seeded ``seed`` on every process: inside ``with stream:`` torch
    draws from it (CPU, and ``device``'s generator when it is a GPU); on leaving, the process's own stream is back
    where it was. Entering it again inside is a no-op (one draw goes on in the shared stream)."""

    def __init__(self, seed: int, device: torch.device | str = "cpu"):
        device = torch.device(device)
        self.device = device if device.type == "cuda" else None
        self._depth = 0
        own = self._state()
        torch.manual_seed(seed)
        self.state = self._state()
        self._restore(own)

    def _state(self) -> tuple:
        return torch.get_rng_state(), (torch.cuda.get_rng_state(self.device) if self.device is not None else None)

    def _restore(self, state: tuple) -> None:
        torch.set_rng_state(state[0])
        if self.device is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    def __enter__(self) -> SharedStream:
        self._depth += 1
        if self._depth == 1:
            self._own = self._state()
            self._restore(self.state)
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.state = self._state()
            self._restore(self._own)


_shared: SharedStream | None = None


def share_stream(stream: SharedStream | None) -> None:
    """Make ``stream`` the one :func:`whole_batch_draws` uses (None: none, the process's own stream)."""
    global _shared
    _shared = stream


def whole_batch_draws() -> contextlib.AbstractContextManager:
    """A context for a draw that stands for the whole batch, the same on every process: inside a data-parallel step
    it draws from the stream the processes share (which one process uses as its only stream, so N processes draw
    what one process draws); elsewhere it changes nothing."""
    return _shared if _shared is not None else contextlib.nullcontext()
