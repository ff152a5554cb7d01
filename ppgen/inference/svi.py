r"""The SVI backend: maximize an ELBO over the pair's networks with Adam, on the torch or the JAX engine.

``ppgen.fit(pair, data, backend="svi", **options)`` with :class:`~ppgen.inference.options.SVIOptions`.
Engines (``engine=``): ``"torch"`` (Pyro SVI, below), ``"jax"`` (NumPyro SVI on the lowered
pair, each epoch one compiled call: :mod:`ppgen.inference.svi_jax`) and ``"auto"`` (the
default): the JAX engine wherever the pair lowers and every chosen option is supported
there (free bits is torch-only), the torch engine otherwise; the choice is printed once on
stderr and recorded in ``fit.options["engine"]``. Both run inside the one training loop
(:mod:`ppgen.inference.loop`).

Objectives (``elbo=``):

* ``"trace"`` — Pyro's ``Trace_ELBO``: log p(x, z) − log q(z|x) at z ~ q.
* ``"analytic"`` — Pyro's ``TraceMeanField_ELBO``: E_q[log p(x|z)] − KL(q‖p) with the KL
  in closed form where Pyro has it (Gaussian q and prior).
* ``"iwae"`` — Pyro's ``RenyiELBO(alpha=0)``, the IWAE bound of Burda et al. (2016):
  E[log (1/K) Σ_k p(x, z_k)/q(z_k|x)] with K = ``num_particles``, vectorized.
* ``free_bits=λ`` (any of the above) — Kingma et al. (2016): per latent dimension,
  the KL term is max(λ, KL_j averaged over the batch), so no unit is pushed all the
  way to the prior. Pyro has no such estimator; ``FreeBitsELBO`` is ppgen's.
* a family's own estimator: a pair whose class defines ``objective(x)`` (the protocol's
  hook, e.g. DDPM's sampled timestep) is trained on it by both engines.

KL weight: ``beta`` scales every latent site (β-VAE), and ``anneal_epochs`` warms β up
linearly from 0 (Bowman et al., 2016; Sønderby et al., 2016), applied as a Pyro
``scale`` handler on latent sites only.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine
from pyro.distributions import Independent, Normal
from pyro.distributions.kl import kl_divergence
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ppgen.errors import UserError
from ppgen.inference import loop
from ppgen.inference.fit import Fit, register
from ppgen.inference.options import ELBOS, OptionError, SVIOptions, beta_at, make

__all__ = ["ELBOS", "FreeBitsELBO", "ScaleLatents", "beta_at", "choose_engine", "fit_svi", "make_adam", "make_elbo"]


class ScaleLatents(Messenger):
    """Multiply the log-density of every *latent* sample site by ``factor`` (β)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.factor


def _unwrap(fn) -> tuple[Any, int]:
    extra = 0
    while isinstance(fn, Independent):
        extra += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, extra


class FreeBitsELBO:
    """ELBO with the free-bits KL floor of Kingma et al. (2016), one floor per latent dimension.

    loss = −Σ_obs log p(x|z) + β Σ_sites Σ_j max(λ, mean_batch KL_j) · B.
    KL_j is closed-form for Normal q and p, else the single-sample log q − log p.
    """

    def __init__(self, free_bits: float):
        self.free_bits = free_bits

    def differentiable_loss(self, model: Callable, guide: Callable, *args) -> torch.Tensor:
        guide_tr = poutine.trace(guide).get_trace(*args)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args)
        loss = 0.0
        for name, site in model_tr.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):  # a plate's subsample site is no latent
                continue
            if site["is_observed"]:
                loss = loss - site["fn"].log_prob(site["value"]).sum() * site["scale"]
                continue
            q_site = guide_tr.nodes[name]
            q, q_extra = _unwrap(q_site["fn"])
            p, _ = _unwrap(site["fn"])
            if isinstance(q, Normal) and isinstance(p, Normal):
                kl = kl_divergence(q, p.expand(q.batch_shape))  # (..., B, dims)
                batch_dims = kl.dim() - q_extra
                per_dim = kl.reshape(kl.shape[:batch_dims] + (-1,))
            else:
                value = q_site["value"]
                per_dim = (q_site["fn"].log_prob(value) - site["fn"].log_prob(value)).unsqueeze(-1)
            n = per_dim.reshape(-1, per_dim.shape[-1]).shape[0]
            floored = torch.clamp(per_dim.reshape(-1, per_dim.shape[-1]).mean(0), min=self.free_bits)
            loss = loss + floored.sum() * n * q_site["scale"]
        return loss


class ObjectiveLoss:
    """The pair's own estimator (the protocol's ``objective`` hook) as a loss: Σ over the batch."""

    def __init__(self, pair):
        self.pair = pair

    def differentiable_loss(self, model: Callable, guide: Callable, x: torch.Tensor) -> torch.Tensor:
        return self.pair.objective(x).sum()


