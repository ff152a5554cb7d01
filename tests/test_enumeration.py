"""Discrete latents summed out exactly: the enumerated ELBO on both engines, against the brute-force sum over the
component of a small Gaussian mixture (tests/discrete_pairs.py) and against Pyro's TraceEnum_ELBO; its gradient
unbiased; a discrete site left to sampling named in one line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

import ppgen
from ppgen.errors import UserError
from ppgen.ppl import discrete_sites, make_elbo
from tests.discrete_pairs import (
    MEANS,
    NOISE,
    PRIOR_SCALE,
    WEIGHTS,
    ComponentMixture,
    LabelGuideMixture,
    label_guide_elbo,
    log_marginal,
    log_normal,
    mixture_data,
    ready,
)

X = mixture_data(40)


def _ready(pair, x=X):
    return ready(pair, x)


def test_discrete_sites_are_found_with_their_marks():
    x = X[:2]
    assert discrete_sites(ComponentMixture(), x).enumerated == {"c": "parallel"}
    assert discrete_sites(ComponentMixture(), x).model_side == ("c",)
    guide_side = discrete_sites(LabelGuideMixture(), x)
    assert guide_side.guide_side == {"c"} and guide_side.model_side == ()
    sampled = discrete_sites(ComponentMixture(enumerate=""), x)
    assert sampled.enumerated == {} and sampled.sampled == ("c",)
    assert "'c'" in sampled.sampled_notice() and "enumerate" in sampled.sampled_notice()


def test_model_side_enumerated_elbo_is_the_brute_force_sum_on_the_same_draws():
    """TraceEnum_ELBO (make_elbo(enumerate=True), what the torch engine trains) with c in the model only: the loss
    at one draw z ~ q(z|x) is −Σ_n [log Σ_c π_c N(x_n; μ_c + z_n, σ²) + log N(z_n; 0, s²) − log q(z_n|x_n)]."""
    pair = _ready(ComponentMixture())
    loss_fn = make_elbo("trace", 1, pair.max_plate_nesting, backend_name="pyro", enumerate=True)
    assert isinstance(loss_fn, TraceEnum_ELBO)
    torch.manual_seed(3)
    loss = float(loss_fn.differentiable_loss(pair.model, pair.guide, X).detach())
    torch.manual_seed(3)
    q = poutine.trace(pair.guide).get_trace(X).nodes["z"]
    z = q["value"].detach()
    means = torch.tensor(MEANS)
    joint = torch.logsumexp(torch.tensor(WEIGHTS).log() + log_normal(X[:, None, :], means + z[:, None, :], NOISE), -1)
    brute = joint + log_normal(z, 0.0, PRIOR_SCALE) - q["fn"].log_prob(z).detach()
    assert loss == pytest.approx(-float(brute.sum()), rel=1e-5)


def test_guide_side_enumerated_elbo_is_exact_on_torch_and_jax():
    """c drawn by the guide, q(z | x, c) the exact p(z | x, c): every draw gives the same value, the closed form
    Σ_c q(c|x) [log p(x, c) − log q(c|x)] (= log p(x) at τ = 1). Torch (Pyro's TraceEnum_ELBO) and JAX (NumPyro's,
    through funsor, on the pair lowered as the JAX engine runs it) both equal it within float rounding."""
    import jax
    import jax.numpy as jnp
    import numpyro
    from numpyro.infer import SVI

    from ppgen.inference.svi_jax import scaled_model_guide

    for temper in (1.0, 0.4):
        pair = _ready(LabelGuideMixture(temper=temper))
        exact = float(label_guide_elbo(X, temper).sum())
        if temper == 1.0:
            assert exact == pytest.approx(float(log_marginal(X).sum()), rel=1e-6)
        torch_loss = make_elbo("trace", 1, 1, backend_name="pyro", enumerate=True).differentiable_loss(
            pair.model, pair.guide, X)
        assert float(torch_loss.detach()) == pytest.approx(-exact, rel=1e-5)
        model, guide = scaled_model_guide(pair, scaled=False)
        svi = SVI(model, guide, numpyro.optim.Adam(0.01), make_elbo("trace", 1, 1, backend_name="numpyro",
                                                                   enumerate=True))
        xj = jnp.asarray(X.numpy())
        state = svi.init(jax.random.PRNGKey(0), xj, 1.0)
        assert float(svi.evaluate(state, xj, 1.0)) == pytest.approx(-exact, rel=1e-5)


@pytest.mark.parametrize("engine", ["torch", "jax"])
def test_enumerated_elbo_gradient_is_unbiased(engine):
    """q(c|x) tempered (τ = 0.5) and q(z|x,c) widened (κ = 1.5): the gradient of TraceEnum_ELBO's loss (Pyro's;
    NumPyro's on the pair as the JAX engine runs it) with respect to the component means (shared by model and
    guide), averaged over R = 200 seeded draws, is within 4 SE of the gradient of the closed-form ELBO; SE = the
    sample standard deviation of the R draws / √R, per coordinate (6 coordinates)."""
    pair = _ready(LabelGuideMixture(temper=0.5, widen=1.5))
    draws = _torch_gradients(pair, 200) if engine == "torch" else _jax_gradients(pair, 200)
    exact_means = torch.tensor(MEANS, requires_grad=True)
    (exact,) = torch.autograd.grad(-label_guide_elbo(X, 0.5, 1.5, means=exact_means).sum(), [exact_means])
    se = draws.std(0) / math.sqrt(len(draws))
    assert bool((se > 0).all())
    assert ((draws.mean(0) - exact.flatten().double()).abs() <= 4 * se).all(), (draws.mean(0), exact.flatten(), se)


def _torch_gradients(pair, draws: int) -> torch.Tensor:
    means = dict(pair.named_parameters())["pyro_params.means"]
    loss_fn = make_elbo("trace", 1, 1, backend_name="pyro", enumerate=True)
    torch.manual_seed(0)
    out = []
    for _ in range(draws):
        (grad,) = torch.autograd.grad(loss_fn.differentiable_loss(pair.model, pair.guide, X), [means])
        out.append(grad.flatten())
    return torch.stack(out).double()


def _jax_gradients(pair, draws: int) -> torch.Tensor:
    import jax
    import jax.numpy as jnp

    from ppgen.inference.svi_jax import scaled_model_guide

    model, guide = scaled_model_guide(pair, scaled=False)
    loss_fn = make_elbo("trace", 1, 1, backend_name="numpyro", enumerate=True)
    xj = jnp.asarray(X.numpy())
    params = {"means": jnp.asarray(MEANS), "weights": jnp.asarray(WEIGHTS)}
    grad = jax.jit(jax.grad(lambda p, key: loss_fn.loss(key, p, model, guide, xj, 1.0)))
    keys = jax.random.split(jax.random.PRNGKey(1), draws)
    return torch.as_tensor(np.stack([np.asarray(grad(params, k)["means"]).ravel() for k in keys])).double()


def test_both_engines_train_the_enumerated_elbo_and_a_sampled_site_is_named(capsys):
    """One epoch on each engine (the JAX engine's choice is not a fall-back), the per-example ELBO it reports
    within the range the brute-force log p(x) allows; a site left to sampling trains, with its one line."""
    x = mixture_data(200)
    bound = float(log_marginal(x).mean())
    for engine in ("torch", "jax"):
        fit = ppgen.fit(LabelGuideMixture(), x, engine=engine, epochs=1, batch_size=100, lr=1e-3, seed=0,
                        progress=False)
        assert fit.history[-1]["elbo"] == pytest.approx(bound, abs=0.05)  # the exact guide: ELBO = log p(x)
    ppgen.fit(ComponentMixture(enumerate=""), x, engine="torch", epochs=1, batch_size=100, progress=False)
    lines = [line for line in capsys.readouterr().err.splitlines() if "sampled" in line]
    assert len(lines) == 1 and "'c'" in lines[0]
    assert np.isfinite(bound)


def test_model_side_sequential_enumeration_is_one_line():
    with pytest.raises(UserError, match="mark it infer=.*parallel"):
        ppgen.fit(ComponentMixture(enumerate="sequential"), X, engine="torch", epochs=1, progress=False)


class _HandlerMarked(ComponentMixture):
    """The mixture with its component left unmarked in pyro.sample and marked by Pyro's config_enumerate wrapper."""

    name = "test_handler_marked_mixture"

    def model(self, x):
        from pyro.infer import config_enumerate

        config_enumerate(lambda x: ComponentMixture.model(self, x))(x)


def test_a_pyro_handler_mark_trains_on_torch_saying_why(capsys, auto_at_any_size):
    """NumPyro does not see Pyro's config_enumerate: engine='auto' trains on torch (where the mark counts) and the
    one line says to mark the site in pyro.sample."""
    fit = ppgen.fit(_HandlerMarked(enumerate=""), X, engine="auto", epochs=1, batch_size=20, progress=False)
    assert fit.options["engine"] == "torch"
    assert "infer={'enumerate': 'parallel'}" in capsys.readouterr().err
