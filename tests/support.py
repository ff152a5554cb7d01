"""Shared test helpers (imported by the test modules; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch

from ppgen.models import PPCA

#: the points and NUTS settings shared by the diagnostics and amortization tests (one compiled sampler)
POINTS = [1, 3, 5, 6]
NUTS_OPTIONS = dict(points=POINTS, chains=4, warmup=200, samples=500, seed=0)


def known_ppca(guide_at_posterior: bool = True) -> PPCA:
    """A fixed PPCA (d=5, k=2, σ=0.5), with the guide set to the exact posterior by default."""
    g = torch.Generator().manual_seed(1234)
    pair = PPCA(x_shape=(5,), z_dim=2)
    pair.set_params(torch.randn(5, 2, generator=g) * 1.5, torch.randn(5, generator=g), 0.5)
    return pair.set_guide_to_posterior() if guide_at_posterior else pair
