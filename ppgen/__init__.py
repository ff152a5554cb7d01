"""ppgen: deep generative models as probabilistic programs (Pyro model/guide pairs)."""

from ppgen import data, evaluation, inference, models, tracking
from ppgen.api import fit, load, save

__version__ = "0.1.0"
__all__ = ["data", "diagnostics", "evaluation", "fit", "inference", "load", "models", "save", "tracking"]


def __getattr__(name: str):
    # ArviZ is slow to import: ppgen.diagnostics loads on first use
    if name == "diagnostics":
        import importlib

        return importlib.import_module("ppgen.diagnostics")
    raise AttributeError(f"module 'ppgen' has no attribute {name!r}")
