"""The autoregressive (PixelCNN) decoder of the VAE and the posterior-collapse cures (issue 15).

Exact checks: the masking is causal (by gradient, and the checker sees the leak of a wrong mask), log p(x | z) of
the PixelCNN decoder is a normalized distribution (the sum over all 2^6 binary 2x3 images is 1; with a wrong mask
it is not), the lowered decoder computes the torch decoder's log density on NumPyro, the delta-VAE's KL floor is the
closed form ½(σ² − 1 − log σ²) and is attained, and the aggressive phase moves only the guide's weights in its inner
loop. The end-to-end "it collapses / the cure prevents it" runs are marked slow.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from pyro import poutine

from ppgen.errors import UserError
from ppgen.evaluation import collapse
from ppgen.inference.options import OptionError, SVIOptions
from ppgen.inference.svi import choose_engine
from ppgen.models.vae import VAE, committed_rate, committed_scale
from ppgen.nn import PixelCNNDecoder
from ppgen.nn.autoregressive import raster_mask


def _dependence(decoder: PixelCNNDecoder, x_shape, z_dim: int, seed: int = 0) -> torch.Tensor:
    """D[i, j] = 1 where output pixel i (raster order) has a non-zero gradient with respect to input pixel j at
    one of 8 random (x, z) (several, since a ReLU may be off at one input)."""
    torch.manual_seed(seed)
    c, h, w = x_shape
    x = torch.bernoulli(torch.full((8, c, h, w), 0.5)).requires_grad_(True)
    z = torch.randn(8, z_dim)
    out = decoder(z, x)
    d = torch.zeros(h * w, h * w)
    for i in range(h * w):
        (g,) = torch.autograd.grad(out[:, :, i // w, i % w].sum(), x, retain_graph=True)
        d[i] = (g.abs().sum((0, 1)).flatten() > 0).float()
    return d


@pytest.mark.parametrize("skip", [False, True])
def test_pixelcnn_is_causal_by_gradient(skip):
    shape = (1, 5, 6)
    dec = PixelCNNDecoder(3, shape, channels=4, layers=2, skip=skip)
    d = _dependence(dec, shape, 3)
    n = d.shape[0]
    assert torch.triu(d).sum() == 0, "an output pixel depends on itself or on a later pixel"
    # and it does see the past: every pixel after the first depends on its left (or upper-right) neighbour
    assert all(d[i, i - 1] == 1 for i in range(1, n) if i % shape[2])


def test_the_causality_check_sees_a_wrong_mask():
    shape = (1, 4, 4)
    dec = PixelCNNDecoder(2, shape, channels=3, layers=1)
    dec.first.mask.copy_(raster_mask(5, "B", 3, 1))  # the centre shown in the first layer: x_i sees x_i
    assert torch.diagonal(_dependence(dec, shape, 2)).sum() == 16


def _log_p_all_binary_images(pair: VAE, z: torch.Tensor) -> torch.Tensor:
    """log p(x | z) through the pair's own model (teacher forcing) for every binary image of its shape."""
    c, h, w = pair.x_shape
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=c * h * w)), dtype=torch.float64)
    images = images.reshape(-1, c, h, w)
    conditioned = poutine.condition(pair.model, data={"z": z.expand(len(images), -1)})
    trace = poutine.trace(conditioned).get_trace(images)
    return trace.nodes["x"]["fn"].log_prob(images)


@pytest.mark.parametrize("skip", [False, True])
def test_pixelcnn_likelihood_is_normalized_on_2x3_images(skip):
    torch.manual_seed(1)
    pair = VAE(x_shape=(1, 2, 3), z_dim=2, hidden=(8,), net="pixelcnn", ar_channels=4, ar_layers=2, skip=skip).double()
    for _ in range(3):
        z = torch.randn(1, 2, dtype=torch.float64) * 2
        total = torch.logsumexp(_log_p_all_binary_images(pair, z), 0)
        assert abs(total.item()) < 1e-10  # float64 rounding over 64 terms


