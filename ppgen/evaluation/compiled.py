r"""The ELBO and IWAE estimators compiled with JAX: one jitted, chunked function per pair and shapes.

:mod:`ppgen.evaluation.likelihood` lands here for a pair that lowers (its networks run as JAX functions, every
trained weight reaches a NumPyro param site: what the JAX SVI engine needs too). The pair's own guide runs under
NumPyro inside a vectorized ``particles`` plate at dim −(max_plate_nesting + 1), the model is replayed on its
draws, and every sample site is reduced per example by :mod:`ppgen.sites`' rule, written again for NumPyro
traces (scale and mask applied, every batch dim but the particle and data dims summed)::

    log w_{k,n} = Σ_{s ∈ model} ℓ_s[k, n] − Σ_{s ∈ guide} ℓ_s[k, n],   IWAE_K = log (1/K) Σ_k w_k   (Burda et al., 2016)

The whole estimate is one ``jax.jit`` function: ``lax.map`` over chunks of examples, inside it ``lax.scan`` over
chunks of particles, chunk sizes from the same memory budget as the torch path (rows × particles × D floats).
IWAE keeps the log-sum-exp of each particle chunk and pools the chunks with a second log-sum-exp, in float32, as
the torch path does (``torch.logsumexp`` subtracts the maximum; so does ``jax.nn.logsumexp``); the ELBO sums.
Rows and particles are padded up to whole chunks; padded particles are masked out of the pooling and padded
rows dropped. The weights enter as *arguments* (never constants), so new weights of the same architecture — the
validation set after every epoch — reuse the compiled code, and the executables go to ppgen's persistent
compilation cache (:mod:`ppgen.inference.compile_cache`).

A pair takes this path only where it computes exactly what the torch path computes; :func:`why_not` says why
not otherwise (the torch path then runs): sites marked for enumeration, a family's own ``objective`` or
closed-form ELBO, batch-norm statistics or frozen weights (NumPyro mutable sites), latent or observed sites
outside the data plate, a subsampled data plate, sparse inputs, a device JAX does not see, networks that do not
lower. The draws come from a JAX key drawn from torch's generator, so ``torch.manual_seed`` makes an estimate
reproducible on either path (the two paths draw different noise).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ppgen.errors import UserError

#: ``which``: the IWAE pooling (log-mean-exp over particles) or the ELBO's (mean)
IWAE, ELBO = "iwae", "elbo"
PARTICLES = "particles"

# per pair: its probe result (the site names of its weights) and its jitted estimators, kept while the pair lives
_PAIRS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class CannotCompile(Exception):
    """The pair's estimate cannot be compiled with JAX (the message says why)."""


# -- the pair on NumPyro, its weights as arguments ----------------------------------------------------------
def _numpyro_fns(pair) -> tuple[Callable, Callable]:
    from ppgen.ppl import backend

    def guide(x, *inputs):
        with backend("numpyro"):
            pair.guide(x, *inputs)

    def model(x, *inputs):
        with backend("numpyro"):
            pair.model(x, *inputs)

    return model, guide


def current_params(pair, module_sites: dict[str, Any]) -> dict[str, Any]:
    """The pair's weights as NumPyro param-site values (JAX arrays), read from the torch modules now: each
    ``pyro.module`` site's trainable weights, the ``pyro.param`` values and an autoguide's (constrained)."""
    import jax

    from ppgen.nn.lower import jax_params
    from ppgen.nn.networks import buffer_names
    from ppgen.ppl import AutoGuide, OwnParams

    out: dict[str, Any] = {}
    for name, module in module_sites.items():
        frozen = buffer_names(module)
        out[name] = {k: v for k, v in jax_params(module).items() if k not in frozen}
    for module in pair.modules():
        values = (module.numpyro_values() if isinstance(module, AutoGuide)
                  else {n: module.value(n) for n in module.names()} if isinstance(module, OwnParams) else {})
        for name, value in values.items():
            out.setdefault(name, jax.device_put(np.array(value.detach().cpu().numpy(), copy=True)))
    return out


def why_not(pair, x: torch.Tensor, inputs: tuple[torch.Tensor, ...] = ()) -> str | None:
    """Why the pair's estimates cannot run compiled on JAX (None: they can); the probe is kept per pair."""
    try:
        _probe(pair, x, inputs)
    except CannotCompile as err:
        return str(err)
    return None


