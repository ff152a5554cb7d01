"""Deep latent families (DLGM, hierarchical VAE, Ladder VAE) and NADE: structure, exactness, training, bad input."""

from __future__ import annotations

import itertools
import json
import math

import pyro
import pytest
import torch
from pyro import poutine
from torch.distributions import Bernoulli, Normal, kl_divergence

import ppgen
from ppgen.errors import UserError
from ppgen.evaluation import elbo, iwae, layer_report, log_weights, report
from ppgen.models import DLGM, NADE, REGISTRY, VAE, HierarchicalVAE, LadderVAE
from ppgen.models.ladder import precision_weighted

X_SHAPE = (1, 6, 6)
LAYERED = [
    (DLGM, dict(z_dims=(6, 3), hidden=((24,), (12,)))),
    (HierarchicalVAE, dict(z_dims=(6, 3), hidden=(24, 12))),
    (LadderVAE, dict(z_dims=(6, 4, 2), hidden=(24, 12, 8))),
]


def binary_data(n: int = 256, seed: int = 0) -> torch.Tensor:
    """Binary 6x6 images from a fixed mixture of 4 random Bernoulli templates (structure to learn)."""
    templates = torch.rand(4, *X_SHAPE, generator=torch.Generator().manual_seed(0)).pow(3)
    g = torch.Generator().manual_seed(seed + 1)
    which = torch.randint(0, 4, (n,), generator=g)
    return torch.bernoulli(templates[which], generator=g)


def _trace(pair, x):
    guide_tr = poutine.trace(pair.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(pair.model, trace=guide_tr)).get_trace(x)
    return guide_tr, model_tr


def _bern(logits, x):
    return Bernoulli(logits=logits).log_prob(x).flatten(1).sum(-1)


def _normal(value, loc, scale):
    return Normal(loc, scale).log_prob(value).sum(-1)


# -- structure: the sites compute exactly the densities the docstrings write down --------------
def test_hierarchical_log_joint_matches_hand_written_densities():
    pair, x = HierarchicalVAE(X_SHAPE, z_dims=(5, 3), hidden=(16, 8)), binary_data(8)
    with torch.no_grad():
        guide_tr, model_tr = _trace(pair, x)
        z1, z2 = guide_tr.nodes["z1"]["value"], guide_tr.nodes["z2"]["value"]
        log_q = _normal(z1, *pair.encoders[0](x)) + _normal(z2, *pair.encoders[1](z1))
        log_p = _normal(z2, 0.0, 1.0) + _normal(z1, *pair.prior_nets[0](z2)) + _bern(pair.decoder(z1), x)
    assert torch.allclose(model_tr.log_prob_sum() - guide_tr.log_prob_sum(), (log_p - log_q).sum(), atol=1e-3)


def test_ladder_guide_is_normalized_product_of_bottom_up_and_prior():
    """N(z; μ̂, σ̂²) N(z; μ_p, σ_p²) = N(μ̂; μ_p, σ̂² + σ_p²) · N(z; μ_q, σ_q²): the Gaussian product identity."""
    g = torch.Generator().manual_seed(0)
    m1, m2, z = (torch.randn(50, generator=g) for _ in range(3))
    s1, s2 = (torch.rand(50, generator=g) + 0.1 for _ in range(2))
    loc, scale = precision_weighted(m1, s1, m2, s2)
    lhs = Normal(m1, s1).log_prob(z) + Normal(m2, s2).log_prob(z)
    rhs = Normal(m2, (s1**2 + s2**2).sqrt()).log_prob(m1) + Normal(loc, scale).log_prob(z)
    assert torch.allclose(lhs, rhs, atol=1e-4)

    pair, x = LadderVAE(X_SHAPE, z_dims=(5, 3), hidden=(16, 8)), binary_data(8)
    with torch.no_grad():
        guide_tr, _ = _trace(pair, x)
        (m1, s1), (m2, s2) = pair._bottom_up(x)
        z2 = guide_tr.nodes["z2"]["value"]
        q1 = precision_weighted(m1, s1, *pair.prior_nets[0](z2))
        assert torch.allclose(guide_tr.nodes["z2"]["fn"].base_dist.loc, m2)
        assert torch.allclose(guide_tr.nodes["z1"]["fn"].base_dist.loc, q1[0], atol=1e-5)
        assert torch.allclose(guide_tr.nodes["z1"]["fn"].base_dist.scale, q1[1], atol=1e-5)


