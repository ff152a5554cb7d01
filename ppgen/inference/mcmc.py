r"""NUTS in NumPyro on the pair's own model, with the trained networks fixed.

Two uses, one sampler:

* ``points=idx`` — the latents of chosen data points, p(z_i | x_i, θ) with θ the
  trained networks. The points are independent posteriors, so each (point,
  chain) pair gets its own NUTS state: its own step size, its own (diagonal or
  dense) mass matrix and its own warmup. They run in lock step under
  ``jax.vmap`` over NumPyro's functional HMC API (``numpyro.infer.hmc.hmc``:
  ``init_kernel`` / ``sample_kernel``), warmup and sampling in two
  ``lax.scan`` loops, compiled once per (pair, shapes, options) and reused —
  not a Python loop of MCMC runs.
* no ``points`` — every unknown of a small pair (factor analysis: loadings,
  noise and the latents of every example; PPCA: the latents of every example),
  the same machinery with the whole data set as one "point" and the chains
  vectorized.

The model is ``pair.model`` run under ``ppgen.ppl.backend("numpyro")``: its
``ppgen.nn`` networks lower to JAX when called on JAX arrays. Their weights are
passed to the compiled function as *arguments* (not baked in as constants), so
new weights of the same architecture reuse the compiled code. Several JAX
devices (e.g. ``XLA_FLAGS=--xla_force_host_platform_device_count=2``) split the
chains with ``jax.pmap`` (``chain_method="parallel"``).

Kept per draw, as ArviZ names them: ``diverging``, ``energy``, ``lp`` (minus the
potential energy), ``n_steps`` (leapfrog steps), ``tree_depth``,
``acceptance_rate`` and ``step_size``; the adapted inverse mass matrices are kept
in ``fit.state``.

Discrete latents: sites marked ``infer={"enumerate": "parallel"}`` (or "sequential", taken as parallel) are summed
out of the potential exactly by NumPyro's enumeration through funsor, so NUTS moves only the continuous latents z,
on their marginal posterior p(z | x) = Σ_e p(z, e | x). Each draw z_s is then completed with a draw of the
discrete sites from p(e | x, z_s) (NumPyro's ``infer_discrete``, temperature 1), so (z_s, e_s) are draws of the
joint posterior and ``fit.samples`` (and ArviZ's ``posterior`` group) hold e beside z.

When a network cannot be lowered (:class:`ppgen.nn.NotLowerable`), Pyro's NUTS
(jit on) samples instead, one point and one chain after another, with a one-line
notice on stderr; it keeps ``diverging`` and ``step_size``.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ppgen.errors import UserError
from ppgen.inference.fit import Fit, SamplerState, register

CHAIN_METHODS = ("auto", "vectorized", "parallel")
#: compiled samplers, most recently used last; at most CACHE_SIZE are kept
_CACHE: OrderedDict[tuple, Any] = OrderedDict()
CACHE_SIZE = 8


# -- the pair's model on NumPyro with the weights as arguments ------------------------------
def numpyro_model(pair):
    """``model(x, params)``: the pair's model on NumPyro, its ``pyro.module`` param sites set to ``params``
    by ``handlers.substitute`` (NumPyro's own mechanism; ``params`` may be tracers), its data plate whole
    (:func:`whole_plate`: NUTS conditions on every example it is given, never on a random subsample). For a pair
    with input columns ``x`` is the tuple (x, *inputs)."""
    from numpyro import handlers

    from ppgen.ppl import backend

    def model(x, params):
        with (backend("numpyro"), handlers.substitute(data=params), whole_plate(pair.data_plate),
              handlers.infer_config(config_fn=_sequential_as_parallel)):
            pair.model(*x) if isinstance(x, tuple) else pair.model(x)

    return model


def _sequential_as_parallel(site: dict) -> dict:
    # NumPyro sums out sites marked "parallel" only; the sum is the same whichever way a site is marked
    return {"enumerate": "parallel"} if (site.get("infer") or {}).get("enumerate") == "sequential" else {}


def enumerated_sites(trace: dict) -> list[str]:
    """Sites of a NumPyro model trace that NUTS sums out (marked for enumeration, discrete), in order."""
    return [name for name, site in trace.items() if site["type"] == "sample" and not site["is_observed"]
            and (site.get("infer") or {}).get("enumerate") == "parallel"
            and getattr(site["fn"], "has_enumerate_support", False)]


def whole_plate(name: str):
    """A NumPyro handler under which ``plate(name, N, subsample_size=B)`` holds all N indices (scale 1).

    A model that subsamples its data plate (Pyro's idiom for minibatch SVI: the local terms scaled by N/B)
    would ask NUTS for random subsample indices (NumPyro: "Missing random key to generate subsample indices");
    the posterior NUTS samples is the one given all N examples, so the plate's subsample becomes ``arange(N)``.
    """
    import jax.numpy as jnp
    from numpyro.primitives import Messenger

    class WholePlate(Messenger):
        def process_message(self, msg):
            if msg["type"] == "plate" and msg["name"] == name and msg["value"] is None:
                size = msg["args"][0]
                msg["value"], msg["args"] = jnp.arange(size), (size, None)

    return WholePlate()


def network_params(pair, x: torch.Tensor, inputs: tuple[torch.Tensor, ...] = ()) -> dict[str, Any]:
    """The current weights of the model's ``pyro.module`` sites, as JAX arrays keyed by site name."""
    from numpyro import handlers

    from ppgen.ppl import backend

    xj = _to_jax(x)
    with backend("numpyro"), whole_plate(pair.data_plate):
        trace = handlers.trace(handlers.seed(pair.model, 0)).get_trace(xj, *(_column_to_jax(c) for c in inputs))
    return {name: site["value"] for name, site in trace.items() if site["type"] == "param"}


def _to_jax(x: torch.Tensor):
    import jax.numpy as jnp

    return jnp.asarray(x.detach().cpu().numpy().astype(np.float32))


def _column_to_jax(column: torch.Tensor):
    """An input column as a JAX array of its own kind (class indices stay integers)."""
    import jax.numpy as jnp

    return jnp.asarray(column.detach().cpu().numpy())


def _shapes(x) -> tuple:
    """The shape of the examples (of each array of the tuple (x, *inputs))."""
    return tuple(tuple(a.shape) for a in x) if isinstance(x, tuple) else tuple(x.shape)


# -- the compiled, vectorized sampler ---------------------------------------------------------
def _draw_stats(state) -> dict[str, Any]:
    import jax.numpy as jnp

    n = state.num_steps
    depth = jnp.where(n > 0, jnp.floor(jnp.log2(jnp.maximum(n, 1))) + 1, 0).astype(jnp.int32)
    return {"diverging": state.diverging, "energy": state.energy, "lp": -state.potential_energy,
            "n_steps": n, "tree_depth": depth, "acceptance_rate": state.accept_prob,
            "step_size": state.adapt_state.step_size}


def _runner(potential_gen, warmup: int, samples: int, dense_mass: bool, target_accept: float, max_tree_depth: int,
            devices: int):
    """Jitted ``run(keys, z0, xs, params)`` over a batch of independent NUTS chains."""
    import jax
    from jax import lax
    from numpyro.infer.hmc import hmc

    init_kernel, sample_kernel = hmc(potential_fn_gen=potential_gen, algo="NUTS")

    def one(key, z0, x, params):
        args = (x, params)
        state = init_kernel(z0, warmup, dense_mass=dense_mass, target_accept_prob=target_accept,
                            max_tree_depth=max_tree_depth, model_args=args, rng_key=key)

        def step(s, _):  # one scan for warmup and sampling: the NUTS body is compiled once
            s = sample_kernel(s, model_args=args)
            return s, (s.z, _draw_stats(s))

        state, (zs, stats) = lax.scan(step, state, None, length=warmup + samples)
        keep = slice(warmup, None)
        zs = jax.tree.map(lambda a: a[keep], zs)
        stats = {k: v[keep] for k, v in stats.items()} | {"warmup_divergences": stats["diverging"][:warmup].sum()}
        return zs, stats, state.adapt_state.inverse_mass_matrix

    batched = jax.vmap(one, in_axes=(0, 0, 0, None))
    if devices > 1:
        return jax.pmap(batched, in_axes=(0, 0, 0, None))
    return jax.jit(batched)


class _Sampler:
    """Everything compiled for one pair and one set of options (cached per pair)."""

    def __init__(self, pair, x_example, params, warmup, samples, dense_mass, target_accept, max_tree_depth, devices):
        import jax
        from numpyro.infer.util import initialize_model

        self.model = numpyro_model(pair)
        info = initialize_model(jax.random.PRNGKey(0), self.model, model_args=(x_example, params), dynamic_args=True)
        self.potential_gen, self.postprocess_gen = info.potential_fn, info.postprocess_fn
        self.prototype = info.param_info.z
        self.trace = info.model_trace
        self.devices = devices
        self.run = _runner(self.potential_gen, warmup, samples, dense_mass, target_accept, max_tree_depth, devices)
        self.find = jax.jit(jax.vmap(self._find, in_axes=(0, 0, None)))
        self.postprocess = jax.jit(jax.vmap(jax.vmap(lambda z, x, p: self.postprocess_gen(x, p)(z),
                                                     in_axes=(0, None, None)), in_axes=(0, 0, None)))
        eager = _eager_trace(pair, x_example, params)
        #: discrete sites NUTS sums out (NumPyro's enumeration through funsor), with their eager trace's site
        self.enumerated = {name: eager[name] for name in enumerated_sites(eager)}
        self.max_plate_nesting = pair.max_plate_nesting
        if self.enumerated:
            self.discrete = jax.jit(jax.vmap(jax.vmap(self._discrete, in_axes=(0, 0, None, None)),
                                             in_axes=(0, 0, 0, None)))

    def _discrete(self, key, values, x, params):
        r"""One draw of the enumerated sites e from p(e | x, z) at a posterior draw z of the continuous latents
        (NumPyro's ``infer_discrete``, temperature 1): (z, e) is then a draw from p(z, e | x)."""
        from numpyro import handlers
        from numpyro.contrib.funsor import infer_discrete

        conditioned = handlers.condition(self.model, data=values)
        tr = handlers.trace(infer_discrete(conditioned, first_available_dim=-self.max_plate_nesting - 1,
                                           temperature=1, rng_key=key)).get_trace(x, params)
        return {name: tr[name]["value"] for name in self.enumerated}

    def _find(self, key, x, params):
        """A valid starting point drawn as NumPyro does (uniform(−2, 2) in unconstrained space)."""
        from numpyro.infer.util import find_valid_initial_params

        model = self.model
        if self.enumerated:  # the potential sums the enumerated sites out, as initialize_model's does
            from numpyro.contrib.funsor import enum

            model = enum(model, first_available_dim=-self.max_plate_nesting - 1)
        (z, _, _), _ = find_valid_initial_params(key, model, model_args=(x, params),
                                                 prototype_params=self.prototype, enum=bool(self.enumerated))
        return z

    def __call__(self, key, xs, params):
        import jax

        b = (xs[0] if isinstance(xs, tuple) else xs).shape[0]
        k_init, k_run = jax.random.split(key)
        z0 = self.find(jax.random.split(k_init, b), xs, params)
        keys = jax.random.split(k_run, b)
        if self.devices > 1:
            pad = (-b) % self.devices
            keys, z0, xs_d = (jax.tree.map(lambda a: _pad_split(a, pad, self.devices), t) for t in (keys, z0, xs))
            out = self.run(keys, z0, xs_d, params)
            out = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:])[:b], out)
        else:
            out = self.run(keys, z0, xs, params)
        zs, stats, inv_mass = jax.block_until_ready(out)
        values = self.postprocess(zs, xs, params)
        if self.enumerated:
            draws = next(iter(values.values())).shape[1]
            keys = jax.random.split(jax.random.fold_in(key, 1), b * draws).reshape(b, draws, -1)
            values = {**values, **self.discrete(keys, {n: values[n] for n in self.latent_names}, xs, params)}
        return values, stats, inv_mass

    @property
    def latent_names(self) -> list[str]:
        """The continuous latent sites NUTS moves."""
        return [n for n in latent_sites(self.trace) if n not in self.enumerated]


