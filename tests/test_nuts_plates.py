"""NUTS and ArviZ on a pair whose data plate sits at dim −2, a plate over coordinates nested at −1.

The pair is PPCA written with the coordinates as a plate (``data`` at dim −2, ``coords`` at −1,
max_plate_nesting = 2)::

    z_n ~ N(0, I_k),    x_{n,j} | z_n ~ N(w_jᵀ z_n + μ_j, σ²),   j = 1..d,

so p(z | x) is PPCA's closed form. The latent z then carries a size-1 broadcast axis (N, 1, k); the draws, the
guide's draws and the log-likelihood must come out (chain, draw, data, z_dim) as for the flat pair.
Tolerances: 4 MCSE from ArviZ (``az.mcse``, autocorrelation included) for NUTS means.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from support import known_ppca

import ppgen
from ppgen import diagnostics
from ppgen.models import PPCA
from ppgen.models.ppca import LinearGaussianDecoder
from ppgen.ppl import dist, pyro

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import arviz as az


class CoordsPPCA(PPCA):
    """PPCA with the observed coordinates as a plate nested in the data plate (data at −2, coords at −1)."""

    max_plate_nesting = 2

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.config.z_dim]).to_event(1))  # (N, 1, k)
            loc, scale = self.decoder(z)  # (N, 1, d)
            with pyro.plate("coords", self.config.x_shape[0], dim=-1):
                pyro.sample("x", dist.Normal(loc[..., 0, :], scale[..., 0, :]), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0], dim=-2):
            loc, tril = self.encoder(x)
            pyro.sample("z", dist.MultivariateNormal(loc[..., None, :], scale_tril=tril))


def coords_ppca() -> CoordsPPCA:
    flat = known_ppca()
    pair = CoordsPPCA(x_shape=(5,), z_dim=2)
    pair.load_state_dict(flat.state_dict())
    return pair


def _points(pair, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        return pair.decode(torch.randn(n, 2, generator=g)) + 0.5 * torch.randn(n, 5, generator=g)


@pytest.fixture(scope="module")
def nuts_fit():
    pair = coords_ppca()
    return ppgen.fit(pair, _points(pair), backend="nuts", points=3, chains=2, warmup=150, samples=300, seed=0)


def test_draws_drop_the_broadcast_axis_and_match_the_posterior(nuts_fit):
    pair, x = nuts_fit.pair, nuts_fit.state["x"]
    draws = nuts_fit.samples["z"]
    assert draws.shape == (2, 300, 3, 2)
    assert nuts_fit.state["dims"]["z"] == ["data", "z_dim"]
    mcse = az.mcse(az.convert_to_dataset({"z": draws}), method="mean")["z"].values
    exact = pair.posterior(x).mean.detach().numpy()
    assert np.all(np.abs(draws.mean((0, 1)) - exact) < 4 * mcse)


def test_inference_data_and_log_likelihood_are_per_example(nuts_fit):
    idata = diagnostics.to_inference_data(nuts_fit)
    assert idata.posterior["z"].dims == ("chain", "draw", "data", "z_dim")
    ll = idata.log_likelihood["x"]
    assert ll.dims == ("chain", "draw", "data")
    pair, x = nuts_fit.pair, nuts_fit.state["x"]
    z = torch.as_tensor(idata.posterior["z"].values[1, :4].copy())  # (4 draws, points, 2)
    by_hand = torch.distributions.Normal(z @ pair.W.T + pair.mu, pair.sigma).log_prob(x).sum(-1)
    assert np.allclose(ll.values[1, :4], by_hand.detach().numpy(), atol=1e-4)


def test_compare_inference_data_lines_up_svi_and_nuts(nuts_fit):
    combined = diagnostics.compare_inference_data(nuts_fit.pair, nuts_fit)
    z = combined.posterior["z"]
    assert z.dims == ("chain", "draw", diagnostics.METHOD_DIM, "data", "z_dim")
    # the guide is the exact posterior: the two methods' means agree within their Monte Carlo errors
    table = diagnostics.summary(combined, var_names=["z"], round_to="none")
    svi = table.loc[[i for i in table.index if i.startswith("z[svi")]]
    nuts = table.loc[[i for i in table.index if i.startswith("z[nuts")]]
    se = np.hypot(svi["mcse_mean"].values, nuts["mcse_mean"].values)
    assert np.all(np.abs(svi["mean"].values - nuts["mean"].values) < 4 * se)


class CloneDecoder(LinearGaussianDecoder):
    """The PPCA decoder written with an op the JAX lowering does not know (``.clone()``): Pyro's NUTS runs it."""

    def forward(self, z):
        loc = self.linear(z).clone()
        return loc, torch.exp(self.log_sigma) + 0 * loc


def test_pyro_fallback_gives_the_same_layout(capsys):
    pair = coords_ppca()
    odd = CloneDecoder(2, 5)
    odd.load_state_dict(pair.decoder.state_dict())
    pair.decoder = odd
    x = _points(pair, 2)
    fit = ppgen.fit(pair, x, backend="nuts", points=2, chains=1, warmup=60, samples=60, seed=0)
    assert "falling back to Pyro's NUTS" in capsys.readouterr().err
    assert fit.samples["z"].shape == (1, 60, 2, 2) and fit.state["dims"]["z"] == ["data", "z_dim"]
    ll = diagnostics.to_inference_data(fit).log_likelihood["x"]
    z = torch.as_tensor(fit.samples["z"][0, :3].copy())
    by_hand = torch.distributions.Normal(z @ pair.W.T + pair.mu, pair.sigma).log_prob(x).sum(-1)
    assert np.allclose(ll.values[0, :3], by_hand.detach().numpy(), atol=1e-4)


def test_compare_table_on_the_nested_pair(nuts_fit):
    """The encoder is the exact posterior: its ELBO is log p(x) (4 SE), log p(x) (the best IWAE estimate, one of
    them exact) is not below it, the amortization gap vanishes up to Monte Carlo error, its intervals cover
    NUTS's draws at their level (4 binomial SE at the bulk ESS)."""
    from ppgen.evaluation import amortization as am

    pair, x = nuts_fit.pair, nuts_fit.state["x"]
    result = am.compare(pair, nuts_fit, steps=50, elbo_samples=500, iwae_k=500)
    exact = pair.log_marginal(x).detach().double()
    for i, row in enumerate(result["points"]):
        assert abs(row["elbo_encoder"] - float(exact[i])) < 4 * row["elbo_encoder_se"] + 1e-4
        assert row["log_px"] > float(exact[i]) - 1e-3
        assert abs(row["amortization_gap"]) < 4 * row["amortization_gap_se"] + 0.01
        se90 = np.sqrt(0.9 * 0.1 / row["ess_bulk_min"])
        assert abs(row["coverage90"] - 0.9) < 4 * se90