def test_dlgm_layer_kl_is_the_noise_kl():
    """KL(q(h_l|·) ‖ p(h_l|h_{l+1})) = KL(N(m_l(x), s_l²(x)) ‖ N(0, I)) layer by layer (Rezende et al.)."""
    pair, x = DLGM(X_SHAPE, z_dims=(5, 3), hidden=(16, 8)), binary_data(8)
    with torch.no_grad():
        pair.prior_nets[0].log_scale.normal_()
        guide_tr, model_tr = _trace(pair, x)
        r = pair.recognition(x)
        for layer in ("z1", "z2"):
            q, p = guide_tr.nodes[layer]["fn"].base_dist, model_tr.nodes[layer]["fn"].base_dist
            m, s = pair.noise_heads[int(layer[1]) - 1](r)
            expected = kl_divergence(Normal(m, s), Normal(0.0, 1.0)).sum(-1)
            got = kl_divergence(Normal(q.loc, q.scale), Normal(p.loc.expand_as(q.loc), p.scale.expand_as(q.loc))).sum(-1)
            assert torch.allclose(got, expected, atol=1e-4)


# -- exactness against closed forms -----------------------------------------------------------
def _linear_dlgm(seed: int = 0) -> DLGM:
    torch.manual_seed(seed)
    pair = DLGM((5,), z_dims=(3, 2), hidden=((), ()), likelihood="gaussian")
    with torch.no_grad():
        pair.prior_nets[0].log_scale.fill_(math.log(0.7))
        pair.decoder.log_scale.fill_(math.log(0.5))
    return pair


def test_linear_dlgm_iwae_matches_exact_marginal():
    """IWAE_K on a trained linear-Gaussian DLGM vs the closed-form log p(x).

    Delta method on the K normalized weights w̃ = w / mean(w) with relative variance v:
    IWAE_K = log p(x) − v / (2K) + O(K⁻²) with standard error √(v / K) per point.
    """
    pair = _linear_dlgm()
    data = pair.linear_marginal().sample((1000,))
    ppgen.fit(pair, data, backend="svi", epochs=15, batch_size=50, lr=1e-2, progress=False)
    x = data[:200]
    exact = pair.linear_marginal().log_prob(x)
    k = 4000
    lw = log_weights(pair, x, k).double()
    est = torch.logsumexp(lw, 0) - math.log(k)
    v = torch.exp(lw - est).var(0)
    bias, se = float((v / (2 * k)).mean()), float((v / k).sum().sqrt() / len(x))
    diff = float((est - exact).mean())
    assert abs(diff + bias) < 4 * se + 1e-4
    assert float((elbo(pair, x, num_samples=20) - exact).mean()) < diff  # ELBO ≤ IWAE_K


def test_nade_probabilities_sum_to_one_over_all_binary_vectors():
    torch.manual_seed(0)
    pair = NADE((10,), hidden=7)
    with torch.no_grad():
        for p in pair.parameters():
            p.normal_(0.0, 1.5)  # far from uniform
    grid = torch.tensor(list(itertools.product([0.0, 1.0], repeat=10)))
    log_p = pair.log_prob(grid)
    assert abs(float(torch.logsumexp(log_p.double(), 0))) < 1e-5
    assert float(log_p.max() - log_p.min()) > 5.0  # not the uniform distribution


def test_nade_matches_the_definition_and_its_sampler():
    """Blocked computation == h_d = σ(c + W_{:,<d} x_{<d}) computed one d at a time; samples follow p(x)."""
    torch.manual_seed(1)
    pair = NADE((3,), hidden=5)
    net = pair.net
    net.block = 2  # exercise the block boundary
    with torch.no_grad():
        for p in pair.parameters():
            p.normal_(0.0, 1.0)
        grid = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)))
        direct = torch.zeros(len(grid))
        for d in range(3):
            h = torch.sigmoid(net.c + grid[:, :d] @ net.W[:, :d].T)
            p1 = torch.sigmoid(net.b[d] + h @ net.V[d])
            direct += torch.where(grid[:, d] == 1, p1.log(), (1 - p1).log())
        assert torch.allclose(pair.log_prob(grid), direct, atol=1e-5)
        n = 20_000
        samples = pair.generate(n)
        codes = (samples * torch.tensor([4.0, 2.0, 1.0])).sum(-1).long()
        freq = torch.bincount(codes, minlength=8).double() / n
        probs = direct.exp().double()
        se = (probs * (1 - probs) / n).sqrt()
        assert torch.all((freq - probs).abs() < 4.5 * se)


def test_nade_iwae_and_elbo_are_its_exact_log_likelihood():
    pair, x = NADE(X_SHAPE, hidden=16), binary_data(32)
    exact = pair.log_prob(x)
    assert torch.allclose(iwae(pair, x, k=7), exact, atol=1e-4)
    assert torch.allclose(elbo(pair, x, num_samples=3), exact, atol=1e-4)
    assert log_weights(pair, x, 4).shape == (4, 32)


