r"""Observed inputs beside x: ``model(x, *inputs)`` / ``guide(x, *inputs)`` from the data set's columns.

Exact answers:

* a conditional linear-Gaussian pair, x = W z + B[y] + σ ε with z ~ N(0, I), whose guide is its exact
  posterior q(z | x, y) = p(z | x, y): every log weight is log p(x | y) = log N(x; B[y], WWᵀ + σ²I), so
  the ELBO, IWAE_K and AIS started from the guide equal it per example to float rounding (with each
  example's own label: the same examples with other labels give log p(x | y') instead); NUTS per point
  finds the posterior mean S Wᵀ(x − B[y])/σ² within 4 Monte Carlo standard errors (ArviZ's ESS);
* a pair that masks a missing label's likelihood (y = −1, ``ppgen.data.observed``): its log p(x, y, z) per
  example against the sum written out by hand, the label term present only where y is;
* the conditional VAE's per-example ELBO against Pyro's ``Trace_ELBO`` on the same weights and the same
  random draws; its log p(x, z | y) on NumPyro (the JAX engine's model) against Pyro's at the same z;
* statistical checks use paired differences over held-out digits, 4 standard errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from support import mean_se
from torch import nn

import ppgen
from ppgen import sites
from ppgen.data import Dataset, from_tensor, load, observed
from ppgen.errors import UserError
from ppgen.evaluation import elbo, iwae
from ppgen.evaluation.ais import ais
from ppgen.models import get
from ppgen.models.base import GenerativeModel
from ppgen.nn import Network
from ppgen.ppl import dist
from ppgen.ppl import pyro as ppl_pyro

Z = 4.0  # standard errors allowed for a statistical check


# -- data: input columns ---------------------------------------------------------------------------------------------
def _by_row(x: torch.Tensor, column: torch.Tensor) -> dict:
    return {float(r[0]): c.item() for r, c in zip(x, column)}


def test_npz_arrays_beside_x_are_input_columns_in_the_examples_order(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    y = rng.integers(0, 4, 60)
    age = rng.normal(40, 10, 60)
    y_mask = rng.random(60) > 0.3
    np.savez(tmp_path / "d.npz", x=x, y=y, age=age, y_mask=y_mask)
    data = load(str(tmp_path / "d.npz"), n_val=6, n_test=6)
    assert data.input_names == ("y", "age")
    expect_y = {float(np.float32(r[0])): (int(v) if m else -1) for r, v, m in zip(x, y, y_mask)}
    expect_age = {float(np.float32(r[0])): float(np.float32(a)) for r, a in zip(x, age)}
    for split in ("train", "val", "test"):
        xs = getattr(data, split)
        ys, ages = data.inputs(split, ("y", "age"))
        assert ys.dtype == torch.int64 and ages.dtype == torch.float32 and len(ys) == len(ages) == len(xs)
        assert _by_row(xs, ys) == {k: expect_y[k] for k in _by_row(xs, ys)}  # row i beside example i
        assert _by_row(xs, ages) == {k: expect_age[k] for k in _by_row(xs, ages)}
    all_y = torch.cat(data.inputs("train", ("y",)) + data.inputs("val", ("y",)) + data.inputs("test", ("y",)))
    assert int((~observed(all_y)).sum()) == int((~y_mask).sum())  # the mask made exactly these missing
    assert data.inputs("train", ()) == ()
    with pytest.raises(UserError, match="input column 'label'.*has y, age"):
        data.inputs("train", ("label",))


def test_npz_split_layout_and_nan_labels(tmp_path):
    rng = np.random.default_rng(1)
    y_train = rng.integers(0, 3, 30).astype(np.float64)
    y_train[:4] = np.nan  # a float labels array: NaN means missing
    np.savez(tmp_path / "d.npz", x_train=rng.random((30, 2)), y_train=y_train, x_test=rng.random((8, 2)),
             y_test=np.arange(8) % 3)
    data = load(str(tmp_path / "d.npz"), n_val=3)
    assert data.test_inputs["y"].tolist() == (np.arange(8) % 3).tolist()
    seen = torch.cat([data.train_inputs["y"], data.val_inputs["y"]])
    assert int((seen == -1).sum()) == 4 and seen.dtype == torch.int64


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((10, 2)), "y": np.zeros(9, dtype=np.int64)}, "10 examples but 9 labels"),
    ({"x": np.zeros((10, 2)), "age": np.zeros(7)}, "column 'age' has 7 rows but there are 10 examples"),
    ({"x": np.zeros((10, 2)), "y": np.zeros(10, dtype=np.int64), "y_mask": np.ones(3)}, "y_mask must hold"),
    ({"x": np.zeros((10, 2)), "k": np.full(10, -3)}, "integer column 'k' holds -3"),
    ({"x_train": np.zeros((10, 2)), "y_train": np.zeros(10, np.int64), "x_test": np.zeros((4, 2))},
     "same columns"),
])
def test_bad_columns_are_one_line_user_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(UserError, match=message) as err:
        load(str(tmp_path / "d.npz"))
    assert "\n" not in str(err.value)


def test_csv_columns(tmp_path):
    lines = ["a,b,y,dose"] + [f"{i},{i * 2},{'' if i % 5 == 0 else i % 3},{'' if i == 7 else i / 10}"
                                for i in range(40)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    data = load(str(tmp_path / "d.csv"), inputs=("y", "dose"), n_val=4, n_test=4)
    assert data.x_shape == (2,) and data.input_names == ("y", "dose")
    for split in ("train", "val", "test"):
        xs = getattr(data, split)
        ys, dose = data.inputs(split, ("y", "dose"))
        for row, label, d in zip(xs.tolist(), ys.tolist(), dose.tolist()):
            i = int(row[0])
            assert label == (-1 if i % 5 == 0 else i % 3)
            assert (math.isnan(d) if i == 7 else d == pytest.approx(i / 10))
    with pytest.raises(UserError, match="row 9, column 'dose' holds '', not a number"):  # dose is a feature now
        load(str(tmp_path / "d.csv"), n_val=4, n_test=4)
    (tmp_path / "e.csv").write_text("a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    default = load(str(tmp_path / "e.csv"), n_val=2, n_test=2)
    assert default.input_names == ("y",) and default.x_shape == (1,)  # default: the y column is the input
    with pytest.raises(UserError, match="no column 'nope'"):
        load(str(tmp_path / "d.csv"), inputs=("nope",))


def test_bundled_labels_are_column_y_and_observed_works_on_both_backends():
    import jax.numpy as jnp

    data = load("digits")
    assert torch.equal(data.train_inputs["y"], data.train_labels)
    assert torch.equal(data.inputs("test", ("y",))[0], data.test_labels)
    assert data.train_epoch_inputs(3, ("y",))[0] is data.train_inputs["y"]
    labels, values = torch.tensor([2, -1, 0]), torch.tensor([0.5, float("nan"), -1.0])
    assert observed(labels).tolist() == [True, False, True] and observed(values).tolist() == [True, False, True]
    assert np.asarray(observed(jnp.asarray([2, -1, 0]))).tolist() == [True, False, True]
    assert np.asarray(observed(jnp.asarray([0.5, np.nan, -1.0]))).tolist() == [True, False, True]


# -- a conditional linear-Gaussian pair: every estimator exact -----------------------------------------------------
D, K, C, SIGMA = 4, 2, 3, 0.5


class LinearDecoder(Network):
    def __init__(self, wt: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.wt, self.b = nn.Parameter(wt.clone()), nn.Parameter(b.clone())

    def forward(self, z, y):
        return z @ self.wt + self.b[y]


class PosteriorEncoder(Network):
    """q(z | x, y) = p(z | x, y) = N(S Wᵀ(x − B[y]) / σ², S), S = (I + WᵀW/σ²)⁻¹ (diagonal: W's columns are
    orthogonal)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        super().__init__()
        s = 1.0 / (1.0 + (w * w).sum(0) / SIGMA**2)
        self.a, self.b = nn.Parameter(w * s / SIGMA**2), nn.Parameter(b.clone())
        self.sd = nn.Parameter(s.sqrt())

    def forward(self, x, y):
        loc = (x - self.b[y]) @ self.a
        return loc, loc * 0 + self.sd


