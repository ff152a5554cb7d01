r"""The encoder against the exact posterior: distances, calibration and the inference gap.

Per data point x, with q(z | x) the encoder's Gaussian and draws of p(z | x, θ)
from NUTS (:mod:`ppgen.inference.mcmc`):

* ``kl`` — KL(q ‖ p̂) and ``w2`` — the 2-Wasserstein distance between q and p̂,
  the Gaussian fitted to the NUTS draws (mean and full covariance):
  W₂² = ‖m_q − m_p‖² + tr(Σ_q + Σ_p − 2 (Σ_p^{½} Σ_q Σ_p^{½})^{½}).
* ``coverage50`` / ``coverage90`` — the share of NUTS draws inside q's central
  50% / 90% marginal intervals, averaged over dimensions (0.5 / 0.9 if q is right;
  below: q too narrow).
* ``khat`` — the Pareto k̂ of the importance weights p(x, z)/q(z | x), z ~ q
  (PSIS, Vehtari et al. 2015, via ``az.psislw``): above 0.7 q is an unreliable
  proposal.

One posterior interface (:data:`Posterior`: draws, log_prob, entropy, intervals, the family member fitted to
draws, KL, q* of the family), so the gap and the NUTS comparison are written once. Two families have it: the
:class:`Gaussian` (diagonal or full) and the :class:`DirichletQ` (the Dirichlet-VAE: θ on the simplex, which
NUTS samples through NumPyro's stick-breaking transform; its moments and Beta marginals are closed form, p̂ is
the Dirichlet matched to the NUTS draws' moments (:func:`dirichlet_fit`), W2 uses both distributions' mean and
covariance, and q* is the best Dirichlet for the document alone).

A pair whose guide is not amortized (global latents only: regression weights, eight schools) has no per-point
posterior: :func:`compare_global` puts the guide's posterior of every unknown beside NUTS over the whole model,
site by site, with the same distances, coverage and k̂ (of the joint weights).

The inference gap of Cremer, Li & Duvenaud (2018)::

    log p(x) − ELBO[q_encoder] = (log p(x) − ELBO[q*])  +  (ELBO[q*] − ELBO[q_encoder])
                                   approximation gap          amortization gap

with q* the best member of the encoder's family for this x alone (a diagonal Gaussian for a diagonal encoder, a
full one for a full one, a Dirichlet for a Dirichlet), found by stochastic gradient ascent on its ELBO
warm-started at the encoder. ELBO[q] = E_q[log p(x, z)] + H[q], the entropy in closed form; ELBO[q*] and
ELBO[q_encoder] use draws from one seed (for Gaussians the same standard-normal draws: common random numbers),
and the amortization gap's standard error is that of the per-draw differences. log p(x) is the larger of the
IWAE-K estimates with q* and with the encoder as proposals (both stochastic
lower bounds; Cremer et al. likewise take the best of their estimators), or
AIS if asked.

Written by hand: no library optimizes a per-point Gaussian against a Pyro model's
joint density or splits the gap; the Gaussian KL is torch's, the W2 formula uses
``scipy.linalg.sqrtm`` (POT's Bures-Wasserstein is not a dependency), k̂ is ArviZ's.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from ppgen import sites
from ppgen.errors import UserError


# -- Gaussians ---------------------------------------------------------------------------------------
def gaussian_fit(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of draws shaped (..., S, k) (float64)."""
    d = draws.double()
    m = d.mean(-2)
    c = d - m.unsqueeze(-2)
    return m, c.transpose(-1, -2) @ c / (d.shape[-2] - 1)


def gaussian_kl(m0, S0, m1, S1) -> torch.Tensor:
    """KL(N(m0, S0) ‖ N(m1, S1)), batched."""
    return kl_divergence(MultivariateNormal(m0.double(), covariance_matrix=S0.double()),
                         MultivariateNormal(m1.double(), covariance_matrix=S1.double()))


def gaussian_w2(m0, S0, m1, S1) -> torch.Tensor:
    """2-Wasserstein distance between N(m0, S0) and N(m1, S1), batched over leading dims."""
    from scipy.linalg import sqrtm

    m0, S0, m1, S1 = (torch.as_tensor(a).double().cpu().numpy() for a in (m0, S0, m1, S1))
    lead = m0.shape[:-1]
    m0, m1 = m0.reshape(-1, m0.shape[-1]), m1.reshape(-1, m1.shape[-1])
    S0, S1 = S0.reshape((-1,) + S0.shape[-2:]), S1.reshape((-1,) + S1.shape[-2:])
    out = []
    for a, A, b, B in zip(m0, S0, m1, S1):
        rb = np.real(sqrtm(B))
        cross = np.real(sqrtm(rb @ A @ rb))
        out.append(np.sum((a - b) ** 2) + np.trace(A + B - 2 * cross))
    return torch.as_tensor(np.sqrt(np.clip(np.array(out), 0, None))).reshape(lead)


