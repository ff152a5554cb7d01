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

Networks: an MLP for vector data, or ``net="conv"`` (images, H and W divisible by 4). On images the MLP
generator batch-normalizes its hidden layers after the first by default (``batch_norm``; Radford et al.'s DCGAN
generator does the same): without it the generator collapsed onto one digit on MNIST at every budget and setting
tried (docs/results.md, "Sample quality on full MNIST").
``output`` squashes G's output: "sigmoid" for images in [0, 1] (the default for
images), "identity" for points (the default otherwise), or "tanh".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ppgen.declare import (
    OptionError,
    auto_switch,
    boolean,
    nonnegative_float,
    one_of,
    option,
    positive_int,
    sizes,
    validate,
)
from ppgen.errors import UserError
from ppgen.models.base import GenerativeModel, x_shape_option
from ppgen.nn import MLPEncoder
from ppgen.nn.critics import ConvGenerator, MLPGenerator
from ppgen.ppl import dist, pyro

OUTPUTS = ("identity", "sigmoid", "tanh")
NETS = ("mlp", "conv")


def _output(v: Any) -> str | None:
    if v is None or v in OUTPUTS:
        return None
    return f"unknown generator output; choose one of {', '.join(OUTPUTS)} (or None: sigmoid for images, else identity)"


_output.choices = OUTPUTS  # type: ignore[attr-defined]



@dataclass(frozen=True)
class GANConfig:
    x_shape: tuple[int, ...] = x_shape_option((2,))
    z_dim: int = option(2, positive_int, "latent dimensions")
    hidden: tuple[int, ...] = option((128, 128, 128), sizes, "hidden layer sizes of the generator (MLP; the conv "
                                     "generator uses the last as its width)")
    net: str = option("mlp", one_of(NETS, "network"), "generator network: mlp, or conv for images (H, W divisible "
                      "by 4)")
    output: str | None = option(None, _output, "squashing of G's output: sigmoid (the default for images), "
                                "identity (the default otherwise) or tanh")
    batch_norm: str | None = option(None, auto_switch, "batch normalization in the MLP generator's hidden layers "
                                    "after the first: on (the default for images: without it the MLP generator "
                                    "collapsed onto one digit on MNIST) or off (the default otherwise)",
                                    absent="off")
    encoder: bool = option(False, boolean, "add an encoder q(z|x) (BiGAN/ALI)")
    noise: float = option(0.0, nonnegative_float, "standard deviation of Gaussian noise on x (0: x is a Delta site)")

    def __post_init__(self) -> None:
        validate(self)
        if self.output is None:
            object.__setattr__(self, "output", "sigmoid" if len(self.x_shape) == 3 else "identity")
        if self.batch_norm is None:
            object.__setattr__(self, "batch_norm", "on" if len(self.x_shape) == 3 and self.net == "mlp" else "off")
        if self.batch_norm == "on" and self.net != "mlp":
            raise OptionError("batch_norm", self.batch_norm, "is a setting of the MLP generator (net='mlp'); the conv "
                              "generator has none")
        if self.net == "conv" and (len(self.x_shape) != 3 or self.x_shape[1] % 4 or self.x_shape[2] % 4):
            raise OptionError("net", self.net, f"needs images (C, H, W) with H, W divisible by 4, got "
                              f"x_shape={self.x_shape}; use net='mlp'")


class GAN(GenerativeModel):
    """An implicit generator pair: ``model`` is p(z) δ(x − G(z)); ``guide`` q(z|x) exists with ``encoder=True``."""

    name = "gan"
    Config = GANConfig
    #: ``ppgen train gan`` trains it adversarially unless told otherwise
    default_backend = "adversarial"

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        c = self.config
        if c.net == "mlp":
            self.generator = MLPGenerator(c.z_dim, c.x_shape, c.hidden, c.output, batch_norm=c.batch_norm == "on")
        else:
            self.generator = ConvGenerator(c.z_dim, c.x_shape, c.hidden[-1], output=c.output)
        self.encoder = MLPEncoder(c.x_shape, c.z_dim, c.hidden[::-1]) if c.encoder else None

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