# -- training by the SVI backend, unchanged ----------------------------------------------------
@pytest.mark.parametrize("cls,options", LAYERED + [(NADE, dict(hidden=24))], ids=lambda v: getattr(v, "name", ""))
def test_family_trains_by_svi_and_estimators_are_ordered(cls, options):
    x = binary_data(512)
    test = binary_data(128, seed=1)
    pair = cls(X_SHAPE, **options)
    torch.manual_seed(0)
    before = elbo(pair, test, num_samples=5)
    fit = ppgen.fit(pair, x, backend="svi", epochs=4, batch_size=32, lr=1e-2, progress=False)
    assert len(fit.history) == 4 and fit.stopped is None
    torch.manual_seed(0)
    after_elbo = elbo(pair, test, num_samples=20)
    after_iwae = iwae(pair, test, k=200)
    gain = after_elbo - before
    assert float(gain.mean()) > 5 * float(gain.std() / math.sqrt(len(test)))  # training raised the held-out ELBO
    gap = after_iwae - after_elbo
    assert float(gap.mean()) >= -3 * float(gap.std() / math.sqrt(len(test))) - 1e-4  # ELBO ≤ IWAE_K
    if cls is NADE:
        assert torch.allclose(after_iwae, pair.log_prob(test), atol=1e-4)


def test_skip_decoder_and_free_bits_work_for_layered_families():
    x = binary_data(128)
    pair = HierarchicalVAE(X_SHAPE, z_dims=(4, 2), hidden=(16, 8), skip=True)
    assert pair.decoder.skip
    fit = ppgen.fit(pair, x, backend="svi", epochs=2, batch_size=32, free_bits=0.5, progress=False)
    assert fit.stopped is None and all(math.isfinite(r["elbo"]) for r in fit.history)


def test_layer_report_per_layer_and_agrees_with_vae_path():
    x = binary_data(64)
    vae = VAE(X_SHAPE, z_dim=4, hidden=(16,))
    single, layered = report(vae, x), layer_report(vae, x)["z"]
    for key in ("kl_per_dim", "activity"):
        assert single[key] == layered[key]
    assert single["mutual_information"] == pytest.approx(layered["mutual_information"], abs=1e-5)
    pair = LadderVAE(X_SHAPE, z_dims=(5, 3, 2), hidden=(16, 8, 8))
    out = report(pair, x)
    assert list(out["layers"]) == ["z3", "z2", "z1"]
    hvae = HierarchicalVAE(X_SHAPE, z_dims=(5, 3), hidden=(16, 8))  # its guide samples bottom-up
    assert list(layer_report(hvae, x)) == ["z2", "z1"] and len(report(hvae, x)["kl_per_dim"]) == 8
    assert report(hvae, x)["kl_per_dim"][:5] == layer_report(hvae, x)["z1"]["kl_per_dim"]
    assert [len(v["kl_per_dim"]) for v in out["layers"].values()] == [2, 3, 5]
    assert out["kl_total"] == pytest.approx(sum(v["kl_total"] for v in out["layers"].values()))
    assert len(out["kl_per_dim"]) == 10


# -- config round trip, registry, lowering -----------------------------------------------------
@pytest.mark.parametrize("cls,options", LAYERED + [(NADE, dict(hidden=24))], ids=lambda v: getattr(v, "name", ""))
def test_config_round_trips_through_json(cls, options):
    pair = cls(X_SHAPE, **options)
    assert REGISTRY[cls.name] is cls
    again = cls.from_config(json.loads(json.dumps(pair.config_dict())))
    assert again.config == pair.config
    assert [p.shape for p in again.parameters()] == [p.shape for p in pair.parameters()]


def test_layered_networks_lower_to_jax():
    import jax.numpy as jnp

    pair = DLGM(X_SHAPE, z_dims=(5, 3), hidden=(16, 8))
    z = torch.randn(4, 3)
    for net in (pair.prior_nets[0], pair.noise_heads[0], pair.recognition):
        u = torch.rand(4, *X_SHAPE) if net is pair.recognition else (z if net is pair.prior_nets[0] else torch.rand(4, 16))
        want = net(u)
        got = net(jnp.asarray(u.numpy()))
        for w, g in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)):
            assert torch.allclose(w.detach(), torch.as_tensor(g.__array__()), atol=1e-5)


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [DLGM, HierarchicalVAE, LadderVAE])
def test_layer_lists_that_do_not_chain_are_user_errors(cls):
    with pytest.raises(UserError, match="does not chain"):
        cls(X_SHAPE, z_dims=(8, 4), hidden=((32,), (16,), (8,)))
    with pytest.raises(UserError, match="positive"):
        cls(X_SHAPE, z_dims=(8, 0), hidden=(32, 16))


def test_hierarchical_families_need_two_layers():
    for cls in (HierarchicalVAE, LadderVAE):
        with pytest.raises(UserError, match="at least 2"):
            cls(X_SHAPE, z_dims=(8,), hidden=(32,))
    assert DLGM(X_SHAPE, z_dims=(8,), hidden=(32,)).n_layers == 1


def test_nade_on_non_binary_data_is_a_user_error():
    pair = NADE(X_SHAPE, hidden=8)
    grey = torch.rand(16, *X_SHAPE)
    with pytest.raises(UserError, match="not binary"):
        pair.log_prob(grey)
    with pytest.raises(UserError, match="not binary"):
        ppgen.fit(pair, grey, backend="svi", epochs=1, progress=False)
    pyro.clear_param_store()
