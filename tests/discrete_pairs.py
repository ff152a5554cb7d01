r"""Gaussian-mixture pairs with a discrete latent, written the way a Pyro user writes them (``ppgen.ppl``,
``pyro.param``, ``infer={"enumerate": ...}``), and their exact answers.

The model, per example (coordinates j = 1..d)::

    c ~ Categorical(π),   z ~ N(0, s² I),   x | c, z ~ N(μ_c + z, σ² I)

so that, exactly,

    p(x)        = Σ_c π_c N(x; μ_c, (s² + σ²) I)
    p(c | x)    ∝ π_c N(x; μ_c, (s² + σ²) I)
    p(z | x, c) = N(z; r (x − μ_c), r σ² I),   r = s² / (s² + σ²)
    E[z | x]    = Σ_c p(c | x) r (x − μ_c).

(F) ``ComponentMixture``: c summed out in the model (model-side enumeration, or left to sampling, or marked
    "sequential"), the guide q(z | x) an encoder network.
(G) ``LabelGuideMixture``: c drawn by the guide (guide-side enumeration, as M2's label): q(c | x) ∝ p(c | x)^τ and
    q(z | x, c) = N(r (x − μ_c), κ² r σ² I); τ = κ = 1 is the exact posterior, whose log weight is log p(x) for every
    draw; the ELBO of any τ, κ has a closed form (:func:`label_guide_elbo`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ppgen.models.base import GenerativeModel
from ppgen.nn import Network
from ppgen.ppl import dist, pyro

simplex = dist.constraints.simplex
MEANS = ((-2.0, 0.0), (2.0, 1.0), (0.0, -2.5))
WEIGHTS = (0.5, 0.3, 0.2)
PRIOR_SCALE, NOISE = 0.7, 0.5


class MixtureEncoder(Network):
    """x -> (loc, scale) of q(z | x): one softplus hidden layer."""

    def __init__(self, d: int, hidden: int = 8):
        super().__init__()
        self.hidden, self.loc, self.scale = nn.Linear(d, hidden), nn.Linear(hidden, d), nn.Linear(hidden, d)

    def forward(self, x):
        h = F.softplus(self.hidden(x))
        return self.loc(h), F.softplus(self.scale(h)) + 1e-3


@dataclass(frozen=True)
class MixtureConfig:
    x_shape: tuple[int, ...] = (2,)
    enumerate: str = "parallel"  # "parallel", "sequential", or "" (sampled)
    spread: float = 1.0  # the component means are spread · MEANS


def _mixture_model(x, enumerate: str, spread: float = 1.0):
    weights = pyro.param("weights", torch.tensor(WEIGHTS), constraint=simplex)
    means = pyro.param("means", spread * torch.tensor(MEANS))
    infer = {"enumerate": enumerate} if enumerate else {}
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Categorical(weights), infer=infer)
        z = pyro.sample("z", dist.Normal(0.0, PRIOR_SCALE).expand([x.shape[-1]]).to_event(1))
        pyro.sample("x", dist.Normal(means[c] + z, NOISE).to_event(1), obs=x)


class ComponentMixture(GenerativeModel):
    """(F): the component c summed out in the model (see the module docs)."""

    name = "test_component_mixture"
    Config = MixtureConfig
    latent_sites = ("c", "z")

    def __init__(self, *args, **options):
        super().__init__(*args, **options)
        self.encoder = MixtureEncoder(self.config.x_shape[0])

    def model(self, x):
        _mixture_model(x, self.config.enumerate, self.config.spread)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


@dataclass(frozen=True)
class LabelGuideConfig:
    x_shape: tuple[int, ...] = (2,)
    temper: float = 1.0  # τ
    widen: float = 1.0  # κ


class LabelGuideMixture(GenerativeModel):
    """(G): c drawn by the guide and summed over there (see the module docs)."""

    name = "test_label_guide_mixture"
    Config = LabelGuideConfig
    latent_sites = ("c", "z")

    def model(self, x):
        _mixture_model(x, "parallel")

    def guide(self, x):
        weights = pyro.param("weights", torch.tensor(WEIGHTS), constraint=simplex)
        means = pyro.param("means", torch.tensor(MEANS))
        r = PRIOR_SCALE**2 / (PRIOR_SCALE**2 + NOISE**2)
        total = PRIOR_SCALE**2 + NOISE**2
        log_weights = dist.Categorical(probs=weights).logits  # log π on either backend
        logits = self.config.temper * (log_weights - ((x[..., None, :] - means) ** 2).sum(-1) / (2 * total))
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            pyro.sample("z", dist.Normal(r * (x - means[c]), self.config.widen * math.sqrt(r) * NOISE).to_event(1))


# -- exact answers ---------------------------------------------------------------------------------------------
def mixture_data(n: int = 40, seed: int = 0) -> torch.Tensor:
    """n draws of the model at its initial parameters."""
    g = torch.Generator().manual_seed(seed)
    c = torch.multinomial(torch.tensor(WEIGHTS), n, replacement=True, generator=g)
    z = PRIOR_SCALE * torch.randn(n, 2, generator=g)
    return torch.tensor(MEANS)[c] + z + NOISE * torch.randn(n, 2, generator=g)


def _log_normal(x, loc, var):
    return (-0.5 * math.log(2 * math.pi) - 0.5 * torch.log(torch.as_tensor(var)) - (x - loc) ** 2 / (2 * var)).sum(-1)


def component_log_joint(x, weights=None, means=None) -> torch.Tensor:
    """log π_c + log N(x; μ_c, (s² + σ²) I), (N, K): the brute-force terms of log p(x) = logsumexp_c."""
    weights = torch.tensor(WEIGHTS) if weights is None else weights
    means = torch.tensor(MEANS) if means is None else means
    return weights.log() + _log_normal(x[:, None, :], means, PRIOR_SCALE**2 + NOISE**2)


def log_marginal(x, weights=None, means=None) -> torch.Tensor:
    """log p(x) per example, summed over c by brute force."""
    return torch.logsumexp(component_log_joint(x, weights, means), -1)


def posterior_z_mean(x, means=None) -> torch.Tensor:
    """E[z | x] = Σ_c p(c | x) r (x − μ_c), (N, d)."""
    means = torch.tensor(MEANS) if means is None else means
    r = PRIOR_SCALE**2 / (PRIOR_SCALE**2 + NOISE**2)
    probs = torch.softmax(component_log_joint(x, means=means), -1)
    return (probs[..., None] * r * (x[:, None, :] - means)).sum(1)


def label_guide_elbo(x, temper: float = 1.0, widen: float = 1.0, weights=None, means=None) -> torch.Tensor:
    r"""The ELBO of (G) per example in closed form: Σ_c q(c|x) [log π_c − log q(c|x) + E_q log N(z; 0, s²)
    + E_q log N(x; μ_c + z, σ²) + H(q(z|x,c))], each Gaussian expectation exact."""
    weights = torch.tensor(WEIGHTS) if weights is None else weights
    means = torch.tensor(MEANS) if means is None else means
    s2, n2 = PRIOR_SCALE**2, NOISE**2
    r = s2 / (s2 + n2)
    log_q = torch.log_softmax(temper * (weights.log() - ((x[:, None, :] - means) ** 2).sum(-1) / (2 * (s2 + n2))), -1)
    m = r * (x[:, None, :] - means)  # (N, K, d)
    v = widen**2 * r * n2
    log_2pi = math.log(2 * math.pi)
    prior = (-0.5 * log_2pi - 0.5 * math.log(s2) - (m**2 + v) / (2 * s2)).sum(-1)
    like = (-0.5 * log_2pi - 0.5 * math.log(n2) - ((x[:, None, :] - means - m) ** 2 + v) / (2 * n2)).sum(-1)
    entropy = x.shape[-1] * 0.5 * (log_2pi + 1 + math.log(v))
    return (log_q.exp() * (weights.log() - log_q + prior + like + entropy)).sum(-1)


def ready(pair, x):
    """``pair`` after its trial run on ``x`` (the parameters a first call makes)."""
    pair.trial_run(x)
    return pair


def log_normal(x, loc, scale):
    """log N(x; loc, scale²) summed over the last dimension."""
    return (-0.5 * math.log(2 * math.pi) - torch.log(torch.as_tensor(scale)) - (x - loc) ** 2 / (2 * scale**2)).sum(-1)
