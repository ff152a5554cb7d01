r"""Deep latent Gaussian model (Rezende, Mohamed & Wierstra, 2014).

L stochastic layers h_1 (next to x) ... h_L, each Gaussian with its mean computed from
the layer above by a network T_l and a learned diagonal scale G_l (the paper's G_l is a
full matrix; ppgen keeps it diagonal so every layer is a ``Normal`` site)::

    model:  h_L = ξ_L,                     ξ_l ~ N(0, I)
            h_l = T_l(h_{l+1}) + G_l ξ_l    i.e.  p(h_l | h_{l+1}) = N(T_l(h_{l+1}), G_l²)
            x ~ p(x | h_1)  (Bernoulli | ContinuousBernoulli | Normal of a decoder of h_1)

The recognition model has one Gaussian per layer over that layer's noise, computed from
x by a shared recognition network: q(ξ_l | x) = N(m_l(x), diag s_l²(x)). Pushed through
the generative map this is a top-down guide on the same sites as the model::

    q(h_L | x)          = N(m_L(x), s_L²(x)),
    q(h_l | h_{l+1}, x) = N(T_l(h_{l+1}) + G_l m_l(x), G_l² s_l²(x)),

so KL(q(h_l | ·) ‖ p(h_l | h_{l+1})) = KL(N(m_l, s_l²) ‖ N(0, I)), exactly the per-layer
noise KL of the paper. The guide shares T_l and G_l with the model.

Layers are given bottom-up as for ``HierarchicalVAE``: ``z_dims=(h_1, ..., h_L)`` and one
hidden list per stage; stage 1's hidden sizes shape the recognition network and the
decoder, stage l's the mean network T_{l−1}. With ``hidden`` all empty and a Gaussian
likelihood the model is linear-Gaussian, so log p(x) is closed-form
(:meth:`DLGM.linear_marginal`): the tests check the estimators against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ppgen.errors import UserError
from ppgen.models.hierarchical import LayeredConfig, LayeredModel
from ppgen.nn import DeterministicMLP, GaussianMLP, Network
from ppgen.ppl import dist, pyro


@dataclass(frozen=True)
class DLGMConfig(LayeredConfig):
    """The layered options (:class:`~ppgen.models.hierarchical.LayeredConfig`); one layer is enough."""

    min_layers: ClassVar[int] = 1


class MeanNet(Network):
    """h_{l+1} -> (T_l(h_{l+1}), G_l): an MLP mean and a learned per-unit scale."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = ()):
        super().__init__()
        sizes = [in_dim, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.mean = nn.Linear(sizes[-1], out_dim)
        self.log_scale = nn.Parameter(torch.zeros(out_dim))

    def forward(self, h: torch.Tensor):
        u = h
        for layer in self.layers:
            u = F.softplus(layer(u))
        loc = self.mean(u)
        return loc, torch.exp(self.log_scale) + 0 * loc


class DLGM(LayeredModel):
    """Rezende et al.'s DLGM: Gaussian layers with network means; one recognition Gaussian per layer."""

    name = "dlgm"
    Config = DLGMConfig

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        c = self.config
        z_dims, stages = c.z_dims, c.hidden
        self._set_layers(z_dims)
        self.decoder = self._make_decoder(c.x_shape, stages[0], c.skip)
        self.prior_nets = nn.ModuleList(MeanNet(z_dims[i + 1], z_dims[i], stages[i + 1][::-1])
                                        for i in range(len(z_dims) - 1))
        self.recognition = DeterministicMLP(c.x_shape, stages[0])
        features = stages[0][-1] if stages[0] else int(torch.Size(c.x_shape).numel())
        self.noise_heads = nn.ModuleList(GaussianMLP(features, d) for d in z_dims)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        pyro.module("prior_nets", self.prior_nets)
        self.top_down_model(x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("recognition", self.recognition)
        pyro.module("noise_heads", self.noise_heads)
        pyro.module("prior_nets", self.prior_nets)
        top = self.n_layers
        with pyro.plate("data", x.shape[0]):
            r = self.recognition(x)
            m, s = self.noise_heads[top - 1](r)
            h = pyro.sample(f"z{top}", dist.Normal(m, s).to_event(1))
            for layer in range(top - 1, 0, -1):
                mean, g = self.prior_nets[layer - 1](h)
                m, s = self.noise_heads[layer - 1](r)
                h = pyro.sample(f"z{layer}", dist.Normal(mean + g * m, g * s).to_event(1))

    # -- helpers -----------------------------------------------------------------------
    def encode_layers(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        top = self.n_layers
        r = self.recognition(x)
        m, s = self.noise_heads[top - 1](r)
        out = {f"z{top}": (m, s)}
        h = m
        for layer in range(top - 1, 0, -1):
            mean, g = self.prior_nets[layer - 1](h)
            m, s = self.noise_heads[layer - 1](r)
            h = mean + g * m
            out[f"z{layer}"] = (h, g * s)
        return dict(sorted(out.items(), key=lambda item: int(item[0][1:])))

    def linear_marginal(self) -> torch.distributions.MultivariateNormal:
        """Exact p(x) when every network is affine and the likelihood Gaussian (``hidden`` all empty).

        h_L ~ N(0, I), h_l = A_l h_{l+1} + a_l + G_l ξ_l, x = B h_1 + b + σ ε: x is Gaussian with
        mean and covariance propagated layer by layer (mean m ← A m + a, cov S ← A S Aᵀ + G²).
        """
        affine = all(len(net.layers) == 0 for net in self.prior_nets) and len(self.decoder.layers) == 1
        if self.likelihood != "gaussian" or not affine or self.config.skip:
            raise UserError("DLGM.linear_marginal needs likelihood='gaussian', skip=False and empty hidden lists")
        with torch.no_grad():
            mean = torch.zeros(self.z_dims[-1])
            cov = torch.eye(self.z_dims[-1])
            for net in reversed(self.prior_nets):
                A, a = net.mean.weight, net.mean.bias
                mean, cov = A @ mean + a, A @ cov @ A.T + torch.diag(torch.exp(2 * net.log_scale))
            B, b = self.decoder.layers[0].weight, self.decoder.layers[0].bias
            noise = torch.exp(2 * self.decoder.log_scale)
            return torch.distributions.MultivariateNormal(B @ mean + b, covariance_matrix=B @ cov @ B.T + torch.diag(noise))
