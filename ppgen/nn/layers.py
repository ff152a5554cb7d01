"""Layers with a JAX rule of their own in :mod:`ppgen.nn.lower` (imported by it, so they import nothing of ppgen)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def raster_mask(kernel: int, mask_type: str, c_out: int, c_in: int) -> torch.Tensor:
    """The (c_out, c_in, k, k) 0/1 mask of a raster-order masked convolution ("A": centre hidden, "B": shown)."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask type must be 'A' or 'B', got {mask_type!r}")
    mask = torch.ones(c_out, c_in, kernel, kernel)
    c = kernel // 2
    mask[:, :, c, c + (mask_type == "B"):] = 0
    mask[:, :, c + 1:, :] = 0
    return mask


class MaskedConv2d(nn.Conv2d):
    """A same-padded convolution whose kernel is multiplied by a fixed raster-order mask.

    The mask is a non-persistent buffer: not a weight (not in ``state_dict``, so never trained or
    checkpointed); the JAX lowering rebuilds it from the layer (:mod:`ppgen.nn.lower`).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, mask_type: str):
        if kernel % 2 != 1:
            raise ValueError(f"masked convolutions need an odd kernel size, got {kernel}")
        super().__init__(c_in, c_out, kernel, padding=kernel // 2)
        self.mask_type = mask_type
        self.register_buffer("mask", raster_mask(kernel, mask_type, c_out, c_in), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)
