r"""Implicit generator (GAN) and, with an encoder, the BiGAN/ALI pair.

Model and guide::

    p(z) = N(0, I),   x = G(z)              (a Delta site: x is deterministic given z),
    q(z | x) = N(μ(x), diag σ²(x))          (only with ``encoder=True``: BiGAN/ALI).

``noise=σ > 0`` replaces the Delta by N(G(z), σ² I) — the Gaussian observation model
under which a GAN's log-likelihood can be estimated (AIS, Wu et al., 2017). The pair
defines no loss: the adversarial backend (:mod:`ppgen.inference.adversarial`) draws x
from the model's x site with z ~ p(z) and trains G against a critic; for ALI the critic
sees (x, z) from the model joint p(z)p(x|z) against (x, z) from p_data(x)q(z|x)
(Dumoulin et al., 2017; Donahue et al., 2017).

Networks: an MLP for vector data, or ``net="conv"`` (images, H and W divisible by 4).
``output`` squashes G's output: "sigmoid" for images in [0, 1] (the default for
images), "identity" for points (the default otherwise), or "tanh".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ppgen.errors import UserError
from ppgen.models.base import GenerativeModel
from ppgen.nn import MLPEncoder
from ppgen.nn.critics import ConvGenerator, MLPGenerator
from ppgen.ppl import dist, pyro

OUTPUTS = ("identity", "sigmoid", "tanh")


@dataclass(frozen=True)
class GANConfig:
    x_shape: tuple[int, ...] = (2,)
    z_dim: int = 2
    hidden: tuple[int, ...] = (128, 128, 128)
    net: str = "mlp"
    output: str = "identity"
    encoder: bool = False
    noise: float = 0.0


class GAN(GenerativeModel):
    """An implicit generator pair: ``model`` is p(z) δ(x − G(z)); ``guide`` q(z|x) exists with ``encoder=True``."""

    name = "gan"
    Config = GANConfig
    #: ``ppgen train gan`` trains it adversarially unless told otherwise
    default_backend = "adversarial"

    def __init__(self, x_shape: Sequence[int] = (2,), z_dim: int = 2, hidden: Sequence[int] = (128, 128, 128),
                 net: str = "mlp", output: str | None = None, encoder: bool = False, noise: float = 0.0):
        x_shape, hidden = tuple(int(s) for s in x_shape), tuple(int(h) for h in hidden)
        if output is None:
            output = "sigmoid" if len(x_shape) == 3 else "identity"
        if output not in OUTPUTS:
            raise UserError(f"unknown generator output {output!r}; choose one of {', '.join(OUTPUTS)}")
        if z_dim < 1 or not hidden or min(hidden) < 1:
            raise UserError("z_dim and every hidden size must be positive integers")
        if noise < 0:
            raise UserError(f"noise must be >= 0 (0 makes x a Delta site), got {noise}")
        super().__init__(GANConfig(x_shape, int(z_dim), hidden, net, output, bool(encoder), float(noise)))
        if net == "mlp":
            self.generator = MLPGenerator(z_dim, x_shape, hidden, output)
        elif net == "conv":
            if len(x_shape) != 3 or x_shape[1] % 4 or x_shape[2] % 4:
                raise UserError(f"net='conv' needs images (C, H, W) with H, W divisible by 4, got {x_shape}; "
                                "use net='mlp'")
            self.generator = ConvGenerator(z_dim, x_shape, hidden[-1], output=output)
        else:
            raise UserError(f"unknown network {net!r}; choose 'mlp' or 'conv'")
        self.encoder = MLPEncoder(x_shape, z_dim, hidden[::-1]) if encoder else None

    @property
    def has_guide(self) -> bool:
        return self.encoder is not None

    def model(self, x: torch.Tensor) -> None:
        pyro.module("generator", self.generator)
        event = len(self.x_shape)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.config.z_dim]).to_event(1))
            g = self.generator(z)
            if self.config.noise > 0:
                pyro.sample("x", dist.Normal(g, self.config.noise).to_event(event), obs=x)
            else:
                pyro.sample("x", dist.Delta(g, event_dim=event), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        if self.encoder is None:
            raise NotImplementedError("this GAN has no encoder; build it with encoder=True for a guide q(z|x)")
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # -- helpers used by evaluation, plots and the CLI ---------------------------------
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def generate(self, n: int) -> torch.Tensor:
        device = next(self.parameters()).device
        return self.generator(torch.randn(n, self.config.z_dim, device=device))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.encoder is None:
            raise UserError("this GAN has no encoder; build it with encoder=True (BiGAN/ALI) to encode data")
        return self.encoder(x)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])