def test_a_wrong_mask_is_not_normalized():
    torch.manual_seed(1)
    pair = VAE(x_shape=(1, 2, 3), z_dim=2, hidden=(8,), net="pixelcnn", ar_channels=4, ar_layers=1).double()
    pair.decoder.first.mask.copy_(raster_mask(5, "B", 4, 1))
    total = torch.logsumexp(_log_p_all_binary_images(pair, torch.zeros(1, 2, dtype=torch.float64)), 0)
    assert abs(float(total)) > 1e-3


def test_pixelcnn_lowered_to_jax_gives_the_torch_log_density():
    import jax.numpy as jnp
    from numpyro import handlers

    from ppgen.ppl import backend

    torch.manual_seed(2)
    pair = VAE(x_shape=(1, 6, 5), z_dim=3, hidden=(16,), net="pixelcnn", ar_channels=5, ar_layers=2, skip=True)
    x = torch.bernoulli(torch.full((4, 1, 6, 5), 0.4))
    z = torch.randn(4, 3)
    tr = poutine.trace(poutine.condition(pair.model, data={"z": z})).get_trace(x)
    want = tr.nodes["x"]["fn"].log_prob(x) + tr.nodes["z"]["fn"].log_prob(z)
    with backend("numpyro"):
        jtr = handlers.trace(handlers.seed(handlers.condition(pair.model, data={"z": jnp.asarray(z.numpy())}), 0)
                             ).get_trace(jnp.asarray(x.numpy()))
    got = jtr["x"]["fn"].log_prob(jtr["x"]["value"]) + jtr["z"]["fn"].log_prob(jtr["z"]["value"])
    assert torch.allclose(torch.as_tensor(got.tolist()), want.detach(), atol=1e-4, rtol=1e-5)


@pytest.mark.slow
def test_pixelcnn_vae_trains_on_both_engines_to_the_same_first_loss():
    """One epoch of one step from the same weights: the two engines' losses are draws of the same negative ELBO;
    with 64 examples their difference is within 4 standard errors of the per-example loss spread."""
    import ppgen

    torch.manual_seed(3)
    x = torch.bernoulli(torch.full((64, 1, 8, 8), 0.3))
    data = ppgen.data.from_tensor(x)
    losses = {}
    for engine in ("torch", "jax"):
        torch.manual_seed(3)
        pair = VAE(x_shape=(1, 8, 8), z_dim=4, hidden=(32,), net="pixelcnn", ar_channels=4, ar_layers=1)
        fit = ppgen.fit(pair, data, engine=engine, epochs=1, batch_size=len(data.train), lr=1e-6, progress=False)
        losses[engine] = -fit.history[0]["elbo"]
    torch.manual_seed(3)
    pair = VAE(x_shape=(1, 8, 8), z_dim=4, hidden=(32,), net="pixelcnn", ar_channels=4, ar_layers=1)
    from ppgen.evaluation.likelihood import elbo

    per_example = -elbo(pair, data.train.float(), num_samples=1)
    se = float(per_example.std()) / math.sqrt(len(data.train))
    assert abs(losses["torch"] - losses["jax"]) < 4 * math.sqrt(2) * se


# -- the delta-VAE ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("delta", [0.01, 0.1, 0.5, 2.0])
def test_committed_scale_inverts_the_closed_form(delta):
    sigma = committed_scale(delta)
    assert 0 < sigma < 1
    assert committed_rate(sigma) == pytest.approx(delta, rel=1e-10)


def test_delta_vae_kl_per_dimension_is_at_least_delta_and_attained():
    delta = 0.3
    torch.manual_seed(4)
    pair = VAE(x_shape=(1, 6, 6), z_dim=5, hidden=(16,), committed_rate=delta)
    x = torch.bernoulli(torch.full((50, 1, 6, 6), 0.5))
    kl = collapse.kl_per_dim(pair, x)
    assert (kl >= delta - 1e-6).all()
    _, scale = pair.encode(x)
    assert torch.allclose(scale, torch.full_like(scale, committed_scale(delta)))
    with torch.no_grad():  # an encoder whose mean is 0 sits exactly on the floor
        pair.encoder.loc.weight.zero_()
        pair.encoder.loc.bias.zero_()
    assert torch.allclose(collapse.kl_per_dim(pair, x), torch.full((5,), delta), atol=1e-6)
    plain = VAE(x_shape=(1, 6, 6), z_dim=5, hidden=(16,))
    with torch.no_grad():  # and without the fixed scale, such an encoder can reach KL = 0
        plain.encoder.loc.weight.zero_()
        plain.encoder.loc.bias.zero_()
        plain.encoder.raw_scale.weight.zero_()
        plain.encoder.raw_scale.bias.fill_(math.log(math.e - 1) - 1e-4)  # softplus(.) + 1e-4 = 1
    assert collapse.kl_per_dim(plain, x).max() < 1e-6


