r"""Every estimator against the exact answer PPCA gives.

p(z) = N(0, I_k), p(x|z) = N(Wz + μ, σ²I) has p(x) = N(μ, WWᵀ + σ²I) and a
Gaussian posterior, and the guide family contains that posterior, so:

* E[ELBO(x)] = log p(x) − KL(q(z|x) ‖ p(z|x)), the KL between two Gaussians in closed form;
* ELBO ≤ IWAE_K ≤ IWAE_{K'} ≤ log p(x) for K ≤ K', IWAE_K → log p(x);
* with q = p(z|x) every log weight equals log p(x): zero variance.

Tolerances are z-scores of means over many x (paired differences on the same x),
with the standard error estimated from the same draws.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import mean_se, ppca_sample
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import MultivariateNormal, kl_divergence

import ppgen
from ppgen.evaluation import elbo, iwae, log_weights
from ppgen.models import PPCA

Z = 4.0  # z-score allowed for a statistical check (two-sided p ≈ 6e-5)
pytestmark = pytest.mark.usefixtures("single_thread")


def true_pair(t: dict) -> PPCA:
    return PPCA(x_shape=(t["d"],), z_dim=t["k"]).set_params(t["W"], t["mu"], t["sigma"])


def imperfect_pair(t: dict, weight_noise: float, raw_tril_shift: list) -> PPCA:
    """The true model with the exact posterior guide, then the guide deliberately spoiled."""
    pair = true_pair(t).set_guide_to_posterior()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        pair.encoder.linear.weight.add_(weight_noise * torch.randn(t["k"], t["d"], generator=g))
        pair.encoder.raw_tril.add_(torch.tensor(raw_tril_shift))
    return pair


def guide_distribution(pair: PPCA, x: torch.Tensor) -> MultivariateNormal:
    loc, tril = pair.encoder(x)
    return MultivariateNormal(loc, scale_tril=tril.expand(len(x), *tril.shape[-2:]))


@pytest.fixture
def mild(ppca_truth):
    """KL(q‖posterior) ≈ 0.8 nats: IWAE_1000's bias (≈ χ²/2K) is far below its standard error."""
    return imperfect_pair(ppca_truth, 0.01, [[0.4, 0.0], [0.15, 0.4]])


@pytest.fixture
def poor(ppca_truth):
    """KL(q‖posterior) ≈ 2.6 nats: every step K → 10K tightens the bound measurably."""
    return imperfect_pair(ppca_truth, 0.04, [[0.35, 0.0], [0.3, -0.2]])


#: the estimators' engines: every exact check below runs on the torch path and compiled (ppgen.evaluation.compiled)
ENGINES = pytest.mark.parametrize("engine", ["torch", "jax"])


@ENGINES
@torch.no_grad()
def test_elbo_equals_log_px_minus_exact_kl(mild, ppca_truth, engine):
    x = ppca_sample(ppca_truth, 400, seed=1)
    log_px = mild.log_marginal(x)
    kl = kl_divergence(guide_distribution(mild, x), mild.posterior(x))
    assert float(kl.mean()) > 0.5  # the guide really is imperfect
    torch.manual_seed(0)
    estimate = elbo(mild, x, num_samples=10, engine=engine)
    m, se = mean_se(estimate - (log_px - kl))
    assert abs(m) < Z * se, (m, se)
    assert se < 0.05


@ENGINES
@torch.no_grad()
def test_iwae_ordering_and_convergence_to_exact_log_px(mild, ppca_truth, engine):
    x = ppca_sample(ppca_truth, 400, seed=1)
    log_px = mild.log_marginal(x)
    torch.manual_seed(0)
    estimates = {k: iwae(mild, x, k=k, engine=engine) for k in (1, 10, 100, 1000)}
    for k, est in estimates.items():  # IWAE_K ≤ log p(x): the mean gap is never significantly positive
        m, se = mean_se(est - log_px)
        assert m < Z * se, (k, m, se)
    for small, large in ((1, 10), (10, 100), (100, 1000)):  # non-decreasing in K
        m, se = mean_se(estimates[large] - estimates[small])
        assert m > -Z * se, (small, large, m, se)
    m, se = mean_se(estimates[10] - estimates[1])
    assert m > Z * se  # ELBO = IWAE_1 < IWAE_10, significantly
    # IWAE_1000 agrees with the exact value; the ELBO, on the same x, does not
    m, se = mean_se(estimates[1000] - log_px)
    assert abs(m) < Z * se and se < 0.01, (m, se)
    m1, se1 = mean_se(estimates[1] - log_px)
    assert m1 < -Z * se1


