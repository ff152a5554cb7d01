"""The JAX engine of SVI (``engine="jax"``): same objective as Pyro's, weights back in torch, exact resume, stops."""

from __future__ import annotations

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
import torch
from conftest import mean_se
from numpyro.infer import SVI
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from support import assert_same_run, binary, grey_dataset, resume_at_epoch_two, tiny_vae  # noqa: E402

import ppgen
from ppgen.errors import UserError
from ppgen.evaluation import iwae
from ppgen.inference.svi_jax import networks_read_numpyro_params, scaled_model_guide, unflatten_state
from ppgen.ppl import ScaleLatents, make_elbo

pytestmark = pytest.mark.usefixtures("single_thread")




def jax_losses(pair, x: torch.Tensor, elbo: str, beta: float, draws: int, num_particles: int = 1) -> torch.Tensor:
    """``draws`` independent NumPyro losses of the pair at its current weights (vmapped over keys)."""
    model, guide = scaled_model_guide(pair)
    loss_fn = make_elbo(elbo, num_particles, backend_name="numpyro")
    xj = jnp.asarray(x.numpy())
    with networks_read_numpyro_params(pair) as nets:
        params = {name: net.jax_params() for name, net in nets.items()}
        values = jax.vmap(lambda k: loss_fn.loss(k, params, model, guide, xj, beta))(
            jax.random.split(jax.random.PRNGKey(0), draws))
    return torch.from_numpy(np.array(values))


# -- the objective ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("elbo", "beta"), [("trace", 1.0), ("trace", 0.3), ("analytic", 1.0), ("analytic", 2.5)])
def test_jax_loss_equals_pyro_loss_in_expectation(elbo, beta):
    """NumPyro's loss on the JAX side and Pyro's on the torch side estimate the same −ELBO_β:
    their means agree within 4 Monte Carlo standard errors (the draws of each side are independent)."""
    pair, x = tiny_vae(), binary(32)
    ours = jax_losses(pair, x, elbo, beta, draws=2000)
    loss_fn = {"trace": Trace_ELBO(), "analytic": TraceMeanField_ELBO()}[elbo]
    scale = ScaleLatents(beta)
    theirs = torch.tensor([loss_fn.loss(scale(pair.model), scale(pair.guide), x) for _ in range(400)])
    (m1, s1), (m2, s2) = mean_se(ours), mean_se(theirs)
    assert abs(m1 - m2) < 4 * math.hypot(s1, s2), (m1, m2, s1, s2)


def test_jax_iwae_loss_is_minus_the_iwae_bound():
    pair, x = tiny_vae(), binary(16)
    ours = jax_losses(pair, x, "iwae", 1.0, draws=400, num_particles=8)
    with torch.no_grad():
        theirs = torch.stack([iwae(pair, x, k=8).sum() for _ in range(100)])
    (m1, s1), (m2, s2) = mean_se(-ours), mean_se(theirs)
    assert abs(m1 - m2) < 4 * math.hypot(s1, s2), (m1, m2, s1, s2)


# -- weights back in torch ---------------------------------------------------------------------------


