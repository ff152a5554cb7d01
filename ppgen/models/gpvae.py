r"""A Gaussian-process decoder: the amortized, minibatched Bayesian GPLVM.

Model (Lawrence 2005; Titsias & Lawrence 2010), for N examples y_n ∈ R^D and latents z_n ∈ R^Q::

    z_n ~ N(0, I_Q)                                   in the data plate,
    f_d ~ GP(m_d, k),  d = 1..D                       one GP per output dimension, shared kernel k, a learned
                                                      constant mean m_d (zero in the exactness tests)
                                                      (RBF / Matérn-5/2 with ARD lengthscales, or linear),
    y_nd | f_d(z_n) ~ N(f_d(z_n), σ²)  or  Bernoulli(sigmoid f_d(z_n)).

Sparse variational GP (Titsias 2009; Hensman et al. 2013): M inducing inputs Z_u (learned), inducing outputs
u_d = f_d(Z_u) = L v_d with K_uu = L Lᵀ (whitened), p(v_d) = N(0, I), and the GP's own variational distribution
q(v_d) = N(m_d, S Sᵀ) (``pyro.contrib.gp.models.VariationalSparseGP``'s ``u_loc``/``u_scale_tril``), one
Cholesky factor S shared by the D output dimensions: for the Gaussian likelihood the optimal q(u) has one covariance
for every d (Titsias 2009: Σ_u = K_uu A⁻¹ K_uu does not involve y), and sharing it makes the conditional variances
cost O(M² B) per batch of B instead of O(D M² B) (a per-dimension S_d made a step ~D times slower). Given
z_n, q(f_nd) = ∫ p(f_nd | u_d) q(u_d) du_d = N(μ_nd, s²_nd) (``pyro.contrib.gp.util.conditional``).

Guide (amortized / back-constrained: Lawrence & Quiñonero-Candela 2006; Bui & Turner 2015)::

    q(z_n | y_n) = N(μ_φ(y_n), diag σ²_φ(y_n))        (ppgen.nn.MLPEncoder),   together with q(u).

Bound. With u integrated against q(u) in closed form, the data-set ELBO is

    L = Σ_n E_{q(z_n|y_n)}[ E_{q(f_n|z_n)} log p(y_n | f_n) + log p(z_n) − log q(z_n | y_n) ] − KL(q(v) ‖ p(v)),

with E_{N(f; μ, s²)} log N(y; f, σ²) = log N(y; μ, σ²) − s²/(2σ²) in closed form (Gaussian) and by 20-node
Gauss–Hermite quadrature (Bernoulli; tested against a fine grid), so the model's density is a deterministic
function of z: NUTS over the latents samples p(z_n) exp(E_{q(f_n | z_n)} log p(y_n | f_n)). The global KL is attributed KL/N to each example (N = ``num_data``, the
size of the training set, set from the data by ``ppgen train``), so the sum of the per-example terms over a
minibatch of B is B/N times an unbiased estimate of L: the model holds no site outside the data plate,
minibatches are scaled correctly, and ``ppgen``'s per-example estimators apply. Per example, IWAE_K over z of these
terms ("IWAE over the latents", q(u) fixed) is still, summed over examples, a lower bound on log p(Y): by Jensen
in u, E_{q(u)} logsumexp ≥ logsumexp E_{q(u)}, so it lies between L and the bound with u sampled.

With Z_u placed at the latents and the optimal q(u), the bound for fixed latents equals the exact GP marginal
log N(y_d; 0, K + σ² I) (tested; see ``optimal_q``), and with the linear kernel k(z, z') = c zᵀz' the GP is the
linear-Gaussian model y = W z + ε with W_d ~ N(0, c I) (with ARD, k(z, z') = Σ_q c_q z_q z'_q: W_dq ~ N(0, c_q)).

The kernels, the variational distribution over u, the conditional and the likelihoods' parameters are
``pyro.contrib.gp``'s; the hand-written glue is the per-example accounting above. Torch only: pyro.contrib.gp
does not run on NumPyro, so NUTS over the latents runs on Pyro's NUTS (the model raises ``NotLowerable`` under the
NumPyro backend and ppgen falls back, with a notice). Pyro's linear kernel has one variance for every dimension;
``LinearARD`` (a subclass of its ``DotProduct``) keeps one per latent dimension.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.contrib.gp as gp
import torch
from pyro.nn.module import PyroParam
from torch.distributions import constraints

from ppgen.declare import OptionError, nonnegative_int, one_of, option, positive_int, sizes, validate
from ppgen.errors import UserError
from ppgen.models.base import GenerativeModel, likelihood_option, x_shape_option
from ppgen.nn import MLPEncoder, NotLowerable
from ppgen.ppl import dist
from ppgen.ppl import is_jax as ppl_is_jax
from ppgen.ppl import pyro as ppl_pyro

KERNELS = ("rbf", "matern52", "linear")
GP_LIKELIHOODS = ("gaussian", "bernoulli")
JITTER = 1e-5
#: the jitters tried, relative to K_uu's mean diagonal, where JITTER does not make K_uu positive-definite
RELATIVE_JITTERS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
#: Gauss–Hermite nodes for the Bernoulli likelihood's expectation under q(f)
GH_NODES = 20


@dataclass(frozen=True)
class GPVAEConfig:
    x_shape: tuple[int, ...] = x_shape_option((1, 8, 8))
    z_dim: int = option(2, positive_int, "latent dimensions Q")
    inducing: int = option(64, positive_int, "number of inducing points M")
    kernel: str = option("rbf", one_of(KERNELS, "kernel"), "GP kernel")
    hidden: tuple[int, ...] = option((128,), sizes, "encoder hidden sizes")
    likelihood: str = likelihood_option("bernoulli", GP_LIKELIHOODS)
    num_data: int = option(0, nonnegative_int, "training-set size N (0: the minibatch size)")

    def __post_init__(self) -> None:
        validate(self)
        if self.num_data and self.inducing > self.num_data:
            raise OptionError("inducing", self.inducing, f"more inducing points than the {self.num_data} training "
                              "examples; use at most the number of examples")


class LinearARD(gp.kernels.DotProduct):
    r"""The linear kernel with automatic relevance determination, k(z, z') = Σ_q c_q z_q z'_q: Pyro's ``Linear``
    has one variance for all dimensions, so this subclass of its ``DotProduct`` keeps one per latent dimension
    (c_q > 0, learned). It is the linear-Gaussian model y = W z + ε with columns w_q ~ N(0, c_q I)."""

    def __init__(self, input_dim: int):
        super().__init__(input_dim, variance=torch.ones(input_dim))

    def forward(self, X: torch.Tensor, Z: torch.Tensor | None = None, diag: bool = False) -> torch.Tensor:
        X = self._slice_input(X)
        if diag:
            return (X * X * self.variance).sum(-1)
        Z = X if Z is None else self._slice_input(Z)
        return (X * self.variance) @ Z.T


def make_kernel(kind: str, z_dim: int) -> gp.kernels.Kernel:
    """The library's kernel: RBF / Matérn-5/2 with one lengthscale per latent dimension (ARD), or linear with one
    variance per latent dimension (ARD; :class:`LinearARD`)."""
    if kind == "rbf":
        return gp.kernels.RBF(z_dim, lengthscale=torch.ones(z_dim))
    if kind == "matern52":
        return gp.kernels.Matern52(z_dim, lengthscale=torch.ones(z_dim))
    if kind == "linear":
        return LinearARD(z_dim)
    raise UserError(f"unknown kernel {kind!r}; choose one of {', '.join(KERNELS)}")


class GPVAE(GenerativeModel):
    """Amortized Bayesian GPLVM pair (see the module docs)."""

    name = "gpvae"
    Config = GPVAEConfig
    svi_engines = ("torch",)

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        config = self.config
        d = math.prod(config.x_shape)
        self.jitter = JITTER  # added to K_uu's diagonal before its Cholesky factor
        self.encoder = MLPEncoder(config.x_shape, config.z_dim, config.hidden)
        lik = gp.likelihoods.Gaussian() if config.likelihood == "gaussian" else gp.likelihoods.Binary()
        self.gp = gp.models.VariationalSparseGP(torch.zeros(1, config.z_dim), None,
                                                make_kernel(config.kernel, config.z_dim),
                                                torch.randn(config.inducing, config.z_dim), lik, latent_shape=(d,),
                                                num_data=config.num_data or None, whiten=True, jitter=JITTER)
        # q(v) starts narrower than the prior (S = 0.1 I), so the decoder's mean, not its noise, drives early fits
        self.gp.u_scale_tril = PyroParam(0.1 * torch.eye(config.inducing),
                                         constraints.lower_cholesky)
        #: a learned constant mean per output dimension (the GP's mean function m_d; zero at initialization)
        self.mean = torch.nn.Parameter(torch.zeros(d))

    # -- the GP decoder -----------------------------------------------------------------------------------------
    def predictive(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(f_n | z_n) for every output dimension, each shaped (*z.shape[:-1], D)."""
        flat = z.reshape(-1, z.shape[-1])
        jitter = self.stable_jitter()
        # the means of every output dimension, then the variance once (S is shared: a single latent with zero mean)
        loc, _ = gp.util.conditional(flat, self.gp.Xu, self.k, self.gp.u_loc, None, full_cov=False, whiten=True,
                                     jitter=jitter)
        _, var = gp.util.conditional(flat, self.gp.Xu, self.k, self.gp.u_loc.new_zeros(1, self.config.inducing),
                                     self.gp.u_scale_tril.unsqueeze(0), full_cov=False, whiten=True, jitter=jitter)
        shape = (*z.shape[:-1], loc.shape[0])
        return loc.T.reshape(shape) + self.mean, var.T.expand(-1, loc.shape[0]).reshape(shape)

    def stable_jitter(self) -> float:
        """The jitter added to K_uu's diagonal before its Cholesky factor: ``self.jitter`` where that factors it,
        else the smallest of :data:`RELATIVE_JITTERS` x mean diag K_uu that does (said once per pair). K_uu of the
        linear kernel has rank Q, so with M > Q inducing points its M − Q zero eigenvalues rest on the jitter alone,
        and in float32 a fixed 1e-5 is below the rounding error of the large ones (~ M ε λ_max). A function of the
        current weights only, so a resumed run adds what the uninterrupted one adds."""
        with torch.no_grad():
            kuu = self.k(self.gp.Xu)
        jitter = jitter_for(kuu, self.jitter, f"{self.config.inducing} inducing points, {self.config.kernel} kernel",
                            self.config.z_dim if self.config.kernel == "linear" else None)
        if jitter != self.jitter and not getattr(self, "_said_jitter", False):
            self._said_jitter = True
            print(f"ppgen: note: the GP decoder's K_uu ({self.config.inducing} inducing points, {self.config.kernel} "
                  f"kernel, {str(kuu.dtype).removeprefix('torch.')}) is numerically singular; adding jitter "
                  f"{jitter:.2g} (not {self.jitter:g}) to its diagonal where needed", file=sys.stderr)
        return jitter

    def k(self, x: torch.Tensor, y: torch.Tensor | None = None, diag: bool = False) -> torch.Tensor:
        """The kernel's ``forward``: called outside a PyroModule context, its parameters are the module's own
        (never the global param store's, which a second pair's GP of the same names would share)."""
        return self.gp.kernel.forward(x, y, diag=diag)

    def kl_u(self) -> torch.Tensor:
        """KL(q(v) ‖ N(0, I)) summed over output dimensions (whitened inducing outputs), in closed form:
        ½ Σ_d [tr(S Sᵀ) + m_dᵀ m_d − M − 2 Σ_i log |S_ii|] (written out: Pyro's jit traces it)."""
        m, s = self.gp.u_loc, self.gp.u_scale_tril
        log_diag = torch.diagonal(s, dim1=-2, dim2=-1).abs().log()
        return 0.5 * (m.shape[0] * ((s * s).sum() - m.shape[1] - 2 * log_diag.sum()) + (m * m).sum())

    @property
    def noise(self) -> torch.Tensor:
        """σ² of the Gaussian likelihood."""
        return self.gp.likelihood.variance

    def _observe(self, x: torch.Tensor, loc: torch.Tensor, var: torch.Tensor, n_full: int) -> None:
        """E_{q(f_n)} log p(y_n | f_n) − KL/N as sites in the data plate (see the module docs)."""
        ev = len(self.x_shape)
        loc, var = loc.reshape(*loc.shape[:-1], *self.x_shape), var.reshape(*var.shape[:-1], *self.x_shape)
        if self.likelihood == "gaussian":
            sigma2 = self.noise
            ppl_pyro.sample("x", dist.Normal(loc, sigma2.sqrt()).to_event(ev), obs=x)
            ppl_pyro.factor("x_var", -var.flatten(-ev).sum(-1) / (2 * sigma2))
        else:  # Bernoulli at the predictive mean, plus E_q(f) log p(y | f) − log p(y | μ) by Gauss–Hermite
            ppl_pyro.sample("x", dist.Bernoulli(logits=loc).to_event(ev), obs=x)
            ppl_pyro.factor("x_var", (bernoulli_expectation(x, loc, var) - _bernoulli_log_prob(x, loc))
                            .flatten(-ev).sum(-1))
        ppl_pyro.factor("u_kl", -self.kl_u() / n_full * torch.ones(x.shape[0], dtype=loc.dtype, device=loc.device))

    # -- the pair ---------------------------------------------------------------------------------------------
    def model(self, x: torch.Tensor) -> None:
        if ppl_is_jax(x):  # NUTS lowers a pair's model to NumPyro; the GP's kernels and conditional are torch only
            raise NotLowerable("pyro.contrib.gp's sparse GP decoder (torch only)")
        n_full = self.config.num_data or x.shape[0]
        with ppl_pyro.plate("data", x.shape[0]):
            z = ppl_pyro.sample("z", dist.Normal(torch.zeros(self.config.z_dim, dtype=x.dtype, device=x.device),
                                                 1.0).to_event(1))
            loc, var = self.predictive(z)
            self._observe(x, loc, var, n_full)

    def guide(self, x: torch.Tensor) -> None:
        ppl_pyro.module("encoder", self.encoder)
        with ppl_pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            ppl_pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z | y)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The predictive mean μ(z) (Gaussian) or sigmoid μ(z) (Bernoulli), shaped like x."""
        loc = self.predictive(z)[0].reshape(*z.shape[:-1], *self.x_shape)
        return loc if self.likelihood == "gaussian" else torch.sigmoid(loc)

    def generate(self, n: int) -> torch.Tensor:
        return self.decode(torch.randn(n, self.config.z_dim, device=self.gp.Xu.device))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)[0])

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        super().check_data(x, what)
        if not self.config.num_data and x.shape[0] < self.config.inducing:
            raise UserError(f"{what} has {x.shape[0]} examples, fewer than the {self.config.inducing} inducing "
                            "points; use at most that many inducing points (inducing)")

    # -- closed forms (tests, benchmarks) --------------------------------------------------------------------------
    def optimal_q(self, z: torch.Tensor, y: torch.Tensor) -> None:
        """Set q(u) to its optimum for fixed latents z (N, Q) and Gaussian data y (N, D) (Titsias 2009):
        Σ_u = K_uu A⁻¹ K_uu, μ_u = σ⁻² K_uu A⁻¹ K_uf y, A = K_uu + σ⁻² K_uf K_fu, written in whitened form."""
        with torch.no_grad():
            kernel, zu, s2 = self.k, self.gp.Xu, self.noise
            kuu = kernel(zu) + self.jitter * torch.eye(zu.shape[0], dtype=zu.dtype)
            kuf = kernel(zu, z)
            a = kuu + kuf @ kuf.T / s2
            mu = kuu @ torch.linalg.solve(a, kuf @ y) / s2  # (M, D)
            sigma = kuu @ torch.linalg.solve(a, kuu)
            lu = torch.linalg.cholesky(kuu)
            m_v = torch.linalg.solve_triangular(lu, mu, upper=False)
            li_sigma = torch.linalg.solve_triangular(lu, sigma, upper=False)
            s_v = torch.linalg.solve_triangular(lu, li_sigma.T, upper=False)
            s_tril = torch.linalg.cholesky(0.5 * (s_v + s_v.T))
        self.gp.u_loc.data.copy_(m_v.T)
        self.gp.u_scale_tril = PyroParam(s_tril.clone(), constraints.lower_cholesky)

    def bound(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The sparse variational bound for fixed latents z (N, Q) and data y (N, *x_shape), read from the model's
        own sites: Σ_n E_{q(f_n)} log p(y_n | f_n) − KL(q(u) ‖ p(u)) (the latents' prior is left out)."""
        trace = pyro.poutine.trace(pyro.poutine.condition(self.model, {"z": z})).get_trace(y)
        return sum(site["log_prob_sum"] for name, site in _sites(trace).items() if name != "z")


