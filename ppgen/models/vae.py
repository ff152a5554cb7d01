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

``net="pixelcnn"``: an autoregressive decoder strong enough to ignore z,

    p(x | z) = Π_i p(x_i | x_<i, z),

a small PixelCNN conditioned on z (:class:`ppgen.nn.PixelCNNDecoder`; ``ar_channels``,
``ar_layers``; the encoder is the MLP). ``model`` scores x by teacher forcing (one pass,
exact log p(x | z)); ``generate`` draws pixel by pixel. Trained plainly it collapses:
KL(q(z|x) ‖ p(z)) → 0 and q(z|x) = p(z), the posterior collapse of Bowman et al. (2016)
and Chen et al. (2017). With ``skip=True`` z enters every masked layer.

``committed_rate=δ`` > 0 is the δ-VAE of Razavi et al. (2019), "Preventing posterior
collapse with δ-VAEs", in its simplest form (the lecture's "keep the variance of q fixed
so the KL cannot reach 0"): the guide's standard deviation is fixed at σ < 1 with

    KL(N(μ, σ²) ‖ N(0, 1)) = ½(μ² + σ² − 1 − log σ²) ≥ ½(σ² − 1 − log σ²) = δ

per dimension, so every dimension carries a committed rate of at least δ nats whatever
the encoder does (σ² = −W₀(−e^{−1−2δ}), W₀ Lambert's function; :func:`committed_scale`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from ppgen.declare import (
    OptionError,
    boolean,
    nonnegative_float,
    nonnegative_int,
    one_of,
    option,
    positive_int,
    sizes,
    supported,
    validate,
)
from ppgen.errors import UserError
from ppgen.models.base import (
    GenerativeModel,
    activation_option,
    likelihood_option,
    observation_dist,
    observation_mean,
    x_shape_option,
)
from ppgen.nn import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, PixelCNNDecoder
from ppgen.ppl import dist, pyro

#: the decoder networks: factorized MLP or conv net, or the autoregressive PixelCNN
NETS = ("mlp", "conv", "pixelcnn")


def committed_scale(delta: float) -> float:
    """The σ < 1 whose N(μ, σ²) guide has KL to N(0, 1) of at least ``delta`` nats per dimension:
    the root of ½(σ² − 1 − log σ²) = δ (bisection on s = σ², where the left side falls from ∞ to 0)."""
    if not (delta > 0 and math.isfinite(delta)):
        raise UserError(f"committed_rate must be a positive finite number of nats, got {delta!r}")
    lo, hi = 0.0, 1.0
    for _ in range(200):
        s = 0.5 * (lo + hi)
        if s <= 0 or s - 1 - math.log(s) > 2 * delta:
            lo = s
        else:
            hi = s
    return math.sqrt(0.5 * (lo + hi))


def committed_rate(scale: float) -> float:
    """δ = ½(σ² − 1 − log σ²): the least KL per dimension of a guide N(μ, σ²) against N(0, 1)."""
    return 0.5 * (scale**2 - 1 - math.log(scale**2))


