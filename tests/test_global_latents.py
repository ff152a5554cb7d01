"""A pair with a global latent and a subsampled data plate: Bayesian linear regression with known noise.

Written as a Pyro user writes it (``ppgen.ppl``, a plain ``nn.Module`` for the guide's parameters)::

    w ~ N(0, s₀² I_d),     y_n | w ~ N(x_nᵀ w, σ²),     n = 1..N,

the data plate declared with its full size N and ``subsample_size`` = the rows it is given (Pyro scales the
likelihood by N/B). Everything is Gaussian: p(w | y) = N(m, Σ), Σ⁻¹ = I/s₀² + XᵀX/σ², m = Σ Xᵀy/σ², and
log p(y) = log N(y | 0, s₀² X Xᵀ + σ² I); with q(w) = p(w | y) the ELBO equals log p(y).

Tolerances: 4 Monte Carlo standard errors — of the training figure from independent replicates of one step's
estimate, of NUTS means from ``az.mcse`` (autocorrelation included), of coverage from a binomial at NUTS's
bulk ESS; the KL between two fitted Gaussians from Wilks: 2n·KL ~ χ²_df, df = k + k(k+1)/2.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import ppgen
from ppgen import diagnostics
from ppgen.errors import UserError
from ppgen.evaluation import ais, elbo, iwae
from ppgen.evaluation import amortization as am
from ppgen.models.base import GenerativeModel
from ppgen.nn import Network
from ppgen.ppl import dist, pyro

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import arviz as az

N, D, NOISE, PRIOR = 200, 2, 0.5, 1.0


class GaussianParams(nn.Module):
    """loc and a lower-triangular scale (positive diagonal through exp) of q(w)."""

    def __init__(self, d: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(d))
        self.raw = nn.Parameter(torch.zeros(d, d))

    def forward(self):
        return self.loc, torch.tril(self.raw, -1) + torch.diag(torch.exp(torch.diagonal(self.raw)))


class BayesianRegression(GenerativeModel):
    """x rows are (features, y). ``subsample``: None — the plate is over all N with ``subsample_size`` = the rows
    given (minibatch SVI); an int B — the model subsamples B of the rows it is given itself (NumPyro's idiom)."""

    latent_sites = ("w",)

    def __init__(self, subsample: int | None = None):
        super().__init__(SimpleNamespace(x_shape=(D + 1,)))
        self.subsample = subsample
        self.q = GaussianParams(D)

    def model(self, x):
        w = pyro.sample("w", dist.Normal(0.0, PRIOR).expand([D]).to_event(1))
        if self.subsample is None:
            with pyro.plate("data", N, subsample_size=x.shape[0]):
                pyro.sample("y", dist.Normal((x[:, :D] * w).sum(-1), NOISE), obs=x[:, D])
        else:
            with pyro.plate("data", x.shape[0], subsample_size=self.subsample) as idx:
                rows = x[idx]
                pyro.sample("y", dist.Normal((rows[:, :D] * w).sum(-1), NOISE), obs=rows[:, D])

    def guide(self, x):
        pyro.module("q", self.q)
        loc, tril = self.q()
        pyro.sample("w", dist.MultivariateNormal(loc, scale_tril=tril))

    def set_guide(self, loc: torch.Tensor, cov: torch.Tensor) -> BayesianRegression:
        tril = torch.linalg.cholesky(cov)
        with torch.no_grad():
            self.q.loc.copy_(loc)
            self.q.raw.copy_(torch.tril(tril, -1) + torch.diag(torch.log(torch.diagonal(tril))))
        return self


def simulate(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, D, generator=g)
    w = torch.tensor([1.0, -0.5])
    return torch.cat([X, (X @ w + NOISE * torch.randn(N, generator=g))[:, None]], 1)


def exact_posterior(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = x[:, :D].double(), x[:, D].double()
    cov = torch.linalg.inv(torch.eye(D, dtype=torch.float64) / PRIOR**2 + X.T @ X / NOISE**2)
    return cov @ X.T @ y / NOISE**2, cov


def log_evidence(x: torch.Tensor) -> float:
    X, y = x[:, :D].double(), x[:, D].double()
    cov = PRIOR**2 * X @ X.T + NOISE**2 * torch.eye(N, dtype=torch.float64)
    return float(torch.distributions.MultivariateNormal(torch.zeros(N, dtype=torch.float64), cov).log_prob(y))


def exact_pair(subsample: int | None = None) -> tuple[BayesianRegression, torch.Tensor]:
    x = simulate()
    m, cov = exact_posterior(x)
    return BayesianRegression(subsample).set_guide(m.float(), cov.float()), x


# -- the training figure is per example whatever the subsampling ----------------------------------------------
def test_training_elbo_is_per_example_with_a_subsampled_plate():
    """Batches of B = 10 of N = 200, q exact (lr 1e-9: the weights stay): the history's ELBO estimates
    log p(y) / N (the full-data ELBO per example), not N/B times it."""
    pair, x = exact_pair()
    batch = 10
    fit = ppgen.fit(pair, x, backend="svi", engine="torch", epochs=1, batch_size=batch, lr=1e-9, seed=0,
                    progress=False)
    reported = fit.history[-1]["elbo"]
    exact = log_evidence(x) / N
    se = epoch_se(pair, x, batch)
    assert abs(reported - exact) < 4 * se, (reported, exact, se)
    assert abs(float(elbo(pair, x, num_samples=200).sum()) / N - exact) < 0.01  # the evaluation figure agrees


def epoch_se(pair, x: torch.Tensor, batch: int, replicates: int = 400) -> float:
    """SE of an epoch's figure: the sd of one step's estimate (log p(w) − log q(w) + N/B Σ_batch log p(y_b | w))
    / N, w ~ q, over independent replicates, over √steps (conservative: an epoch's batches partition the data)."""
    from pyro.infer import Trace_ELBO

    g = torch.Generator().manual_seed(1)
    steps = [-Trace_ELBO().loss(pair.model, pair.guide, x[torch.randperm(N, generator=g)[:batch]]) / N
             for _ in range(replicates)]
    return float(np.std(steps, ddof=1)) / math.sqrt(N // batch)


class MeanField(Network):
    """A mean-field q(w) as a ppgen.nn network (so the JAX engine trains it): loc and log-scale, per row of x."""

    def __init__(self, d: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(d))
        self.log_scale = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return self.loc + 0 * x[..., :1], torch.exp(self.log_scale) + 0 * x[..., :1]


class MeanFieldRegression(BayesianRegression):
    """The same model with q(w) = Π_j N(m_j, s_j²)."""

    def __init__(self):
        super().__init__()
        del self.q
        self.mf = MeanField(D)

    def guide(self, x):
        pyro.module("mf", self.mf)
        loc, scale = self.mf(x[:1])
        pyro.sample("w", dist.Normal(loc[0], scale[0]).to_event(1))


def test_training_elbo_is_per_example_on_the_jax_engine():
    """As above on NumPyro's SVI, q(w) mean-field at the posterior's means and marginal sds; its ELBO is closed
    form: Σ_n [log N(y_n | x_nᵀm, σ²) − x_n² · s² / 2σ²] + Σ_j [log N(m_j | 0, s₀²) − s_j² / 2s₀²] + H[q]."""
    x = simulate()
    m, cov = exact_posterior(x)
    s2 = cov.diagonal()
    pair = MeanFieldRegression()
    with torch.no_grad():
        pair.mf.loc.copy_(m.float())
        pair.mf.log_scale.copy_(0.5 * s2.log().float())
    batch = 10
    fit = ppgen.fit(pair, x, backend="svi", engine="jax", epochs=1, batch_size=batch, lr=1e-9, seed=0,
                    progress=False)
    assert fit.options["engine"] == "jax"
    X, y = x[:, :D].double(), x[:, D].double()
    exact = (torch.distributions.Normal(X @ m, NOISE).log_prob(y).sum() - (X**2 @ s2).sum() / (2 * NOISE**2)
             + torch.distributions.Normal(0.0, PRIOR).log_prob(m).sum() - s2.sum() / (2 * PRIOR**2)
             + (0.5 * torch.log(2 * math.pi * math.e * s2)).sum()) / N
    se = epoch_se(pair, x, batch)
    assert abs(fit.history[-1]["elbo"] - float(exact)) < 4 * se, (fit.history[-1]["elbo"], float(exact), se)


# -- whole-model NUTS conditions on every example -------------------------------------------------------------
@pytest.fixture(scope="module")
def nuts_fit():
    """NUTS over w for the pair that subsamples 20 of its rows itself: NumPyro would ask for a random key."""
    pair, x = exact_pair(subsample=20)
    return ppgen.fit(pair, x, backend="nuts", chains=2, warmup=200, samples=500, seed=0)


def test_whole_model_nuts_samples_the_full_data_posterior(nuts_fit):
    draws = nuts_fit.samples["w"]
    assert draws.shape == (2, 500, D)
    m, cov = exact_posterior(nuts_fit.state["x"])
    ds = az.convert_to_dataset({"w": draws})
    mcse_mean, mcse_sd = az.mcse(ds, method="mean")["w"].values, az.mcse(ds, method="sd")["w"].values
    assert np.all(np.abs(draws.mean((0, 1)) - m.numpy()) < 4 * mcse_mean)
    assert np.all(np.abs(draws.std((0, 1), ddof=1) - cov.diagonal().sqrt().numpy()) < 4 * mcse_sd)


# -- SVI's posterior beside whole-model NUTS ---------------------------------------------------------------
def test_compare_global_puts_the_guide_beside_nuts(nuts_fit):
    """An exact guide: KL and W2 are Monte Carlo noise only, coverage nominal, k̂ small; a shifted, narrow guide
    is seen."""
    from scipy.stats import chi2

    pair, _ = exact_pair()  # the same posterior, the plate over every row: the joint weights of k̂ need them all
    result = am.compare_global(pair, nuts_fit, guide_samples=4000, seed=0)
    (row,) = result["sites"]
    assert row["site"] == "w" and row["divergences"] == 0
    ess = row["ess_bulk_min"]
    df = D + D * (D + 1) / 2
    assert row["kl"] < chi2.ppf(0.9999, df) / 2 * (1 / ess + 1 / 4000)
    for level in (0.5, 0.9):
        assert abs(row[f"coverage{int(level * 100)}"] - level) < 4 * math.sqrt(level * (1 - level) / ess)
    assert row["khat"] < 0.5
    assert "w" in am.format_global_table(result)
    m, cov = exact_posterior(nuts_fit.state["x"])
    bad = BayesianRegression().set_guide(m.float() + 0.05, cov.float() / 4)
    worse = am.compare_global(bad, nuts_fit, guide_samples=4000, seed=0)["sites"][0]
    assert worse["kl"] > 10 * row["kl"] + 0.5 and worse["coverage90"] < 0.7


def test_combined_inference_data_holds_the_models_sites(nuts_fit, tmp_path):
    from ppgen.evaluation.likelihood import global_latents

    pair, _ = exact_pair()
    assert global_latents(pair, nuts_fit.state["x"]) == ["w"]  # what tells compare to run NUTS on the whole model
    combined = diagnostics.compare_inference_data(pair, nuts_fit, log_lik=False)
    assert diagnostics.plot_forest(combined, tmp_path / "forest.png", var="w").stat().st_size > 1000
    assert combined.posterior["w"].dims == ("chain", "draw", diagnostics.METHOD_DIM, "w_dim")
    assert combined.posterior[diagnostics.METHOD_DIM].values.tolist() == ["svi", "nuts"]
    assert list(combined.posterior.data_vars) == ["w"]
    # the fit's own pair subsamples 20 of its rows: Pyro cannot run it whole, so no log-likelihood, said in one line
    with pytest.raises(UserError, match="subsamples its data plate") as err:
        diagnostics.to_inference_data(nuts_fit)
    assert "\n" not in str(err.value)
    assert "log_likelihood" not in diagnostics.to_inference_data(nuts_fit, log_lik=False).groups()
    idata = diagnostics.to_inference_data(dataclasses.replace(nuts_fit, pair=pair))
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "data")
    assert idata.log_likelihood["y"].shape == (2, 500, N)


# -- per-example IWAE and AIS with a global latent: refused, naming what to use -----------------------------
def test_iwae_and_ais_refuse_a_global_latent_in_one_line():
    pair, x = exact_pair()
    for call in (lambda: iwae(pair, x, k=8), lambda: ais(pair, x[:4], steps=10)):
        with pytest.raises(UserError) as err:
            call()
        text = str(err.value)
        assert "\n" not in text and "'w'" in text and "ELBO" in text and "compare_global" in text


def test_whole_model_nuts_refuses_a_plate_declared_larger_than_the_data():
    pair, x = exact_pair()  # the plate declares N = 200 examples
    with pytest.raises(UserError, match="declares 200 examples but NUTS is given 150") as err:
        ppgen.fit(pair, x[:150], backend="nuts", chains=1, warmup=5, samples=5)
    assert "\n" not in str(err.value)


def test_an_autoguides_posterior_goes_beside_nuts_with_the_models_sites_only(nuts_fit):
    """Pyro's AutoMultivariateNormal as the guide (fitted here by plain Pyro SVI): the table and ArviZ name the
    model's site ``w`` only, not the autoguide's own latent; the fitted guide is a usable proposal (k̂ < 0.7)."""
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoMultivariateNormal
    from pyro.optim import ClippedAdam

    pair, x = exact_pair()
    guide = AutoMultivariateNormal(pair.model)
    svi = SVI(pair.model, guide, ClippedAdam({"lr": 0.02, "lrd": 0.999}), Trace_ELBO())
    for _ in range(1500):
        svi.step(x)
    pair.guide = guide
    result = am.compare_global(pair, nuts_fit, guide_samples=2000, seed=0)
    assert [r["site"] for r in result["sites"]] == ["w"] and result["overall"]["khat"] < 0.7
    combined = diagnostics.compare_inference_data(pair, nuts_fit, log_lik=False)
    assert list(combined.posterior.data_vars) == ["w"]


def test_compare_global_on_a_self_subsampling_model_reports_no_khat(nuts_fit):
    """The fit's own pair subsamples 20 of its 200 rows: a Pyro trace holds 20 examples, not the joint density, so
    k̂ is absent (None, a note saying why, "-" in the table) while the distances, read from draws, are still there."""
    pair = nuts_fit.pair
    m, cov = exact_posterior(nuts_fit.state["x"])
    pair.set_guide(m.float(), cov.float())
    result = am.compare_global(pair, nuts_fit, guide_samples=2000, seed=0)
    (row,) = result["sites"]
    assert row["khat"] is None and result["overall"]["khat"] is None
    assert "subsamples its data plate" in result["overall"]["khat_note"]
    se = math.sqrt(0.09 / row["ess_bulk_min"] + 2 * 0.05 * 0.95 / 2000)  # NUTS binomial + the guide's two quantiles
    assert math.isfinite(row["kl"]) and abs(row["coverage90"] - 0.9) < 4 * se
    assert am.format_global_table(result).splitlines()[1].split()[5] == "-"


def test_the_whole_model_workflow_on_a_self_subsampling_model_writes_nuts_nc_without_log_likelihood(tmp_path):
    from ppgen.workflows.compare import compare_whole_model

    pair, x = exact_pair(subsample=20)
    lines = []
    result = compare_whole_model(pair, x, tmp_path, tmp_path / "out", chains=1, warmup=50, samples=50, seed=0,
                                 log=lines.append)
    assert result["overall"]["khat"] is None and any("subsamples its data plate" in line for line in lines)
    nuts = az.from_netcdf(tmp_path / "out" / "nuts.nc")
    assert "log_likelihood" not in nuts.groups() and nuts.posterior["w"].shape == (1, 50, D)
    assert (tmp_path / "out" / "forest_w.png").exists() and (tmp_path / "out" / "compare.nc").exists()


def test_looking_at_the_plate_leaves_batch_norm_statistics_alone():
    """The loop traces the model once to find the plate's size; that look must not be a training step: a decoder
    with batch norm (ProdLDA's) keeps its running statistics, so a resumed run stays the uninterrupted one."""
    from ppgen.inference.loop import examples_per_step

    torch.manual_seed(0)
    pair = ppgen.models.get("prodlda")(x_shape=(30,), topics=3, hidden=(8,))
    x = torch.poisson(torch.full((16, 30), 2.0))
    pair.train()
    before = {k: v.clone() for k, v in pair.state_dict().items() if "running" in k or "batches" in k}
    assert any("decoder" in k for k in before)  # the model's own batch norm
    assert examples_per_step(pair, x, 16) == 16
    assert pair.training
    after = pair.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