@dataclass(frozen=True)
class LinearConfig:
    x_shape: tuple = (D,)
    likelihood: str = "gaussian"


class ConditionalLinear(GenerativeModel):
    """p(z) = N(0, I), p(x | z, y) = N(W z + B[y], σ² I), guide = the exact posterior."""

    Config = LinearConfig
    inputs = ("y",)

    def __init__(self):
        super().__init__(LinearConfig())
        g = torch.Generator().manual_seed(3)
        q, _ = torch.linalg.qr(torch.randn(D, K, generator=g))
        self.w = q * torch.tensor([2.0, 1.0])
        self.b_true = 3 * torch.randn(C, D, generator=g)
        self.decoder = LinearDecoder(self.w.T, self.b_true)
        self.encoder = PosteriorEncoder(self.w, self.b_true)

    def model(self, x, y):
        ppl_pyro.module("decoder", self.decoder)
        with ppl_pyro.plate("data", x.shape[0]):
            z = ppl_pyro.sample("z", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
            ppl_pyro.sample("x", dist.Normal(self.decoder(z, y), SIGMA).to_event(1), obs=x)

    def guide(self, x, y):
        ppl_pyro.module("encoder", self.encoder)
        with ppl_pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x, y)
            ppl_pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def exact(self, x, y) -> torch.Tensor:
        cov = self.w @ self.w.T + SIGMA**2 * torch.eye(D)
        return torch.distributions.MultivariateNormal(self.b_true[y], cov).log_prob(x)

    def posterior_mean(self, x, y) -> torch.Tensor:
        return self.encoder(x, y)[0]


