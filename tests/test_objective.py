"""The protocol's ``objective`` hook: a family's own unbiased estimator, trained by both SVI engines.

The pair below estimates ½‖x − μ‖² by one coordinate drawn uniformly per example (times D) — an unbiased,
noisy estimator, as DDPM's one-timestep L_vlb is — with its randomness from ``ppgen.ppl.uniform``, so the
same code runs on Pyro (torch's generator) and on NumPyro (the SVI seed). Its minimizer is μ = the mean of
the data, which both engines must find.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

import ppgen
from ppgen import ppl
from ppgen.data import from_tensor
from ppgen.errors import UserError
from ppgen.models.base import GenerativeModel
from ppgen.nn import MLPDecoder
from ppgen.ppl import pyro

D = 4


@dataclass(frozen=True)
class CoordinateConfig:
    x_shape: tuple[int, ...] = (D,)


class CoordinateLoss(GenerativeModel):
    """loss(x) = D/2 (x_j − μ_j)², j ~ U{1..D}: unbiased for ½‖x − μ‖² (μ from a network of a constant input)."""

    name = "test_coordinate_loss"
    Config = CoordinateConfig
    latent_sites = ()

    def __init__(self, x_shape=(D,)):
        super().__init__(CoordinateConfig(tuple(x_shape)))
        self.mean_net = MLPDecoder(1, self.x_shape, (8,))

    def mean(self, x):
        return self.mean_net(x[..., :1] * 0)

    def objective(self, x):
        pyro.module("mean_net", self.mean_net)
        u = ppl.uniform((x.shape[0],), like=x)
        index = (x * 0 + 1).cumsum(-1) - 1  # 0..D-1 per row, on either backend
        chosen = index == ((u * D) // 1)[..., None]
        return 0.5 * D * (chosen * (x - self.mean(x)) ** 2).sum(-1)

    def model(self, x):  # not used by the engines (the objective is); a Gaussian with that mean, for completeness
        pyro.module("mean_net", self.mean_net)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", ppl.dist.Normal(self.mean(x), 1.0).to_event(1), obs=x)

    def guide(self, x):
        pass


def data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(512, D, generator=g) * 0.5 + torch.tensor([1.0, -2.0, 0.5, 3.0])


@pytest.mark.parametrize("engine", ["torch", "jax"])
def test_both_engines_train_a_pairs_own_objective(engine):
    x = data()
    pair = CoordinateLoss()
    assert pair.has_objective and ppgen.models.get("test_coordinate_loss") is CoordinateLoss
    fit = ppgen.fit(pair, from_tensor(x), epochs=60, batch_size=64, lr=2e-2, engine=engine, progress=False)
    assert fit.options["engine"] == engine and fit.stopped is None
    with torch.no_grad():
        mu = pair.mean(x[:1])[0]
    # SGD with a noisy gradient settles within a few of its own step-noise scales of the minimizer: the data mean
    # (its Monte Carlo error is 0.5/sqrt(512) = 0.022; the Adam noise at lr 2e-2 dominates)
    torch.testing.assert_close(mu, x.mean(0), atol=0.15, rtol=0)
    # the history's "objective" is the objective per example (not called an ELBO): near ½ E‖x − μ‖² = D·0.25/2
    assert all("elbo" not in r for r in fit.history)
    last = sum(r["objective"] for r in fit.history[-10:]) / 10
    assert abs(last - 0.5 * D * 0.25) < 0.15, last


def test_the_objective_is_unbiased():
    """Mean over many draws of the one-coordinate estimate = ½‖x − μ‖², within 4 Monte Carlo standard errors."""
    x = data()[:8]
    pair = CoordinateLoss()
    torch.manual_seed(0)
    with torch.no_grad():
        draws = torch.stack([pair.objective(x) for _ in range(4000)])  # (draws, examples)
        exact = 0.5 * ((x - pair.mean(x)) ** 2).sum(-1)
    se = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - exact).abs() < 4 * se).all()


def test_elbo_options_do_not_apply_to_a_pairs_own_objective():
    with pytest.raises(UserError, match="own objective"):
        ppgen.fit(CoordinateLoss(), from_tensor(data()), epochs=1, beta=0.5, progress=False)