def make_elbo(name: str, num_particles: int, max_plate_nesting: int, free_bits: float = 0.0):
    """The Pyro ELBO object for ``name`` (see module docs)."""
    if free_bits > 0:
        return FreeBitsELBO(free_bits)
    if name == "trace":
        return Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                          max_plate_nesting=max_plate_nesting)
    if name == "analytic":
        return TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                                   max_plate_nesting=max_plate_nesting)
    if name == "iwae":
        if num_particles < 2:
            raise UserError("the IWAE objective needs num_particles >= 2 (e.g. --particles 5)")
        return RenyiELBO(alpha=0.0, num_particles=num_particles, vectorize_particles=True,
                         max_plate_nesting=max_plate_nesting)
    raise UserError(f"unknown ELBO {name!r}; choose one of {', '.join(ELBOS)}")


def _loss_and_grads(loss_fn, model, guide, x) -> float:
    """Backpropagate the negative ELBO into the networks' ``.grad``; return its value."""
    if isinstance(loss_fn, RenyiELBO):
        return float(loss_fn.loss_and_grads(model, guide, x))  # RenyiELBO: backward happens inside
    loss = loss_fn.differentiable_loss(model, guide, x)
    loss.backward()
    return loss.item()


def make_adam(params, lr: float, beta1: float = 0.9) -> torch.optim.Adam:
    """Adam with the fused kernel where torch has one for the device (CPU and CUDA in torch >= 2.4).

    Same update rule as the default implementation; one kernel for all parameters costs
    a third of the multi-tensor (``foreach``) version per step on CPU, which for a
    784-400-50 VAE at batch 256 is ~10% of the step (benchmarks/svi_vae.py).
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), foreach=True)


def check_objective_options(pair, options: SVIOptions) -> None:
    """A pair with its own objective is trained on it: the ELBO options do not apply."""
    if not pair.has_objective:
        return
    for name, default in (("elbo", "trace"), ("num_particles", 1), ("beta", 1.0), ("anneal_epochs", 0.0),
                          ("free_bits", 0.0)):
        if getattr(options, name) != default:
            raise OptionError(name, getattr(options, name), f"{pair.who} is trained on its own objective; "
                              "leave this option at its default")


# -- the torch engine -----------------------------------------------------------------------------
@dataclass
class TorchState:
    """The torch engine's state: the pair (trained in place), its optimizer and loss."""

    pair: Any
    options: SVIOptions
    optimizer: torch.optim.Optimizer
    loss_fn: Any


def _torch_init(pair, data, options: SVIOptions, resume: dict | None) -> TorchState:
    device = loop.check_torch_device(options.device)
    pair.to(device)
    loss_fn = (ObjectiveLoss(pair) if pair.has_objective
               else make_elbo(options.elbo, options.num_particles, pair.max_plate_nesting, options.free_bits))
    optimizer = make_adam(pair.parameters(), options.lr, options.adam_beta1)
    if resume is not None:
        engine_state = loop.state_from_checkpoint(resume).engine
        if isinstance(engine_state.get("optimizer"), list):
            raise UserError("this checkpoint was written by engine='jax'; resume it with engine='jax'")
        _load_weights(pair, resume["model"])
        try:
            optimizer.load_state_dict(engine_state["optimizer"])
        except (KeyError, ValueError) as err:
            raise UserError(f"the checkpoint's optimizer state does not fit this model ({err}); resume it with the "
                            "model options it was written with") from None
    return TorchState(pair, options, optimizer, loss_fn)


def _load_weights(pair, weights: dict) -> None:
    try:
        pair.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise UserError(f"the checkpoint's weights do not fit this {pair.who} ({str(err).splitlines()[0][:160]}); "
                        "resume with the model options it was written with") from None


def _torch_epoch(state: TorchState, plan: loop.EpochPlan) -> tuple[TorchState, loop.EpochResult]:
    o, pair = state.options, state.pair
    g = torch.Generator().manual_seed(plan.seed)
    order = torch.randperm(len(plan.x), generator=g).to(plan.x.device)
    total, b = 0.0, o.beta
    for step in range(plan.steps):
        xb = plan.x[order[step * plan.batch : (step + 1) * plan.batch]]
        b = beta_at(plan.index, step, plan.steps, o.beta, o.anneal_epochs)
        scale = ScaleLatents(b) if b != 1.0 else None
        state.optimizer.zero_grad(set_to_none=True)
        model, guide = (pair.model, pair.guide) if scale is None else (scale(pair.model), scale(pair.guide))
        value = _loss_and_grads(state.loss_fn, model, guide, xb)
        if not math.isfinite(value):
            return state, loop.EpochResult(stop=f"loss became {value}", stop_step=step)
        state.optimizer.step()
        total += value
        if step % 10 == 0:
            plan.tick(1, elbo=f"{-total / ((step + 1) * plan.batch):.2f}")
        else:
            plan.tick(1)
    if not all(torch.isfinite(p).all() for p in pair.parameters()):
        return state, loop.EpochResult(stop="weights became NaN or infinite")
    return state, loop.EpochResult({**loop.objective_row(pair, total / (plan.steps * plan.batch)), "beta": b})


