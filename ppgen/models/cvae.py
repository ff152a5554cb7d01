r"""Conditional VAE (Sohn, Lee & Yan, 2015): a VAE given an observed label y beside x.

"Learning structured output representation using deep conditional generative models" (NeurIPS 2015)
models an output x given an input y through a latent z; here y is a class label (the digit), observed
for every example, and x the image. Model and guide, both given y::

    p(z) = N(0, I),   p(x | z, y) = Bernoulli | ContinuousBernoulli | Normal(decoder(z, y)),
    q(z | x, y) = N(μ(x, y), diag σ²(x, y)).

Sohn et al.'s prior network p(z | y) is the fixed N(0, I) here (their "baseline" CVAE; the
factorization of Kingma et al.'s 2014 M2 model with y observed), so z carries what y does not:
the style of the digit. The ELBO of log p(x | y) is

    L(x, y) = E_q[log p(x | z, y)] − KL(q(z | x, y) ‖ p(z)),

the ELBO/IWAE/AIS estimators of :mod:`ppgen.evaluation` give it per example with the labels as
input columns (``inputs=(y,)``), and conditional generation is x = E[x | z, y] at z ~ p(z) for a
chosen y (``generate(n, labels)``).

Networks. y enters as one-hot(y) concatenated to the first layer's input, written as the equal
sum W_x x + W_y one-hot(y) = W_x x + W_y[:, y]: a learned vector per class added to the first
hidden layer's pre-activation (:class:`LabelledMLP`), which broadcasts over the particles an
estimator draws and lowers to JAX (a row lookup), so both SVI engines and NUTS run the pair.

Labels. The pair reads the input column ``label_column`` (default ``y``, the bundled digits' labels)
and needs it for every example, as integers 0 ≤ y < ``classes``: ``check_inputs`` refuses a
column with missing entries (−1, see :mod:`ppgen.data`) and says what to do. Enumerating a
missing label (the semi-supervised M2 model) is another family.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ppgen.data import MISSING_LABEL
from ppgen.declare import column_name, option, positive_int, sizes, validate, whole_at_least
from ppgen.errors import UserError
from ppgen.models.base import GenerativeModel, likelihood_option, observation_dist, observation_mean, x_shape_option
from ppgen.nn import Network
from ppgen.ppl import dist, pyro


class LabelledMLP(Network):
    """u, y -> the outputs of an MLP on [u, one-hot(y)]: h_1 = W_u u + E[y] + b, softplus hidden layers.

    ``u`` may carry leading batch dimensions beyond y's (particles); E[y] broadcasts against them.
    """

    def __init__(self, in_shape: Sequence[int], classes: int, hidden: Sequence[int], out_dim: int):
        super().__init__()
        self.in_ndim = len(in_shape)
        sizes = [math.prod(in_shape), *hidden]
        self.first = nn.Linear(sizes[0], sizes[1])
        #: W_y one-hot(y) of the first layer: one learned row per class, initialised as a Linear layer's weights
        self.label_rows = nn.Parameter(torch.empty(classes, sizes[1]).uniform_(-1, 1) / math.sqrt(sizes[0] + classes))
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[1:-1], sizes[2:]))
        self.out = nn.Linear(sizes[-1], out_dim)

    def forward(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.softplus(self.first(u.flatten(-self.in_ndim)) + self.label_rows[y])
        for layer in self.layers:
            h = F.softplus(layer(h))
        return self.out(h)


class LabelledEncoder(Network):
    """x, y -> (loc, scale) of q(z | x, y)."""

    def __init__(self, x_shape: Sequence[int], classes: int, z_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.net = LabelledMLP(x_shape, classes, hidden, 2 * z_dim)
        self.z_dim = z_dim

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        out = self.net(x, y)
        return out[..., : self.z_dim], F.softplus(out[..., self.z_dim:]) + 1e-4


class LabelledDecoder(Network):
    """z, y -> the likelihood's parameters, shaped like x (Gaussian: (loc, scale), a learned scale per pixel)."""

    def __init__(self, z_dim: int, classes: int, x_shape: Sequence[int], hidden: Sequence[int], n_params: int):
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.net = LabelledMLP((z_dim,), classes, hidden, math.prod(x_shape))
        self.log_scale = nn.Parameter(torch.zeros(math.prod(x_shape))) if n_params == 2 else None

    def forward(self, z: torch.Tensor, y: torch.Tensor):
        h = self.net(z, y)
        out = h.reshape(h.shape[:-1] + self.x_shape)
        if self.log_scale is None:
            return out
        return out, torch.exp(self.log_scale).reshape(self.x_shape) + 0 * out


