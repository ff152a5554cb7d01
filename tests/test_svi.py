"""The SVI backend: β schedule, free bits, NaN handling, exact resume, input checks."""

from __future__ import annotations

import copy
import dataclasses
import math
import re

import pyro
import pyro.distributions as pdist
import pytest
import torch
from conftest import mean_se
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from support import assert_same_run, binary, grey_dataset, resume_at_epoch_two, tiny_vae  # noqa: E402
from torch.distributions import Bernoulli, Normal, kl_divergence

import ppgen
from ppgen.errors import UserError
from ppgen.evaluation import elbo, iwae
from ppgen.inference.options import OptionError, SVIOptions, unsupported
from ppgen.inference.svi import beta_at, choose_engine
from ppgen.ppl import FreeBitsELBO, ScaleLatents, make_elbo

pytestmark = pytest.mark.usefixtures("single_thread")


def fit_torch(*args, **options):
    """``ppgen.fit`` on the torch engine: this module tests Pyro's side (test_svi_jax.py the JAX side)."""
    return ppgen.fit(*args, **{"engine": "torch", **options})




# -- β / KL annealing ---------------------------------------------------------------------------


def test_beta_schedule_values():
    assert beta_at(0, 0, 10, beta=1.0, anneal_epochs=0) == 1.0
    assert beta_at(3, 7, 10, beta=4.0, anneal_epochs=0) == 4.0
    assert beta_at(0, 0, 10, beta=1.0, anneal_epochs=2) == 0.0
    assert beta_at(0, 5, 10, beta=1.0, anneal_epochs=2) == pytest.approx(0.25)
    assert beta_at(1, 0, 10, beta=1.0, anneal_epochs=2) == pytest.approx(0.5)
    assert beta_at(1, 5, 10, beta=2.0, anneal_epochs=2) == pytest.approx(1.5)
    assert beta_at(2, 0, 10, beta=2.0, anneal_epochs=2) == 2.0
    assert beta_at(9, 3, 10, beta=2.0, anneal_epochs=2) == 2.0  # capped at β
    values = [beta_at(e, s, 4, 1.0, 3) for e in range(4) for s in range(4)]
    assert values == sorted(values)  # non-decreasing


def _log_terms(pair, x, seed):
    """Sum of log p(x|z), log p(z) and log q(z|x) at the z the guide draws with ``seed``."""
    torch.manual_seed(seed)
    guide_tr = poutine.trace(pair.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(pair.model, trace=guide_tr)).get_trace(x)
    lq = guide_tr.nodes["z"]["fn"].log_prob(guide_tr.nodes["z"]["value"]).sum()
    return model_tr.nodes["x"]["fn"].log_prob(x).sum(), model_tr.nodes["z"]["fn"].log_prob(
        guide_tr.nodes["z"]["value"]).sum(), lq


@pytest.mark.parametrize("beta", [0.0, 0.3, 2.5])
def test_scale_latents_multiplies_only_the_latent_terms(beta):
    pair, x = tiny_vae(), binary(16)
    log_lik, log_prior, log_q = _log_terms(pair, x, seed=4)
    torch.manual_seed(4)
    scale = ScaleLatents(beta)
    loss = Trace_ELBO().differentiable_loss(scale(pair.model), scale(pair.guide), x)
    want = -(log_lik + beta * (log_prior - log_q))
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-4)


def test_annealed_fit_records_the_schedule():
    data = grey_dataset()
    fit = fit_torch(tiny_vae(), data, epochs=3, batch_size=64, anneal_epochs=2, beta=1.0, progress=False)
    steps = 256 // 64
    for row in fit.history:  # each row records β at the epoch's last step
        assert row["beta"] == pytest.approx(beta_at(row["epoch"] - 1, steps - 1, steps, 1.0, 2))
    assert fit.history[-1]["beta"] == 1.0


# -- free bits -------------------------------------------------------------------------------------


