"""Backend dispatch: one model source runs on Pyro (torch) or on NumPyro (JAX).

A model is written against two proxies::

    from ppgen.ppl import pyro, dist

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([k]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

``pyro.sample`` resolves to ``pyro.sample`` or ``numpyro.sample`` depending on the
backend that is active (``with backend("numpyro"): ...``); ``dist.Normal`` likewise.
The idea is pyro-api's ``pyro_backend``; ppgen keeps its own small version because
``numpyro.compat`` lacks ``deterministic``/``factor`` and its SVI recompiles every
step. Networks from :mod:`ppgen.nn` are torch modules that run a lowered JAX
function when called on a JAX array, so the same model body works on both sides.

Only what both libraries spell the same way is routed; where NumPyro lacks a
distribution that Pyro has (``ContinuousBernoulli``) ppgen supplies it here.

Both SVI engines also take their objective and their KL weight from here, so the two
engines train the same thing: :func:`make_elbo` (the ELBO of a name, Pyro's or NumPyro's,
and ppgen's :class:`FreeBitsELBO`) and :class:`ScaleLatents` (β on the latent sites, on
whichever backend runs the wrapped code).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable, Iterator
from typing import Any

from ppgen.errors import UserError

_BACKENDS = {
    "pyro": {"pyro": "pyro", "dist": "pyro.distributions"},
    "numpyro": {"pyro": "numpyro", "dist": "numpyro.distributions"},
}
#: the active backends, innermost last, each with the network weights bound in its scope
_active: list[tuple[str, dict[int, Any]]] = [("pyro", {})]


def get_backend() -> str:
    """Name of the backend model code currently dispatches to."""
    return _active[-1][0]


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Run the enclosed model code on ``name`` ("pyro" or "numpyro").

    Each entry is a fresh scope for the weights that ``pyro.module`` binds on NumPyro, so
    values traced in one model run never leak into another.
    """
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(_BACKENDS)}")
    _active.append((name, {}))
    try:
        yield
    finally:
        _active.pop()


def bind_weights(module: Any, weights: Any) -> None:
    """Within the innermost backend scope, ``module`` computes with ``weights`` (see :func:`bound_weights`)."""
    _active[-1][1][id(module)] = weights


def bound_weights(module: Any) -> Any:
    """The weights bound to ``module`` by ``pyro.module`` in the enclosing scopes (innermost first), or None."""
    for _, bound in reversed(_active):
        if id(module) in bound:
            return bound[id(module)]
    return None


_module_recorders: list[dict[str, Any]] = []


@contextlib.contextmanager
def recording_modules() -> Iterator[dict[str, Any]]:
    """Collects ``{site name: torch module}`` of every ``pyro.module`` call on NumPyro within the block."""
    seen: dict[str, Any] = {}
    _module_recorders.append(seen)
    try:
        yield seen
    finally:
        _module_recorders.remove(seen)


#: how ``pyro.module`` registers a torch module's weights on NumPyro; installed by :mod:`ppgen.nn`
_numpyro_module_rule: list[Any] = []


def _numpyro_module(name: str, module: Any, update_module_params: bool = False) -> Any:
    # NumPyro's own mechanism: the weights become one ``numpyro.param`` site named like Pyro's
    # module site, so SVI trains them and ``handlers.substitute`` sets them (NUTS, evaluation)
    for seen in _module_recorders:
        seen[name] = module
    if _numpyro_module_rule:
        _numpyro_module_rule[0](name, module)
    return module


class _Proxy:
    """Attribute access forwarded to the active backend's module."""

    def __init__(self, role: str, overrides: dict[str, dict[str, Any]]):
        self._role = role
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        backend_name = get_backend()
        extra = self._overrides.get(backend_name, {})
        if name in extra:
            return extra[name]
        module = importlib.import_module(_BACKENDS[backend_name][self._role])
        try:
            return getattr(module, name)
        except AttributeError:
            raise AttributeError(f"{self._role}.{name} is not available on the {backend_name} backend") from None

    def __dir__(self) -> list[str]:
        return dir(importlib.import_module(_BACKENDS[get_backend()][self._role]))


