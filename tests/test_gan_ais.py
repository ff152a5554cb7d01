"""A generator's likelihood under Gaussian observations (Wu et al., 2017): AIS and BDMC against the closed form of a
linear generator, the fitted σ against the exact maximizer, and the command's options."""

from __future__ import annotations

import json
import math

import pyro
import pytest
import torch

from ppgen.errors import UserError
from ppgen.evaluation.ais import bdmc, dequantize, fit_sigma, quantization_levels, simulate
from ppgen.models import GAN, VAE
from ppgen.models.observation import GaussianObservation
from ppgen.nn.critics import MLPGenerator

D, K = 6, 2
FAST = dict(chains=6, leapfrog=3)


def _linear_gan(seed: int = 0) -> GAN:
    """A GAN whose generator is G(z) = W z + b (a linear layer): under N(x; G(z), σ² I) it is PPCA."""
    torch.manual_seed(seed)
    pair = GAN((D,), z_dim=K, hidden=(8,), output="identity")
    pair.generator = MLPGenerator(K, (D,), (), "identity")
    return pair


def _exact(pair: GAN, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(x; b, W Wᵀ + σ² I), the marginal of the linear generator with Gaussian observations."""
    layer = pair.generator.layers[0]
    w, b = layer.weight.detach(), layer.bias.detach()
    return torch.distributions.MultivariateNormal(b, w @ w.T + sigma**2 * torch.eye(D)).log_prob(x)


def test_bdmc_brackets_a_linear_generator_and_both_bounds_close_on_the_exact_value():
    """Forward AIS ≤ log p(x) ≤ reverse AIS on data simulated from the model (within 4 standard errors of the
    difference), and both bounds move onto the exact value as the intermediate distributions grow."""
    gan = _linear_gan()
    pair = GaussianObservation(gan, 0.3)
    errors = []
    for steps in (4, 60):
        result = bdmc(pair, n=30, steps=steps, seed=1, **FAST)
        exact = float(_exact(gan, result.x, 0.3).mean())
        slack = 4 * math.hypot(result.lower.mean_se, result.upper.mean_se)
        assert result.lower.mean <= exact + slack
        assert result.upper.mean >= exact - slack
        errors.append((exact - result.lower.mean, result.upper.mean - exact, slack))
    (low4, up4, _), (low60, up60, slack60) = errors
    assert low4 > 0.3 and up4 > 0.3  # a short schedule leaves both bounds visibly off
    assert abs(low60) < slack60 and abs(up60) < slack60  # a longer one is exact within Monte Carlo error
    assert low60 < low4 / 4 and up60 < up4 / 4


def test_fit_sigma_finds_the_maximizer_of_the_exact_likelihood():
    """σ fitted by AIS over a grid equals (within its delta-method standard error) σ fitted the same way from the
    exact curve, whose pick holds the exact maximum of the mean log-likelihood to 0.01 nats."""
    gan = _linear_gan()
    x, _ = simulate(GaussianObservation(gan, 0.3), 60, seed=5)
    grid = [0.3 * 2 ** (k / 2) for k in range(-2, 3)]
    fit = fit_sigma(gan, x, grid=grid, steps=60, seed=0, **FAST)
    exact_curve = [float(_exact(gan, x, s).mean()) for s in fit.grid]
    for estimate, se, exact in zip(fit.log_px, fit.se, exact_curve):
        assert abs(estimate - exact) < 4 * se + 0.05  # AIS's bias at 60 steps: under 0.05 nats here
    from ppgen.evaluation.ais import _peak

    best = max(range(len(fit.grid)), key=lambda i: exact_curve[i])
    exact_pick = math.exp(_peak(exact_curve[best - 1:best + 2], fit.grid[best - 1:best + 2]))
    assert abs(math.log(fit.sigma / exact_pick)) < 4 * fit.se_log_sigma + 0.01
    sigmas = torch.linspace(math.log(0.1), math.log(1.0), 2001).exp()
    best_exact = max(float(_exact(gan, x, float(s)).mean()) for s in sigmas)
    assert best_exact - float(_exact(gan, x, exact_pick).mean()) < 0.01
    assert best_exact - float(_exact(gan, x, fit.sigma).mean()) < 0.05


def test_a_grid_that_misses_the_maximum_is_widened():
    gan = _linear_gan()
    x, _ = simulate(GaussianObservation(gan, 0.3), 20, seed=2)
    fit = fit_sigma(gan, x, grid=[1.0, 2.0, 4.0], steps=10, chains=2, leapfrog=2)
    assert fit.grid[0] < 0.3 < fit.sigma * 2 and fit.grid[-1] == 4.0


def test_gaussian_observation_swaps_only_the_observed_site():
    """The wrapped model keeps the prior and puts N(G(z), σ²) on x: its simulated x has variance W Wᵀ + σ² I."""
    gan = _linear_gan()
    x, latents = simulate(GaussianObservation(gan, 0.5), 4000, seed=0)
    assert set(latents) == {"z"}
    w = gan.generator.layers[0].weight.detach()
    expected = w @ w.T + 0.25 * torch.eye(D)
    se = ((torch.diagonal(expected)[:, None] * torch.diagonal(expected)[None] + expected**2) / 4000).sqrt()
    assert torch.all((torch.cov(x.T) - expected).abs() < 5 * se)


def test_refusals_are_one_line_user_errors():
    with pytest.raises(UserError, match="PixelCNN"):
        GaussianObservation(VAE((1, 8, 8), net="pixelcnn", ar_channels=4, ar_layers=1), 0.1)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(UserError, match="positive number"):
            GaussianObservation(_linear_gan(), bad)
    from ppgen.models.observation import _SwapObservation

    with pytest.raises(UserError, match="no finite mean"), _SwapObservation("x", 0.1):  # a Categorical's mean is NaN
        pyro.sample("x", pyro.distributions.Categorical(logits=torch.zeros(3)), obs=torch.tensor(1))
    x = torch.randn(5, D)
    with pytest.raises(UserError, match="geometric"):
        fit_sigma(_linear_gan(), x, grid=[0.1, 0.2, 0.5])
    with pytest.raises(UserError, match="at least 3"):
        fit_sigma(_linear_gan(), x, grid=[0.1, 0.2])


def test_dequantization_fills_the_grey_level_cells():
    x = torch.randint(0, 256, (50, 7)).float() / 256
    assert quantization_levels(x) == 256 and quantization_levels(x + 0.3) is None
    assert quantization_levels(torch.tensor([[0.0, 0.25, 1.0]])) == 4
    y = dequantize(x, 256, seed=3)
    assert torch.all((y >= x) & (y < x + 1 / 256)) and torch.equal(y, dequantize(x, 256, seed=3))
    assert quantization_levels(y) is None


def test_cli_evaluates_a_gan_by_ais_with_a_given_or_fitted_sigma(tmp_path, capsys):
    from ppgen.cli import main

    run = tmp_path / "gan"
    assert main(["train", "gan", "--data", "digits", "--z-dim", "3", "--hidden", "16,16", "--epochs", "1",
                 "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--ais", "8", "--ais-chains", "3", "--sigma", "0.3", "--bdmc", "4",
                 "--limit", "10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sigma"] == 0.3 and result["data_convention"].startswith("grey levels k/16 dequantized")
    assert {"ais_8", "ais_8_se", "bdmc_lower", "bdmc_upper"} <= set(result) and "elbo" not in result
    assert main(["evaluate", str(run), "--ais", "4", "--ais-chains", "2", "--sigma", "fit", "--sigma-points", "8",
                 "--limit", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    fitted = result["sigma_fit"]
    assert min(fitted["grid"]) < result["sigma"] < max(fitted["grid"]) and fitted["points"] == 8
    (run / "evaluation_test.json").unlink()
    assert main(["evaluate", str(run), "--sigma", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "add --ais N" in err and len(err.strip().splitlines()) == 1
    for bad in ("0", "-1", "wide"):  # refused by the parser: exit 2, one line
        with pytest.raises(SystemExit) as stop:
            main(["evaluate", str(run), "--ais", "4", "--sigma", bad])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and "positive number or 'fit'" in err and len(err.strip().splitlines()) == 1
    assert not (run / "evaluation_test.json").exists()
    assert main(["evaluate", str(run), "--ais", "4", "--limit", "2"]) == 0
    assert "--ais N --sigma S|fit" in capsys.readouterr().out


def test_cli_evaluates_a_bernoulli_vae_on_grey_levels_around_its_decoder_mean(tmp_path, capsys):
    """The same Gaussian observation model around a VAE's pixel probabilities: its guide still proposes, so ELBO and
    IWAE bound the same log p_σ(x) that AIS estimates, on grey levels although the VAE trained on binarized data."""
    from ppgen.cli import main

    run = tmp_path / "vae"
    assert main(["train", "vae", "--data", "digits", "--z-dim", "3", "--hidden", "16", "--epochs", "1",
                 "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--ais", "6", "--ais-chains", "3", "--sigma", "0.2", "--iwae", "20",
                 "--limit", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"elbo", "iwae_20", "ais_6", "sigma"} <= set(result)
    assert result["elbo"] < result["iwae_20"] + 4 * result["iwae_20_se"]