def test_bad_committed_rate_is_refused():
    with pytest.raises(UserError, match="committed_rate"):
        VAE(x_shape=(1, 4, 4), committed_rate=-1.0)


# -- aggressive encoder updates --------------------------------------------------------------------------------
def test_aggressive_updates_pick_the_torch_engine_and_refuse_jax():
    pair = VAE(x_shape=(1, 4, 4), z_dim=2, hidden=(8,))
    assert choose_engine(pair, SVIOptions(aggressive_epochs=1.0)) == (
        "torch", "the aggressive encoder phase (aggressive_epochs) needs engine='torch' because its inner loop stops "
        "on the loss, which a compiled epoch cannot")
    assert choose_engine(pair, SVIOptions())[0] == "jax"
    with pytest.raises(OptionError, match="engine"):
        SVIOptions(engine="jax", aggressive_epochs=1.0)


def test_auto_prefers_torch_for_the_pixelcnn_decoder_and_jax_still_trains_it_when_asked():
    """The PixelCNN VAE lists torch first in its svi_engines (faster on CPU), so auto picks torch and says why;
    engine='jax' is still allowed; the MLP VAE keeps JAX first."""
    pixelcnn = VAE(x_shape=(1, 4, 4), z_dim=2, hidden=(8,), net="pixelcnn", ar_channels=4, ar_layers=1)
    engine, why = choose_engine(pixelcnn, SVIOptions())
    assert engine == "torch" and "faster on the torch engine" in why
    assert choose_engine(pixelcnn, SVIOptions(engine="jax")) == ("jax", "asked for")
    assert VAE(x_shape=(1, 4, 4), z_dim=2, hidden=(8,)).svi_engines == ("jax", "torch")


def test_aggressive_inner_loop_moves_only_the_guide_and_improves_its_elbo():
    from ppgen.evaluation.likelihood import elbo
    from ppgen.inference import svi

    torch.manual_seed(5)
    prototypes = torch.bernoulli(torch.full((4, 1, 6, 6), 0.5))
    x = prototypes[torch.arange(400) % 4]
    x = torch.where(torch.rand_like(x) < 0.05, 1 - x, x)  # four prototypes, 5% of pixels flipped
    pair = VAE(x_shape=(1, 6, 6), z_dim=3, hidden=(32,))
    opts = SVIOptions(aggressive_epochs=1.0, aggressive_steps=200, lr=1e-2)
    state = svi.TorchState(pair, opts, svi.make_adam(pair.parameters(), opts.lr), svi.make_elbo("trace", 1, 1))
    state.guide_params = svi.guide_parameters(pair, x[:2])
    assert {id(p) for p in state.guide_params} == {id(p) for p in pair.encoder.parameters()}
    state.guide_optimizer = svi.make_adam(state.guide_params, opts.lr)
    decoder_before = [p.detach().clone() for p in pair.decoder.parameters()]
    encoder_before = [p.detach().clone() for p in pair.encoder.parameters()]
    torch.manual_seed(6)
    before = elbo(pair, x, num_samples=20)
    assert svi._aggressive_inner(state, x, pair.model, pair.guide, torch.Generator().manual_seed(0), 64)
    torch.manual_seed(6)
    after = elbo(pair, x, num_samples=20)
    assert all(torch.equal(a, p) for a, p in zip(decoder_before, pair.decoder.parameters()))
    assert not all(torch.equal(a, p) for a, p in zip(encoder_before, pair.encoder.parameters()))
    diff = after - before  # paired by example (same seed): the guide's ELBO rose by more than 4 SE
    assert float(diff.mean()) > 4 * float(diff.std()) / math.sqrt(len(diff))


