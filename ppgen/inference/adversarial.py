r"""Adversarial training of a pair's generator against a critic: NS-GAN, minimax, WGAN-GP, LSGAN, ALI/BiGAN.

The generator is the pair's own x site. Each step traces ``pair.model`` with its
observation removed (Pyro's ``uncondition``), so x is *drawn* from the site with z ~ p(z):
the reparameterized draw ``rsample`` (``x_draw="rsample"``, the default: G(z) for an implicit
generator's Delta site, μ(z) + σ(z)ε for a Gaussian VAE, the continuous-Bernoulli draw for a
``cbernoulli`` VAE) or the site's mean E[x|z] (``x_draw="mean"``, which also works for a
Bernoulli VAE, whose draws are discrete). A site with neither is refused with a message
naming the backend that fits (SVI).

With critic output D (a logit for the GAN losses) on real x and generated x̃:

* ``"minimax"`` (Goodfellow et al., 2014): L_D = softplus(−D(x)) + softplus(D(x̃)),
  L_G = −softplus(D(x̃)) = E log(1 − σ(D(x̃))).
* ``"ns"``, non-saturating: same L_D, L_G = softplus(−D(x̃)) = −E log σ(D(x̃)).
* ``"lsgan"`` (Mao et al., 2017; a=0, b=c=1): L_D = ½(D(x) − 1)² + ½D(x̃)², L_G = ½(D(x̃) − 1)².
* ``"wgan-gp"`` (Gulrajani et al., 2017): L_D = D(x̃) − D(x) + λ(‖∇D(x̂)‖₂ − 1)² at
  x̂ = εx + (1 − ε)x̃, ε ~ U(0, 1) per example; L_G = −D(x̃). The history's ``w_distance`` is
  the critic's estimate E D(x) − E D(x̃).
* ``"ali"`` (Dumoulin et al., 2017; Donahue et al., 2017): the critic sees pairs,
  (x, ẑ) with ẑ ~ q(z|x) from the guide against (x̃, z) from the model joint p(z)p(x|z);
  L_D = softplus(−D(x, ẑ)) + softplus(D(x̃, z)); generator *and* encoder minimize the
  non-saturating swap L_G = softplus(D(x, ẑ)) + softplus(−D(x̃, z)).

``n_critic`` critic steps per generator step (5 is WGAN-GP's default); each player has
its own optimizer (``optimizer_g``/``optimizer_d`` ∈ adam, rmsprop, sgd; ``lr`` for both, or ``lr_g``/``lr_d``
for one; Adam ``betas``); ``lr_decay=True`` lowers both learning rates linearly to 0 over the run
(per epoch), which lets the generator settle on narrow modes instead of orbiting them. ``pack=m`` is PacGAN (Lin et al., 2018): the critic scores m examples
at once. The critic comes from :func:`ppgen.nn.critics.critic_for`, chosen by data shape
(``critic_net="mlp"`` forces an MLP on images), unless one is passed. An epoch is one pass of the critic over the training data.

An engine of the one training loop (:mod:`ppgen.inference.loop`), as the SVI engines are:
data in memory, an epoch-seeded shuffle and RNG, one history row per epoch (epoch,
loss_d, loss_g, generator_steps, [w_distance,] seconds, wall, images_per_s), a
``callback`` for held-out metrics, ``on_epoch_end`` for checkpoints, ``resume``, and a
NaN/inf loss restores the last good epoch (generator and critic) and says so.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from torch.nn import functional as F

from ppgen.errors import UserError
from ppgen.inference import distributed, loop
from ppgen.inference.fit import Fit, options_of, register
from ppgen.inference.options import LOSSES, OPTIMIZERS, X_DRAWS, AdversarialOptions
from ppgen.nn.critics import critic_for

__all__ = ["LOSSES", "OPTIMIZERS", "X_DRAWS", "critic_loss", "fit_adversarial", "generator_loss", "gradient_penalty",
           "guide_draw", "model_draw"]


# -- drawing from the pair's own sites ------------------------------------------------------------
def _observed_site(trace, pair) -> dict:
    sites = [s for s in trace.nodes.values() if s["type"] == "sample" and s["infer"].get("was_observed")]
    if len(sites) != 1:
        names = [s["name"] for s in sites]
        raise UserError(f"{pair.name or type(pair).__name__}: the adversarial backend needs exactly one observed "
                        f"site in the model, found {names or 'none'}; use backend='svi'")
    return sites[0]


def _latents(trace, pair) -> torch.Tensor:
    """The model's (or guide's) latent draws, flattened per example and concatenated."""
    batch_dims = pair.max_plate_nesting
    parts = []
    for name in pair.latent_sites:
        if name not in trace.nodes:
            raise UserError(f"the guide of {pair.name!r} has no latent site {name!r}; ALI needs q(z|x) for every "
                            "latent of the model")
        v = trace.nodes[name]["value"]
        parts.append(v.reshape(v.shape[:batch_dims] + (-1,)))
    return torch.cat(parts, -1)


def model_draw(pair, x_like: torch.Tensor, x_draw: str = "rsample", with_z: bool = False):
    """Draw x (and the model's latents) from ``pair.model``'s own sites with z ~ p(z); differentiable.

    ``x_like`` only fixes the batch size and device (the model's observation is removed).
    """
    tr = poutine.trace(poutine.uncondition(pair.model)).get_trace(x_like)
    site = _observed_site(tr, pair)
    if x_draw == "mean":
        x = site["fn"].mean
    else:
        x = site["value"]
    return (x, _latents(tr, pair)) if with_z else x


def guide_draw(pair, x: torch.Tensor) -> torch.Tensor:
    """ẑ ~ q(z|x) from ``pair.guide``, reparameterized, flattened per example."""
    return _latents(poutine.trace(pair.guide).get_trace(x), pair)


def check_pair(pair, x: torch.Tensor, loss: str, x_draw: str) -> None:
    """Raise :class:`UserError` if the pair cannot be trained with ``loss`` (one line saying what fits)."""
    who = pair.who
    with torch.no_grad(), pyro.validation_enabled(False):
        tr = poutine.trace(poutine.uncondition(pair.model)).get_trace(x[:2])
        site = _observed_site(tr, pair)
        fn = site["fn"]
        if x_draw == "rsample" and not fn.has_rsample:
            base = getattr(fn, "base_dist", fn)
            raise UserError(f"{who}: its x site ({type(base).__name__}) has no reparameterized draw, so no generator "
                            "gradient; train it with backend='svi', or pass x_draw='mean' to use E[x|z] "
                            "(or build it with likelihood='gaussian' / 'cbernoulli')")
        if x_draw == "mean":
            try:
                _ = fn.mean
            except NotImplementedError:
                raise UserError(f"{who}: its x site has no mean; train it with backend='svi'") from None
        if loss == "ali":
            try:
                guide_draw(pair, x[:2])
            except NotImplementedError:
                raise UserError(f"{who}: loss='ali' needs a guide q(z|x) (an encoder) and this pair has none; build "
                                "the pair with an encoder q(z|x) or use loss='ns', 'wgan-gp' or 'lsgan'") from None


# -- losses ---------------------------------------------------------------------------------------
def critic_loss(loss: str, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """L_D without the gradient penalty (see module docs)."""
    if loss in ("ns", "minimax", "ali"):
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    if loss == "lsgan":
        return 0.5 * ((d_real - 1) ** 2).mean() + 0.5 * (d_fake**2).mean()
    return d_fake.mean() - d_real.mean()  # wgan-gp


def generator_loss(loss: str, d_fake: torch.Tensor, d_real: torch.Tensor | None = None) -> torch.Tensor:
    """L_G; for ALI ``d_real`` is D(x, ẑ), whose encoder side the generator player also moves."""
    if loss == "ns":
        return F.softplus(-d_fake).mean()
    if loss == "minimax":
        return -F.softplus(d_fake).mean()
    if loss == "lsgan":
        return 0.5 * ((d_fake - 1) ** 2).mean()
    if loss == "ali":
        return F.softplus(-d_fake).mean() + F.softplus(d_real).mean()
    return -d_fake.mean()  # wgan-gp


def gradient_penalty(critic, x_real: torch.Tensor, x_fake: torch.Tensor, pack: int = 1) -> torch.Tensor:
    """E (‖∇_x̂ D(x̂)‖₂ − 1)² on random interpolates, one ε per critic input (per pack)."""
    n = x_real.shape[0] // pack
    eps = torch.rand((n, 1) + (1,) * (x_real.dim() - 1), device=x_real.device)
    eps = eps.expand((n, pack) + x_real.shape[1:]).reshape(x_real.shape)
    x_hat = (eps * x_real + (1 - eps) * x_fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    norms = grad.reshape(n, -1).norm(dim=1)
    return ((norms - 1) ** 2).mean()


def make_optimizer(name: str, params, lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise UserError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


# -- the engine -----------------------------------------------------------------------------------
@dataclass
class AdversarialState:
    """The two players: the pair (generator, and encoder for ALI) and the critic, each with its optimizer."""

    pair: Any
    critic: torch.nn.Module
    options: AdversarialOptions
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer


def _make_critic(pair, x0: torch.Tensor, o: AdversarialOptions) -> torch.nn.Module:
    z_dim = 0
    if o.loss == "ali":
        with torch.no_grad():
            z_dim = guide_draw(pair, x0[:2]).shape[-1]
    try:
        return critic_for(pair.x_shape, z_dim=z_dim, pack=o.pack, hidden=o.critic_hidden, net=o.critic_net)
    except ValueError as err:
        raise UserError(str(err)) from None


def _init_with(critic: torch.nn.Module | None):
    def init(pair, data, o: AdversarialOptions, resume: dict | None) -> AdversarialState:
        device = loop.check_torch_device(o.device)
        x0 = data.train_epoch(0)
        if len(x0) < o.batch_size:
            raise UserError(f"only {len(x0)} training examples for a batch of {o.batch_size}; lower --batch-size")
        world = distributed.launched()
        if world > 1 and (o.batch_size // world) % o.pack:
            raise UserError(f"each of the {world} processes takes {o.batch_size // world} examples of a batch, not a "
                            f"multiple of pack={o.pack}; give --batch-size a multiple of {world * o.pack}")
        if pair.inputs:
            raise UserError(f"{pair.who} takes input columns ({', '.join(pair.inputs)}) beside x; the adversarial "
                            "backend trains a generator of x alone: train it with backend='svi'")
        torch.manual_seed(o.seed)
        check_pair(pair, x0, o.loss, o.x_draw)
        net = critic if critic is not None else _make_critic(pair, x0, o)
        pair.to(device)
        net.to(device)
        opt_g = make_optimizer(o.optimizer_g, pair.parameters(), o.generator_lr, tuple(o.betas))
        opt_d = make_optimizer(o.optimizer_d, net.parameters(), o.critic_lr, tuple(o.betas))
        if resume is not None:
            saved = loop.state_from_checkpoint(resume).engine
            try:
                pair.load_state_dict(resume["model"])
                net.load_state_dict(saved["critic"])
                opt_g.load_state_dict(saved["optimizer_g"])
                opt_d.load_state_dict(saved["optimizer_d"])
            except (KeyError, RuntimeError, ValueError, TypeError) as err:
                raise UserError(f"the checkpoint does not fit this {pair.who} and critic "
                                f"({str(err).splitlines()[0][:160]}); resume with the options it was written with"
                                ) from None
        return AdversarialState(pair, net, o, opt_g, opt_d)

    return init


def _step_critic(state: AdversarialState, xb, group: loop.Group) -> tuple[float, float]:
    o, pair, critic = state.options, state.pair, state.critic
    with torch.no_grad():
        if o.loss == "ali":
            x_fake, z_fake = model_draw(pair, xb, o.x_draw, with_z=True)
            z_real = guide_draw(pair, xb)
        else:
            x_fake, z_fake, z_real = model_draw(pair, xb, o.x_draw), None, None
    d_real = critic(xb) if z_real is None else critic(xb, z_real)
    d_fake = critic(x_fake) if z_fake is None else critic(x_fake, z_fake)
    value = critic_loss(o.loss, d_real, d_fake)
    total = value
    if o.loss == "wgan-gp":
        total = value + o.gp_weight * gradient_penalty(critic, xb, x_fake, o.pack)
    state.opt_d.zero_grad(set_to_none=True)
    total.backward()
    # data-parallel: the losses are batch means, so the shards' gradients average to the whole batch's
    total_value, w = group.reduce_step(critic.parameters(), [float(total.detach()), float(-value.detach())], mean=True)
    state.opt_d.step()
    return total_value, w if o.loss == "wgan-gp" else float("nan")


def _step_generator(state: AdversarialState, xb, group: loop.Group) -> float:
    o, pair, critic = state.options, state.pair, state.critic
    critic.requires_grad_(False)
    try:
        if o.loss == "ali":
            x_fake, z_fake = model_draw(pair, xb, o.x_draw, with_z=True)
            value = generator_loss(o.loss, critic(x_fake, z_fake), critic(xb, guide_draw(pair, xb)))
        else:
            value = generator_loss(o.loss, critic(model_draw(pair, xb, o.x_draw)))
        state.opt_g.zero_grad(set_to_none=True)
        value.backward()
        (loss,) = group.reduce_step(pair.parameters(), [float(value.detach())], mean=True)
        state.opt_g.step()
    finally:
        critic.requires_grad_(True)
    return loss


def _epoch(state: AdversarialState, plan: loop.EpochPlan) -> tuple[AdversarialState, loop.EpochResult]:
    o = state.options
    if o.lr_decay:
        for opt, lr in ((state.opt_g, o.generator_lr), (state.opt_d, o.critic_lr)):
            for group in opt.param_groups:
                group["lr"] = lr * (1 - plan.index / plan.epochs)
    g = torch.Generator().manual_seed(plan.seed)
    order = torch.randperm(len(plan.x), generator=g).to(plan.x.device)
    sums = {"loss_d": 0.0, "loss_g": 0.0, "w_distance": 0.0}
    counts = {"d": 0, "g": 0}
    # data-parallel: the model's sites draw what one process draws for the whole batch (this process's rows)
    draws = (distributed.GlobalDraws(plan.group, state.pair.data_plate, plan.seed, plan.x.device)
             if plan.group.world > 1 else contextlib.nullcontext())
    for step in range(plan.steps):
        xb = plan.rows(order, step)
        with draws:
            loss_d, w = _step_critic(state, xb, plan.group)
        sums["loss_d"] += loss_d
        sums["w_distance"] += w
        counts["d"] += 1
        values = [loss_d]
        if (plan.index * plan.steps + step + 1) % o.n_critic == 0:  # counted across epochs
            with draws:
                loss_g = _step_generator(state, xb, plan.group)
            sums["loss_g"] += loss_g
            counts["g"] += 1
            values.append(loss_g)
        if not all(math.isfinite(v) for v in values):
            return state, loop.EpochResult(stop=f"loss became {values}", stop_step=step)
        plan.tick(1)
    row = {"loss_d": sums["loss_d"] / counts["d"], "loss_g": sums["loss_g"] / max(1, counts["g"]),
           "generator_steps": counts["g"]}
    if o.loss == "wgan-gp":
        row["w_distance"] = sums["w_distance"] / counts["d"]
    return state, loop.EpochResult(row)


def _snapshot(state: AdversarialState) -> tuple[dict, dict]:
    return copy.deepcopy(state.pair.state_dict()), copy.deepcopy(state.critic.state_dict())


def _restore(state: AdversarialState, weights: tuple[dict, dict]) -> AdversarialState:
    state.pair.load_state_dict(weights[0])
    state.critic.load_state_dict(weights[1])
    return state


def engine(critic: torch.nn.Module | None = None) -> loop.Engine:
    """The adversarial engine (with the given critic, else one chosen by data shape)."""
    return loop.Engine(
        name="adversarial", init=_init_with(critic), epoch=_epoch, snapshot=_snapshot, restore=_restore,
        sync=lambda s: None,
        checkpoint=lambda s: {"critic": s.critic.state_dict(), "optimizer_g": s.opt_g.state_dict(),
                              "optimizer_d": s.opt_d.state_dict()},
        modules=lambda s: [s.pair, s.critic],
        advice="Lower the learning rate (lr) or try loss='wgan-gp'")


@register("adversarial", AdversarialOptions)
def fit_adversarial(pair, data, *, options: AdversarialOptions | None = None, critic: torch.nn.Module | None = None,
                    progress: bool | None = None, callback: Callable[[Fit], dict | None] | None = None,
                    on_epoch_end: Callable[[Fit], None] | None = None, resume: dict | None = None,
                    **values) -> Fit:
    """Train ``pair``'s generator adversarially; returns a :class:`Fit` with one history row per epoch.

    ``options`` is an :class:`~ppgen.inference.options.AdversarialOptions`, or its fields come as keywords
    (``values``, which also replace the object's). The critic is ``fit.critic`` (its weights also in
    ``fit.state.engine["critic"]``).
    """
    opts = options_of(AdversarialOptions, options, values)
    pair.check_data(data.train_epoch(0), "training data")
    eng = engine(critic)
    state = loop.initial_state(eng, pair, data, opts, resume)
    fit = loop.run(eng, pair, data, opts, backend="adversarial", resume=resume, progress=progress,
                   callback=callback, on_epoch_end=on_epoch_end, state=state)
    fit.critic = state.critic
    return fit
