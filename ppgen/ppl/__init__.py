"""Backend dispatch: one model source runs on Pyro (torch) or on NumPyro (JAX).

A model is written against two proxies::

    from ppgen.ppl import pyro, dist

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([k]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

``pyro.sample`` resolves to ``pyro.sample`` or ``numpyro.sample`` depending on the
backend that is active (``with backend("numpyro"): ...``); ``dist.Normal`` likewise.
The idea is pyro-api's ``pyro_backend``; ppgen keeps its own small version because
``numpyro.compat`` lacks ``deterministic``/``factor`` and its SVI recompiles every
step. Networks from :mod:`ppgen.nn` are torch modules that run a lowered JAX
function when called on a JAX array, so the same model body works on both sides.

Only what both libraries spell the same way is routed; where NumPyro lacks a
distribution that Pyro has (``ContinuousBernoulli``) ppgen supplies it here.

Parameters belong to the pair that registers them (:class:`OwnParams`, :func:`param_owner`): a
``pyro.param`` is an ``nn.Parameter`` of the pair on Pyro and a ``numpyro.param`` started at the pair's
value on NumPyro, whose trained values :func:`load_numpyro_params` copies back. :func:`autoguide` is
Pyro's autoguide on Pyro and NumPyro's namesake on NumPyro, with the trained values mapped between them.

Both SVI engines also take their objective and their KL weight from here, so the two
engines train the same thing: :func:`make_elbo` (the ELBO of a name, Pyro's or NumPyro's,
and ppgen's :class:`FreeBitsELBO`) and :class:`ScaleLatents` (β on the latent sites, on
whichever backend runs the wrapped code).

The package keeps these four jobs apart, lowest first: :mod:`ppgen.ppl.routing` (the proxies, the backend scopes,
standard draws), :mod:`ppgen.ppl.guides` (autoguides), :mod:`ppgen.ppl.params` (the parameters a pair owns; it
installs ``pyro.param`` for NumPyro into the proxy when imported, which importing this package always does) and
:mod:`ppgen.ppl.elbo` (what the SVI engines train). Import the names from here.
"""

from __future__ import annotations

from ppgen.ppl.elbo import ELBOS, DiscreteSites, FreeBitsELBO, ScaleLatents, discrete_sites, make_elbo
from ppgen.ppl.guides import NUMPYRO_AUTOGUIDES, AutoGuide, autoguide
from ppgen.ppl.params import OwnParams, load_numpyro_params, numpyro_param_names, param_owner, trained_tensors
from ppgen.ppl.params import _decode as _decode  # read by ppgen.models.base (state dict keys)
from ppgen.ppl.routing import _numpyro_module_rule as _numpyro_module_rule  # installed by ppgen.nn
from ppgen.ppl.routing import (
    backend,
    bind_weights,
    bound_weights,
    dist,
    get_backend,
    is_jax,
    normal,
    pyro,
    randint,
    recording_modules,
    uniform,
)

__all__ = [
    "ELBOS", "NUMPYRO_AUTOGUIDES", "AutoGuide", "DiscreteSites", "FreeBitsELBO", "OwnParams", "ScaleLatents", "autoguide", "backend",
    "bind_weights", "bound_weights", "discrete_sites", "dist", "get_backend", "is_jax", "load_numpyro_params", "make_elbo", "normal",
    "numpyro_param_names", "param_owner", "pyro", "randint", "recording_modules", "trained_tensors", "uniform",
]