def test_trained_weights_are_copied_back_and_give_the_same_log_joint():
    pair, data = tiny_vae(), grey_dataset()
    before = copy.deepcopy(pair.state_dict())
    fit = ppgen.fit(pair, data, epochs=2, batch_size=32, lr=3e-3, engine="jax", progress=False)
    assert [r["epoch"] for r in fit.history] == [1, 2] and fit.stopped is None
    assert {"epoch", "elbo", "beta", "seconds", "wall", "images_per_s"} <= set(fit.history[0])
    assert any(not torch.equal(before[k], v) for k, v in pair.state_dict().items())  # it trained
    # the JAX side's parameters, rebuilt from the checkpointed optimizer state, are the torch weights
    model, guide = scaled_model_guide(pair)
    svi = SVI(model, guide, numpyro.optim.Adam(3e-3), make_elbo("trace", backend_name="numpyro"))
    x = data.val[:8]
    xj = jnp.asarray(x.numpy())
    with networks_read_numpyro_params(pair):
        state = svi.init(jax.random.PRNGKey(0), xj, 1.0)
    state = state._replace(optim_state=unflatten_state(fit.state["optimizer"], state.optim_state))
    params = svi.get_params(state)
    for key, value in pair.state_dict().items():
        net, _, name = key.partition(".")
        np.testing.assert_array_equal(np.asarray(params[net][name]), value.numpy(), err_msg=key)
    # log p(x, z) at a fixed z: the torch pair (Pyro) and the JAX side (NumPyro, those parameters)
    z = torch.randn(8, 3)
    with networks_read_numpyro_params(pair):
        jax_log_joint, _ = numpyro.infer.util.log_density(
            numpyro.handlers.substitute(pair.model, data=params), (xj,), {}, {"z": jnp.asarray(z.numpy())})
    with torch.no_grad():
        torch_log_joint = poutine.trace(poutine.condition(pair.model, data={"z": z})).get_trace(x).log_prob_sum()
    assert float(jax_log_joint) == pytest.approx(float(torch_log_joint), rel=1e-5)
    with torch.no_grad():  # and the check can tell other weights apart
        other = poutine.trace(poutine.condition(tiny_vae(seed=3).model, data={"z": z})).get_trace(x).log_prob_sum()
    assert float(jax_log_joint) != pytest.approx(float(other), rel=1e-3)


# -- resume ------------------------------------------------------------------------------------------

COMPARED = ("epoch", "elbo", "beta")


def test_resume_from_a_checkpoint_reproduces_an_uninterrupted_run():
    options = dict(epochs=4, batch_size=32, lr=3e-3, anneal_epochs=3, seed=11, engine="jax", progress=False)
    whole, resumed, resumed_pair, checkpoint = resume_at_epoch_two(grey_dataset(), options)
    assert checkpoint["state"]["epoch"] == 2 and all(torch.is_tensor(t) for t in checkpoint["state"]["engine"]["optimizer"])
    assert [r["beta"] for r in whole.history] == pytest.approx([0.875 / 3, 1.875 / 3, 2.875 / 3, 1.0])
    assert_same_run(whole, resumed, resumed_pair, checkpoint, COMPARED)


def test_a_checkpoint_of_the_other_engine_is_refused():
    data = grey_dataset()
    fit = ppgen.fit(tiny_vae(), data, epochs=1, batch_size=64, engine="torch", progress=False)
    with pytest.raises(UserError, match="engine"):
        ppgen.fit(tiny_vae(), data, epochs=2, batch_size=64, engine="jax", resume=fit.checkpoint())
    fit = ppgen.fit(tiny_vae(), data, epochs=1, batch_size=64, engine="jax", progress=False)
    with pytest.raises(UserError, match="engine='jax'"):
        ppgen.fit(tiny_vae(), data, epochs=2, batch_size=64, engine="torch", resume=fit.checkpoint())


def test_monitor_keeps_the_best_epoch():
    data = grey_dataset()
    scores = iter([1.0, 3.0, 2.0])
    fit = ppgen.fit(tiny_vae(), data, epochs=3, batch_size=64, engine="jax", monitor="score",
                    callback=lambda f: {"score": next(scores), "weights": copy.deepcopy(f.pair.state_dict())})
    assert fit.state["best_epoch"] == 2 and fit.history[1]["score"] == 3.0
    for k, v in fit.state["best"].items():
        assert torch.equal(v, fit.history[1]["weights"][k])


# -- stops and refusals --------------------------------------------------------------------------------


