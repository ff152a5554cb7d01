"""The result every backend returns, and the backend registry."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ppgen.errors import UserError


@dataclass
class Fit:
    """A trained (or sampled) pair with its backend's state and history.

    ``history`` holds one dict per epoch (SVI/adversarial) or per chain summary
    (MCMC); ``state`` is what the backend needs to continue (optimizer state,
    epoch, RNG seed) and is what a checkpoint stores.
    """

    pair: Any
    backend: str
    history: list[dict] = field(default_factory=list)
    state: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    samples: dict | None = None
    stopped: str | None = None

    def checkpoint(self) -> dict:
        """Everything needed to resume, as tensors and plain Python values (``weights_only``-loadable).

        A snapshot: deep-copied, so training on does not change a checkpoint kept in memory.
        """
        return copy.deepcopy({"model": self.pair.state_dict(), "backend": self.backend, "history": self.history,
                              "state": self.state, "options": self.options})

    def to_inference_data(self, **kwargs):
        """Posterior draws as ArviZ ``InferenceData`` (see :mod:`ppgen.diagnostics`)."""
        from ppgen.diagnostics import to_inference_data  # imported lazily: diagnostics sits above inference

        return to_inference_data(self, **kwargs)

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
