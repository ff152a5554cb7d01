"""MCMC inside training (Hoffman 2017): the HMC refinement against PPCA's exact posterior, the gradient split,
and training with it.

Tolerances are k·SE with the Monte Carlo error of C independent chains: SE(mean) = sd/√C,
SE(variance) = var·√(2/(C−1)), SE(covariance) = √((Σ₁₁Σ₂₂ + Σ₁₂²)/C) (Gaussian draws).
"""

from __future__ import annotations

import math

import pytest
import torch
from support import known_ppca, tiny_vae

import ppgen
from ppgen import sites
from ppgen.errors import UserError
from ppgen.inference import hmc
from ppgen.inference.options import OptionError, SVIOptions
from ppgen.inference.svi import choose_engine

K = 4.0  # standard errors
CHAINS = 4000


def _points(pair, n: int = 3, seed: int = 5) -> torch.Tensor:
    torch.manual_seed(seed)
    return pair.marginal().sample((n,))


def _moments_match(z: torch.Tensor, post) -> tuple[torch.Tensor, torch.Tensor]:
    """|error| / SE of the per-point means and variances of z (C, B, D) against the exact posterior."""
    c = z.shape[0]
    mean, var = post.mean, torch.diagonal(post.covariance_matrix, dim1=-2, dim2=-1)
    mean_err = (z.mean(0) - mean).abs() / (var.sqrt() / math.sqrt(c))
    var_err = (z.var(0) - var).abs() / (var * math.sqrt(2 / (c - 1)))
    return mean_err, var_err


def _bad_guide(pair):
    """The exact posterior's guide moved 2 (7 to 14 posterior sd) off and made 5 to 9 times too narrow."""
    with torch.no_grad():
        pair.encoder.linear.bias.add_(2.0)
        pair.encoder.raw_tril.copy_(torch.diag(torch.log(torch.expm1(torch.full((2,), 0.03)))))
    return pair


@torch.no_grad()
def test_hmc_refinement_moves_a_bad_guide_to_the_exact_posterior():
    pair = _bad_guide(known_ppca())
    x = _points(pair)
    post = pair.posterior(x)
    torch.manual_seed(0)
    start = hmc.refine(pair, x, steps=0, step_size=0.05, leapfrog=10, chains=CHAINS)
    mean_err, var_err = _moments_match(start.z, post)
    assert mean_err.min() > 50 and var_err.min() > 20  # 0 steps: the guide's draws, far off (the test can fail)
    torch.manual_seed(1)
    chain = hmc.refine(pair, x, steps=40, step_size=0.05, leapfrog=10, chains=CHAINS)
    mean_err, var_err = _moments_match(chain.z, post)
    assert mean_err.max() < K and var_err.max() < K, (mean_err, var_err)
    assert 0.5 < chain.acceptance <= 1.0


@torch.no_grad()
def test_the_hmc_transition_leaves_the_exact_posterior_invariant():
    pair = known_ppca()
    x = _points(pair)
    post = pair.posterior(x)
    torch.manual_seed(2)
    z0 = post.sample((CHAINS,))  # (C, B, 2): exact posterior draws
    torch.manual_seed(3)
    chain = hmc.refine(pair, x, steps=3, step_size=0.12, leapfrog=8, start=z0, chains=CHAINS)
    z = chain.z
    assert (z != z0).any(-1).float().mean() > 0.5  # the chains moved: the check is not vacuous
    assert 0.3 < chain.acceptance < 0.99  # a step size large enough for the accept step to matter
    mean_err, var_err = _moments_match(z, post)
    assert mean_err.max() < K and var_err.max() < K, (mean_err, var_err)
    cov = post.covariance_matrix
    se = ((cov[:, 0, 0] * cov[:, 1, 1] + cov[:, 0, 1] ** 2) / CHAINS).sqrt()
    centred = z - z.mean(0)
    emp = (centred[..., 0] * centred[..., 1]).sum(0) / (CHAINS - 1)
    assert ((emp - cov[:, 0, 1]).abs() / se).max() < K


@torch.no_grad()
def test_without_the_accept_step_the_same_moves_leave_the_posterior(monkeypatch):
    """The invariance check above can fail: the leapfrog proposals always accepted change the variance."""
    pair = known_ppca()
    x = _points(pair)
    post = pair.posterior(x)
    torch.manual_seed(2)
    z = post.sample((CHAINS,))
    target = hmc.LatentTarget(pair, x, CHAINS, base="prior", start="guide")
    torch.manual_seed(3)
    for _ in range(3):
        z, _, _ = hmc.hmc_step(target, z, 1.0, 0.12, 8)
    _, var_err = _moments_match(z, post)
    assert var_err.max() < K  # with the accept step: invariant
    torch.manual_seed(2)
    always = post.sample((CHAINS,))
    monkeypatch.setattr(torch, "rand_like", lambda t, **kw: torch.zeros_like(t))  # accept every proposal
    for _ in range(3):
        always, _, _ = hmc.hmc_step(target, always, 1.0, 0.12, 8)
    _, var_err = _moments_match(always, post)
    assert var_err.max() > K


