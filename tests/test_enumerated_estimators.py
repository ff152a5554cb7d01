"""The per-example estimators (ELBO, IWAE, AIS) sum enumerated sites exactly: checked against the brute-force sum
over the component of a small Gaussian mixture (tests/discrete_pairs.py), on the same draws where z is sampled."""

from __future__ import annotations

import math

import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from ppgen import sites
from ppgen.evaluation import elbo, iwae
from ppgen.evaluation.ais import ais
from ppgen.inference.hmc import LatentTarget
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

X = mixture_data(30)


def _ready(pair, x=X):
    return ready(pair, x)


def _mixture_log_likelihood(z):
    """log Σ_c π_c N(x; μ_c + z, σ² I) for z shaped (..., N, d): the brute-force sum over c."""
    terms = torch.tensor(WEIGHTS).log() + log_normal(X[:, None, :], torch.tensor(MEANS) + z[..., None, :], NOISE)
    return torch.logsumexp(terms, -1)


def test_guide_side_elbo_and_iwae_are_the_exact_sums():
    """c drawn by the guide, q(z|x,c) = p(z|x,c): the ELBO per example is the closed form Σ_c q(c|x) [log p(x, c) −
    log q(c|x)] and IWAE_K (any K) is log p(x) = log Σ_c p(x, c), both within float rounding, for q(c|x) exact
    (τ = 1) and tempered (τ = 0.4); the ELBO summed equals Pyro's TraceEnum_ELBO on the same weights."""
    for temper in (1.0, 0.4):
        pair = _ready(LabelGuideMixture(temper=temper))
        assert torch.allclose(elbo(pair, X, num_samples=3), label_guide_elbo(X, temper), atol=2e-5)
        assert torch.allclose(iwae(pair, X, k=7), log_marginal(X), atol=2e-5)
        loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(pair.model, pair.guide, X).detach()
        assert float(elbo(pair, X).sum()) == pytest.approx(-float(loss), rel=1e-5)


def test_model_side_estimators_are_the_brute_force_sum_on_the_same_draws():
    """c in the model only: at the guide's K draws z_k (the same seed), ELBO = (1/K) Σ_k log w_k and IWAE_K =
    logsumexp_k log w_k − log K, with log w_k = log Σ_c π_c N(x; μ_c + z_k, σ²) + log N(z_k; 0, s²) − log q(z_k|x)
    summed over c by hand."""
    pair = _ready(ComponentMixture())
    k = 5
    torch.manual_seed(11)
    guide_tr, _ = sites.trace_pair(pair, X, k)
    z, q = guide_tr.nodes["z"]["value"], guide_tr.nodes["z"]["fn"]
    log_w = (_mixture_log_likelihood(z) + log_normal(z, 0.0, PRIOR_SCALE) - q.log_prob(z)).detach()  # (K, N)
    torch.manual_seed(11)
    assert torch.allclose(elbo(pair, X, num_samples=k), log_w.mean(0), atol=1e-4)
    torch.manual_seed(11)
    assert torch.allclose(iwae(pair, X, k=k), torch.logsumexp(log_w, 0) - math.log(k), atol=1e-4)


def test_ais_target_sums_the_component_out_exactly():
    """AIS's f_β = a + β b with the prior as π_0: a = log p(z) = log N(z; 0, s²) and b = log p(x | z) = log Σ_c π_c
    N(x; μ_c + z, σ²) at the chains' states, within float rounding; with the exact guide as π_0, every AIS weight
    is log p(x) whatever the chain does (b = log p(x, z) − log q(z | x) = log p(x)), so AIS returns it exactly."""
    pair = _ready(ComponentMixture())
    target = LatentTarget(pair, X, 4, base="prior")
    a, b = target.parts(target.z0)
    z = target.unflatten(target.z0)["z"].reshape(4, len(X), 2)
    assert torch.allclose(a, log_normal(z, 0.0, PRIOR_SCALE), atol=1e-5)
    assert torch.allclose(b, _mixture_log_likelihood(z), atol=1e-4)
    exact_guide = _ready(LabelGuideMixture(), X[:8])
    result = ais(exact_guide, X[:8], steps=4, chains=3, init="guide", leapfrog=2, seed=0)
    assert torch.allclose(result.log_px, log_marginal(X[:8]), atol=1e-4)


@pytest.mark.slow
def test_ais_with_a_summed_component_reaches_log_px():
    """AIS from the prior, 200 steps × 16 chains on 6 points: its mean within 4 Monte Carlo standard errors
    (AISResult.mean_se: the delta-method SE of each point's log mean weight, combined over points) of the exact
    mean log p(x). Measured: −0.022 ± 0.019 nats."""
    x = X[:6]
    pair = _ready(ComponentMixture(), x)
    result = ais(pair, x, steps=200, chains=16, init="prior", seed=0)
    assert abs(result.mean - float(log_marginal(x).mean())) <= 4 * result.mean_se
