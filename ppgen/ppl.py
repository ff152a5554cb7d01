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

Parameters belong to the pair that registers them (:class:`OwnParams`, :func:`param_owner`): a
``pyro.param`` is an ``nn.Parameter`` of the pair on Pyro and a ``numpyro.param`` started at the pair's
value on NumPyro, whose trained values :func:`load_numpyro_params` copies back. :func:`autoguide` is
Pyro's autoguide on Pyro and NumPyro's namesake on NumPyro, with the trained values mapped between them.

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

import torch
from torch import nn
from torch.distributions import constraints, transform_to

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


# -- parameters a pair owns ------------------------------------------------------------------------------
#
# ``pyro.param`` keeps its values in one process-wide store, so two pairs with a parameter named "df"
# would share it, and nothing ties the value to the pair that ``state_dict``, checkpoints and ``ppgen.load``
# carry. A pair owns its parameters instead: while its model or guide runs (:func:`param_owner`), Pyro's
# store holds the pair's own scope (as ``ParamStoreDict.scope`` does), and a ``pyro.param`` seen the first time is
# created as an ``nn.Parameter`` (the UNCONSTRAINED value u; the site's value is T(u), T = transform_to of
# its constraint) in the pair's :class:`OwnParams`. On NumPyro the same ``pyro.param`` is ``numpyro.param``
# initialised at the value the pair holds, so NumPyro's SVI starts where the pair is and ppgen copies the
# trained values back (:func:`load_numpyro_params`).


def _encode(name: str) -> str:
    """``name`` as a parameter name torch accepts (no ".", not an attribute of nn.Module); see :func:`_decode`."""
    safe = name.replace("%", "%25").replace(".", "%2E")
    return "%" + safe if not safe or _is_module_attribute(safe) else safe


def _decode(safe: str) -> str:
    if safe.startswith("%") and safe[1:3] not in ("25", "2E"):
        safe = safe[1:]
    return safe.replace("%2E", ".").replace("%25", "%")


def _is_module_attribute(name: str) -> bool:
    return hasattr(nn.Module, name) or name in ("training", "_parameters", "_buffers", "_modules")


class OwnParams(nn.Module):
    """The ``pyro.param`` values of one pair: name -> unconstrained ``nn.Parameter`` u, with its constraint.

    The value the model sees is T(u), T = ``torch.distributions.transform_to(constraint)``; Adam steps u.
    ``store_state`` is the pair's scope of Pyro's param store: its own params and those ``pyro.module`` and
    Pyro modules (autoguides) register while the pair runs.
    """

    def __init__(self):
        super().__init__()
        self.constraints: dict[str, Any] = {}
        self.store_state: dict[str, dict] = {}

    def names(self) -> list[str]:
        return [_decode(k) for k in self._parameters]

    def __contains__(self, name: str) -> bool:
        return _encode(name) in self._parameters

    def unconstrained(self, name: str) -> nn.Parameter:
        return self._parameters[_encode(name)]

    def constraint(self, name: str, default: Any = None) -> Any:
        return self.constraints.get(name, default)

    def value(self, name: str) -> torch.Tensor:
        """The constrained value T(u) (differentiable in u)."""
        return transform_to(self.constraint(name, constraints.real))(self.unconstrained(name))

    def adopt(self, name: str, init: Any, constraint: Any) -> nn.Parameter:
        """Create the parameter ``name`` at the constrained value ``init``: u = T⁻¹(init)."""
        with torch.no_grad():
            u = transform_to(constraint).inv(torch.as_tensor(init).detach()).clone().contiguous()
        p = nn.Parameter(u)
        self.register_parameter(_encode(name), p)
        self.constraints[name] = constraint
        return p

    def make_room(self, name: str, like: torch.Tensor) -> None:
        """An entry ``name`` shaped like ``like`` (a state dict loaded into a fresh pair); its constraint is the
        one the next ``pyro.param(name, ..., constraint=...)`` gives."""
        if name not in self:
            self.register_parameter(_encode(name), nn.Parameter(torch.zeros_like(like)))

    def release(self, root: nn.Module) -> None:
        """Drop the entries that another module under ``root`` owns too (a Pyro module's ``PyroParam``, which
        Pyro creates through ``pyro.param``): each parameter is kept, and saved, once."""
        elsewhere = {id(p) for m in root.modules() if m is not self for p in m._parameters.values()}
        for key in [k for k, p in self._parameters.items() if id(p) in elsewhere]:
            del self._parameters[key]
            self.constraints.pop(_decode(key), None)

    def set_value(self, name: str, value: Any) -> None:
        """Set the constrained value in place: u ← T⁻¹(value)."""
        u = self.unconstrained(name)
        with torch.no_grad():
            u.copy_(transform_to(self.constraint(name, constraints.real)).inv(torch.as_tensor(value, dtype=u.dtype)))