def _pad_split(a, pad: int, devices: int):
    import jax.numpy as jnp

    if pad:
        a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)], 0)
    return a.reshape((devices, -1) + a.shape[1:])


def _devices(chain_method: str) -> int:
    import jax

    if chain_method not in CHAIN_METHODS:
        raise UserError(f"unknown chain_method {chain_method!r}; choose one of {', '.join(CHAIN_METHODS)}")
    n = jax.local_device_count()
    if chain_method == "parallel" and n < 2:
        raise UserError("chain_method='parallel' needs several JAX devices; on CPU set "
                        "XLA_FLAGS=--xla_force_host_platform_device_count=N before starting Python, or use 'vectorized'")
    return n if chain_method in ("auto", "parallel") and n > 1 else 1


def _structure(pair) -> tuple | None:
    """What the compiled code depends on: the pair's class and config; None (do not cache) for a pair whose
    config is not a dataclass (a user's own pair may keep its architecture anywhere)."""
    import json

    try:
        config = json.dumps(pair.config_dict(), sort_keys=True)
    except TypeError:  # dataclasses.asdict of a config that is not a dataclass
        return None
    return (type(pair).__module__, type(pair).__qualname__, config)


def sampler(pair, x_example, params, **options) -> _Sampler:
    """The compiled sampler for pairs shaped like ``pair`` and for ``options`` (built once, then reused).

    The key is the pair's class and config, not the object: weights are arguments,
    so a freshly trained or reloaded pair of the same architecture reuses the code.
    """
    structure = _structure(pair)
    if structure is None:
        return _Sampler(pair, x_example, params, **options)
    key = structure + tuple(sorted(options.items())) + (_shapes(x_example),)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    _CACHE[key] = _Sampler(pair, x_example, params, **options)
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return _CACHE[key]


