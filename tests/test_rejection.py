"""Density-ratio rejection sampling against exact answers.

Proposal p_g = N(0, 2²), target p_data = N(0, 1) in one dimension: the true log ratio is
log 2 − 3x²/8 with supremum log 2 at x = 0, so rejection with the exact ratio must return
N(0, 1) draws (mean 0, variance 1 within Monte Carlo error) with acceptance 1/2.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ppgen.data import Dataset
from ppgen.errors import UserError
from ppgen.inference.rejection import RatioSampler, fit_ratio_sampler


class WideGaussian(nn.Module):
    """A 'pair' that only samples: x ~ N(0, 2²)."""

    x_shape = (1,)

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # fixes the device

    def generate(self, n: int) -> torch.Tensor:
        return 2.0 * torch.randn(n, 1)


class TrueLogRatio(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return math.log(2.0) - 3.0 * x[:, 0] ** 2 / 8


def standard_normal_data(n: int = 20_000) -> Dataset:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n + 2_000, 1, generator=g)
    return Dataset(name="normal", train=x[:n], val=x[n:], test=x[:0])


def moments_within(x: torch.Tensor, mean: float, var: float, z: float = 4.0, slack: float = 0.0) -> None:
    """Sample mean and variance within z standard errors (+ slack) of the given values."""
    n = len(x)
    se_mean, se_var = math.sqrt(var / n), var * math.sqrt(2 / (n - 1))  # Gaussian target
    assert abs(float(x.mean()) - mean) < z * se_mean + slack
    assert abs(float(x.var()) - var) < z * se_var + slack


def test_exact_ratio_gives_exact_target():
    torch.manual_seed(0)
    sampler = RatioSampler(WideGaussian(), TrueLogRatio(), log_bound=math.log(2.0))
    x = sampler.generate(20_000)
    assert x.shape == (20_000, 1)
    moments_within(x[:, 0], 0.0, 1.0)
    # the proposal itself is far off: variance 4
    assert float(WideGaussian().generate(20_000).var()) > 3.5


def test_learned_ratio_matches_truth_and_corrects_samples():
    pair, data = WideGaussian(), standard_normal_data()
    sampler = fit_ratio_sampler(pair, data, steps=1_500, batch_size=500, hidden=(32, 32), seed=0, progress=False)
    grid = torch.linspace(-2, 2, 41)[:, None]
    err = (sampler.log_ratio(grid) - TrueLogRatio()(grid)).abs().max()
    assert err < 0.2, f"learned log ratio off by {float(err):.3f} nats on [-2, 2]"
    # held-out: the best log loss, 0.5 E softplus(-r) + 0.5 E softplus(r) with the true r, is 0.600 here
    assert 0.59 < sampler.report["classifier_log_loss"] < 0.63
    torch.manual_seed(1)
    x = sampler.generate(5_000)[:, 0]
    # the residual error of the learned ratio (≤ 0.2 nats on the bulk) bounds the variance error by ~0.1
    moments_within(x, 0.0, 1.0, slack=0.05)
    assert 0.4 < sampler.report["accept_rate"] < 0.6  # with the exact ratio and bound log 2: 1/2


def test_quantile_bound_accepts_more():
    pair, data = WideGaussian(), standard_normal_data()
    exact = fit_ratio_sampler(pair, data, steps=300, batch_size=200, hidden=(16,), seed=0, quantile=1.0,
                              progress=False)
    clipped = fit_ratio_sampler(pair, data, steps=300, batch_size=200, hidden=(16,), seed=0, quantile=0.5,
                                progress=False)
    state = torch.get_rng_state()
    fit_ratio_sampler(pair, data, steps=5, batch_size=200, hidden=(16,), seed=0, progress=False)
    assert torch.equal(state, torch.get_rng_state())  # the caller's random stream is left as it was
    assert clipped.log_bound < exact.log_bound
    assert clipped.report["accept_rate"] > exact.report["accept_rate"]


def test_bad_input_is_refused():
    data = standard_normal_data(100)
    with pytest.raises(UserError, match="quantile"):
        fit_ratio_sampler(WideGaussian(), data, quantile=0.0)
    pair = WideGaussian().train()
    with pytest.raises(UserError, match="generates"):
        fit_ratio_sampler(pair, Dataset(name="d", train=torch.zeros(100, 3), val=torch.zeros(0, 3),
                                                  test=torch.zeros(0, 3)), steps=1, batch_size=10)
    assert pair.training  # a refused call leaves the pair's mode as it was
    with pytest.raises(UserError, match="cannot generate"):
        fit_ratio_sampler(nn.Linear(1, 1), data)
    hopeless = RatioSampler(WideGaussian(), TrueLogRatio(), log_bound=50.0)
    with pytest.raises(UserError, match="lower quantile"):
        hopeless.generate(10, max_proposals=10_000)