def _free_bits_by_hand(pair, x, free_bits, seed, beta=1.0):
    """−Σ log p(x|z) + β B Σ_j max(λ, mean_b KL(q(z_j|x_b) ‖ N(0, 1)))."""
    log_lik, _, _ = _log_terms(pair, x, seed)
    loc, scale = pair.encoder(x)
    kl = kl_divergence(Normal(loc, scale), Normal(0.0, 1.0)).mean(0)
    return -log_lik + beta * len(x) * torch.clamp(kl, min=free_bits).sum(), kl


def test_free_bits_floors_each_dimension_kl():
    pair, x = tiny_vae(), binary(16)
    with torch.no_grad():  # spread the dimensions' KLs apart
        pair.encoder.loc.bias.copy_(torch.tensor([0.0, 1.0, 2.5]))
    kl = _free_bits_by_hand(pair, x, 0.0, seed=1)[1].detach()
    floor = float(kl.median())
    assert (kl < floor).sum() == 1 and (kl > floor).sum() == 1  # one dimension floored, one not
    for lam in (floor, 0.5 * float(kl.min()), 2 * float(kl.max())):
        want, _ = _free_bits_by_hand(pair, x, lam, seed=1)
        torch.manual_seed(1)
        got = FreeBitsELBO(lam).differentiable_loss(pair.model, pair.guide, x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    # with every dimension floored, the encoder gets no gradient from the KL: only through z
    torch.manual_seed(1)
    FreeBitsELBO(2 * float(kl.max())).differentiable_loss(pair.model, pair.guide, x).backward()
    with_floor = pair.encoder.loc.weight.grad.clone()
    pair.zero_grad()
    log_lik, _, _ = _log_terms(pair, x, seed=1)
    (-log_lik).backward()
    torch.testing.assert_close(with_floor, pair.encoder.loc.weight.grad, rtol=1e-4, atol=1e-5)


def test_free_bits_zero_is_the_analytic_kl_elbo_and_respects_beta():
    pair, x = tiny_vae(), binary(16)
    torch.manual_seed(2)
    got = FreeBitsELBO(0.0).differentiable_loss(pair.model, pair.guide, x)
    torch.manual_seed(2)
    want = TraceMeanField_ELBO().differentiable_loss(pair.model, pair.guide, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    scale = ScaleLatents(0.25)
    torch.manual_seed(3)
    got = FreeBitsELBO(0.05).differentiable_loss(scale(pair.model), scale(pair.guide), x)
    want, _ = _free_bits_by_hand(pair, x, 0.05, seed=3, beta=0.25)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_make_elbo_picks_the_objective():
    assert isinstance(make_elbo("trace", 1, 1), Trace_ELBO)
    assert isinstance(make_elbo("analytic", 1, 1), TraceMeanField_ELBO)
    assert isinstance(make_elbo("analytic", 1, 1, free_bits=0.1), FreeBitsELBO)
    with pytest.raises(UserError, match="num_particles >= 2"):
        make_elbo("iwae", 1, 1)
    with pytest.raises(UserError, match="unknown ELBO 'renyi'"):
        make_elbo("renyi", 1, 1)


def test_iwae_objective_is_the_iwae_bound():
    """The training objective "iwae" (Pyro's RenyiELBO, α = 0) estimates the same bound as evaluation's iwae."""
    pair, x = tiny_vae(), binary(32)
    loss_fn = make_elbo("iwae", 8, pair.max_plate_nesting)
    with torch.no_grad():
        losses = torch.tensor([loss_fn.loss(pair.model, pair.guide, x) for _ in range(40)])
        ours = torch.stack([iwae(pair, x, k=8).sum() for _ in range(40)])
    (m1, s1), (m2, s2) = mean_se(-losses), mean_se(ours)
    assert abs(m1 - m2) < 4 * math.hypot(s1, s2), (m1, m2, s1, s2)


# -- NaN handling --------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_nan_loss_stops_training_and_restores_the_last_good_epoch():
    pair, data = tiny_vae(), grey_dataset()
    saved, at_nan = {}, {}
    trigger = {"armed": False, "calls": 0}

    def poison(module, inputs, output):
        if trigger["armed"]:
            trigger["calls"] += 1
            if trigger["calls"] == 3:  # the third training step of epoch 3: two updates already made
                at_nan.update(copy.deepcopy(pair.state_dict()))
                return output * float("nan")
        return output

    def on_epoch_end(fit):
        if fit.state["epoch"] == 2:
            saved.update(copy.deepcopy(pair.state_dict()))
            trigger["armed"] = True

    pair.decoder.register_forward_hook(poison)
    fit = fit_torch(pair, data, epochs=5, batch_size=32, on_epoch_end=on_epoch_end, progress=False)
    assert fit.stopped is not None and "nan" in fit.stopped.lower()
    assert "epoch 3, step 3" in fit.stopped and "--lr" in fit.stopped
    assert [row["epoch"] for row in fit.history] == [1, 2]
    assert any(not torch.equal(at_nan[k], saved[k]) for k in saved)  # training had moved on ...
    for name, value in pair.state_dict().items():  # ... and was rolled back to epoch 2
        assert torch.equal(value, saved[name]), name
    assert all(torch.isfinite(v).all() for v in pair.state_dict().values())


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_huge_learning_rate_stops_cleanly():
    """lr = 1e30 sends the weights to inf within a step or two; training stops and keeps the last good weights."""
    pair, x = tiny_vae(), binary(64)
    good = {"weights": copy.deepcopy(pair.state_dict())}
    fit = fit_torch(pair, x, epochs=3, batch_size=16, lr=1e30, progress=False,
                    on_epoch_end=lambda f: good.update(weights=copy.deepcopy(pair.state_dict())))
    assert fit.stopped is not None and "loss became" in fit.stopped
    assert len(fit.history) < 3
    for name, value in pair.state_dict().items():
        assert torch.isfinite(value).all() and torch.equal(value, good["weights"][name]), name


# -- resume ------------------------------------------------------------------------------------------

COMPARED = ("epoch", "elbo", "beta", "val_elbo")


def test_resume_from_a_checkpoint_reproduces_an_uninterrupted_run():
    options = dict(epochs=4, batch_size=32, lr=3e-3, anneal_epochs=3, seed=11, progress=False, engine="torch")
    whole, resumed, resumed_pair, checkpoint = resume_at_epoch_two(grey_dataset(), options)
    assert checkpoint["state"]["epoch"] == 2 and len(checkpoint["history"]) == 2
    assert_same_run(whole, resumed, resumed_pair, checkpoint, COMPARED)


def test_a_checkpoint_kept_in_memory_is_a_snapshot():
    """Training on must not change a checkpoint already taken, and resuming from it in memory is exact too."""
    data = grey_dataset()
    options = dict(epochs=3, batch_size=32, lr=3e-3, seed=5, progress=False)
    kept = {}

    def keep(fit):
        if fit.state["epoch"] == 1:
            kept["checkpoint"] = fit.checkpoint()
            kept["weights"] = copy.deepcopy(fit.pair.state_dict())

    whole = fit_torch(tiny_vae(), data, on_epoch_end=keep, **options)
    checkpoint = kept["checkpoint"]
    assert len(checkpoint["history"]) == 1 and checkpoint["state"]["epoch"] == 1
    assert all(torch.equal(v, kept["weights"][k]) for k, v in checkpoint["model"].items())
    resumed = fit_torch(tiny_vae(seed=7), data, resume=checkpoint, **options)
    assert [r["elbo"] for r in resumed.history] == [r["elbo"] for r in whole.history]
    assert all(torch.equal(v, resumed.pair.state_dict()[k]) for k, v in whole.pair.state_dict().items())


def test_same_seed_same_run_other_seed_other_run():
    data = grey_dataset()
    a = fit_torch(tiny_vae(), data, epochs=2, batch_size=64, seed=1, progress=False)
    b = fit_torch(tiny_vae(), data, epochs=2, batch_size=64, seed=1, progress=False)
    c = fit_torch(tiny_vae(), data, epochs=2, batch_size=64, seed=2, progress=False)
    assert [r["elbo"] for r in a.history] == [r["elbo"] for r in b.history]
    assert [r["elbo"] for r in a.history] != [r["elbo"] for r in c.history]


def test_monitor_restores_the_best_validation_epoch():
    data = grey_dataset()
    fit = fit_torch(tiny_vae(), data, epochs=4, batch_size=32, lr=3e-3, monitor="val_elbo", progress=False)
    scores = [row["val_elbo"] for row in fit.history]
    assert fit.state["best_epoch"] == 1 + max(range(len(scores)), key=scores.__getitem__)
    for name, value in fit.pair.state_dict().items():
        assert torch.equal(value, fit.state["best"][name])


def test_training_learns_the_correlations():
    """The data have two latent factors; a trained VAE beats the best independent-pixel model on held-out data.

    Per example, paired on the same validation x: ELBO(x) − log Π_i Bernoulli(x_i; p̂_i), with p̂ the
    training frequencies; its mean must exceed 4 standard errors (a lower bound beating an exact likelihood).
    """
    data = grey_dataset(n=512)
    fit = fit_torch(tiny_vae(), data, epochs=20, batch_size=32, lr=1e-2, progress=False)
    assert fit.stopped is None and len(fit.history) == 20
    assert all(row["images_per_s"] > 0 and row["wall"] >= row["seconds"] for row in fit.history)
    p = data.train_epoch(0).mean(0).clamp(1e-3, 1 - 1e-3)
    independent = Bernoulli(probs=p).log_prob(data.val).sum(1)
    torch.manual_seed(0)
    with torch.no_grad():
        m, se = mean_se(elbo(fit.pair, data.val, num_samples=50) - independent)
    assert m > 4 * se, (m, se)


# -- input checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: binary(20, d=10), r"shape \(10,\) per example but the model expects \(12,\)"),
        (lambda: binary(20).reshape(20, 3, 4), "reshape the data"),
        (lambda: binary(20).index_put_((torch.tensor([3]), torch.tensor([1])), torch.tensor(float("nan"))),
         "NaN or infinite values in 1 example"),
        (lambda: torch.rand(20, 12), "not binary but the likelihood is Bernoulli; binarize it"),
        (lambda: torch.zeros(0, 12), "at least one example"),
    ],
    ids=["wrong-width", "wrong-rank", "nan", "grey-under-bernoulli", "empty"],
)
def test_bad_training_data_raises_user_error(make, message):
    with pytest.raises(UserError, match=message):
        fit_torch(tiny_vae(), make(), epochs=1, progress=False)


