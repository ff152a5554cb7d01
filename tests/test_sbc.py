"""Simulation-based calibration of amortized guides (Talts et al. 2018) on PPCA, where the exact posterior is
known: the exact guide passes, the KL(q‖p)-optimal mean-field guide fails in the shape theory predicts.

The posterior of :func:`support.correlated_ppca` has correlation −0.95; its long axis is v = (1, −1)/√2
(variance 0.88) and its short axis u = (1, 1)/√2 (variance 0.025). The mean-field guide's variances are
1/Λ_ii ≈ 0.048, so along v it is 18 times too narrow (ranks pile at 0 and L: a ∪) and along u about twice
too wide (a ∩). With N = 1000 simulations and L = 99 draws, 10 bins of 100 ranks are exactly equiprobable.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from support import correlated_ppca

from ppgen.errors import UserError
from ppgen.evaluation import sbc

K = 4.0  # standard errors
AXES = torch.tensor([[1.0, 1.0], [-1.0, 1.0]]) / math.sqrt(2)  # columns: v (long axis), u (short axis)
ALPHA = 1e-3  # 4 quantities: under uniform ranks all p-values exceed it with probability 0.996


def test_the_axes_are_the_posteriors():
    cov = correlated_ppca().posterior(torch.zeros(1, 5)).covariance_matrix[0].detach()
    var = torch.diagonal(AXES.T @ cov @ AXES)
    assert var[0] > 30 * var[1] and torch.allclose(cov @ AXES, AXES * var, atol=0.02)


def test_the_exact_posterior_guide_is_calibrated():
    result = sbc.guide_sbc(correlated_ppca("exact"), n=1000, draws=99, directions=AXES, seed=0)
    assert result.names == ["z[0]", "z[1]", "direction[0]", "direction[1]"]
    assert result.ranks.shape == (1000, 4) and result.ranks.min() >= 0 and result.ranks.max() <= 99
    assert (result.pvalues > ALPHA).all(), result.table()
    share, expected, se = result.outer_share()
    assert (np.abs(share - expected) < K * se).all()


def test_the_mean_field_guide_fails_as_theory_predicts():
    result = sbc.guide_sbc(correlated_ppca("mean-field"), n=1000, draws=99, directions=AXES, seed=0)
    assert (result.pvalues < ALPHA).all(), result.table()
    share, expected, se = result.outer_share()
    assert share[2] > expected + K * se[2]  # ∪ along the correlated (long) axis: q too narrow
    assert share[0] > expected + K * se[0] and share[1] > expected + K * se[1]  # and in each coordinate
    assert share[3] < expected - K * se[3]  # ∩ across it: q too wide


def test_ranks_and_pvalues_on_known_inputs():
    truth = np.array([[0.5], [2.5], [10.0]])
    draws = np.arange(5, dtype=float)[:, None, None].repeat(3, 1)  # 0..4 for every point
    assert sbc.ranks(truth, draws).ravel().tolist() == [1, 3, 5]
    assert np.allclose(sbc.bin_probabilities(99, 10), 0.1) and np.isclose(sbc.bin_probabilities(10, 3).sum(), 1)
    rng = np.random.default_rng(0)
    uniform = rng.integers(0, 100, size=(5000, 1))
    piled = np.where(rng.random((5000, 1)) < 0.5, 0, 99)
    assert sbc.uniformity_pvalues(uniform, 99)[0] > ALPHA and sbc.uniformity_pvalues(piled, 99)[0] < 1e-10
    with pytest.raises(UserError, match="do not match"):
        sbc.ranks(truth, draws[:, :2])


def test_the_histogram_figure(tmp_path):
    from ppgen import plots

    rows = {}
    for guide in ("exact", "mean-field"):
        r = sbc.guide_sbc(correlated_ppca(guide), n=200, draws=99, directions=AXES, seed=1)
        rows[guide] = (r.ranks, r.names, r.pvalues)
    path = plots.sbc_histograms(rows, 99, tmp_path / "sbc.png")
    assert path.stat().st_size > 1000


def test_the_mean_field_guide_is_the_kl_optimum():
    """Its ELBO is log p(x) − KL_MF with KL_MF = ½(Σ log Λ_ii − log det Λ) (1.12 nats here), and any other
    diagonal scale does worse — checked with the ELBO in closed form (Gaussian q, linear-Gaussian model)."""
    pair = correlated_ppca("mean-field")
    x = torch.zeros(1, 5)
    post = pair.posterior(x)
    lam = torch.linalg.inv(post.covariance_matrix[0])
    kl_mf = 0.5 * (torch.log(lam.diagonal()).sum() - torch.logdet(lam))

    def kl_to_posterior(scale: torch.Tensor) -> torch.Tensor:  # log p(x) − ELBO = KL(q ‖ p(z|x))
        q = torch.distributions.MultivariateNormal(post.mean[0], scale_tril=torch.diag(scale))
        return torch.distributions.kl_divergence(q, torch.distributions.MultivariateNormal(post.mean[0], post.covariance_matrix[0]))

    with torch.no_grad():
        loc, scale = pair.encode(x)
        assert torch.allclose(loc, post.mean, atol=1e-5)
        best = kl_to_posterior(scale[0])
        assert abs(float(best - kl_mf)) < 1e-4 and float(kl_mf) > 1.0
        for factor in (0.9, 1.1):
            assert kl_to_posterior(scale[0] * torch.tensor([factor, 1.0])) > best
