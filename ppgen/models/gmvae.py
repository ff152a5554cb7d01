r"""Gaussian-mixture VAE: a mixture prior over z with the component c summed out, for unsupervised clustering.

The prior of the VAE is a mixture of K Gaussians with learned means and scales: the factorization of Shu's GMVAE
(2016), which is the M2 model of Kingma et al. (2014) with the class never observed and the decoder given z only; a
simplification of Dilokthanakul et al. (2016), "Deep unsupervised clustering with Gaussian mixture variational
autoencoders", whose component means come from a network of a second latent::

    p(c) = Cat(1/K),   p(z | c) = N(μ_c, diag σ_c²),   p(x | z) = Bernoulli | ContinuousBernoulli | Normal(decoder(z)),
    q(c | x) = Cat(π(x)),   q(z | x, c) = N(μ(x, c), diag σ²(x, c)).

The bound sums the component exactly (enumerated, never sampled):

    U(x) = Σ_c q(c | x) ( E_{q(z|x,c)}[log p(x | z) + log p(z | c) − log q(z | x, c)] + log p(c) − log q(c | x) )
         ≤ log p(x),

one reparameterized draw of z per component (the family's ``objective``, and ``closed_form_elbo`` for the held-out
bound); in the pair, the guide's ``c`` is marked ``infer={"enumerate": "parallel"}``, so Pyro's ``TraceEnum_ELBO``
gives the same sum, and an estimator that samples c from the guide (IWAE, AIS) sees the same joint.

Clustering. argmax_c q(c | x) assigns each example a cluster; ``family_metrics`` scores it against the data set's
labels (column ``label_column``, which the model never sees) by the clustering accuracy of Xie, Girshick & Farhadi
(2016): max over one-to-one maps m from clusters to classes of (1/n) Σ_i 1[y_i = m(c_i)], the best map found by
the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the cluster-by-class counts. With more
clusters than classes the clusters left unmatched count as wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ppgen.data import MISSING_LABEL
from ppgen.declare import column_name, option, positive_int, sizes, validate, whole_at_least
from ppgen.models.base import GenerativeModel, likelihood_option, observation_dist, observation_mean, x_shape_option
from ppgen.models.m2 import ClassEncoder, Classifier
from ppgen.nn import MLPDecoder
from ppgen.ppl import dist, pyro


@dataclass(frozen=True)
class GMVAEConfig:
    x_shape: tuple[int, ...] = x_shape_option((1, 28, 28))
    z_dim: int = option(10, positive_int, "dimension of the latent z")
    likelihood: str = likelihood_option()
    hidden: tuple[int, ...] = option((500,), sizes, "hidden layer sizes of the encoder and the cluster network (the "
                                     "decoder mirrors them)")
    components: int = option(10, whole_at_least(2), "number of mixture components (clusters) K of the prior")
    label_column: str = option("y", column_name, "the data set's column the clustering is scored against (never "
                               "seen by the model; bundled digits: y)")

    def __post_init__(self) -> None:
        validate(self)


class GMVAE(GenerativeModel):
    """The mixture-prior pair: ``model(x)`` is p(c) p(z | c) p(x | z), ``guide(x)`` is q(c | x) q(z | x, c)."""

    name = "gmvae"
    Config = GMVAEConfig
    latent_sites = ("c", "z")
    #: the exact sum over components is the family's objective, written in torch
    svi_engines = ("torch",)

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        c = self.config
        self.cluster_net = Classifier(c.x_shape, c.components, c.hidden)
        self.encoder = ClassEncoder(c.x_shape, c.components, c.z_dim, c.hidden)
        self.decoder = MLPDecoder(c.z_dim, c.x_shape, c.hidden[::-1], n_params=2 if c.likelihood == "gaussian" else 1)
        # component means spread at random (a common start at 0 would leave the components interchangeable)
        self.component_loc = nn.Parameter(torch.randn(c.components, c.z_dim))
        self.component_log_scale = nn.Parameter(torch.zeros(c.components, c.z_dim))
        self.register_buffer("prior_logits", torch.full((c.components,), -math.log(c.components)))

    @property
    def metric_inputs(self) -> tuple[str, ...]:
        """The labels the clustering is scored against."""
        return (self.config.label_column,)

    def prior_z(self, c: torch.Tensor) -> Any:
        """p(z | c) on the active backend."""
        return dist.Normal(self.component_loc[c], self.component_log_scale[c].exp()).to_event(1)

    # -- the pair ---------------------------------------------------------------------------------
    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=self.prior_logits.expand(x.shape[0], -1)))
            z = pyro.sample("z", self.prior_z(c))
            pyro.sample("x", observation_dist(self.likelihood, self.decoder(z), len(self.x_shape)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("cluster_net", self.cluster_net)
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=self.cluster_net(x)), infer={"enumerate": "parallel"})
            loc, scale = self.encoder(x, c)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # -- the bound ---------------------------------------------------------------------------------
    def enumerated_elbo(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """U(x) per example, the sum over the K components exact (``eps`` (K, rows, z_dim) fixes z's noise)."""
        k = self.config.components
        log_q = F.log_softmax(self.cluster_net(x), -1)  # (rows, K)
        every = torch.arange(k, device=x.device).unsqueeze(-1)  # (K, 1)
        loc, scale = self.encoder(x, every)  # (K, rows, z_dim)
        if eps is None:
            eps = torch.randn_like(loc)
        z = loc + scale * eps
        log_q_z = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        prior = torch.distributions.Normal(self.component_loc.unsqueeze(1), self.component_log_scale.exp().unsqueeze(1))
        log_p_z = prior.log_prob(z).sum(-1)
        log_lik = observation_dist(self.likelihood, self.decoder(z), len(self.x_shape)).log_prob(x)
        per_component = (log_lik + log_p_z - log_q_z).T + self.prior_logits  # (rows, K)
        return (log_q.exp() * (per_component - log_q)).sum(-1)

    def objective(self, x: torch.Tensor) -> torch.Tensor:
        """−U(x) per example."""
        return -self.enumerated_elbo(x)

    def closed_form_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """U(x) per example (the component summed exactly, one draw of z per component)."""
        return self.enumerated_elbo(x)

    # -- clustering, figures -----------------------------------------------------------------------
    def cluster(self, x: torch.Tensor) -> torch.Tensor:
        """argmax_c q(c | x)."""
        return self.cluster_net(x).argmax(-1)

    def family_metrics(self, x: torch.Tensor, *columns: torch.Tensor) -> dict[str, float]:
        """The number of clusters in use on ``x`` and, given its labels, the Hungarian-matched clustering accuracy."""
        with torch.no_grad():
            clusters = self.cluster(x)
        out = {"clusters_used": float(len(clusters.unique()))}
        if columns:
            y = columns[0]
            known = y != MISSING_LABEL
            if known.any():
                out["cluster_accuracy"] = clustering_accuracy(clusters[known].cpu().numpy(), y[known].cpu().numpy())
        return out

    def generate(self, n: int) -> torch.Tensor:
        """n draws of E[x | z] at z ~ p(z) (a component c ~ p(c), then z ~ p(z | c))."""
        c = torch.multinomial(self.prior_logits.exp(), n, replacement=True)
        z = self.component_loc[c] + self.component_log_scale[c].exp() * torch.randn(n, self.config.z_dim,
                                                                                    device=c.device)
        return observation_mean(self.likelihood, self.decoder(z))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z | x, c) at the most probable cluster c."""
        return self.encoder(x, self.cluster(x))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z] at the mean of q(z | x, c), c the most probable cluster."""
        return observation_mean(self.likelihood, self.decoder(self.encode(x)[0]))


def clustering_accuracy(clusters: np.ndarray, labels: np.ndarray) -> float:
    """max over one-to-one maps m of clusters to labels of mean(labels == m(clusters)), by the Hungarian algorithm on
    the cluster-by-label counts (Xie et al. 2016); unmatched clusters count as wrong."""
    from scipy.optimize import linear_sum_assignment

    cluster_ids, c = np.unique(clusters, return_inverse=True)
    label_ids, y = np.unique(labels, return_inverse=True)
    counts = np.zeros((len(cluster_ids), len(label_ids)), dtype=np.int64)
    np.add.at(counts, (c, y), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(labels))
