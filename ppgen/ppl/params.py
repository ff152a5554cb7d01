"""The parameters a pair owns: :class:`OwnParams`, :func:`param_owner` (the pair's scope of Pyro's param store),
``pyro.param`` on NumPyro (:func:`_numpyro_param`, installed into the ``pyro`` proxy at import) and the copy of
NumPyro's trained values back into the pair (:func:`load_numpyro_params`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.distributions import constraints, transform_to

from ppgen.ppl import routing
from ppgen.ppl.guides import AutoGuide
from ppgen.ppl.routing import _to_jax, get_backend

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


routing._numpyro_pyro["param"] = _numpyro_param
