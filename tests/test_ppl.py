"""One model source, two backends: log p(x, z) under Pyro equals log p(x, z) under NumPyro.

The same pair object (same torch weights) is run by Pyro on torch tensors and by
NumPyro on JAX arrays (its networks then run their lowered JAX functions), with
z fixed by conditioning. Float32 on both sides: agreement to 1e-5 relative.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
import torch
from pyro import poutine
from torch.distributions import MultivariateNormal, Normal

import ppgen
from ppgen.ppl import backend, dist, get_backend, pyro

RTOL = 1e-5
pytestmark = pytest.mark.usefixtures("single_thread")


def pyro_log_joint(pair, x: torch.Tensor, z: torch.Tensor) -> float:
    with torch.no_grad():
        trace = poutine.trace(poutine.condition(pair.model, {"z": z})).get_trace(x)
        return float(trace.log_prob_sum())


def numpyro_log_joint(pair, x: torch.Tensor, z: torch.Tensor) -> float:
    with backend("numpyro"):
        value, _ = numpyro.infer.util.log_density(
            pair.model, (jnp.asarray(x.numpy()),), {}, {"z": jnp.asarray(z.numpy())}
        )
    return float(value)


def _data(likelihood: str, x_shape, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *x_shape), generator=g)
    if likelihood == "bernoulli":
        x = torch.bernoulli(x, generator=g)
    return x


@pytest.mark.parametrize("net", ["mlp", "conv"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "cbernoulli", "gaussian"])
@pytest.mark.parametrize("skip", [False, True])
def test_vae_log_joint_agrees_across_backends(net, likelihood, skip):
    torch.manual_seed(0)
    pair = ppgen.models.VAE(x_shape=(1, 8, 8), z_dim=3, likelihood=likelihood, hidden=(16,), net=net, skip=skip)
    if likelihood == "gaussian":  # make the learned per-pixel scale non-trivial
        with torch.no_grad():
            pair.decoder.log_scale.normal_(0.0, 0.3)
    x = _data(likelihood, (1, 8, 8), 6, seed=1)
    z = torch.randn(6, 3) * 1.5
    lp_pyro = pyro_log_joint(pair, x, z)
    lp_numpyro = numpyro_log_joint(pair, x, z)
    assert np.isfinite(lp_pyro)
    assert lp_numpyro == pytest.approx(lp_pyro, rel=RTOL)
    # a different z gives a different value on both sides (the condition is honoured)
    assert abs(pyro_log_joint(pair, x, z + 1.0) - lp_pyro) > 1e-2
    assert numpyro_log_joint(pair, x, z + 1.0) == pytest.approx(pyro_log_joint(pair, x, z + 1.0), rel=RTOL)


def test_continuous_bernoulli_near_one_half_agrees():
    """The continuous Bernoulli normalizer has a Taylor branch at λ ≈ 1/2; NumPyro's copy must follow torch's."""
    torch.manual_seed(0)
    pair = ppgen.models.VAE(x_shape=(1, 4, 4), z_dim=2, likelihood="cbernoulli", hidden=(8,))
    with torch.no_grad():  # logits within ±0.004 of 0: probabilities inside (0.499, 0.501)
        pair.decoder.layers[-1].weight.mul_(1e-3)
        pair.decoder.layers[-1].bias.uniform_(-2e-3, 2e-3)
    x = _data("cbernoulli", (1, 4, 4), 5, seed=2)
    z = torch.randn(5, 2)
    with torch.no_grad():
        probs = torch.sigmoid(pair.decoder(z))
    assert ((probs > 0.499) & (probs < 0.501)).all()
    lp_pyro = pyro_log_joint(pair, x, z)
    assert numpyro_log_joint(pair, x, z) == pytest.approx(lp_pyro, rel=RTOL)


def test_ppca_log_joint_agrees_across_backends_and_with_closed_form(ppca_truth):
    t = ppca_truth
    pair = ppgen.models.PPCA(x_shape=(t["d"],), z_dim=t["k"]).set_params(t["W"], t["mu"], t["sigma"])
    x = torch.randn(7, t["d"]) * 2
    z = torch.randn(7, t["k"])
    lp_pyro = pyro_log_joint(pair, x, z)
    exact = (
        MultivariateNormal(torch.zeros(t["k"]), torch.eye(t["k"])).log_prob(z).sum()
        + Normal(z @ t["W"].T + t["mu"], t["sigma"]).log_prob(x).sum()
    )
    assert lp_pyro == pytest.approx(float(exact), rel=RTOL)
    assert numpyro_log_joint(pair, x, z) == pytest.approx(lp_pyro, rel=RTOL)


def test_guide_runs_on_numpyro_with_the_same_density():
    """The guide is one source too: log q(z|x) at a fixed z agrees across backends."""
    torch.manual_seed(0)
    pair = ppgen.models.VAE(x_shape=(1, 4, 4), z_dim=2, hidden=(8,))
    x = _data("bernoulli", (1, 4, 4), 5, seed=3)
    z = torch.randn(5, 2)
    with torch.no_grad():
        lq_pyro = float(poutine.trace(poutine.condition(pair.guide, {"z": z})).get_trace(x).log_prob_sum())
    with backend("numpyro"):
        lq_numpyro, _ = numpyro.infer.util.log_density(
            pair.guide, (jnp.asarray(x.numpy()),), {}, {"z": jnp.asarray(z.numpy())}
        )
    assert float(lq_numpyro) == pytest.approx(lq_pyro, rel=RTOL)


def test_backend_dispatch_and_nesting():
    import numpyro.distributions as nd
    import pyro as real_pyro
    import pyro.distributions as pd

    assert get_backend() == "pyro"
    assert pyro.sample is real_pyro.sample and dist.Normal is pd.Normal
    with backend("numpyro"):
        assert get_backend() == "numpyro"
        assert pyro.sample is numpyro.sample and dist.Normal is nd.Normal
        with backend("pyro"):
            assert dist.Normal is pd.Normal
        assert dist.Normal is nd.Normal
    assert get_backend() == "pyro"


def test_backend_restored_after_an_exception():
    with pytest.raises(RuntimeError), backend("numpyro"):
        raise RuntimeError("boom")
    assert get_backend() == "pyro"


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="unknown backend 'stan'"), backend("stan"):
        pass
    assert get_backend() == "pyro"


def test_missing_attribute_names_the_backend():
    with pytest.raises(AttributeError, match="numpyro"), backend("numpyro"):
        dist.NoSuchDistribution  # noqa: B018