def test_aggressive_fit_runs_end_to_end():
    import ppgen

    torch.manual_seed(7)
    data = ppgen.data.from_tensor(torch.bernoulli(torch.full((128, 1, 6, 6), 0.3)))
    pair = VAE(x_shape=(1, 6, 6), z_dim=2, hidden=(16,), net="pixelcnn", ar_channels=4, ar_layers=1)
    messages = []
    fit = ppgen.fit(pair, data, epochs=2, batch_size=32, aggressive_epochs=1.0, aggressive_steps=10, progress=False,
                    announce=messages.append)
    assert messages == ["SVI engine torch (the aggressive encoder phase (aggressive_epochs) needs engine='torch' "
                        "because its inner loop stops on the loss, which a compiled epoch cannot)"]
    assert len(fit.history) == 2 and all(math.isfinite(r["elbo"]) for r in fit.history)


def test_pixelcnn_generate_and_reconstruct_give_binary_images():
    torch.manual_seed(8)
    pair = VAE(x_shape=(1, 3, 4), z_dim=2, hidden=(8,), net="pixelcnn", ar_channels=3, ar_layers=1)
    x = pair.generate(5)
    assert x.shape == (5, 1, 3, 4) and ((x == 0) | (x == 1)).all()
    assert pair.reconstruct(x).shape == x.shape


# -- the linear probe and the figure -----------------------------------------------------------------------------
def _one_hot_digits(counts=(10, 20, 30, 40)) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    x = torch.nn.functional.one_hot(y, 4).float().reshape(-1, 1, 2, 2)
    return x, y


def test_linear_probe_reads_an_informative_code_and_not_a_collapsed_one():
    torch.manual_seed(9)
    x, y = _one_hot_digits()
    pair = VAE(x_shape=(1, 2, 2), z_dim=5, hidden=(8,))
    with torch.no_grad():
        pair.encoder.loc.weight.mul_(50)  # means far apart (the probe's L2 penalty is that of C = 1)
    assert collapse.linear_probe(pair, x, y, x, y) == 1.0  # 4 distinct means in 5 dims: separable
    with torch.no_grad():  # a collapsed code: every x has the same posterior mean
        pair.encoder.loc.weight.zero_()
    assert collapse.linear_probe(pair, x, y, x, y) == pytest.approx(0.4)  # the majority share, 40 of 100


def test_kl_per_dim_figure(tmp_path):
    from ppgen import plots

    path = plots.kl_per_dim_bars({"plain": [0.0, 0.01, 0.0], "delta": [0.3, 0.5, 0.3]}, tmp_path / "kl.png")
    assert path.stat().st_size > 1000


@pytest.mark.slow
def test_pixelcnn_vae_collapses_where_the_mlp_vae_does_not_and_the_delta_vae_keeps_its_rate():
    """End to end on the 8x8 digits (about 2 minutes on 2 cores): the plainly trained PixelCNN-decoder VAE ends with
    no active unit and a KL under a tenth of the MLP-decoder VAE's; the delta-VAE keeps KL >= delta per dimension
    and more I(x; z) than the collapsed one."""
    import ppgen

    data = ppgen.data.load("digits")
    x_test = data.test.float()

    def trained(**model):
        torch.manual_seed(0)
        pair = VAE(data.x_shape, z_dim=8, hidden=(128,), ar_channels=16, ar_layers=3, **model)
        ppgen.fit(pair, data, engine="torch", epochs=20, batch_size=32, lr=3e-3, progress=False)
        return collapse.report(pair, x_test)

    plain, mlp, delta = trained(net="pixelcnn"), trained(net="mlp"), trained(net="pixelcnn", committed_rate=0.1)
    assert plain["active_units"] == 0 and plain["kl_total"] < 0.1 * mlp["kl_total"]
    assert mlp["active_units"] >= 4
    assert min(delta["kl_per_dim"]) >= 0.1 - 1e-4 and delta["mutual_information"] > plain["mutual_information"]
