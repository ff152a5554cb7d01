r"""Probabilistic PCA (Tipping & Bishop, 1999): the exact ground truth.

Model and guide::

    p(z) = N(0, I_k),   p(x | z) = N(W z + μ, σ² I_d),
    q(z | x) = N(A x + b, L Lᵀ)            (amortized, full covariance).

Everything is Gaussian, so the marginal and the posterior are closed-form:

    p(x) = N(μ, W Wᵀ + σ² I),
    p(z | x) = N(M⁻¹ Wᵀ (x − μ), σ² M⁻¹),   M = Wᵀ W + σ² I.

The guide family contains the exact posterior (A = M⁻¹Wᵀ, b = −Aμ, LLᵀ = σ²M⁻¹),
so at the optimum the ELBO equals log p(x): the tests check every estimator
(ELBO, IWAE, AIS, NUTS) against these formulas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ppgen.declare import OptionError, option, positive_int, validate
from ppgen.models.base import GenerativeModel, x_shape_option
from ppgen.nn import Network
from ppgen.ppl import dist, pyro


@dataclass(frozen=True)
class PPCAConfig:
    x_shape: tuple[int, ...] = x_shape_option((2,))
    z_dim: int = option(1, positive_int, "latent dimensions (at most the data's)")

    def __post_init__(self) -> None:
        validate(self)
        if len(self.x_shape) != 1:
            raise OptionError("x_shape", self.x_shape, "PPCA models vectors: flatten the data first")
        if self.z_dim > self.x_shape[0]:
            raise OptionError("z_dim", self.z_dim, f"PPCA needs 1 <= z_dim <= x_dim = {self.x_shape[0]}")


class LinearGaussianDecoder(Network):
    """z -> (W z + μ, σ)."""

    def __init__(self, z_dim: int, x_dim: int):
        super().__init__()
        self.linear = nn.Linear(z_dim, x_dim)
        self.log_sigma = nn.Parameter(torch.zeros(()))

    def forward(self, z: torch.Tensor):
        loc = self.linear(z)
        return loc, torch.exp(self.log_sigma) + 0 * loc


class LinearGaussianEncoder(Network):
    """x -> (A x + b, L) with L lower-triangular, positive diagonal, shared across x."""

    def __init__(self, x_dim: int, z_dim: int):
        super().__init__()
        self.linear = nn.Linear(x_dim, z_dim)
        self.raw_tril = nn.Parameter(torch.eye(z_dim) * 0.5413)  # softplus(0.5413) = 1

    def forward(self, x: torch.Tensor):
        raw = self.raw_tril
        tril = torch.tril(raw, -1) + torch.diag_embed(F.softplus(torch.diagonal(raw)))
        return self.linear(x), tril


class PPCA(GenerativeModel):
    """Probabilistic PCA pair with closed-form marginal likelihood and posterior."""

    name = "ppca"
    Config = PPCAConfig
    likelihood = "gaussian"

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        (d,), k = self.config.x_shape, self.config.z_dim
        self.decoder = LinearGaussianDecoder(k, d)
        self.encoder = LinearGaussianEncoder(d, k)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.config.z_dim]).to_event(1))
            loc, scale = self.decoder(z)
            pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, tril = self.encoder(x)
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=tril))

    # -- closed forms ------------------------------------------------------------------
    @property
    def W(self) -> torch.Tensor:
        return self.decoder.linear.weight

    @property
    def mu(self) -> torch.Tensor:
        return self.decoder.linear.bias

    @property
    def sigma(self) -> torch.Tensor:
        return torch.exp(self.decoder.log_sigma)

    def set_params(self, W: torch.Tensor, mu: torch.Tensor, sigma: float) -> PPCA:
        with torch.no_grad():
            self.decoder.linear.weight.copy_(torch.as_tensor(W))
            self.decoder.linear.bias.copy_(torch.as_tensor(mu))
            self.decoder.log_sigma.fill_(float(torch.log(torch.as_tensor(sigma))))
        return self

    def marginal(self) -> torch.distributions.MultivariateNormal:
        """p(x) = N(μ, W Wᵀ + σ² I)."""
        d = self.config.x_shape[0]
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(d)
        return torch.distributions.MultivariateNormal(self.mu, covariance_matrix=cov)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) per example."""
        return self.marginal().log_prob(x)

    def posterior(self, x: torch.Tensor) -> torch.distributions.MultivariateNormal:
        """Exact p(z | x) = N(M⁻¹Wᵀ(x − μ), σ² M⁻¹)."""
        k = self.config.z_dim
        M = self.W.T @ self.W + self.sigma**2 * torch.eye(k)
        A = torch.linalg.solve(M, self.W.T)
        return torch.distributions.MultivariateNormal((x - self.mu) @ A.T, covariance_matrix=self.sigma**2 * torch.linalg.inv(M))

    def set_guide_to_posterior(self) -> PPCA:
        """Make q(z|x) the exact posterior, so ELBO = log p(x) for every x."""
        k = self.config.z_dim
        with torch.no_grad():
            M = self.W.T @ self.W + self.sigma**2 * torch.eye(k)
            A = torch.linalg.solve(M, self.W.T)
            L = torch.linalg.cholesky(self.sigma**2 * torch.linalg.inv(M))
            raw = torch.tril(L, -1) + torch.diag(torch.log(torch.expm1(torch.diagonal(L))))
            self.encoder.linear.weight.copy_(A)
            self.encoder.linear.bias.copy_(-A @ self.mu)
            self.encoder.raw_tril.copy_(raw)
        return self

    def set_guide_to_mean_field(self) -> PPCA:
        """Make q(z|x) the best mean-field Gaussian: the one closest to the posterior in KL(q ‖ p), which
        mean-field SVI converges to — the exact mean, variances 1/Λ_ii with Λ = M/σ² the posterior precision
        (the conditional variances, below the marginal ones when the posterior is correlated), no correlation.
        Its ELBO is log p(x) − ½(Σ_i log Λ_ii − log det Λ)."""
        self.set_guide_to_posterior()
        k = self.config.z_dim
        with torch.no_grad():
            precision = (self.W.T @ self.W + self.sigma**2 * torch.eye(k)) / self.sigma**2
            sd = precision.diagonal().rsqrt()
            self.encoder.raw_tril.copy_(torch.diag(torch.log(torch.expm1(sd))))
        return self

    def fit_exact(self, x: torch.Tensor) -> PPCA:
        """Maximum-likelihood W, μ, σ² in closed form (Tipping & Bishop, eq. 7-8)."""
        k = self.config.z_dim
        d = self.config.x_shape[0]
        mu = x.mean(0)
        cov = torch.cov((x - mu).T, correction=0).reshape(d, d)
        evals, evecs = torch.linalg.eigh(cov)
        evals, evecs = evals.flip(0), evecs.flip(1)
        sigma2 = evals[k:].mean() if k < d else torch.tensor(1e-6)
        W = evecs[:, :k] * torch.sqrt(torch.clamp(evals[:k] - sigma2, min=0))
        return self.set_params(W, mu, float(torch.sqrt(sigma2)))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, tril = self.encoder(x)
        return loc, torch.sqrt((tril**2).sum(-1)).expand_as(loc)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)[0]

    def generate(self, n: int) -> torch.Tensor:
        return self.decode(torch.randn(n, self.config.z_dim))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])
