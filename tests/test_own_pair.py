r"""A user's own pair, written with plain Pyro idioms: every parameter it registers is trained and kept.

Each test puts ppgen's engines beside plain Pyro or NumPyro on the same pair:

(a) ``pyro.param`` values after k torch-engine steps equal plain Pyro SVI's (same seed, same Adam, float rounding);
(b) on the JAX engine they come back into the pair (equal to NumPyro's ``get_params``) and a Student-t
    likelihood's df and scale are recovered within 4 standard errors of the MLE (from the Fisher information);
(c) a run directory (checkpoint, ``model.pt``) gives them back through ``runs.load_pair`` / ``ppgen.load``, and a
    resumed run equals an uninterrupted one bit for bit (torch engine);
(d) autoguides as the guide of a conjugate Bayesian linear regression, on both engines: posterior means within
    4 Monte Carlo standard errors of the exact posterior;
(e) two pairs with a parameter of the same name do not share it, and Pyro's global param store is left alone.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pyro
import pytest
import torch
from scipy.special import polygamma

import ppgen
from ppgen import runs
from ppgen.data import Dataset, from_tensor
from ppgen.inference import svi_jax
from ppgen.inference.loop import epoch_seed
from ppgen.models.base import GenerativeModel
from ppgen.ppl import autoguide, dist
from ppgen.ppl import pyro as ppl_pyro


# -- the pairs, as a user writes them --------------------------------------------------------------------------
@dataclass(frozen=True)
class StudentConfig:
    x_shape: tuple[int, ...] = (1,)


class StudentLocation(GenerativeModel):
    r"""A location b under Student-t noise with learned degrees of freedom, scale and prior scale.

    b ~ N(0, τ²);  x_n | b ~ StudentT(ν, b, σ), n = 1..N;  q(b) = N(m, s²).
    ν, σ, τ (positive) and m, s (s positive) are ``pyro.param`` sites; the ELBO is maximised over all five
    (type-II maximum likelihood for ν, σ, τ).
    """

    name = "test_own_student"
    Config = StudentConfig
    latent_sites = ("b",)

    def __init__(self, x_shape=(1,)):
        super().__init__(StudentConfig(tuple(x_shape)))

    def model(self, x):
        df = ppl_pyro.param("df", torch.tensor(2.0), constraint=dist.constraints.positive)
        scale = ppl_pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
        prior_scale = ppl_pyro.param("prior_scale", torch.tensor(3.0), constraint=dist.constraints.positive)
        b = ppl_pyro.sample("b", dist.Normal(0.0, prior_scale))
        with ppl_pyro.plate("data", x.shape[0]):
            ppl_pyro.sample("x", dist.StudentT(df, b, scale).expand([x.shape[0], 1]).to_event(1), obs=x)

    def guide(self, x):
        loc = ppl_pyro.param("q_loc", torch.tensor(0.0))
        scale = ppl_pyro.param("q_scale", torch.tensor(1.0), constraint=dist.constraints.positive)
        ppl_pyro.sample("b", dist.Normal(loc, scale))

    def generate(self, n):
        b = dist.Normal(0.0, self.param_value("prior_scale")).sample()
        return dist.StudentT(self.param_value("df"), b, self.param_value("scale")).sample((n, 1))


PARAMS = ("df", "scale", "prior_scale", "q_loc", "q_scale")


@dataclass(frozen=True)
class RegressionConfig:
    x_shape: tuple[int, ...] = (3,)
    guide: str = "AutoNormal"


#: known noise and prior scales of the regression
NOISE, PRIOR = 1.0, 1.0


class Regression(GenerativeModel):
    r"""Bayesian linear regression with known noise: each example is a row (u_n, y_n), u_n ∈ R^d.

    w ~ N(0, τ² I),  y_n | w ~ N(u_nᵀ w, σ²);  the posterior is N(μ, Σ) with
    Σ = (UᵀU/σ² + I/τ²)⁻¹ and μ = Σ Uᵀy/σ².  The guide is an autoguide of the model.
    """

    name = "test_own_regression"
    Config = RegressionConfig
    latent_sites = ("w",)

    def __init__(self, x_shape=(3,), guide="AutoNormal"):
        super().__init__(RegressionConfig(tuple(x_shape), guide))
        self.auto = autoguide(guide, self.model)

    def model(self, x):
        d = x.shape[-1] - 1
        w = ppl_pyro.sample("w", dist.Normal(0.0, PRIOR).expand([d]).to_event(1))
        with ppl_pyro.plate("data", x.shape[0]):
            ppl_pyro.sample("y", dist.Normal((x[:, :d] * w).sum(-1), NOISE), obs=x[:, d])

    def guide(self, x):
        return self.auto(x)


def student_data(n: int, df: float = 4.0, loc: float = 1.0, scale: float = 0.5, seed: int = 0) -> torch.Tensor:
    """n draws of StudentT(df, loc, scale), shaped (n, 1)."""
    t = np.random.default_rng(seed).standard_t(df, (n, 1))
    return torch.as_tensor(loc + scale * t, dtype=torch.float32)


def state(pair) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pair.state_dict().items()}


# -- (a) torch engine == plain Pyro SVI ---------------------------------------------------------------------------
def test_torch_engine_trains_every_pyro_param_as_plain_pyro_svi():
    """k steps of the torch engine on the whole batch equal k steps of Pyro's SVI (Trace_ELBO, Adam with the same
    learning rate and betas) run on the undecorated model code with Pyro's global param store, each step seeded
    as ppgen's loop seeds it; only float rounding separates them (ppgen's Adam is the fused kernel)."""
    x, k, lr = student_data(64), 15, 0.05
    pair = StudentLocation()
    ppgen.fit(pair, x, engine="torch", epochs=k, batch_size=len(x), lr=lr, seed=0, progress=False)

    plain = StudentLocation()
    model = functools.partial(StudentLocation.model.__wrapped__, plain)
    guide = functools.partial(StudentLocation.guide.__wrapped__, plain)
    with pyro.get_param_store().scope():
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": lr, "betas": (0.9, 0.999)}),
                             pyro.infer.Trace_ELBO(max_plate_nesting=1))
        for epoch in range(k):
            seed = epoch_seed(0, epoch)
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
            torch.manual_seed(seed)
            svi.step(x[order])
        expected = {name: pyro.param(name).detach().clone() for name in PARAMS}
    for name in PARAMS:
        got = pair.param_value(name)
        assert torch.allclose(got, expected[name], rtol=1e-5, atol=1e-6), (name, got, expected[name])
    moved = {name: float(pair.param_value(name)) for name in ("df", "scale", "prior_scale")}
    assert moved["df"] != 2.0 and moved["scale"] != 1.0 and moved["prior_scale"] != 3.0, moved


# -- (b) JAX engine: trained values come back; df and scale recovered --------------------------------------------
def student_t_standard_errors(df: float, scale: float, n: int) -> tuple[float, float]:
    """Asymptotic standard errors of the MLE of (ν, σ) of StudentT(ν, μ, σ) from n draws: the square roots of the
    diagonal of (n I)⁻¹, with the per-draw Fisher information (μ is orthogonal to both)
    I_νν = ¼[ψ'(ν/2) − ψ'((ν+1)/2)] − (ν+5)/(2ν(ν+1)(ν+3)),  I_σσ = 2ν/((ν+3)σ²),  I_νσ = −2/(σ(ν+1)(ν+3))."""
    i_nn = 0.25 * (polygamma(1, df / 2) - polygamma(1, (df + 1) / 2)) - (df + 5) / (2 * df * (df + 1) * (df + 3))
    i_ss = 2 * df / ((df + 3) * scale**2)
    i_ns = -2 / (scale * (df + 1) * (df + 3))
    cov = np.linalg.inv(n * np.array([[i_nn, i_ns], [i_ns, i_ss]]))
    return float(np.sqrt(cov[0, 0])), float(np.sqrt(cov[1, 1]))


def test_jax_engine_copies_every_trained_param_back_and_recovers_the_student_t(monkeypatch):
    """On n = 4000 draws of StudentT(ν = 4, 1, σ = 0.5) the JAX engine's ν̂ and σ̂ lie within 4 standard errors
    of the truth. The tolerance is the MLE's sampling error (SE from the Fisher information: 0.26 and 0.0099
    here): with a global b whose posterior sd is ≈ 0.01, the ELBO's optimum over (ν, σ) is the MLE to far less
    than that, and the optimizer's own error is smaller still (measured: ν̂ = 3.91, σ̂ = 0.509 against scipy's
    MLE 3.885, 0.5075 on the same draws). The pair's values are NumPyro's trained ones exactly."""
    n, df, scale = 4000, 4.0, 0.5
    x = student_data(n, df, 1.0, scale, seed=1)
    pair = StudentLocation()
    before = state(pair)
    synced = []  # NumPyro's get_params at each copy back (the engine hands them to copy_into_torch)
    copy = svi_jax.copy_into_torch
    monkeypatch.setattr(svi_jax, "copy_into_torch", lambda sites, params, *a: (synced.append(params),
                                                                                 copy(sites, params, *a)))
    fit = ppgen.fit(pair, x, engine="jax", epochs=1500, batch_size=n, lr=0.02, seed=0, progress=False)
    assert fit.options["engine"] == "jax"
    after = state(pair)
    assert set(after) >= {f"pyro_params.{name}" for name in PARAMS}
    assert all(not torch.equal(before.get(k, torch.zeros(())), after[k]) for k in after if k.startswith("pyro"))
    trained = synced[-1]
    for name in PARAMS:
        assert np.allclose(pair.param_value(name).numpy(), np.asarray(trained[name]), rtol=1e-6), name
    se_df, se_scale = student_t_standard_errors(df, scale, n)
    got_df, got_scale = float(pair.param_value("df")), float(pair.param_value("scale"))
    assert abs(got_df - df) < 4 * se_df, (got_df, se_df)
    assert abs(got_scale - scale) < 4 * se_scale, (got_scale, se_scale)
    assert abs(float(pair.param_value("q_loc")) - 1.0) < 4 * 0.5 / math.sqrt(n) * 1.2


# -- (c) run directory, load and resume ---------------------------------------------------------------------------
def write_run(out, pair, data: Dataset, config: dict, **options):
    with runs.new_run(out, config) as run:
        fit = ppgen.inference.fit(pair, data, backend="svi", on_epoch_end=run.save_checkpoint, **options)
        runs.save_torch(run.path / runs.MODEL, pair.state_dict())
    return fit


@pytest.mark.parametrize("engine", ["torch", "jax"])
def test_run_directory_keeps_params_and_resume_is_exact(tmp_path, engine):
    """model.pt and checkpoint.pt hold every pyro.param; ``ppgen.load`` gives them back; a run resumed from
    epoch 3 of 6 ends where an uninterrupted run ends: bit for bit on the torch engine, to float32 rounding
    on the JAX engine (one compiled epoch, resumed NumPyro state)."""
    x = student_data(200, seed=2)
    data = from_tensor(x)
    options = dict(engine=engine, batch_size=50, lr=0.05, seed=3, progress=False)
    config = {"model": StudentLocation.name, "model_options": {"x_shape": [1]}, "data": {"name": "tensor"},
              "train": {"epochs": 3, **{k: v for k, v in options.items() if k != "progress"}}}
    straight = StudentLocation()
    ppgen.inference.fit(straight, data, backend="svi", epochs=6, **options)

    first = StudentLocation()
    write_run(tmp_path / "run", first, data, config, epochs=3, **options)
    loaded = ppgen.load(tmp_path / "run")
    assert type(loaded) is StudentLocation
    for name in PARAMS:
        assert torch.equal(loaded.param_value(name), first.param_value(name)), name
    assert torch.equal(runs.load_pair(tmp_path / "run").param_value("df"), first.param_value("df"))

    checkpoint = runs.load_checkpoint(tmp_path / "run")
    fresh = runs.build_pair(config)
    runs.check_weights(fresh, checkpoint["model"], tmp_path / "run" / runs.CHECKPOINT)
    ppgen.inference.fit(fresh, data, backend="svi", epochs=6, resume=checkpoint, **options)
    for name in PARAMS:
        a, b = fresh.param_value(name), straight.param_value(name)
        if engine == "torch":
            assert torch.equal(a, b), (name, a, b)
        else:
            assert torch.allclose(a, b, rtol=1e-5), (name, a, b)


# -- (d) autoguides on both engines -------------------------------------------------------------------------------
def regression_data(n: int = 12, d: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows (u, y), exact posterior mean μ, exact posterior covariance Σ); the columns of U are orthogonal, so Σ
    is diagonal and a mean-field guide contains the posterior."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    u = q * math.sqrt(n / 4)  # UᵀU = (n/4) I
    w = torch.tensor([1.0, -0.5], dtype=torch.float64)[:d]
    y = u @ w + NOISE * torch.randn(n, generator=g, dtype=torch.float64)
    precision = u.T @ u / NOISE**2 + torch.eye(d, dtype=torch.float64) / PRIOR**2
    cov = torch.linalg.inv(precision)
    mean = cov @ u.T @ y / NOISE**2
    return torch.cat([u, y[:, None]], 1).float(), mean, cov


AUTOGUIDES = ["AutoNormal", "AutoDiagonalNormal", "AutoMultivariateNormal", "AutoDelta"]


@pytest.mark.parametrize("engine", ["torch", "jax"])
@pytest.mark.parametrize("kind", AUTOGUIDES)
def test_autoguide_posterior_matches_the_conjugate_posterior(kind, engine):
    """Each guide's family contains the exact posterior N(μ, Σ) (Σ is diagonal; the point mass of AutoDelta sits at
    the posterior mode, which for a Gaussian is μ). The posterior mean is estimated from S = 1000 draws of the
    trained guide (as ArviZ would hold them), with Monte Carlo standard error sd/√S per coordinate (sd the exact
    posterior sd); it lies within 4 MCSE of μ. AutoDelta's draws all equal its point, which is checked against μ
    to 4 MCSE as well. The ArviZ posterior holds the model's latent site w only."""
    x, mean, cov = regression_data()
    pair = Regression(x_shape=(3,), guide=kind)
    # 64 particles per step: Adam's stationary wobble around the optimum (∝ lr × gradient noise) stays near
    # 1 MCSE; with 8 particles it reached 4 (measured)
    fit = ppgen.fit(pair, x, engine=engine, epochs=1200, batch_size=len(x), lr=0.01, seed=0, progress=False,
                    num_particles=64)
    assert fit.options["engine"] == engine
    idata = ppgen.diagnostics.to_inference_data(fit, x=x, num_samples=1000, chains=4, log_lik=False)
    assert list(idata.posterior.data_vars) == ["w"]
    draws = torch.as_tensor(idata.posterior["w"].values, dtype=torch.float64).reshape(-1, 2)
    sd = cov.diagonal().sqrt()
    mcse = sd / math.sqrt(len(draws))
    assert ((draws.mean(0) - mean).abs() < 4 * mcse).all(), (kind, engine, draws.mean(0), mean, mcse)
    if kind != "AutoDelta":
        # the spread too: the sample sd's standard error is ≈ sd/√(2S)
        assert ((draws.std(0) - sd).abs() < 4 * sd / math.sqrt(2 * len(draws))).all(), (draws.std(0), sd)


