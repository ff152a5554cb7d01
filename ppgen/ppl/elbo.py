r"""What both SVI engines train: the ELBO of a name (:func:`make_elbo`, Pyro's or NumPyro's, and ppgen's
:class:`FreeBitsELBO`) and the KL weight β on the latent sites (:class:`ScaleLatents`, on whichever backend runs
the wrapped code); which discrete latent sites a pair sums out exactly (:func:`discrete_sites`).

Discrete latents. A site marked ``infer={"enumerate": "parallel"}`` (or wrapped in ``config_enumerate``) is summed
out exactly by ``TraceEnum_ELBO`` (Pyro on torch, NumPyro with funsor on JAX). For a site y in the model only
(a mixture's component) the model's joint is marginalized, for y drawn by the guide too (M2's label) the guide's
q(y | x) is summed over::

    model side:  ELBO = E_{q(z|x)} [ log Σ_y p(x, y, z) − log q(z | x) ]
    guide side:  ELBO = Σ_y q(y | x) E_{q(z|x,y)} [ log p(x, y, z) − log q(y | x) − log q(z | x, y) ]

(Obermeyer et al., 2019, "Tensor variable elimination for plated factor graphs"). A discrete site left unmarked
is sampled and trained by the score-function (REINFORCE) gradient, as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ppgen.errors import UserError
from ppgen.ppl.routing import get_backend

# -- what both SVI engines train: the ELBO and the KL weight --------------------------------------------------------
#: the ELBOs :func:`make_elbo` knows, by name
ELBOS = ("trace", "analytic", "iwae")


def _scale_latent_message(msg: dict, factor: Any) -> None:
    if msg["type"] == "sample" and not msg["is_observed"] and not (msg.get("infer") or {}).get("enumerate"):
        msg["scale"] = factor if msg.get("scale") is None else msg["scale"] * factor


def _pyro_latent_scaler() -> type:
    from pyro.poutine.messenger import Messenger

    class PyroScaleLatents(Messenger):
        def __init__(self, factor: Any):
            super().__init__()
            self.factor = factor

        def _process_message(self, msg: dict) -> None:
            _scale_latent_message(msg, self.factor)

    return PyroScaleLatents


def _numpyro_latent_scaler() -> type:
    from numpyro.primitives import Messenger

    class NumPyroScaleLatents(Messenger):
        def __init__(self, factor: Any):
            super().__init__(None)
            self.factor = factor

        def process_message(self, msg: dict) -> None:
            _scale_latent_message(msg, self.factor)

    return NumPyroScaleLatents


@functools.cache
def _latent_scaler(name: str) -> type:
    return _pyro_latent_scaler() if name == "pyro" else _numpyro_latent_scaler()


class ScaleLatents:
    r"""Multiply the log density of every *latent* sample site by ``factor`` (β), on the backend that is active when
    the code inside runs::

        log p(x | z) + log p(z) − log q(z | x)   →   log p(x | z) + β (log p(z) − log q(z | x))

    (wrapped around model and guide; observed sites keep their weight, and so do sites marked for enumeration:
    they are summed out with the likelihood, so β weighs the continuous latents' KL only). A context manager
    (``with ScaleLatents(beta): ...``) or a wrapper (``ScaleLatents(beta)(model)``); ``factor`` may be a traced JAX
    value, so a compiled epoch takes a new β each step without recompiling.
    """

    def __init__(self, factor: Any):
        self.factor = factor
        self._entered: list[Any] = []

    def __enter__(self) -> ScaleLatents:
        handler = _latent_scaler(get_backend())(self.factor)
        handler.__enter__()
        self._entered.append(handler)
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._entered.pop().__exit__(*exc)

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def scaled(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return scaled


ENUMERATE = ("parallel", "sequential")


@dataclass(frozen=True)
class DiscreteSites:
    """The pair's discrete latent sites: those marked for enumeration (name → "parallel" or "sequential"; those
    among them that the guide draws in ``guide_side``) and those left to sampling (``sampled``)."""

    enumerated: dict[str, str]
    guide_side: frozenset[str]
    sampled: tuple[str, ...]

    @property
    def model_side(self) -> tuple[str, ...]:
        """Enumerated sites of the model that the guide does not draw (a mixture's component)."""
        return tuple(n for n in self.enumerated if n not in self.guide_side)

    def check_model_side_parallel(self) -> None:
        """Raise :class:`UserError` for a site of the model only marked "sequential": Pyro's ``TraceEnum_ELBO``
        sums such a site in parallel only (sequential enumeration is for sites the guide draws)."""
        sequential = [n for n in self.model_side if self.enumerated[n] != "parallel"]
        if sequential:
            raise UserError(f"site {sequential[0]!r} of the model only is marked for sequential enumeration, which "
                            "Pyro does not sum out in the model: mark it infer={'enumerate': 'parallel'}")

    def sampled_notice(self) -> str | None:
        """One line naming the discrete sites trained by sampling and how to sum them out, or None."""
        if not self.sampled:
            return None
        names = ", ".join(repr(n) for n in self.sampled)
        return (f"discrete latent site {names} is sampled (score-function gradient); to sum it out exactly mark it "
                "in pyro.sample with infer={'enumerate': 'parallel'}")


def _enumerate_mode(site: dict) -> str | None:
    mode = (site.get("infer") or {}).get("enumerate")
    return mode if mode in ENUMERATE else None


def discrete_sites(pair: Any, *args: Any) -> DiscreteSites:
    """Which latent sites of ``pair`` are discrete (their distribution has an enumerable support, in the guide too
    where the guide draws them: a point mass or a relaxed draw there is not one) and which of them are marked for
    enumeration, from one Pyro run of the guide and of the model replayed on it, on the first two rows of ``args``
    (examples and their input columns; on every row given where two do not run: a pair shaped by its data). A site the guide draws takes the guide's marking (as Pyro's
    ``replay`` does); a site of the model only takes the model's. Run in eval mode; torch's random state is left as it was."""
    import pyro
    import torch
    from pyro import poutine

    from ppgen.ppl.routing import backend

    devices = [a.device for a in args if isinstance(a, torch.Tensor) and a.is_cuda][:1]
    was_training = pair.training
    pair.eval()  # a look at the sites: no batch-norm statistics updated, no draw taken from torch's stream

    def traces(rows: tuple) -> tuple:
        with (torch.random.fork_rng(devices=devices), torch.no_grad(), pyro.validation_enabled(False),
              backend("pyro")):
            guide_tr = poutine.trace(pair.guide).get_trace(*rows) if pair.has_guide else None
            model_fn = pair.model if guide_tr is None else poutine.replay(pair.model, trace=guide_tr)
            return guide_tr, poutine.trace(model_fn).get_trace(*rows)

    def first(a: Any, n: int | None) -> Any:  # the first n rows (all: None) of a tensor or of sparse counts, dense
        return a[:n] if hasattr(a, "shape") and len(a.shape) and hasattr(a, "__getitem__") else a

    try:
        try:  # two examples are enough to see the sites ...
            guide_tr, model_tr = traces(tuple(first(a, 2) for a in args))
        except Exception:  # noqa: BLE001 - ... unless the pair is shaped by every row (an autoguide of a whole plate)
            guide_tr, model_tr = traces(tuple(first(a, None) for a in args))
    finally:
        pair.train(was_training)
    guide_nodes = {} if guide_tr is None else guide_tr.nodes
    enumerated, guide_side, sampled = {}, set(), []
    for name, site in model_tr.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or not getattr(site["fn"], "has_enumerate_support",
                                                                         False):
            continue
        drawn_by = guide_nodes.get(name)
        if drawn_by is not None and not getattr(drawn_by["fn"], "has_enumerate_support", False):
            continue  # the guide's point mass (VQ-VAE's codes) or relaxed draw: nothing to sum out
        mode = _enumerate_mode(drawn_by if drawn_by is not None else site)
        if mode is None:
            sampled.append(name)
            continue
        enumerated[name] = mode
        if drawn_by is not None:
            guide_side.add(name)
    return DiscreteSites(enumerated, frozenset(guide_side), tuple(sampled))


def make_elbo(name: str, num_particles: int = 1, max_plate_nesting: int = 1, *, free_bits: float = 0.0,
              data_plate: str = "data", backend_name: str | None = None, enumerate: bool = False) -> Any:
    r"""The ELBO object of ``name`` for ``backend_name`` (default: the active backend), Pyro's or NumPyro's namesake.

    * ``"trace"`` — ``Trace_ELBO``: log p(x, z) − log q(z|x) at z ~ q.
    * ``"analytic"`` — ``TraceMeanField_ELBO``: E_q[log p(x|z)] − KL(q‖p), the KL in closed form where the
      library has it.
    * ``"iwae"`` — ``RenyiELBO(alpha=0)``, the bound of Burda et al. (2016): E log (1/K) Σ_k p(x, z_k)/q(z_k|x),
      K = ``num_particles``, vectorized.
    * ``free_bits = λ > 0`` (Pyro) — :class:`FreeBitsELBO`, any name.

    * ``enumerate=True`` (the pair has sites marked for enumeration, :func:`discrete_sites`) — ``TraceEnum_ELBO``
      for ``"trace"``: the ELBO above with the marked discrete sites summed out exactly (module docs); the
      enumeration dims sit left of the pair's ``max_plate_nesting`` plates (and of the particle plate). IWAE,
      the analytic KL and free bits have no enumerated form here: they are refused.

    On Pyro, K > 1 particles are vectorized in a plate outside the ``max_plate_nesting`` plates of the pair.
    """
    backend_name = backend_name or get_backend()
    if name not in ELBOS:
        raise UserError(f"unknown ELBO {name!r}; choose one of {', '.join(ELBOS)}")
    if enumerate:
        return _enumerated_elbo(name, num_particles, max_plate_nesting, free_bits, backend_name)
    if name == "iwae" and num_particles < 2:
        raise UserError("the IWAE objective needs num_particles >= 2 (e.g. --particles 5)")
    if free_bits > 0:
        if backend_name != "pyro":
            raise UserError("free bits has an ELBO on Pyro only (engine='torch')")
        return FreeBitsELBO(free_bits, data_plate)
    if backend_name == "numpyro":
        from numpyro import infer
    else:
        from pyro import infer
    if name == "iwae":
        extra = {} if backend_name == "numpyro" else dict(vectorize_particles=True, max_plate_nesting=max_plate_nesting)
        return infer.RenyiELBO(alpha=0.0, num_particles=num_particles, **extra)
    cls = infer.Trace_ELBO if name == "trace" else infer.TraceMeanField_ELBO
    extra = ({} if backend_name == "numpyro"
             else dict(vectorize_particles=num_particles > 1, max_plate_nesting=max_plate_nesting))
    return cls(num_particles=num_particles, **extra)


def _enumerated_elbo(name: str, num_particles: int, max_plate_nesting: int, free_bits: float,
                     backend_name: str) -> Any:
    if name != "trace" or free_bits > 0:
        what = "free bits" if free_bits > 0 else f"elbo={name!r}"
        raise UserError(f"{what} has no enumerated form: a pair with sites marked for enumeration trains with "
                        "elbo='trace' (TraceEnum_ELBO) and no free bits")
    if backend_name == "numpyro":
        from numpyro.infer import TraceEnum_ELBO

        return TraceEnum_ELBO(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
    from pyro.infer import TraceEnum_ELBO

    return TraceEnum_ELBO(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                          vectorize_particles=num_particles > 1)


class FreeBitsELBO:
    r"""ELBO with the free-bits KL floor of Kingma et al. (2016), one floor per latent dimension (Pyro).

    With the per-example terms of :mod:`ppgen.sites` (each site's mask and scale applied, plates nested in the
    data plate summed) and N/B the data plate's minibatch factor::

        loss = N/B · ( −Σ_n ℓ_obs[n] + Σ_s Σ_j max(λ W_s, K_sj) ),   K_sj = Σ_n w_s[n] KL_sj[n],   W_s = Σ_n w_s[n],

    where w_s[n] is the weight (mask · scale) the guide's site s gives example n and KL_sj[n] the KL of dimension
    j of site s at example n. Unmasked with scale β: W_s = βB and the term is βB · max(λ, mean_n KL_sj), each
    dimension's batch-mean KL floored at λ; a masked example (w = 0) counts neither in the KL nor in the floor, so
    masking examples is removing them. KL_sj is closed-form when q and p are Normal (weighted by the guide's site,
    as Pyro's ``TraceMeanField_ELBO`` takes it), else the single draw ℓ_q − ℓ_p, each weighted by its own site,
    one "dimension" per site. λ = 0 is ``TraceMeanField_ELBO``.
    """

    def __init__(self, free_bits: float, data_plate: str = "data"):
        self.free_bits = free_bits
        self.data_plate = data_plate

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Any:
        from pyro import poutine

        from ppgen import sites

        guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
        where = sites.layout(model_tr, self.data_plate)
        observed, kl = 0.0, 0.0
        for name, p_site in sites.sample_sites(model_tr).items():
            if p_site["is_observed"]:
                observed = observed + sites.site_log_prob(p_site, where, self.data_plate).sum()
            else:
                kl = kl + self._floored_kl(guide_tr.nodes[name], p_site, where)
        return (where.full_size / where.examples) * (kl - observed)

    def _floored_kl(self, q_site: dict, p_site: dict, where: Any) -> Any:
        """Σ_j max(λ W, K_j) of one latent site (see the class docs)."""
        import torch
        from pyro.distributions import Normal
        from pyro.distributions.kl import kl_divergence

        from ppgen import sites

        q, q_event = _without_independent(q_site["fn"])
        p, _ = _without_independent(p_site["fn"])
        if isinstance(q, Normal) and isinstance(p, Normal):
            kl = kl_divergence(q, p.expand(q.batch_shape))  # (*batch, *event)
            per_dim = sites.per_example(q_site, kl, where, self.data_plate, trailing=q_event)
            per_dim = per_dim.reshape(where.shape + (-1,))
        else:
            per_dim = (sites.site_log_prob(q_site, where, self.data_plate)
                       - sites.site_log_prob(p_site, where, self.data_plate)).unsqueeze(-1)
        total = per_dim.reshape(-1, per_dim.shape[-1]).sum(0)  # K_j
        ones = torch.ones(q_site["fn"].batch_shape, device=total.device)
        weight = sites.per_example(q_site, ones, where, self.data_plate).sum()  # W
        return torch.maximum(total, self.free_bits * weight).sum()


def _without_independent(fn: Any) -> tuple[Any, int]:
    """The distribution inside any ``Independent`` wrappers and the event dims they added."""
    from pyro.distributions import Independent

    extra = 0
    while isinstance(fn, Independent):
        extra += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, extra
