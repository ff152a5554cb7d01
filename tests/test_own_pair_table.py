r"""Five pairs written as a Pyro user writes them (tests/own_pairs.py) × every ppgen tool: each cell works, with a
check that can fail, or refuses in one line naming what to use instead. A cell that does neither is marked
``xfail(strict=True)`` with the error it raises: a finding, kept visible.

Columns: fit on the torch engine, fit on the JAX engine, ``engine="auto"``'s choice, IWAE, AIS, NUTS (per point
for a pair with local latents only, whole model otherwise), SVI beside NUTS (``compare`` / ``compare_global``),
ArviZ of the SVI guide, ArviZ of the NUTS fit, save + load through a run directory.

The checks:

* fit: every tensor the pair trains (network weights, ``pyro.param`` values, an autoguide's parameters) moved
  from its value after the trial run, and the last epoch's ELBO is finite;
* auto: the engine it picks and the line it prints;
* IWAE: IWAE₁ equals the Monte Carlo ELBO on the same seed (the same draws, one weight each: equal to float
  rounding), and IWAE₆₄ ≥ the 64-draw ELBO minus 4 paired standard errors (the bound's ordering);
* AIS: started from the guide, 100 steps: its mean ≥ the ELBO's minus 4 standard errors (AIS SE and the ELBO's
  SE over 200 draws, combined);
* NUTS: the sampled sites are the model's latent sites with their shapes; for (E), whose posterior is
  conjugate, the mean of b within 4 MCSE (ArviZ's) of the exact N x̄ / (N + 1/τ²);
* compare: the guide beside NUTS gives finite distances and coverages in [0, 1]; (E) trained to convergence has
  k̂ < 0.7 and 90% coverage within 4 binomial SEs (at NUTS's bulk ESS) of 0.9;
* ArviZ: the posterior group holds exactly the model's latent sites;
* save + load: the loaded pair has the same state and the same ELBO (same seed) as the trained one.

The table of outcomes is printed at the end of the module (``-s`` not needed).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import own_pairs as P
import pytest
import torch

import ppgen
from ppgen import diagnostics, runs
from ppgen.data import Dataset, from_tensor
from ppgen.errors import UserError
from ppgen.evaluation import ais, elbo, iwae
from ppgen.evaluation import amortization as am

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import arviz as az


@dataclass(frozen=True)
class Case:
    """A pair, its data and how it is trained in the table."""

    make: Callable[[], ppgen.models.base.GenerativeModel]
    data: Callable[[], Dataset]
    batch_size: int
    epochs: int = 3  # the torch fit the estimator columns use
    lr: float = 0.02
    points: int | None = 2  # NUTS per point (None: whole model)


def _logistic() -> Dataset:
    y, u = P.breast_cancer()
    return from_tensor(y, inputs={"u": u})


def _schools() -> Dataset:
    y, sigma = P.eight_schools()
    return from_tensor(y, inputs={"sigma": sigma})


def _labelled() -> Dataset:
    x, y = P.labelled_data()
    return from_tensor(x, inputs={"y": y})


CASES = {
    "A student-t VAE": Case(P.StudentVAE, lambda: from_tensor(P.student_vae_data()), 64),
    "B logistic (AutoMVN)": Case(P.BayesianLogistic, _logistic, 64, points=None),
    "C eight schools (AutoNormal)": Case(P.EightSchools, _schools, 8, points=None),
    "D conditional VAE": Case(P.LabelledVAE, _labelled, 64),
    # trained to convergence (cheap: one scalar site) so that compare_global has a good guide to put beside NUTS
    "E global bias, subsampled": Case(P.GlobalBias, lambda: from_tensor(P.global_bias_data()), 64, epochs=400,
                                      lr=0.05, points=None),
}
PAIRS = list(CASES)
COLUMNS = ("fit torch", "fit jax", "auto", "IWAE", "AIS", "NUTS", "compare", "ArviZ (SVI)", "ArviZ (NUTS)",
           "save+load")
INPUTS = ("B logistic (AutoMVN)", "C eight schools (AutoNormal)", "D conditional VAE")
GLOBAL = ("B logistic (AutoMVN)", "C eight schools (AutoNormal)", "E global bias, subsampled")

#: cells that fail today (a finding each): (pair, column) -> (the exception the cell raises, the reason)
FAILS: dict[tuple[str, str], tuple[type, str]] = {}  # none left: every cell works or refuses in one line
#: cells that refuse in one line: (pair, column) -> what the line must name
REFUSES = {**{(p, "IWAE"): "compare_global" for p in GLOBAL}, **{(p, "AIS"): "compare_global" for p in GLOBAL}}

OUTCOMES: dict[tuple[str, str], str] = {}


def cells(column: str) -> list:
    marks = {p: [pytest.mark.xfail(strict=True, raises=FAILS[(p, column)][0], reason=FAILS[(p, column)][1])]
             for p in PAIRS if (p, column) in FAILS}
    return [pytest.param(p, marks=marks.get(p, ()), id=p.split()[0]) for p in PAIRS]


def record(name: str, column: str, fn: Callable[[], str]) -> None:
    """Run one cell: a refusal must be expected and one line naming what to use; anything else must work."""
    try:
        OUTCOMES[(name, column)] = f"works: {fn()}"
    except UserError as err:
        text = str(err)
        OUTCOMES[(name, column)] = f"refuses: {text}"
        if (name, column) not in REFUSES:
            OUTCOMES[(name, column)] = f"FAILS (a refusal it should not make): {text}"
        assert (name, column) in REFUSES, text
        assert "\n" not in text and REFUSES[(name, column)] in text, text
        return
    except Exception as err:
        OUTCOMES[(name, column)] = f"FAILS: {type(err).__name__}: {err}"
        raise
    assert (name, column) not in REFUSES, f"{name} / {column} was expected to refuse"


@pytest.fixture(scope="module", autouse=True)
def table(request):
    """After the module: the table of outcomes on the terminal (a Markdown table; each cell's detail with -v)."""
    yield
    if not OUTCOMES:
        return
    lines = ["", "| pair | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name in PAIRS:
        row = [OUTCOMES.get((name, c), "not run").split(":")[0].split(" (")[0] for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    if request.config.getoption("verbose") > 0:
        lines += [""] + [f"{name} / {column}: {OUTCOMES[(name, column)]}" for name in PAIRS for column in COLUMNS
                         if (name, column) in OUTCOMES]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n".join(lines))


# -- shared fits --------------------------------------------------------------------------------------------------
_DATA: dict[str, Dataset] = {}
_TRAINED: dict[str, tuple] = {}
_NUTS: dict[str, object] = {}


def data_of(name: str) -> Dataset:
    if name not in _DATA:
        _DATA[name] = CASES[name].data()
    return _DATA[name]


def columns_of(name: str, rows: slice = slice(None)) -> tuple[torch.Tensor, ...]:
    data = data_of(name)
    return tuple(c[rows] for c in data.inputs("train", CASES[name].make.inputs))


def trained(name: str):
    """(pair, fit) after the case's torch fit."""
    if name not in _TRAINED:
        case, data = CASES[name], data_of(name)
        pair = case.make()
        fit = ppgen.fit(pair, data, engine="torch", epochs=case.epochs, batch_size=case.batch_size, lr=case.lr,
                        seed=0, progress=False)
        _TRAINED[name] = pair, fit
    return _TRAINED[name]


def nuts(name: str):
    if name not in _NUTS:
        pair, _ = trained(name)
        _NUTS[name] = ppgen.fit(pair, data_of(name), backend="nuts", points=CASES[name].points, chains=2,
                                warmup=100, samples=100, seed=0)
    return _NUTS[name]


def model_latents(pair, name: str) -> list[str]:
    from pyro import poutine

    x = data_of(name).train
    with torch.no_grad():
        trace = poutine.trace(pair.model).get_trace(x, *columns_of(name))
    return [k for k, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]
            and not k.startswith("_") and k in pair.latent_sites]


# -- fit, on each engine and auto -----------------------------------------------------------------------------------
def fit_and_check_moved(name: str, engine: str) -> str:
    case, data = CASES[name], data_of(name)
    pair = case.make()
    pair.trial_run(data.train[: case.batch_size], *columns_of(name, slice(0, case.batch_size)))
    before = {k: v.clone() for k, v in pair.state_dict().items() if not k.startswith("trial_")}  # not the trial's
    fit = ppgen.fit(pair, data, engine=engine, epochs=3, batch_size=case.batch_size, lr=case.lr, seed=0,
                    progress=False)
    assert fit.options["engine"] == engine
    after = pair.state_dict()
    still = [k for k, v in before.items() if torch.equal(v, after[k])]
    assert not still, f"not trained: {still}"
    assert math.isfinite(fit.history[-1]["elbo"])
    own = [k.split(".", 1)[1] for k in before if k.startswith(("pyro_params.", "auto."))]
    kept = f"incl. {', '.join(own)}" if own else "network weights"
    return f"{len(before)} tensors moved ({kept}), ELBO {fit.history[-1]['elbo']:.2f}"


@pytest.mark.parametrize("name", cells("fit torch"))
def test_fit_torch(name):
    record(name, "fit torch", lambda: fit_and_check_moved(name, "torch"))


@pytest.mark.parametrize("name", cells("fit jax"))
def test_fit_jax(name):
    record(name, "fit jax", lambda: fit_and_check_moved(name, "jax"))


@pytest.mark.parametrize("name", cells("auto"))
def test_auto_picks_an_engine_that_runs_the_pair(name, auto_at_any_size):
    def run() -> str:
        case, messages = CASES[name], []
        fit = ppgen.inference.fit(case.make(), data_of(name), backend="svi", epochs=1, batch_size=case.batch_size,
                                  progress=False, announce=messages.append)
        assert fit.options["engine"] == "jax" and messages == ["SVI engine jax (the pair lowers to JAX)"], messages
        return f"jax ({messages[0]})"

    record(name, "auto", run)


def test_a_torch_function_in_the_guide_is_one_line_on_jax_and_auto_falls_back_to_torch(auto_at_any_size):
    """The conditional VAE with the scale's softplus written in the guide (torch code NumPyro cannot run):
    engine="jax" is one line naming engine='torch'; auto picks torch and says why."""
    import torch.nn.functional as F

    class SoftplusInGuide(P.LabelledVAE):
        def guide(self, x, y):
            from ppgen.ppl import dist, pyro

            pyro.module("encoder", self.encoder)
            with pyro.plate("data", x.shape[0]):
                loc, scale = self.encoder(x, y)
                pyro.sample("z", dist.Normal(loc, F.softplus(scale)).to_event(1))

    data = data_of("D conditional VAE")
    with pytest.raises(UserError, match="cannot run SoftplusInGuide on NumPyro.*use engine='torch'") as err:
        ppgen.fit(SoftplusInGuide(), data, engine="jax", epochs=1, batch_size=64, progress=False)
    assert "\n" not in str(err.value)
    messages = []
    fit = ppgen.inference.fit(SoftplusInGuide(), data, backend="svi", epochs=1, batch_size=64, progress=False,
                              announce=messages.append)
    assert fit.options["engine"] == "torch" and "cannot run SoftplusInGuide on NumPyro" in messages[0]


# -- per-example estimators -------------------------------------------------------------------------------------------
def paired_mean_se(d: torch.Tensor) -> tuple[float, float]:
    d = d.double()
    return float(d.mean()), float(d.std() / math.sqrt(len(d)))


@pytest.mark.parametrize("name", cells("IWAE"))
def test_iwae(name):
    def run() -> str:
        pair, _ = trained(name)
        x, inputs = data_of(name).train[:32], columns_of(name, slice(0, 32))
        torch.manual_seed(1)
        one = iwae(pair, x, k=1, inputs=inputs)
        torch.manual_seed(1)
        torch.testing.assert_close(one, elbo(pair, x, 1, inputs=inputs))
        bound = iwae(pair, x, k=64, inputs=inputs)
        gap, se = paired_mean_se(bound - elbo(pair, x, 64, inputs=inputs))
        assert gap > -4 * se, (gap, se)
        return f"IWAE-64 {float(bound.mean()):.2f} ≥ ELBO by {gap:.3f} ± {se:.3f}"

    record(name, "IWAE", run)


@pytest.mark.parametrize("name", cells("AIS"))
def test_ais(name):
    def run() -> str:
        pair, _ = trained(name)
        x, inputs = data_of(name).train[:4], columns_of(name, slice(0, 4))
        result = ais(pair, x, steps=100, chains=8, init="guide", inputs=inputs, seed=0)
        bound = elbo(pair, x, 200, inputs=inputs)
        se = math.hypot(result.mean_se, float(bound.std()) / math.sqrt(len(x)))
        assert math.isfinite(result.mean) and result.mean > float(bound.mean()) - 4 * se, (result.mean, bound)
        return f"AIS {result.mean:.2f} ± {result.mean_se:.2f} (ELBO {float(bound.mean()):.2f})"

    record(name, "AIS", run)


# -- NUTS and SVI beside it -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", cells("NUTS"))
def test_nuts(name):
    def run() -> str:
        pair, _ = trained(name)
        fit = nuts(name)
        latents = model_latents(pair, name)
        assert sorted(fit.samples) == sorted(latents), (list(fit.samples), latents)
        if name.startswith("E"):
            x = data_of(name).train
            tau = float(pair.param_value("prior_scale"))
            exact = (x.sum(0) / (len(x) + 1 / tau**2)).numpy()
            draws = fit.samples["b"]
            mcse = az.mcse(az.convert_to_dataset({"b": draws}), method="mean")["b"].values
            assert np.all(np.abs(draws.mean((0, 1)) - exact) < 4 * mcse), (draws.mean((0, 1)), exact, mcse)
        kind = "per point" if CASES[name].points else "whole model"
        return f"{kind}: {', '.join(f'{k} {tuple(v.shape)}' for k, v in fit.samples.items())}"

    record(name, "NUTS", run)


@pytest.mark.parametrize("name", cells("compare"))
def test_compare_with_nuts(name):
    def run() -> str:
        pair, _ = trained(name)
        fit = nuts(name)
        if CASES[name].points:
            result = am.compare(pair, fit, steps=50, elbo_samples=100, iwae_k=100)
            row = result["overall"]
            assert math.isfinite(row["kl"]) and 0 <= row["coverage90"] <= 1, row
            return f"compare: KL {row['kl']:.3f}, coverage90 {row['coverage90']:.2f}"
        result = am.compare_global(pair, fit, guide_samples=1000, psis_samples=500)
        rows = result["sites"]
        assert [r["site"] for r in rows] == model_latents(pair, name)
        for r in rows:
            assert math.isfinite(r["kl"]) and 0 <= r["coverage90"] <= 1, r
        if name.startswith("E"):
            (r,) = rows
            assert r["khat"] < 0.7 and abs(r["coverage90"] - 0.9) < 4 * math.sqrt(0.09 / r["ess_bulk_min"]), r
        return "compare_global: " + "; ".join(f"{r['site']} KL {r['kl']:.3f} k̂ {r['khat']:.2f}" for r in rows)

    record(name, "compare", run)


# -- ArviZ ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", cells("ArviZ (SVI)"))
def test_arviz_of_the_guide(name):
    def run() -> str:
        pair, fit = trained(name)
        idata = diagnostics.to_inference_data(fit, x=data_of(name).train[:8], num_samples=40, chains=2,
                                              inputs=columns_of(name, slice(0, 8)))
        assert sorted(idata.posterior.data_vars) == sorted(model_latents(pair, name))
        return f"posterior {list(idata.posterior.data_vars)}, groups {idata.groups()}"

    record(name, "ArviZ (SVI)", run)


@pytest.mark.parametrize("name", cells("ArviZ (NUTS)"))
def test_arviz_of_nuts(name):
    def run() -> str:
        pair, _ = trained(name)
        fit = nuts(name)
        # E subsamples its plate: Pyro runs its whole plate only through the declared N, which it is given here
        idata = diagnostics.to_inference_data(fit)
        assert sorted(idata.posterior.data_vars) == sorted(model_latents(pair, name))
        return f"posterior {list(idata.posterior.data_vars)}, groups {idata.groups()}"

    record(name, "ArviZ (NUTS)", run)


# -- save + load ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", cells("save+load"))
def test_save_and_load(name, tmp_path):
    def run() -> str:
        case, data = CASES[name], data_of(name)
        pair = case.make()
        config = {"model": pair.name, "model_options": {}, "data": {"name": "tensor"},
                  "train": {"epochs": 2, "engine": "torch", "batch_size": case.batch_size}}
        with runs.new_run(tmp_path / "run", config) as run_dir:
            ppgen.inference.fit(pair, data, backend="svi", engine="torch", epochs=2, batch_size=case.batch_size,
                                lr=case.lr, progress=False, on_epoch_end=run_dir.save_checkpoint)
            runs.save_torch(run_dir.path / runs.MODEL, pair.state_dict())
        loaded = ppgen.load(tmp_path / "run")
        assert type(loaded) is type(pair)
        assert loaded.state_dict().keys() == pair.state_dict().keys()
        assert all(torch.equal(v, pair.state_dict()[k]) for k, v in loaded.state_dict().items())
        x, inputs = data.train[:16], columns_of(name, slice(0, 16))
        torch.manual_seed(3)
        a = elbo(pair, x, 4, inputs=inputs)
        torch.manual_seed(3)
        b = elbo(loaded, x, 4, inputs=inputs)
        assert torch.equal(a, b)
        return f"{len(pair.state_dict())} tensors back; same ELBO {float(a.mean()):.3f}"

    record(name, "save+load", run)