def test_autoguide_pair_survives_a_run_directory(tmp_path):
    """An autoguide makes its parameters on its first call: a fresh pair makes them again (from the one example
    input the pair keeps) before loading, so ``ppgen.load`` returns the trained guide."""
    x, _, _ = regression_data()
    pair = Regression(x_shape=(3,), guide="AutoMultivariateNormal")
    config = {"model": Regression.name, "model_options": {"x_shape": [3], "guide": "AutoMultivariateNormal"},
              "data": {"name": "tensor"}, "train": {"epochs": 2}}
    write_run(tmp_path / "run", pair, from_tensor(x), config, engine="torch", epochs=2, batch_size=12, lr=0.05,
              progress=False)
    loaded = ppgen.load(tmp_path / "run")
    assert loaded.state_dict().keys() == pair.state_dict().keys()
    assert all(torch.equal(v, pair.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_jax_engine_refuses_an_autoguide_it_cannot_map(auto_at_any_size):
    """An autoguide without a NumPyro mapping is one line naming it; ``auto`` falls back to torch."""
    x, _, _ = regression_data()
    with pytest.raises(ppgen.errors.UserError, match="AutoLowRankMultivariateNormal runs on Pyro only"):
        ppgen.fit(Regression(guide="AutoLowRankMultivariateNormal"), x, engine="jax", epochs=1, progress=False)
    messages = []
    fit = ppgen.inference.fit(Regression(guide="AutoLowRankMultivariateNormal"), from_tensor(x), backend="svi",
                              epochs=1, batch_size=12, progress=False, announce=messages.append)
    assert fit.options["engine"] == "torch" and "Pyro only" in messages[0]


class RawAutoNormal(Regression):
    """The regression with Pyro's own ``AutoNormal`` (not ``ppgen.ppl.autoguide``)."""

    name = "test_own_raw_autonormal"

    def __init__(self, x_shape=(3,), guide="AutoNormal"):
        super().__init__(x_shape, guide)
        self.auto = pyro.infer.autoguide.AutoNormal(self.model)


def test_pyros_own_autoguide_trains_on_torch_and_auto_says_how_to_reach_jax(auto_at_any_size):
    """Pyro's own autoguide is trained by the torch engine and reloads into a fresh pair; ``auto`` picks torch and
    says to write it with ``ppgen.ppl.autoguide`` for the JAX engine."""
    x, mean, _ = regression_data()
    messages = []
    pair = RawAutoNormal()
    fit = ppgen.inference.fit(pair, from_tensor(x), backend="svi", epochs=300, batch_size=12, lr=0.02,
                              progress=False, announce=messages.append)
    assert fit.options["engine"] == "torch" and "ppgen.ppl.autoguide('AutoNormal', self.model)" in messages[0]
    trained = pair.auto.locs.w.detach()
    assert (trained - mean.float()).abs().max() < 0.5  # moved from its prior-median start towards μ
    fresh = RawAutoNormal()
    fresh.load_state_dict(pair.state_dict())
    assert torch.equal(fresh.auto.locs.w.detach(), trained)


# -- (e) no sharing -----------------------------------------------------------------------------------------------
def test_two_pairs_with_the_same_param_names_do_not_share_them():
    """Training one pair moves its own df only; the other pair and Pyro's global store keep theirs; and Pyro's own
    SVI on a pair's model trains that pair's values."""
    x = student_data(64)
    pyro.clear_param_store()
    pyro.param("df", torch.tensor(9.0))
    a, b = StudentLocation(), StudentLocation()
    ppgen.fit(a, x, engine="torch", epochs=5, batch_size=64, lr=0.1, progress=False)
    b.trial_run(x)
    assert float(b.param_value("df")) == pytest.approx(2.0)
    assert float(a.param_value("df")) != pytest.approx(2.0)
    svi = pyro.infer.SVI(b.model, b.guide, pyro.optim.Adam({"lr": 0.1}), pyro.infer.Trace_ELBO())
    for _ in range(3):
        svi.step(x)
    assert float(b.param_value("df")) != pytest.approx(2.0)
    assert float(b.param_value("df")) != float(a.param_value("df"))
    assert list(pyro.get_param_store().keys()) == ["df"] and pyro.param("df").item() == 9.0
    pyro.clear_param_store()
