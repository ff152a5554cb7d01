"""Encoder vs NUTS and the Cremer et al. gap decomposition, checked on PPCA against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from support import NUTS_OPTIONS, POINTS, known_ppca

import ppgen
from ppgen.evaluation import amortization as am
from ppgen.models import PPCA


def points(pair) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        return pair.decode(torch.randn(8, 2, generator=g)) + 0.5 * torch.randn(8, 5, generator=g)


def spoil(pair: PPCA, shift: float = 0.3, widen: float = 0.6) -> PPCA:
    """Move the encoder off the exact posterior: a shifted mean and a too-narrow covariance."""
    with torch.no_grad():
        pair.encoder.linear.bias.add_(shift)
        pair.encoder.raw_tril.copy_(torch.tril(pair.encoder.raw_tril, -1)
                                    + torch.diag(torch.diagonal(pair.encoder.raw_tril) - widen))
    return pair


@pytest.fixture(scope="module")
def nuts_fit():
    pair = known_ppca()
    return ppgen.fit(pair, points(pair), backend="nuts", **NUTS_OPTIONS)


def test_gaussian_distances_against_closed_forms():
    m0, m1 = torch.tensor([[0.0, 1.0]], dtype=torch.float64), torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    s0, s1 = torch.tensor([[1.0, 2.0]], dtype=torch.float64), torch.tensor([[0.5, 3.0]], dtype=torch.float64)
    S0, S1 = torch.diag_embed(s0**2), torch.diag_embed(s1**2)
    # commuting covariances: W2^2 = |m0 - m1|^2 + |s0 - s1|^2
    expected = math.sqrt(1 + 4 + 0.25 + 1)
    assert float(am.gaussian_w2(m0, S0, m1, S1)) == pytest.approx(expected, rel=1e-10)
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    full = rot @ torch.diag(torch.tensor([2.0, 0.3])) @ rot.T
    assert float(am.gaussian_w2(m0, full[None], m0, full[None])) == pytest.approx(0.0, abs=1e-6)
    # KL of diagonal Gaussians: sum of 1-d KLs
    kl_1d = torch.log(s1 / s0) + (s0**2 + (m0 - m1) ** 2) / (2 * s1**2) - 0.5
    assert float(am.gaussian_kl(m0, S0, m1, S1)) == pytest.approx(float(kl_1d.sum()), rel=1e-10)


def bootstrap_kl(q, post, n: int, reps: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sd of KL(q ‖ Gaussian fitted to n exact posterior draws), per point (parametric bootstrap)."""
    g = torch.Generator().manual_seed(0)
    loc, tril = post.mean.detach().double(), post.scale_tril.detach().double()
    eps = torch.randn(reps, len(loc), n, 2, generator=g, dtype=torch.float64)
    m, S = am.gaussian_fit(loc[:, None] + eps @ tril.transpose(-1, -2)[None])
    kl = am.gaussian_kl(q.loc.expand(reps, -1, -1), q.cov.expand(reps, -1, -1, -1), m, S)
    return kl.mean(0), kl.std(0)


def effective_sizes(nuts_fit) -> torch.Tensor:
    """The smallest bulk ESS over dimensions, per point (ArviZ); the bootstrap uses the smallest of all."""
    from ppgen.diagnostics import nuts_report

    return torch.tensor([r["ess_bulk_min"] for r in nuts_report(nuts_fit)["per_point"]])


def test_exact_encoder_matches_nuts(nuts_fit):
    """With q the exact posterior: KL(q‖p̂) is Monte Carlo noise only, coverage is nominal, k̂ is small."""
    pair, x = nuts_fit.pair, nuts_fit.state["x"]
    draws = am.nuts_draws(nuts_fit)
    out = am.against_nuts(pair, x, draws)
    ess = effective_sizes(nuts_fit)
    q = am.encoder_gaussian(pair, x)
    mean, sd = bootstrap_kl(q, pair.posterior(x), int(ess.min()))
    assert torch.all(out["kl"] < mean + 4 * sd)
    for level in (0.5, 0.9):
        se = torch.sqrt(level * (1 - level) / ess)
        assert torch.all((out[f"coverage{int(level * 100)}"] - level).abs() < 4 * se)
    assert float(out["khat"].max()) < 0.5


