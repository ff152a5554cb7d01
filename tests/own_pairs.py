"""Five model/guide pairs written the way a Pyro user writes them (``ppgen.ppl``, ``pyro.param``, autoguides, input
columns, a subsampled data plate), outside ppgen's families; docs/own_pair.md and notebooks/own_pair.ipynb show
the same pairs. tests/test_own_pair_table.py runs every ppgen tool on each.

(A) ``StudentVAE``: a VAE whose likelihood is Student-t, its df and scale ``pyro.param`` with positive constraints;
(B) ``BayesianLogistic``: Bayesian logistic regression, global weights, ``AutoMultivariateNormal``, the
    features an input column ``u`` beside the label x;
(C) ``EightSchools``: the non-centered eight schools, ``AutoNormal``, the standard errors an input column;
(D) ``LabelledVAE``: a conditional VAE ``model(x, y)`` with the label an input column;
(E) ``GlobalBias``: a global bias b with its own q(b) from ``pyro.param`` and a learned prior scale, the data plate
    declared over all N examples and subsampled to the rows given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ppgen.models.base import GenerativeModel
from ppgen.nn import Network
from ppgen.ppl import autoguide, dist, pyro

positive = dist.constraints.positive


# -- (A) a VAE with a Student-t likelihood -----------------------------------------------------------------------
class Encoder(Network):
    """x -> (loc, scale) of q(z | x): one softplus hidden layer."""

    def __init__(self, d: int, k: int, hidden: int = 16):
        super().__init__()
        self.hidden, self.loc, self.scale = nn.Linear(d, hidden), nn.Linear(hidden, k), nn.Linear(hidden, k)

    def forward(self, x):
        h = F.softplus(self.hidden(x))
        return self.loc(h), F.softplus(self.scale(h)) + 1e-3


class Decoder(Network):
    """z -> the location of p(x | z)."""

    def __init__(self, k: int, d: int, hidden: int = 16):
        super().__init__()
        self.hidden, self.out = nn.Linear(k, hidden), nn.Linear(hidden, d)

    def forward(self, z):
        return self.out(F.softplus(self.hidden(z)))


@dataclass(frozen=True)
class StudentVAEConfig:
    x_shape: tuple[int, ...] = (4,)
    z_dim: int = 2


class StudentVAE(GenerativeModel):
    r"""z ~ N(0, I),  x | z ~ StudentT(ν, decoder(z), σ) per coordinate;  q(z | x) = N(μ(x), diag σ²(x)).
    ν and σ are ``pyro.param`` sites (positive), trained with the networks."""

    name = "guide_student_vae"
    Config = StudentVAEConfig

    def __init__(self, *args, **options):
        super().__init__(*args, **options)
        d, k = self.config.x_shape[0], self.config.z_dim
        self.encoder, self.decoder = Encoder(d, k), Decoder(k, d)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        df = pyro.param("df", torch.tensor(10.0), constraint=positive)
        scale = pyro.param("scale", torch.tensor(1.0), constraint=positive)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.config.z_dim]).to_event(1))
            pyro.sample("x", dist.StudentT(df, self.decoder(z), scale).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def student_vae_data(n: int = 128, d: int = 4, seed: int = 0) -> torch.Tensor:
    """x = A z + 0.3 t₃ noise: a 2-dimensional latent under heavy-tailed noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    a = rng.normal(size=(2, d))
    return torch.as_tensor(z @ a + 0.3 * rng.standard_t(3, (n, d)), dtype=torch.float32)


# -- (B) Bayesian logistic regression ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BayesianLogisticConfig:
    x_shape: tuple[int, ...] = (1,)
    features: int = 5


class BayesianLogistic(GenerativeModel):
    r"""w ~ N(0, I),  b ~ N(0, 5²),  y_n | w, b ~ Bernoulli(σ(u_nᵀ w + b)): the label y_n is the example x_n, the
    features u_n the input column ``u``. The guide is Pyro's AutoMultivariateNormal over (w, b)."""

    name = "guide_logistic"
    Config = BayesianLogisticConfig
    inputs = ("u",)
    latent_sites = ("w", "b")

    def __init__(self, *args, **options):
        super().__init__(*args, **options)
        self.auto = autoguide("AutoMultivariateNormal", self.model)

    def model(self, x, u):
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([self.config.features]).to_event(1))
        b = pyro.sample("b", dist.Normal(0.0, 5.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Bernoulli(logits=(u * w).sum(-1) + b), obs=x[..., 0])

    def guide(self, x, u):
        return self.auto(x, u)


def breast_cancer(n: int = 200, features: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels (n, 1), standardized first ``features`` columns (n, features)) of scikit-learn's breast cancer set."""
    from sklearn.datasets import load_breast_cancer

    u, y = load_breast_cancer(return_X_y=True)
    u = u[:n, :features]
    u = (u - u.mean(0)) / u.std(0)
    return torch.as_tensor(y[:n, None], dtype=torch.float32), torch.as_tensor(u, dtype=torch.float32)


# -- (C) eight schools, non-centered -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SchoolsConfig:
    x_shape: tuple[int, ...] = (1,)


class EightSchools(GenerativeModel):
    r"""μ ~ N(0, 5²),  τ ~ HalfCauchy(5),  θ̃_j ~ N(0, 1),  y_j ~ N(μ + τ θ̃_j, σ_j²): the effect y_j is the example,
    its standard error σ_j the input column ``sigma``. The guide is Pyro's AutoNormal."""

    name = "guide_eight_schools"
    Config = SchoolsConfig
    inputs = ("sigma",)
    latent_sites = ("mu", "tau", "theta_tilde")

    def __init__(self, *args, **options):
        super().__init__(*args, **options)
        self.auto = autoguide("AutoNormal", self.model)

    def model(self, x, sigma):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("data", x.shape[0]):
            theta_tilde = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(mu + tau * theta_tilde, sigma), obs=x[..., 0])

    def guide(self, x, sigma):
        return self.auto(x, sigma)


