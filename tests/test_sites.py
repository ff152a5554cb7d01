r"""One per-example log density (:mod:`ppgen.sites`): every estimator on a pair with a plate nested in the data plate.

The test pair is linear-Gaussian with the observed coordinates as a plate *inside* the data
plate (``coords`` at dim −1, ``data`` at dim −2, max_plate_nesting = 2)::

    z_n ~ N(0, I_k),     x_{n,j} | z_n ~ N(w_jᵀ z_n + μ_j, σ_j²),    j = 1..d,

and, second layout, the data plate declared first (rightmost: ``data`` at dim −1, ``coords``
at dim −2, x observed as xᵀ) — where summing "the last dim" sums over examples. In both,
log p(x_n) = log N(x_n | μ, W Wᵀ + diag σ²) and p(z | x) = N(M⁻¹ Wᵀ Ψ⁻¹ (x − μ), M⁻¹),
M = I + Wᵀ Ψ⁻¹ W, Ψ = diag σ² in closed form. With the exact posterior as guide every
importance weight equals p(x): ELBO and IWAE are exact to rounding. With a perturbed guide
the ELBO is log p(x) − KL(q ‖ p(z | x)), also closed form; tolerances are 4 Monte Carlo SE.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, kl_divergence

from ppgen.diagnostics import to_inference_data
from ppgen.errors import UserError
from ppgen.evaluation import ais, elbo, iwae, log_weights
from ppgen.evaluation.amortization import elbo_of, encoder_gaussian, iwae_of, log_joint
from ppgen.inference import Fit
from ppgen.models.base import GenerativeModel

pytestmark = pytest.mark.usefixtures("single_thread")
LAYOUTS = pytest.mark.parametrize("data_right", [False, True], ids=["coords-inside-data", "data-rightmost"])

D, K, N = 4, 2, 6


class NestedGaussian(GenerativeModel):
    """Linear-Gaussian pair whose observed coordinates are a plate nested in the data plate (see module docs).

    The guide is q(z | x) = N(m(x) + shift, c² S) with (m(x), S) the exact posterior; shift = 0, c = 1
    makes it exact.
    """

    max_plate_nesting = 2

    def __init__(self, seed: int = 0, shift: float = 0.0, widen: float = 1.0, data_right: bool = False):
        super().__init__(SimpleNamespace(x_shape=(D,), z_dim=K))
        #: data_right: the data plate declared first (rightmost, dim −1), the coordinates at dim −2, x observed as xᵀ
        self.data_dim, self.data_right = (-1 if data_right else -2), data_right
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(D, K, generator=g))
        self.mu = nn.Parameter(torch.randn(D, generator=g))
        self.sigma = nn.Parameter(0.5 + torch.rand(D, generator=g))
        self.shift, self.widen = shift, widen

    def model(self, x):
        with pyro.plate("data", x.shape[0], dim=self.data_dim):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([K]).to_event(1))  # (..., N, 1, K) or (..., 1, N, K)
            with pyro.plate("coords", D, dim=-3 - self.data_dim):
                if self.data_right:  # (..., D, N)
                    loc = (z * self.W[:, None, :]).sum(-1) + self.mu[:, None]
                    pyro.sample("x", dist.Normal(loc, self.sigma[:, None]), obs=x.T)
                else:  # (..., N, D)
                    loc = (z * self.W).sum(-1) + self.mu
                    pyro.sample("x", dist.Normal(loc, self.sigma), obs=x)

    def posterior(self, x):
        psi_inv = self.sigma.detach() ** -2
        W = self.W.detach()
        cov = torch.linalg.inv(torch.eye(K) + (W.T * psi_inv) @ W)
        return (x - self.mu.detach()) @ (cov @ (W.T * psi_inv)).T, cov

    def guide(self, x):
        loc, cov = self.posterior(x)
        tril = torch.linalg.cholesky(cov) * self.widen
        with pyro.plate("data", x.shape[0], dim=self.data_dim):
            loc = loc + self.shift
            pyro.sample("z", dist.MultivariateNormal(loc if self.data_right else loc.unsqueeze(-2), scale_tril=tril))

    def encode(self, x):
        loc, cov = self.posterior(x)
        return loc + self.shift, (cov.diagonal() ** 0.5 * self.widen).expand_as(loc)

    # -- closed forms ---------------------------------------------------------------------------
    def log_marginal(self, x):
        W, s = self.W.detach(), self.sigma.detach()
        return MultivariateNormal(self.mu.detach(), W @ W.T + torch.diag(s**2)).log_prob(x)

    def guide_elbo(self, x):
        """log p(x) − KL(q ‖ p(z | x)) per example."""
        loc, cov = self.posterior(x)
        q = MultivariateNormal(loc + self.shift, cov * self.widen**2)
        return self.log_marginal(x) - kl_divergence(q, MultivariateNormal(loc, cov))


def _data(pair, n=N, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = torch.randn(n, K, generator=g)
        return z @ pair.W.T + pair.mu + pair.sigma * torch.randn(n, D, generator=g)


def _se_log_mean_exp(lw):
    """Delta-method SE of log (1/K) Σ w_k per column of (K, N) log weights."""
    w = torch.exp(lw - lw.max(0).values)
    return w.std(0) / (math.sqrt(lw.shape[0]) * w.mean(0))


# -- ELBO and IWAE ---------------------------------------------------------------------------------------
@LAYOUTS
def test_exact_guide_gives_constant_weights_equal_to_log_px(data_right):
    pair = NestedGaussian(data_right=data_right)
    x = _data(pair)
    exact = pair.log_marginal(x)
    torch.manual_seed(0)
    lw = log_weights(pair, x, 64)
    assert lw.shape == (64, N)
    torch.testing.assert_close(lw, exact.expand(64, N), atol=2e-4, rtol=0)
    torch.testing.assert_close(elbo(pair, x, num_samples=8), exact, atol=2e-4, rtol=0)
    torch.testing.assert_close(iwae(pair, x, k=16), exact, atol=2e-4, rtol=0)


@LAYOUTS
def test_elbo_and_iwae_agree_with_the_closed_forms_within_their_mc_error(data_right):
    pair = NestedGaussian(shift=0.4, widen=1.3, data_right=data_right)
    x = _data(pair)
    exact, exact_elbo = pair.log_marginal(x), pair.guide_elbo(x)
    torch.manual_seed(0)
    lw = log_weights(pair, x, 4000).double()
    mean, se = lw.mean(0), lw.std(0) / math.sqrt(lw.shape[0])
    assert torch.all((mean - exact_elbo).abs() < 4 * se), (mean, exact_elbo, se)
    assert torch.all(exact_elbo < exact - 0.05)  # the perturbation matters: a test that can fail
    torch.manual_seed(1)
    e = elbo(pair, x, num_samples=4000)
    assert e.shape == (N,)
    assert torch.all((e - exact_elbo).abs() < 4 * se.float())
    iw = torch.logsumexp(lw, 0) - math.log(lw.shape[0])
    assert torch.all((iw - exact).abs() < 4 * _se_log_mean_exp(lw)), (iw, exact)
    torch.manual_seed(2)
    got = iwae(pair, x, k=4000)
    assert got.shape == (N,)
    assert torch.all((got - exact).abs() < 4 * _se_log_mean_exp(lw).float())


# -- AIS ----------------------------------------------------------------------------------------------------
@LAYOUTS
def test_ais_is_per_example_and_agrees_with_log_px(data_right):
    pair = NestedGaussian(data_right=data_right)
    x = _data(pair)
    exact = pair.log_marginal(x)
    result = ais(pair, x, steps=200, chains=32, leapfrog=5, seed=0)
    assert result.log_px.shape == (N,)
    gap = result.log_px - exact
    assert torch.all(gap.abs() < 4 * result.se + 0.02), (result.log_px, exact, result.se)
    assert abs(result.mean - float(exact.mean())) < 4 * result.mean_se + 0.01


# -- the amortization gap's pieces --------------------------------------------------------------------
@LAYOUTS
def test_amortization_log_joint_and_encoder_are_per_example(data_right):
    pair = NestedGaussian(data_right=data_right)
    x = _data(pair)
    z = torch.randn(5, N, K, generator=torch.Generator().manual_seed(3))
    by_hand = (torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
               + torch.distributions.Normal(z @ pair.W.detach().T + pair.mu.detach(), pair.sigma.detach())
               .log_prob(x).sum(-1))
    got = log_joint(pair, x, z)
    assert got.shape == (5, N)
    torch.testing.assert_close(got.detach(), by_hand, atol=1e-4, rtol=1e-5)
    enc = encoder_gaussian(pair, x)
    loc, cov = pair.posterior(x)
    torch.testing.assert_close(enc.loc, loc)
    torch.testing.assert_close(enc.cov, cov.expand(N, K, K), atol=1e-5, rtol=1e-5)
    eps = torch.randn(200, N, K, generator=torch.Generator().manual_seed(4))
    value, per_draw = elbo_of(pair, x, enc, eps)  # E_q log p(x, z) by MC, H[q] in closed form
    assert value.shape == (N,)
    se = per_draw.double().std(0) / math.sqrt(eps.shape[0])
    assert torch.all((value - pair.log_marginal(x)).abs() < 4 * se), (value, pair.log_marginal(x), se)
    # the exact posterior as proposal: every weight is p(x), so IWAE has no MC error
    torch.testing.assert_close(iwae_of(pair, x, enc, eps).float(), pair.log_marginal(x), atol=2e-4, rtol=0)


# -- ArviZ's log_likelihood group --------------------------------------------------------------------
@LAYOUTS
def test_arviz_log_likelihood_is_per_example_and_exact(data_right):
    pair = NestedGaussian(data_right=data_right)
    x = _data(pair)
    idata = to_inference_data(Fit(pair=pair, backend="svi"), x=x, num_samples=2000, chains=2, seed=0)
    ll = idata.log_likelihood["x"]
    assert ll.dims == ("chain", "draw", "data")
    assert ll.shape == (2, 1000, N)
    z = torch.as_tensor(idata.posterior["z"].values[0, :5])  # (5, N, K)
    by_hand = torch.distributions.Normal(z @ pair.W.detach().T + pair.mu.detach(), pair.sigma.detach()).log_prob(x)
    assert np.allclose(ll.values[0, :5], by_hand.sum(-1).numpy(), atol=1e-4)
    # E_{p(z|x)} log p(x | z) = log N(x | W m + μ, Ψ) − ½ tr(Ψ⁻¹ W S Wᵀ), within 4 MC SE
    loc, cov = pair.posterior(x)
    W, s = pair.W.detach(), pair.sigma.detach()
    want = (torch.distributions.Normal(loc @ W.T + pair.mu.detach(), s).log_prob(x).sum(-1)
            - 0.5 * torch.trace((W.T / s**2) @ W @ cov))
    draws = ll.values.reshape(-1, N)
    se = draws.std(0) / math.sqrt(draws.shape[0])
    assert np.all(np.abs(draws.mean(0) - want.numpy()) < 4 * se), (draws.mean(0), want)


# -- the rule itself: flat plates as before, global sites, minibatch scale --------------------------------------
def _old_log_weights(pair, x, k):
    """The reduction ELBO/IWAE used before ppgen.sites (sum dim 1 until two are left): right for flat plates."""
    from pyro import poutine

    with pyro.validation_enabled(False), torch.no_grad(), pyro.plate("particles", k, dim=-2):
        guide_tr = poutine.trace(pair.guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(pair.model, trace=guide_tr)).get_trace(x)
    total = torch.zeros(k, x.shape[0])
    for tr, sign in ((model_tr, 1.0), (guide_tr, -1.0)):
        for site in tr.nodes.values():
            if site["type"] == "sample":
                lp = site["fn"].log_prob(site["value"]) * site["scale"]
                while lp.dim() > 2:
                    lp = lp.sum(1)
                total = total + sign * lp
    return total


def test_flat_ppca_gives_the_same_numbers_as_before(ppca_truth):
    from conftest import ppca_sample

    from ppgen.models import PPCA

    pair = PPCA(x_shape=(5,), z_dim=2).set_params(ppca_truth["W"], ppca_truth["mu"], ppca_truth["sigma"])
    with torch.no_grad():
        pair.encoder.linear.weight.add_(0.1)
    x = ppca_sample(ppca_truth, 20, seed=3)
    torch.manual_seed(7)
    new = log_weights(pair, x, 30)
    torch.manual_seed(7)
    old = _old_log_weights(pair, x, 30)
    assert new.shape == (30, 20)
    torch.testing.assert_close(new, old)


def test_global_sites_are_split_evenly_and_refused_by_iwae():
    """Factor analysis: per-example log weights sum to the joint log weight (globals 1/N each); IWAE_K refuses."""
    from ppgen import sites
    from ppgen.models import FactorAnalysis

    pair = FactorAnalysis(x_shape=(5,), z_dim=1)
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    guide_tr, model_tr = sites.trace_pair(pair, x, 3)
    per_example = sites.log_density(model_tr) - sites.log_density(guide_tr)
    assert per_example.shape == (3, 7)
    joint = torch.stack([model_tr.nodes[s]["fn"].log_prob(model_tr.nodes[s]["value"]).reshape(3, -1).sum(-1)
                         for s in sites.sample_sites(model_tr)]).sum(0) - torch.stack(
        [guide_tr.nodes[s]["fn"].log_prob(guide_tr.nodes[s]["value"]).reshape(3, -1).sum(-1)
         for s in sites.sample_sites(guide_tr)]).sum(0)
    torch.testing.assert_close(per_example.sum(-1), joint.detach(), rtol=1e-5, atol=1e-3)
    assert set(sites.global_sites(model_tr)) == {"mu", "noise", "loadings_diag", "loadings_lower"}
    assert elbo(pair, x, num_samples=4).shape == (7,)
    with pytest.raises(UserError, match="outside the data plate"):
        iwae(pair, x, k=4)
    with pytest.raises(UserError, match="outside the data plate"):
        sites.log_density(model_tr, globals="raise")


def test_the_data_plates_minibatch_scale_is_divided_out():
    """A subsampled data plate scales its sites by N/B; per-example numbers do not carry it."""
    from pyro import poutine

    from ppgen import sites

    pair = NestedGaussian()
    x = _data(pair, n=10)
    idx = torch.tensor([1, 4, 7])

    def model(x):
        with pyro.plate("data", 10, subsample=idx, dim=-2) as i:
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
            with pyro.plate("coords", D, dim=-1):
                pyro.sample("x", dist.Normal((z * pair.W).sum(-1) + pair.mu, pair.sigma), obs=x[i])

    z = torch.randn(3, K, generator=torch.Generator().manual_seed(0))
    with pyro.validation_enabled(False):
        tr = poutine.trace(poutine.condition(model, data={"z": z.unsqueeze(1)})).get_trace(x)
    got = sites.log_density(tr)
    assert got.shape == (3,)
    full = sites.log_joint(pair, x[idx], {"z": z.unsqueeze(1)})
    torch.testing.assert_close(got, full)
    assert float(tr.nodes["x"]["scale"]) == pytest.approx(10 / 3)
