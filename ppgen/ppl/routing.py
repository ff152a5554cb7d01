"""Backend routing: the ``pyro``/``dist`` proxies and the state of the backend that runs model code.

``pyro.sample`` resolves to ``pyro.sample`` or ``numpyro.sample`` depending on the backend that is active
(``with backend("numpyro"): ...``); ``dist.Normal`` likewise. Only what both libraries spell the same way is
routed; where NumPyro lacks a distribution that Pyro has (``ContinuousBernoulli``) ppgen supplies it here, and
where ppgen routes a ``pyro`` primitive itself on NumPyro (``module`` here, ``param`` from
:mod:`ppgen.ppl.params`) the override sits in :data:`_numpyro_pyro`. Also here: the network weights bound per
backend scope, the ``pyro.module`` recorders, and standard draws on the active backend.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import Any

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


dist = _Proxy("dist", {"numpyro": {"ContinuousBernoulli": _LazyClass(_numpyro_continuous_bernoulli)}})


def is_jax(x: Any) -> bool:
    """True for a JAX array or tracer (without importing JAX when it is not loaded)."""
    import sys

    if "jax" not in sys.modules:
        return False
    import jax

    return isinstance(x, jax.Array)


#: how a data-parallel step draws per-example rows on torch: ``rows(draw, shape)`` (None: ``draw(shape)`` here)
_example_rows: list[Callable[[Callable[[tuple[int, ...]], Any], tuple[int, ...]], Any]] = []


@contextlib.contextmanager
def example_draws(rows: Callable[[Callable[[tuple[int, ...]], Any], tuple[int, ...]], Any]) -> Iterator[None]:
    """Inside, the torch draws of :func:`uniform`, :func:`normal` and :func:`randint` (one row per example along
    their first dim) are ``rows(draw, shape)``: a data-parallel step draws the whole batch's rows as one process
    does and keeps its own (:class:`ppgen.inference.distributed.GlobalDraws`)."""
    _example_rows.append(rows)
    try:
        yield
    finally:
        _example_rows.pop()


def _standard_draws(kind: str, shape: tuple[int, ...], like: Any, low: int = 0, high: int = 0) -> Any:
    """``kind`` ("uniform", "normal" or "randint") standard draws on the active backend: torch's generator on Pyro
    (on ``like``'s device; inside :func:`example_draws`, through its ``rows``); on NumPyro the key of the enclosing
    ``seed`` handler, so SVI's seeding covers them."""
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

    def draw(size: tuple[int, ...]) -> Any:
        if kind == "randint":
            return torch.randint(low, high, size, device=device)
        return (torch.rand if kind == "uniform" else torch.randn)(size, device=device)

    if _example_rows and len(shape) > 0:
        return _example_rows[-1](draw, tuple(shape))
    return draw(tuple(shape))


def uniform(shape: tuple[int, ...], like: Any = None) -> Any:
    """Draws of U(0, 1) on the active backend, for a family's own ``objective`` (see ``GenerativeModel``): one row
    per example along the first dim of ``shape``, so that a data-parallel run can draw them as one process does."""
    return _standard_draws("uniform", shape, like)


def normal(shape: tuple[int, ...], like: Any = None) -> Any:
    """Draws of N(0, 1) on the active backend, for a family's own ``objective`` (as :func:`uniform`)."""
    return _standard_draws("normal", shape, like)


def randint(low: int, high: int, shape: tuple[int, ...], like: Any = None) -> Any:
    """Integers drawn uniformly from {low, …, high − 1} on the active backend (int64 on torch, int32 on JAX), for a
    family's own ``objective`` (as :func:`uniform`; one kernel where ``floor(uniform · n)`` takes four)."""
    return _standard_draws("randint", shape, like, low, high)


def _to_jax(value: Any) -> Any:
    import jax.numpy as jnp

    if hasattr(value, "detach"):
        return jnp.asarray(value.detach().cpu().numpy())
    return jnp.asarray(value)


#: ``pyro.<name>`` on NumPyro where ppgen routes it itself: ``module`` here; ``param`` is installed by
#: :mod:`ppgen.ppl.params` when it is imported (it imports this module, so it cannot be named here)
_numpyro_pyro: dict[str, Any] = {"module": _numpyro_module}
pyro = _Proxy("pyro", {"numpyro": _numpyro_pyro})
