"""The Ladder VAE's batch normalization: torch and lowered JAX agree in both modes, the running statistics follow
torch's momentum rule on both SVI engines and survive a checkpoint, and evaluation mode is per example."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from pyro import poutine

import ppgen
from ppgen.data import Dataset
from ppgen.errors import UserError
from ppgen.models import LadderVAE
from ppgen.nn import DeterministicMLP, GaussianMLP, MLPDecoder
from ppgen.nn.norm import BatchNorm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import assert_same_run, grey_dataset  # noqa: E402

# float32 rounding of a 2-layer network on O(1) inputs: a few ulps of the largest activation
ATOL = 1e-5


NORMED = {  # every network with a batch_norm switch: the deterministic bottom-up map, p(z_l | z_l+1), p(x | z_1)
    "deterministic": lambda: DeterministicMLP(7, (5, 4), batch_norm=True),
    "gaussian": lambda: GaussianMLP(7, 3, (5, 4), batch_norm=True),
    "decoder": lambda: MLPDecoder(7, (2, 3), (5, 4), batch_norm=True),
}


def _normed_mlp(seed: int = 0, momentum: float | None = 0.1, kind: str = "deterministic"):
    torch.manual_seed(seed)
    net = NORMED[kind]()
    for norm in net.norms:  # away from the identity initialization, so a wrong γ/β use shows
        norm.momentum = momentum
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.normal_()
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
    return net


def first(out):
    """The first output of a network (GaussianMLP gives (loc, scale))."""
    return out[0] if isinstance(out, tuple) else out


def _np(t) -> np.ndarray:
    return t.detach().numpy() if torch.is_tensor(t) else np.asarray(t)


# -- the layer and its lowering -------------------------------------------------------------------------------
@pytest.mark.parametrize("momentum,kind", [(0.1, "deterministic"), (None, "deterministic"), (0.1, "gaussian"),
                                           (0.1, "decoder")])
def test_lowered_batch_norm_matches_torch_in_training_mode_and_returns_torchs_running_stats(momentum, kind):
    net = _normed_mlp(momentum=momentum, kind=kind)
    x = torch.randn(3, 6, 7)  # (particles, examples, features): statistics over all 18 rows
    params, updates = net.jax_params(), {}
    out_jax = net.jax_function()(params, jnp.asarray(x.numpy()), updates=updates)
    out_torch = net(x)  # torch updates its running statistics in place
    for a, b in zip(out_jax if isinstance(out_jax, tuple) else (out_jax,),
                    out_torch if isinstance(out_torch, tuple) else (out_torch,)):
        assert np.abs(_np(a) - _np(b)).max() < ATOL
    assert set(updates) == {f"norms.{i}.{b}" for i in (0, 1) for b in ("running_mean", "running_var",
                                                                             "num_batches_tracked")}
    for key, value in updates.items():
        assert np.abs(_np(value) - _np(net.state_dict()[key])).max() < ATOL, key
        assert not np.allclose(_np(value), _np(params[key])), key  # they moved


def test_running_stats_follow_the_momentum_rule():
    """running ← (1 − m) running + m · stat, the variance unbiased; momentum None: the cumulative average."""
    x = torch.randn(10, 3) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([0.0, 1.0, -2.0])
    mean, var = x.mean(0), x.var(0, unbiased=True)
    norm = BatchNorm(3, momentum=0.25)
    norm(x)
    assert torch.allclose(norm.running_mean, 0.25 * mean, atol=1e-6)
    assert torch.allclose(norm.running_var, 0.75 + 0.25 * var, atol=1e-6)
    cumulative = BatchNorm(3, momentum=None)
    cumulative(x), cumulative(x + 1.0)  # two batches: the plain average of their statistics
    assert torch.allclose(cumulative.running_mean, mean + 0.5, atol=1e-5)
    assert torch.allclose(cumulative.running_var, var, atol=1e-5)


@pytest.mark.parametrize("kind", list(NORMED))
def test_lowered_batch_norm_matches_torch_in_evaluation_mode(kind):
    net = _normed_mlp(kind=kind).eval()
    x = torch.randn(2, 6, 7)
    out_jax = net.jax_function()(net.jax_params(), jnp.asarray(x.numpy()))
    assert np.abs(_np(first(out_jax)) - _np(first(net(x)))).max() < ATOL
    train_out = _normed_mlp(kind=kind).train()(x)  # the mode matters: batch statistics give another answer
    assert np.abs(_np(first(out_jax)) - _np(first(train_out))).max() > 1e-2


# -- per example in evaluation mode -----------------------------------------------------------------------------
def _guide_log_densities(pair, x, z):
    """Per-example log q(z_l | ·) of every layer at the given z (the guide conditioned on them)."""
    with torch.no_grad():
        trace = poutine.trace(poutine.condition(pair.guide, data=z)).get_trace(x)
    return torch.stack([trace.nodes[name]["fn"].log_prob(trace.nodes[name]["value"]) for name in z])


def test_evaluation_mode_log_densities_are_per_example():
    pair = LadderVAE((1, 6, 6), z_dims=(5, 3), hidden=(16, 8))
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((16, 1, 6, 6), 0.4), generator=g)
    z = {"z2": torch.randn(16, 3, generator=g), "z1": torch.randn(16, 5, generator=g)}
    first = {k: v[:4] for k, v in z.items()}
    pair.train()
    with torch.no_grad():  # some running statistics away from (0, 1)
        pair.up[0](torch.rand(64, 1, 6, 6) * 3)
    pair.eval()
    alone, in_batch = _guide_log_densities(pair, x[:4], first), _guide_log_densities(pair, x, z)[:, :4]
    assert torch.allclose(alone, in_batch, atol=1e-5)
    pair.train()  # batch statistics: the same four examples get other densities beside other examples
    assert not torch.allclose(_guide_log_densities(pair, x[:4], first), _guide_log_densities(pair, x, z)[:, :4],
                              atol=1e-2)


# -- both SVI engines carry the running statistics ----------------------------------------------------------------
def _feature_stats(pair, x) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Mean and unbiased variance of every normalized pre-activation over ``x``, with the pair's weights."""
    out, h = [], x.flatten(1)
    with torch.no_grad():
        for layer, norm in zip(pair.up[0].layers, pair.up[0].norms):
            pre = layer(h)
            out.append((pre.mean(0), pre.var(0, unbiased=True)))
            h = torch.nn.functional.softplus((pre - pre.mean(0)) / (pre.var(0, unbiased=False) + norm.eps).sqrt()
                                             * norm.weight + norm.bias)
    return out


