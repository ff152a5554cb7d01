"""ppgen: deep generative models as probabilistic programs (Pyro model/guide pairs)."""

from ppgen import data, evaluation, inference, models
from ppgen.api import fit, load

__version__ = "0.1.0"
__all__ = ["data", "evaluation", "fit", "inference", "load", "models"]
