r"""The SVI backend: maximize an ELBO over the pair's networks with Adam, on the torch or the JAX engine.

``ppgen.fit(pair, data, backend="svi", **options)`` or ``ppgen.fit(pair, data, options=SVIOptions(...))``
(:class:`~ppgen.inference.options.SVIOptions`, built once and handed to the engine as it is).
Engines (``engine=``): ``"torch"`` (Pyro SVI, below), ``"jax"`` (NumPyro SVI on the lowered
pair, each epoch one compiled call: :mod:`ppgen.inference.svi_jax`) and ``"auto"`` (the
default): the engines of the pair's ``svi_engines`` that every chosen option allows (an option
declares its engines: :func:`~ppgen.inference.options.unsupported`), tried in order. Trying is
the engine's initialization, a trial on the pair (the JAX engine checks that its guide draws the
model's latents on NumPyro and traces one step of the compiled epoch); an engine that fails it is
skipped for the next, and the choice, with the failure that caused it, is printed once on stderr and
recorded in ``fit.options["engine"]``. A job too small for compiling to pay — fewer SVI steps in all (epochs × steps
an epoch) than :data:`AUTO_TORCH_BELOW_STEPS`, on the CPU — goes to the torch engine first, and the line says so.
An engine asked for by name that cannot run the pair is one
:class:`~ppgen.errors.UserError` line saying why. Both run inside the one training loop
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
* discrete sites marked for enumeration (``infer={"enumerate": "parallel"}``, ``config_enumerate``;
  "sequential" on the torch engine) — ``TraceEnum_ELBO`` of Pyro (torch) or NumPyro with funsor (JAX),
  the sites summed out exactly (:mod:`ppgen.ppl.elbo`), the enumeration dims left of the pair's
  ``max_plate_nesting`` plates. A discrete site left unmarked is sampled (score-function gradient), with
  one printed line naming it and how to enumerate it.
* a family's own estimator: a pair whose class defines ``objective(x)`` (the protocol's
  hook, e.g. DDPM's sampled timestep) is trained on it by both engines.

MCMC inside training (``mcmc_steps=T``, Hoffman 2017; torch engine): T HMC transitions
started at the guide's draw refine z toward p(z | x) of the current model; the model's
parameters take ∇ log p(x, z_T) (no gradient through the chain), the guide's the ELBO
above (:mod:`ppgen.inference.hmc`). The chain targets the unscaled p(x, z): ``beta``
weights the guide's ELBO only. The step size is adapted between minibatches toward
``mcmc_accept`` and kept in the checkpoint; each epoch's row reports the acceptance.

KL weight: ``beta`` scales every latent site (β-VAE), and ``anneal_epochs`` warms β up
linearly from 0 (Bowman et al., 2016; Sønderby et al., 2016), applied as a Pyro
``scale`` handler on latent sites only.

Aggressive encoder updates (``aggressive_epochs``, torch engine): He et al. (2019), "Lagging
inference networks and posterior collapse in variational autoencoders". Early in training the
guide lags behind the true posterior of the current model, and the model learns to ignore z
before the guide has found what z could carry. During the aggressive phase each model step is
preceded by an inner loop of guide-only steps (the weights the guide's ``pyro.param`` /
``pyro.module`` sites hold, found from a trace of the guide) on fresh random minibatches, until
the loss stops improving — the mean over a window of 5 inner steps is no lower than the previous
window's — or ``aggressive_steps`` steps; then one step of the model's weights only. He et al.
end the phase when I(x; z) stops rising; here it lasts ``aggressive_epochs`` epochs, after which
training is the plain joint update. The guide-only optimizer is a second Adam, not checkpointed
(a run resumed inside the phase restarts its moments).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine
from pyro.infer import RenyiELBO

from ppgen import sites
from ppgen.errors import UserError
from ppgen.inference import distributed, hmc, loop
from ppgen.inference.fit import Fit, options_of, register
from ppgen.inference.options import (
    ELBOS,
    OptionError,
    SVIOptions,
    beta_at,
    elbo_options_in_use,
    lr_at,
    one_process_only,
    unsupported,
)
from ppgen.ppl import FreeBitsELBO, ScaleLatents, discrete_sites, make_elbo

__all__ = ["ELBOS", "FreeBitsELBO", "ScaleLatents", "beta_at", "choose_engine", "fit_svi", "make_adam", "make_elbo"]


class ObjectiveLoss:
    """The pair's own estimator (the protocol's ``objective`` hook) as a loss: Σ over the batch."""

    def __init__(self, pair):
        self.pair = pair

    def differentiable_loss(self, model: Callable, guide: Callable, x: torch.Tensor, *inputs) -> torch.Tensor:
        return self.pair.objective(x, *inputs).sum()


def _loss_and_grads(loss_fn, model, guide, x, *inputs) -> float:
    """Backpropagate the negative ELBO into the networks' ``.grad``; return its value."""
    if isinstance(loss_fn, RenyiELBO):
        return float(loss_fn.loss_and_grads(model, guide, x, *inputs))  # RenyiELBO: backward happens inside
    loss = loss_fn.differentiable_loss(model, guide, x, *inputs)
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


