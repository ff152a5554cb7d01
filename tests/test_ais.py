"""AIS and BDMC against exact log-likelihoods (PPCA, linear-Gaussian DLGM), and their bad input."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import ppca_sample

from ppgen.errors import UserError
from ppgen.evaluation import ais, bdmc
from ppgen.evaluation.ais import schedule, simulate
from ppgen.models import DLGM, NADE, PPCA

# Short schedules keep these fast; MC tolerances come from the estimators' own standard errors.
FAST = dict(chains=8, leapfrog=5)


def _ppca(truth) -> PPCA:
    return PPCA((truth["d"],), truth["k"]).set_params(truth["W"], truth["mu"], truth["sigma"])


def test_schedule_runs_from_prior_to_posterior():
    for kind in ("sigmoid", "linear"):
        betas = schedule(50, kind)
        assert len(betas) == 52 and betas[0] == 0 and betas[-1] == 1
        assert torch.all(betas[1:] > betas[:-1])


def test_ais_from_the_exact_posterior_has_constant_weights(ppca_truth):
    """Started at q = p(z|x), every f_β is proportional to the posterior, so every log w equals log p(x)."""
    pair = _ppca(ppca_truth).set_guide_to_posterior()
    x = ppca_sample(ppca_truth, 30)
    result = ais(pair, x, steps=5, init="guide", chains=4, leapfrog=3)
    exact = pair.log_marginal(x)
    assert torch.allclose(result.log_w, exact.expand(4, -1), atol=1e-3)
    assert torch.allclose(result.log_px, exact, atol=1e-3)


def test_ais_from_the_prior_matches_ppca_log_marginal(ppca_truth):
    pair = _ppca(ppca_truth)
    x = ppca_sample(ppca_truth, 100)
    exact = pair.log_marginal(x).detach()
    result = ais(pair, x, steps=300, seed=0, **FAST)
    # AIS's bias (−Var(w)/(2C) per point) is below its standard error at this schedule length
    assert abs(result.mean - float(exact.mean())) < 4 * result.mean_se
    assert result.mean_se < 0.05
    assert 0.4 < result.acceptance < 0.95


def test_ais_matches_a_two_layer_linear_gaussian_dlgm():
    """Several latent sites flattened into one HMC state: h_2 -> h_1 -> x, all linear-Gaussian."""
    torch.manual_seed(0)
    pair = DLGM((5,), z_dims=(3, 2), hidden=((), ()), likelihood="gaussian")
    with torch.no_grad():
        pair.prior_nets[0].log_scale.fill_(math.log(0.7))
        pair.decoder.log_scale.fill_(math.log(0.4))
    x = pair.linear_marginal().sample((60,))
    exact = pair.linear_marginal().log_prob(x)
    result = ais(pair, x, steps=300, seed=1, **FAST)
    assert abs(result.mean - float(exact.mean())) < 4 * result.mean_se


def test_bdmc_brackets_the_exact_log_likelihood_and_closes(ppca_truth):
    """Forward AIS ≤ log p(x) ≤ reverse AIS on simulated data (within MC error); the gap shrinks with K."""
    pair = _ppca(ppca_truth)
    gaps = []
    for steps in (10, 200):
        result = bdmc(pair, n=60, steps=steps, seed=3, **FAST)
        exact = float(pair.log_marginal(result.x).detach().mean())
        slack = 4 * math.hypot(result.lower.mean_se, result.upper.mean_se)
        assert result.lower.mean <= exact + slack
        assert result.upper.mean >= exact - slack
        gaps.append(result.gap)
    assert gaps[0] > 1.0  # a short schedule leaves a visible gap
    assert gaps[1] < gaps[0] / 5


def test_simulate_draws_from_the_model(ppca_truth):
    pair = _ppca(ppca_truth)
    x, latents = simulate(pair, 4000, seed=0)
    assert set(latents) == {"z"} and latents["z"].shape == (4000, 2)
    cov = torch.cov(x.T)
    expected = pair.marginal().covariance_matrix
    # sampling error of a covariance entry: sqrt((S_ii S_jj + S_ij²) / n)
    se = ((torch.diagonal(expected)[:, None] * torch.diagonal(expected)[None] + expected**2) / 4000).sqrt()
    assert torch.all((cov - expected).abs() < 5 * se)


def test_ais_bad_input_is_a_user_error(ppca_truth):
    pair = _ppca(ppca_truth)
    x = ppca_sample(ppca_truth, 4)
    with pytest.raises(UserError, match="at least 2 intermediate"):
        ais(pair, x, steps=1)
    with pytest.raises(UserError, match="at least 2 intermediate"):
        bdmc(pair, n=4, steps=0)
    with pytest.raises(UserError, match="schedule"):
        ais(pair, x, steps=5, schedule_kind="cosine")
    with pytest.raises(UserError, match="init"):
        ais(pair, x, steps=5, init="posterior")
    with pytest.raises(UserError, match="no latent variables"):
        ais(NADE((4,), hidden=3), torch.ones(2, 4), steps=5)


def test_cli_evaluate_with_ais_and_bad_input(tmp_path, capsys):
    from ppgen.cli import main

    run = tmp_path / "hvae"
    assert main(["train", "hvae", "--data", "digits", "--z-dims", "6,3", "--hidden", "32,16", "--epochs", "1",
                 "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--iwae", "20", "--ais", "10", "--ais-chains", "3", "--bdmc", "10",
                 "--limit", "20", "--json"]) == 0
    import json

    result = json.loads(capsys.readouterr().out)
    assert {"ais_10", "ais_10_se", "bdmc_lower", "bdmc_upper", "layers"} <= set(result)
    assert set(result["layers"]) == {"z1", "z2"}
    assert main(["evaluate", str(run), "--ais", "1"]) == 2
    assert "at least 2 intermediate" in capsys.readouterr().err
    assert main(["train", "lvae", "--data", "digits", "--z-dims", "6,3", "--hidden", "32", "--epochs", "1",
                 "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "does not chain" in capsys.readouterr().err


def test_bdmc_sandwiches_a_gan_generator_with_gaussian_observations():
    """Wu et al. (2017): with x ~ N(G(z), σ²I) a GAN has a likelihood, and forward/reverse AIS bracket it."""
    from ppgen.models import GAN

    torch.manual_seed(0)
    pair = GAN((2,), z_dim=2, hidden=(16, 16), noise=0.3)
    short, long = (bdmc(pair, n=40, steps=steps, seed=0, **FAST) for steps in (3, 100))
    for result in (short, long):
        assert result.lower.mean <= result.upper.mean + 4 * math.hypot(result.lower.mean_se, result.upper.mean_se)
    assert long.gap < short.gap / 2