def eight_schools() -> tuple[torch.Tensor, torch.Tensor]:
    """(effects (8, 1), standard errors (8,)) of Rubin (1981)."""
    y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    return y[:, None], sigma


# -- (D) a conditional VAE --------------------------------------------------------------------------------------
class LabelledNet(Network):
    """(u, y) -> an MLP of [u, one-hot(y)]: one learned row per class added to the first layer (a row lookup
    broadcasts over the particles an estimator adds in front of u)."""

    def __init__(self, d_in: int, classes: int, d_out: int, hidden: int = 16):
        super().__init__()
        self.first, self.out = nn.Linear(d_in, hidden), nn.Linear(hidden, d_out)
        self.rows = nn.Parameter(0.1 * torch.randn(classes, hidden))

    def forward(self, u, y):
        return self.out(F.softplus(self.first(u) + self.rows[y]))


class LabelledEncoder(LabelledNet):
    """(x, y) -> (loc, scale) of q(z | x, y); the softplus inside the network, where the JAX engine lowers it."""

    def __init__(self, d: int, classes: int, k: int):
        super().__init__(d, classes, 2 * k)
        self.k = k

    def forward(self, x, y):
        out = super().forward(x, y)
        return out[..., : self.k], F.softplus(out[..., self.k:]) + 1e-3


@dataclass(frozen=True)
class LabelledVAEConfig:
    x_shape: tuple[int, ...] = (4,)
    z_dim: int = 2
    classes: int = 3


class LabelledVAE(GenerativeModel):
    r"""z ~ N(0, I),  x | z, y ~ N(decoder(z, y), 0.5² I);  q(z | x, y) = N(μ(x, y), diag σ²(x, y)): the label y
    is the input column ``y``."""

    name = "guide_labelled_vae"
    Config = LabelledVAEConfig
    inputs = ("y",)

    def __init__(self, *args, **options):
        super().__init__(*args, **options)
        d, k, c = self.config.x_shape[0], self.config.z_dim, self.config.classes
        self.encoder, self.decoder = LabelledEncoder(d, c, k), LabelledNet(k, c, d)

    def model(self, x, y):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.config.z_dim]).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z, y), 0.5).to_event(1), obs=x)

    def guide(self, x, y):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x, y)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def labelled_data(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (n, 4), labels (n,) in 0..2): a class mean plus a 2-dimensional latent."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    means = 2.0 * rng.normal(size=(3, 4))
    x = means[y] + rng.normal(size=(n, 2)) @ rng.normal(size=(2, 4)) + 0.5 * rng.normal(size=(n, 4))
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)


# -- (E) a global bias, the data plate subsampled ------------------------------------------------------------------
@dataclass(frozen=True)
class GlobalBiasConfig:
    x_shape: tuple[int, ...] = (2,)
    n: int = 64


class GlobalBias(GenerativeModel):
    r"""b ~ N(0, τ² I),  x_n | b ~ N(b, I), n = 1..N;  q(b) = N(m, diag s²).  τ (the prior scale, positive), m and s
    (positive) are ``pyro.param`` sites. The data plate declares all N = ``n`` examples and subsamples the rows
    it is given (``subsample_size``): Pyro scales the likelihood by N/B on a minibatch."""

    name = "guide_global_bias"
    Config = GlobalBiasConfig
    latent_sites = ("b",)

    def model(self, x):
        tau = pyro.param("prior_scale", torch.tensor(1.0), constraint=positive)
        b = pyro.sample("b", dist.Normal(0.0, tau).expand([self.config.x_shape[0]]).to_event(1))
        with pyro.plate("data", self.config.n, subsample_size=x.shape[0]):
            pyro.sample("x", dist.Normal(b, 1.0).to_event(1), obs=x)

    def guide(self, x):
        d = self.config.x_shape[0]
        loc = pyro.param("b_loc", torch.zeros(d))
        scale = pyro.param("b_scale", torch.ones(d), constraint=positive)
        pyro.sample("b", dist.Normal(loc, scale).to_event(1))


def global_bias_data(n: int = 64, seed: int = 0) -> torch.Tensor:
    """n draws of N((1, −2), I)."""
    rng = np.random.default_rng(seed)
    return torch.as_tensor(np.array([1.0, -2.0]) + rng.normal(size=(n, 2)), dtype=torch.float32)
