r"""From traced model/guide sites to per-example log densities: the one reduction rule.

Every estimator and report that needs a log density per example (ELBO, IWAE, AIS/BDMC,
the amortization gap, the ArviZ ``log_likelihood`` group) takes it from here, so they
all sum the same terms over the same dimensions.

The rule
--------
For a traced sample site s (plate subsample sites are skipped)::

    ℓ_s = mask_s · scale_s · log p_s(value_s)          (event dims already summed by log_prob)

Pyro places the first declared plate rightmost, so the batch dims of ℓ_s are named by
the site's ``cond_indep_stack``, not by position. The *data plate* (``pair.data_plate``,
default ``"data"``) and the *particle plate* (``"particles"``, the vectorized draws an
estimator adds at dim −(max_plate_nesting + 1)) are located there by their ``dim``;
every other batch dim — plates nested inside the data plate (words of a document,
coordinates), broadcast dims — is summed. The result is shaped (particles, examples),
or (examples,) when the trace has no particle plate::

    ℓ_s[p, n] = Σ_{other dims} ℓ_s[..., p, ..., n, ...]

Scale. ``site["scale"]`` (from ``poutine.scale`` and subsampled plates) is applied once.
The data plate's *own* subsample factor N/B is divided out: a per-example number is the
log density of that example, not a minibatch estimate of the data set's; a caller who
wants the full-data estimate multiplies the sum over the B examples by N/B. Subsample
factors of plates nested inside the data plate are kept (they make the inner sum an
unbiased estimate of the example's whole sum).

Global sites. A site outside the data plate (the loadings, noise and mean of factor
analysis) belongs to no single example. With ``globals="split"`` (the default) it is
attributed evenly: 1/N of it to each of the N examples of the full data set (N = the
data plate's ``full_size``), so the sum over examples — and, under subsampling, N/B times
the sum over a minibatch — is the joint log density exactly, and linear estimators such
as the ELBO stay right. Estimators that are *not* linear in the per-example weights (IWAE
with K > 1, AIS/BDMC) are wrong under any split: they ask for ``globals="raise"``, which
raises a :class:`~ppgen.errors.UserError` naming the site.

Leaf module: imports torch, Pyro and :mod:`ppgen.errors` only.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample

from ppgen.errors import UserError

#: the name of the vectorized plate over particles (draws of the latents) every estimator adds
PARTICLES = "particles"
GLOBALS = ("split", "raise")


@dataclass(frozen=True)
class Layout:
    """Where the examples and the particles sit in a trace: the data plate's dim, size (examples in
    this trace) and full size (examples in the data set); the particle plate's dim and size, if any."""

    data_dim: int
    examples: int
    full_size: int
    particle_dim: int | None = None
    particles: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.examples,) if self.particles is None else (self.particles, self.examples)


def particles_plate(pair: Any, n: int) -> pyro.plate:
    """The vectorized ``particles`` plate of size n, outside every plate of the pair."""
    return pyro.plate(PARTICLES, n, dim=-(pair.max_plate_nesting + 1))


def sample_sites(trace: poutine.Trace) -> dict[str, dict]:
    """The trace's sample sites (observed and latent), plate subsample sites left out, in trace order."""
    return {name: s for name, s in trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}


def layout(trace: poutine.Trace, data_plate: str = "data") -> Layout:
    """Find the data plate and the particle plate among the trace's vectorized plates."""
    data = particles = None
    for site in sample_sites(trace).values():
        for frame in site["cond_indep_stack"]:
            if frame.name == data_plate:
                if frame.dim is None:
                    raise UserError(f"the data plate {data_plate!r} must be vectorized (``with pyro.plate(...)``), "
                                    "not iterated over")
                data = data or frame
            elif frame.name == PARTICLES and frame.dim is not None:
                particles = particles or frame
    if data is None:
        raise UserError(f"no sample site sits in the data plate {data_plate!r}: name the plate over examples "
                        f"{data_plate!r} or declare the pair's data_plate")
    full = data.full_size if data.full_size is not None else data.size
    if particles is None:
        return Layout(data.dim, data.size, full)
    return Layout(data.dim, data.size, full, particles.dim, particles.size)