# -- helpers on sites -------------------------------------------------------------------------
def latent_sites(trace: dict) -> dict[str, dict]:
    """The unobserved sample sites of a NumPyro model trace, in order."""
    return {name: s for name, s in trace.items() if s["type"] == "sample" and not s["is_observed"]}


def site_plates(site: dict, data_plate: str = "data") -> list[tuple[str, int]]:
    """The vectorized plates around a site as (name, dim): the data plate first, then the others outermost
    first (most negative dim first); an estimator's ``particles`` plate is left out."""
    frames = [(f.name, f.dim) for f in site["cond_indep_stack"] if f.dim is not None and f.name != "particles"]
    data = [fr for fr in frames if fr[0] == data_plate]
    return data + sorted((fr for fr in frames if fr[0] != data_plate), key=lambda fr: fr[1])


def canonical(value, site: dict, data_plate: str = "data", lead: int = 0):
    """A site's value (lead..., *batch, *event) in ppgen's layout (lead..., [data], *other plates, *event).

    The batch axes a plate names are kept, the data plate's first (wherever the model declared it: at dim −2
    under a plate of coordinates, say); every other batch axis is a broadcast axis of size 1 and is dropped.
    ``lead`` leading axes (draws, chains) pass through. Works on numpy and torch arrays.
    """
    event = len(site["fn"].event_shape)
    batch = value.ndim - lead - event
    plates = site_plates(site, data_plate)
    width = max([batch] + [-dim for _, dim in plates])
    if width > batch:  # a plate wider than the value's batch shape: size-1 axes to add in front
        value = value.reshape(tuple(value.shape[:lead]) + (1,) * (width - batch) + tuple(value.shape[lead:]))
        batch = width
    axes = [lead + batch + dim for _, dim in plates]
    dropped = [lead + i for i in range(batch) if lead + i not in axes]
    if any(value.shape[a] != 1 for a in dropped):
        raise UserError(f"site {site['name']!r} varies along a batch dim no plate names (shape "
                        f"{tuple(value.shape[lead:])}); declare that dim with a pyro.plate")
    order = list(range(lead)) + axes + dropped + list(range(lead + batch, value.ndim))
    value = value.permute(*order) if hasattr(value, "permute") else value.transpose(order)
    keep = tuple(value.shape[: lead + len(axes)]) + tuple(value.shape[lead + batch:])
    return value.reshape(keep)


