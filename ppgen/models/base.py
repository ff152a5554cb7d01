"""What every pair has: ``model``, ``guide``, a JSON-able config and a few helpers.

A backend works only from these: the sample sites of ``model``/``guide`` and
the attributes below. A family subclasses :class:`GenerativeModel`, sets
``name`` and ``Config``, and writes ``model`` and ``guide`` side by side.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

import torch
from torch import nn

from ppgen.errors import UserError

LIKELIHOODS = ("bernoulli", "cbernoulli", "gaussian")


class GenerativeModel(nn.Module):
    """Base of every model/guide pair. Holds the networks; defines no loss."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    #: plates nested around the sample sites (the data plate); estimators add one outside it
    max_plate_nesting: ClassVar[int] = 1
    #: names of the latent sample sites, outermost first
    latent_sites: ClassVar[tuple[str, ...]] = ("z",)

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    # -- the pair -----------------------------------------------------------------
    def model(self, x: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def guide(self, x: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared helpers -------------------------------------------------------------
    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.config.x_shape)

    @property
    def likelihood(self) -> str:
        return getattr(self.config, "likelihood", "gaussian")

    def config_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self.config)))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> GenerativeModel:
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = set(config) - fields
        if unknown:
            raise UserError(f"{cls.name}: unknown option(s) {sorted(unknown)}; known: {sorted(fields)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        return cls(**values)

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        """Raise :class:`UserError` if ``x`` cannot be observed by this pair."""
        check_observations(x, self.x_shape, self.likelihood, what)

    def generate(self, n: int) -> torch.Tensor:  # pragma: no cover - abstract
        """``n`` draws of the likelihood's mean at z from the prior."""
        raise NotImplementedError


def check_observations(x: torch.Tensor, x_shape: tuple[int, ...], likelihood: str, what: str = "data") -> None:
    """Shape, finiteness and support checks with messages that say what to do."""
    if tuple(x.shape[1:]) != tuple(x_shape):
        raise UserError(
            f"{what} has shape {tuple(x.shape[1:])} per example but the model expects {tuple(x_shape)}; "
            f"build the model with x_shape={tuple(x.shape[1:])} or reshape the data"
        )
    if x.shape[0] == 0:
        raise UserError(f"{what} is empty; give at least one example")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=tuple(range(1, x.ndim))).sum())
        raise UserError(f"{what} holds NaN or infinite values in {bad} example(s); remove or impute them")
    if likelihood == "bernoulli" and not ((x == 0) | (x == 1)).all():
        raise UserError(
            f"{what} is not binary but the likelihood is Bernoulli; binarize it (--binarize dynamic|static|threshold) "
            "or use --likelihood cbernoulli or gaussian"
        )
    if likelihood == "cbernoulli" and ((x < 0) | (x > 1)).any():
        raise UserError(f"{what} lies outside [0, 1] but the likelihood is continuous Bernoulli; rescale it to [0, 1]")


def observation_dist(likelihood: str, params: Any, event_dims: int):
    """The likelihood p(x|z) as an event distribution on the active backend."""
    from ppgen.ppl import dist

    if likelihood == "bernoulli":
        d = dist.Bernoulli(logits=params)
    elif likelihood == "cbernoulli":
        d = dist.ContinuousBernoulli(logits=params)
    elif likelihood == "gaussian":
        loc, scale = params
        d = dist.Normal(loc, scale)
    else:
        raise UserError(f"unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
    return d.to_event(event_dims)


def observation_mean(likelihood: str, params: Any) -> torch.Tensor:
    """E[x|z] for a likelihood's parameters (torch)."""
    if likelihood == "bernoulli":
        return torch.sigmoid(params)
    if likelihood == "cbernoulli":
        return torch.distributions.ContinuousBernoulli(logits=params).mean
    return params[0]
