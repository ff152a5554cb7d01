"""Autoguides on both backends: :func:`autoguide` is Pyro's autoguide on Pyro and NumPyro's namesake on NumPyro,
with the trained values mapped between them (:class:`AutoGuide`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributions import transform_to

from ppgen.ppl.routing import _to_jax, get_backend

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