def test_nan_loss_stops_training_and_restores_the_last_good_epoch():
    data = grey_dataset()
    clean = data.train_epoch
    object.__setattr__(data, "train_epoch", lambda e: clean(e) * float("nan") if e == 2 else clean(e))
    saved = {}
    pair = tiny_vae()
    fit = ppgen.fit(pair, data, epochs=5, batch_size=32, engine="jax",
                    on_epoch_end=lambda f: saved.update(copy.deepcopy(f.pair.state_dict())))
    assert fit.stopped is not None and "nan" in fit.stopped.lower()
    assert "epoch 3, step 1" in fit.stopped and "--lr" in fit.stopped
    assert [row["epoch"] for row in fit.history] == [1, 2]
    for name, value in pair.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_huge_learning_rate_stops_cleanly():
    pair, x = tiny_vae(), binary(64)
    good = {"weights": copy.deepcopy(pair.state_dict())}
    fit = ppgen.fit(pair, x, epochs=3, batch_size=16, lr=1e30, engine="jax",
                    on_epoch_end=lambda f: good.update(weights=copy.deepcopy(pair.state_dict())))
    assert fit.stopped is not None and "became" in fit.stopped
    assert len(fit.history) < 3
    for name, value in pair.state_dict().items():
        assert torch.isfinite(value).all() and torch.equal(value, good["weights"][name]), name


@pytest.mark.parametrize(("options", "message"), [
    (dict(engine="jax", free_bits=0.5), "free bits needs engine='torch'"),
    (dict(engine="numba"), "unknown SVI engine"),
    (dict(engine="jax", elbo="iwae", num_particles=1), "num_particles >= 2"),
    (dict(engine="jax", elbo="renyi"), "unknown ELBO"),
    (dict(engine="jax", epochs=0), "positive"),
])
def test_refusals(options, message):
    with pytest.raises(UserError, match=message):
        ppgen.fit(tiny_vae(), binary(64), **{"epochs": 1, **options})


def test_cuda_is_refused_when_jax_sees_no_gpu():
    if jax.default_backend() == "gpu":
        pytest.skip("JAX sees a GPU here")
    with pytest.raises(UserError, match="no GPU"):
        ppgen.fit(tiny_vae(), binary(64), epochs=1, engine="jax", device="cuda")


def test_weights_outside_networks_are_refused():
    class Loose(ppgen.models.VAE):
        def __init__(self):
            super().__init__(x_shape=(12,), z_dim=3, hidden=(16,))
            self.offset = torch.nn.Parameter(torch.zeros(12))  # a weight no ppgen.nn network holds

    with pytest.raises(UserError, match="only weights inside ppgen.nn networks.*offset"):
        ppgen.fit(Loose(), binary(64), epochs=1, engine="jax")


def test_a_model_without_numpyro_code_is_refused():
    pair = ppgen.models.NADE(x_shape=(12,), hidden=8)  # its likelihood is a Pyro-only distribution
    with pytest.raises(UserError, match="cannot run NADE on NumPyro"):
        ppgen.fit(pair, binary(64), epochs=1, engine="jax")


# -- result quality ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_jax_and_torch_engines_train_equally_well_on_digits():
    """Held-out ELBO after 15 epochs on digits, three seeds per engine: the engines' means agree within
    4 standard errors of their difference (seed-to-seed spread plus the evaluation's Monte Carlo error)."""
    from ppgen.evaluation import elbo as heldout_elbo

    data = ppgen.data.load("digits")
    scores = {"torch": [], "jax": []}
    for engine in scores:
        for seed in range(3):
            torch.manual_seed(seed)
            pair = ppgen.models.VAE(x_shape=data.x_shape, z_dim=4, hidden=(64,))
            ppgen.fit(pair, data, epochs=15, batch_size=64, lr=3e-3, seed=seed, engine=engine, progress=False)
            torch.manual_seed(0)
            with torch.no_grad():
                scores[engine].append(torch.stack([heldout_elbo(pair, data.test).mean() for _ in range(20)]).mean())
    (m1, s1), (m2, s2) = mean_se(torch.stack(scores["jax"])), mean_se(torch.stack(scores["torch"]))
    assert abs(m1 - m2) < 4 * math.hypot(s1, s2), (scores, m1, m2, s1, s2)


# -- the command line ------------------------------------------------------------------------------


