r"""``ppgen compare`` on a pair whose latents are all global: whole-model NUTS beside the guide, from the CLI.

The family is written here as a user writes one (a Bayesian linear regression with known noise and a covariate
column ``c`` beside the responses x = y)::

    w = (a, b) ~ N(0, s₀² I₂),     y_n | w, c_n ~ N(a + b c_n, σ²),     n = 1..N,

with q(w) = N(m, L Lᵀ) held by an ``nn.Module`` registered with ``pyro.module``. The posterior is Gaussian:
Σ⁻¹ = I/s₀² + XᵀX/σ², m_p = Σ Xᵀy/σ², X = [1, c]. Trained by ``ppgen train`` on a ``.npz`` (x, c), then
``ppgen compare RUN`` runs NUTS on the whole model and writes the per-site table.

Exact answers, against the trained guide's own q (read from its parameters) and the closed-form posterior p:

* NUTS's means lie within 4 ``az.mcse`` of m_p (NUTS conditions on every training example and its c);
* the table's coverage of q's central 50% / 90% intervals equals P_{w~p}(w_j ∈ q's interval), averaged over j,
  in closed form (Φ differences), within 4 standard errors: binomial at NUTS's bulk ESS plus the guide's
  empirical quantiles (4,000 draws: var u(1−u)/n in q-probability, times the density ratio p/q at the bound);
* the table's KL(q̂ ‖ p̂) between fitted Gaussians is within Monte Carlo error of the closed-form KL(q ‖ p):
  the Wilks bias χ²_df/2 · (1/ESS + 1/4000) (df = k + k(k+1)/2, its 0.9999 quantile) plus 4 sd of the first-order
  term, sd² ≤ 2 KL (1/ESS + 1/4000).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import chi2, norm
from torch import nn

from ppgen import models, runs
from ppgen.cli import main
from ppgen.declare import validate
from ppgen.models.base import GenerativeModel, x_shape_option
from ppgen.ppl import dist, pyro
from ppgen.workflows.common import run_data

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import arviz as az

NOISE, PRIOR, GUIDE_DRAWS = 0.5, 1.0, 4000


# -- the family: this block is the whole of it -------------------------------------------------------
@dataclass(frozen=True)
class RegressionConfig:
    x_shape: tuple[int, ...] = x_shape_option((1,))

    def __post_init__(self) -> None:
        validate(self)


class GaussianQ(nn.Module):
    """q(w) = N(loc, L Lᵀ), L lower-triangular with a positive diagonal (exp of the raw one)."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(2))
        self.raw = nn.Parameter(torch.diag(torch.full((2,), math.log(0.1))))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc, torch.tril(self.raw, -1) + torch.diag(torch.exp(torch.diagonal(self.raw)))


class KnownNoiseRegression(GenerativeModel):
    """y_n ~ N(a + b c_n, σ²) with w = (a, b) ~ N(0, s₀² I); q(w) a full-rank Gaussian (not amortized)."""

    name = "known_noise_regression"
    Config = RegressionConfig
    latent_sites = ("w",)

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        self.q = GaussianQ()

    @property
    def inputs(self) -> tuple[str, ...]:
        return ("c",)

    @property
    def likelihood(self) -> str:
        return "gaussian"

    def model(self, x, c) -> None:
        w = pyro.sample("w", dist.Normal(0.0, PRIOR).expand([2]).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal((w[..., 0] + w[..., 1] * c)[..., None], NOISE).to_event(1), obs=x)

    def guide(self, x, c) -> None:
        pyro.module("q", self.q)
        loc, tril = self.q()
        pyro.sample("w", dist.MultivariateNormal(loc, scale_tril=tril))


@pytest.fixture(scope="module", autouse=True)
def _unregister_after_module():
    yield
    if models.REGISTRY.get(KnownNoiseRegression.name) is KnownNoiseRegression:
        del models.REGISTRY[KnownNoiseRegression.name]


# -- the run --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("regression")
    rng = np.random.default_rng(0)
    c = rng.normal(size=250) + 0.5
    y = 0.3 + 1.2 * c + NOISE * rng.normal(size=250)
    np.savez(root / "d.npz", x=y[:, None].astype(np.float32), c=c.astype(np.float32))
    run = root / "run"
    # full batches (the plate is over the rows given), 32 draws of q per step, the last epoch's weights
    assert main(["train", KnownNoiseRegression.name, "--data", str(root / "d.npz"), "--epochs", "600", "--batch-size",
                 "1000", "--lr", "0.02", "--particles", "32", "--select", "last", "--engine", "torch", "--seed", "0",
                 "--out", str(run), "--no-progress"]) == 0
    return run