def linear_data(pair: ConditionalLinear, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(C, (n,), generator=g)
    x = torch.randn(n, K, generator=g) @ pair.w.T + pair.b_true[y] + SIGMA * torch.randn(n, D, generator=g)
    return x, y


def test_elbo_iwae_and_ais_with_inputs_are_exact_on_a_conditional_linear_gaussian():
    pair = ConditionalLinear()
    x, y = linear_data(pair, 50)
    other = (y + 1) % C  # every example with another label
    truth, truth_other = pair.exact(x, y), pair.exact(x, other)
    assert float((truth - truth_other).abs().min()) > 1.0  # the label matters
    # a budget of 40 numbers: chunks of 10 examples, each with its own rows of y
    for estimate in (elbo(pair, x, 1, budget=40, inputs=(y,)), elbo(pair, x, 5, inputs=(y,)),
                     iwae(pair, x, 16, budget=40, inputs=(y,))):
        torch.testing.assert_close(estimate, truth, atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(elbo(pair, x, 1, inputs=(other,)), truth_other, atol=2e-4, rtol=1e-5)
    # AIS from the exact posterior: f_β ∝ p(z | x, y) for every β, so each log weight is log p(x | y)
    result = ais(pair, x[:12], steps=5, chains=4, init="guide", inputs=(y[:12],))
    torch.testing.assert_close(result.log_px, truth[:12], atol=2e-4, rtol=1e-5)
    # AIS from the prior: a stochastic lower bound, unbiased in w; within its standard error of the truth
    result = ais(pair, x[:12], steps=200, chains=32, init="prior", inputs=(y[:12],), seed=1)
    gap = float(result.log_px.mean() - truth[:12].mean())
    assert abs(gap) < Z * result.mean_se + 0.01, (gap, result.mean_se)


def test_nuts_per_point_sees_each_points_inputs():
    import arviz as az

    pair = ConditionalLinear()
    x, y = linear_data(pair, 30, seed=1)
    data = from_tensor(x, inputs={"y": y})
    points = [0, 3, 11, 17]
    fit = ppgen.fit(pair, data, backend="nuts", points=points, chains=4, warmup=300, samples=400, seed=2)
    assert fit.state["inputs"]["y"].tolist() == y[points].tolist()
    draws = fit.samples["z"]  # (chain, draw, point, K)
    exact = pair.posterior_mean(x[points], y[points]).detach().numpy()
    sd = pair.encoder.sd.detach().numpy()
    for p in range(len(points)):
        for j in range(K):
            ess = float(az.ess(draws[:, :, p, j]))
            assert abs(draws[:, :, p, j].mean() - exact[p, j]) < Z * sd[j] / math.sqrt(ess), (p, j)


def test_pyros_nuts_per_point_sees_each_points_inputs():
    """The fallback sampler (Pyro's NUTS, for a pair that does not lower) runs each point with its own label."""
    import arviz as az

    from ppgen.inference import mcmc

    pair = ConditionalLinear()
    x, y = linear_data(pair, 2, seed=4)
    out, _, _ = mcmc._pyro_nuts(pair, x, True, inputs=(y,), chains=2, warmup=150, samples=300, seed=0,
                                target_accept=0.8, max_tree_depth=6, dense_mass=False)
    exact = pair.posterior_mean(x, y).detach().numpy()
    sd = pair.encoder.sd.detach().numpy()
    for p in range(2):
        for j in range(K):
            draws = out["z"][:, :, p, j]
            assert abs(draws.mean() - exact[p, j]) < Z * sd[j] / math.sqrt(float(az.ess(draws))), (p, j)


# -- missing entries: a pair that masks the likelihood of a missing label -----------------------------------------
class LabelHead(Network):
    def __init__(self):
        super().__init__()
        self.z_to_x = nn.Linear(K, D)
        self.z_to_y = nn.Linear(K, C)

    def forward(self, z):
        return self.z_to_x(z), self.z_to_y(z)


class Encoder(Network):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(D, 2 * K)

    def forward(self, x):
        out = self.net(x)
        return out[..., :K], torch.exp(out[..., K:])


class PartlyLabelled(GenerativeModel):
    """p(z) p(x | z) p(y | z) with the label's likelihood masked out where y is missing (−1): an unlabelled
    example contributes log p(x, z) only (the idiom ``ppgen.data.observed`` is for)."""

    Config = LinearConfig
    inputs = ("y",)

    def __init__(self):
        super().__init__(LinearConfig())
        self.decoder, self.encoder = LabelHead(), Encoder()

    def model(self, x, y):
        ppl_pyro.module("decoder", self.decoder)
        seen = observed(y)
        with ppl_pyro.plate("data", x.shape[0]):
            z = ppl_pyro.sample("z", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
            loc, logits = self.decoder(z)
            ppl_pyro.sample("x", dist.Normal(loc, SIGMA).to_event(1), obs=x)
            ppl_pyro.sample("y", dist.Categorical(logits=logits).mask(seen), obs=y * seen)

    def guide(self, x, y):
        ppl_pyro.module("encoder", self.encoder)
        with ppl_pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            ppl_pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def test_missing_labels_reach_both_engines_and_drop_out_of_the_likelihood():
    pair = PartlyLabelled()
    g = torch.Generator().manual_seed(5)
    x, y, z = torch.randn(64, D, generator=g), torch.randint(C, (64,), generator=g), torch.randn(64, K, generator=g)
    y[::3] = -1  # a third unlabelled
    with torch.no_grad():
        joint = sites.log_joint(pair, x, {"z": z}, inputs=(y,))
        loc, logits = pair.decoder(z)
        exact = (torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
                 + torch.distributions.Normal(loc, SIGMA).log_prob(x).sum(-1)
                 + torch.where(y >= 0, torch.log_softmax(logits, -1).gather(-1, y.clamp(min=0)[:, None])[:, 0], 0.0))
    torch.testing.assert_close(joint, exact)
    data = from_tensor(x, inputs={"y": y})
    for engine in ("torch", "jax"):
        fit = ppgen.fit(PartlyLabelled(), data, backend="svi", engine=engine, epochs=3, batch_size=16, progress=False)
        assert fit.options["engine"] == engine and fit.stopped is None
        assert all(math.isfinite(row["elbo"]) for row in fit.history)


# -- the conditional VAE ---------------------------------------------------------------------------------------------
def small_cvae(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return get("cvae")(**{"x_shape": (1, 8, 8), "z_dim": 8, "hidden": (128,), **kw})


def test_cvae_elbo_equals_pyros_trace_elbo_on_the_same_draws():
    pair = small_cvae(hidden=(32,), z_dim=3)
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((16, 1, 8, 8), 0.3), generator=g)
    y = torch.randint(10, (16,), generator=g)
    pyro.set_rng_seed(7)
    ours = elbo(pair, x, 3, inputs=(y,))
    pyro.set_rng_seed(7)
    loss = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1).differentiable_loss(
        pair.model, pair.guide, x, y)
    assert ours.shape == (16,)
    # Trace_ELBO averages the particles and sums the examples: the same numbers, summed in another order
    assert float(ours.sum()) == pytest.approx(-loss.item(), rel=1e-5)


def test_cvae_log_joint_is_the_same_on_numpyro():
    """The JAX engine's model (the pair on NumPyro, networks lowered, labels as int arrays) against Pyro's, on the
    same weights, batch and z."""
    import jax.numpy as jnp
    from numpyro import handlers

    from ppgen.ppl import backend

    pair = small_cvae(hidden=(32,), z_dim=3)
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((12, 1, 8, 8), 0.4), generator=g)
    y, z = torch.randint(10, (12,), generator=g), torch.randn(12, 3, generator=g)
    torch_lp = sites.log_joint(pair, x, {"z": z}, inputs=(y,)).detach()
    with backend("numpyro"):
        model = handlers.condition(handlers.seed(pair.model, 0), {"z": jnp.asarray(z.numpy())})
        trace = handlers.trace(model).get_trace(jnp.asarray(x.numpy()), jnp.asarray(y.numpy()))
    jax_lp = sum(float(s["fn"].log_prob(s["value"]).sum()) for s in trace.values() if s["type"] == "sample")
    assert jax_lp == pytest.approx(float(torch_lp.sum()), rel=1e-5)
    shuffled = sites.log_joint(pair, x, {"z": z}, inputs=((y + 1) % 10,)).detach()
    assert float((shuffled - torch_lp).abs().max()) > 1e-2  # the label enters the decoder


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load("digits")


@pytest.fixture(scope="module")
def trained_cvae(digits):
    """The CVAE trained by the JAX engine, 30 epochs (about 3 s after compiling)."""
    pyro.clear_param_store()
    pair = small_cvae()
    fit = ppgen.fit(pair, digits, backend="svi", engine="jax", epochs=30, batch_size=64, lr=3e-3, seed=0,
                    progress=False)
    assert fit.options["engine"] == "jax" and fit.stopped is None
    return pair.eval()


def _label_gap(pair, data: Dataset) -> tuple[float, float]:
    """Held-out ELBO with each digit's own label minus with a shuffled label (paired): mean, standard error."""
    (y,) = data.inputs("test", pair.inputs)
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        return mean_se(elbo(pair, data.test, 4, inputs=(y,)) - elbo(pair, data.test, 4, inputs=(shuffled,)))


def test_labels_reach_the_jax_engine(trained_cvae, digits):
    mean, se = _label_gap(trained_cvae, digits)
    print("label gap (jax engine)", mean, se)
    assert mean > Z * se and mean > 3.0, (mean, se)


def test_labels_reach_the_torch_engine(digits):
    pair = small_cvae(seed=1)
    fit = ppgen.fit(pair, digits, backend="svi", engine="torch", epochs=4, batch_size=128, lr=1e-2, seed=0,
                    progress=False)
    assert fit.options["engine"] == "torch" and fit.stopped is None
    mean, se = _label_gap(pair.eval(), digits)
    print("label gap (torch engine)", mean, se)
    assert mean > Z * se and mean > 1.0, (mean, se)


def test_iwae_is_above_the_elbo_with_inputs(trained_cvae, digits):
    (y,) = digits.inputs("test", ("y",))
    with torch.no_grad():
        bound = iwae(trained_cvae, digits.test, 64, inputs=(y,))
        lower = elbo(trained_cvae, digits.test, 64, inputs=(y,))  # 64 draws: the same cost, far less noise
    mean, se = mean_se(bound - lower)
    print("IWAE_64 - ELBO", mean, se, "ELBO", float(lower.mean()), "IWAE_64", float(bound.mean()))
    assert mean > Z * se, (mean, se)


def test_conditional_generation_gives_the_asked_digit(trained_cvae, digits):
    from sklearn.linear_model import LogisticRegression

    grey = load("digits", binarize=None)  # the same split in grey levels, as the generated means are
    classifier = LogisticRegression(max_iter=3000).fit(grey.train.flatten(1).numpy(), grey.train_labels.numpy())
    assert classifier.score(grey.test.flatten(1).numpy(), grey.test_labels.numpy()) > 0.9
    torch.manual_seed(0)
    hits = []
    for label in range(10):
        with torch.no_grad():
            images = trained_cvae.generate(50, label)
        assert images.shape == (50, 1, 8, 8)
        hits.append(float((classifier.predict(images.flatten(1).numpy()) == label).mean()))
    # chance is 0.1 (binomial standard error 0.013 over 500 draws); measured: 1.0 for every digit
    print("conditional generation: share classified as the asked digit", np.round(hits, 2), np.mean(hits))
    assert np.mean(hits) > 0.9 and min(hits) > 0.6, hits
    both = trained_cvae.generate(20)  # no label: each class in turn
    assert both.shape == (20, 1, 8, 8)


def test_cvae_refuses_missing_or_out_of_range_labels():
    x = torch.bernoulli(torch.full((40, 1, 8, 8), 0.3))
    y = torch.arange(40) % 10
    pair = small_cvae(hidden=(16,), z_dim=2)
    unlabelled = y.clone()
    unlabelled[::4] = -1
    with pytest.raises(UserError, match="10 of 40 examples have no 'y' label.*drop the unlabelled") as err:
        ppgen.fit(pair, from_tensor(x, inputs={"y": unlabelled}), backend="svi", epochs=1, progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="build it with classes=12"):
        ppgen.fit(pair, from_tensor(x, inputs={"y": y + 2}), backend="svi", epochs=1, progress=False)
    with pytest.raises(UserError, match="takes the input column 'y'"):
        ppgen.fit(pair, from_tensor(x), backend="svi", epochs=1, progress=False)
    with pytest.raises(UserError, match="encode"):
        pair.encode(x)


def test_cvae_config_and_weights_round_trip():
    import json

    from ppgen.models import CVAE

    pair = small_cvae(hidden=(16,), z_dim=2, classes=4, label_column="digit")
    assert pair.inputs == ("digit",)
    again = CVAE.from_config(json.loads(json.dumps(pair.config_dict())))
    assert again.config == pair.config
    again.load_state_dict(pair.state_dict())
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.5))
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        torch.testing.assert_close(again.reconstruct(x, y), pair.reconstruct(x, y))