def check_pair_options(pair, options: SVIOptions) -> None:
    """Refuse options the pair or the run cannot use: those that shape the ELBO for a pair trained on its own
    objective, those that do not split over data-parallel processes."""
    shaping = elbo_options_in_use(options) if pair.has_objective else []
    if shaping:
        raise OptionError(shaping[0], getattr(options, shaping[0]), f"{pair.who} is trained on its own objective; "
                          "leave this option at its default")
    unsplittable = one_process_only(options) if distributed.launched() > 1 else []
    if unsplittable:
        name, why = unsplittable[0]
        raise OptionError(name, getattr(options, name), f"{why}; train with one process or leave {name} at its "
                          "default")


# -- the torch engine -----------------------------------------------------------------------------
@dataclass
class TorchState:
    """The torch engine's state: the pair (trained in place), its optimizer and loss."""

    pair: Any
    options: SVIOptions
    optimizer: torch.optim.Optimizer
    loss_fn: Any
    mcmc_step_size: float = 0.0  # MCMC inside training: the adapted HMC step size
    guide_params: list | None = None  # the guide's weights, for the aggressive phase
    guide_optimizer: torch.optim.Optimizer | None = None


def _torch_init(pair, data, options: SVIOptions, resume: dict | None) -> TorchState:
    device = loop.check_torch_device(options.device)
    pair.to(device)
    step_size = options.mcmc_step_size
    inputs0 = tuple(c[:2].to(device) for c in data.train_epoch_inputs(0, pair.inputs))
    if options.mcmc_steps > 0:
        hmc.check_pair(pair, data.train_epoch(0)[:2].to(device), inputs0)
    engine_state = None
    if resume is not None:
        engine_state = loop.state_from_checkpoint(resume).engine
        if isinstance(engine_state.get("optimizer"), list):
            raise UserError("this checkpoint was written by engine='jax'; resume it with engine='jax'")
    # as Pyro's SVI: the parameters are those of a traced run's param sites (pyro.param, pyro.module, an
    # autoguide's, made on that first run), with every other weight of the pair
    batch, _ = loop.batching(len(data.train), options.batch_size)
    params = traced_parameters(pair, data.train_epoch(0)[:batch].to(device), options.seed,
                               tuple(c[:batch].to(device) for c in data.train_epoch_inputs(0, pair.inputs)))
    pair.to(device)  # what the trial run made from the model's (CPU) initial values; the tensors stay the same
    # (after the trial run, which must be the first to make the parameters a first call makes)
    # the rows the trial run saw: a guide that made its parameters on that first call (an autoguide) is
    # shaped by them
    discrete = discrete_sites(pair, data.train_epoch(0)[:batch].to(device),
                              *(c[:batch].to(device) for c in data.train_epoch_inputs(0, pair.inputs)))
    enumerated = bool(discrete.enumerated) and not pair.has_objective
    if enumerated:
        discrete.check_model_side_parallel()
    if enumerated and (options.mcmc_steps > 0 or options.aggressive_epochs > 0):
        name = "mcmc_steps" if options.mcmc_steps > 0 else "aggressive_epochs"
        raise OptionError(name, getattr(options, name), "a pair with sites marked for enumeration trains on the "
                          "enumerated ELBO alone; leave this option at its default")
    loss_fn = (ObjectiveLoss(pair) if pair.has_objective
               else make_elbo(options.elbo, options.num_particles, pair.max_plate_nesting, free_bits=options.free_bits,
                              data_plate=pair.data_plate, backend_name="pyro", enumerate=enumerated))
    optimizer = make_adam(params, options.lr, options.adam_beta1)
    if engine_state is not None:
        _load_weights(pair, resume["model"])
        try:
            optimizer.load_state_dict(engine_state["optimizer"])
        except (KeyError, ValueError) as err:
            raise UserError(f"the checkpoint's optimizer state does not fit this model ({err}); resume it with the "
                            "model options it was written with") from None
        step_size = float(engine_state.get("mcmc_step_size", step_size))
    state = TorchState(pair, options, optimizer, loss_fn, step_size)
    if options.aggressive_epochs > 0:
        state.guide_params = guide_parameters(pair, data.train_epoch(0)[:2].to(device), inputs0)
        state.guide_optimizer = make_adam(state.guide_params, options.lr, options.adam_beta1)
    return state


