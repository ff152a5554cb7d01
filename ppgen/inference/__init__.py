"""Inference backends: the same pair goes to each (SVI in Pyro, NUTS in NumPyro, adversarial)."""

from ppgen.inference import svi  # noqa: F401  (registers the backend)
from ppgen.inference.fit import BACKENDS, Fit, fit

__all__ = ["BACKENDS", "Fit", "fit"]