def _numpyro_continuous_bernoulli() -> type:
    import jax.numpy as jnp
    import numpyro.distributions as nd
    from jax.nn import log_sigmoid, sigmoid
    from numpyro.distributions import constraints
    from numpyro.distributions.util import promote_shapes

    class ContinuousBernoulli(nd.Distribution):
        """Continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019) for NumPyro.

        log p(x | λ) = x log λ + (1 − x) log(1 − λ) + log C(λ),
        C(λ) = 2 artanh(1 − 2λ) / (1 − 2λ), with C(1/2) = 2. Mirrors torch's
        formula (Taylor expansion near λ = 1/2) so both backends agree to float32.
        """

        arg_constraints = {"logits": constraints.real}
        support = constraints.unit_interval
        _lims = (0.499, 0.501)

        def __init__(self, logits=None, probs=None, validate_args=None):
            if (logits is None) == (probs is None):
                raise ValueError("give exactly one of logits or probs")
            if logits is None:
                logits = jnp.log(probs) - jnp.log1p(-probs)
            (self.logits,) = promote_shapes(logits)
            super().__init__(batch_shape=jnp.shape(self.logits), validate_args=validate_args)

        @property
        def probs(self):
            return sigmoid(self.logits)

        def _log_normalizer(self):
            p = self.probs
            outside = (p < self._lims[0]) | (p > self._lims[1])
            safe = jnp.where(outside, p, self._lims[0] * jnp.ones_like(p))
            far = jnp.log(jnp.abs(2.0 * jnp.arctanh(1.0 - 2.0 * safe))) - jnp.log(jnp.abs(1.0 - 2.0 * safe))
            x = (p - 0.5) ** 2
            near = jnp.log(2.0) + (4.0 / 3.0 + 104.0 / 45.0 * x) * x
            return jnp.where(outside, far, near)

        def log_prob(self, value):
            return value * log_sigmoid(self.logits) + (1 - value) * log_sigmoid(-self.logits) + self._log_normalizer()

        def sample(self, key, sample_shape=()):
            import jax

            u = jax.random.uniform(key, sample_shape + self.batch_shape, minval=1e-6, maxval=1 - 1e-6)
            p = jnp.clip(self.probs, 1e-6, 1 - 1e-6)
            regular = (jnp.log1p(-p + u * (2 * p - 1)) - jnp.log1p(-p)) / (jnp.log(p) - jnp.log1p(-p))
            return jnp.where(jnp.abs(p - 0.5) < 1e-3, u, regular)

        @property
        def mean(self):
            p = jnp.clip(self.probs, 1e-6, 1 - 1e-6)
            regular = p / (2 * p - 1) + 1 / (2 * jnp.arctanh(1 - 2 * p))
            return jnp.where(jnp.abs(p - 0.5) < 1e-3, 0.5, regular)

    return ContinuousBernoulli


class _LazyClass:
    """Builds the NumPyro-only additions on first use (keeps JAX out of plain imports)."""

    def __init__(self, factory):
        self._factory = factory
        self._cls = None

    def __call__(self, *args, **kwargs):
        if self._cls is None:
            self._cls = self._factory()
        return self._cls(*args, **kwargs)


pyro = _Proxy("pyro", {"numpyro": {"module": _numpyro_module}})
dist = _Proxy("dist", {"numpyro": {"ContinuousBernoulli": _LazyClass(_numpyro_continuous_bernoulli)}})


def is_jax(x: Any) -> bool:
    """True for a JAX array or tracer (without importing JAX when it is not loaded)."""
    import sys

    if "jax" not in sys.modules:
        return False
    import jax

    return isinstance(x, jax.Array)


def _standard_draws(kind: str, shape: tuple[int, ...], like: Any, low: int = 0, high: int = 0) -> Any:
    """``kind`` ("uniform", "normal" or "randint") standard draws on the active backend: torch's generator on Pyro
    (on ``like``'s device); on NumPyro the key of the enclosing ``seed`` handler, so SVI's seeding covers them."""
    if get_backend() == "numpyro":
        import jax
        import numpyro

        key = numpyro.prng_key()
        if key is None:
            raise RuntimeError(f"ppgen.ppl.{kind} on NumPyro needs a seed handler (numpyro.handlers.seed)")
        if kind == "randint":
            return jax.random.randint(key, tuple(shape), low, high)
        return getattr(jax.random, kind)(key, tuple(shape))
    import torch

    device = None if like is None else like.device
    if kind == "randint":
        return torch.randint(low, high, tuple(shape), device=device)
    draw = torch.rand if kind == "uniform" else torch.randn
    return draw(tuple(shape), device=device)