def traced_parameters(pair, x: torch.Tensor, seed: int = 0,
                      inputs: tuple[torch.Tensor, ...] = ()) -> list[torch.nn.Parameter]:
    """The pair's weights (``pair.parameters()``, in order), after a trial run of its guide and model on ``x`` (and
    its input columns) has made those created on first call (:meth:`~ppgen.models.base.GenerativeModel.trial_run`),
    and any other tensor a param site of that run trains (Pyro's SVI takes ``site["value"].unconstrained()``)."""
    traced = pair.trial_run(x, *inputs, seed=seed)
    params = {id(p): p for p in pair.parameters()}
    for p in traced:
        params.setdefault(id(p), p)
    return list(params.values())


def guide_parameters(pair, x: torch.Tensor, inputs: tuple[torch.Tensor, ...] = ()) -> list[torch.nn.Parameter]:
    """The weights the guide registers (its ``pyro.param`` sites, those of ``pyro.module`` included; the
    unconstrained tensor behind a constrained one)."""
    from ppgen.ppl import trained_tensors

    seen = trained_tensors([poutine.trace(pair.guide).get_trace(x, *inputs)])
    if not seen:
        raise UserError(f"{pair.who}'s guide has no weights: aggressive encoder updates have nothing to update")
    return seen


def _aggressive_inner(state: TorchState, x: torch.Tensor, model, guide, g: torch.Generator, batch: int,
                      inputs: tuple[torch.Tensor, ...] = ()) -> bool:
    """Guide-only steps on fresh minibatches until the windowed loss stops falling (He et al., 2019, Alg. 1);
    False if a loss was not finite."""
    window, previous, current = 5, math.inf, []
    for _ in range(state.options.aggressive_steps):
        rows = torch.randint(len(x), (batch,), generator=g).to(x.device)
        state.guide_optimizer.zero_grad(set_to_none=True)
        value = _loss_and_grads(state.loss_fn, model, guide, x[rows], *(c[rows] for c in inputs))
        if not math.isfinite(value):
            return False
        state.guide_optimizer.step()
        current.append(value)
        if len(current) == window:
            mean = sum(current) / window
            if mean >= previous:
                break
            previous, current = mean, []
    return True