#: the holders of the pairs whose model or guide is running, innermost last
_owners: list[Any] = []


def _pyro_messenger_class():
    from pyro.poutine.messenger import Messenger

    class AdoptParams(Messenger):
        """Creates a new ``pyro.param`` as the holder's ``nn.Parameter`` and puts it in the active store scope."""

        def __init__(self, holder):
            super().__init__()
            self.holder = holder

        def _pyro_param(self, msg: dict) -> None:
            import pyro as real_pyro

            name = msg["args"][0]
            init = msg["args"][1] if len(msg["args"]) > 1 else msg["kwargs"].get("init_tensor")
            constraint = msg["kwargs"].get("constraint", constraints.real)
            store = real_pyro.get_param_store()
            if name in store:
                return
            if name in self.holder:  # loaded into a fresh pair: the store of this run has not seen it yet
                p = self.holder.unconstrained(name)
                self.holder.constraints[name] = constraint
            elif init is None:
                return  # Pyro's own error for a parameter read before it was created
            else:
                if callable(init) and not hasattr(init, "shape"):
                    init = init()
                if isinstance(init, nn.Parameter):  # a module's own weight (pyro.module): Pyro keeps that object
                    return
                p = self.holder.adopt(name, init, constraint)
            store.set_state({"params": {name: p}, "constraints": {name: constraint}})

    return AdoptParams


_MESSENGER: list[type] = []


def trained_tensors(traces: Any) -> list[torch.Tensor]:
    """The tensors the param sites of Pyro ``traces`` train, once each, in trace order: as Pyro's SVI collects
    them, the unconstrained value behind each site's value (the value itself where it has none)."""
    found: dict[int, torch.Tensor] = {}
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] != "param":
                continue
            link = getattr(site["value"], "unconstrained", None)
            tensor = link() if link is not None else site["value"]
            if tensor is not None and tensor.requires_grad and tensor.is_leaf:
                found.setdefault(id(tensor), tensor)
    return list(found.values())


_STORE_FIELDS = ("_params", "_param_to_name", "_constraints")


@contextlib.contextmanager
def _store_scope(store: Any, state: dict[str, dict]) -> Iterator[None]:
    """Pyro's param store holds ``state`` within the block (``ParamStoreDict.scope`` without its copies, which
    also strip the ``unconstrained`` link Pyro's SVI follows from an unconstrained site's value)."""
    saved = tuple(getattr(store, f) for f in _STORE_FIELDS)
    for f in _STORE_FIELDS:
        setattr(store, f, state.setdefault(f, {}))
    try:
        yield
    finally:
        for f, old in zip(_STORE_FIELDS, saved):
            state[f] = getattr(store, f)  # (``pyro.clear_param_store()`` inside replaces the dicts)
            setattr(store, f, old)


@contextlib.contextmanager
def param_owner(holder: Any) -> Iterator[None]:
    """Run the enclosed model code with ``holder`` (an :class:`OwnParams`) owning its ``pyro.param`` values.

    On Pyro: the param store holds the holder's scope (entered once however deeply pair code nests) and a new
    ``pyro.param`` becomes the holder's ``nn.Parameter``. On NumPyro: ``pyro.param`` starts from the holder's
    values (see :func:`_numpyro_param`).
    """
    if get_backend() == "numpyro":
        _owners.append(holder)
        try:
            yield
        finally:
            _owners.pop()
        return
    import pyro as real_pyro

    if not _MESSENGER:
        _MESSENGER.append(_pyro_messenger_class())
    enter_scope = not (_owners and _owners[-1] is holder)
    scope = _store_scope(real_pyro.get_param_store(), holder.store_state) if enter_scope else contextlib.nullcontext()
    _owners.append(holder)
    try:
        with scope, _MESSENGER[0](holder):
            yield
    finally:
        _owners.pop()