def exact_posterior(run) -> tuple[torch.Tensor, torch.Tensor]:
    data = run_data(runs.read_config(run))
    (c,) = data.inputs("train", ("c",))
    X = torch.stack([torch.ones(len(c)), c.double()], 1).double()
    y = data.train[:, 0].double()
    cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) / PRIOR**2 + X.T @ X / NOISE**2)
    return cov @ X.T @ y / NOISE**2, cov


def guide_q(run) -> tuple[torch.Tensor, torch.Tensor]:
    pair = runs.load_pair(run)
    with torch.no_grad():
        loc, tril = pair.q()
    return loc.detach().double(), (tril @ tril.T).detach().double()


def expected_coverage(mq, Sq, mp, Sp, level: float) -> tuple[float, float]:
    """P_{w~p}(w_j ∈ q's central ``level`` interval) averaged over j, and the variance its estimate from the guide's
    empirical quantiles adds (per bound: u(1−u)/n in q-probability times (p/q density)² at the bound)."""
    z = norm.ppf(0.5 + level / 2)
    cover, extra = [], []
    for j in range(len(mq)):
        q_sd, p_sd = math.sqrt(Sq[j, j]), math.sqrt(Sp[j, j])
        lo, hi = float(mq[j]) - z * q_sd, float(mq[j]) + z * q_sd
        cover.append(norm.cdf(hi, mp[j], p_sd) - norm.cdf(lo, mp[j], p_sd))
        u = 0.5 - level / 2
        extra.append(sum((norm.pdf(b, mp[j], p_sd) / norm.pdf(b, mq[j], q_sd)) ** 2 * u * (1 - u) / GUIDE_DRAWS
                         for b in (lo, hi)))
    return float(np.mean(cover)), float(max(extra))


def test_compare_on_global_latents_runs_whole_model_nuts(compared, capsys):
    capsys.readouterr()
    assert main(["compare", str(compared), "--points", "3", "--chains", "2", "--warmup", "300", "--samples",
                 "500"]) == 0
    printed = capsys.readouterr().out
    assert "--points ignored" in printed and "KL" in printed and "cov90" in printed
    out = compared / "compare"
    for name in ("compare.nc", "nuts.nc", "compare.json", "forest_w.png"):
        assert (out / name).exists(), name
    combined = az.from_netcdf(out / "compare.nc")
    assert combined.posterior["w"].dims == ("chain", "draw", "inference", "w_dim")
    assert combined.posterior["inference"].values.tolist() == ["svi", "nuts"]
    nuts = az.from_netcdf(out / "nuts.nc")
    assert nuts.log_likelihood["y"].shape == (2, 500, 200)  # the plate holds every training example

    m, S = exact_posterior(compared)
    draws = nuts.posterior["w"].values
    mcse = az.mcse(nuts, var_names=["w"], method="mean")["w"].values
    assert np.all(np.abs(draws.mean((0, 1)) - m.numpy()) < 4 * mcse), (draws.mean((0, 1)), m, mcse)

    (row,) = json.loads((out / "compare.json").read_text())["sites"]
    assert row["site"] == "w" and row["divergences"] == 0 and row["r_hat_max"] < 1.05
    mq, Sq = guide_q(compared)
    ess = row["ess_bulk_min"]
    exact_kl = float(torch.distributions.kl_divergence(torch.distributions.MultivariateNormal(mq, Sq),
                                                       torch.distributions.MultivariateNormal(m, S)))
    assert exact_kl < 0.5, exact_kl  # the guide trained to near the posterior
    noise = 1 / ess + 1 / GUIDE_DRAWS
    bias = chi2.ppf(0.9999, 2 + 3) / 2 * noise
    assert exact_kl - 4 * math.sqrt(2 * exact_kl * noise) <= row["kl"] <= exact_kl + bias + 4 * math.sqrt(
        2 * exact_kl * noise), (row["kl"], exact_kl)
    for level in (0.5, 0.9):
        expected, extra = expected_coverage(mq, Sq, m, S, level)
        got = row[f"coverage{int(level * 100)}"]
        assert abs(got - expected) < 4 * math.sqrt(expected * (1 - expected) / ess + extra), (level, got, expected)
    assert row["khat"] < 0.7


def test_compare_refuses_a_pair_with_global_and_per_example_latents(tmp_path, capsys):
    """Factor analysis (global loadings, noise and mean beside a per-example z): one line naming what to use."""
    run = tmp_path / "fa"
    np.savez(tmp_path / "v.npz", x=np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32))
    assert main(["train", "factor_analysis", "--data", str(tmp_path / "v.npz"), "--epochs", "1", "--z-dim", "1",
                 "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["compare", str(run), "--chains", "1", "--warmup", "5", "--samples", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "has both" in err and "compare_inference_data" in err
    assert not (run / "compare").exists()