def test_kl_and_coverage_of_a_spoiled_encoder(nuts_fit):
    pair, x = known_ppca(), nuts_fit.state["x"]
    spoil(pair)
    draws = am.nuts_draws(nuts_fit)
    q = am.encoder_gaussian(pair, x)
    post = pair.posterior(x)
    exact_kl = torch.distributions.kl_divergence(q.dist(), post).detach().double()
    out = am.against_nuts(pair, x, draws, q)
    # the spread of the KL estimate from a Gaussian fit to ESS draws, by a parametric bootstrap on the posterior
    _, sd = bootstrap_kl(q, post, int(effective_sizes(nuts_fit).min()))
    assert torch.all((out["kl"] - exact_kl).abs() < 4 * sd)
    assert torch.all(out["coverage90"] < 0.8)  # too narrow a q covers less than its nominal 90%
    exact_w2 = am.gaussian_w2(q.loc, q.cov, post.mean.detach(), post.covariance_matrix.detach())
    assert torch.allclose(out["w2"], exact_w2, atol=0.05)


def test_gap_decomposition_is_exact_on_ppca(nuts_fit):
    """Approximation gap = KL(q*‖p) ≈ 0 (the family holds the posterior); amortization gap = KL(q_enc‖p) − KL(q*‖p)."""
    pair, x = known_ppca(), nuts_fit.state["x"]
    spoil(pair)
    g = am.gaps(pair, x, steps=300, lr=0.05, elbo_samples=2000, iwae_k=2000, seed=0)
    post = pair.posterior(x)
    exact_log_px = pair.log_marginal(x).detach().double()
    kl_enc = torch.distributions.kl_divergence(g["encoder"].dist(), post).detach().double()
    kl_star = torch.distributions.kl_divergence(g["q_star"].dist(), post).detach().double()
    assert torch.all(kl_star < 0.02)  # q* found the posterior
    assert torch.all((g["log_px"] - exact_log_px).abs() < 0.01)  # IWAE with q* as proposal is nearly exact
    assert torch.all((g["approximation_gap"] - kl_star).abs() < 4 * g["approximation_gap_se"] + 0.01)
    assert torch.all((g["amortization_gap"] - (kl_enc - kl_star)).abs() < 4 * g["amortization_gap_se"])
    assert torch.all(kl_enc > 1.0)  # the spoiled encoder loses a visible amount


def test_compare_table(nuts_fit):
    pair = known_ppca()
    result = am.compare(pair, nuts_fit, steps=50, elbo_samples=500, iwae_k=500)
    assert [r["point"] for r in result["points"]] == POINTS
    assert result["overall"]["divergences"] == 0
    text = am.format_table(result)
    assert len(text.splitlines()) == len(POINTS) + 2 and "mean" in text.splitlines()[-1]
    # exact encoder: both gaps vanish up to Monte Carlo error
    for row in result["points"]:
        assert abs(row["amortization_gap"]) < 4 * row["amortization_gap_se"] + 0.01


def test_compare_command_refuses_bad_input_with_exit_2(tmp_path, capsys):
    from ppgen.cli import main

    assert main(["compare", str(tmp_path)]) == 2  # no trained run there
    assert main(["compare", str(tmp_path), "--chains", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("ppgen: error: ") for line in err)


@pytest.mark.parametrize("family", ["gaussian", "dirichlet"])
def test_one_posterior_interface_for_both_families(family):
    """Gaussian and Dirichlet q answer the same questions: their draws have q's mean (4 SE), their central
    intervals hold their own draws at the nominal rate (4 binomial SE), the entropy is torch's closed form, the
    member fitted to q's own draws is within Monte Carlo noise of q, and one seed gives the same draws."""
    n = 20_000
    if family == "gaussian":
        tril = torch.tensor([[[1.0, 0.0], [0.6, 0.5]], [[0.3, 0.0], [-0.2, 2.0]]])
        q = am.Gaussian(torch.tensor([[0.0, 1.0], [-2.0, 0.5]]), tril, False)
        exact_entropy = torch.distributions.MultivariateNormal(q.loc, scale_tril=q.tril).entropy()
    else:
        q = am.DirichletQ(torch.tensor([[2.0, 3.0, 5.0], [0.7, 4.0, 1.5]]))
        exact_entropy = torch.distributions.Dirichlet(q.concentration).entropy()
    z = q.draws(n, seed=3)
    assert z.shape == (n,) + tuple(q.loc.shape) and torch.equal(z, q.draws(n, seed=3))
    se = z.double().std(0) / math.sqrt(n)
    assert torch.all((z.double().mean(0) - q.loc.double()).abs() < 4 * se)
    per_point = z.transpose(0, 1)  # (P, S, k)
    for level in (0.5, 0.9):
        cover = am.interval_coverage(*q.interval(level), per_point)
        assert torch.all((cover - level).abs() < 4 * math.sqrt(level * (1 - level) / n))
    torch.testing.assert_close(q.entropy().float(), exact_entropy.float())
    assert q.log_prob(z).shape == (n, 2)
    assert torch.all(q.kl(q.fitted(per_point)) < 0.01)  # ~ (number of moments) / (2 n) ≈ 1e-4, far below
