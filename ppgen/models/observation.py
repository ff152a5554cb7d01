r"""A pair's generator under a Gaussian observation model of chosen scale: the likelihood of a GAN.

Wu, Burda, Salakhutdinov & Grosse (2017, "On the quantitative analysis of decoder-based
generative models") give every decoder-based model — a GAN's generator G, a VAE's decoder —
the same density

    p_σ(x) = ∫ N(x; m(z), σ² I) p(z) dz,        m(z) = E[x | z] under the pair's own observed site,

so that models trained by different objectives are compared by one log-likelihood, estimated
by AIS (:mod:`ppgen.evaluation.ais`) and fitted in σ on held-out data
(:func:`ppgen.evaluation.ais.fit_sigma`). :class:`GaussianObservation` is that pair: the
wrapped pair's model runs unchanged (its latent sites, plates and input columns), except
that its one observed site's distribution d is replaced by N(mean of d, σ²) with d's event
dimensions — G(z) for a GAN's Delta site, the pixel probabilities for a Bernoulli decoder,
the mean for a Gaussian one. The guide, where the pair has one, is the pair's own (still a
valid proposal: the IWAE bound of p_σ). A pair whose observed site's mean is not E[x | z]
(an autoregressive decoder, whose parameters depend on x itself) declares so in
``gaussian_observation_refusal`` and is refused.

Written here, not taken from Pyro: Pyro has no handler that swaps an observed site's
distribution for one built from it (``poutine.reparam`` rewrites latent sites only).
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as pdist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ppgen.errors import UserError
from ppgen.models.base import GenerativeModel


class _SwapObservation(Messenger):
    """Replace the distribution d of the observed site ``name`` by N(d.mean, σ²) with d's event dimensions."""

    def __init__(self, name: str, sigma: float):
        super().__init__()
        self.name, self.sigma = name, sigma

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] != self.name or not msg["is_observed"]:
            return
        fn = msg["fn"]
        try:
            mean = fn.mean
        except NotImplementedError:
            mean = None
        if mean is None or mean.shape[mean.dim() - msg["value"].dim():] != msg["value"].shape or not bool(
                torch.isfinite(mean).all()):  # the mean carries the particle dims the value broadcasts over
            raise UserError(f"a Gaussian observation model is centred on the mean of the observed site {self.name!r}, "
                            f"but its {type(fn).__name__} has no finite mean shaped like x")
        msg["fn"] = pdist.Normal(mean, torch.full_like(mean, self.sigma)).to_event(fn.event_dim)


def check_sigma(sigma: float) -> float:
    """Raise :class:`UserError` unless σ is a positive finite number."""
    if not (isinstance(sigma, int | float) and 0 < sigma < float("inf")):
        raise UserError(f"the observation scale sigma must be a positive number, got {sigma!r}; e.g. --sigma 0.1 "
                        "or --sigma fit")
    return float(sigma)


class GaussianObservation(GenerativeModel):
    """``pair`` with its observed site replaced by N(E[x | z], σ² I) (see the module docs). Not a family: it is
    built around a trained pair for evaluation, and shares its weights."""

    likelihood = "gaussian"

    def __init__(self, pair: GenerativeModel, sigma: float):
        if pair.gaussian_observation_refusal:
            raise UserError(f"{pair.who} cannot be given a Gaussian observation model: "
                            f"{pair.gaussian_observation_refusal}")
        super().__init__(pair.config)
        self.inner = pair
        self.sigma = check_sigma(sigma)
        self.latent_sites = pair.latent_sites
        self.max_plate_nesting = pair.max_plate_nesting
        self.data_plate = pair.data_plate
        self.inputs = pair.inputs
        self.has_guide = pair.has_guide
        self._observed: str | None = None
        # the wrapper takes the pair's mode: a new module is in training mode, and an estimator that restores the
        # mode it found (``pair.train(was_training)``) would otherwise put a loaded pair's batch norm in training
        self.train(pair.training)

    @property
    def who(self) -> str:
        return f"{self.inner.who} with Gaussian observations (sigma={self.sigma:g})"

    @property
    def x_shape(self) -> tuple[int, ...]:
        return self.inner.x_shape

    def observed_site(self, x: torch.Tensor, *inputs: torch.Tensor) -> str:
        """The name of the wrapped model's one observed site (found from one trace, then kept)."""
        if self._observed is None:
            # blocked from the handlers outside (a trace being recorded) and on a forked RNG: the probe leaves no
            # site and no draw behind
            with torch.no_grad(), pyro_validation_off(), poutine.block(), torch.random.fork_rng(devices=[]):
                trace = poutine.trace(self.inner.model).get_trace(x, *inputs)
            names = [name for name, s in trace.nodes.items()
                     if s["type"] == "sample" and s["is_observed"] and not site_is_subsample(s)]
            if len(names) != 1:
                raise UserError(f"a Gaussian observation model replaces the one observed site of {self.inner.who}, "
                                f"which has {len(names)} ({', '.join(names) or 'none'})")
            self._observed = names[0]
        return self._observed

    def model(self, x: torch.Tensor, *inputs: torch.Tensor) -> None:
        with _SwapObservation(self.observed_site(x, *inputs), self.sigma):
            self.inner.model(x, *inputs)

    def guide(self, x: torch.Tensor, *inputs: torch.Tensor) -> None:
        self.inner.guide(x, *inputs)


def pyro_validation_off() -> Any:
    import pyro

    return pyro.validation_enabled(False)