def test_continuous_bernoulli_needs_the_unit_interval():
    pair = tiny_vae(likelihood="cbernoulli")
    fit_torch(pair, torch.rand(32, 12), epochs=1, batch_size=16, progress=False)  # grey levels are fine
    with pytest.raises(UserError, match=r"outside \[0, 1\]"):
        fit_torch(pair, torch.rand(32, 12) * 2, epochs=1, progress=False)


@pytest.mark.parametrize(
    "options, message",
    [(dict(epochs=0), "positive"), (dict(lr=-1.0), "positive"), (dict(elbo="nope"), "unknown ELBO"),
     (dict(backend="mcmc-magic"), "unknown backend")],
)
def test_bad_options_raise_user_error(options, message):
    with pytest.raises(UserError, match=message):
        fit_torch(tiny_vae(), binary(32), progress=False, **options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when there is no GPU")
def test_cuda_without_a_gpu_raises_user_error():
    with pytest.raises(UserError, match="no CUDA GPU"):
        fit_torch(tiny_vae(), binary(32), device="cuda", progress=False)


def test_observation_log_prob_matches_torch():
    """Sanity for the hand computations above: the model's x site is Bernoulli(logits=decoder(z))."""
    pair, x = tiny_vae(), binary(4)
    torch.manual_seed(0)
    log_lik, _, _ = _log_terms(pair, x, seed=0)
    torch.manual_seed(0)
    z = poutine.trace(pair.guide).get_trace(x).nodes["z"]["value"]
    torch.testing.assert_close(log_lik, Bernoulli(logits=pair.decoder(z)).log_prob(x).sum())


@pytest.mark.parametrize("engine", ["torch", "jax"])
def test_a_batch_larger_than_the_data_is_the_whole_set_and_the_elbo_is_per_example(engine):
    """Issue 10, cause 12: with --batch-size above the training set, one step sees every example once, and the
    epoch's ELBO is divided by the examples seen (it was divided by the batch size: −0.56 against −39.85).
    The first epoch's figure is the per-example ELBO at the initial weights, one draw per example: it must
    agree with a many-draw estimate within 4 standard errors of a one-draw mean."""
    from ppgen.evaluation import elbo

    data, pair = grey_dataset(n=200), tiny_vae(seed=3)
    start = copy.deepcopy(pair)
    fit = ppgen.fit(pair, data, epochs=1, batch_size=100_000, engine=engine, progress=False, callback=None)
    row = fit.history[0]
    assert round(row["images_per_s"] * row["seconds"]) == 200
    x = data.train_epoch(0)
    with torch.no_grad():
        torch.manual_seed(0)
        reference = float(elbo(start, x, num_samples=50).mean())
        one_draw = elbo(start, x, num_samples=1)
    se = float(one_draw.std() / math.sqrt(len(x)))
    assert abs(row["elbo"] - reference) < 4 * se, (row["elbo"], reference, se)


def test_all_finite_sees_every_nan_and_infinity_and_not_an_overflowing_sum():
    """The torch engine's end-of-epoch weight check: a sum decides the common case, element by element only when
    the sum is not finite (finite weights whose sum overflows float32 are still finite)."""
    from ppgen.inference.svi import all_finite

    ok = [torch.randn(3, 4), torch.randn(5, dtype=torch.float64)]
    assert all_finite(ok) and all_finite([])
    for bad in (float("nan"), float("inf"), -float("inf")):
        w = torch.randn(3, 4)
        w[1, 2] = bad
        assert not all_finite([ok[0], w])
    assert all_finite([torch.full((4,), 3e38)])  # its sum overflows float32, each element is finite


# -- one log-density rule: free bits weighs a site as ppgen.sites does ------------------------------------------


def _observation_masked(pair, keep):
    """The tiny VAE's model with only its observation masked (``poutine.mask``): rows ~keep add no log p(x|z)."""
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pdist.Normal(0.0, 1.0).expand([3]).to_event(1))
            with poutine.mask(mask=keep):
                pyro.sample("x", pdist.Bernoulli(logits=pair.decoder(z)).to_event(1), obs=x)

    return model