@pytest.mark.parametrize("engine", ["torch", "jax"])
def test_training_updates_the_running_stats_by_torchs_rule_on_both_engines(engine):
    """Full-batch steps with a negligible learning rate: every step sees the same batch statistics (μ, s²) of the
    fixed initial weights, so after E steps running_mean = (1 − 0.9^E) μ and running_var = 0.9^E + (1 − 0.9^E) s².
    Fails if an engine does not update them, updates them once too often (NumPyro's init pass) or not per step."""
    x = (torch.rand(64, 1, 6, 6, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    data = Dataset(name="tiny", train=x, val=x[:0], test=x[:0])
    pair = LadderVAE((1, 6, 6), z_dims=(5, 3), hidden=((16, 12), (8,)))
    (mean0, var0), (mean1, var1) = _feature_stats(pair, x)
    epochs = 3
    fit = ppgen.fit(pair, data, epochs=epochs, batch_size=64, lr=1e-7, seed=0, engine=engine, progress=False)
    assert fit.options["engine"] == engine
    decay = 0.9**epochs
    for norm, (mean, var) in zip(pair.up[0].norms, [(mean0, var0), (mean1, var1)]):
        assert int(norm.num_batches_tracked) == epochs
        assert torch.allclose(norm.running_mean, (1 - decay) * mean, atol=1e-4)
        assert torch.allclose(norm.running_var, decay + (1 - decay) * var, atol=1e-4)


def _tiny_ladder(seed: int) -> LadderVAE:
    torch.manual_seed(seed)
    return LadderVAE((12,), z_dims=(4, 2), hidden=(16, 8))


@pytest.mark.parametrize("engine", ["torch", "jax"])
def test_checkpoint_round_trip_keeps_the_running_stats_and_resume_reproduces_the_run(engine):
    data, saved = grey_dataset(), {}
    options = dict(epochs=4, batch_size=32, lr=3e-3, anneal_epochs=2, seed=5, engine=engine, progress=False)

    def keep_epoch_two(fit):
        if fit.state["epoch"] == 2:
            buffer = io.BytesIO()
            torch.save(fit.checkpoint(), buffer)
            saved["bytes"], saved["buffers"] = buffer.getvalue(), {
                k: v.clone() for k, v in fit.pair.state_dict().items() if "running" in k or "batches" in k}

    whole = ppgen.fit(_tiny_ladder(0), data, on_epoch_end=keep_epoch_two, **options)
    checkpoint = torch.load(io.BytesIO(saved["bytes"]), weights_only=True)
    assert saved["buffers"] and all(torch.equal(v, checkpoint["model"][k]) for k, v in saved["buffers"].items())
    assert int(checkpoint["model"]["up.0.norms.0.num_batches_tracked"]) == 2 * 8  # 256 digits / 32 per step
    resumed_pair = _tiny_ladder(99)
    resumed = ppgen.fit(resumed_pair, data, resume=checkpoint, **options)
    assert_same_run(whole, resumed, resumed_pair, checkpoint, ("epoch", "elbo", "beta"))


def test_jax_engine_refuses_batch_norm_where_numpyro_drops_mutable_state():
    data = grey_dataset()
    with pytest.raises(UserError, match="batch-norm running statistics"):
        ppgen.fit(_tiny_ladder(0), data, epochs=1, batch_size=32, engine="jax", elbo="iwae", num_particles=2,
                  progress=False)
    fit = ppgen.fit(_tiny_ladder(0), data, epochs=1, batch_size=32, engine="auto", elbo="iwae", num_particles=2,
                    progress=False)
    assert fit.options["engine"] == "torch"


# -- the claim: with batch norm the Ladder VAE beats the one-layer VAE (slow: three 50-epoch trainings) ------------
@pytest.mark.slow
def test_ladder_vae_with_batch_norm_beats_the_vae_and_keeps_its_top_layer():
    """Bundled binarized digits, 50 epochs, seed 0, the leaderboard's architectures: the per-digit difference of
    test −IWAE-100 (Ladder − VAE) is below zero by more than 3 standard errors and its top layer carries information
    (KL > 1 nat); the same Ladder VAE without batch norm is worse by more than 3 standard errors, with fewer active
    top units (0 or 1: it collapses) — the checks can fail."""
    from ppgen.data import load
    from ppgen.evaluation import iwae, layer_report
    from ppgen.models import VAE

    data = load("mnist", binarize="dynamic", seed=0)
    x = data.test[:500]
    nll, units = {}, {}
    for name, pair in {"vae": VAE(data.x_shape, z_dim=50, hidden=(400,)),
                       "lvae": LadderVAE(data.x_shape, z_dims=(50, 20), hidden=((400,), (200,))),
                       "lvae_plain": LadderVAE(data.x_shape, z_dims=(50, 20), hidden=((400,), (200,)),
                                               batch_norm="off")}.items():
        warmup = {} if name == "vae" else {"anneal_epochs": 12.5}
        ppgen.fit(pair, data, epochs=50, batch_size=100, lr=1e-3, seed=0, engine="torch", progress=False, **warmup)
        pair.eval()
        torch.manual_seed(0)
        with torch.no_grad():
            nll[name] = -iwae(pair, x, k=100)
        units[name] = {k: (v["active_units"], v["kl_total"]) for k, v in layer_report(pair, x).items()}
    def below_by_3_se(better, worse):  # paired over the same digits: mean difference + 3 standard errors < 0
        diff = nll[better] - nll[worse]
        return float(diff.mean()) + 3 * float(diff.std()) / len(diff) ** 0.5 < 0

    assert below_by_3_se("lvae", "vae") and below_by_3_se("lvae", "lvae_plain")
    (active, kl), (active_plain, _) = units["lvae"]["z2"], units["lvae_plain"]["z2"]
    assert active > active_plain and kl > 1.0  # measured: 18-20 top units, 3-5 nats; without batch norm 0-1 unit


def test_a_ladder_config_written_before_batch_norm_loads_as_it_was():
    """A run's config.json from before batch norm has no ``batch_norm`` key: the field's declared ``absent`` value
    ("off") rebuilds the model those runs trained, whose checkpoint then fits; a new pair gets the default ("on")."""
    from ppgen.models import LadderVAE

    old = LadderVAE((1, 8, 8), z_dims=(4, 2), hidden=(16, 8), batch_norm="off")
    written = {k: v for k, v in old.config_dict().items() if k not in ("batch_norm", "batch_norm_top_down")}
    again = LadderVAE.from_config(written)
    assert again.config.batch_norm == "off"
    again.load_state_dict(old.state_dict())
    assert LadderVAE((1, 8, 8), z_dims=(4, 2), hidden=(16, 8)).config.batch_norm == "on"
