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
share: their declared options (:class:`LayeredConfig`, with the layer-list checks) and the helpers
evaluation and plotting use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ppgen.declare import OptionError, as_sizes, boolean, option, sizes, validate, with_convert
from ppgen.models.base import (
    GenerativeModel,
    activation_option,
    likelihood_option,
    observation_dist,
    observation_mean,
    x_shape_option,
)
from ppgen.nn import GaussianMLP, MLPDecoder
from ppgen.ppl import dist, pyro


def as_stages(v: Any) -> Any:
    """A layer list's hidden sizes as one tuple per stage: a flat (400, 200) is one hidden layer per stage."""
    if isinstance(v, tuple | list) and v and all(isinstance(h, int) and not isinstance(h, bool) for h in v):
        return tuple((h,) for h in v)
    if isinstance(v, tuple | list) and all(isinstance(h, tuple | list) for h in v):
        return tuple(tuple(h) for h in v)
    return v


def stages(v: Any) -> str | None:
    """One tuple of hidden sizes per stage (a stage may have none: an affine map)."""
    ok = isinstance(v, tuple) and v and all(
        isinstance(stage, tuple) and all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in stage)
        for stage in v)
    return None if ok else ("must be one positive int per stage or one list of positive ints per stage, bottom first, "
                            "e.g. (400, 200) or ((400,), (200,))")


with_convert(stages, as_stages)
#: how the command line gives one list per stage (``ppgen.commands.args.add_flag``): space-separated groups
stages.groups = ("several hidden layers per stage: one comma-separated group per stage, space-separated, bottom "
                 "first (e.g. 200,200 100,100); one group alone is one size per stage")


def latent_sizes(v: Any) -> str | None:
    problem = sizes(v)
    return problem and "every latent size must be a positive whole number, one per layer, bottom first, e.g. (50, 20)"


with_convert(latent_sizes, as_sizes)


@dataclass(frozen=True)
class LayeredConfig:
    """The options the layered families (this one, ``DLGM``, ``LadderVAE``) declare alike; each family's
    ``Config`` subclasses it. Layers are given bottom-up, and the lists must chain: one hidden stage per layer."""

    #: the fewest stochastic layers the family has
    min_layers: ClassVar[int] = 2
    x_shape: tuple[int, ...] = x_shape_option((1, 28, 28))
    z_dims: tuple[int, ...] = option((50, 20), latent_sizes, "latent sizes per layer, bottom first, e.g. 50,20")
    hidden: tuple[tuple[int, ...], ...] = option(((400,), (200,)), stages, "hidden sizes per stage, bottom first: "
                                                 "one size per stage (400,200), or one comma-separated group per stage, "
                                                 "space-separated (200,200 100,100: two layers in each of two stages)")
    likelihood: str = likelihood_option()
    skip: bool = option(False, boolean, "Skip-VAE decoder: z_1 enters every layer of p(x | z_1)")

    def __post_init__(self) -> None:
        validate(self)
        if len(self.z_dims) < self.min_layers:
            raise OptionError("z_dims", self.z_dims, f"needs at least {self.min_layers} stochastic layers; give one "
                              "size per layer, bottom first, e.g. z_dims=(50, 20)")
        if len(self.hidden) != len(self.z_dims):
            raise OptionError("hidden", self.hidden, f"the layer list does not chain: {len(self.hidden)} hidden "
                              f"stage(s) for {len(self.z_dims)} stochastic layer(s) z_dims={self.z_dims}; give one "
                              "hidden list per layer, bottom first, e.g. z_dims=(50, 20), hidden=((400,), (200,))")


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

    def _make_decoder(self, x_shape, hidden: tuple[int, ...], skip: bool, batch_norm: bool = False,
                      activation: str = "softplus") -> MLPDecoder:
        n_params = 2 if self.likelihood == "gaussian" else 1
        return MLPDecoder(self.z_dims[0], x_shape, hidden[::-1], skip=skip, n_params=n_params, batch_norm=batch_norm,
                          activation=activation)

    def _make_prior_nets(self, stages, batch_norm: bool = False, activation: str = "softplus") -> nn.ModuleList:
        """p(z_l | z_{l+1}) for l = 1..L−1, mirroring stage l+1 of the guide."""
        return nn.ModuleList(GaussianMLP(self.z_dims[i + 1], self.z_dims[i], stages[i + 1][::-1], batch_norm,
                                         activation) for i in range(self.n_layers - 1))

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
class HierarchicalVAEConfig(LayeredConfig):
    """The layered options (:class:`LayeredConfig`), at least two layers, and the hidden layers' nonlinearity
    (tanh with ``z_dims=(100, 50), hidden=((200, 200), (100, 100))`` is Burda et al.'s two-layer net)."""

    activation: str = activation_option()


class HierarchicalVAE(LayeredModel):
    """p(z_L) Π p(z_l | z_{l+1}) p(x | z_1) with the bottom-up guide q(z_1 | x) Π q(z_{l+1} | z_l)."""

    name = "hvae"
    Config = HierarchicalVAEConfig

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        c = self.config
        self._set_layers(c.z_dims)
        self.decoder = self._make_decoder(c.x_shape, c.hidden[0], c.skip, activation=c.activation)
        self.prior_nets = self._make_prior_nets(c.hidden, activation=c.activation)
        inputs = [c.x_shape, *((d,) for d in c.z_dims[:-1])]
        self.encoders = nn.ModuleList(GaussianMLP(i, d, h, activation=c.activation)
                                      for i, d, h in zip(inputs, c.z_dims, c.hidden))

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