def _load_weights(pair, weights: dict) -> None:
    try:
        pair.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise UserError(f"the checkpoint's weights do not fit this {pair.who} ({str(err).splitlines()[0][:160]}); "
                        "resume with the model options it was written with") from None


def _mcmc_loss_and_grads(state: TorchState, model: Callable, guide: Callable, x: torch.Tensor,
                         inputs: tuple[torch.Tensor, ...] = ()) -> tuple[float, float]:
    """Hoffman (2017): the guide's ELBO gradient, the model's gradient at the refined z; (loss, acceptance)."""
    o, pair = state.options, state.pair
    guide_loss = state.loss_fn.differentiable_loss(model, guide, x, *inputs)
    chain = hmc.refine(pair, x, o.mcmc_steps, state.mcmc_step_size, o.mcmc_leapfrog, inputs=inputs)
    model_loss = -sites.log_joint(pair, x, chain.values, particles=1, inputs=inputs).sum()
    hmc.split_gradients([p for p in pair.parameters() if p.requires_grad], guide_loss, model_loss)
    state.mcmc_step_size = hmc.adapt_step_size(state.mcmc_step_size, chain.acceptance, o.mcmc_accept)
    return guide_loss.item(), chain.acceptance


def _torch_epoch(state: TorchState, plan: loop.EpochPlan) -> tuple[TorchState, loop.EpochResult]:
    o, pair = state.options, state.pair
    lr = lr_at(plan.index, plan.epochs, o.lr, o.lr_final)
    for optimizer in (state.optimizer, state.guide_optimizer):
        for group in optimizer.param_groups if optimizer is not None else ():
            group["lr"] = lr
    g = torch.Generator().manual_seed(plan.seed)
    order = pair.epoch_order(len(plan.x), plan.inputs, plan.batch, plan.steps, g).to(plan.x.device)
    total, b, accepted = 0.0, o.beta, []
    # data-parallel: the sample sites draw what one process draws for the whole batch (this process's rows)
    draws = (distributed.GlobalDraws(plan.group, pair.data_plate, plan.seed, plan.x.device) if plan.group.world > 1
             else contextlib.nullcontext())
    for step in range(plan.steps):
        xb, inputs_b = plan.rows(order, step), plan.input_rows(order, step)
        b = beta_at(plan.index, step, plan.steps, o.beta, o.anneal_epochs)
        scale = ScaleLatents(b) if b != 1.0 else None
        model, guide = (pair.model, pair.guide) if scale is None else (scale(pair.model), scale(pair.guide))
        if plan.group.world > 1:  # global and subsampled terms: each process takes its 1/N share
            shard = distributed.ShardScale(plan.group.world, pair.data_plate)
            model, guide = shard(model), shard(guide)
        aggressive = plan.index + step / plan.steps < o.aggressive_epochs
        if aggressive and not _aggressive_inner(state, plan.x, model, guide, g, plan.batch, plan.inputs):
            return state, loop.EpochResult(stop="loss became non-finite in an aggressive guide step", stop_step=step)
        state.optimizer.zero_grad(set_to_none=True)
        with draws:
            if o.mcmc_steps > 0:  # (data-parallel: each process adapts its own HMC step size on its shard)
                value, acceptance = _mcmc_loss_and_grads(state, model, guide, xb, inputs_b)
                accepted.append(acceptance)
            else:
                value = _loss_and_grads(state.loss_fn, model, guide, xb, *inputs_b)
        # data-parallel: the ELBO sums over the plate, so the gradients (and loss) of the shards add up to one
        # process's on the whole batch
        (value,) = plan.group.reduce_step(pair.parameters(), [value], mean=False)
        if not math.isfinite(value):
            return state, loop.EpochResult(stop=f"loss became {value}", stop_step=step)
        if aggressive:  # the model's step alone: the guide has just had its own
            for p in state.guide_params:
                p.grad = None
        state.optimizer.step()
        total += value
        if step % 10 == 0:
            plan.tick(1, elbo=f"{-total / ((step + 1) * plan.step_examples):.2f}")
        else:
            plan.tick(1)
    if not all_finite(list(pair.parameters())):
        return state, loop.EpochResult(stop="weights became NaN or infinite")
    row = {**loop.objective_row(pair, total / (plan.steps * plan.step_examples)), "beta": b}
    if accepted:
        row.update(mcmc_acceptance=sum(accepted) / len(accepted), mcmc_step_size=state.mcmc_step_size)
    return state, loop.EpochResult(row)


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of ``tensors`` is finite. A finite sum proves it (a NaN or an infinity makes the sum
    non-finite) at an eighth of the cost of ``isfinite`` on CPU; only a non-finite sum, which may be an overflow of
    finite values, is checked element by element."""
    if not tensors:
        return True
    if bool(torch.isfinite(torch.stack([t.detach().sum().float() for t in tensors])).all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _torch_restore(state: TorchState, weights: dict) -> TorchState:
    state.pair.load_state_dict(weights)
    return state


TORCH_ENGINE = loop.Engine(
    name="torch", init=_torch_init, epoch=_torch_epoch,
    snapshot=lambda s: copy.deepcopy(s.pair.state_dict()), restore=_torch_restore, sync=lambda s: None,
    checkpoint=lambda s: {"optimizer": s.optimizer.state_dict(), "mcmc_step_size": s.mcmc_step_size},
    modules=lambda s: [s.pair])


# -- the backend ----------------------------------------------------------------------------------
#: ``engine="auto"`` trains a job of fewer SVI steps than this (epochs × steps an epoch) on the torch engine first:
#: there, tracing, lowering and compiling the JAX epoch cost more than the JAX engine's steps save. Measured by
#: benchmarks/auto_rule.py (``ppgen.fit`` of a 64-128-8 VAE on the 8x8 digits, 4 steps an epoch, and of the
#: 784-400-50 VAE on the bundled MNIST, 13 an epoch; fresh processes; 2-core machine, load average 10-14):
#:
#: * torch's and XLA's own threads (the default), wall seconds: at 4 steps (digits, 1 epoch) torch finished first,
#:   2.8 s against JAX's 4.6 s (warm compilation cache) and 4.8 s (cold); at 13 steps (MNIST, 1 epoch) JAX did,
#:   6.4 s (warm) and 11.2 s (cold) against 19.5 s, and from 40 steps on both networks.
#: * one thread each, CPU seconds (what a quiet core gives): torch first at every size measured, up to 400 steps
#:   on the digits (2.8 s against 5.7 s) and 390 on MNIST (7.3 s against 7.8 s warm, 10.3 s cold); the line fits
#:   give JAX a fixed cost of 1.9-2.0 s warm and 4.5-4.7 s cold against torch's 1.1-1.2 s, and a step no quicker
#:   than torch's (MNIST 14.9 ms against 15.7 ms), so on a quiet core JAX pays only after ~1,000 steps.
#:
#: The threshold sits where every measurement agrees that torch finishes first (below the 13 steps at which JAX
#: already won with the default threads), so ``auto`` keeps JAX wherever any measurement favoured it.
AUTO_TORCH_BELOW_STEPS = 10


def small_job(steps: int | None) -> str | None:
    """Why a job of ``steps`` SVI steps in all trains sooner on the torch engine (``None``: it does not, or the
    number is not known)."""
    if steps is None or steps >= AUTO_TORCH_BELOW_STEPS:
        return None
    return (f"auto: {steps} steps in all, fewer than the {AUTO_TORCH_BELOW_STEPS} it takes for compiling the JAX "
            "epoch to pay; engine='jax' compiles anyway")


def engine_candidates(pair, options: SVIOptions, steps: int | None = None) -> tuple[list[str], str]:
    """The engines to try for ``options.engine``, in order, and why the first: "auto" prefers jax unless an
    option, the pair's ``svi_engines`` or the device rules it out, or the job (``steps``, the SVI steps of the whole
    fit, where known) is too small for compiling to pay (:func:`small_job`, on the CPU); the next is tried when
    the one before cannot run the pair (:func:`fit_svi`)."""
    if distributed.launched() > 1 and options.engine != "torch" and "torch" in pair.svi_engines:
        return ["torch"], (f"data-parallel over {distributed.launched()} processes runs on the torch engine; the "
                           "JAX engine trains in one process")
    if options.engine != "auto":
        refused = pair.unsupported_options(options.engine)
        if refused:  # an option of the pair's config rules the engine out: name it, and the engine that runs it
            name, reason = refused[0]
            raise OptionError(name, pair.config_dict()[name], reason, fix={"engine": pair.svi_engines[0]})
        if options.engine not in pair.svi_engines:
            raise OptionError("engine", options.engine, f"{pair.who} trains only on engine "
                              f"{' or '.join(pair.svi_engines)} (see its svi_engines)")
        return [options.engine], "asked for"
    if "jax" not in pair.svi_engines:
        refused = pair.unsupported_options("jax")
        return ["torch"], refused[0][1] if refused else f"{pair.who} trains only on the torch engine"
    ruled_out = unsupported(options, "jax")
    if ruled_out:
        return ["torch"], ruled_out[0][1]
    if pair.svi_engines[0] == "torch":
        return list(pair.svi_engines), f"{pair.who} as configured runs faster on the torch engine (its svi_engines)"
    if options.device.startswith("cuda"):
        import jax

        if jax.default_backend() != "gpu":
            return ["torch"], "JAX sees no GPU"
    elif small_job(steps) and "torch" in pair.svi_engines:  # measured on the CPU
        return ["torch"] + [e for e in pair.svi_engines if e != "torch"], small_job(steps)
    return list(pair.svi_engines), "the pair lowers to JAX"


def choose_engine(pair, options: SVIOptions, steps: int | None = None) -> tuple[str, str]:
    """(engine, why): the first engine :func:`fit_svi` tries (it falls back to the next if that one's trial fails)
    for a fit of ``steps`` SVI steps in all (``None``: not known, the job's size not counted)."""
    names, why = engine_candidates(pair, options, steps)
    return names[0], why


def total_steps(data, options: SVIOptions) -> int:
    """The SVI steps a fit takes in all: ``epochs`` × the steps of an epoch (:func:`ppgen.inference.loop.batching`)."""
    return options.epochs * loop.batching(len(data.train), options.batch_size)[1]


def _engine(name: str) -> loop.Engine:
    if name == "jax":
        from ppgen.inference import svi_jax

        return svi_jax.JAX_ENGINE
    return TORCH_ENGINE


def start_engine(pair, data, options: SVIOptions, resume: dict | None,
                 announce: Callable[[str], None] | None = None) -> tuple[loop.Engine, Any]:
    """The first engine of :func:`engine_candidates` whose initialization — its trial: the JAX engine traces one
    step of the compiled epoch — runs the pair, and its state. Falling back is said in the one announced line; an
    engine chosen by hand that cannot run the pair is one :class:`UserError` line naming the reason."""
    names, why = engine_candidates(pair, options, total_steps(data, options))  # at least one
    for name in names:
        engine = _engine(name)
        try:
            state = loop.initial_state(engine, pair, data, options, resume)
        except loop.CannotRun as err:
            if options.engine == name:
                others = [e for e in pair.svi_engines if e != name]
                instead = f"; use engine='{others[0]}' or 'auto'" if others else ""
                raise UserError(f"engine='{name}' cannot train {pair.who}: {err}{instead}") from None
            if name == names[-1]:
                raise UserError(f"no SVI engine can train {pair.who}: engine '{name}': {err}") from None
            why = f"engine {name} cannot train {pair.who}: {err}"
            continue
        _announce(options, name, why, announce)
        return engine, state


@register("svi", SVIOptions)
def fit_svi(pair, data, *, options: SVIOptions | None = None, progress: bool | None = None,
            callback: Callable[[Fit], dict | None] | None = None, on_epoch_end: Callable[[Fit], None] | None = None,
            resume: dict | None = None, announce: Callable[[str], None] | None = None, **values) -> Fit:
    """Train ``pair`` by SVI; returns a :class:`Fit` whose ``history`` has one row per epoch.

    ``options`` is an :class:`~ppgen.inference.options.SVIOptions`, or its fields come as keywords
    (``values``, which also replace the object's). ``callback(fit)`` runs after
    every epoch and may return held-out metrics to add to that epoch's row; with
    ``monitor="val_elbo"`` the weights of the best epoch by that metric are kept in
    ``fit.state.best`` (:func:`ppgen.inference.loop.restore_best` restores them).
    ``on_epoch_end(fit)`` is where a run writes its checkpoint; ``resume`` is such a
    checkpoint (see :meth:`Fit.checkpoint`). A checkpoint fixes the engine: it resumes on
    the engine that wrote it. With ``engine="auto"`` the choice is announced once through
    ``announce`` (default: a line on stderr).
    """
    opts = options_of(SVIOptions, options, values)
    check_pair_options(pair, opts)
    pair.check_data(data.train_epoch(0), "training data")
    pair.check_inputs(data.train_epoch(0), data.train_epoch_inputs(0, pair.inputs), "training data")
    if resume is not None:
        written_by = resume.get("options", {}).get("engine", "torch") if isinstance(resume, dict) else "torch"
        written_by = written_by if written_by in ("torch", "jax") else "torch"
        if opts.engine == "auto":
            opts = dataclasses.replace(opts, engine=written_by)
        elif opts.engine != written_by:
            raise UserError(f"this checkpoint was written by engine='{written_by}'; resume it with "
                            f"engine='{written_by}' (or 'auto')")
    engine, state = start_engine(pair, data, opts, resume, announce)
    _notice_sampled_discrete(pair, data, opts.batch_size, announce)
    if pair.training_notice is not None and distributed.is_writer():
        (announce or (lambda m: print(f"ppgen: {m}", file=sys.stderr)))(pair.training_notice)
    return loop.run(engine, pair, data, opts, backend="svi", resume=resume, progress=progress, callback=callback,
                    on_epoch_end=on_epoch_end, state=state)


def _notice_sampled_discrete(pair, data, batch_size: int, announce: Callable[[str], None] | None) -> None:
    """One line naming the discrete latent sites the pair leaves to sampling and how to enumerate them."""
    if pair.has_objective or not pair.has_guide or not distributed.is_writer():
        return
    device = next((p.device for p in pair.parameters()), torch.device("cpu"))
    batch, _ = loop.batching(len(data.train), batch_size)
    inputs = tuple(c[:batch].to(device) for c in data.train_epoch_inputs(0, pair.inputs))
    message = discrete_sites(pair, data.train_epoch(0)[:batch].to(device), *inputs).sampled_notice()
    if message is not None:
        (announce or (lambda m: print(f"ppgen: {m}", file=sys.stderr)))(message)


def _announce(options: SVIOptions, name: str, why: str, announce: Callable[[str], None] | None) -> None:
    if options.engine == name or not distributed.is_writer():
        return
    message = f"SVI engine {name} ({why})"
    if announce is None:
        print(f"ppgen: {message}", file=sys.stderr)
    else:
        announce(message)


def restore_best(fit: Fit) -> Fit:
    """Load the weights of the best monitored epoch, if one was kept."""
    return loop.restore_best(fit)