def _torch_restore(state: TorchState, weights: dict) -> TorchState:
    state.pair.load_state_dict(weights)
    return state


TORCH_ENGINE = loop.Engine(
    name="torch", init=_torch_init, epoch=_torch_epoch,
    snapshot=lambda s: copy.deepcopy(s.pair.state_dict()), restore=_torch_restore, sync=lambda s: None,
    checkpoint=lambda s: {"optimizer": s.optimizer.state_dict()})


# -- the backend ----------------------------------------------------------------------------------
def choose_engine(pair, options: SVIOptions) -> tuple[str, str]:
    """(engine, why) for ``options.engine``; "auto" picks jax unless an option or the pair rules it out.

    Whether the pair lowers is found when the JAX engine initializes (:func:`fit_svi` falls back then).
    """
    if options.engine != "auto":
        if options.engine not in pair.svi_engines:
            raise OptionError("engine", options.engine, f"{pair.who} trains only on engine "
                              f"{' or '.join(pair.svi_engines)} (see its svi_engines)")
        return options.engine, "asked for"
    if "jax" not in pair.svi_engines:
        return "torch", f"{pair.who} trains only on the torch engine"
    if options.free_bits > 0:
        return "torch", "free bits is torch-only"
    if options.device.startswith("cuda"):
        import jax

        if jax.default_backend() != "gpu":
            return "torch", "JAX sees no GPU"
    return "jax", "the pair lowers to JAX"


@register("svi")
def fit_svi(pair, data, *, progress: bool | None = None, callback: Callable[[Fit], dict | None] | None = None,
            on_epoch_end: Callable[[Fit], None] | None = None, resume: dict | None = None,
            announce: Callable[[str], None] | None = None, **options) -> Fit:
    """Train ``pair`` by SVI; returns a :class:`Fit` whose ``history`` has one row per epoch.

    ``options`` are :class:`~ppgen.inference.options.SVIOptions`. ``callback(fit)`` runs after
    every epoch and may return held-out metrics to add to that epoch's row; with
    ``monitor="val_elbo"`` the weights of the best epoch by that metric are kept in
    ``fit.state.best`` (:func:`ppgen.inference.loop.restore_best` restores them).
    ``on_epoch_end(fit)`` is where a run writes its checkpoint; ``resume`` is such a
    checkpoint (see :meth:`Fit.checkpoint`). A checkpoint fixes the engine: it resumes on
    the engine that wrote it. With ``engine="auto"`` the choice is announced once through
    ``announce`` (default: a line on stderr).
    """
    opts = make(SVIOptions, options)
    check_objective_options(pair, opts)
    pair.check_data(data.train_epoch(0), "training data")
    if resume is not None:
        written_by = resume.get("options", {}).get("engine", "torch") if isinstance(resume, dict) else "torch"
        written_by = written_by if written_by in ("torch", "jax") else "torch"
        if opts.engine == "auto":
            opts = dataclasses.replace(opts, engine=written_by)
        elif opts.engine != written_by:
            raise UserError(f"this checkpoint was written by engine='{written_by}'; resume it with "
                            f"engine='{written_by}' (or 'auto')")
    name, why = choose_engine(pair, opts)
    if name == "jax":
        from ppgen.inference import svi_jax

        try:
            state0 = svi_jax.JAX_ENGINE.init(pair, data, opts, resume)
        except svi_jax.CannotLower as err:
            if opts.engine == "jax":
                raise UserError(f"engine='jax' {err}; use engine='torch'") from None
            name, why = "torch", str(err)
        else:
            _announce(opts, "jax", why, announce)
            engine = dataclasses.replace(svi_jax.JAX_ENGINE, init=lambda *_: state0)
            return loop.run(engine, pair, data, opts, backend="svi", resume=resume, progress=progress,
                            callback=callback, on_epoch_end=on_epoch_end)
    _announce(opts, "torch", why, announce)
    return loop.run(TORCH_ENGINE, pair, data, opts, backend="svi", resume=resume, progress=progress,
                    callback=callback, on_epoch_end=on_epoch_end)


def _announce(options: SVIOptions, name: str, why: str, announce: Callable[[str], None] | None) -> None:
    if options.engine != "auto":
        return
    message = f"SVI engine {name} ({why})"
    if announce is None:
        print(f"ppgen: {message}", file=sys.stderr)
    else:
        announce(message)


def restore_best(fit: Fit) -> Fit:
    """Load the weights of the best monitored epoch, if one was kept."""
    return loop.restore_best(fit)
