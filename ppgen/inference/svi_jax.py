r"""The JAX engine of SVI: the pair's own model/guide trained by NumPyro, each epoch compiled whole.

``ppgen.fit(..., engine="jax")`` (or ``"auto"`` where the pair lowers) lands here. The model
and guide run under ``ppgen.ppl.backend("numpyro")``: ``pyro.sample`` is ``numpyro.sample``
and ``pyro.module(name, net)`` is one ``numpyro.param`` site ``name`` holding the
network's weights (NumPyro's own mechanism; :func:`ppgen.nn.networks.register_numpyro_params`),
so NumPyro SVI trains exactly the sites Pyro's SVI trains. Every :class:`ppgen.nn.Network`
runs its torch.fx lowering (:mod:`ppgen.nn.lower`). One epoch — the minibatch loop,
``lax.scan`` over ``SVI.update`` — is a single ``jax.jit`` function, compiled once per run
(the first epoch's ``seconds`` include that compilation).

Objectives are NumPyro's: ``"trace"`` ``Trace_ELBO``, ``"analytic"`` ``TraceMeanField_ELBO``,
``"iwae"`` ``RenyiELBO(alpha=0)`` with K = ``num_particles``; a pair with sites marked
``infer={"enumerate": "parallel"}`` trains on NumPyro's ``TraceEnum_ELBO`` (funsor), the sites summed out
exactly, ``max_plate_nesting`` the pair's (sequential marks, β and its warm-up fall back to the torch engine:
:func:`check_enumerable`); a pair with its own
``objective`` is trained on it through a ``numpyro.factor`` site. β and its warm-up scale
the latent sites (:class:`ppgen.ppl.ScaleLatents`); the per-step β values enter the compiled epoch as
an array, so annealing is per step, as in the torch engine, without recompiling. Free bits
is torch-only. Buffers (:class:`ppgen.nn.norm.BatchNorm`'s running statistics) are NumPyro
``mutable`` sites, carried in the SVI state from step to step and copied back with the weights;
NumPyro carries them with one particle and the trace or analytic ELBO only, so other settings
fall back to the torch engine.

A family that composes its own batches (``epoch_order``: M2's labelled rows in every batch) hands the compiled
epoch its rows, drawn as the torch engine draws them (the same generator and seed: the same batches on both engines).

The loop (:mod:`ppgen.inference.loop`) is the torch engine's. The weights are copied back
into the torch modules only when someone looks (a callback, a checkpoint, the end of
training); a NaN stop keeps the last good NumPyro state, which is immutable, so it costs
no copy. The checkpoint's optimizer state is the flattened NumPyro state (a list of
tensors, ``weights_only``-loadable); the sampling key is derived from (seed, epoch) each
epoch, so resuming reproduces an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ppgen.errors import UserError
from ppgen.inference import compile_cache, loop
from ppgen.inference.options import SVIOptions, beta_at, unsupported


class CannotLower(loop.CannotRun):
    """The pair or an option cannot run on the JAX engine (the message says why)."""


# -- the pair on NumPyro --------------------------------------------------------------------------
def check_covered(pair, sites: dict[str, Any], params: dict[str, Any] | None = None) -> None:
    """Raise :class:`CannotLower` unless every trainable weight of the pair reaches NumPyro and comes back: the
    weights of ``pyro.module`` sites, ``pyro.param`` values and an autoguide's (mapped to NumPyro's namesake);
    and unless every NumPyro param site (``params``) is one of those."""
    from ppgen.ppl import AutoGuide, OwnParams, numpyro_param_names

    covered = {id(p) for module in sites.values() for p in module.parameters()}
    for module in pair.modules():
        if isinstance(module, OwnParams) or (isinstance(module, AutoGuide) and module.numpyro_values()):
            covered |= {id(p) for p in module.parameters()}
    loose = [name for name, p in pair.named_parameters() if p.requires_grad and id(p) not in covered]
    raw = _pyro_autoguides(pair, covered)
    if raw:
        raise CannotLower(f"cannot train Pyro's own autoguide {raw[0]} (write it as "
                          f"ppgen.ppl.autoguide('{raw[0]}', self.model) for NumPyro's namesake)")
    if loose:
        raise CannotLower(f"trains only weights inside ppgen.nn networks registered with pyro.module, pyro.param "
                          f"sites and the autoguides ppgen maps to NumPyro, and {type(pair).__name__} has others "
                          f"({', '.join(loose[:3])})")
    unknown = sorted(set(params or {}) - set(sites) - numpyro_param_names(pair))
    if unknown:
        raise CannotLower(f"cannot carry the NumPyro param site(s) {', '.join(unknown[:3])} back into "
                          f"{type(pair).__name__}")


def _pyro_autoguides(pair, covered: set[int]) -> list[str]:
    """Class names of Pyro autoguides in the pair whose parameters do not reach NumPyro."""
    from pyro.infer.autoguide import AutoGuide as PyroAutoGuide

    return [type(m).__name__ for m in pair.modules()
            if isinstance(m, PyroAutoGuide) and any(id(p) not in covered for p in m.parameters())]


def module_sites(pair, x: torch.Tensor, inputs: tuple[torch.Tensor, ...] = ()) -> dict[str, Any]:
    """The torch module behind each ``pyro.module`` site of the guide and the model, by site name
    (one eager NumPyro run of each)."""
    import jax.numpy as jnp
    from numpyro import handlers

    from ppgen.ppl import backend, recording_modules

    xj = jnp.asarray(x.detach().cpu().numpy())
    inputs_j = tuple(jnp.asarray(c.detach().cpu().numpy()) for c in inputs)
    with recording_modules() as seen, backend("numpyro"):
        for fn in (pair.guide, pair.model) if pair.has_guide else (pair.model,):
            handlers.trace(handlers.seed(fn, 0)).get_trace(xj, *inputs_j)
    return seen


def scaled_model_guide(pair, scaled: bool = True) -> tuple[Callable, Callable]:
    """``model(x, beta, *inputs)`` and ``guide(x, beta, *inputs)`` on NumPyro: the pair's, latent sites scaled by
    ``beta`` (``scaled=False``: ``beta`` is taken and ignored, as for a pair with enumerated sites, whose
    ``TraceEnum_ELBO`` takes no array-valued scale), with the pair's input columns after it.

    A pair with its own ``objective`` becomes a model with one ``numpyro.factor`` site (−objective)
    and an empty guide, so NumPyro's ``Trace_ELBO`` loss is the objective.
    """
    import numpyro

    from ppgen.ppl import ScaleLatents, backend

    if pair.has_objective:
        def objective_model(x, beta, *inputs):
            with backend("numpyro"):
                numpyro.factor("objective", -pair.objective(x, *inputs).sum())

        return objective_model, lambda x, beta, *inputs: None

    def scale(beta):
        return ScaleLatents(beta) if scaled else contextlib.nullcontext()

    def model(x, beta, *inputs):
        with backend("numpyro"), scale(beta):
            pair.model(x, *inputs)

    def guide(x, beta, *inputs):
        with backend("numpyro"), scale(beta):
            pair.guide(x, *inputs)

    return model, guide


@contextlib.contextmanager
def networks_read_numpyro_params(pair, x: torch.Tensor | None = None) -> Iterator[dict[str, Any]]:
    """Within the block, the pair's model code runs on NumPyro; yields its module sites by name.

    (Kept for code written against the earlier engine: the weights reach NumPyro through the
    ``pyro.module`` param sites in any case.)
    """
    from ppgen.ppl import backend

    x = torch.zeros((2, *pair.x_shape)) if x is None else x
    sites = module_sites(pair, x)
    with backend("numpyro"):
        yield sites


def flatten_state(optim_state) -> list[torch.Tensor]:
    """A NumPyro optimizer state pytree as a list of tensors (its leaves, in ``tree_flatten`` order)."""
    import jax

    return [torch.from_numpy(np.array(leaf)) for leaf in jax.tree_util.tree_leaves(optim_state)]


def unflatten_state(tensors: list[torch.Tensor], like):
    """Inverse of :func:`flatten_state`, with the structure (and dtypes) of a freshly initialised ``like``."""
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree_util.tree_flatten(like)
    if not isinstance(tensors, list | tuple) or len(tensors) != len(leaves):
        raise UserError("the checkpoint's optimizer state is not one of engine='jax' for this model; resume it with "
                        "the engine and model options it was written with")
    restored = []
    for t, leaf in zip(tensors, leaves):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(leaf.shape):
            raise UserError("the checkpoint's optimizer state does not fit this model (shapes differ); resume it "
                            "with the model options it was written with")
        restored.append(jnp.asarray(t.numpy(), dtype=leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, restored)


def copy_into_torch(sites: dict[str, Any], params: dict[str, dict], buffers: dict[str, dict] | None = None,
                    pair: Any = None) -> None:
    """Load the NumPyro parameters (one dict per module site) and the buffers of its mutable sites (batch
    norm's running statistics, ``name + "$buffers"``) into the torch modules; with ``pair``, also every other
    trained param site: ``pyro.param`` values and autoguides' (:func:`ppgen.ppl.load_numpyro_params`)."""
    from ppgen.nn.networks import BUFFERS_SUFFIX
    from ppgen.ppl import load_numpyro_params

    for name, module in sites.items():
        state = {**params[name], **(buffers or {}).get(name + BUFFERS_SUFFIX, {})}
        module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    if pair is not None:
        load_numpyro_params(pair, params, skip=set(sites))


def torch_buffers(sites: dict[str, Any], like: dict[str, dict]) -> dict[str, dict]:
    """The torch modules' buffers as the NumPyro mutable state ``like`` (its keys and dtypes)."""
    import jax.numpy as jnp

    from ppgen.nn.networks import BUFFERS_SUFFIX, numpyro_buffers

    out = {}
    for name, module in sites.items():
        if name + BUFFERS_SUFFIX in like:
            old = like[name + BUFFERS_SUFFIX]
            out[name + BUFFERS_SUFFIX] = {k: jnp.asarray(v, dtype=old[k].dtype)
                                          for k, v in numpyro_buffers(module).items()}
    return out


def check_buffers(svi_state, options: SVIOptions) -> Any:
    """Raise :class:`CannotLower` where the pair has buffers (batch norm) and NumPyro would not carry them:
    its ELBOs update ``mutable`` sites with one particle and the trace or analytic ELBO only."""
    if svi_state.mutable_state is None:
        return
    if options.num_particles != 1 or options.elbo not in ("trace", "analytic"):
        raise CannotLower("carries batch-norm running statistics only with num_particles=1 and elbo 'trace' or "
                          "'analytic' (NumPyro's ELBOs drop mutable state otherwise)")


def step_size(options: SVIOptions, steps: int):
    """Adam's step size: ``lr``, or with ``lr_final`` < 1 a schedule of NumPyro's step count ``i`` that equals the
    torch engine's :func:`~ppgen.inference.options.lr_at` for epoch ``i // steps`` (the count is in the optimizer
    state, so a resumed run continues the schedule)."""
    if options.lr_final == 1.0 or options.epochs <= 1:
        return options.lr

    def schedule(i):
        return options.lr * options.lr_final ** ((i // steps) / (options.epochs - 1))

    return schedule


def make_epoch_fn(svi, n: int, steps: int, batch_size: int):
    """``epoch(state, x, key, betas, columns=(), order=None) -> (state, losses, finite)``: one shuffled pass,
    ``lax.scan`` over steps, jitted; ``columns`` (the pair's input columns) are indexed with x's rows; ``order``
    (steps × batch row indices: a family's own :meth:`~ppgen.models.base.GenerativeModel.epoch_order`) replaces the
    shuffle drawn from ``key``; ``finite`` says whether every parameter is finite at the end."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def epoch(state, x, key, betas, columns=(), order=None):
        idx = (jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size) if order is None
               else order)

        def body(s, inputs):
            i, b = inputs
            return svi.update(s, x[i], b, *(c[i] for c in columns))

        state, losses = jax.lax.scan(body, state, (idx, betas))
        leaves = jax.tree_util.tree_leaves(svi.get_params(state))
        return state, losses, jnp.all(jnp.asarray([jnp.isfinite(leaf).all() for leaf in leaves], dtype=bool))

    return epoch


# -- the engine -----------------------------------------------------------------------------------
@dataclass
class JaxState:
    """The JAX engine's state: NumPyro's SVI state and what is compiled around it."""

    pair: Any
    options: SVIOptions
    svi: Any
    svi_state: Any
    epoch_fn: Any
    sites: dict[str, Any]
    x_cache: tuple = (None, None)
    synced: bool = True
    inputs_cache: tuple = (None, ())  # (the plan's input columns, as JAX arrays)


def _check_device(device: str) -> None:
    import jax

    if device.startswith("cuda") and jax.default_backend() != "gpu":
        raise UserError(f"--device {device} asked for but JAX sees no GPU (install jax[cuda12]); use --device cpu")


def _init(pair, data, options: SVIOptions, resume: dict | None) -> JaxState:
    """Build NumPyro's SVI for the pair and trace it once (this is where a pair that does not lower is found)."""
    import jax
    import numpyro
    from numpyro.infer import SVI

    from ppgen.nn import NotLowerable
    from ppgen.ppl import discrete_sites, make_elbo, recording_modules

    ruled_out = unsupported(options, "jax")
    if ruled_out:
        raise CannotLower(ruled_out[0][1])
    _check_device(options.device)
    compile_cache.enable()
    pair.to("cpu")
    if resume is not None:
        try:
            pair.load_state_dict(resume["model"])
        except (RuntimeError, TypeError, AttributeError) as err:
            raise UserError(f"the checkpoint's weights do not fit this {pair.who} ({str(err).splitlines()[0][:160]});"
                            " resume with the model options it was written with") from None
    batch, steps = loop.batching(len(data.train), options.batch_size)
    x0_torch = data.train_epoch(0)[:batch].cpu()
    inputs_torch = tuple(c[:batch].cpu() for c in data.train_epoch_inputs(0, pair.inputs))
    inputs0 = tuple(jax.device_put(c.numpy()) for c in inputs_torch)
    # one Pyro run makes what the pair creates on first call (pyro.param values with their constraints, an
    # autoguide's parameters); NumPyro then starts from the values the pair keeps: every pyro.param and
    # autoguide site is initialised at them (ppgen.ppl), as the networks are at their torch weights
    pair.trial_run(x0_torch, *inputs_torch, seed=options.seed)
    discrete = discrete_sites(pair, x0_torch, *inputs_torch)  # the trial run's rows (an autoguide is shaped by them)
    enumerated = bool(discrete.enumerated) and not pair.has_objective
    if enumerated:
        check_enumerable(discrete, options)
    model, guide = scaled_model_guide(pair, scaled=not enumerated)
    loss_fn = make_elbo(options.elbo, options.num_particles, pair.max_plate_nesting, backend_name="numpyro",
                        enumerate=enumerated)
    svi = SVI(model, guide, numpyro.optim.Adam(step_size(options, steps), b1=options.adam_beta1), loss_fn)
    try:
        with recording_modules() as sites, warnings.catch_warnings():
            # a discrete site left to sampling: ppgen prints its own line naming it (ppgen.inference.svi)
            warnings.filterwarnings("ignore", message=".*does not support models with discrete latent variables")
            svi_state = traced_init(svi, jax.random.PRNGKey(options.seed), jax.device_put(x0_torch.numpy()), 1.0,
                                    *inputs0)
        check_covered(pair, sites, svi.get_params(svi_state))
        check_buffers(svi_state, options)
    except CannotLower:
        raise
    except NotLowerable as err:
        raise CannotLower(f"cannot lower this model's networks ({err})") from None
    except Exception as err:  # noqa: BLE001 - model code NumPyro cannot run, whatever NumPyro or JAX raised
        raise CannotLower(_cannot_run(pair, err)) from None
    if svi_state.mutable_state is not None:  # svi.init ran the networks once: start from torch's buffers instead
        svi_state = svi_state._replace(mutable_state=torch_buffers(sites, svi_state.mutable_state))
    if resume is not None:
        engine_state = loop.state_from_checkpoint(resume).engine
        svi_state = svi_state._replace(optim_state=unflatten_state(engine_state.get("optimizer"),
                                                                   svi_state.optim_state))
    epoch_fn = make_epoch_fn(svi, len(data.train), steps, batch)
    trial(pair, model, guide, epoch_fn, svi_state, x0_torch, inputs0, len(data.train), steps,
          summed=frozenset(discrete.model_side) if enumerated else frozenset(),
          marked=frozenset(discrete.enumerated) if enumerated else frozenset())
    return JaxState(pair, options, svi, svi_state, epoch_fn, sites)


def _numpyro_mark(site: dict | None) -> str | None:
    return None if site is None else (site.get("infer") or {}).get("enumerate")


def check_enumerable(discrete: Any, options: SVIOptions) -> None:
    """Raise :class:`CannotLower` where NumPyro's ``TraceEnum_ELBO`` cannot train the pair's enumerated sites as
    the torch engine does: it enumerates in parallel only, and it takes no array-valued scale, so β and its
    warm-up (a new β each step of the compiled epoch) stay on the torch engine."""
    sequential = [name for name, mode in discrete.enumerated.items() if mode != "parallel"]
    if sequential:
        raise CannotLower(f"NumPyro enumerates in parallel only, and site {sequential[0]!r} is marked "
                          "'sequential' (mark it 'parallel')")
    if options.beta != 1.0 or options.anneal_epochs > 0:
        raise CannotLower("NumPyro's TraceEnum_ELBO takes no per-step KL weight: beta and anneal_epochs with "
                          "enumerated sites train on the torch engine")


def traced_init(svi, *args):
    """NumPyro's ``SVI.init(*args)`` traced and compiled as one function.

    Run eagerly, ``init`` dispatches every operation of the model and the guide on its own, and XLA compiles each
    new (operation, shape) as a small program: ~30 compilations for an MLP VAE before the first epoch. Traced, it
    is one. Eager where tracing fails (a constraint holding a traced value, Python control flow on values).
    """
    import jax

    try:
        state = jax.jit(svi.init)(*args)
        svi.get_params(state)  # a parameter's constraint that kept a traced value fails here
        return state
    except Exception:  # noqa: BLE001 - whatever tracing raised, the eager run either works or reports it
        return svi.init(*args)


def _cannot_run(pair, err: Exception) -> str:
    first = (str(err).strip().splitlines() or [""])[0][:160]
    return f"cannot run {type(pair).__name__} on NumPyro ({type(err).__name__}: {first})"


def trial(pair, model: Callable, guide: Callable, epoch_fn: Callable, svi_state, x0: torch.Tensor,
          inputs0: tuple, n: int, steps: int, summed: frozenset[str] = frozenset(),
          marked: frozenset[str] = frozenset()) -> None:
    """Raise :class:`CannotLower` unless the pair runs on NumPyro as it does on Pyro: the guide draws every latent
    site of the model but those the ELBO sums out (``summed``: model-side enumerated sites) — a guide written with
    Pyro's own primitives draws nothing there, and NumPyro would silently take the model's prior instead — and one
    step of the compiled epoch traces (shapes only: nothing is compiled
    or run), and every site marked for enumeration on Pyro (``marked``) is marked on NumPyro too (Pyro's
    ``config_enumerate`` handler marks nothing NumPyro sees). Any error NumPyro or JAX raises counts."""
    import jax
    import jax.numpy as jnp
    from numpyro import handlers

    xj = jax.device_put(x0.numpy())
    try:
        if not pair.has_objective:
            missing: list[str] = []
            unmarked: list[str] = []

            def look_at_sites(x, *inputs):  # traced for shapes only: nothing is compiled
                guide_tr = handlers.trace(handlers.seed(guide, 0)).get_trace(x, 1.0, *inputs)
                model_tr = handlers.trace(handlers.replay(handlers.seed(model, 1), guide_tr)).get_trace(x, 1.0, *inputs)
                unmarked.extend(name for name in sorted(marked)
                                if _numpyro_mark(guide_tr.get(name) or model_tr.get(name)) != "parallel")
                missing.extend(name for name, site in model_tr.items()
                               if site["type"] == "sample" and not site["is_observed"] and name not in guide_tr
                               and name not in summed)
                return 0

            jax.eval_shape(look_at_sites, xj, *inputs0)
            if unmarked:
                raise CannotLower(f"site {unmarked[0]!r} is marked for enumeration by a Pyro handler "
                                  "(config_enumerate), which NumPyro does not see: mark it in pyro.sample with "
                                  "infer={'enumerate': 'parallel'}")
            if missing:
                raise CannotLower(f"its guide draws no value of the model's latent site {', '.join(missing)} on "
                                  "NumPyro (a guide written with Pyro's own primitives, such as a Pyro autoguide, "
                                  "runs on the torch engine only)")
        def whole(a):  # the shape of a training column from its first rows: the compiled epoch indexes all n
            return jax.ShapeDtypeStruct((n, *a.shape[1:]), a.dtype)

        jax.eval_shape(epoch_fn, svi_state, whole(xj), jax.random.PRNGKey(0),
                       jax.ShapeDtypeStruct((steps,), jnp.float32), tuple(whole(c) for c in inputs0))
    except CannotLower:
        raise
    except Exception as err:  # noqa: BLE001 - whatever NumPyro or JAX raised: the pair does not run there
        raise CannotLower(_cannot_run(pair, err)) from None


def _epoch(state: JaxState, plan: loop.EpochPlan) -> tuple[JaxState, loop.EpochResult]:
    import jax
    import jax.numpy as jnp

    o = state.options
    perm_key, sample_key = jax.random.split(jax.random.PRNGKey(plan.seed))
    betas = [beta_at(plan.index, step, plan.steps, o.beta, o.anneal_epochs) for step in range(plan.steps)]
    if plan.x is not state.x_cache[0]:  # a fresh draw (dynamic binarization), else the same tensor as before
        state.x_cache = (plan.x, jax.device_put(plan.x.cpu().numpy()))
    seen = state.inputs_cache[0]
    if seen is None or len(seen) != len(plan.inputs) or any(a is not b for a, b in zip(seen, plan.inputs)):
        state.inputs_cache = (plan.inputs, tuple(jax.device_put(c.cpu().numpy()) for c in plan.inputs))
    new_state, losses, finite = state.epoch_fn(state.svi_state._replace(rng_key=sample_key), state.x_cache[1],
                                               perm_key, jnp.asarray(betas, dtype=jnp.float32), state.inputs_cache[1],
                                               _family_order(state.pair, plan))
    losses = np.asarray(losses, dtype=np.float64)
    plan.tick(plan.steps)
    if not np.isfinite(losses).all():
        step = int(np.argmin(np.isfinite(losses)))
        return state, loop.EpochResult(stop=f"loss became {float(losses[step])}", stop_step=step)
    if not bool(finite):
        return state, loop.EpochResult(stop="weights became NaN or infinite")
    state.svi_state, state.synced = new_state, False
    loss = float(losses.sum()) / (plan.steps * plan.step_examples)
    return state, loop.EpochResult({**loop.objective_row(state.pair, loss), "beta": betas[-1]})


def _family_order(pair, plan: loop.EpochPlan) -> Any:
    """The rows of the epoch's steps (steps × batch, a JAX array) where the family composes its own batches
    (``epoch_order``, drawn as the torch engine draws it: the same generator, the same seed, so both engines see the
    same batches), else None (the compiled epoch shuffles)."""
    if not pair.declares("epoch_order"):
        return None
    import jax

    g = torch.Generator().manual_seed(plan.seed)
    order = pair.epoch_order(len(plan.x), plan.inputs, plan.batch, plan.steps, g)[: plan.steps * plan.batch]
    return jax.device_put(order.view(plan.steps, plan.batch).to(torch.int32).numpy())


def _sync(state: JaxState) -> None:
    if not state.synced:
        copy_into_torch(state.sites, state.svi.get_params(state.svi_state), state.svi_state.mutable_state,
                        state.pair)
        state.synced = True


def _restore(state: JaxState, svi_state) -> JaxState:
    state.svi_state, state.synced = svi_state, False
    return state


JAX_ENGINE = loop.Engine(
    name="jax", init=_init, epoch=_epoch, snapshot=lambda s: s.svi_state, restore=_restore, sync=_sync,
    checkpoint=lambda s: {"optimizer": flatten_state(s.svi_state.optim_state)})
