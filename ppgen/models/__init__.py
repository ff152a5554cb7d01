"""Model families: one file per family, each a model/guide pair.

Every module of this package is imported here, and defining a family's class
registers it (:data:`ppgen.models.base.REGISTRY`): a new family is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

from ppgen.errors import UserError
from ppgen.models.base import REGISTRY, GenerativeModel

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")


def get(name: str) -> type[GenerativeModel]:
    """The pair class registered under ``name``."""
    try:
        return REGISTRY[name.lower()]
    except KeyError:
        raise UserError(f"unknown model {name!r}; `ppgen models` lists: {', '.join(sorted(REGISTRY))}") from None


def describe() -> dict[str, str]:
    """One line per family: the first line of its module docstring."""
    out = {}
    for name, cls in sorted(REGISTRY.items()):
        doc = sys.modules[cls.__module__].__doc__ or cls.__doc__ or ""
        out[name] = doc.strip().splitlines()[0]
    return out


def __getattr__(name: str) -> type[GenerativeModel]:
    # ``from ppgen.models import VAE``: every registered family by its class name
    for cls in REGISTRY.values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module 'ppgen.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + [cls.__name__ for cls in REGISTRY.values()])


__all__ = ["GenerativeModel", "REGISTRY", "describe", "get"]