@ENGINES
@torch.no_grad()
def test_iwae_strictly_increasing_in_k_for_a_poor_guide(poor, ppca_truth, engine):
    x = ppca_sample(ppca_truth, 1500, seed=2)
    log_px = poor.log_marginal(x)
    torch.manual_seed(1)
    estimates = [iwae(poor, x, k=k, engine=engine) for k in (1, 10, 100, 1000)]
    # z-scores of the three gains in pilot runs with 3 other seeds: 18-20, 8-11 and 6.5-9.3
    for small, large in zip(estimates, estimates[1:]):
        m, se = mean_se(large - small)
        assert m > Z * se, (m, se)
    m, se = mean_se(estimates[-1] - log_px)
    assert m < -3 * se  # with this guide even K = 1000 is measurably below log p(x): a bound, not an estimate


@ENGINES
@torch.no_grad()
def test_exact_posterior_guide_gives_log_px_with_zero_variance(ppca_truth, engine):
    pair = true_pair(ppca_truth).set_guide_to_posterior()
    x = ppca_sample(ppca_truth, 50, seed=3)
    log_px = pair.log_marginal(x)
    lw = log_weights(pair, x, 200)
    assert lw.shape == (200, 50)
    torch.testing.assert_close(lw, log_px.expand_as(lw), atol=2e-4, rtol=1e-5)
    assert float(lw.std(0).max()) < 1e-4
    torch.testing.assert_close(elbo(pair, x, num_samples=3, engine=engine), log_px, atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(iwae(pair, x, k=30, engine=engine), log_px, atol=2e-4, rtol=1e-5)


def test_analytic_kl_and_monte_carlo_elbo_agree():
    """Pyro's TraceMeanField_ELBO (closed-form Gaussian KL) and Trace_ELBO estimate the same ELBO.

    Uses a VAE pair: its Normal guide and Normal prior have a registered closed-form KL.
    The analytic KL also removes the KL's sampling noise, so its variance is lower.
    """
    torch.manual_seed(0)
    pair = ppgen.models.VAE(x_shape=(1, 4, 4), z_dim=3, hidden=(16,))
    x = torch.bernoulli(torch.rand(32, 1, 4, 4))
    groups, particles = 30, 20  # 30 independent estimates, each a mean over 20 vectorized particles

    def losses(cls):
        loss = cls(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
        with torch.no_grad():
            return torch.tensor([loss.loss(pair.model, pair.guide, x) for _ in range(groups)])

    analytic, monte_carlo = losses(TraceMeanField_ELBO), losses(Trace_ELBO)
    (ma, sa), (mm, sm) = mean_se(analytic), mean_se(monte_carlo)
    assert abs(ma - mm) < Z * math.hypot(sa, sm), (ma, mm, sa, sm)
    assert float(analytic.var()) < float(monte_carlo.var())
    # and both agree with ppgen's own ELBO estimator (a loss is a negative ELBO summed over the batch)
    with torch.no_grad():
        own = elbo(pair, x, num_samples=groups * particles).sum()
    assert abs(float(-own) - ma) < Z * math.hypot(sa, sm)  # 600 draws, as many as the Monte Carlo loss


def test_posterior_matches_brute_force_gaussian_conditioning(ppca_truth):
    """Condition the joint Gaussian of (z, x) directly, in float64."""
    pair = true_pair(ppca_truth)
    W, mu, s2 = ppca_truth["W"].double(), ppca_truth["mu"].double(), ppca_truth["sigma"] ** 2
    d, k = ppca_truth["d"], ppca_truth["k"]
    x = ppca_sample(ppca_truth, 6, seed=4)
    # joint: z ~ N(0, I), x = Wz + μ + σε  =>  Cov(z, x) = Wᵀ, Cov(x) = WWᵀ + σ²I
    cov_x = W @ W.T + s2 * torch.eye(d, dtype=torch.float64)
    gain = W.T @ torch.linalg.inv(cov_x)
    want_mean = (x.double() - mu) @ gain.T
    want_cov = torch.eye(k, dtype=torch.float64) - gain @ W
    with torch.no_grad():
        post = pair.posterior(x)
    torch.testing.assert_close(post.mean.double(), want_mean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(post.covariance_matrix.double().expand(6, k, k), want_cov.expand(6, k, k),
                               atol=1e-5, rtol=1e-4)
    # and the guide set to it reproduces it
    pair.set_guide_to_posterior()
    with torch.no_grad():
        q = guide_distribution(pair, x)
    torch.testing.assert_close(q.mean.double(), want_mean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(q.covariance_matrix[0].double(), want_cov, atol=1e-5, rtol=1e-4)


def test_log_marginal_satisfies_bayes_rule(ppca_truth):
    """log p(x) = log p(x, z) − log p(z | x) for any z (Bayes), checked at several z."""
    pair = true_pair(ppca_truth)
    x = ppca_sample(ppca_truth, 5, seed=5)
    with torch.no_grad():
        post = pair.posterior(x)
        for shift in (0.0, 0.7, -1.3):
            z = post.mean + shift
            joint = (MultivariateNormal(torch.zeros(2), torch.eye(2)).log_prob(z)
                     + torch.distributions.Normal(z @ pair.W.T + pair.mu, pair.sigma).log_prob(x).sum(-1))
            torch.testing.assert_close(joint - post.log_prob(z), pair.log_marginal(x), atol=1e-3, rtol=1e-5)


def _total_loglik(pair: PPCA, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(pair.log_marginal(x).double().sum())


def test_fit_exact_is_the_maximum_likelihood(ppca_truth):
    x = ppca_sample(ppca_truth, 2000, seed=6)
    ml = PPCA(x_shape=(5,), z_dim=2).fit_exact(x)
    best = _total_loglik(ml, x)
    assert best >= _total_loglik(true_pair(ppca_truth), x)  # ML beats the truth on its own data
    g = torch.Generator().manual_seed(7)
    W, mu, sigma = ml.W.detach().clone(), ml.mu.detach().clone(), float(ml.sigma.detach())
    for _ in range(8):  # every perturbation lowers the likelihood
        dW, dmu = torch.randn(W.shape, generator=g), torch.randn(mu.shape, generator=g)
        dlog_sigma = float(torch.randn((), generator=g))
        eps = 0.03
        worse = PPCA(x_shape=(5,), z_dim=2).set_params(W + eps * dW, mu + eps * dmu, sigma * math.exp(eps * dlog_sigma))
        assert _total_loglik(worse, x) < best - 0.1
    # stationarity: the gradient at the ML estimate vanishes (compared with its size at the truth)
    def grad_norm(pair):
        pair.zero_grad()
        (-pair.log_marginal(x).sum()).backward()
        return math.sqrt(sum(float((p.grad**2).sum()) for p in pair.decoder.parameters()))

    assert grad_norm(ml) < 0.01 * grad_norm(true_pair(ppca_truth))


def test_svi_converges_to_the_maximum_likelihood(ppca_truth):
    """SVI with the full-covariance guide reaches the ML log-likelihood within sampling error.

    Tolerance: by Wilks' theorem 2(L_ML − L_true) ~ χ²_p, with p = dk + d + 1 − k(k−1)/2 = 15
    free parameters, so parameters within the ML estimate's own sampling error sit about
    p/2 nats below L_ML. We ask SVI to get within p nats of L_ML (and above L_true − p),
    The seeds of 4 pilot runs left L_ML − L_SVI between 2.2 and 6.9 nats.
    """
    n, p = 1000, 15
    x = ppca_sample(ppca_truth, n, seed=8)
    best = _total_loglik(PPCA(x_shape=(5,), z_dim=2).fit_exact(x), x)
    truth = _total_loglik(true_pair(ppca_truth), x)
    torch.manual_seed(0)
    pair = PPCA(x_shape=(5,), z_dim=2)
    start = _total_loglik(pair, x)
    fit = ppgen.fit(pair, x, backend="svi", epochs=100, batch_size=500, lr=0.05, seed=0, progress=False)
    assert fit.stopped is None and len(fit.history) == 100
    reached = _total_loglik(pair, x)
    assert start < best - 1000  # it had a long way to go
    assert best - p < reached <= best + 1e-2
    assert reached > truth - p
    # the guide found the posterior too: the exact KL(q(z|x) ‖ p(z|x)) under the fitted model fell from
    # ~50-100 nats per example at initialization to a few hundredths (0.02-0.06 over 4 seeds in a pilot)
    with torch.no_grad():
        kl = kl_divergence(guide_distribution(pair, x), pair.posterior(x)).mean()
    assert float(kl) < 0.15