def uniform(shape: tuple[int, ...], like: Any = None) -> Any:
    """Draws of U(0, 1) on the active backend, for a family's own ``objective`` (see ``GenerativeModel``)."""
    return _standard_draws("uniform", shape, like)


def normal(shape: tuple[int, ...], like: Any = None) -> Any:
    """Draws of N(0, 1) on the active backend, for a family's own ``objective`` (as :func:`uniform`)."""
    return _standard_draws("normal", shape, like)


def randint(low: int, high: int, shape: tuple[int, ...], like: Any = None) -> Any:
    """Integers drawn uniformly from {low, …, high − 1} on the active backend (int64 on torch, int32 on JAX), for a
    family's own ``objective`` (as :func:`uniform`; one kernel where ``floor(uniform · n)`` takes four)."""
    return _standard_draws("randint", shape, like, low, high)


# -- what both SVI engines train: the ELBO and the KL weight --------------------------------------------------------
#: the ELBOs :func:`make_elbo` knows, by name
ELBOS = ("trace", "analytic", "iwae")


def _scale_latent_message(msg: dict, factor: Any) -> None:
    if msg["type"] == "sample" and not msg["is_observed"]:
        msg["scale"] = factor if msg.get("scale") is None else msg["scale"] * factor


def _pyro_latent_scaler() -> type:
    from pyro.poutine.messenger import Messenger

    class PyroScaleLatents(Messenger):
        def __init__(self, factor: Any):
            super().__init__()
            self.factor = factor

        def _process_message(self, msg: dict) -> None:
            _scale_latent_message(msg, self.factor)

    return PyroScaleLatents


def _numpyro_latent_scaler() -> type:
    from numpyro.primitives import Messenger

    class NumPyroScaleLatents(Messenger):
        def __init__(self, factor: Any):
            super().__init__(None)
            self.factor = factor

        def process_message(self, msg: dict) -> None:
            _scale_latent_message(msg, self.factor)

    return NumPyroScaleLatents


@functools.cache
def _latent_scaler(name: str) -> type:
    return _pyro_latent_scaler() if name == "pyro" else _numpyro_latent_scaler()