def coverage(loc: torch.Tensor, scale: torch.Tensor, draws: torch.Tensor, level: float) -> torch.Tensor:
    """Share of ``draws`` (P, S, k) inside q's central ``level`` marginal intervals, averaged over k: (P,)."""
    half = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2)).item()
    inside = (draws - loc[:, None]).abs() <= half * scale[:, None]
    return inside.double().mean((1, 2))


def interval_coverage(lower: torch.Tensor, upper: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Share of ``draws`` (P, S, k) inside the intervals [lower, upper] (P, k), averaged over k: (P,)."""
    d = draws.double()
    inside = (d >= lower[:, None].to(d)) & (d <= upper[:, None].to(d))
    return inside.double().mean((1, 2))


def psis_khat(log_w: torch.Tensor) -> torch.Tensor:
    """Pareto k̂ per point of log importance weights shaped (S, P) (``az.psislw``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az

        _, k = az.psislw(log_w.double().T.cpu().numpy())
    return torch.as_tensor(np.atleast_1d(k))


# -- the encoder's Gaussian and the model's joint density ----------------------------------------------
@dataclass
class Gaussian:
    """One Gaussian per point: loc (P, k) and lower-triangular scale_tril (P, k, k); ``diagonal`` family?"""

    loc: torch.Tensor
    tril: torch.Tensor
    diagonal: bool

    @property
    def cov(self) -> torch.Tensor:
        return self.tril @ self.tril.transpose(-1, -2)

    @property
    def scale(self) -> torch.Tensor:
        return self.cov.diagonal(dim1=-2, dim2=-1).sqrt()

    def dist(self) -> MultivariateNormal:
        return MultivariateNormal(self.loc, scale_tril=self.tril)

    def entropy(self) -> torch.Tensor:
        k = self.loc.shape[-1]
        return 0.5 * k * (1 + math.log(2 * math.pi)) + self.tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    def sample(self, eps: torch.Tensor) -> torch.Tensor:
        """z = loc + L ε for ε shaped (S, P, k)."""
        return self.loc + (self.tril @ eps.unsqueeze(-1)).squeeze(-1)

    def draws(self, n: int, seed: int) -> torch.Tensor:
        """n draws (n, P, k) from standard-normal noise seeded by ``seed``: two Gaussians drawn with one seed share
        their noise (common random numbers)."""
        g = torch.Generator(device=self.loc.device).manual_seed(seed)
        return self.sample(torch.randn((n,) + self.loc.shape, generator=g, device=self.loc.device))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.dist().log_prob(z)

    def interval(self, level: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Each coordinate's central ``level`` interval, loc ± Φ⁻¹(½ + level/2) · scale: (lower, upper), each (P, k)."""
        half = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2)).item()
        return self.loc - half * self.scale, self.loc + half * self.scale

    def fitted(self, draws: torch.Tensor) -> Gaussian:
        """The Gaussian of the draws (P, S, k): their mean and covariance (p̂ for the KL)."""
        m, S = gaussian_fit(draws)
        return Gaussian(m, torch.linalg.cholesky(S), False)

    def kl(self, other: Gaussian) -> torch.Tensor:
        """KL(self ‖ other), batched, in float64 from the Cholesky factors themselves: forming L Lᵀ and factoring it
        again would lose a badly conditioned q (a posterior narrow in some directions, as wide as the prior in
        others) to float32 rounding, and MultivariateNormal would refuse the covariance as not positive-definite."""
        def exact(q: Gaussian) -> MultivariateNormal:
            return MultivariateNormal(q.loc.double(), scale_tril=q.tril.double())

        return kl_divergence(exact(self), exact(other))

    def optimized(self, pair, x: torch.Tensor, steps: int, lr: float, seed: int,
                  inputs: tuple[torch.Tensor, ...] = ()) -> Gaussian:
        return optimize_gaussian(pair, x, self, steps=steps, lr=lr, seed=seed, inputs=inputs)

    #: why AIS cannot run with this family of q (None: it can)
    ais_refusal = None


@dataclass
class DirichletQ:
    """One Dirichlet per point on the simplex (a Dirichlet guide: the Dirichlet-VAE): concentration (P, k).

    Its moments are closed form: mean α/α₀ and covariance (diag(m) − m mᵀ)/(α₀ + 1); its marginals are
    Beta(α_k, α₀ − α_k), whose quantiles give the central intervals for coverage."""

    concentration: torch.Tensor

    def dist(self) -> torch.distributions.Dirichlet:
        return torch.distributions.Dirichlet(self.concentration)

    @property
    def loc(self) -> torch.Tensor:
        return self.concentration / self.concentration.sum(-1, keepdim=True)

    @property
    def cov(self) -> torch.Tensor:
        m = self.loc
        return (torch.diag_embed(m) - m.unsqueeze(-1) * m.unsqueeze(-2)) / (self.concentration.sum(-1) + 1)[..., None,
                                                                                                         None]

    @property
    def scale(self) -> torch.Tensor:
        return self.cov.diagonal(dim1=-2, dim2=-1).sqrt()

    def entropy(self) -> torch.Tensor:
        return self.dist().entropy()

    def interval(self, level: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Each coordinate's central ``level`` interval under its Beta marginal: (lower, upper), each (P, k)."""
        from scipy.stats import beta

        a = self.concentration.double().cpu().numpy()
        b = a.sum(-1, keepdims=True) - a
        lo, hi = beta.ppf(0.5 - level / 2, a, b), beta.ppf(0.5 + level / 2, a, b)
        return torch.as_tensor(lo), torch.as_tensor(hi)

    def draws(self, n: int, seed: int) -> torch.Tensor:
        """n draws (n, P, k), torch's Gamma sampler seeded by ``seed``."""
        with torch.random.fork_rng(devices=[self.concentration.device] if self.concentration.is_cuda else []):
            torch.manual_seed(seed)
            return self.dist().sample((n,))

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        return self.dist().log_prob(theta)

    def fitted(self, draws: torch.Tensor) -> DirichletQ:
        """The Dirichlet matched to the draws' moments (:func:`dirichlet_fit`), p̂ for the KL."""
        return DirichletQ(dirichlet_fit(draws))

    def kl(self, other: DirichletQ) -> torch.Tensor:
        return kl_divergence(torch.distributions.Dirichlet(self.concentration.double()),
                             torch.distributions.Dirichlet(other.concentration.double()))

    def optimized(self, pair, x: torch.Tensor, steps: int, lr: float, seed: int,
                  inputs: tuple[torch.Tensor, ...] = ()) -> DirichletQ:
        return optimize_dirichlet(pair, x, self, steps=steps, lr=lr, seed=seed, inputs=inputs)

    ais_refusal = ("AIS moves real-valued latents by HMC; the Dirichlet-VAE's θ lives on the simplex: "
                   "leave --ais off (the IWAE estimates bound log p(x))")


#: what the gap and the NUTS comparison ask of a per-point posterior q (both :class:`Gaussian` and
#: :class:`DirichletQ` provide it): ``loc``/``cov``/``scale`` (P, k, …), ``draws(n, seed)`` (n, P, k),
#: ``log_prob(z)`` (n, P), ``entropy()`` (P,), ``interval(level)`` → (lower, upper), ``fitted(draws)`` (the
#: member of q's family matched to draws (P, S, k)), ``kl(other)``, ``optimized(pair, x, …)`` (q* of the family,
#: warm-started at q) and ``ais_refusal``.
Posterior = Gaussian | DirichletQ


def dirichlet_fit(draws: torch.Tensor) -> torch.Tensor:
    """The Dirichlet matching the mean and the mean marginal variance of simplex draws (..., S, k): α (…, k).

    α₀ + 1 = m_k (1 − m_k) / v_k for every k under a Dirichlet; the estimate averages that over k."""
    d = draws.double()
    m, v = d.mean(-2), d.var(-2)
    total = (m * (1 - m) / v.clamp_min(1e-300)).mean(-1, keepdim=True) - 1
    return m * total.clamp_min(1e-6)


#: pair -> its sites of the model only marked for enumeration (structural: looked at once per pair)
_SUMMED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def summed_sites(pair, x: torch.Tensor, inputs: tuple[torch.Tensor, ...] = ()) -> frozenset[str]:
    """The model's sites marked for enumeration that the guide does not draw (a mixture's component): every
    density here sums them out exactly, log p(x, z) = log Σ_c p(x, c, z) (:func:`ppgen.sites.summed_log_density`),
    and NUTS does the same (:mod:`ppgen.inference.mcmc`), so z is compared on its marginal posterior."""
    if pair not in _SUMMED:
        from ppgen.ppl import discrete_sites

        _SUMMED[pair] = frozenset(discrete_sites(pair, x, *inputs).model_side)
    return _SUMMED[pair]


def latent_site(pair, x: torch.Tensor | None = None, inputs: tuple[torch.Tensor, ...] = ()) -> str:
    """The one latent site the guide draws (given examples ``x``, the model's enumerated sites are left out: they
    are summed out, :func:`summed_sites`)."""
    names = pair.latent_sites
    if x is not None and len(names) > 1:
        names = tuple(n for n in names if n not in summed_sites(pair, x, inputs))
    if len(names) != 1:
        raise UserError(f"the amortization gap needs a pair with one latent site; {pair.who} has {names}")
    return names[0]


def encoder_gaussian(pair, x: torch.Tensor, inputs: tuple[torch.Tensor, ...] = ()) -> Gaussian:
    """The guide's q(z | x) at each point as a Gaussian (Normal(loc, scale).to_event(1) or MultivariateNormal); for a
    pair with input columns, q(z | x, inputs) with ``inputs`` one row per point.

    The site may sit at any dim of the data plate (plates nested around it of size 1): its
    parameters are read per example, (P, k).
    """
    import pyro
    from pyro import poutine

    site = latent_site(pair, x, inputs)
    with pyro.validation_enabled(False), torch.no_grad():
        tr = poutine.trace(pair.guide).get_trace(x, *inputs)
    fn = tr.nodes[site]["fn"]
    base = fn
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    n = x.shape[0]
    if isinstance(base, torch.distributions.Normal):
        loc, scale = base.loc.expand(base.batch_shape), base.scale.expand(base.batch_shape)
        loc, scale = loc.reshape(n, -1), scale.reshape(n, -1)
        return Gaussian(loc.detach(), torch.diag_embed(scale).detach(), True)
    if isinstance(base, torch.distributions.MultivariateNormal):
        k = base.event_shape[0]
        tril = base.scale_tril.expand(base.batch_shape + base.event_shape * 2).reshape(n, k, k)
        return Gaussian(base.loc.expand(base.batch_shape + base.event_shape).reshape(n, k).detach(), tril.detach(),
                        False)
    raise UserError(f"the guide's {site!r} is {type(base).__name__}; the gap needs a Gaussian encoder "
                    "(or a Dirichlet one: encoder_q)")


def encoder_q(pair, x: torch.Tensor, inputs: tuple[torch.Tensor, ...] = ()) -> Gaussian | DirichletQ:
    """The guide's q(z | x) (q(z | x, inputs) given input columns) per point: a :class:`Gaussian`, or a
    :class:`DirichletQ` for a Dirichlet guide."""
    import pyro
    from pyro import poutine

    site = latent_site(pair, x, inputs)
    with pyro.validation_enabled(False), torch.no_grad():
        fn = poutine.trace(pair.guide).get_trace(x, *inputs).nodes[site]["fn"]
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    if isinstance(fn, torch.distributions.Dirichlet):
        return DirichletQ(fn.concentration.expand(fn.batch_shape + fn.event_shape).reshape(x.shape[0], -1).detach())
    return encoder_gaussian(pair, x, inputs)


def log_joint(pair, x: torch.Tensor, z: torch.Tensor, data_dim: int | None = None,
              inputs: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    r"""log p(x_n, z_{s,n}) per draw and point for z shaped (S, P, k): (S, P), by :func:`ppgen.sites.log_joint`;
    log p(x_n, z_{s,n} | inputs_n) for a pair with input columns (``inputs``, one row per point).

    z is placed at the latent site's data-plate dim (``data_dim``; read from one trace of the
    guide when not given) inside a ``particles`` plate of S draws; nested plates are summed per
    point.
    """
    site = latent_site(pair, x, inputs)
    if data_dim is None:
        data_dim = _data_dim(pair, x, site, inputs)
    value = sites.place(z, data_dim, pair.max_plate_nesting)
    if summed_sites(pair, x, inputs):  # a mixture's component: log Σ_c p(x, c, z), exactly
        trace = sites.trace_conditioned(pair.model, pair, x, {site: value}, z.shape[0], inputs, enumerate=True)
        return sites.summed_log_density(trace, pair.data_plate)
    return sites.log_joint(pair, x, {site: value}, particles=z.shape[0], inputs=inputs)


def _data_dim(pair, x: torch.Tensor, site: str, inputs: tuple[torch.Tensor, ...] = ()) -> int:
    dim = sites.data_dims(pair, x, inputs=inputs).get(site)
    if dim is None:
        raise UserError(f"the amortization gap needs the latent {site!r} inside the data plate {pair.data_plate!r}")
    return dim


def _chunked_log_joint(pair, x, z, budget: int = 4_000_000, inputs: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    per = max(1, budget // max(1, x.numel()))
    dim = _data_dim(pair, x, latent_site(pair, x, inputs), inputs)
    return torch.cat([log_joint(pair, x, z[i : i + per], dim, inputs) for i in range(0, z.shape[0], per)], 0)


# -- per-point optimization of q* --------------------------------------------------------------------------
class _Frozen:
    """Turn off gradients of the pair's parameters while q* is optimized (restored afterwards)."""

    def __init__(self, pair):
        self.params = [p for p in pair.parameters() if p.requires_grad]

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p in self.params:
            p.requires_grad_(True)


def optimize_gaussian(pair, x: torch.Tensor, start: Gaussian | None = None, steps: int = 1000, lr: float = 0.02,
                      samples: int = 16, seed: int = 0, inputs: tuple[torch.Tensor, ...] = ()) -> Gaussian:
    """q* per point: Adam on ELBO = E_q[log p(x, z)] + H[q], warm-started at ``start`` (the encoder).

    The points are optimized together but independently (the objective is a sum
    over points of functions of each point's own parameters). The learning rate
    decays linearly to a tenth, so the last iterates average out the gradient noise. ``inputs``: the points'
    input columns (the model's density is then log p(x, z | inputs)).
    """
    start = start or encoder_gaussian(pair, x, inputs)
    loc = start.loc.clone().double().requires_grad_(True)
    diag = start.tril.diagonal(dim1=-2, dim2=-1).double()
    raw_diag = diag.log().clone().requires_grad_(True)
    off = torch.tril(start.tril.double(), -1).clone().requires_grad_(not start.diagonal)
    params = [loc, raw_diag] + ([] if start.diagonal else [off])
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - 0.9 * i / max(1, steps))
    g = torch.Generator(device=x.device).manual_seed(seed)
    k = loc.shape[-1]
    xd = x.double() if x.is_floating_point() else x
    dim = _data_dim(pair, x, latent_site(pair, x, inputs), inputs)
    with _Frozen(pair):
        pair_dtype = next(pair.parameters()).dtype
        for _ in range(steps):
            tril = torch.diag_embed(raw_diag.exp()) + (torch.tril(off, -1) if not start.diagonal else 0)
            q = Gaussian(loc, tril, start.diagonal)
            eps = torch.randn((samples,) + loc.shape, generator=g, device=x.device, dtype=loc.dtype)
            z = q.sample(eps)
            lj = log_joint(pair, xd.to(pair_dtype), z.to(pair_dtype), dim, inputs).double()
            loss = -(lj.mean(0) + q.entropy()).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    tril = torch.diag_embed(raw_diag.exp()) + (torch.tril(off, -1) if not start.diagonal else torch.zeros(k, k))
    return Gaussian(loc.detach().float(), tril.detach().float(), start.diagonal)


def optimize_dirichlet(pair, x: torch.Tensor, start: DirichletQ, steps: int = 1000, lr: float = 0.02,
                       samples: int = 16, seed: int = 0, inputs: tuple[torch.Tensor, ...] = ()) -> DirichletQ:
    """q* per point within the Dirichlet family: Adam on log α of ELBO = E_q[log p(x, θ)] + H[q], θ drawn by
    torch's reparameterized Dirichlet (implicit Gamma gradients), warm-started at the encoder; as
    :func:`optimize_gaussian` otherwise."""
    import pyro

    log_alpha = start.concentration.double().log().clone().requires_grad_(True)
    opt = torch.optim.Adam([log_alpha], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - 0.9 * i / max(1, steps))
    dim = _data_dim(pair, x, latent_site(pair, x, inputs), inputs)
    pair_dtype = next(pair.parameters()).dtype
    with _Frozen(pair), torch.random.fork_rng(devices=[x.device] if x.is_cuda else []), \
            pyro.validation_enabled(False):
        torch.manual_seed(seed)
        for _ in range(steps):
            q = torch.distributions.Dirichlet(log_alpha.exp())
            theta = q.rsample((samples,))
            lj = log_joint(pair, x.to(pair_dtype), theta.to(pair_dtype), dim, inputs).double()
            loss = -(lj.mean(0) + q.entropy()).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return DirichletQ(log_alpha.detach().exp().float())


def elbo_of(pair, x: torch.Tensor, q: Gaussian, eps: torch.Tensor,
            inputs: tuple[torch.Tensor, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """ELBO per point at the draws z = q.loc + L ε, and the per-draw values E_q part (for standard errors)."""
    with torch.no_grad():
        lj = _chunked_log_joint(pair, x, q.sample(eps), inputs=inputs)
    return lj.mean(0) + q.entropy(), lj


def iwae_of(pair, x: torch.Tensor, q, k_or_eps: int | torch.Tensor, seed: int = 0,
            inputs: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """IWAE-K with q as proposal: log (1/K) Σ p(x, z_k)/q(z_k), z_k = ``q.draws(K, seed)`` (or, for a Gaussian,
    z = loc + L ε at given noise ε shaped (K, P, k))."""
    z = q.sample(k_or_eps) if torch.is_tensor(k_or_eps) else q.draws(k_or_eps, seed)
    with torch.no_grad():
        log_w = _chunked_log_joint(pair, x, z, inputs=inputs).double() - q.log_prob(z).double()
    return torch.logsumexp(log_w, 0) - math.log(z.shape[0])


def gaps(pair, x: torch.Tensor, *, steps: int = 1000, lr: float = 0.02, elbo_samples: int = 2000,
         iwae_k: int = 5000, ais_steps: int = 0, seed: int = 0, q_star: Posterior | None = None,
         inputs: tuple[torch.Tensor, ...] = ()) -> dict[str, Any]:
    """The Cremer et al. (2018) decomposition per point (see module docs), with standard errors.

    q* is the best member of the encoder's family (Gaussian or Dirichlet, :data:`Posterior`) for each point.
    ELBO[q] = mean over draws of log p(x, z) + H[q]; both ELBOs use draws from one seed (common random numbers
    for Gaussians), so the amortization gap's standard error is that of the per-draw differences.
    Returns ``log_px``, ``elbo_encoder``, ``elbo_qstar``, ``approximation_gap``, ``amortization_gap``
    (tensors (P,)), their standard errors, ``q_star`` and ``encoder``. A pair with input columns takes the points'
    ``inputs`` (every density and q given them: the gaps of log p(x | inputs)).
    """
    pair.eval()
    enc = encoder_q(pair, x, inputs)
    if ais_steps and enc.ais_refusal:
        raise UserError(enc.ais_refusal)
    q_star = q_star or enc.optimized(pair, x, steps, lr, seed, inputs)
    per_draw, elbos = {}, {}
    for name, q in (("encoder", enc), ("qstar", q_star)):
        with torch.no_grad():
            per_draw[name] = _chunked_log_joint(pair, x, q.draws(elbo_samples, seed + 1), inputs=inputs).double()
        elbos[name] = per_draw[name].mean(0) + q.entropy().double()
    se = {name: lj.std(0) / math.sqrt(elbo_samples) for name, lj in per_draw.items()}
    se_amort = (per_draw["qstar"] - per_draw["encoder"]).std(0) / math.sqrt(elbo_samples)
    estimates = {"iwae_encoder": iwae_of(pair, x, enc, iwae_k, seed + 10, inputs),
                 "iwae_qstar": iwae_of(pair, x, q_star, iwae_k, seed + 10, inputs)}
    if ais_steps:
        from ppgen.evaluation.ais import ais

        estimates["ais"] = ais(pair, x, steps=ais_steps, seed=seed, inputs=inputs).log_px.double()
    log_px = torch.stack(list(estimates.values())).max(0).values
    return {
        "log_px": log_px, "log_px_estimates": estimates,
        "elbo_encoder": elbos["encoder"], "elbo_encoder_se": se["encoder"],
        "elbo_qstar": elbos["qstar"], "elbo_qstar_se": se["qstar"],
        "approximation_gap": log_px - elbos["qstar"], "approximation_gap_se": se["qstar"],
        "amortization_gap": elbos["qstar"] - elbos["encoder"], "amortization_gap_se": se_amort,
        "q_star": q_star, "encoder": enc,
    }


# -- the encoder against NUTS ----------------------------------------------------------------------------
def nuts_draws(nuts_fit, site: str = "z") -> torch.Tensor:
    """NUTS draws of one latent site per point, (P, chains·draws, k)."""
    a = np.asarray(nuts_fit.samples[site])  # (chain, draw, P, k)
    a = np.moveaxis(a, 2, 0)
    return torch.as_tensor(a.reshape(a.shape[0], -1, a.shape[-1]).copy())


def against_nuts(pair, x: torch.Tensor, draws: torch.Tensor, q: Posterior | None = None,
                 psis_samples: int = 2000, seed: int = 0, inputs: tuple[torch.Tensor, ...] = ()) -> dict[str, torch.Tensor]:
    """KL(q ‖ p̂), W2(q, p̂), coverage of q's 50/90% intervals and PSIS k̂ per point, for any :data:`Posterior`.

    p̂ is the member of q's family fitted to the NUTS draws (P, S, k) (:meth:`Gaussian.fitted`: mean and
    covariance; :meth:`DirichletQ.fitted`: moments); W2 uses both distributions' means and covariances (on the
    simplex both covariances are singular, rank k − 1, and ``sqrtm`` warns: silenced); k̂ is that of the weights
    p(x, z)/q(z), z ~ q (p(x, z | inputs) given the points' input columns ``inputs``).
    """
    q = q or encoder_q(pair, x, inputs)
    m, S = gaussian_fit(draws)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w2 = gaussian_w2(q.loc, q.cov, m, S)
    out = {"kl": q.kl(q.fitted(draws)), "w2": w2,
           "coverage50": interval_coverage(*q.interval(0.5), draws),
           "coverage90": interval_coverage(*q.interval(0.9), draws)}
    z = q.draws(psis_samples, seed + 2)
    with torch.no_grad():
        log_w = _chunked_log_joint(pair, x, z, inputs=inputs).double() - q.log_prob(z).double()
    out["khat"] = psis_khat(log_w)
    return out


def compare(pair, nuts_fit, *, steps: int = 1000, lr: float = 0.02, elbo_samples: int = 2000, iwae_k: int = 5000,
            ais_steps: int = 0, seed: int = 0) -> dict[str, Any]:
    """Everything ``ppgen compare`` reports: a row per point and the overall means.

    Columns: KL, W2, coverage50/90, k̂ of the encoder against NUTS; the same KL for q*;
    log p(x), ELBOs, both gaps (with standard errors); r_hat, ESS and divergences of NUTS.
    """
    from ppgen.diagnostics import nuts_inputs, nuts_report

    if nuts_fit.options.get("points") is None:
        raise UserError("compare needs a NUTS fit over chosen points (ppgen.fit(..., backend='nuts', points=...)); "
                        "for a whole-model fit of a non-amortized pair use compare_global")
    x = nuts_fit.state["x"]
    inputs = nuts_inputs(nuts_fit)  # the points' own input columns, as NUTS was given them
    draws = nuts_draws(nuts_fit, latent_site(pair, x, inputs))
    g = gaps(pair, x, steps=steps, lr=lr, elbo_samples=elbo_samples, iwae_k=iwae_k, ais_steps=ais_steps, seed=seed,
             inputs=inputs)
    enc = against_nuts(pair, x, draws, g["encoder"], seed=seed, inputs=inputs)
    star = against_nuts(pair, x, draws, g["q_star"], seed=seed, inputs=inputs)
    report = nuts_report(nuts_fit)
    rows = []
    for i, p in enumerate(nuts_fit.options["points"]):
        row = {"point": int(p)}
        row.update({k: float(v[i]) for k, v in enc.items()})
        row["kl_qstar"] = float(star["kl"][i])
        row["w2_qstar"] = float(star["w2"][i])
        for k in ("log_px", "elbo_encoder", "elbo_qstar", "approximation_gap", "amortization_gap",
                  "elbo_encoder_se", "amortization_gap_se", "approximation_gap_se"):
            row[k] = float(g[k][i])
        row.update(report["per_point"][i])
        rows.append(row)
    keys = [k for k in rows[0] if k != "point"]
    overall = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    overall["divergences"] = int(sum(r["divergences"] for r in rows))
    overall["r_hat_max"] = max(r["r_hat_max"] for r in rows)
    overall["ess_bulk_min"] = min(r["ess_bulk_min"] for r in rows)
    return {"points": rows, "overall": overall, "engine": report["engine"]}


# -- a non-amortized pair: the guide's posterior of every unknown beside whole-model NUTS ----------------------
def _flat(a, lead: int) -> torch.Tensor:
    """(lead axes..., *site shape) as (1, draws, k): one "point" whose coordinates are the site's entries."""
    a = torch.as_tensor(np.array(a, dtype=np.float64))
    return a.reshape(1, math.prod(a.shape[:lead]), -1)


def empirical_interval(draws: torch.Tensor, level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The central ``level`` interval of draws (P, S, k) per coordinate: their (½ ∓ level/2) quantiles, (P, k)."""
    q = torch.quantile(draws, torch.tensor([0.5 - level / 2, 0.5 + level / 2], dtype=draws.dtype), dim=1)
    return q[0], q[1]


def compare_global(pair, nuts_fit, *, guide_samples: int = 4000, psis_samples: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    r"""SVI's posterior of every unknown beside whole-model NUTS, a row per latent site of the model.

    For a pair whose guide is not amortized (global latents: regression weights, eight schools' μ and τ) the
    guide *is* the posterior q(w). Per site, with its entries as coordinates (k of them):

    * ``kl`` = KL(q̂ ‖ p̂), ``w2`` = W2(q̂, p̂) between the Gaussians fitted to the guide's draws (q̂) and to
      NUTS's draws (p̂) — any guide, autoguides included, is read through its draws;
    * ``coverage50`` / ``coverage90`` — the share of NUTS draws inside the guide's central 50% / 90% intervals
      (the quantiles of its draws), averaged over coordinates;
    * ``khat`` — PSIS k̂ of the joint weights p(x_{1:N}, w)/q(w), w ~ q (the same in every row: the weights are
      of the whole posterior), log w = Σ_n of :func:`ppgen.sites.log_weights` (global terms split 1/N per
      example, so the sum is the joint); None when the model subsamples its data plate itself (Pyro then
      traces a random few examples, so the joint density is not at hand: ``overall["khat_note"]`` says so);
    * NUTS's r_hat, bulk ESS of the site and the fit's divergences.

    ``nuts_fit`` is NUTS over every unknown (``ppgen.fit(pair, data, backend="nuts")``, no ``points``); a pair with
    input columns (covariates) is traced with the ones NUTS was given (``nuts_fit.state["inputs"]``).
    """
    from ppgen.diagnostics import guide_draws, model_sites, nuts_inputs

    if nuts_fit.options.get("points") is not None:
        raise UserError("compare_global needs NUTS over every unknown (ppgen.fit(pair, data, backend='nuts') "
                        "without points); for per-point latents use compare")
    x = nuts_fit.state["x"]
    inputs = nuts_inputs(nuts_fit)
    pair.eval()
    latent = [k for k, s in model_sites(pair, x, inputs).items() if not s["is_observed"]]
    q_draws, _ = guide_draws(pair, x, guide_samples, seed, inputs)
    missing = [k for k in latent if k not in q_draws or k not in nuts_fit.samples]
    if missing:
        raise UserError(f"the guide draws no {missing}: a guide for whole-model comparison samples every latent "
                        "site of the model")
    torch.manual_seed(seed + 2)
    log_w = sites.log_weights(pair, x, psis_samples, inputs=inputs).double()  # (S, examples traced)
    whole = log_w.shape[-1] == x.shape[0]
    khat = float(psis_khat(log_w.sum(-1, keepdim=True))[0]) if whole else None  # the sum over all N: the joint
    stats = nuts_fit.state["sample_stats"]
    divergences = int(np.sum(stats["diverging"]))
    rows = []
    for name in latent:
        p = _flat(nuts_fit.samples[name], 2)
        q = _flat(q_draws[name].cpu(), 1)
        qg, pg = Gaussian(*_moments(q)), Gaussian(*_moments(p))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w2 = gaussian_w2(qg.loc, qg.cov, pg.loc, pg.cov)
        row = {"site": name, "kl": float(qg.kl(pg)[0]), "w2": float(w2[0]),
               "coverage50": float(interval_coverage(*empirical_interval(q, 0.5), p)[0]),
               "coverage90": float(interval_coverage(*empirical_interval(q, 0.9), p)[0]),
               "khat": khat, **_site_convergence(nuts_fit.samples[name]), "divergences": divergences}
        rows.append(row)
    overall = {"khat": khat, "divergences": divergences, "r_hat_max": max(r["r_hat_max"] for r in rows),
               "ess_bulk_min": min(r["ess_bulk_min"] for r in rows)}
    if not whole:
        overall["khat_note"] = (f"no k̂: the model subsamples its data plate {pair.data_plate!r} itself, so a trace "
                                f"holds {log_w.shape[-1]} of the {x.shape[0]} examples and not the joint density")
    return {"sites": rows, "overall": overall, "engine": nuts_fit.state.get("engine")}


def _moments(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(loc, scale_tril, diagonal=False) of the Gaussian fitted to draws (1, S, k)."""
    m, S = gaussian_fit(draws)
    k = S.shape[-1]
    return m, torch.linalg.cholesky(S + 1e-12 * torch.eye(k, dtype=S.dtype)), False


def _site_convergence(samples) -> dict[str, float]:
    """Worst r_hat and smallest bulk ESS over a site's entries (ArviZ)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az

        ds = az.convert_to_dataset({"v": np.asarray(samples)})
        return {"r_hat_max": float(az.rhat(ds)["v"].max()), "ess_bulk_min": float(az.ess(ds, method="bulk")["v"].min())}


def format_global_table(result: dict[str, Any]) -> str:
    """The per-site table of :func:`compare_global`."""
    cols = [("site", "site", "{:>12}"), ("kl", "KL", "{:8.3f}"), ("w2", "W2", "{:7.3f}"),
            ("coverage50", "cov50", "{:6.2f}"), ("coverage90", "cov90", "{:6.2f}"), ("khat", "k̂", "{:6.2f}"),
            ("r_hat_max", "r_hat", "{:6.3f}"), ("ess_bulk_min", "ESS", "{:7.0f}"), ("divergences", "div", "{:5d}")]
    rows = [["-" if row[key] is None else fmt.format(row[key]) for key, _, fmt in cols] for row in result["sites"]]
    widths = [max([len(head)] + [len(r[i]) for r in rows]) for i, (_, head, _) in enumerate(cols)]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths))
                     for line in [[head for _, head, _ in cols], *rows])


def format_table(result: dict[str, Any]) -> str:
    """The per-point and overall table ``ppgen compare`` prints."""
    cols = [("point", "{:>6}"), ("kl", "{:8.2f}"), ("w2", "{:7.2f}"), ("coverage50", "{:6.2f}"),
            ("coverage90", "{:6.2f}"), ("khat", "{:6.2f}"), ("log_px", "{:9.2f}"), ("elbo_encoder", "{:9.2f}"),
            ("approximation_gap", "{:7.2f}"), ("amortization_gap", "{:7.2f}"), ("r_hat_max", "{:6.3f}"),
            ("ess_bulk_min", "{:7.0f}"), ("divergences", "{:5d}")]
    heads = ["point", "KL", "W2", "cov50", "cov90", "k̂", "log p(x)", "ELBO", "approx", "amort", "r_hat", "ESS", "div"]
    widths = [len(f.format(1)) if "d" not in f else 5 for _, f in cols]
    lines = ["  ".join(h.rjust(max(w, len(h))) for h, w in zip(heads, widths))]
    for row in result["points"] + [{**result["overall"], "point": "mean"}]:
        cells = []
        for (key, fmt), h, w in zip(cols, heads, widths):
            v = row[key]
            text = str(v) if isinstance(v, str) else fmt.format(int(v) if fmt.endswith("d}") else v)
            cells.append(text.strip().rjust(max(w, len(h))))
        lines.append("  ".join(cells))
    return "\n".join(lines)
