"""ppgen: deep generative models as probabilistic programs (Pyro model/guide pairs).

The subpackages and :func:`fit`/:func:`load` load on first use (``ppgen.models``, ``ppgen.fit``...), so
``import ppgen`` is quick and loads neither torch, JAX nor SciPy until something needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["data", "diagnostics", "evaluation", "fit", "inference", "load", "models", "save", "tracking"]

#: public name -> (module, attribute or None for the module itself), imported on first access
_LAZY = {
    "data": ("ppgen.data", None),
    "diagnostics": ("ppgen.diagnostics", None),
    "evaluation": ("ppgen.evaluation", None),
    "inference": ("ppgen.inference", None),
    "models": ("ppgen.models", None),
    "fit": ("ppgen.api", "fit"),
    "load": ("ppgen.api", "load"),
    "save": ("ppgen.api", "save"),
    "tracking": ("ppgen.tracking", None),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'ppgen' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