@dataclass(frozen=True)
class VAEConfig:
    x_shape: tuple[int, ...] = x_shape_option((1, 28, 28))
    z_dim: int = option(50, positive_int, "latent dimensions")
    likelihood: str = likelihood_option()
    hidden: tuple[int, ...] = option((400,), sizes, "hidden layer sizes of the encoder (the decoder mirrors them)")
    activation: str = activation_option()
    net: str = option("mlp", one_of(NETS, "network"), "decoder network: mlp, conv, or pixelcnn (autoregressive, with "
                      "an MLP encoder)")
    skip: bool = option(False, boolean, "Skip-VAE decoder: z enters every layer")
    flows: int = supported(option(0, nonnegative_int, "inverse autoregressive flows on q(z|x) (Kingma et al. 2016), "
                                  "conditioned on the encoder's hidden state; torch engine only"),
                           engines=("torch",), feature="a guide with inverse autoregressive flows",
                           why="Pyro's flows do not lower to JAX")
    ar_channels: int = option(16, positive_int, "channels of the PixelCNN decoder (net pixelcnn)")
    ar_layers: int = option(3, nonnegative_int, "residual masked 3x3 layers of the PixelCNN decoder (net pixelcnn)")
    committed_rate: float = option(0.0, nonnegative_float, "delta-VAE (Razavi et al. 2019): fix the guide's scale so "
                                   "every latent dimension's KL is at least this many nats (0: learned scale)")

    def __post_init__(self) -> None:
        validate(self)
        if self.flows and self.committed_rate:
            raise OptionError("committed_rate", self.committed_rate, "flows reshape q(z|x) and committed_rate fixes "
                              "its scale: use one of them (flows=0 or committed_rate=0)")
        if self.net == "conv" and self.activation != "softplus":
            raise OptionError("activation", self.activation, "applies to the MLP networks; the conv networks use "
                              "relu: use activation='softplus' with net='conv'")
        if self.net != "mlp" and len(self.x_shape) != 3:
            raise OptionError("net", self.net, f"needs images shaped (C, H, W), got x_shape={self.x_shape}; "
                              "use net='mlp'")


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

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        c = self.config
        #: the fixed guide scale of the delta-VAE, or None (learned)
        self.fixed_scale = committed_scale(c.committed_rate) if c.committed_rate > 0 else None
        self.autoregressive = c.net == "pixelcnn"
        n_params = 2 if c.likelihood == "gaussian" else 1
        if c.net == "pixelcnn":
            self.encoder = MLPEncoder(c.x_shape, c.z_dim, c.hidden, c.activation)
            self.decoder = PixelCNNDecoder(c.z_dim, c.x_shape, c.ar_channels, c.ar_layers, skip=c.skip,
                                           n_params=n_params)
        elif c.net == "mlp":
            self.encoder = MLPEncoder(c.x_shape, c.z_dim, c.hidden, c.activation)
            self.decoder = MLPDecoder(c.z_dim, c.x_shape, c.hidden[::-1], skip=c.skip, n_params=n_params,
                                      activation=c.activation)
        else:
            try:
                self.encoder = ConvEncoder(c.x_shape, c.z_dim, c.hidden)
                self.decoder = ConvDecoder(c.z_dim, c.x_shape, c.hidden, skip=c.skip, n_params=n_params)
            except ValueError as err:
                raise UserError(str(err)) from None
        self.flows = nn.ModuleList(_iaf_step(c.z_dim, c.hidden[-1], reverse=k % 2 == 1) for k in range(c.flows))

    @property
    def gaussian_observation_refusal(self) -> str | None:
        """The PixelCNN decoder's pixel parameters are conditioned on the pixels before (teacher forcing), so the
        observed site's mean is not E[x | z]."""
        if self.autoregressive:
            return "its PixelCNN decoder's pixel means depend on x itself, so E[x | z] has no closed form"
        return None

    @property
    def engine_preference(self) -> tuple[str, ...]:
        """The PixelCNN decoder lowers, but its masked convolutions ran ~10x slower per epoch on the JAX engine than
        on torch (CPU), so ``engine="auto"`` prefers torch for it. (Flows rule out JAX by their declaration:
        Pyro's flows do not lower.)"""
        return ("torch", "jax") if self.config.net == "pixelcnn" else ("jax", "torch")

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.config.z_dim]).to_event(1))
            params = self.decoder(z, x) if self.autoregressive else self.decoder(z)  # teacher forcing: exact
            pyro.sample("x", observation_dist(self.likelihood, params, len(self.x_shape)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        if self.config.flows:
            pyro.module("flows", self.flows)
        with pyro.plate("data", x.shape[0]):
            if not self.config.flows:
                loc, scale = self._q(x)
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))
                return
            h = self.encoder.features(x)
            loc, scale = self.encoder.head(h)
            steps = [flow.condition(h) for flow in self.flows]
            pyro.sample("z", dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), steps))

    def _q(self, x):
        loc, scale = self.encoder(x)
        if self.fixed_scale is not None:  # delta-VAE: the scale is fixed, so KL >= committed_rate per dimension
            scale = loc * 0 + self.fixed_scale
        return loc, scale

    # -- helpers used by evaluation, plots and the CLI ---------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z|x)."""
        return self._q(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z]; for the autoregressive decoder (no closed-form mean) a draw x ~ p(x | z), pixel by pixel."""
        if self.autoregressive:
            return self.decoder.sample(z, self._draw_pixel)
        return observation_mean(self.likelihood, self.decoder(z))

    def _draw_pixel(self, params):
        if self.likelihood == "bernoulli":
            return torch.bernoulli(torch.sigmoid(params))
        if self.likelihood == "cbernoulli":
            return torch.distributions.ContinuousBernoulli(logits=params).sample()
        return torch.normal(*params)

    def generate(self, n: int) -> torch.Tensor:
        device = next(self.parameters()).device
        return self.decode(torch.randn(n, self.config.z_dim, device=device))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])