# -- collapse figures and guide SBC given the inputs -------------------------------------------------------------
class ConditionalLinearWithEncoder(ConditionalLinear):
    """The same pair with ``encode(x, y)``: the collapse figures read q from the encoder instead of a trace."""

    def encode(self, x, y):
        return self.encoder(x, y)


@pytest.mark.parametrize("make", [ConditionalLinear, ConditionalLinearWithEncoder], ids=["traced", "encoder"])
def test_collapse_figures_given_the_labels_are_exact_on_the_conditional_linear_gaussian(make):
    r"""With q(z | x, y) the exact posterior N(m, s) (per dimension j: s_j = σ²/(σ² + w_j²), m_j = s_j w_jᵀ(x − B[y])/σ²
    with w_j W's orthogonal columns), m_j has variance w_j²/(σ² + w_j²) = 1 − s_j over the data, so
    E_x KL(q(z_j | x, y) ‖ N(0, 1)) = ½(s_j + (1 − s_j) − 1 − log s_j) = −½ log s_j and the activity Var_x E_q[z_j]
    = 1 − s_j. The estimates average n examples: 4 standard errors from the per-example values (the KL) and from
    Var(sample variance) = 2 Var²/(n − 1) (the activity). With other labels q is off and the KL grows."""
    from ppgen.evaluation import report

    pair = make()
    x, y = linear_data(pair, 4000, seed=5)
    s = SIGMA**2 / (SIGMA**2 + (pair.w * pair.w).sum(0))
    figures = report(pair, x, (y,))
    loc, scale = pair.encoder(x, y)
    per_example = 0.5 * (scale**2 + loc**2 - 1 - torch.log(scale**2)).detach()
    se = per_example.std(0) / math.sqrt(len(x))
    for j in range(K):
        assert abs(figures["kl_per_dim"][j] - float(-0.5 * torch.log(s[j]))) < Z * float(se[j]) + 1e-4, figures
        activity_se = (1 - s[j]) * math.sqrt(2 / (len(x) - 1))
        assert abs(figures["activity"][j] - float(1 - s[j])) < Z * float(activity_se) + 1e-4, figures
    assert figures["active_units"] == K
    wrong = report(pair, x, ((y + 1) % C,))
    assert wrong["kl_total"] > figures["kl_total"] + 1.0
    if pair.has_encoder:  # q's aggregate over (x, y) is p(z) = N(0, I): I(x; z) = E KL = −½ Σ log s_j = 2.221
        # 4 standard errors of the estimator's per-example terms log q(z_m | x_m) − log q̂(z_m) (0.021 measured)
        assert abs(figures["mutual_information"] - float(-0.5 * torch.log(s).sum())) < Z * 0.021, figures


def test_guide_sbc_given_the_labels():
    """SBC simulates (z_i, x_i) given y_i and draws q(z | x_i, y_i): the exact posterior passes (χ² p-values above
    0.001 on 400 simulations), the same guide given the wrong labels fails."""
    from ppgen.evaluation import guide_sbc

    pair = ConditionalLinear()
    _, y = linear_data(pair, 400, seed=6)
    right = guide_sbc(pair, n=400, draws=99, seed=0, inputs=(y,))
    assert (right.pvalues > 1e-3).all(), right.table()

    class WrongLabels(ConditionalLinear):
        def guide(self, x, y):
            super().guide(x, (y + 1) % C)

    wrong = guide_sbc(WrongLabels(), n=400, draws=99, seed=0, inputs=(y,))
    assert (wrong.pvalues < 1e-3).any(), wrong.table()
