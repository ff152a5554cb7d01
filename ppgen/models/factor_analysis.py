r"""Bayesian factor analysis: priors on loadings and noise, every unknown sampled.

Model (d observed features, k factors, N examples)::

    μ ~ N(0, 5² I_d),   σ_j ~ LogNormal(−1, 1)          (noise standard deviations),
    W ∈ R^{d×k} lower-triangular with positive diagonal (Geweke & Zhou, 1996):
        W_jj ~ LogNormal(0, 1),  W_ij ~ N(0, 1) for i > j,  W_ij = 0 for i < j,
    z_n ~ N(0, I_k),   x_n | z_n ~ N(W z_n + μ, diag σ²).

The triangular constraint removes the rotation and sign symmetries of W. The
log-normal priors vanish at zero: a half-normal on W_jj lets chains sit where
W_jj ≈ 0 and the signs of the other loadings flip freely (a second mode), and
one on σ_j admits Heywood cases (σ_j → 0) whose funnel makes NUTS diverge.
Integrating z out gives the collapsed model used as an independent reference::

    x_n ~ N(μ, W Wᵀ + diag σ²),

and for fixed (W, μ, σ) the latent posterior is closed-form:
p(z | x) = N(M⁻¹ Wᵀ Ψ⁻¹ (x − μ), M⁻¹), M = I + Wᵀ Ψ⁻¹ W, Ψ = diag σ².

Guide: mean-field Gaussians on μ and the free loadings, log-normals on the
positive diagonal and on σ, and an amortized linear-Gaussian q(z | x) (the PPCA
encoder). The sites are ``mu``, ``noise``, ``loadings_diag``, ``loadings_lower``
(global) and ``z`` (in the ``data`` plate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ppgen.declare import OptionError, option, positive_int, validate
from ppgen.models.base import GenerativeModel, x_shape_option
from ppgen.models.ppca import LinearGaussianEncoder
from ppgen.ppl import dist, is_jax, pyro


@dataclass(frozen=True)
class FactorAnalysisConfig:
    x_shape: tuple[int, ...] = x_shape_option((5,))
    z_dim: int = option(1, positive_int, "latent factors k (fewer than the data's dimensions)")

    def __post_init__(self) -> None:
        validate(self)
        if len(self.x_shape) != 1:
            raise OptionError("x_shape", self.x_shape, "factor analysis models vectors: flatten the data first")
        if self.z_dim >= self.x_shape[0]:
            raise OptionError("z_dim", self.z_dim, f"factor analysis needs 1 <= z_dim < x_dim = {self.x_shape[0]}")


def _embedding(d: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """0/1 matrices placing the diagonal and the strictly-lower entries into W (flattened row-major)."""
    rows, cols = np.tril_indices(d, -1, k)
    low = np.zeros((len(rows), d * k), np.float32)
    low[np.arange(len(rows)), rows * k + cols] = 1
    diag = np.zeros((k, d * k), np.float32)
    diag[np.arange(k), np.arange(k) * k + np.arange(k)] = 1
    return diag, low


def _const(a: np.ndarray, like):
    return a if is_jax(like) else torch.as_tensor(a, dtype=like.dtype, device=like.device)


class FactorAnalysis(GenerativeModel):
    """Factor analysis pair with priors on every global unknown (see module docs)."""

    name = "factor_analysis"
    Config = FactorAnalysisConfig
    likelihood = "gaussian"
    latent_sites = ("mu", "noise", "loadings_diag", "loadings_lower", "z")

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        d, k = self.dims
        self.diag_embed, self.lower_embed = _embedding(d, k)
        self.n_lower = self.lower_embed.shape[0]
        self.encoder = LinearGaussianEncoder(d, k)

    @property
    def dims(self) -> tuple[int, int]:
        return self.config.x_shape[0], self.config.z_dim

    def loadings(self, diag, lower):
        """W (…, d, k) from its positive diagonal and free lower entries; works on torch and JAX."""
        d, k = self.dims
        flat = diag @ _const(self.diag_embed, diag) + lower @ _const(self.lower_embed, lower)
        return flat.reshape(flat.shape[:-1] + (d, k))

    def _globals(self):
        d, k = self.dims
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0).expand([d]).to_event(1))
        noise = pyro.sample("noise", dist.LogNormal(-1.0, 1.0).expand([d]).to_event(1))
        diag = pyro.sample("loadings_diag", dist.LogNormal(0.0, 1.0).expand([k]).to_event(1))
        lower = pyro.sample("loadings_lower", dist.Normal(0.0, 1.0).expand([self.n_lower]).to_event(1))
        return mu, noise, self.loadings(diag, lower)

    def model(self, x) -> None:
        _, k = self.dims
        mu, noise, W = self._globals()
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([k]).to_event(1))
            loc = (z[..., None, :] * W).sum(-1) + mu
            pyro.sample("x", dist.Normal(loc, noise).to_event(1), obs=x)

    def collapsed_model(self, x) -> None:
        """The same model with z integrated out: x_n ~ N(μ, W Wᵀ + diag σ²)."""
        mu, noise, W = self._globals()
        cov = W @ W.swapaxes(-1, -2) if is_jax(W) else W @ W.transpose(-1, -2)
        eye = _const(np.eye(self.dims[0], dtype=np.float32), W)
        cov = cov + eye * (noise**2)[..., None, :]
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.MultivariateNormal(mu, covariance_matrix=cov), obs=x)

    def guide(self, x) -> None:
        d, k = self.dims
        pyro.module("encoder", self.encoder)
        for name, size, positive in (("mu", d, False), ("noise", d, True), ("loadings_diag", k, True),
                                     ("loadings_lower", self.n_lower, False)):
            loc = pyro.param(f"{name}_loc", lambda size=size: torch.zeros(size))
            scale = pyro.param(f"{name}_scale", lambda size=size: 0.1 * torch.ones(size),
                               constraint=torch.distributions.constraints.positive)
            family = dist.LogNormal if positive else dist.Normal
            pyro.sample(name, family(loc, scale).to_event(1))
        with pyro.plate("data", x.shape[0]):
            loc, tril = self.encoder(x)
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=tril))

    # -- closed forms for fixed (W, μ, σ) ------------------------------------------------------
    @staticmethod
    def log_marginal(x: torch.Tensor, W: torch.Tensor, mu: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """log N(x | μ, W Wᵀ + diag σ²) per example."""
        cov = W @ W.T + torch.diag(noise**2)
        return torch.distributions.MultivariateNormal(mu, covariance_matrix=cov).log_prob(x)

    @staticmethod
    def posterior(x: torch.Tensor, W: torch.Tensor, mu: torch.Tensor, noise: torch.Tensor):
        """p(z | x) = N(M⁻¹ Wᵀ Ψ⁻¹ (x − μ), M⁻¹), M = I + Wᵀ Ψ⁻¹ W."""
        k = W.shape[1]
        wt_psi = W.T / noise**2
        cov = torch.linalg.inv(torch.eye(k) + wt_psi @ W)
        return torch.distributions.MultivariateNormal((x - mu) @ (cov @ wt_psi).T, covariance_matrix=cov)

    @staticmethod
    def simulate(n: int, W: torch.Tensor, mu: torch.Tensor, noise: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """n examples from the model with the given globals."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, W.shape[1], generator=g)
        return z @ W.T + mu + noise * torch.randn(n, W.shape[0], generator=g)

    def generate(self, n: int) -> torch.Tensor:
        """Draws from the prior predictive (globals and z from their priors)."""
        from pyro import poutine

        trace = poutine.trace(self.model).get_trace(torch.zeros(n, self.dims[0]))
        mu, noise = trace.nodes["mu"]["value"], trace.nodes["noise"]["value"]
        W = self.loadings(trace.nodes["loadings_diag"]["value"], trace.nodes["loadings_lower"]["value"])
        return trace.nodes["z"]["value"] @ W.T + mu + noise * torch.randn(n, self.dims[0])
