r"""Denoisers for diffusion models: ε_θ(x_t, t) (or x̂_0, or v̂) shaped like x_t.

* :class:`TimeEmbedding` — the sinusoidal embedding of the timestep (Vaswani et al., 2017, as used by Ho et
  al., 2020): e(t) = [sin(t ω_k), cos(t ω_k)]_k with ω_k = 10000^{−k/(d/2−1)}, then a two-layer SiLU MLP.
* :class:`MLPDenoiser` — for vectors (ring-8, grid-25, flattened digits): SiLU layers, each shifted by a
  projection of the time embedding.
* :class:`UNetDenoiser` — for images (C, H, W): residual blocks (group norm, SiLU, 3x3 convolutions, the time
  embedding added in the middle), one stride-2 down- and up-sampling level per ``channel_mult`` entry, skip
  connections (the DDPM U-Net of Ho et al., 2020); ``attention=True`` adds a self-attention block at the lowest
  resolution, after the middle residual block (Ho et al. put one at 16x16; :class:`SelfAttention`).

``outputs=2`` adds a second head of the same shape (a linear layer / a 3x3 convolution on the last features):
the interpolation v of a learned reverse-step variance (Nichol & Dhariwal, 2021); ``forward`` then returns
``(prediction, v)``.

Both take ``(x, t)`` with ``t`` a float tensor shaped like x's leading (batch) dims, accept any number of
leading dims, and lower to JAX like every :class:`~ppgen.nn.Network` (the lowering rules they need — sin,
cos, group norm, nearest up-sampling — are in :mod:`ppgen.nn.lower`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ppgen.nn.networks import Network


class TimeEmbedding(nn.Module):
    """t (any shape) -> (..., dim): sinusoidal features of t, then Linear-SiLU-Linear."""

    def __init__(self, dim: int):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"the time embedding needs an even size >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs)
        self.lin1 = nn.Linear(dim, dim)
        self.lin2 = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.unsqueeze(-1) * self.freqs
        h = torch.cat([torch.sin(angles), torch.cos(angles)], -1)
        return self.lin2(F.silu(self.lin1(h)))


class MLPDenoiser(Network):
    """(x_t, t) -> output shaped like x_t: h ← SiLU(W_l h + U_l e(t)) for each hidden layer, then linear."""

    def __init__(self, x_shape: Sequence[int], hidden: Sequence[int] = (256, 256), time_dim: int = 64,
                 outputs: int = 1):
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.x_ndim = len(self.x_shape)
        d = math.prod(self.x_shape)
        self.time = TimeEmbedding(time_dim)
        sizes = [d, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.time_proj = nn.ModuleList(nn.Linear(time_dim, b) for b in hidden)
        self.out = nn.Linear(sizes[-1], d)
        self.out_v = nn.Linear(sizes[-1], d) if _outputs(outputs) == 2 else None

    def forward(self, x: torch.Tensor, t: torch.Tensor):
        e = F.silu(self.time(t))
        h = x.flatten(-self.x_ndim)
        for layer, proj in zip(self.layers, self.time_proj):
            h = F.silu(layer(h) + proj(e))
        out = self.out(h)
        out = out.reshape(out.shape[:-1] + self.x_shape)
        if self.out_v is None:
            return out
        v = self.out_v(h)
        return out, v.reshape(v.shape[:-1] + self.x_shape)


def _outputs(outputs: int) -> int:
    if outputs not in (1, 2):
        raise ValueError(f"a denoiser has 1 or 2 outputs (the prediction, and the variance's v), got {outputs}")
    return outputs


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv, + time projection, GroupNorm-SiLU-Conv, plus a (1x1 when channels change) skip."""

    def __init__(self, c_in: int, c_out: int, time_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(math.gcd(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.time = nn.Linear(time_dim, c_out)
        self.norm2 = nn.GroupNorm(math.gcd(groups, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(e).unsqueeze(-1).unsqueeze(-1)
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the pixels of (B, C, H, W) features, with a residual connection:
    h + W_o softmax(QᵀK / √C) V, with Q, K, V = 1x1 convolutions of GroupNorm(h) (Vaswani et al., 2017; the block
    of the DDPM U-Net, Ho et al., 2020). The output projection starts at zero, so the block starts as the
    identity."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(math.gcd(groups, channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.scale = 1.0 / math.sqrt(channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(h)).flatten(2).chunk(3, 1)  # each (B, C, HW)
        weights = F.softmax(torch.matmul(q.transpose(1, 2), k) * self.scale, dim=-1)  # (B, HW, HW)
        out = torch.matmul(v, weights.transpose(1, 2))  # (B, C, HW)
        return h + self.proj(out.reshape(h.shape))


class UNetDenoiser(Network):
    """(x_t, t) -> output shaped like x_t (C, H, W): a small U-Net (see the module docs).

    ``channel_mult`` (c_1, ..., c_L): level l works at ``channels * c_l`` channels and resolution H / 2^(l−1);
    H and W must be divisible by 2^(L−1).
    """

    def __init__(self, x_shape: Sequence[int], channels: int = 32, channel_mult: Sequence[int] = (1, 2),
                 time_dim: int = 64, groups: int = 8, outputs: int = 1, attention: bool = False):
        super().__init__()
        if len(x_shape) != 3:
            raise ValueError(f"the U-Net needs images shaped (C, H, W), got {tuple(x_shape)}; use net='mlp'")
        c, height, width = x_shape
        factor = 2 ** (len(channel_mult) - 1)
        if height % factor or width % factor:
            raise ValueError(f"the U-Net with {len(channel_mult)} levels needs height and width divisible by "
                             f"{factor}, got {height}x{width}")
        self.x_shape = tuple(x_shape)
        self.time = TimeEmbedding(time_dim)
        widths = [channels * m for m in channel_mult]
        self.inp = nn.Conv2d(c, widths[0], 3, 1, 1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = widths[0]
        for i, w in enumerate(widths):
            self.down.append(ResBlock(prev, w, time_dim, groups))
            prev = w
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(w, w, 3, 2, 1))
        self.mid = ResBlock(prev, prev, time_dim, groups)
        self.attention = SelfAttention(prev, groups) if attention else None
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            self.up.append(ResBlock(prev + w, w, time_dim, groups))
            prev = w
            if i > 0:
                self.upsample.append(nn.Conv2d(w, widths[i - 1], 3, 1, 1))
                prev = widths[i - 1]
        self.out_norm = nn.GroupNorm(math.gcd(groups, prev), prev)
        self.out = nn.Conv2d(prev, c, 3, 1, 1)
        self.out_v = nn.Conv2d(prev, c, 3, 1, 1) if _outputs(outputs) == 2 else None

    def forward(self, x: torch.Tensor, t: torch.Tensor):
        lead = x.shape[:-3]
        h = x.reshape((-1,) + self.x_shape)
        e = F.silu(self.time(t.reshape(-1)))
        h = self.inp(h)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, e)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, e)
        if self.attention is not None:
            h = self.attention(h)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips[len(skips) - 1 - i]], 1), e)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = F.silu(self.out_norm(h))
        out = self.out(h).reshape(lead + self.x_shape)
        if self.out_v is None:
            return out
        return out, self.out_v(h).reshape(lead + self.x_shape)
