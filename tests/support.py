"""Shared test helpers (imported by the test modules; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch

from ppgen.data import Dataset
from ppgen.models import PPCA, VAE

#: the points and NUTS settings shared by the diagnostics and amortization tests (one compiled sampler)
POINTS = [1, 3, 5, 6]
NUTS_OPTIONS = dict(points=POINTS, chains=4, warmup=200, samples=500, seed=0)


def known_ppca(guide_at_posterior: bool = True) -> PPCA:
    """A fixed PPCA (d=5, k=2, σ=0.5), with the guide set to the exact posterior by default."""
    g = torch.Generator().manual_seed(1234)
    pair = PPCA(x_shape=(5,), z_dim=2)
    pair.set_params(torch.randn(5, 2, generator=g) * 1.5, torch.randn(5, generator=g), 0.5)
    return pair.set_guide_to_posterior() if guide_at_posterior else pair


def tiny_vae(seed: int = 0, **kw) -> VAE:
    """A 12-pixel Bernoulli VAE (z 3, hidden 16) with seeded initial weights."""
    torch.manual_seed(seed)
    return VAE(x_shape=(12,), z_dim=3, hidden=(16,), **kw)


def binary(n: int, d: int = 12, seed: int = 0) -> torch.Tensor:
    """n seeded binary vectors with unequal pixel means."""
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, d, generator=g) ** 2, generator=g)


def grey_dataset(n: int = 256, seed: int = 0) -> Dataset:
    """Grey levels with correlated pixels, dynamically binarized, with a validation split."""
    g = torch.Generator().manual_seed(seed)
    x = torch.sigmoid(torch.randn(n + 64, 2, generator=g) @ torch.randn(2, 12, generator=g) * 2)
    return Dataset(name="grey", train=x[:n], val=(x[n:] > 0.5).float(), test=x[:0], binarize="dynamic", seed=seed)