class ScaleLatents:
    r"""Multiply the log density of every *latent* sample site by ``factor`` (β), on the backend that is active when
    the code inside runs::

        log p(x | z) + log p(z) − log q(z | x)   →   log p(x | z) + β (log p(z) − log q(z | x))

    (wrapped around model and guide; observed sites keep their weight). A context manager
    (``with ScaleLatents(beta): ...``) or a wrapper (``ScaleLatents(beta)(model)``); ``factor`` may be a traced JAX
    value, so a compiled epoch takes a new β each step without recompiling.
    """

    def __init__(self, factor: Any):
        self.factor = factor
        self._entered: list[Any] = []

    def __enter__(self) -> ScaleLatents:
        handler = _latent_scaler(get_backend())(self.factor)
        handler.__enter__()
        self._entered.append(handler)
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._entered.pop().__exit__(*exc)

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def scaled(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return scaled


def make_elbo(name: str, num_particles: int = 1, max_plate_nesting: int = 1, *, free_bits: float = 0.0,
              data_plate: str = "data", backend_name: str | None = None) -> Any:
    r"""The ELBO object of ``name`` for ``backend_name`` (default: the active backend), Pyro's or NumPyro's namesake.

    * ``"trace"`` — ``Trace_ELBO``: log p(x, z) − log q(z|x) at z ~ q.
    * ``"analytic"`` — ``TraceMeanField_ELBO``: E_q[log p(x|z)] − KL(q‖p), the KL in closed form where the
      library has it.
    * ``"iwae"`` — ``RenyiELBO(alpha=0)``, the bound of Burda et al. (2016): E log (1/K) Σ_k p(x, z_k)/q(z_k|x),
      K = ``num_particles``, vectorized.
    * ``free_bits = λ > 0`` (Pyro) — :class:`FreeBitsELBO`, any name.

    On Pyro, K > 1 particles are vectorized in a plate outside the ``max_plate_nesting`` plates of the pair.
    """
    backend_name = backend_name or get_backend()
    if name not in ELBOS:
        raise UserError(f"unknown ELBO {name!r}; choose one of {', '.join(ELBOS)}")
    if name == "iwae" and num_particles < 2:
        raise UserError("the IWAE objective needs num_particles >= 2 (e.g. --particles 5)")
    if free_bits > 0:
        if backend_name != "pyro":
            raise UserError("free bits has an ELBO on Pyro only (engine='torch')")
        return FreeBitsELBO(free_bits, data_plate)
    if backend_name == "numpyro":
        from numpyro import infer
    else:
        from pyro import infer
    if name == "iwae":
        extra = {} if backend_name == "numpyro" else dict(vectorize_particles=True, max_plate_nesting=max_plate_nesting)
        return infer.RenyiELBO(alpha=0.0, num_particles=num_particles, **extra)
    cls = infer.Trace_ELBO if name == "trace" else infer.TraceMeanField_ELBO
    extra = ({} if backend_name == "numpyro"
             else dict(vectorize_particles=num_particles > 1, max_plate_nesting=max_plate_nesting))
    return cls(num_particles=num_particles, **extra)


class FreeBitsELBO:
    r"""ELBO with the free-bits KL floor of Kingma et al. (2016), one floor per latent dimension (Pyro).

    With the per-example terms of :mod:`ppgen.sites` (each site's mask and scale applied, plates nested in the
    data plate summed) and N/B the data plate's minibatch factor::

        loss = N/B · ( −Σ_n ℓ_obs[n] + Σ_s Σ_j max(λ W_s, K_sj) ),   K_sj = Σ_n w_s[n] KL_sj[n],   W_s = Σ_n w_s[n],

    where w_s[n] is the weight (mask · scale) the guide's site s gives example n and KL_sj[n] the KL of dimension
    j of site s at example n. Unmasked with scale β: W_s = βB and the term is βB · max(λ, mean_n KL_sj), each
    dimension's batch-mean KL floored at λ; a masked example (w = 0) counts neither in the KL nor in the floor, so
    masking examples is removing them. KL_sj is closed-form when q and p are Normal (weighted by the guide's site,
    as Pyro's ``TraceMeanField_ELBO`` takes it), else the single draw ℓ_q − ℓ_p, each weighted by its own site,
    one "dimension" per site. λ = 0 is ``TraceMeanField_ELBO``.
    """

    def __init__(self, free_bits: float, data_plate: str = "data"):
        self.free_bits = free_bits
        self.data_plate = data_plate

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Any:
        from pyro import poutine

        from ppgen import sites

        guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
        where = sites.layout(model_tr, self.data_plate)
        observed, kl = 0.0, 0.0
        for name, p_site in sites.sample_sites(model_tr).items():
            if p_site["is_observed"]:
                observed = observed + sites.site_log_prob(p_site, where, self.data_plate).sum()
            else:
                kl = kl + self._floored_kl(guide_tr.nodes[name], p_site, where)
        return (where.full_size / where.examples) * (kl - observed)

    def _floored_kl(self, q_site: dict, p_site: dict, where: Any) -> Any:
        """Σ_j max(λ W, K_j) of one latent site (see the class docs)."""
        import torch
        from pyro.distributions import Normal
        from pyro.distributions.kl import kl_divergence

        from ppgen import sites

        q, q_event = _without_independent(q_site["fn"])
        p, _ = _without_independent(p_site["fn"])
        if isinstance(q, Normal) and isinstance(p, Normal):
            kl = kl_divergence(q, p.expand(q.batch_shape))  # (*batch, *event)
            per_dim = sites.per_example(q_site, kl, where, self.data_plate, trailing=q_event)
            per_dim = per_dim.reshape(where.shape + (-1,))
        else:
            per_dim = (sites.site_log_prob(q_site, where, self.data_plate)
                       - sites.site_log_prob(p_site, where, self.data_plate)).unsqueeze(-1)
        total = per_dim.reshape(-1, per_dim.shape[-1]).sum(0)  # K_j
        ones = torch.ones(q_site["fn"].batch_shape, device=total.device)
        weight = sites.per_example(q_site, ones, where, self.data_plate).sum()  # W
        return torch.maximum(total, self.free_bits * weight).sum()


def _without_independent(fn: Any) -> tuple[Any, int]:
    """The distribution inside any ``Independent`` wrappers and the event dims they added."""
    from pyro.distributions import Independent

    extra = 0
    while isinstance(fn, Independent):
        extra += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, extra