def test_the_model_takes_the_refined_gradient_and_the_guide_the_elbo():
    pair = known_ppca()
    x = _points(pair, 8)
    params = [p for p in pair.parameters() if p.requires_grad]
    torch.manual_seed(0)
    guide_loss = ppgen.inference.svi.make_elbo("trace", 1, 1).differentiable_loss(pair.model, pair.guide, x)
    chain = hmc.refine(pair, x, 2, 0.05, 5)
    model_loss = -sites.log_joint(pair, x, chain.values, particles=1).sum()
    want_model = dict(zip(params, torch.autograd.grad(model_loss, params, allow_unused=True, retain_graph=True)))
    want_guide = dict(zip(params, torch.autograd.grad(guide_loss, params, allow_unused=True, retain_graph=True)))
    hmc.split_gradients(params, guide_loss, model_loss)
    decoder = set(pair.decoder.parameters())
    for p in params:
        want = want_model[p] if p in decoder else want_guide[p]
        assert want is not None and torch.equal(p.grad, want)


def test_training_with_mcmc_runs_on_the_vae_and_reports_its_chain():
    x = torch.bernoulli(torch.full((128, 12), 0.3), generator=torch.Generator().manual_seed(0))
    pair = tiny_vae()
    before = {k: v.clone() for k, v in pair.state_dict().items()}
    seen = []
    fit = ppgen.fit(pair, x, backend="svi", epochs=2, batch_size=64, mcmc_steps=2, mcmc_leapfrog=3,
                    progress=False, announce=seen.append)
    assert seen == ["SVI engine torch (MCMC inside training (mcmc_steps) needs engine='torch' because its HMC "
                    "transitions run on Pyro traces (ppgen.inference.hmc))"]
    row = fit.history[-1]
    assert math.isfinite(row["elbo"]) and 0 < row["mcmc_acceptance"] <= 1 and row["mcmc_step_size"] > 0
    after = pair.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # encoder and decoder both trained
    assert fit.state.engine["mcmc_step_size"] == row["mcmc_step_size"]


def test_mcmc_options_are_checked_in_one_line():
    with pytest.raises(OptionError, match="needs engine='torch'"):
        SVIOptions(mcmc_steps=2, engine="jax")
    with pytest.raises(OptionError, match="mcmc_steps"):
        SVIOptions(mcmc_steps=-1)
    with pytest.raises(OptionError, match="elbo='trace'"):
        SVIOptions(mcmc_steps=1, elbo="iwae", num_particles=5)
    with pytest.raises(OptionError, match="mcmc_accept"):
        SVIOptions(mcmc_accept=1.0)
    assert choose_engine(known_ppca(), SVIOptions(mcmc_steps=1))[0] == "torch"


def test_mcmc_refuses_a_pair_whose_latents_hmc_cannot_move():
    from ppgen.models import FactorAnalysis

    fa = FactorAnalysis(x_shape=(5,), z_dim=1)
    with pytest.raises(UserError, match="MCMC inside training"):
        ppgen.fit(fa, torch.randn(16, 5), backend="svi", epochs=1, mcmc_steps=1, progress=False)


@pytest.mark.slow
def test_mcmc_training_undoes_the_bias_a_poor_guide_puts_on_the_model():
    """Hoffman's point on PPCA: with the guide frozen at a mean-field q, plain SVI pulls the loadings toward a
    model whose posterior q fits (the exact log-likelihood falls below the maximum); with 5 HMC transitions
    the model's gradient sees posterior draws and the fit recovers at least 90% of the lost log-likelihood.
    Compared on the same 1,000 points (paired differences, their SE)."""
    from support import correlated_ppca

    torch.manual_seed(0)
    x = correlated_ppca().marginal().sample((1000,)).detach()
    best = correlated_ppca().fit_exact(x).log_marginal(x).detach()
    fitted = {}
    for steps in (0, 5):
        pair = correlated_ppca("mean-field")
        pair.encoder.train(False)
        for p in pair.encoder.parameters():
            p.requires_grad_(False)
        ppgen.fit(pair, x, backend="svi", engine="torch", epochs=30, batch_size=200, lr=1e-2, seed=1,
                  mcmc_steps=steps, mcmc_leapfrog=5, mcmc_step_size=0.1, progress=False)
        with torch.no_grad():
            fitted[steps] = pair.log_marginal(x)

    def below(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
        d = b - a
        return float(d.mean()), float(d.std() / math.sqrt(len(d)))

    gap, se = below(fitted[0], best)
    assert gap > K * se  # plain SVI with this guide is biased away from the maximum
    gain, se = below(fitted[0], fitted[5])
    assert gain > K * se  # MCMC inside training removes (most of) it
    rest, _ = below(fitted[5], best)
    assert rest < 0.1 * gap, (gap, rest)
