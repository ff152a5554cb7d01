r"""Dirichlet-VAE: a topic model with a Dirichlet prior and a reparameterized Dirichlet guide.

Burkhardt & Kramer, "Decoupling Sparsity and Smoothness in the Dirichlet Variational Autoencoder Topic
Model", JMLR 20(131), 2019.

Model and guide, for a document's word counts x ∈ ℕ^V with N = Σ_w x_w words::

    θ ~ Dirichlet(α·1_K)                                     (the latent site "z": θ on the simplex)
    x | θ ~ Multinomial(N, p(· | θ))                          (decoder below)
    q(θ | x) = Dirichlet(α_φ(x)),  α_φ = softplus(MLP_φ(x))   (clamped to [1e-3, 1e3])

Two decoders, as the paper compares: ``"poe"``, the product of experts p(w | θ) = softmax(βᵀθ)_w (ProdLDA's),
and ``"mixture"``, LDA's p(w | θ) = Σ_k θ_k softmax(β_k)_w. The ELBO is E_q[log p(x | θ)] − KL(q ‖ p), with
gradients through θ ~ q by implicit reparameterization of the Gamma draws behind a Dirichlet draw (Figurnov
et al. 2018): Pyro's Dirichlet has ``rsample`` (torch's implicit Gamma gradient), NumPyro's Dirichlet is
reparameterized through ``jax.random.gamma``'s implicit derivative, so both SVI engines train it (checked in
the tests against finite differences of the expectation). The closed-form KL between Dirichlets (torch's
``kl_divergence``, which Pyro's ``TraceMeanField_ELBO`` uses; tested against its Monte Carlo estimate)::

    KL(Dir(a) ‖ Dir(b)) = log Γ(a₀) − Σ_k log Γ(a_k) − log Γ(b₀) + Σ_k log Γ(b_k)
                          + Σ_k (a_k − b_k)(ψ(a_k) − ψ(a₀)),            a₀ = Σ_k a_k, b₀ = Σ_k b_k

SVI uses the Monte Carlo ELBO (both engines). Batch
normalization of the concentration head and of the decoder's logits is on by default, as in ProdLDA (torch
engine only); ``batch_norm="off"`` trains on both engines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ppgen.declare import on_off, option
from ppgen.models.prodlda import (
    BACKGROUND_HELP,
    ProdLDA,
    ProdLDAConfig,
    word_counts,
)
from ppgen.nn.topics import full
from ppgen.ppl import dist
from ppgen.ppl import pyro as ppl_pyro


@dataclass(frozen=True)
class DirVAEConfig(ProdLDAConfig):
    """ProdLDA's options (the same networks); its own type so a run's config names its family. The background is
    off by default here (with it NPMI fell by 0.03 on news and by 0.2 on speeches, 5 seeds; docs/topics.md)."""

    background: str = option("off", on_off, BACKGROUND_HELP + "; off by default for the Dirichlet-VAE")


class DirVAE(ProdLDA):
    """The Dirichlet-VAE (see the module docs); ProdLDA's networks, with θ itself the latent."""

    name = "dirvae"
    Config = DirVAEConfig
    _encoder_kind = "dirichlet"

    def _prior_like(self, x):
        return dist.Dirichlet(full(self.config.topics, self.config.alpha, x))

    def model(self, x) -> None:
        ppl_pyro.module("decoder", self.decoder)
        with ppl_pyro.plate("data", x.shape[0]):
            theta = ppl_pyro.sample("z", self._prior_like(x))
            ppl_pyro.sample("x", word_counts(x, self.decoder(theta)), obs=x)

    def guide(self, x) -> None:
        ppl_pyro.module("encoder", self.encoder)
        with ppl_pyro.plate("data", x.shape[0]):
            ppl_pyro.sample("z", dist.Dirichlet(self.encoder(x)))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(θ | x) = Dirichlet(α_φ(x))."""
        q = torch.distributions.Dirichlet(self.encoder(x))
        return q.mean, q.variance.sqrt()

    def proportions(self, x: torch.Tensor) -> torch.Tensor:
        """θ at the mean of q(θ | x)."""
        return self.encode(x)[0]

    def sample_proportions(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """(n, documents, K) draws of θ ~ q(θ | x)."""
        return torch.distributions.Dirichlet(self.encoder(x)).sample((n,))

    def generate(self, n: int) -> torch.Tensor:
        device = next(self.parameters()).device
        prior = torch.distributions.Dirichlet(torch.full((self.config.topics,), self.config.alpha, device=device))
        return self.word_distribution(prior.sample((n,)))
