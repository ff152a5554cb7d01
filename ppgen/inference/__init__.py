"""Inference backends: the same pair goes to each (SVI in Pyro, NUTS in NumPyro, adversarial)."""

from ppgen.inference import adversarial, mcmc, svi  # noqa: F401  (importing registers the backends)
from ppgen.inference.fit import BACKENDS, Fit, fit

__all__ = ["BACKENDS", "Fit", "fit"]