def _numpyro_constraint(c: Any) -> Any:
    """A torch/Pyro constraint as NumPyro's (NumPyro's own passes through); NotImplementedError where none fits."""
    import numpyro.distributions.constraints as nc

    if c is None or isinstance(c, nc.Constraint):
        return c if c is not None else nc.real
    kind = type(c).__name__
    simple = {"_Real": nc.real, "_Simplex": nc.simplex, "_LowerCholesky": nc.lower_cholesky,
              "_CorrCholesky": nc.corr_cholesky, "_PositiveDefinite": nc.positive_definite,
              "_SoftplusPositive": nc.softplus_positive, "_SoftplusLowerCholesky": nc.softplus_lower_cholesky,
              "_OrderedVector": nc.ordered_vector, "_PositiveOrderedVector": nc.positive_ordered_vector}
    if simple.get(kind) is not None:
        return simple[kind]
    if kind == "_IndependentConstraint":
        return nc.independent(_numpyro_constraint(c.base_constraint), c.reinterpreted_batch_ndims)
    if kind in ("_GreaterThan", "_GreaterThanEq"):
        return nc.positive if float(c.lower_bound) == 0.0 and kind == "_GreaterThan" else nc.greater_than(c.lower_bound)
    if kind == "_LessThan":
        return nc.less_than(c.upper_bound)
    if kind in ("_Interval", "_HalfOpenInterval"):
        lo, hi = float(c.lower_bound), float(c.upper_bound)
        return nc.unit_interval if (lo, hi) == (0.0, 1.0) else nc.interval(lo, hi)
    raise NotImplementedError(f"the constraint {c} has no NumPyro counterpart in ppgen")


def _to_jax(value: Any) -> Any:
    import jax.numpy as jnp

    if hasattr(value, "detach"):
        return jnp.asarray(value.detach().cpu().numpy())
    return jnp.asarray(value)


def _numpyro_param(name: str, init_value: Any = None, **kwargs) -> Any:
    """``pyro.param`` on NumPyro: ``numpyro.param`` initialised at the value the running pair holds (so SVI starts
    from the pair and NUTS, evaluation see the trained value), torch inits and constraints translated."""
    import numpyro

    holder = _owners[-1] if _owners else None
    if holder is not None and name in holder:
        init_value = holder.value(name)
        if holder.constraint(name) is not None:
            kwargs["constraint"] = holder.constraint(name)
    elif callable(init_value) and not hasattr(init_value, "shape"):
        init_value = init_value()  # Pyro's lazy init takes no key
    if "constraint" in kwargs:
        kwargs["constraint"] = _numpyro_constraint(kwargs["constraint"])
    return numpyro.param(name, None if init_value is None else _to_jax(init_value), **kwargs)


def load_numpyro_params(root: Any, params: dict[str, Any], skip: set[str] = frozenset()) -> set[str]:
    """Copy trained NumPyro param sites (constrained values) into the holders and autoguides under the torch
    module ``root``; returns the names taken (``skip``: names handled elsewhere, the ``pyro.module`` sites)."""
    import numpy as np

    taken: set[str] = set()
    for module in root.modules():
        if isinstance(module, AutoGuide):
            taken |= module.load_numpyro(params)
        elif isinstance(module, OwnParams):
            for name in module.names():
                if name in params and name not in skip:
                    module.set_value(name, torch.from_numpy(np.array(params[name])))
                    taken.add(name)
    return taken


def numpyro_param_names(root: Any) -> set[str]:
    """The NumPyro param sites that holders and autoguides under ``root`` can carry back."""
    names: set[str] = set()
    for module in root.modules():
        if isinstance(module, AutoGuide):
            names |= set(module.numpyro_values())
        elif isinstance(module, OwnParams):
            names |= set(module.names())
    return names


# -- autoguides on both backends ----------------------------------------------------------------------------
#: the autoguides whose trained values ppgen maps between Pyro and NumPyro (NumPyro's namesake, prefix "auto")
NUMPYRO_AUTOGUIDES = ("AutoNormal", "AutoDiagonalNormal", "AutoMultivariateNormal", "AutoDelta")