def _sum_except(lp: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """(H, *batch) -> (H, *kept): keep dim 0 and the batch dims ``dims`` (negative, counted from the right), moved
    in that order behind it; sum every other batch dim."""
    batch = lp.dim() - 1
    width = max([-d for d in dims] + [batch])
    lp = lp.reshape((lp.shape[0],) + (1,) * (width - batch) + tuple(lp.shape[1:]))
    front = [1 + width + d for d in dims]
    rest = [i for i in range(1, width + 1) if i not in front]
    lp = lp.permute([0] + front + rest)
    return lp.reshape(tuple(lp.shape[: 1 + len(front)]) + (-1,)).sum(-1)


def site_log_prob(site: dict, where: Layout, data_plate: str = "data", globals: str = "split") -> torch.Tensor:
    r"""One site's ℓ_s[p, n] (see the module docs), shaped ``where.shape``."""
    return per_example(site, site["fn"].log_prob(site["value"]), where, data_plate, globals)


def per_example(site: dict, density: Any, where: Layout, data_plate: str = "data", globals: str = "split",
                trailing: int = 0) -> torch.Tensor:
    r"""The module's rule applied to ``density``, a term of site s over its batch shape (its log density, or a
    closed-form KL at the site) followed by ``trailing`` dims of its own, which are kept::

        d_s[p, n, *t] = Σ_{other dims} mask_s · scale_s · density[..., *t]     (data plate's N/B divided out)

    shaped ``where.shape`` + the trailing shape.
    """
    if globals not in GLOBALS:
        raise ValueError(f"globals must be one of {GLOBALS}, got {globals!r}")
    density = density if torch.is_tensor(density) else torch.as_tensor(density)
    tail = tuple(density.shape[density.dim() - trailing:]) if trailing else ()
    if trailing:  # the trailing dims, flattened, lead: (T, *batch), so the batch dims keep their negative places
        density = density.reshape(tuple(density.shape[: density.dim() - trailing]) + (-1,)).movedim(-1, 0)
    else:
        density = density.unsqueeze(0)
    lp = scale_and_mask(density, site["scale"], site.get("mask"))
    frames = {f.name: f for f in site["cond_indep_stack"] if f.dim is not None}
    data = frames.get(data_plate)
    particles = frames.get(PARTICLES) if where.particles is not None else None
    dims = ([particles.dim] if particles is not None else []) + ([data.dim] if data is not None else [])
    lp = _sum_except(lp, dims)
    if particles is None and where.particles is not None:
        lp = lp.unsqueeze(1)
    shape = (lp.shape[0], *where.shape)
    if data is None:
        if globals == "raise":
            raise UserError(f"site {site['name']!r} lies outside the data plate {data_plate!r} (a global "
                            "variable): this estimator needs per-example densities; use the ELBO, or fix the "
                            "global variables")
        lp = (lp / where.full_size).unsqueeze(-1).expand(shape)
    else:
        if data.full_size is not None and data.full_size != data.size:
            lp = lp * (data.size / data.full_size)  # divide out the data plate's own minibatch factor N/B
        lp = lp.expand(shape)
    return lp.movedim(0, -1).reshape(where.shape + tail) if trailing else lp[0]


def site_log_probs(trace: poutine.Trace, data_plate: str = "data", globals: str = "split",
                   where: Layout | None = None) -> dict[str, torch.Tensor]:
    """ℓ_s per (particle, example) of every sample site: {name: (particles, examples) or (examples,)}."""
    where = where or layout(trace, data_plate)
    return {name: site_log_prob(s, where, data_plate, globals) for name, s in sample_sites(trace).items()}


def _add(total: torch.Tensor | None, lp: torch.Tensor) -> torch.Tensor:
    return lp if total is None else total + lp


def log_density(trace: poutine.Trace, data_plate: str = "data", globals: str = "split",
                select: Callable[[str, dict], bool] | None = None, where: Layout | None = None) -> torch.Tensor:
    r"""Σ_s ℓ_s[p, n] over the sample sites (those ``select(name, site)`` keeps): shape (P, N) or (N,).

    ``where`` defaults to the trace's own :func:`layout`; pass the model's to sum a guide
    trace that may hold no site at all (a pair without latents).
    """
    where = where or layout(trace, data_plate)
    total = None
    for name, site in sample_sites(trace).items():
        if select is None or select(name, site):
            total = _add(total, site_log_prob(site, where, data_plate, globals))
    return torch.zeros(where.shape) if total is None else total


def latent_and_observed(trace: poutine.Trace, latent: Collection[str], data_plate: str = "data",
                        globals: str = "split") -> tuple[torch.Tensor, torch.Tensor]:
    r"""(Σ_{s ∈ latent} ℓ_s, Σ_{s observed} ℓ_s) per (particle, example): log p(z) and log p(x | z) for AIS.

    Raises :class:`UserError` on a latent site not in ``latent`` (the latents must not depend on the data).
    """
    where = layout(trace, data_plate)
    prior = observed = None
    for name, site in sample_sites(trace).items():
        if name not in latent and not site["is_observed"]:
            raise UserError(f"latent site {name!r} is not among the latents {sorted(latent)} the estimator "
                            "started from; the model's latents must not depend on the data")
        lp = site_log_prob(site, where, data_plate, globals)
        if name in latent:
            prior = _add(prior, lp)
        else:
            observed = _add(observed, lp)
    like = prior if prior is not None else observed
    zero = torch.zeros(where.shape) if like is None else torch.zeros_like(like)
    return (zero if prior is None else prior), (zero if observed is None else observed)


# -- traces of a pair ----------------------------------------------------------------------------------
def trace_pair(pair: Any, x: torch.Tensor, particles: int,
               inputs: tuple[torch.Tensor, ...] = ()) -> tuple[poutine.Trace, poutine.Trace]:
    """(guide trace, model trace): the guide traced inside a vectorized ``particles`` plate at dim
    −(max_plate_nesting + 1), the model replayed on its draws (encoder once per example, decoder once
    per particle); ``inputs`` are the pair's input columns beside ``x`` (one row per example)."""
    with pyro.validation_enabled(False), particles_plate(pair, particles):
        guide_tr = poutine.trace(pair.guide).get_trace(x, *inputs)
        model_tr = poutine.trace(poutine.replay(pair.model, trace=guide_tr)).get_trace(x, *inputs)
    return guide_tr, model_tr


def trace_conditioned(fn: Callable, pair: Any, x: torch.Tensor, values: dict[str, torch.Tensor],
                      particles: int | None, inputs: tuple[torch.Tensor, ...] = (),
                      enumerate: bool = False) -> poutine.Trace:
    """``fn`` (the model or the guide) traced with ``values`` fixed, inside a ``particles`` plate when
    ``particles`` is given (then every value carries the particle dim in front); with ``enumerate``, under
    Pyro's ``enum``: the sites marked for enumeration take all their values along dims left of the plates
    (:func:`summed_log_density` sums them out)."""
    conditioned = poutine.condition(fn, data=values)
    if enumerate:
        first = -(pair.max_plate_nesting + (1 if particles is None else 2))
        conditioned = poutine.enum(poutine.infer_config(conditioned, _sequential_as_parallel),
                                   first_available_dim=first)
    with pyro.validation_enabled(False):
        if particles is None:
            return poutine.trace(conditioned).get_trace(x, *inputs)
        with particles_plate(pair, particles):
            return poutine.trace(conditioned).get_trace(x, *inputs)


def _sequential_as_parallel(site: dict) -> dict:
    # a sum over a site's values is the same sum whichever way it is enumerated
    return {"enumerate": "parallel"} if site["infer"].get("enumerate") == "sequential" else {}


def log_joint(pair: Any, x: torch.Tensor, values: dict[str, torch.Tensor], particles: int | None = None,
              globals: str = "split", inputs: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    r"""log p(x_n, z_{p,n}) per particle and example with the latents fixed at ``values``: (P, N) or (N,).

    Differentiable in ``values`` and in the pair's parameters.
    """
    trace = trace_conditioned(pair.model, pair, x, values, particles, inputs)
    return log_density(trace, pair.data_plate, globals)


def log_weights(pair: Any, x: torch.Tensor, k: int, globals: str = "split",
                inputs: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    r"""log w_{k,n} = log p(x_n, z_{k,n}) − log q(z_{k,n} | x_n), z ~ q, for k particles: shape (k, N)."""
    with torch.no_grad():  # a distribution may compute lazily (NADE): keep it out of autograd
        guide_tr, model_tr = trace_pair(pair, x, k, inputs)
        where = layout(model_tr, pair.data_plate)
        log_p = log_density(model_tr, pair.data_plate, globals, where=where)
        return log_p - log_density(guide_tr, pair.data_plate, globals, where=where).to(log_p)


# -- discrete sites summed out exactly ---------------------------------------------------------------------
def _enumerated_dims(trace: poutine.Trace, data_plate: str) -> dict[str, int]:
    """{site: enumeration dim} of the trace's enumerated sites; raise :class:`UserError` for one that is not in
    the data plate alone (a per-example sum over it must be one sum per example)."""
    dims = {}
    for name, site in sample_sites(trace).items():
        dim = site["infer"].get("_enumerate_dim")
        if dim is None:
            continue
        plates = {f.name for f in site["cond_indep_stack"] if f.vectorized} - {PARTICLES}
        if plates != {data_plate}:
            raise UserError(f"enumerated site {name!r} sits in plates {sorted(plates)}: the per-example estimators "
                            f"sum out a discrete site of the data plate {data_plate!r} alone (one per example)")
        dims[name] = dim
    return dims


def _kept_enum_log_prob(site: dict, where: Layout, data_plate: str, globals: str, enum_dims: list[int]) -> torch.Tensor:
    """ℓ_s[p, n, e_1, ..., e_m]: the module's rule with the enumeration dims ``enum_dims`` kept (moved behind the
    particle and example dims, size 1 where the site does not depend on them)."""
    lp = site["fn"].log_prob(site["value"])
    width = max(lp.dim(), -min(enum_dims))
    lp = lp.reshape((1,) * (width - lp.dim()) + tuple(lp.shape))
    lp = lp.movedim([width + d for d in enum_dims], list(range(width - len(enum_dims), width)))
    return per_example(site, lp, where, data_plate, globals, trailing=len(enum_dims))


def summed_log_density(trace: poutine.Trace, data_plate: str = "data", globals: str = "split",
                       select: Callable[[str, dict], bool] | None = None, where: Layout | None = None) -> torch.Tensor:
    r""":func:`log_density` of a trace made under Pyro's ``enum`` (:func:`trace_conditioned` with ``enumerate``),
    its enumerated sites summed out exactly: log Σ_{e} exp(Σ_s ℓ_s[p, n, e]) over every joint value e of them,
    (P, N) or (N,). ``select`` must keep the enumerated sites themselves (their log probabilities weigh the
    sum); each must sit in the data plate alone."""
    where = where or layout(trace, data_plate)
    dims = sorted(set(_enumerated_dims(trace, data_plate).values()), reverse=True)
    if not dims:
        return log_density(trace, data_plate, globals, select, where)
    total = None
    for name, site in sample_sites(trace).items():
        if select is None or select(name, site):
            total = _add(total, _kept_enum_log_prob(site, where, data_plate, globals, dims))
    if total is None:
        return torch.zeros(where.shape)
    return torch.logsumexp(total.flatten(len(where.shape)), -1)


def enumerated_log_weights(pair: Any, x: torch.Tensor, k: int, globals: str = "split",
                           inputs: tuple[torch.Tensor, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    r"""(IWAE terms, ELBO terms), each (k, N), of a pair with discrete sites marked for enumeration, summed out
    exactly at each of k draws of the continuous latents z_k ~ q.

    The guide runs under Pyro's ``enum`` inside the ``particles`` plate (a "sequential" mark is taken as
    "parallel": the sum is the same), the model replayed on it; sites of the model only (a mixture's component
    c) are enumerated after the guide's (a guide-drawn y, M2's label). With ℓ_p, ℓ_q the per-example sums of the
    module's rule at every value of the enumerated sites::

        log w_k      = log Σ_{y, c} p(x, y, c, z_k) / q(z_k | x, y)        (IWAE term: E w_k = p(x))
        elbo_k       = Σ_y q(y | x) [ log Σ_c p(x, y, c, z_k) − log q(y | x) − log q(z_k | x, y) ]

    with z_k drawn given each y. The mean of the ELBO terms over k is an unbiased estimate of the enumerated ELBO
    (what ``TraceEnum_ELBO`` trains); logsumexp_k log w_k − log k is IWAE_k. With nothing drawn by the guide
    (y absent) both terms coincide, log Σ_c p(x, c, z_k) − log q(z_k | x); with y drawn they differ (IWAE_1 ≥
    ELBO by Jensen's inequality). Each enumerated site must sit in the data plate alone.
    """
    mpn = pair.max_plate_nesting
    to_parallel = poutine.infer_config(pair.guide, _sequential_as_parallel)
    with torch.no_grad(), pyro.validation_enabled(False), particles_plate(pair, k):
        guide_tr = poutine.trace(poutine.enum(to_parallel, first_available_dim=-(mpn + 2))).get_trace(x, *inputs)
        model = poutine.enum(poutine.replay(pair.model, trace=guide_tr))  # allocates dims left of the guide's
        model_tr = poutine.trace(model).get_trace(x, *inputs)
        where = layout(model_tr, pair.data_plate)
        guide_dims = _enumerated_dims(guide_tr, pair.data_plate)
        model_dims = {n: d for n, d in _enumerated_dims(model_tr, pair.data_plate).items() if n not in guide_dims}
        enum_dims = sorted(set(guide_dims.values()) | set(model_dims.values()), reverse=True)
        if not enum_dims:
            raise UserError("the pair has no site marked for enumeration to sum out")
        axes = {d: len(where.shape) + i for i, d in enumerate(enum_dims)}

        def total(trace: poutine.Trace, keep: Callable[[str], bool]) -> torch.Tensor:
            out = torch.zeros(where.shape + (1,) * len(enum_dims), device=x.device)
            for name, site in sample_sites(trace).items():
                if keep(name):
                    out = out + _kept_enum_log_prob(site, where, pair.data_plate, globals, enum_dims).to(out)
            return out

        log_p = total(model_tr, lambda name: True)
        log_q_enum = total(guide_tr, lambda name: name in guide_dims)
        log_q_rest = total(guide_tr, lambda name: name not in guide_dims)
        all_axes = list(axes.values())
        iwae_terms = torch.logsumexp((log_p - log_q_rest).expand(torch.broadcast_shapes(log_p.shape,
                                                                                       log_q_rest.shape)
                                                                 ).flatten(len(where.shape)), -1)
        model_axes = sorted({axes[d] for d in model_dims.values()})
        marginal = torch.logsumexp(log_p, model_axes, keepdim=True) if model_axes else log_p
        inner = marginal - log_q_enum - log_q_rest
        weight = log_q_enum.exp()
        elbo_terms = torch.where(weight > 0, weight * inner, torch.zeros((), device=x.device)).sum(all_axes) if guide_dims else (
            inner.sum(all_axes))
        return iwae_terms, elbo_terms


def observed_log_likelihood(trace: poutine.Trace, data_plate: str = "data", exclude: Collection[str] = (),
                            globals: str = "split") -> dict[str, torch.Tensor]:
    """log p(x_n | ·) per (particle, example) of every observed site not in ``exclude`` (ArviZ's group)."""
    where = layout(trace, data_plate)
    return {name: site_log_prob(s, where, data_plate, globals) for name, s in sample_sites(trace).items()
            if s["is_observed"] and name not in exclude}


def global_sites(trace: poutine.Trace, data_plate: str = "data") -> list[str]:
    """Names of the sample sites outside the data plate."""
    return [name for name, s in sample_sites(trace).items()
            if not any(f.name == data_plate for f in s["cond_indep_stack"])]


# -- values between a site's plate layout and (particles, examples, *event) ------------------------------
def data_dims(pair: Any, x: torch.Tensor, fn: Callable | None = None,
              inputs: tuple[torch.Tensor, ...] = ()) -> dict[str, int | None]:
    """The data plate's dim of every latent sample site of ``fn`` (default: the guide; None for a global
    site), from one trace on the first example."""
    with pyro.validation_enabled(False), torch.no_grad():
        trace = poutine.trace(fn or pair.guide).get_trace(x[:1], *(c[:1] for c in inputs))
    out = {}
    for name, site in sample_sites(trace).items():
        if not site["is_observed"]:
            frame = next((f for f in site["cond_indep_stack"] if f.name == pair.data_plate), None)
            out[name] = None if frame is None else frame.dim
    return out


def place(value: torch.Tensor, data_dim: int | None, max_plate_nesting: int) -> torch.Tensor:
    """(P, N, *event) — or (P, *event) for a global site — into the site's layout inside a particle plate at
    dim −(max_plate_nesting + 1): (P, 1, ..., N at ``data_dim``, ..., 1, *event)."""
    batch = [1] * max_plate_nesting
    if data_dim is None:
        event = tuple(value.shape[1:])
    else:
        event = tuple(value.shape[2:])
        batch[max_plate_nesting + data_dim] = value.shape[1]
    return value.reshape((value.shape[0], *batch, *event))


def unplace(value: torch.Tensor, event_dim: int, in_data: bool) -> torch.Tensor:
    """The inverse of :func:`place`: a traced value (P, *batch, *event) whose batch dims other than the data
    plate are 1 as (P, N, *event), or (P, *event) for a global site."""
    event = tuple(value.shape[value.dim() - event_dim:])
    if not in_data:
        return value.reshape((value.shape[0], *event))
    return value.reshape((value.shape[0], -1, *event))
