"""The result every backend returns, its training state, and the backend registry."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ppgen.errors import UserError


class _ItemAccess:
    """``state["name"]`` and ``state.get("name")`` read the fields (then ``_more``), for code written against the
    earlier dict states."""

    _more = ""  # the name of a dict field whose keys are also readable as items

    def __getitem__(self, key: str) -> Any:
        if key in self.__dataclass_fields__:
            return getattr(self, key)
        if self._more:
            return getattr(self, self._more)[key]
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


@dataclass
class TrainState(_ItemAccess):
    """Where a training run stands: what a checkpoint stores beside the weights and the history.

    ``engine`` is the engine's own resumable state (optimizer states, a critic's weights), as
    tensors and plain values; ``best*`` are kept when the loop monitors a history column.
    Item access (``state["epoch"]``, ``state["optimizer"]`` from ``engine``) reads the fields.
    """

    _more = "engine"

    epoch: int = 0
    engine: dict = field(default_factory=dict)
    best_epoch: int | None = None
    best_score: float | None = None
    best: dict | None = None


@dataclass
class SamplerState(_ItemAccess):
    """What a sampler (NUTS) leaves beside its draws: the observed examples ``x`` and their input columns
    (``inputs``, by name), the per-draw statistics (chain, draw[, point]), the engine that ran ("numpyro" or
    "pyro"), the coordinates and dims of ArviZ's groups, and ``extra`` (the adapted inverse mass matrix);
    ``state["inverse_mass_matrix"]`` reads ``extra``."""

    _more = "extra"

    x: torch.Tensor
    sample_stats: dict
    engine: str
    coords: dict = field(default_factory=dict)
    dims: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)


@dataclass
class Fit:
    """A trained (or sampled) pair with its backend's state and history.

    ``history`` holds one dict per epoch (SVI/adversarial) or per chain summary
    (MCMC); ``state`` is a :class:`TrainState` for training backends (what a checkpoint
    stores) and a :class:`SamplerState` for NUTS; both read as dicts too (``state["epoch"]``).
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
        state = dataclasses.asdict(self.state)
        return copy.deepcopy({"model": self.pair.state_dict(), "backend": self.backend, "history": self.history,
                              "state": state, "options": self.options})

    @property
    def last(self) -> dict:
        return self.history[-1] if self.history else {}


BACKENDS: dict[str, Callable[..., Fit]] = {}
#: the options dataclass of each backend that has one (``ppgen.fit(..., options=...)``)
OPTIONS: dict[str, type] = {}


def register(name: str, options: type | None = None):
    """Register a backend function under ``name``, with its options dataclass if it has one."""
    def deco(fn):
        BACKENDS[name] = fn
        if options is not None:
            OPTIONS[name] = options
        return fn

    return deco


def fit(pair, data, backend: str = "svi", options: Any = None, **values) -> Fit:
    """Train or sample ``pair`` on ``data`` with a backend ("svi", "nuts", "adversarial").

    The backend's options come as keywords (``lr=1e-3``) or as its options dataclass (``options=SVIOptions(...)``);
    keywords given beside the object replace its values.
    """
    from ppgen.data import Dataset, from_tensor

    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(sorted(BACKENDS))}")
    if not isinstance(data, Dataset):
        data = from_tensor(torch.as_tensor(data))
    if options is None:
        return BACKENDS[backend](pair, data, **values)
    if backend not in OPTIONS:
        raise UserError(f"backend {backend!r} takes its settings as keywords, not an options object")
    return BACKENDS[backend](pair, data, options=options, **values)


def options_of(cls: type, options: Any, values: dict[str, Any]) -> Any:
    """The validated ``cls`` a backend runs with: ``options`` (a ``cls``), with ``values`` replacing its fields, or
    ``cls(**values)``; an unknown name or a wrong object is one line (:class:`OptionError` / :class:`UserError`)."""
    from ppgen.inference.options import make

    if options is None:
        return make(cls, values)
    if not isinstance(options, cls):
        raise UserError(f"options must be a {cls.__name__}, got {type(options).__name__}")
    if not values:
        return options
    fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(cls)}
    return make(cls, {**fields, **values})  # checked again as a whole: a replaced field may clash with another