def site_dims(trace: dict, names, data_plate: str = "data") -> dict[str, list[str]]:
    """ArviZ dimension names of sites in the :func:`canonical` layout: ``data`` for the data plate, the other
    plates' names, then one name per event dimension."""
    dims = {}
    for name in names:
        site = trace[name]
        plates = ["data" if p == data_plate else p for p, _ in site_plates(site, data_plate)]
        n_event = len(site["fn"].event_shape)
        event = [f"{name}_dim"] if n_event == 1 else [f"{name}_dim_{i}" for i in range(n_event)]
        dims[name] = plates + event
    return dims


def _eager_trace(pair, x, params) -> dict:
    """One NumPyro trace of the model, run eagerly (no compilation): to look at its sites."""
    from numpyro import handlers

    return handlers.trace(handlers.seed(numpyro_model(pair), 0)).get_trace(x, params)


def _check_local(trace: dict, data_plate: str = "data") -> None:
    for name, site in latent_sites(trace).items():
        if not any(f.name == data_plate for f in site["cond_indep_stack"]):
            raise UserError(f"points= samples the per-example latents with the networks fixed, but site {name!r} is "
                            "global (outside the 'data' plate); run without points to sample every unknown")


def select_points(data, points: int | Sequence[int], split: str | None) -> tuple[torch.Tensor, np.ndarray, str]:
    """The examples ``points`` indexes (a count n means the first n) in ``split`` (test if there is one)."""
    split = split or ("test" if len(data.test) else "train")
    if split not in ("train", "val", "test"):
        raise UserError(f"unknown split {split!r}; choose train, val or test")
    pool = getattr(data, split)
    idx = np.arange(int(points)) if np.ndim(points) == 0 else np.asarray(points, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise UserError("points is empty; give at least one index (or a count such as points=16)")
    if idx.min() < 0 or idx.max() >= len(pool):
        raise UserError(f"points asks for example {int(idx.max() if idx.max() >= len(pool) else idx.min())} but the "
                        f"{split} set holds {len(pool)} (indices 0..{len(pool) - 1}); ask for fewer points")
    return pool[torch.as_tensor(idx)], idx, split


# -- the backend ------------------------------------------------------------------------------
@register("nuts")
def fit_nuts(
    pair,
    data,
    *,
    points: int | Sequence[int] | None = None,
    split: str | None = None,
    chains: int = 4,
    warmup: int = 500,
    samples: int = 1000,
    seed: int = 0,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    dense_mass: bool = False,
    chain_method: str = "auto",
    fallback: bool = True,
) -> Fit:
    """NUTS over the latents of ``points`` (networks fixed) or over every unknown of a small pair.

    ``fit.samples[site]`` is shaped (chain, draw, *site shape); with ``points`` the
    data plate holds the chosen points, in order. ``fit.state["sample_stats"]``
    holds the per-draw statistics (chain, draw[, point]); ``fit.state["x"]`` the
    observed examples. ``fallback=False`` refuses a pair that cannot be lowered
    instead of running Pyro's NUTS.
    """
    from ppgen.nn import NotLowerable

    if int(chains) < 1 or int(samples) < 1 or int(warmup) < 0:
        raise UserError(f"need chains >= 1, samples >= 1 and warmup >= 0 (got {chains}, {samples}, {warmup})")
    if not 0 < target_accept < 1:
        raise UserError(f"target_accept must lie in (0, 1), got {target_accept}")
    if points is not None:
        x, idx, split = select_points(data, points, split)
    else:
        x, idx, split = data.train, None, "train"
    inputs = data.inputs(split, pair.inputs)
    if idx is not None:  # the chosen points' own rows of the input columns
        inputs = tuple(c[torch.as_tensor(idx)] for c in inputs)
    pair.check_data(x, f"{split} data")
    pair.check_inputs(x, inputs, f"{split} data")
    subsampled = _check_whole_plate(pair, x, inputs) if idx is None else False
    options = dict(points=None if idx is None else idx.tolist(), split=split, chains=int(chains), warmup=int(warmup),
                   samples=int(samples), seed=seed, target_accept=target_accept, max_tree_depth=max_tree_depth,
                   dense_mass=dense_mass, chain_method=chain_method)
    pair.eval()
    start = time.perf_counter()
    try:
        samples_, stats, extra = _numpyro_nuts(pair, x, idx is not None, inputs=inputs, **options)
        engine = "numpyro"
    except NotLowerable as err:
        if not fallback:
            raise UserError(f"this pair cannot be lowered to JAX ({err}); pass fallback=True to use Pyro's NUTS "
                            "or write the network from ppgen.nn layers") from None
        if subsampled:
            raise UserError(f"this pair cannot be lowered to JAX ({err}) and its data plate subsamples itself, which "
                            "Pyro's NUTS cannot undo: write the network from ppgen.nn layers or declare the plate "
                            "without subsample_size") from None
        print(f"ppgen: NUTS on NumPyro is not possible ({err}); falling back to Pyro's NUTS, which is much slower",
              file=sys.stderr)
        samples_, stats, extra = _pyro_nuts(pair, x, idx is not None, inputs=inputs, **options)
        engine = "pyro"
    wall = time.perf_counter() - start
    stats_summary = {"divergences": int(np.sum(stats["diverging"])), "wall": wall, "engine": engine,
                     "mean_tree_depth": float(np.mean(stats["tree_depth"])) if "tree_depth" in stats else None}
    coords = {"data": (idx if idx is not None else np.arange(len(x))).tolist()}
    state = SamplerState(x=x.detach().cpu(), sample_stats=stats, engine=engine, coords=coords,
                         dims=extra.pop("dims", {}), extra=extra,
                         inputs={name: c.detach().cpu() for name, c in zip(pair.inputs, inputs)})
    return Fit(pair=pair, backend="nuts", history=[stats_summary], state=state, options=options, samples=samples_)


def _check_whole_plate(pair, x: torch.Tensor, inputs: tuple[torch.Tensor, ...] = ()) -> bool:
    """Whole-model NUTS conditions on every example: the data plate's declared size must be the examples given.
    Whether the model subsamples the plate (NumPyro's NUTS then runs it whole: :func:`whole_plate`)."""
    from pyro import poutine

    from ppgen import sites

    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not registered in the param store.*")
        where = sites.layout(poutine.trace(pair.model).get_trace(x, *inputs), pair.data_plate)
    if where.full_size != len(x):
        raise UserError(f"the data plate {pair.data_plate!r} declares {where.full_size} examples but NUTS is given "
                        f"{len(x)} (the training split): NUTS conditions on the whole plate; declare its size as the "
                        "number of examples the model is given")
    return where.examples != where.full_size


def _numpyro_nuts(pair, x: torch.Tensor, per_point: bool, *, chains, warmup, samples, seed, target_accept,
                  max_tree_depth, dense_mass, chain_method, inputs: tuple[torch.Tensor, ...] = (),
                  **_) -> tuple[dict, dict, dict]:
    import jax
    import jax.numpy as jnp

    params = network_params(pair, x[:1], tuple(c[:1] for c in inputs))
    xj = _to_jax(x) if not inputs else (_to_jax(x), *(_column_to_jax(c) for c in inputs))  # a point's x and inputs
    units = jax.tree.map(lambda a: a[:, None] if per_point else a[None], xj)  # one independent posterior per unit
    first = jax.tree.map(lambda a: a[0], units)
    devices = _devices(chain_method)
    if per_point:
        _check_local(_eager_trace(pair, first, params), pair.data_plate)
    s = sampler(pair, first, params, warmup=warmup, samples=samples, dense_mass=dense_mass,
                target_accept=target_accept, max_tree_depth=max_tree_depth, devices=devices)
    xs = jax.tree.map(lambda a: jnp.repeat(a, chains, axis=0), units)  # (unit, chain) flattened, unit-major
    values, stats, inv_mass = s(jax.random.PRNGKey(seed), xs, params)
    n_units = len(x) if per_point else 1

    def arrange(a, site=None):
        if site is not None:  # (unit·chain, draw, [data], *other plates, *event)
            a = canonical(np.asarray(a), site, pair.data_plate, lead=2)
            if per_point:
                a = a[:, :, 0]  # drop the size-1 data plate of each point
        a = np.asarray(a).reshape((n_units, chains) + a.shape[1:])  # (unit, chain, draw, ...)
        a = np.moveaxis(a, 0, 2)  # (chain, draw, unit, ...)
        return a if per_point else a[:, :, 0]

    sites = {**{n: site for n, site in latent_sites(s.trace).items() if n not in s.enumerated}, **s.enumerated}
    out = {name: arrange(values[name], site) for name, site in sites.items()}
    stat_arrays = {k: arrange(v) for k, v in stats.items() if k != "warmup_divergences"}
    warm = np.asarray(stats["warmup_divergences"]).reshape(n_units, chains)
    extra = {"inverse_mass_matrix": jax.tree.map(lambda a: np.asarray(a).reshape((n_units, chains) + a.shape[1:]),
                                                 inv_mass),
             "warmup_divergences": warm.T if per_point else warm[0]}
    extra["dims"] = site_dims(s.trace, list(sites) + [n for n, v in s.trace.items() if v["type"] == "sample"
                                                     and v["is_observed"]], pair.data_plate)
    return out, stat_arrays, extra


@contextlib.contextmanager
def frozen(module) -> Iterator[None]:
    """The module's parameters without gradients (the networks are fixed; Pyro's jit needs it)."""
    params = [p for p in module.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _pyro_nuts(pair, x: torch.Tensor, per_point: bool, *, chains, warmup, samples, seed, target_accept,
               max_tree_depth, dense_mass, inputs: tuple[torch.Tensor, ...] = (), **_) -> tuple[dict, dict, dict]:
    """Pyro's NUTS (jit on), one unit (point or whole data set) and one chain at a time."""
    import pyro
    from pyro.infer import MCMC, NUTS

    units = [x[i : i + 1] for i in range(len(x))] if per_point else [x]
    unit_inputs = [tuple(c[i : i + 1] for c in inputs) for i in range(len(x))] if per_point else [tuple(inputs)]
    traced = pyro_sample_sites(pair, units[0], unit_inputs[0])
    draws: dict[str, list] = {}
    diverging = np.zeros((chains, samples, len(units)), dtype=bool)
    step = np.zeros((chains, samples, len(units)), dtype=np.float32)
    for u, xu in enumerate(units):
        for c in range(chains):
            pyro.set_rng_seed(seed * 7919 + u * 104_729 + c)
            kernel = NUTS(pair.model, jit_compile=True, ignore_jit_warnings=True, target_accept_prob=target_accept,
                          max_tree_depth=max_tree_depth, full_mass=dense_mass)
            mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, disable_progbar=True)
            with frozen(pair), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*not registered in the param store.*")
                mcmc.run(xu, *unit_inputs[u])
            for name, v in mcmc.get_samples().items():
                v = canonical(v.detach().cpu().numpy(), traced[name], pair.data_plate, lead=1)
                draws.setdefault(name, [[None] * chains for _ in units])[u][c] = v[:, 0] if per_point else v
            diverging[c, np.asarray(kernel._divergences, dtype=np.int64), u] = True
            step[c, :, u] = float(kernel.step_size)
    out = {}
    for name, per_unit in draws.items():
        a = np.stack([np.stack(chs) for chs in per_unit], 2)  # (chain, draw, unit, ...)
        out[name] = a if per_point else a[:, :, 0]
    stats = {"diverging": diverging, "step_size": step}
    if not per_point:
        stats = {k: v[:, :, 0] for k, v in stats.items()}
    return out, stats, {"dims": site_dims(traced, list(traced), pair.data_plate)}


def pyro_sample_sites(pair, x: torch.Tensor, inputs: tuple[torch.Tensor, ...] = ()) -> dict[str, dict]:
    """The model's sample sites (plate subsample sites left out) from one Pyro trace at ``x`` (and its inputs)."""
    from pyro import poutine
    from pyro.poutine.util import site_is_subsample

    with torch.no_grad():
        trace = poutine.trace(pair.model).get_trace(x, *inputs)
    return {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}
