r"""Variational autoencoder (Kingma & Welling, 2014; Rezende et al., 2014).

Model and guide::

    p(z) = N(0, I),   p(x | z) = Bernoulli | ContinuousBernoulli | Normal(decoder(z)),
    q(z | x) = N(μ(x), diag σ²(x)).

SVI maximizes the ELBO

    L(x) = E_q[log p(x | z)] − KL(q(z | x) ‖ p(z)),
    KL = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²),

and β-VAE (Higgins et al., 2017) scales the KL by β (the SVI backend's ``beta``).
``skip=True`` is the Skip-VAE decoder (Dieng et al., 2019): z enters every decoder
layer. ``likelihood="cbernoulli"`` is the continuous Bernoulli of Loaiza-Ganem &
Cunningham (2019) for grey-level data in [0, 1].

``flows=K`` makes the guide richer with K inverse autoregressive flows (Kingma et al.,
2016): ε ~ N(μ(x), diag σ²(x)), then z = f_K ∘ … ∘ f_1(ε), each step

    m, s = MADE([h(x), z_{k−1}]),   g = sigmoid(s),   z_k = g ⊙ z_{k−1} + (1 − g) ⊙ m

(the paper's numerically stable form) with the encoder's last hidden state h(x) as the
context — Pyro's ``ConditionalAffineAutoregressive(stable=True)``, the order of the
dimensions reversed between steps — so log q(z | x) = log N(ε; μ, σ²) − Σ_k Σ_j log g_kj
exactly, one network pass per step at a draw of q. The flows are Pyro transforms, which
do not lower to JAX: a VAE with flows trains on the torch SVI engine only
(``svi_engines``), and ``encode`` reports the base Gaussian N(μ(x), σ²(x)), not the
flowed q (so ``ppgen compare`` and the collapse report see the base).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from ppgen.errors import UserError
from ppgen.models.base import LIKELIHOODS, GenerativeModel, observation_dist, observation_mean
from ppgen.nn import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from ppgen.ppl import dist, pyro


@dataclass(frozen=True)
class VAEConfig:
    x_shape: tuple[int, ...] = (1, 28, 28)
    z_dim: int = 50
    likelihood: str = "bernoulli"
    hidden: tuple[int, ...] = (400,)
    net: str = "mlp"
    skip: bool = False
    flows: int = field(default=0, metadata={"help": "inverse autoregressive flows on q(z|x) (Kingma et al. 2016), "
                                                    "conditioned on the encoder's hidden state; torch engine only"})


def _iaf_step(z_dim: int, context_dim: int, reverse: bool) -> ConditionalAffineAutoregressive:
    """One stable IAF step conditioned on h(x): a conditional MADE (hidden size = h's) over z in the natural
    order or reversed (Kingma et al. reverse it between steps), so no random permutation is drawn."""
    order = torch.arange(z_dim - 1, -1, -1) if reverse else torch.arange(z_dim)
    made = ConditionalAutoRegressiveNN(z_dim, context_dim, [max(context_dim, 2 * z_dim)], permutation=order)
    return ConditionalAffineAutoregressive(made, stable=True)


class VAE(GenerativeModel):
    """A VAE pair: ``model`` is p(z) p(x|z), ``guide`` is the amortized q(z|x)."""

    name = "vae"
    Config = VAEConfig

    def __init__(self, x_shape: Sequence[int] = (1, 28, 28), z_dim: int = 50, likelihood: str = "bernoulli",
                 hidden: Sequence[int] = (400,), net: str = "mlp", skip: bool = False, flows: int = 0):
        config = VAEConfig(tuple(x_shape), int(z_dim), likelihood, tuple(hidden), net, bool(skip), int(flows))
        if likelihood not in LIKELIHOODS:
            raise UserError(f"unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
        if z_dim < 1 or not hidden or min(hidden) < 1:
            raise UserError("z_dim and every hidden size must be positive integers")
        if not isinstance(flows, int) or isinstance(flows, bool) or flows < 0:
            raise UserError(f"flows must be a whole number, 0 or more, got {flows!r}")
        super().__init__(config)
        n_params = 2 if likelihood == "gaussian" else 1
        if net == "mlp":
            self.encoder = MLPEncoder(x_shape, z_dim, hidden)
            self.decoder = MLPDecoder(z_dim, x_shape, hidden[::-1], skip=skip, n_params=n_params)
        elif net == "conv":
            if len(x_shape) != 3:
                raise UserError(f"net='conv' needs images shaped (C, H, W), got {tuple(x_shape)}; use net='mlp'")
            try:
                self.encoder = ConvEncoder(x_shape, z_dim, hidden)
                self.decoder = ConvDecoder(z_dim, x_shape, hidden, skip=skip, n_params=n_params)
            except ValueError as err:
                raise UserError(str(err)) from None
        else:
            raise UserError(f"unknown network {net!r}; choose 'mlp' or 'conv'")
        self.flows = nn.ModuleList(_iaf_step(z_dim, hidden[-1], reverse=k % 2 == 1) for k in range(flows))

    @property
    def svi_engines(self) -> tuple[str, ...]:
        """Pyro's flows do not lower to JAX: with them the VAE trains on the torch engine."""
        return ("torch",) if self.config.flows else ("torch", "jax")

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.config.z_dim]).to_event(1))
            pyro.sample("x", observation_dist(self.likelihood, self.decoder(z), len(self.x_shape)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        if self.config.flows:
            pyro.module("flows", self.flows)
        with pyro.plate("data", x.shape[0]):
            if not self.config.flows:
                loc, scale = self.encoder(x)
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))
                return
            h = self.encoder.features(x)
            loc, scale = self.encoder.head(h)
            steps = [flow.condition(h) for flow in self.flows]
            pyro.sample("z", dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), steps))

    # -- helpers used by evaluation, plots and the CLI ---------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z|x)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z]."""
        return observation_mean(self.likelihood, self.decoder(z))

    def generate(self, n: int) -> torch.Tensor:
        device = next(self.parameters()).device
        return self.decode(torch.randn(n, self.config.z_dim, device=device))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])
