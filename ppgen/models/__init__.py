"""Model families: one file per family, each a model/guide pair."""

from __future__ import annotations

from ppgen.errors import UserError
from ppgen.models.base import GenerativeModel
from ppgen.models.dlgm import DLGM
from ppgen.models.factor_analysis import FactorAnalysis
from ppgen.models.gan import GAN
from ppgen.models.hierarchical import HierarchicalVAE
from ppgen.models.ladder import LadderVAE
from ppgen.models.nade import NADE
from ppgen.models.ppca import PPCA
from ppgen.models.vae import VAE

#: name -> pair class; ``ppgen models`` lists it
REGISTRY: dict[str, type[GenerativeModel]] = {cls.name: cls for cls in (VAE, PPCA, GAN, DLGM, HierarchicalVAE, LadderVAE, NADE, FactorAnalysis)}


def get(name: str) -> type[GenerativeModel]:
    """The pair class registered under ``name``."""
    try:
        return REGISTRY[name.lower()]
    except KeyError:
        raise UserError(f"unknown model {name!r}; `ppgen models` lists: {', '.join(sorted(REGISTRY))}") from None


def describe() -> dict[str, str]:
    """One line per family: the first line of its module docstring."""
    import sys

    out = {}
    for name, cls in sorted(REGISTRY.items()):
        doc = sys.modules[cls.__module__].__doc__ or cls.__doc__ or ""
        out[name] = doc.strip().splitlines()[0]
    return out


__all__ = ["DLGM", "FactorAnalysis", "GAN", "GenerativeModel", "HierarchicalVAE", "LadderVAE", "NADE", "PPCA", "REGISTRY", "VAE", "describe", "get"]