def test_free_bits_zero_applies_an_observations_mask_as_pyro_does():
    """λ = 0 is Pyro's TraceMeanField_ELBO exactly (same draw), also with a masked observation: the mask is applied."""
    pair, x = tiny_vae(), binary(16)
    keep = torch.arange(16) % 3 != 0
    model = _observation_masked(pair, keep)
    torch.manual_seed(5)
    got = FreeBitsELBO(0.0).differentiable_loss(model, pair.guide, x)
    torch.manual_seed(5)
    want = TraceMeanField_ELBO().differentiable_loss(model, pair.guide, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    torch.manual_seed(5)
    unmasked = TraceMeanField_ELBO().differentiable_loss(_observation_masked(pair, torch.ones(16, dtype=torch.bool)),
                                                         pair.guide, x)
    assert abs(float((unmasked - got).detach())) > 1.0  # the masked rows' log p(x|z) is really left out


class _FixedDrawNormal(pdist.Normal):
    """N(loc, scale) whose reparameterized draw is loc + scale · eps for a given eps: the same z for the same rows."""

    def __init__(self, loc, scale, eps):
        super().__init__(loc, scale)
        self.eps = eps

    def expand(self, batch_shape, _instance=None):
        assert tuple(batch_shape) == tuple(self.batch_shape)  # the plate's shape already
        return self

    def rsample(self, sample_shape=()):
        return self.loc + self.scale * self.eps


def _guide_drawing(pair, eps):
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            loc, scale = pair.encoder(x)
            pyro.sample("z", _FixedDrawNormal(loc, scale, eps).to_event(1))

    return guide


@pytest.mark.parametrize("lam", [0.0, 0.3, 5.0])
def test_free_bits_with_masked_examples_is_free_bits_with_those_examples_removed(lam):
    """Masking whole examples (model and guide under ``poutine.mask``) gives the loss of the batch without them,
    floor included: a masked example counts neither in a dimension's mean KL nor in the floor's weight. The draws
    of z are fixed (the same eps per row), so the two losses are equal up to float rounding."""
    pair, x = tiny_vae(), binary(16)
    with torch.no_grad():  # spread the dimensions' KLs apart, so λ = 0.3 floors some and not others
        pair.encoder.loc.bias.copy_(torch.tensor([0.0, 1.0, 2.5]))
    keep = torch.arange(16) % 3 != 0
    eps = torch.randn(16, 3, generator=torch.Generator().manual_seed(7))
    loss = FreeBitsELBO(lam).differentiable_loss
    masked = loss(poutine.mask(pair.model, mask=keep), poutine.mask(_guide_drawing(pair, eps), mask=keep), x)
    removed = loss(pair.model, _guide_drawing(pair, eps[keep]), x[keep])
    torch.testing.assert_close(masked, removed, rtol=1e-5, atol=1e-4)
    everything = loss(pair.model, _guide_drawing(pair, eps), x)
    assert abs(float((everything - masked).detach())) > 1.0  # the masked rows really count when unmasked


# -- options reach the engines as one object; each option says which engines run it ---------------------------


def test_a_torch_only_option_is_declared_once_and_every_check_reads_the_declaration():
    torch_only = {f.name for f in dataclasses.fields(SVIOptions) if f.metadata.get("engines") == ("torch",)}
    assert torch_only == {"free_bits", "mcmc_steps", "aggressive_epochs"}
    for name, value in (("free_bits", 0.5), ("mcmc_steps", 1), ("aggressive_epochs", 1.0)):
        options = SVIOptions(**{name: value})
        assert unsupported(options, "torch") == [] and unsupported(SVIOptions(), "jax") == []
        [(option, reason)] = unsupported(options, "jax")
        assert option == name and "needs engine='torch' because" in reason
        assert choose_engine(tiny_vae(), options) == ("torch", reason)  # auto
        with pytest.raises(OptionError, match=f"{re.escape(reason)}; use engine='torch'") as refused:
            SVIOptions(engine="jax", **{name: value})
        assert refused.value.option == name and refused.value.fix == {"engine": "torch"}


def test_options_come_as_one_object_or_as_keywords_with_the_same_run():
    data = grey_dataset()
    common = dict(epochs=2, batch_size=64, lr=3e-3, engine="torch", seed=4)
    by_keywords = fit_torch(tiny_vae(), data, progress=False, **common)
    by_object = ppgen.fit(tiny_vae(), data, options=SVIOptions(**common), progress=False)
    def figures(fit):  # the training and the validation ELBO (seeded by the options' seed) of every epoch
        return [(r["elbo"], r["val_elbo"]) for r in fit.history]

    assert figures(by_object) == figures(by_keywords)
    replaced = ppgen.fit(tiny_vae(), data, options=SVIOptions(**{**common, "lr": 1.0}), lr=3e-3, progress=False)
    assert figures(replaced) == figures(by_keywords)  # keywords replace the object's fields
    assert by_object.options == by_keywords.options
    with pytest.raises(UserError, match="options must be a SVIOptions"):
        ppgen.fit(tiny_vae(), data, options=dict(common))
    with pytest.raises(UserError, match="not an option of SVIOptions"):
        ppgen.fit(tiny_vae(), data, options=SVIOptions(**common), learning_rate=1e-3)
    with pytest.raises(UserError, match="takes its settings as keywords"):
        ppgen.fit(tiny_vae(), data, backend="nuts", options=SVIOptions())
