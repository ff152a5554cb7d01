r"""An autoregressive image decoder conditioned on a code: a small PixelCNN (van den Oord et al., 2016).

p(x | z) = Π_i p(x_i | x_<i, z), pixels in raster order (row by row, left to right). Masked
convolutions keep the order: the first layer's mask "A" hides the centre pixel and everything
after it, the later layers' mask "B" shows the centre (which by then holds only earlier pixels).
The code enters as in the conditional PixelCNN (van den Oord et al., 2016, "Conditional image
generation with PixelCNN decoders"): a linear map of z, one value per channel, is added to a
layer's feature maps — to the first layer only, or with ``skip=True`` (the Skip-VAE of Dieng et
al., 2019) to every masked layer, so the decoder cannot lose z on its way up.

Given x (teacher forcing) one pass gives every pixel's logits, so log p(x | z) is exact and costs
one forward call; drawing x takes one call per pixel (:meth:`PixelCNNDecoder.sample`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ppgen.nn.layers import MaskedConv2d, raster_mask
from ppgen.nn.networks import Network

__all__ = ["MaskedConv2d", "PixelCNNDecoder", "raster_mask"]


class PixelCNNDecoder(Network):
    """(z, x) -> the likelihood's parameters of every pixel given the earlier pixels and z, shaped like x.

    One 5x5 mask-A layer, ``layers`` residual 3x3 mask-B layers (h <- h + relu(conv(h) + W_l z)),
    a 1x1 output layer. ``n_params`` = 1 gives logits; 2 gives (loc, scale) of a Gaussian. ``x``
    may have fewer leading dimensions than ``z`` (particles of z share the observed x).
    """

    def __init__(self, z_dim: int, x_shape: Sequence[int], channels: int = 16, layers: int = 3, skip: bool = False,
                 n_params: int = 1, first_kernel: int = 5):
        super().__init__()
        if len(x_shape) != 3:
            raise ValueError(f"the PixelCNN decoder needs images shaped (C, H, W), got {tuple(x_shape)}")
        if channels < 1 or layers < 0:
            raise ValueError("the PixelCNN decoder needs channels >= 1 and layers >= 0")
        self.x_shape, self.z_dim, self.skip, self.n_params = tuple(x_shape), z_dim, skip, n_params
        c = x_shape[0]
        self.first = MaskedConv2d(c, channels, first_kernel, "A")
        self.hidden = nn.ModuleList(MaskedConv2d(channels, channels, 3, "B") for _ in range(layers))
        self.cond = nn.ModuleList(nn.Linear(z_dim, channels) for _ in range(1 + (layers if skip else 0)))
        self.out = nn.Conv2d(channels, c * n_params, 1)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> Any:
        lead = z.shape[:-1]
        x = x.expand(lead + self.x_shape).reshape((-1,) + self.x_shape)
        zf = z.reshape(-1, self.z_dim)
        h = F.relu(self.first(x) + self.cond[0](zf)[:, :, None, None])
        for i, layer in enumerate(self.hidden):
            a = layer(h)
            if self.skip:
                a = a + self.cond[i + 1](zf)[:, :, None, None]
            h = h + F.relu(a)
        out = self.out(h)
        if self.n_params == 1:
            return out.reshape(lead + self.x_shape)
        c = self.x_shape[0]
        loc = out[:, :c].reshape(lead + self.x_shape)
        return loc, torch.exp(out[:, c:]).reshape(lead + self.x_shape)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, draw) -> torch.Tensor:
        """x ~ p(x | z) pixel by pixel in raster order: ``draw(params_at_pixel)`` draws one pixel (all channels)
        from the likelihood's parameters there. z: (n, z_dim) -> x: (n, C, H, W)."""
        _, h, w = self.x_shape
        x = torch.zeros((z.shape[0],) + self.x_shape, device=z.device)
        for i in range(h):
            for j in range(w):
                params = self(z, x)
                at = tuple(p[:, :, i, j] for p in params) if isinstance(params, tuple) else params[:, :, i, j]
                x[:, :, i, j] = draw(at)
        return x