def _leaf(module: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    *path, attr = dotted.split(".")
    for part in path:
        module = module._modules[part]
    return module, attr


def _pyro_module_value(module: nn.Module, dotted: str) -> torch.Tensor:
    """The constrained value of a Pyro module's parameter (a ``PyroParam`` or a plain ``nn.Parameter``)."""
    module, attr = _leaf(module, dotted)
    if attr in getattr(module, "_pyro_params", {}):
        constraint = module._pyro_params[attr][0]
        return transform_to(constraint)(module._parameters[attr + "_unconstrained"]).detach()
    return module._parameters[attr].detach()


def _set_pyro_module_value(module: nn.Module, dotted: str, value: torch.Tensor) -> None:
    module, attr = _leaf(module, dotted)
    with torch.no_grad():
        if attr in getattr(module, "_pyro_params", {}):
            constraint = module._pyro_params[attr][0]
            target = module._parameters[attr + "_unconstrained"]
            target.copy_(transform_to(constraint).inv(value.to(target.dtype)))
        else:
            module._parameters[attr].copy_(value)


class AutoGuide(nn.Module):
    """Pyro's autoguide ``kind`` on the Pyro backend and NumPyro's namesake on NumPyro, as one guide.

    ``ppgen.ppl.autoguide("AutoNormal", self.model)`` in a pair's ``__init__``; its ``guide(x)`` calls it. Both
    are built on their first call (they trace the model). Pyro's guide is the one the pair keeps
    (``state_dict``); NumPyro's starts from its values and its trained values are mapped back, site by site
    and role by role:

    * ``AutoNormal``: per site, loc (unconstrained space) and scale — ``{site}_auto_loc``/``_scale`` on NumPyro;
    * ``AutoDelta``: per site, the point (constrained space) — ``{site}_auto_loc``;
    * ``AutoDiagonalNormal``: loc and scale of the flattened unconstrained latent — ``auto_loc``/``auto_scale``;
    * ``AutoMultivariateNormal``: loc and the Cholesky factor L of Σ = L Lᵀ; Pyro keeps L = diag(s) U with U
      unit lower triangular, NumPyro L itself (``auto_scale_tril``).

    The two libraries may flatten the sites in different orders: vectors are permuted, and Σ is permuted
    (P Σ Pᵀ) and factorised again, so the mapping is exact up to rounding. Other autoguides run on Pyro only;
    on NumPyro they raise NotImplementedError, which the JAX engine reports as the reason it cannot run the pair.
    """

    def __init__(self, kind: str, model: Any, **options: Any):
        super().__init__()
        import pyro.infer.autoguide as pyro_autoguides

        if not hasattr(pyro_autoguides, kind):
            raise ValueError(f"Pyro has no autoguide {kind!r}")
        self.kind = kind
        self.options = options
        object.__setattr__(self, "_model", model)  # the pair's bound model: not a submodule
        self.pyro_guide = getattr(pyro_autoguides, kind)(model, **options)
        self._numpyro_guide: Any = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if get_backend() == "numpyro":
            return self._numpyro_call(*args, **kwargs)
        return self.pyro_guide(*args, **kwargs)

    @property
    def built(self) -> bool:
        """Whether Pyro's guide has run once (and so made its parameters)."""
        return self.pyro_guide.prototype_trace is not None

    # -- NumPyro ----------------------------------------------------------------------------------------
    def _numpyro_call(self, *args: Any, **kwargs: Any) -> Any:
        from numpyro import handlers

        if self._numpyro_guide is None:
            if self.kind not in NUMPYRO_AUTOGUIDES:
                raise NotImplementedError(f"the autoguide {self.kind} runs on Pyro only (ppgen maps "
                                          f"{', '.join(NUMPYRO_AUTOGUIDES)} to NumPyro)")
            if set(self.options) - {"init_scale"}:
                raise NotImplementedError(f"the {self.kind} options {sorted(set(self.options) - {'init_scale'})} "
                                          "are Pyro's; NumPyro's autoguide takes init_scale only")
            import numpyro.infer.autoguide as numpyro_autoguides

            guide = getattr(numpyro_autoguides, self.kind)(self._model, **self.options)
            guide._setup_prototype(*args, **kwargs)  # its site order and shapes, before the values are mapped
            self._numpyro_guide = guide
        values = {k: _to_jax(v) for k, v in self.numpyro_values().items()} if self.built else {}
        with handlers.substitute(data=values):  # SVI's own substitution (outside) takes precedence
            return self._numpyro_guide(*args, **kwargs)

    def _sites(self) -> list[tuple[str, int]]:
        """(site, size of its unconstrained value) in Pyro's flattening order."""
        trace = self.pyro_guide.prototype_trace
        shapes = getattr(self.pyro_guide, "_unconstrained_shapes", {})
        return [(name, int(torch.Size(shapes[name]).numel()) if name in shapes else 0)
                for name, _ in trace.iter_stochastic_nodes()]

    def _permutation(self) -> torch.Tensor:
        """Indices p with numpyro_vector = pyro_vector[p]."""
        offsets, start = {}, 0
        for name, size in self._sites():
            offsets[name] = (start, size)
            start += size
        order = list(self._numpyro_guide._init_locs) if self._numpyro_guide is not None else list(offsets)
        return torch.cat([torch.arange(offsets[n][0], offsets[n][0] + offsets[n][1]) for n in order])

    def numpyro_values(self) -> dict[str, torch.Tensor]:
        """Pyro's trained values as NumPyro's param sites (constrained), by name; {} before the first call or
        for a kind with no mapping."""
        if not self.built or self.kind not in NUMPYRO_AUTOGUIDES:
            return {}
        g, out = self.pyro_guide, {}
        if self.kind in ("AutoNormal", "AutoDelta"):
            for name, _ in g.prototype_trace.iter_stochastic_nodes():
                if self.kind == "AutoNormal":
                    out[f"{name}_auto_loc"] = _pyro_module_value(g.locs, name)
                    out[f"{name}_auto_scale"] = _pyro_module_value(g.scales, name)
                else:
                    out[f"{name}_auto_loc"] = _pyro_module_value(g, name)
            return out
        p = self._permutation()
        out["auto_loc"] = _pyro_module_value(g, "loc")[p]
        scale = _pyro_module_value(g, "scale")
        if self.kind == "AutoDiagonalNormal":
            out["auto_scale"] = scale[p]
        else:
            tril = scale[..., None] * _pyro_module_value(g, "scale_tril")
            cov = (tril @ tril.T)[p][:, p]
            out["auto_scale_tril"] = torch.linalg.cholesky(cov.double()).to(tril.dtype)
        return out

    def load_numpyro(self, params: dict[str, Any]) -> set[str]:
        """Set Pyro's guide from NumPyro's trained param sites; returns the names used."""
        import numpy as np

        names = set(self.numpyro_values()) & set(params)
        if not names:
            return set()
        value = {k: torch.from_numpy(np.array(params[k])) for k in names}
        g = self.pyro_guide
        if self.kind in ("AutoNormal", "AutoDelta"):
            for name, _ in g.prototype_trace.iter_stochastic_nodes():
                if self.kind == "AutoNormal":
                    _set_pyro_module_value(g.locs, name, value[f"{name}_auto_loc"])
                    _set_pyro_module_value(g.scales, name, value[f"{name}_auto_scale"])
                else:
                    _set_pyro_module_value(g, name, value[f"{name}_auto_loc"])
            return names
        inverse = torch.argsort(self._permutation())
        _set_pyro_module_value(g, "loc", value["auto_loc"][inverse])
        if self.kind == "AutoDiagonalNormal":
            _set_pyro_module_value(g, "scale", value["auto_scale"][inverse])
            return names
        tril = value["auto_scale_tril"].double()
        cov = (tril @ tril.T)[inverse][:, inverse]
        chol = torch.linalg.cholesky(cov)
        scale = torch.diagonal(chol)
        _set_pyro_module_value(g, "scale", scale.float())
        _set_pyro_module_value(g, "scale_tril", (chol / scale[:, None]).float())
        return names


def autoguide(kind: str, model: Any, **options: Any) -> AutoGuide:
    """Pyro's autoguide ``kind`` for ``model`` (a pair's ``self.model``), NumPyro's namesake on the JAX engine;
    see :class:`AutoGuide`."""
    return AutoGuide(kind, model, **options)


pyro = _Proxy("pyro", {"numpyro": {"module": _numpyro_module, "param": _numpyro_param}})
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
