"""Networks of the adversarial family: critics, the implicit generator and the feature classifier.

A critic (discriminator) maps an example — or, for ALI/BiGAN, an (x, z) pair, or for
PacGAN a *pack* of m examples — to one real score (a logit for the GAN losses, an
unbounded value for WGAN). :func:`critic_for` picks the architecture from the data's
shape alone (images (C, H, W) with H and W divisible by 4 get convolutions, anything
else an MLP on the flattened example), never from a model's name. No batch
normalization anywhere in a critic: the WGAN-GP penalty is per-example.

:class:`MLPGenerator` is the implicit generator's network (LeakyReLU MLP, the usual
choice on the 2-D mixtures; ppgen's VAE decoders use softplus, which blurs the sharp
transitions between separated modes). :class:`ConvGenerator` is the DCGAN-style image
generator. :class:`FeatureClassifier` is the small classifier whose penultimate layer is
the feature space of FID/KID/precision-recall and whose logits feed the Inception Score
(:mod:`ppgen.evaluation.samples`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ppgen.nn.networks import Network

_SLOPE = 0.2


def _conv_ok(x_shape: Sequence[int]) -> bool:
    return len(x_shape) == 3 and x_shape[1] % 4 == 0 and x_shape[2] % 4 == 0 and x_shape[1] >= 8


class MLPCritic(Network):
    """(pack of) flattened x [, z] -> score: LeakyReLU(0.2) MLP.

    ``pack`` examples are concatenated into one input (Lin et al., 2018, PacGAN); ``z_dim > 0``
    appends the latent for the joint critic of ALI/BiGAN.
    """

    def __init__(self, x_shape: Sequence[int], hidden: Sequence[int] = (128, 128, 128), z_dim: int = 0, pack: int = 1):
        super().__init__()
        self.x_ndim = len(x_shape)
        self.pack = pack
        sizes = [pack * (math.prod(x_shape) + z_dim), *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(sizes[-1], 1)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        h = x.flatten(-self.x_ndim)
        if z is not None:
            h = torch.cat([h, z.flatten(1)], -1)
        h = h.reshape(h.shape[0] // self.pack, -1)
        for layer in self.layers:
            h = F.leaky_relu(layer(h), _SLOPE)
        return self.out(h).squeeze(-1)


class ConvCritic(Network):
    """Images (C, H, W) -> score: two stride-2 convolutions, a dense layer [+ z branch] and a linear head.

    A pack of m images is stacked along channels (PacGAN's image form).
    """

    def __init__(self, x_shape: Sequence[int], channels: int = 64, hidden: int = 512, z_dim: int = 0, pack: int = 1):
        super().__init__()
        c, h, w = x_shape
        self.x_shape, self.pack = tuple(x_shape), pack
        self.conv1 = nn.Conv2d(pack * c, channels, 4, 2, 1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 4, 2, 1)
        self.dense = nn.Linear(2 * channels * (h // 4) * (w // 4) + pack * z_dim, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        c, h, w = self.x_shape
        x = x.reshape(-1, self.pack * c, h, w)
        f = F.leaky_relu(self.conv1(x), _SLOPE)
        f = F.leaky_relu(self.conv2(f), _SLOPE).flatten(1)
        if z is not None:
            f = torch.cat([f, z.reshape(f.shape[0], -1)], -1)
        return self.out(F.leaky_relu(self.dense(f), _SLOPE)).squeeze(-1)


def critic_for(x_shape: Sequence[int], z_dim: int = 0, pack: int = 1, hidden: Sequence[int] | None = None,
               net: str = "auto") -> Network:
    """The critic for examples shaped ``x_shape`` (chosen by shape; ``net`` = "auto" | "mlp" | "conv").

    ``z_dim > 0`` gives a joint critic D(x, z) (ALI/BiGAN); ``pack`` the PacGAN critic.
    """
    x_shape = tuple(x_shape)
    use_conv = net == "conv" or (net == "auto" and _conv_ok(x_shape))
    if use_conv:
        if not _conv_ok(x_shape):
            raise ValueError(f"a convolutional critic needs images (C, H, W) with H, W divisible by 4, got {x_shape}")
        return ConvCritic(x_shape, hidden=(hidden or (512,))[-1], z_dim=z_dim, pack=pack)
    return MLPCritic(x_shape, hidden=tuple(hidden or (128, 128, 128)), z_dim=z_dim, pack=pack)


class MLPGenerator(Network):
    """z -> x: LeakyReLU(0.2) MLP, then ``output`` ("identity" | "sigmoid" | "tanh"), reshaped to ``x_shape``.

    ``batch_norm=True`` normalizes every hidden layer after the first over the batch before its activation (as
    DCGAN's generator and the usual MNIST MLP GANs do; the running statistics in evaluation mode).
    """

    def __init__(self, z_dim: int, x_shape: Sequence[int], hidden: Sequence[int] = (128, 128, 128),
                 output: str = "identity", batch_norm: bool = False):
        super().__init__()
        self.x_shape, self.output = tuple(x_shape), output
        sizes = [z_dim, *hidden, math.prod(x_shape)]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        # keyed by layer index: a generator without batch norm keeps the state dict it always had
        self.norms = nn.ModuleDict({str(i): nn.BatchNorm1d(sizes[i + 1]) for i in range(1, len(hidden))}
                                   if batch_norm else {})

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if str(i) in self.norms:
                h = self.norms[str(i)](h.reshape(-1, h.shape[-1])).reshape(h.shape)
            if i < len(self.layers) - 1:
                h = F.leaky_relu(h, _SLOPE)
        return _squash(h, self.output).reshape(h.shape[:-1] + self.x_shape)


class ConvGenerator(Network):
    """z -> dense -> two stride-2 transposed convolutions -> image (DCGAN shape, no batch norm)."""

    def __init__(self, z_dim: int, x_shape: Sequence[int], hidden: int = 1024, channels: int = 64,
                 output: str = "sigmoid"):
        super().__init__()
        c, h, w = x_shape
        self.x_shape, self.z_dim, self.output = tuple(x_shape), z_dim, output
        self.small = (2 * channels, h // 4, w // 4)
        self.dense1 = nn.Linear(z_dim, hidden)
        self.dense2 = nn.Linear(hidden, math.prod(self.small))
        self.deconv1 = nn.ConvTranspose2d(2 * channels, channels, 4, 2, 1)
        self.deconv2 = nn.ConvTranspose2d(channels, c, 4, 2, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        h = F.relu(self.dense1(z.reshape(-1, self.z_dim)))
        h = F.relu(self.dense2(h)).reshape((-1,) + self.small)
        h = F.relu(self.deconv1(h))
        return _squash(self.deconv2(h), self.output).reshape(lead + self.x_shape)


def _squash(h: torch.Tensor, output: str) -> torch.Tensor:
    if output == "sigmoid":
        return torch.sigmoid(h)
    if output == "tanh":
        return torch.tanh(h)
    return h


class FeatureClassifier(Network):
    """Classifier whose penultimate activations are the feature space of the sample-quality metrics.

    Images: two conv blocks (conv-ReLU-maxpool) then a dense layer of ``num_features``;
    vectors: an MLP. ``features(x)`` gives the penultimate layer, ``forward(x)`` the logits.
    """

    def __init__(self, x_shape: Sequence[int], num_classes: int, num_features: int = 128, channels: int = 32):
        super().__init__()
        self.x_shape, self.num_classes, self.num_features = tuple(x_shape), num_classes, num_features
        if len(self.x_shape) == 3 and min(self.x_shape[1:]) >= 4:
            c, h, w = self.x_shape
            self.body = nn.Sequential(
                nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(2 * channels * (h // 4) * (w // 4), num_features), nn.ReLU(),
            )
        else:
            d = math.prod(self.x_shape)
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(d, num_features), nn.ReLU(),
                                      nn.Linear(num_features, num_features), nn.ReLU())
        self.head = nn.Linear(num_features, num_classes)
        #: features are divided by this (their RMS on the training data, set after training) so
        #: they are O(1) like Inception's pooled features; the logits see the unscaled activations
        self.register_buffer("feature_scale", torch.ones(()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape((-1,) + self.x_shape)) / self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x) * self.feature_scale)

