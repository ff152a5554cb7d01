r"""Log-likelihood estimates per example: ELBO and the IWAE bound.

With z_k ~ q(z|x) and log weights log w_k = log p(x, z_k) − log q(z_k|x):

    ELBO     = E[log w]                                 ≤ log p(x)
    IWAE_K   = E[log (1/K) Σ_k w_k]   (Burda et al., 2016)

and ELBO = IWAE_1 ≤ IWAE_K ≤ IWAE_{K+1} → log p(x). Both are computed from
the pair's own sample sites: the guide is traced inside a vectorized
``particles`` plate and the model replayed on its draws, so the encoder runs
once per example and the decoder once per particle. Work is chunked over
examples and particles so K = 1000 on 1,000 digits stays in memory.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro import poutine


def log_weights(pair, x: torch.Tensor, k: int) -> torch.Tensor:
    """log p(x, z_k) − log q(z_k | x) for k particles: shape (k, batch)."""
    dim = -(pair.max_plate_nesting + 1)
    with pyro.validation_enabled(False), torch.no_grad(), pyro.plate("particles", k, dim=dim):
        guide_tr = poutine.trace(pair.guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(pair.model, trace=guide_tr)).get_trace(x)
    total = torch.zeros(k, x.shape[0], device=x.device)
    for tr, sign in ((model_tr, 1.0), (guide_tr, -1.0)):
        for site in tr.nodes.values():
            if site["type"] == "sample":
                with torch.no_grad():  # a distribution may compute lazily (NADE): keep it out of autograd
                    lp = site["fn"].log_prob(site["value"]) * site["scale"]
                while lp.dim() > 2:  # plates other than particles and data (rightmost) are summed out
                    lp = lp.sum(1)
                total = total + sign * lp
    return total


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _budget(pair, k: int, budget: int) -> tuple[int, int]:
    per_particle = math.prod(pair.x_shape)
    rows = max(1, budget // per_particle)
    k_chunk = min(k, rows)
    return k_chunk, max(1, rows // k_chunk)


def iwae(pair, x: torch.Tensor, k: int = 1000, budget: int = 8_000_000) -> torch.Tensor:
    """IWAE_k estimate of log p(x) per example (a lower bound that tightens with k)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    k_chunk, b_chunk = _budget(pair, k, budget)
    out = []
    for rows in _chunks(x.shape[0], b_chunk):
        parts = [torch.logsumexp(log_weights(pair, x[rows], len(range(*ks.indices(k)))), 0) for ks in _chunks(k, k_chunk)]
        out.append(torch.logsumexp(torch.stack(parts), 0) - math.log(k))
    return torch.cat(out)


def elbo(pair, x: torch.Tensor, num_samples: int = 1, budget: int = 8_000_000) -> torch.Tensor:
    """Monte Carlo ELBO per example, averaged over ``num_samples`` draws of q."""
    k_chunk, b_chunk = _budget(pair, num_samples, budget)
    out = []
    for rows in _chunks(x.shape[0], b_chunk):
        sums = [log_weights(pair, x[rows], len(range(*ks.indices(num_samples)))).sum(0)
                for ks in _chunks(num_samples, k_chunk)]
        out.append(torch.stack(sums).sum(0) / num_samples)
    return torch.cat(out)


def bits_per_dim(log_px: torch.Tensor, x_shape) -> torch.Tensor:
    """−log₂ p(x) / D."""
    return -log_px / (math.log(2) * math.prod(x_shape))
