r"""Ladder VAE (Sønderby, Raiko, Maaløe, Sønderby & Winther, 2016).

The generative model is the top-down chain of ``HierarchicalVAE``::

    p(z_L) = N(0, I),   p(z_l | z_{l+1}) = N(μ_{p,l}(z_{l+1}), σ²_{p,l}(z_{l+1})),   p(x | z_1).

The guide first makes a deterministic bottom-up pass d_1 = f_1(x), d_l = f_l(d_{l−1}), each
giving a Gaussian "likelihood" N(μ̂_l, σ̂_l²) = heads_l(d_l); then it samples top-down, merging
that bottom-up Gaussian with the generative prior of the same layer by precision weighting::

    q(z_L | x)          = N(μ̂_L, σ̂_L²),
    q(z_l | z_{l+1}, x) = N(μ_{q,l}, σ²_{q,l}),     σ_{q,l}⁻² = σ̂_l⁻² + σ_{p,l}⁻²,
                          μ_{q,l} = (μ̂_l σ̂_l⁻² + μ_{p,l} σ_{p,l}⁻²) σ²_{q,l},

i.e. q is the normalized product of the two Gaussians, and the top-down networks are
shared by model and guide.

What makes it train (Sønderby et al., Sec. 2.2 and 3): **batch normalization** of the
deterministic layers of the bottom-up pass, softplus(BN(W d + b)) (``batch_norm="on"``, the
default; :class:`ppgen.nn.norm.BatchNorm`), and a **KL warm-up** — β rising linearly from 0 to 1
(the SVI backend's ``anneal_epochs``; the leaderboard, ``benchmarks/likelihood_table.py``, warms
up over the first quarter of the epochs). Without batch normalization the precision-weighted
guide, which starts halfway to the prior, lost the race against the KL term: on the bundled
digits (3,500 training digits, 50 epochs) the top layer collapsed (KL 0.03 nats, no active unit)
and the test NLL was 122.5 nats against the one-layer VAE's 109.0; with it the top layer stays
active and the Ladder VAE beats the VAE (docs/results.md, "Log-likelihood leaderboard"). Batch norm
normalizes by the batch in training and by its running statistics in evaluation mode
(``pair.eval()``: every ELBO / IWAE figure is then per example); it lowers to JAX in both modes
and the JAX engine carries the running statistics as a NumPyro ``mutable`` site (one particle,
the trace or analytic ELBO; otherwise ``engine="auto"`` trains on torch).
``batch_norm_top_down="on"`` also normalizes the hidden layers of the generative networks (the
prior networks and the decoder) too; off by default (docs/results.md has its figures).
``batch_norm="off"`` is the model as it was before (for checkpoints written by older versions).

Layers are given bottom-up as for ``HierarchicalVAE``: stage l's hidden sizes are the
deterministic layers of f_l (and, mirrored, of the prior network).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ppgen.declare import on_off, option
from ppgen.models.hierarchical import LayeredConfig, LayeredModel
from ppgen.nn import DeterministicMLP, GaussianMLP
from ppgen.ppl import dist, pyro


@dataclass(frozen=True)
class LadderVAEConfig(LayeredConfig):
    """The layered options (:class:`~ppgen.models.hierarchical.LayeredConfig`, at least two layers) and batch
    normalization."""

    batch_norm: str = option("on", on_off, "batch-normalize the bottom-up deterministic layers",
                             absent="off")  # runs written before the option had none
    batch_norm_top_down: str = option("off", on_off, "also batch-normalize the hidden layers of the prior networks "
                                      "and the decoder")


def precision_weighted(loc_a, scale_a, loc_b, scale_b):
    """Normalized product of N(loc_a, scale_a²) and N(loc_b, scale_b²): (loc, scale).

    Written with arithmetic operators only, so it runs on torch tensors and JAX arrays.
    """
    prec_a, prec_b = scale_a**-2, scale_b**-2
    var = 1.0 / (prec_a + prec_b)
    return (loc_a * prec_a + loc_b * prec_b) * var, var**0.5


class LadderVAE(LayeredModel):
    """Top-down generative chain; guide = bottom-up pass + precision-weighted top-down merge."""

    name = "lvae"
    Config = LadderVAEConfig

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        c = self.config
        batch_norm, batch_norm_top_down = c.batch_norm == "on", c.batch_norm_top_down == "on"
        self._set_layers(c.z_dims)
        self.decoder = self._make_decoder(c.x_shape, c.hidden[0], c.skip, batch_norm_top_down)
        self.prior_nets = self._make_prior_nets(c.hidden, batch_norm_top_down)
        ups, heads, width = [], [], math.prod(c.x_shape)
        for i, stage in enumerate(c.hidden):
            ups.append(DeterministicMLP(c.x_shape if i == 0 else (width,), stage, batch_norm=batch_norm))
            width = stage[-1] if stage else width
            heads.append(GaussianMLP(width, c.z_dims[i]))
        self.up = nn.ModuleList(ups)
        self.heads = nn.ModuleList(heads)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        pyro.module("prior_nets", self.prior_nets)
        self.top_down_model(x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("up", self.up)
        pyro.module("heads", self.heads)
        pyro.module("prior_nets", self.prior_nets)
        top = self.n_layers
        with pyro.plate("data", x.shape[0]):
            bottom_up = self._bottom_up(x)
            loc, scale = bottom_up[-1]
            z = pyro.sample(f"z{top}", dist.Normal(loc, scale).to_event(1))
            for layer in range(top - 1, 0, -1):
                loc_p, scale_p = self.prior_nets[layer - 1](z)
                loc, scale = precision_weighted(*bottom_up[layer - 1], loc_p, scale_p)
                z = pyro.sample(f"z{layer}", dist.Normal(loc, scale).to_event(1))

    def _bottom_up(self, x) -> list:
        """[(μ̂_1, σ̂_1), ..., (μ̂_L, σ̂_L)] from the deterministic pass."""
        out, d = [], x
        for up, head in zip(self.up, self.heads):
            d = up(d)
            out.append(head(d))
        return out

    def encode_layers(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        bottom_up = self._bottom_up(x)
        top = self.n_layers
        loc, scale = bottom_up[-1]
        out = {f"z{top}": (loc, scale)}
        for layer in range(top - 1, 0, -1):
            loc_p, scale_p = self.prior_nets[layer - 1](loc)
            loc, scale = precision_weighted(*bottom_up[layer - 1], loc_p, scale_p)
            out[f"z{layer}"] = (loc, scale)
        return dict(sorted(out.items(), key=lambda item: int(item[0][1:])))
