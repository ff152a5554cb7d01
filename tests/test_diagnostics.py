"""ArviZ InferenceData for NUTS and SVI fits: groups, dimensions, exact log-likelihoods, round trips, plots."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import ppgen
from ppgen import diagnostics
from ppgen.errors import UserError
from ppgen.inference import Fit

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import arviz as az

from support import NUTS_OPTIONS, POINTS, known_ppca


@pytest.fixture(scope="module")
def nuts_fit():
    pair = known_ppca()
    return ppgen.fit(pair, _points(pair), backend="nuts", **NUTS_OPTIONS)


def _points(pair) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        return pair.decode(torch.randn(8, 2, generator=g)) + 0.5 * torch.randn(8, 5, generator=g)


def test_nuts_inference_data_has_groups_dims_and_exact_log_likelihood(nuts_fit):
    idata = diagnostics.to_inference_data(nuts_fit)
    for group in ("posterior", "sample_stats", "observed_data", "log_likelihood"):
        assert hasattr(idata, group), group
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "data", "z_dim")
    assert z.coords["data"].values.tolist() == POINTS
    for stat in ("diverging", "energy", "lp", "n_steps", "tree_depth", "acceptance_rate", "step_size"):
        assert idata.sample_stats[stat].dims == ("chain", "draw", "data"), stat
    # log p(x_i | z) by hand for a few draws: N(x | W z + mu, sigma^2 I)
    pair, x = nuts_fit.pair, nuts_fit.state["x"]
    zz = torch.tensor(z.values[1, :5])  # (5 draws, points, 2)
    by_hand = torch.distributions.Normal(zz @ pair.W.T + pair.mu, pair.sigma).log_prob(x).sum(-1)
    assert np.allclose(idata.log_likelihood["x"].values[1, :5], by_hand.detach().numpy(), atol=1e-4)
    assert np.array_equal(idata.observed_data["x"].values, x.numpy())


def test_netcdf_round_trip(nuts_fit, tmp_path):
    idata = diagnostics.to_inference_data(nuts_fit)
    idata.to_netcdf(tmp_path / "nuts.nc")
    back = az.from_netcdf(tmp_path / "nuts.nc")
    for group in ("posterior", "sample_stats", "observed_data", "log_likelihood"):
        a, b = getattr(idata, group), getattr(back, group)
        for v in a.data_vars:
            assert np.array_equal(a[v].values, b[v].values), (group, v)
    assert back.posterior["z"].coords["data"].values.tolist() == POINTS


def test_combined_object_works_with_arviz_summary_forest_trace_energy(nuts_fit, tmp_path):
    combined = diagnostics.compare_inference_data(nuts_fit.pair, nuts_fit)
    assert combined.posterior[diagnostics.METHOD_DIM].values.tolist() == ["svi", "nuts"]
    table = diagnostics.summary(combined, var_names=["z"], round_to="none")
    assert len(table) == 2 * len(POINTS) * 2
    assert {"r_hat", "ess_bulk", "ess_tail", "mcse_mean"} <= set(table.columns)
    # the guide is the exact posterior here: both methods agree within their Monte Carlo errors
    svi = table.loc[[i for i in table.index if i.startswith("z[svi")]]
    nuts = table.loc[[i for i in table.index if i.startswith("z[nuts")]]
    se = np.hypot(svi["mcse_mean"].values, nuts["mcse_mean"].values)
    assert np.all(np.abs(svi["mean"].values - nuts["mean"].values) < 4 * se + 1e-3)
    assert (nuts["r_hat"] < 1.01).all()
    import matplotlib

    matplotlib.use("Agg")
    assert az.plot_forest(combined, var_names=["z"]).size >= 1
    assert az.plot_trace(combined, var_names=["z"]).shape[1] == 2
    assert az.plot_energy(diagnostics.point(combined, 0)) is not None
    for path in (diagnostics.plot_forest(combined, tmp_path / "forest.png", 1),
                 diagnostics.plot_pair(combined, tmp_path / "pair.png", 0)):
        assert path.stat().st_size > 1000


def test_svi_fit_draws_from_the_guide(nuts_fit):
    pair, x = nuts_fit.pair, nuts_fit.state["x"]
    fit = Fit(pair=pair, backend="svi")
    with pytest.raises(UserError, match="amortized"):
        diagnostics.to_inference_data(fit)
    idata = diagnostics.to_inference_data(fit, x=x, num_samples=4000, chains=4)
    z = idata.posterior["z"].values.reshape(-1, len(x), 2)
    post = pair.posterior(x)
    se = post.variance.detach().sqrt().numpy() / np.sqrt(z.shape[0])
    assert np.all(np.abs(z.mean(0) - post.mean.detach().numpy()) < 4 * se)
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "data")


def test_nuts_report_counts_divergences_and_worst_rhat(nuts_fit):
    report = diagnostics.nuts_report(nuts_fit)
    assert report["divergences"] == int(nuts_fit.state["sample_stats"]["diverging"].sum())
    assert len(report["per_point"]) == len(POINTS)
    assert report["r_hat_max"] == max(r["r_hat_max"] for r in report["per_point"])
    assert report["ess_bulk_min"] > 100
