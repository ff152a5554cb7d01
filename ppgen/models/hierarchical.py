r"""Hierarchical VAE: a top-down generative chain with a bottom-up amortized guide.

With L stochastic layers z_1 (next to x) ... z_L (top)::

    model:  p(z_L) = N(0, I),
            p(z_l | z_{l+1}) = N(μ_l(z_{l+1}), diag σ_l²(z_{l+1})),        l = L−1, ..., 1
            p(x | z_1) = Bernoulli | ContinuousBernoulli | Normal(decoder(z_1))
    guide:  q(z_1 | x) = N(m_1(x), diag s_1²(x)),
            q(z_{l+1} | z_l) = N(m_{l+1}(z_l), diag s_{l+1}²(z_l)).

The ELBO is E_q[log p(x | z_1) + Σ_l log p(z_l | z_{l+1}) − Σ_l log q(z_l | ·)]; the
SVI backend optimizes it from the sample sites ``z1 ... zL`` and ``x`` like any pair.
For L = 2 this is the two-stochastic-layer model of Burda et al. (2016).

Layers are given bottom-up: ``z_dims=(z_1, ..., z_L)`` and ``hidden`` with one list of
hidden sizes per stage (stage 1 maps x to z_1, stage l maps z_{l−1} to z_l), e.g.
``z_dims=(50, 20), hidden=((400,), (200,))``; a flat ``hidden=(400, 200)`` means one hidden
layer per stage. The generative network of stage l mirrors its guide network.
``skip=True`` makes the decoder p(x | z_1) a Skip-VAE decoder (Dieng et al., 2019);
free bits and KL warm-up come from the SVI backend (``free_bits=``, ``anneal_epochs=``).

This module also holds what the three layered families (this one, ``DLGM``, ``LadderVAE``)
share: the layer-list checks and the helpers evaluation and plotting use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ppgen.errors import UserError
from ppgen.models.base import LIKELIHOODS, GenerativeModel, observation_dist, observation_mean
from ppgen.nn import GaussianMLP, MLPDecoder
from ppgen.ppl import dist, pyro


def layer_spec(z_dims: Sequence[int] | int, hidden: Any, family: str, min_layers: int = 1
               ) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """Check and normalize a layer list: (z_1, ..., z_L) and one hidden-size tuple per stage.

    Raises :class:`UserError` when the lists do not chain: a different number of hidden
    stages than stochastic layers, fewer than ``min_layers`` layers, or a size < 1.
    """
    z_dims = (z_dims,) if isinstance(z_dims, int) else tuple(z_dims)
    if len(z_dims) < min_layers:
        raise UserError(f"{family} needs at least {min_layers} stochastic layers, got z_dims={z_dims}; "
                        f"give one size per layer, bottom first, e.g. z_dims=(50, 20)")
    if any(not isinstance(d, int) or d < 1 for d in z_dims):
        raise UserError(f"{family}: every latent size must be a positive integer, got z_dims={z_dims}")
    hidden = tuple(hidden)
    if all(isinstance(h, int) for h in hidden):
        stages = tuple((h,) for h in hidden)
    elif all(isinstance(h, (tuple, list)) for h in hidden):
        stages = tuple(tuple(h) for h in hidden)
    else:
        raise UserError(f"{family}: hidden must be one int per stage or one list of ints per stage, got {hidden}")
    if len(stages) != len(z_dims):
        raise UserError(f"{family}: the layer list does not chain: {len(stages)} hidden stage(s) for {len(z_dims)} "
                        f"stochastic layer(s) z_dims={z_dims}; give one hidden list per layer, bottom first, "
                        f"e.g. z_dims=(50, 20), hidden=((400,), (200,))")
    if any(not isinstance(h, int) or h < 1 for stage in stages for h in stage):
        raise UserError(f"{family}: every hidden size must be a positive integer, got hidden={stages}")
    return z_dims, stages


def check_likelihood(likelihood: str) -> None:
    if likelihood not in LIKELIHOODS:
        raise UserError(f"unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")


class LayeredModel(GenerativeModel):
    """Shared helpers of the families with latent layers ``z1`` (bottom) ... ``zL`` (top).

    A subclass sets ``self.z_dims``, ``self.decoder`` (p(x | z_1)), ``self.prior_nets``
    (``prior_nets[l-1]`` gives the (loc, scale) of p(z_l | z_{l+1})) and ``encode_layers``.
    """

    z_dims: tuple[int, ...]

    def _set_layers(self, z_dims: tuple[int, ...]) -> None:
        self.z_dims = z_dims
        # outermost first: the model samples the top layer first
        self.latent_sites = tuple(f"z{layer}" for layer in range(len(z_dims), 0, -1))

    @property
    def n_layers(self) -> int:
        return len(self.z_dims)

    def _make_decoder(self, x_shape, hidden: tuple[int, ...], skip: bool, batch_norm: bool = False) -> MLPDecoder:
        n_params = 2 if self.likelihood == "gaussian" else 1
        return MLPDecoder(self.z_dims[0], x_shape, hidden[::-1], skip=skip, n_params=n_params, batch_norm=batch_norm)

    def _make_prior_nets(self, stages, batch_norm: bool = False) -> nn.ModuleList:
        """p(z_l | z_{l+1}) for l = 1..L−1, mirroring stage l+1 of the guide."""
        return nn.ModuleList(GaussianMLP(self.z_dims[i + 1], self.z_dims[i], stages[i + 1][::-1], batch_norm)
                             for i in range(self.n_layers - 1))

    def top_down_model(self, x) -> None:
        """The generative chain p(z_L) Π p(z_l | z_{l+1}) p(x | z_1), shared by the layered families."""
        top = self.n_layers
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(f"z{top}", dist.Normal(0.0, 1.0).expand([self.z_dims[-1]]).to_event(1))
            for layer in range(top - 1, 0, -1):
                loc, scale = self.prior_nets[layer - 1](z)
                z = pyro.sample(f"z{layer}", dist.Normal(loc, scale).to_event(1))
            pyro.sample("x", observation_dist(self.likelihood, self.decoder(z), len(self.x_shape)), obs=x)

    # -- helpers used by evaluation, plots and the CLI ---------------------------------
    def encode_layers(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:  # pragma: no cover
        """(loc, scale) of every layer's guide distribution along the mean path (no sampling)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the bottom layer's q(z_1 | ·) along the mean path."""
        return self.encode_layers(x)["z1"]

    def decode(self, z1: torch.Tensor) -> torch.Tensor:
        """E[x | z_1]."""
        return observation_mean(self.likelihood, self.decoder(z1))

    def sample_prior(self, n: int) -> dict[str, torch.Tensor]:
        """Ancestral draws z_L, ..., z_1 from the generative chain."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.z_dims[-1], device=device)
        out = {f"z{self.n_layers}": z}
        for layer in range(self.n_layers - 1, 0, -1):
            loc, scale = self.prior_nets[layer - 1](z)
            z = loc + scale * torch.randn_like(loc)
            out[f"z{layer}"] = z
        return out

    def generate(self, n: int) -> torch.Tensor:
        return self.decode(self.sample_prior(n)["z1"])

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])


