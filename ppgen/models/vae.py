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
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from ppgen.errors import UserError
from ppgen.models.base import LIKELIHOODS, GenerativeModel, observation_dist, observation_mean
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
    x_shape: tuple[int, ...] = (1, 28, 28)
    z_dim: int = 50
    likelihood: str = "bernoulli"
    hidden: tuple[int, ...] = (400,)
    net: str = field(default="mlp", metadata={"help": "decoder network: mlp, conv, or pixelcnn (autoregressive, "
                                                      "with an MLP encoder)", "choices": NETS})
    skip: bool = False
    flows: int = field(default=0, metadata={"help": "inverse autoregressive flows on q(z|x) (Kingma et al. 2016), "
                                                    "conditioned on the encoder's hidden state; torch engine only"})
    ar_channels: int = field(default=16, metadata={"help": "channels of the PixelCNN decoder (--net pixelcnn)"})
    ar_layers: int = field(default=3, metadata={"help": "residual masked 3x3 layers of the PixelCNN decoder "
                                                        "(--net pixelcnn)"})
    committed_rate: float = field(default=0.0, metadata={
        "help": "delta-VAE (Razavi et al. 2019): fix the guide's scale so every latent dimension's KL is at least "
                "this many nats (0: learned scale)"})


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
                 hidden: Sequence[int] = (400,), net: str = "mlp", skip: bool = False, flows: int = 0,
                 ar_channels: int = 16, ar_layers: int = 3, committed_rate: float = 0.0):
        config = VAEConfig(tuple(x_shape), int(z_dim), likelihood, tuple(hidden), net, bool(skip), int(flows),
                           int(ar_channels), int(ar_layers), float(committed_rate))
        if likelihood not in LIKELIHOODS:
            raise UserError(f"unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
        if z_dim < 1 or not hidden or min(hidden) < 1:
            raise UserError("z_dim and every hidden size must be positive integers")
        if not isinstance(flows, int) or isinstance(flows, bool) or flows < 0:
            raise UserError(f"flows must be a whole number, 0 or more, got {flows!r}")
        if ar_channels < 1 or ar_layers < 0:
            raise UserError("ar_channels must be at least 1 and ar_layers at least 0")
        if committed_rate < 0 or not math.isfinite(committed_rate):
            raise UserError(f"committed_rate must be 0 (learned guide scale) or a positive number of nats, "
                            f"got {committed_rate!r}")
        if flows and committed_rate:
            raise UserError("flows reshape q(z|x) and committed_rate fixes its scale: use one of them")
        super().__init__(config)
        #: the fixed guide scale of the delta-VAE, or None (learned)
        self.fixed_scale = committed_scale(committed_rate) if committed_rate > 0 else None
        self.autoregressive = net == "pixelcnn"
        n_params = 2 if likelihood == "gaussian" else 1
        if net == "pixelcnn":
            if len(x_shape) != 3:
                raise UserError(f"net='pixelcnn' needs images shaped (C, H, W), got {tuple(x_shape)}; use net='mlp'")
            self.encoder = MLPEncoder(x_shape, z_dim, hidden)
            self.decoder = PixelCNNDecoder(z_dim, x_shape, ar_channels, ar_layers, skip=skip, n_params=n_params)
        elif net == "mlp":
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
            raise UserError(f"unknown network {net!r}; choose one of {', '.join(NETS)}")
        self.flows = nn.ModuleList(_iaf_step(z_dim, hidden[-1], reverse=k % 2 == 1) for k in range(flows))

    @property
    def svi_engines(self) -> tuple[str, ...]:
        """Pyro's flows do not lower to JAX: with them the VAE trains on the torch engine. The PixelCNN decoder
        lowers, but its masked convolutions ran ~10x slower per epoch on the JAX engine than on torch (CPU), so
        ``engine="auto"`` prefers torch for it."""
        if self.config.flows:
            return ("torch",)
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
