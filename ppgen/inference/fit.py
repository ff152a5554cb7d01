"""The result every backend returns, its training state, and the backend registry."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ppgen.errors import UserError


@dataclass
class TrainState:
    """Where a training run stands: what a checkpoint stores beside the weights and the history.

    ``engine`` is the engine's own resumable state (optimizer states, a critic's weights), as
    tensors and plain values; ``best*`` are kept when the loop monitors a history column.
    Item access (``state["epoch"]``) reads the fields, for code written against the earlier dict.
    """

    epoch: int = 0
    engine: dict = field(default_factory=dict)
    best_epoch: int | None = None
    best_score: float | None = None
    best: dict | None = None

    def __getitem__(self, key: str) -> Any:
        if key in self.__dataclass_fields__:
            return getattr(self, key)
        return self.engine[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


@dataclass
class Fit:
    """A trained (or sampled) pair with its backend's state and history.

    ``history`` holds one dict per epoch (SVI/adversarial) or per chain summary
    (MCMC); ``state`` is a :class:`TrainState` for training backends (what a checkpoint
    stores) and the sampler's draws' statistics for NUTS.
    """

    pair: Any
    backend: str
    history: list[dict] = field(default_factory=list)
    state: Any = field(default_factory=TrainState)
    options: dict = field(default_factory=dict)
    samples: dict | None = None
    stopped: str | None = None

    def checkpoint(self) -> dict:
        """Everything needed to resume, as tensors and plain Python values (``weights_only``-loadable).

        A snapshot: deep-copied, so training on does not change a checkpoint kept in memory.
        """
        state = dataclasses.asdict(self.state) if isinstance(self.state, TrainState) else self.state
        return copy.deepcopy({"model": self.pair.state_dict(), "backend": self.backend, "history": self.history,
                              "state": state, "options": self.options})

    @property
    def last(self) -> dict:
        return self.history[-1] if self.history else {}


BACKENDS: dict[str, Callable[..., Fit]] = {}


def register(name: str):
    def deco(fn):
        BACKENDS[name] = fn
        return fn

    return deco


def fit(pair, data, backend: str = "svi", **options) -> Fit:
    """Train or sample ``pair`` on ``data`` with a backend ("svi", "nuts", "adversarial")."""
    from ppgen.data import Dataset, from_tensor

    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(sorted(BACKENDS))}")
    if not isinstance(data, Dataset):
        data = from_tensor(torch.as_tensor(data))
    return BACKENDS[backend](pair, data, **options)
