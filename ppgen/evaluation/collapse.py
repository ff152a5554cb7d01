r"""Posterior-collapse diagnostics for a pair with a Gaussian-like guide.

* KL per latent dimension: E_x KL(q(z_j|x) ‖ p(z_j)), closed form for Normal q and p.
* Active units (Burda et al., 2016): A_u = Cov_x(E_{q(z|x)}[z_u]); a unit is active if
  A_u > 0.01.
* Mutual information I(x; z) under q(x, z) = p_data(x) q(z|x) (Hoffman & Johnson,
  2016; estimator of He et al., 2019): I = E_x E_q[log q(z|x)] − E_q(z)[log q(z)],
  with the aggregate posterior q(z) ≈ (1/N) Σ_n q(z|x_n) over the evaluated examples.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Normal, kl_divergence


def _gaussian_q(pair, x: torch.Tensor) -> Normal:
    with torch.no_grad():
        loc, scale = pair.encode(x)
    return Normal(loc, scale)


def kl_per_dim(pair, x: torch.Tensor) -> torch.Tensor:
    """Average over examples of KL(q(z_j|x) ‖ N(0, 1)) for every latent dimension j."""
    q = _gaussian_q(pair, x)
    return kl_divergence(q, Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale))).mean(0)


def active_units(pair, x: torch.Tensor, threshold: float = 0.01) -> tuple[int, torch.Tensor]:
    """Number of active units and the per-unit activity Cov_x(E_q[z_u])."""
    q = _gaussian_q(pair, x)
    activity = q.loc.var(0, unbiased=True)
    return int((activity > threshold).sum()), activity


def mutual_information(pair, x: torch.Tensor, seed: int = 0) -> float:
    """Estimate of I(x; z) in nats (one draw of z per example)."""
    q = _gaussian_q(pair, x)
    g = torch.Generator(device=x.device).manual_seed(seed)
    z = q.loc + q.scale * torch.randn(q.loc.shape, generator=g, device=x.device)
    neg_entropy = q.log_prob(z).sum(-1).mean()
    # log q(z_m) = logmeanexp_n log q(z_m | x_n)
    cross = Normal(q.loc[None], q.scale[None]).log_prob(z[:, None]).sum(-1)  # (M, N)
    log_qz = torch.logsumexp(cross, 1) - math.log(x.shape[0])
    return float(neg_entropy - log_qz.mean())


def report(pair, x: torch.Tensor) -> dict:
    """KL per dimension, active units and mutual information, as plain numbers."""
    kl = kl_per_dim(pair, x)
    au, activity = active_units(pair, x)
    return {
        "kl_total": float(kl.sum()),
        "kl_per_dim": [round(float(v), 4) for v in kl],
        "active_units": au,
        "activity": [round(float(v), 4) for v in activity],
        "mutual_information": mutual_information(pair, x),
    }