@dataclass(frozen=True)
class HierarchicalVAEConfig:
    x_shape: tuple[int, ...] = (1, 28, 28)
    z_dims: tuple[int, ...] = (50, 20)
    hidden: tuple = ((400,), (200,))
    likelihood: str = "bernoulli"
    skip: bool = False


class HierarchicalVAE(LayeredModel):
    """p(z_L) Π p(z_l | z_{l+1}) p(x | z_1) with the bottom-up guide q(z_1 | x) Π q(z_{l+1} | z_l)."""

    name = "hvae"
    Config = HierarchicalVAEConfig

    def __init__(self, x_shape: Sequence[int] = (1, 28, 28), z_dims: Sequence[int] = (50, 20),
                 hidden: Any = ((400,), (200,)), likelihood: str = "bernoulli", skip: bool = False):
        check_likelihood(likelihood)
        z_dims, stages = layer_spec(z_dims, hidden, "HierarchicalVAE", min_layers=2)
        super().__init__(HierarchicalVAEConfig(tuple(x_shape), z_dims, stages, likelihood, bool(skip)))
        self._set_layers(z_dims)
        self.decoder = self._make_decoder(x_shape, stages[0], skip)
        self.prior_nets = self._make_prior_nets(stages)
        inputs = [tuple(x_shape), *((d,) for d in z_dims[:-1])]
        self.encoders = nn.ModuleList(GaussianMLP(i, d, h) for i, d, h in zip(inputs, z_dims, stages))

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        pyro.module("prior_nets", self.prior_nets)
        self.top_down_model(x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoders", self.encoders)
        with pyro.plate("data", x.shape[0]):
            h = x
            for layer, encoder in enumerate(self.encoders, 1):
                loc, scale = encoder(h)
                h = pyro.sample(f"z{layer}", dist.Normal(loc, scale).to_event(1))

    def encode_layers(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out, h = {}, x
        for layer, encoder in enumerate(self.encoders, 1):
            loc, scale = encoder(h)
            out[f"z{layer}"] = (loc, scale)
            h = loc
        return out