def class_labels(n: int, labels: Any, classes: int, device: torch.device) -> torch.Tensor:
    """``n`` class labels on ``device`` for conditional generation: ``labels`` (an int for all n, or n of them), or
    0, 1, ..., classes − 1 repeated; a wrong count or a label outside 0..classes − 1 is a one-line UserError."""
    if labels is None:
        return torch.arange(n, device=device) % classes
    y = torch.as_tensor(labels, device=device).long().reshape(-1)
    if y.numel() == 1:
        y = y.expand(n)
    if y.shape != (n,):
        raise UserError(f"give one label or {n} labels for {n} draws, got {tuple(y.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= classes:
        raise UserError(f"labels must lie in 0..{classes - 1}, got {y.unique().tolist()}")
    return y

@dataclass(frozen=True)
class CVAEConfig:
    x_shape: tuple[int, ...] = x_shape_option((1, 28, 28))
    z_dim: int = option(20, positive_int, "dimension of the latent z (the style the label leaves open)")
    likelihood: str = likelihood_option()
    hidden: tuple[int, ...] = option((400,), sizes, "hidden layer sizes of the encoder (the decoder mirrors them)")
    classes: int = option(10, whole_at_least(2), "number of classes of the label y (0 .. classes-1)")
    label_column: str = option("y", column_name, "the data set's input column holding the label (bundled digits: y)")

    def __post_init__(self) -> None:
        validate(self)


class CVAE(GenerativeModel):
    """A conditional VAE pair: ``model(x, y)`` is p(z) p(x | z, y), ``guide(x, y)`` is q(z | x, y)."""

    name = "cvae"
    Config = CVAEConfig

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        c = self.config
        n_params = 2 if c.likelihood == "gaussian" else 1
        self.encoder = LabelledEncoder(c.x_shape, c.classes, c.z_dim, c.hidden)
        self.decoder = LabelledDecoder(c.z_dim, c.classes, c.x_shape, c.hidden[::-1], n_params)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The one input column: the label."""
        return (self.config.label_column,)

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.config.z_dim]).to_event(1))
            pyro.sample("x", observation_dist(self.likelihood, self.decoder(z, y), len(self.x_shape)), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x, y)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def check_inputs(self, x: torch.Tensor, inputs: tuple[torch.Tensor, ...], what: str = "data") -> None:
        """Every example needs its label, a whole number in [0, classes)."""
        super().check_inputs(x, inputs, what)
        (y,) = inputs
        name = self.config.label_column
        if y.is_floating_point() or y.dtype == torch.bool or y.ndim != 1:
            raise UserError(f"{what}: the conditional VAE's column {name!r} must hold one class index per example "
                            f"(integers), got {y.dtype} shaped {tuple(y.shape)}; save the labels as integers")
        missing = int((y == MISSING_LABEL).sum())
        if missing:
            raise UserError(f"{what}: {missing} of {len(y)} examples have no {name!r} label; the conditional VAE "
                            "needs every label: drop the unlabelled examples or give them their labels")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.config.classes):
            raise UserError(f"{what}: labels {name!r} run from {int(y.min())} to {int(y.max())} but the model has "
                            f"classes={self.config.classes}; build it with classes={int(y.max()) + 1}")

    # -- helpers: conditional generation, encoding -----------------------------------------
    def labels(self, n: int, labels: Any = None) -> torch.Tensor:
        """``n`` labels on the model's device (:func:`class_labels`)."""
        return class_labels(n, labels, self.config.classes, next(self.parameters()).device)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """E[x | z, y]."""
        return observation_mean(self.likelihood, self.decoder(z, y))

    def generate(self, n: int, labels: Any = None) -> torch.Tensor:
        """n draws of E[x | z, y] at z ~ p(z), for the given label(s) (default: each class in turn)."""
        y = self.labels(n, labels)
        return self.decode(torch.randn(n, self.config.z_dim, device=y.device), y)

    def encode(self, x: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z | x, y)."""
        if len(inputs) != 1:
            raise UserError("the conditional VAE encodes an image with its label: encode(x, y)")
        return self.encoder(x, inputs[0])

    def reconstruct(self, x: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """E[x | z, y] at the mean of q(z | x, y)."""
        return self.decode(self.encode(x, *inputs)[0], inputs[0])