def test_cli_trains_with_the_jax_engine(tmp_path):
    import json

    from ppgen.cli import main

    out = tmp_path / "run"
    assert main(["train", "vae", "--data", "digits", "--z-dim", "4", "--hidden", "32", "--batch-size", "64",
                 "--no-progress", "--epochs", "2", "--engine", "jax", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["engine"] == "jax"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and -60 < metrics["test_elbo"] < 0  # 64 binary pixels: log 2^-64 = -44 at worst-ish
    with pytest.raises(SystemExit):
        main(["train", "vae", "--engine", "numba"])


def test_the_jax_engine_leaves_frozen_weights_alone():
    """A weight with ``requires_grad=False`` (a frozen decoder) is carried, not trained, by the JAX engine, as by
    the torch engine: after training only the encoder has moved."""
    import ppgen
    from ppgen.data import from_tensor
    from ppgen.models import VAE

    torch.manual_seed(0)
    pair = VAE((6,), z_dim=2, hidden=(8,), likelihood="gaussian")
    for p in pair.decoder.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in pair.state_dict().items()}
    data = from_tensor(torch.randn(64, 6))
    ppgen.fit(pair, data, epochs=3, batch_size=16, lr=1e-2, engine="jax", progress=False, callback=None)
    after = pair.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))


# -- auto never picks an engine that cannot run the pair ---------------------------------------------------------


class _PyroOnlyGuide(ppgen.models.base.GenerativeModel):
    """x_n ~ N(f(μ), I) with a global μ ~ N(0, I), f a ppgen.nn network; the guide q(μ) is written with Pyro's own
    primitives (as a Pyro autoguide is), so on NumPyro it draws nothing and NumPyro would silently use the prior."""

    latent_sites = ("mu",)

    def __init__(self):
        super().__init__(None)
        torch.manual_seed(0)
        self.decoder = ppgen.nn.MLPDecoder(2, (6,), (8,))

    @property
    def x_shape(self):
        return (6,)

    def model(self, x):
        from ppgen.ppl import dist
        from ppgen.ppl import pyro as ppl

        ppl.module("decoder", self.decoder)
        mu = ppl.sample("mu", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        with ppl.plate("data", x.shape[0]):
            ppl.sample("x", dist.Normal(self.decoder(mu), 1.0).to_event(1), obs=x)

    def guide(self, x):
        import pyro
        import pyro.distributions as pdist

        loc = pyro.param("q_mu_loc", torch.zeros(2))
        pyro.sample("mu", pdist.Normal(loc, 1.0).to_event(1))


def test_auto_falls_back_to_torch_when_numpyro_cannot_run_the_guide_and_jax_by_hand_is_one_line(auto_at_any_size):
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    said = []
    fit = ppgen.fit(_PyroOnlyGuide(), x, epochs=1, batch_size=32, progress=False, announce=said.append)
    assert fit.options["engine"] == "torch" and len(fit.history) == 1
    assert said == ["SVI engine torch (engine jax cannot train _PyroOnlyGuide: its guide draws no value of "
                    "the model's latent site mu on NumPyro (a guide written with Pyro's own primitives, such as a "
                    "Pyro autoguide, runs on the torch engine only))"]
    with pytest.raises(UserError) as refused:
        ppgen.fit(_PyroOnlyGuide(), x, epochs=1, batch_size=32, engine="jax", progress=False)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("engine='jax' cannot train _PyroOnlyGuide: its guide draws no value of the "
                              "model's latent site mu on NumPyro")


def test_an_error_raised_inside_jax_during_the_trial_is_a_reason_to_fall_back(auto_at_any_size):
    """A model whose code fails only when JAX traces the compiled step (a Python branch on a traced value) is
    found by the trial, before training starts."""
    class BranchesOnValues(ppgen.models.VAE):
        def model(self, x):
            if (x.sum() > 0) if not isinstance(x, torch.Tensor) else True:  # fine eagerly, not under jit
                super().model(x)

    pair = BranchesOnValues(x_shape=(12,), z_dim=3, hidden=(16,))
    said = []
    fit = ppgen.fit(pair, binary(64), epochs=1, batch_size=32, progress=False, announce=said.append)
    assert fit.options["engine"] == "torch"
    assert len(said) == 1 and said[0].startswith("SVI engine torch (engine jax cannot train vae:"
                                                 " cannot run BranchesOnValues on NumPyro (")
    with pytest.raises(UserError, match=r"^engine='jax' cannot train vae: cannot run "):
        ppgen.fit(pair, binary(64), epochs=1, batch_size=32, engine="jax", progress=False)