def _device_ok(x: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> str | None:
    tensors = (x, *inputs)
    if any(not isinstance(t, torch.Tensor) or t.layout != torch.strided for t in tensors):
        return "the examples are not dense tensors"
    if any(t.is_cuda for t in tensors):
        import jax

        if jax.default_backend() != "gpu":
            return "the examples are on a GPU that JAX does not see"
    return None


def _probe(pair, x: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """Trace guide and model once on NumPyro (shapes only: nothing runs or compiles) and check that the compiled
    estimate is the torch path's; returns the ``pyro.module`` sites ``{name: torch module}``."""
    from ppgen.models.base import GenerativeModel

    if not isinstance(pair, GenerativeModel) or not pair.has_guide:
        raise CannotCompile("the pair has no guide of its own")
    if pair.has_objective or pair.has_closed_form_elbo:
        raise CannotCompile("the family estimates with its own objective")
    trouble = _device_ok(x, inputs)
    if trouble:
        raise CannotCompile(trouble)
    kept = _PAIRS.setdefault(pair, {})
    signature = (tuple(x.shape[1:]), str(x.dtype), tuple((tuple(c.shape[1:]), str(c.dtype)) for c in inputs))
    probe = kept.get(("probe", signature))
    if probe is None:
        try:
            probe = _trace_sites(pair, x[:2], tuple(c[:2] for c in inputs))
        except CannotCompile as err:
            probe = err
        kept[("probe", signature)] = probe
    if isinstance(probe, CannotCompile):
        raise probe
    return probe


def _trace_sites(pair, x: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    import jax
    from numpyro import handlers

    from ppgen.inference.svi_jax import CannotLower, check_covered
    from ppgen.nn import NotLowerable
    from ppgen.ppl import recording_modules

    model, guide = _numpyro_fns(pair)
    xj = jax.ShapeDtypeStruct(tuple(x.shape), _jax_dtype(x))
    cols = tuple(jax.ShapeDtypeStruct(tuple(c.shape), _jax_dtype(c)) for c in inputs)
    found: dict[str, Any] = {}

    def look(x, *inputs):
        with _particles(pair, 2):
            g = handlers.trace(handlers.seed(guide, 0)).get_trace(x, *inputs)
            m = handlers.trace(handlers.replay(handlers.seed(model, 1), g)).get_trace(x, *inputs)
        found["guide"] = _describe(g)
        found["model"] = _describe(m)
        return 0

    try:
        with recording_modules() as sites:
            jax.eval_shape(look, xj, *cols)
    except NotLowerable as err:
        raise CannotCompile(f"its networks do not lower ({err})") from None
    except CannotCompile:
        raise
    except Exception as err:  # noqa: BLE001 - model code NumPyro cannot run, whatever NumPyro or JAX raised
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise CannotCompile(f"it does not run on NumPyro ({type(err).__name__}: {first})") from None
    _check_sites(pair, found)
    params = {n for part in found.values() for n in part["params"]}
    try:
        check_covered(pair, sites, dict.fromkeys(params))
    except CannotLower as err:
        raise CannotCompile(str(err)) from None
    missing = params - set(current_params(pair, sites))
    if missing:
        raise CannotCompile(f"param site {sorted(missing)[0]!r} is not one ppgen reads from the pair")
    return dict(sites)


def _jax_dtype(t: torch.Tensor):
    return np.dtype(str(t.dtype).removeprefix("torch."))


def _describe(trace: dict) -> dict[str, Any]:
    """What :func:`_check_sites` needs of a NumPyro trace, read while tracing."""
    out: dict[str, Any] = {"params": [], "mutable": [], "samples": {}, "plates": {}}
    for name, site in trace.items():
        if site["type"] == "param":
            out["params"].append(name)
        elif site["type"] == "mutable":
            out["mutable"].append(name)
        elif site["type"] == "plate":
            size, subsample = site["args"][0], site["args"][1]
            out["plates"][name] = (size, subsample)
        elif site["type"] == "sample":
            infer = site.get("infer") or {}
            out["samples"][name] = {"frames": [f.name for f in site["cond_indep_stack"]],
                                    "enumerate": infer.get("enumerate"), "observed": site["is_observed"],
                                    "batch": len(site["fn"].batch_shape)}
    return out


def _check_sites(pair, found: dict[str, Any]) -> None:
    depth = pair.max_plate_nesting + 1
    for part in found.values():
        if part["mutable"]:
            raise CannotCompile(f"it carries mutable state ({part['mutable'][0]}: batch-norm statistics or frozen "
                                "weights)")
        plate = part["plates"].get(pair.data_plate)
        if plate is not None and plate[1] is not None and plate[1] != plate[0]:
            raise CannotCompile(f"its data plate {pair.data_plate!r} is subsampled")
        for name, site in part["samples"].items():
            if site["enumerate"]:
                raise CannotCompile(f"site {name!r} is marked for enumeration")
            if pair.data_plate not in site["frames"]:
                raise CannotCompile(f"site {name!r} lies outside the data plate {pair.data_plate!r}")
            if site["batch"] > depth:
                raise CannotCompile(f"site {name!r} has more batch dims than the pair's plates")


def _particles(pair, k: int):
    import numpyro

    return numpyro.plate(PARTICLES, k, dim=-(pair.max_plate_nesting + 1))


# -- the per-example rule on NumPyro traces ----------------------------------------------------------------
def per_example_log_density(trace: dict, data_plate: str, depth: int, shape: tuple[int, int]):
    """Σ_s ℓ_s[k, n] over the trace's sample sites: ``mask · scale · log p_s(value_s)``, every batch dim summed
    but the particle plate's (dim −depth) and the data plate's; shape (particles, examples)."""
    import jax.numpy as jnp

    total = jnp.zeros(shape, jnp.float32)
    for site in trace.values():
        if site["type"] != "sample":
            continue
        lp = site["fn"].log_prob(site["value"])
        if site.get("mask") is not None:
            lp = jnp.where(site["mask"], lp, 0.0)
        if site.get("scale") is not None:
            lp = lp * site["scale"]
        lp = jnp.reshape(lp, (1,) * (depth - jnp.ndim(lp)) + jnp.shape(lp))
        data_dim = next(f.dim for f in site["cond_indep_stack"] if f.name == data_plate)
        keep = {0, depth + data_dim}
        lp = jnp.sum(lp, axis=tuple(i for i in range(depth) if i not in keep), keepdims=True)
        total = total + jnp.reshape(lp, (lp.shape[0], lp.shape[depth + data_dim]))
    return total


def chunk_log_weights(pair, params: dict[str, Any], key, x, inputs: tuple, k: int):
    """log w (k, B) of the rows ``x`` at k draws of the guide, the weights substituted from ``params``;
    also the draws ``{site: value}`` of the guide's latent sites."""
    import jax
    from numpyro import handlers

    model, guide = _numpyro_fns(pair)
    guide_key, model_key = jax.random.split(key)
    depth = pair.max_plate_nesting + 1
    with handlers.substitute(data=params), _particles(pair, k):
        g = handlers.trace(handlers.seed(guide, guide_key)).get_trace(x, *inputs)
        m = handlers.trace(handlers.replay(handlers.seed(model, model_key), g)).get_trace(x, *inputs)
    shape = (k, x.shape[0])
    log_w = (per_example_log_density(m, pair.data_plate, depth, shape)
             - per_example_log_density(g, pair.data_plate, depth, shape))
    draws = {name: site["value"] for name, site in g.items() if site["type"] == "sample" and not site["is_observed"]}
    return log_w, draws


# -- the compiled estimate --------------------------------------------------------------------------------
def balanced(total: int, most: int) -> tuple[int, int]:
    """(chunks, size): the fewest chunks of at most ``most`` covering ``total``, as even as they can be."""
    chunks = max(1, math.ceil(total / max(1, most)))
    return chunks, math.ceil(total / chunks)


def _estimator(pair, which: str, k: int, k_chunk: int, row_chunk: int) -> Callable:
    """The jitted ``estimate(params, key, x, inputs) -> (N,)`` for these chunk sizes, kept per pair."""
    kept = _PAIRS.setdefault(pair, {})
    found = kept.get((which, k, k_chunk, row_chunk))
    if found is None:
        found = kept[(which, k, k_chunk, row_chunk)] = _build(pair, which, k, k_chunk, row_chunk)
    return found


def _build(pair, which: str, k: int, k_chunk: int, row_chunk: int) -> Callable:
    import jax
    import jax.numpy as jnp

    k_chunks, k_size = balanced(k, k_chunk)
    log_k = math.log(k)
    owner = weakref.ref(pair)  # kept in _PAIRS under the pair: a strong reference would keep the pair alive

    def rows_estimate(params, key, x, inputs):
        def particle_chunk(_, c):
            log_w, _draws = chunk_log_weights(owner(), params, jax.random.fold_in(key, c), x, inputs, k_size)
            real = (c * k_size + jnp.arange(k_size) < k)[:, None]  # the last chunk's padding drops out
            if which == IWAE:
                return None, jax.nn.logsumexp(jnp.where(real, log_w, -jnp.inf), axis=0)
            return None, jnp.where(real, log_w, 0.0).sum(0)

        if k_chunks == 1:  # every particle at once: no loop to compile (about 10% of the compile time)
            parts = particle_chunk(None, 0)[1][None]
        else:
            _, parts = jax.lax.scan(particle_chunk, None, jnp.arange(k_chunks))
        if which == IWAE:
            return jax.nn.logsumexp(parts, axis=0) - log_k
        return parts.sum(0) / k

    @jax.jit
    def estimate(params, key, x, inputs):
        n = x.shape[0]
        row_chunks = math.ceil(n / row_chunk)
        take = jnp.minimum(jnp.arange(row_chunks * row_chunk), n - 1)  # pad with the last row, dropped below

        def blocks(a):
            return a[take].reshape((row_chunks, row_chunk, *a.shape[1:]))

        keys = jax.random.split(key, row_chunks)
        out = jax.lax.map(lambda args: rows_estimate(params, args[0], args[1], args[2]),
                          (keys, blocks(x), tuple(blocks(c) for c in inputs)))
        return out.reshape(-1)[:n]

    return estimate


def _to_jax(t: torch.Tensor):
    import jax

    return jax.device_put(np.array(t.detach().cpu().numpy(), copy=True))


def seed_from_torch() -> int:
    """A JAX seed drawn from torch's generator: ``torch.manual_seed`` fixes it, and each call advances it."""
    return int(torch.randint(0, 2**31 - 1, ()))


def estimate(pair, x: torch.Tensor, which: str, k: int, k_chunk: int, row_chunk: int,
             inputs: tuple[torch.Tensor, ...] = (), seed: int | None = None) -> torch.Tensor:
    """IWAE_k (``which="iwae"``) or the k-draw ELBO (``"elbo"``) per example, compiled; raises
    :class:`CannotCompile` where :func:`why_not` has a reason."""
    import jax

    from ppgen.inference import compile_cache

    sites = _probe(pair, x, inputs)
    compile_cache.enable()
    k_chunks, k_size = balanced(k, k_chunk)
    row_chunks, rows = balanced(x.shape[0], row_chunk)
    fn = _estimator(pair, which, k, k_size, rows)
    key = jax.random.PRNGKey(seed_from_torch() if seed is None else seed)
    out = fn(current_params(pair, sites), key, _to_jax(x), tuple(_to_jax(c) for c in inputs))
    return torch.from_numpy(np.array(out, copy=True)).to(x.device)


def log_weights_and_draws(pair, x: torch.Tensor, k: int, inputs: tuple[torch.Tensor, ...] = (),
                          seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """log w (k, N) on the compiled path and the guide's draws behind them (each (k, *site batch, *event) as the
    guide drew it inside the particle plate): the same draws replayed through the torch path must give the same
    weights (the test of this module)."""
    import jax

    sites = _probe(pair, x, inputs)
    fn = jax.jit(lambda params, key, x, inputs: chunk_log_weights(pair, params, key, x, inputs, k))
    log_w, draws = fn(current_params(pair, sites), jax.random.PRNGKey(seed), _to_jax(x),
                      tuple(_to_jax(c) for c in inputs))
    return (torch.from_numpy(np.array(log_w, copy=True)),
            {name: torch.from_numpy(np.array(v, copy=True)) for name, v in draws.items()})


def require(pair, x: torch.Tensor, inputs: tuple[torch.Tensor, ...], call: str) -> None:
    """Raise :class:`UserError` (one line) where ``engine="jax"`` was asked for and the pair cannot take it."""
    reason = why_not(pair, x, inputs)
    if reason:
        raise UserError(f"{call}: engine='jax' cannot compile this pair's estimate ({reason}); use engine='auto' "
                        "or 'torch'")