def _factors(matrix: torch.Tensor, jitter: float) -> bool:
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    return int(torch.linalg.cholesky_ex(matrix + jitter * eye).info) == 0


def jitter_for(kuu: torch.Tensor, base: float = JITTER, what: str = "K_uu", rank: int | None = None) -> float:
    """The smallest jitter that makes the Cholesky factorization of ``kuu`` + jitter I succeed: ``base``, else
    :data:`RELATIVE_JITTERS` times its mean diagonal, in turn; a UserError naming the fix where none does (a kernel
    matrix with a non-finite entry is left to the training loop, which stops on the non-finite loss). ``rank``: the
    kernel's rank, where it has one (the linear kernel's Q), for the advice."""
    if _factors(kuu, base) or not bool(torch.isfinite(kuu).all()):
        return base
    scale = float(kuu.diagonal().mean().abs())
    for relative in RELATIVE_JITTERS:
        if _factors(kuu, relative * scale):
            return relative * scale
    fewer = f"at most {rank} inducing points (the kernel's rank) " if rank else "fewer inducing points "
    raise UserError(f"the GP decoder's K_uu ({what}) is not positive-definite even with jitter "
                    f"{RELATIVE_JITTERS[-1] * scale:.2g}; use {fewer}(--inducing) or another kernel (--kernel rbf)")


def _bernoulli_log_prob(y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return y * torch.nn.functional.logsigmoid(logits) + (1 - y) * torch.nn.functional.logsigmoid(-logits)


def bernoulli_expectation(y: torch.Tensor, loc: torch.Tensor, var: torch.Tensor,
                          nodes: int = GH_NODES) -> torch.Tensor:
    """E_{N(f; loc, var)} log Bernoulli(y | sigmoid f) by Gauss–Hermite quadrature (deterministic, so the
    potential NUTS samples is a function of z alone); elementwise."""
    import numpy as np

    t, w = np.polynomial.hermite.hermgauss(nodes)
    t, w = (torch.as_tensor(a, dtype=loc.dtype, device=loc.device) for a in (t, w / math.sqrt(math.pi)))
    f = loc.unsqueeze(-1) + math.sqrt(2.0) * var.clamp_min(0).sqrt().unsqueeze(-1) * t
    return (_bernoulli_log_prob(y.unsqueeze(-1), f) * w).sum(-1)


def _sites(trace) -> dict:
    trace.compute_log_prob()
    return {k: v for k, v in trace.nodes.items() if v["type"] == "sample" and "log_prob_sum" in v}
