"""The adversarial backend: draws from the pair's own sites, exact losses, a fit to a known law, resume, bad input."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

import ppgen
from ppgen.data import from_tensor
from ppgen.errors import UserError
from ppgen.inference.adversarial import (
    critic_loss,
    generator_loss,
    gradient_penalty,
    guide_draw,
    model_draw,
)
from ppgen.inference.options import AdversarialOptions, OptionError
from ppgen.models import GAN, REGISTRY, VAE
from ppgen.nn.critics import ConvCritic, MLPCritic, critic_for


def test_gan_pair_is_registered_and_round_trips_its_config():
    pair = GAN(x_shape=(2,), z_dim=3, hidden=(16,), encoder=True)
    assert REGISTRY["gan"] is GAN
    again = GAN.from_config(pair.config_dict())
    assert again.config == pair.config


def test_model_draw_is_the_generator_at_the_models_own_z():
    torch.manual_seed(0)
    pair = GAN(x_shape=(2,), z_dim=3, hidden=(16,))
    x, z = model_draw(pair, torch.zeros(5, 2), with_z=True)
    assert z.shape == (5, 3)
    assert torch.equal(x, pair.generator(z))
    assert x.requires_grad  # the generator gradient flows through the draw


def test_model_draw_of_a_gaussian_vae_is_its_reparameterized_sample():
    torch.manual_seed(0)
    pair = VAE(x_shape=(4,), z_dim=2, hidden=(8,), likelihood="gaussian")
    torch.manual_seed(1)
    x, z = model_draw(pair, torch.zeros(3, 4), with_z=True)
    loc, scale = pair.decoder(z)
    eps = (x - loc) / scale
    torch.manual_seed(1)
    torch.randn(3, 2)  # z, drawn first by the model
    assert torch.allclose(eps, torch.randn(3, 4), atol=1e-5)
    assert x.requires_grad
    mean = model_draw(pair, torch.zeros(3, 4), x_draw="mean")
    assert mean.requires_grad


def test_bernoulli_vae_mean_draw_is_the_pixel_probability():
    torch.manual_seed(0)
    pair = VAE(x_shape=(4,), z_dim=2, hidden=(8,))
    x, z = model_draw(pair, torch.zeros(3, 4), x_draw="mean", with_z=True)
    assert torch.allclose(x, torch.sigmoid(pair.decoder(z)))


def test_guide_draw_is_the_encoders_reparameterized_sample():
    torch.manual_seed(0)
    pair = GAN(x_shape=(2,), z_dim=3, hidden=(16,), encoder=True)
    x = torch.randn(4, 2)
    torch.manual_seed(5)
    z = guide_draw(pair, x)
    loc, scale = pair.encoder(x)
    torch.manual_seed(5)
    assert torch.allclose(z, loc + scale * torch.randn(4, 3), atol=1e-6)
    assert z.requires_grad


def test_losses_at_known_critic_values():
    zero, log2 = torch.zeros(7), math.log(2)
    assert critic_loss("ns", zero, zero).item() == pytest.approx(2 * log2)  # D = 1/2 everywhere
    assert generator_loss("ns", zero).item() == pytest.approx(log2)
    assert generator_loss("minimax", zero).item() == pytest.approx(-log2)
    assert generator_loss("ali", zero, zero).item() == pytest.approx(2 * log2)
    one = torch.ones(7)
    assert critic_loss("lsgan", one, zero).item() == 0.0 and generator_loss("lsgan", one).item() == 0.0
    assert critic_loss("lsgan", zero, one).item() == pytest.approx(1.0)
    assert critic_loss("wgan-gp", 3 * one, one).item() == pytest.approx(-2.0)
    assert generator_loss("wgan-gp", 2 * one).item() == pytest.approx(-2.0)
    # ns and minimax share a stationary point but the ns generator gradient does not vanish
    # where the critic wins: d/dD softplus(-D) at D = -10 is -σ(10) ≈ -1, d/dD -softplus(D) is -σ(-10)
    d = torch.tensor([-10.0], requires_grad=True)
    (g_ns,) = torch.autograd.grad(generator_loss("ns", d), d)
    (g_mm,) = torch.autograd.grad(generator_loss("minimax", d), d)
    assert g_ns.item() == pytest.approx(-torch.sigmoid(torch.tensor(10.0)).item())
    assert g_mm.item() == pytest.approx(-torch.sigmoid(torch.tensor(-10.0)).item())


def test_gradient_penalty_of_a_linear_critic_is_exact():
    # D(x) = w·x + b has ∇D = w everywhere, so the penalty is (‖w‖ − 1)² at any interpolate.
    critic = torch.nn.Linear(3, 1)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[3.0, 0.0, 4.0]]))

    def score(x):
        return critic(x).squeeze(-1)

    gp = gradient_penalty(score, torch.randn(16, 3), torch.randn(16, 3))
    assert gp.item() == pytest.approx(16.0)  # (5 − 1)²
    gp4 = gradient_penalty(lambda x: score(x).reshape(4, 4).sum(1), torch.randn(16, 3), torch.randn(16, 3), pack=4)
    assert gp4.item() == pytest.approx((10.0 - 1) ** 2)  # a pack of 4: ‖∇‖ = √4 · 5


def test_critics_are_chosen_by_data_shape():
    assert isinstance(critic_for((2,)), MLPCritic)
    assert isinstance(critic_for((1, 28, 28)), ConvCritic)
    assert isinstance(critic_for((1, 6, 6)), MLPCritic)  # too small/odd for the convolutions
    joint = critic_for((1, 8, 8), z_dim=3, pack=2)
    assert joint(torch.rand(6, 1, 8, 8), torch.randn(6, 3)).shape == (3,)
    assert critic_for((2,), pack=4)(torch.randn(8, 2)).shape == (2,)


def _gaussian_data(n=4096, loc=(2.0, -1.0), scale=(0.5, 0.25), seed=0):
    g = torch.Generator().manual_seed(seed)
    return from_tensor(torch.tensor(loc) + torch.tensor(scale) * torch.randn(n, len(loc), generator=g))


@pytest.mark.parametrize("loss", ["ns", "wgan-gp", "lsgan"])
def test_gan_learns_a_two_dimensional_gaussian(loss):
    # The generator family contains N((2, -1), diag(0.5², 0.25²)); it starts about 2.2 away.
    # The sampling SEs of 4,000 draws are < 0.01; the bounds below are the optimizer's remaining
    # error after this short run (GAN fits are not exact), checked for every loss.
    # (2-D on purpose: in 1-D the WGAN-GP critic can stall in the wrong-sign basin, since its
    # slope would have to cross 0, where the penalty is λ.)
    data = _gaussian_data()
    torch.manual_seed(0)
    pair = GAN(x_shape=(2,), z_dim=2, hidden=(16, 16))
    with torch.no_grad():
        start = (pair.generate(4000).mean(0) - torch.tensor([2.0, -1.0])).norm()
    opts = dict(n_critic=5, betas=(0.5, 0.9), epochs=60) if loss == "wgan-gp" else dict(epochs=40)
    fit = ppgen.fit(pair, data, backend="adversarial", loss=loss, batch_size=128, lr_g=2e-3, lr_d=2e-3,
                    lr_decay=True, critic_hidden=(32, 32), progress=False, **opts)
    assert fit.stopped is None and len(fit.history) == fit.options["epochs"]
    with torch.no_grad():
        x = pair.generate(4000)
    assert start > 1.5
    assert (x.mean(0) - torch.tensor([2.0, -1.0])).abs().max() < 0.25
    assert (x.std(0) - torch.tensor([0.5, 0.25])).abs().max() < 0.15


def test_ali_trains_generator_and_encoder_and_reports_history():
    data = _gaussian_data(n=1024)
    torch.manual_seed(0)
    pair = GAN(x_shape=(2,), z_dim=1, hidden=(8,), encoder=True)
    before = copy.deepcopy(pair.state_dict())
    fit = ppgen.fit(pair, data, backend="adversarial", loss="ali", epochs=2, batch_size=128, progress=False)
    after = pair.state_dict()
    moved = {k.split(".")[0] for k in after if not torch.equal(after[k], before[k])}
    assert moved == {"generator", "encoder"}
    row = fit.history[-1]
    assert {"epoch", "seconds", "wall", "images_per_s", "loss_d", "loss_g"} <= set(row)
    assert row["generator_steps"] == 8 and fit.critic is not None


def test_resume_reproduces_an_uninterrupted_run():
    data = _gaussian_data(n=1024)
    opts = dict(backend="adversarial", loss="wgan-gp", n_critic=2, batch_size=128, progress=False, seed=3)
    torch.manual_seed(0)
    full = ppgen.fit(GAN(x_shape=(2,), z_dim=1, hidden=(8,)), data, epochs=3, **opts)
    saved = []
    torch.manual_seed(0)
    ppgen.fit(GAN(x_shape=(2,), z_dim=1, hidden=(8,)), data, epochs=3,
              on_epoch_end=lambda f: saved.append(copy.deepcopy(f.checkpoint())), **opts)
    torch.manual_seed(99)
    resumed = ppgen.fit(GAN(x_shape=(2,), z_dim=1, hidden=(8,)), data, epochs=3, resume=saved[0], **opts)
    for k, v in full.pair.state_dict().items():
        assert torch.equal(v, resumed.pair.state_dict()[k]), k
    assert [r["loss_d"] for r in resumed.history] == [r["loss_d"] for r in full.history]


def test_a_vae_pair_trains_adversarially_without_a_rewrite():
    torch.manual_seed(0)
    pair = VAE(x_shape=(1, 8, 8), z_dim=4, hidden=(32,), likelihood="cbernoulli")
    x = torch.rand(256, 1, 8, 8)
    fit = ppgen.fit(pair, x, backend="adversarial", loss="lsgan", epochs=1, batch_size=64, progress=False)
    assert fit.backend == "adversarial" and math.isfinite(fit.last["loss_g"])


def test_bad_input_names_the_backend_that_fits():
    x = torch.bernoulli(torch.full((64, 4), 0.5))
    with pytest.raises(UserError, match="backend='svi'"):
        ppgen.fit(VAE(x_shape=(4,), z_dim=2, hidden=(8,)), x, backend="adversarial", batch_size=32)
    with pytest.raises(UserError, match="loss='ns'"):
        ppgen.fit(GAN(x_shape=(4,), z_dim=2), x, backend="adversarial", loss="ali", batch_size=32)
    with pytest.raises(UserError, match="unknown adversarial loss"):
        ppgen.fit(GAN(x_shape=(4,), z_dim=2), x, backend="adversarial", loss="hinge")
    with pytest.raises(UserError, match="multiple of pack"):
        ppgen.fit(GAN(x_shape=(4,), z_dim=2), x, backend="adversarial", batch_size=30, pack=4)
    with pytest.raises(UserError, match="shape"):
        ppgen.fit(GAN(x_shape=(3,), z_dim=2), x, backend="adversarial", batch_size=32)


@pytest.mark.slow
def test_ns_gan_covers_the_ring_of_eight():
    # ~1-2 minutes: NS-GAN, z_dim 2, 4,000 generator steps. Measured: 8/8 modes, 75% high quality
    # (benchmarks/modes.py has the seeds-averaged tables); the bounds leave room for platform drift.
    from ppgen.data import load
    from ppgen.evaluation.modes import evaluate_pair

    data = load("ring8", n=20_000)
    torch.manual_seed(0)
    pair = GAN(x_shape=(2,), z_dim=2)
    ppgen.fit(pair, data, backend="adversarial", loss="ns", epochs=64, batch_size=256, lr_g=1e-3, lr_d=1e-3,
              lr_decay=True, progress=False)
    report = evaluate_pair(pair, "ring8")
    assert report["modes"] == 8 and report["high_quality"] > 0.5


def test_lr_sets_both_players_rates_and_lr_g_lr_d_set_one():
    declared = {f.name: f.default for f in dataclasses.fields(AdversarialOptions)}
    assert declared["lr"] == 2e-4 and declared["lr_g"] is None and declared["lr_d"] is None  # one default
    assert (AdversarialOptions().generator_lr, AdversarialOptions().critic_lr) == (2e-4, 2e-4)
    both = AdversarialOptions(lr=1e-3)
    assert (both.generator_lr, both.critic_lr) == (1e-3, 1e-3)
    one = AdversarialOptions(lr=1e-3, lr_d=5e-4)
    assert (one.generator_lr, one.critic_lr) == (1e-3, 5e-4)
    with pytest.raises(OptionError, match="lr_g"):
        AdversarialOptions(lr_g=-1.0)
    data = _gaussian_data(n=256)
    fit = ppgen.fit(GAN(x_shape=(2,), z_dim=1, hidden=(8,)), data, backend="adversarial", epochs=1, batch_size=128,
                    options=AdversarialOptions(lr=1e-3, lr_d=5e-4), progress=False)
    rates = {k: fit.state.engine[k]["param_groups"][0]["lr"] for k in ("optimizer_g", "optimizer_d")}
    assert rates == {"optimizer_g": 1e-3, "optimizer_d": 5e-4}
