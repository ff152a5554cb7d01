r"""HMC on a pair's latents, per example, from its own sample sites; and MCMC inside training.

The kernel (Neal, 2011): unit mass, L leapfrog steps of size ε, then a Metropolis
accept/reject per chain and example, so each transition leaves its target

    f_β(z) = a(z) + β b(z)

invariant (β = 1 with a = log p(z), b = log p(x | z) is the posterior p(z | x) ∝ p(x, z)).
The latents of a batch are one (C, B, D) tensor — C chains × B examples × the flattened
continuous latent sites (discrete sites marked for enumeration are summed out of f exactly, never moved) — and the log densities come from the pair's model traced with the latents
fixed inside a ``particles`` plate and reduced per example by :mod:`ppgen.sites`. AIS
(:mod:`ppgen.evaluation.ais`) anneals β along this kernel; training uses it at β = 1.

MCMC inside training (Hoffman, 2017, "Learning deep latent Gaussian models with Markov
chain Monte Carlo"): z₀ ~ q(z | x) from the guide, a few HMC transitions targeting
p(z | x) of the current model refine it to z_T, and

* the model's (decoder's) parameters θ take the gradient ∇_θ log p(x, z_T), z_T held fixed
  (no gradient through the chain);
* the guide's parameters φ take the usual ELBO gradient.

Which parameters are the model's is read from the autograd graph of log p(x, z_T): every parameter it
reaches (a parameter shared by model and guide, too, then takes the model's gradient); the rest are the
guide's. No model class or site name is special-cased.

The chain starts at the guide's draw, so it is never worse than the ELBO's sample and
moves toward the exact posterior as T grows; the model then fits a better posterior
than q. One step size is shared by the examples and adapted between minibatches toward
an acceptance rate (Hoffman used 0.8): ε ← ε·exp(rate − target), so within one chain the
kernel is fixed and leaves p(z | x) invariant exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from pyro.distributions import constraints
from pyro.poutine.util import site_is_subsample

from ppgen import sites as site_rules
from ppgen.errors import UserError
from ppgen.ppl import discrete_sites

STARTS = ("prior", "guide")


def is_latent(site: dict) -> bool:
    return site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)


def _is_real(fn) -> bool:
    support = fn.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


class LatentTarget:
    """The latents of a batch of points, as (C, B, D), and f_β = a + β b at them.

    ``base`` names π_0 of the path: ``"prior"`` gives a = log p(z), b = log p(x | z);
    ``"guide"`` gives a = log q(z | x), b = log p(x, z) − log q(z | x). Either way f_1 is
    log p(x, z). ``start`` (default: ``base``) is where the chains start: a draw from the
    prior or from the guide, ``z0``.
    """

    def __init__(self, pair: Any, x: torch.Tensor, chains: int, base: str = "prior", start: str | None = None,
                 what: str = "HMC", inputs: tuple[torch.Tensor, ...] = ()):
        start = start or base
        if base not in STARTS or start not in STARTS:
            raise UserError(f"{what} starts from 'prior' or 'guide', got {base!r}/{start!r}")
        self.pair, self.x, self.base, self.inputs = pair, x, base, tuple(inputs)
        self.shape = (chains, x.shape[0])
        #: discrete sites marked for enumeration: summed out exactly in f_β, never moved
        self.summed = frozenset(discrete_sites(pair, x, *self.inputs).enumerated)
        begin = self._trace(pair.guide if start == "guide" else pair.model, {}, enumerate=False)
        latent = {name: site for name, site in begin.nodes.items() if is_latent(site) and name not in self.summed}
        #: (name, traced value shape: particles, plates, event) of every latent, in trace order
        self.sites = [(name, tuple(site["value"].shape)) for name, site in latent.items()]
        if not self.sites:
            raise UserError(f"{pair.who} has no latent variables: its log p(x) is "
                            "exact already (use the IWAE/ELBO estimate, which equals it)")
        for name, site in latent.items():
            in_data = any(f.name == pair.data_plate for f in site["cond_indep_stack"])
            event = site["value"].shape[site["value"].dim() - len(site["fn"].event_shape):]
            if not in_data or site["value"].numel() != math.prod(self.shape) * math.prod(event):
                raise UserError(f"{what} needs every latent inside the data plate; site {name!r} has shape "
                                f"{tuple(site['value'].shape)}")
            if not _is_real(site["fn"]):
                hint = (" (mark a discrete site infer={'enumerate': 'parallel'} to sum it out exactly)"
                        if getattr(site["fn"], "has_enumerate_support", False) else "")
                raise UserError(f"{what} moves real-valued latents by HMC; site {name!r} has support "
                                f"{site['fn'].support}{hint}")
        self.z0 = self.flatten({name: begin.nodes[name]["value"] for name, _ in self.sites})

    def _trace(self, fn, values: dict, enumerate: bool | None = None):
        enumerate = bool(self.summed) if enumerate is None else enumerate
        return site_rules.trace_conditioned(fn, self.pair, self.x, values, self.shape[0], self.inputs, enumerate)

    def flatten(self, values: dict) -> torch.Tensor:
        return torch.cat([values[name].reshape(self.shape + (-1,)) for name, _ in self.sites], -1).detach()

    def unflatten(self, z: torch.Tensor) -> dict:
        """(C, B, D) back to every site's traced layout (the data plate at its own dim)."""
        out, start = {}, 0
        for name, shape in self.sites:
            size = math.prod(shape) // math.prod(self.shape)
            out[name] = z[..., start:start + size].reshape(shape)
            start += size
        return out

    def _log_probs(self, trace, latent: set) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(z), log p(x | z)) per chain and point, by the rule of :mod:`ppgen.sites`."""
        return site_rules.latent_and_observed(trace, latent, self.pair.data_plate, globals="raise")

    def parts(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) at z: f_β(z) = a + β b."""
        values = self.unflatten(z)
        if self.summed:
            return self._summed_parts(values)
        prior, lik = self._log_probs(self._trace(self.pair.model, values), set(values))
        if self.base == "prior":
            return prior, lik
        log_q, _ = self._log_probs(self._trace(self.pair.guide, values), set(values))
        return log_q, prior + lik - log_q

    def _summed_parts(self, values: dict) -> tuple[torch.Tensor, torch.Tensor]:
        r"""(a, b) with the enumerated sites e summed out (:func:`ppgen.sites.summed_log_density`)::

            log p(x, z) = log Σ_e p(x, e, z),   log p(z) = log Σ_e p(e, z),   log q(z | x) = log Σ_e q(e, z | x)

        so the chain moves z on its marginal posterior p(z | x) and f_1 is log p(x, z) with e summed out."""
        data_plate = self.pair.data_plate
        model_tr = self._trace(self.pair.model, values)
        where = site_rules.layout(model_tr, data_plate)
        joint = site_rules.summed_log_density(model_tr, data_plate, "raise", where=where)
        if self.base == "prior":
            prior = site_rules.summed_log_density(model_tr, data_plate, "raise", where=where,
                                                  select=lambda name, site: name in values or name in self.summed)
            return prior, joint - prior
        log_q = site_rules.summed_log_density(self._trace(self.pair.guide, values), data_plate, "raise", where=where)
        return log_q, joint - log_q

    def evaluate(self, z: torch.Tensor, beta: float):
        """a, b and ∇_z f_β at z (no gradient reaches the pair's parameters)."""
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            a, b = self.parts(z)
            (grad,) = torch.autograd.grad((a + beta * b).sum(), z)
        return a.detach(), b.detach(), grad


def hmc_step(target: LatentTarget, z: torch.Tensor, beta: float, eps: torch.Tensor | float,
             leapfrog: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One HMC transition leaving f_β invariant, for every chain and point at once: (z, b at z, accept prob)."""
    a0, b0, grad = target.evaluate(z, beta)
    p = torch.randn_like(z)
    h0 = a0 + beta * b0 - 0.5 * (p * p).sum(-1)
    zn, pn = z, p + 0.5 * eps * grad
    for i in range(leapfrog):
        zn = zn + eps * pn
        a, b, grad = target.evaluate(zn, beta)
        pn = pn + (eps if i < leapfrog - 1 else 0.5 * eps) * grad
    log_accept = torch.nan_to_num(a + beta * b - 0.5 * (pn * pn).sum(-1) - h0, nan=-math.inf)
    prob = torch.exp(log_accept.clamp(max=0.0))
    accept = torch.rand_like(prob) < prob
    z = torch.where(accept.unsqueeze(-1), zn, z)
    b = torch.where(accept, b, b0)
    return z, b, prob


@dataclass
class Refined:
    """The chain's last state: ``values`` per latent site (the ``particles`` layout, one chain), the mean
    acceptance probability over the transitions and examples."""

    values: dict[str, torch.Tensor]
    acceptance: float
    z: torch.Tensor


def refine(pair: Any, x: torch.Tensor, steps: int, step_size: float, leapfrog: int,
           start: torch.Tensor | None = None, chains: int = 1, inputs: tuple[torch.Tensor, ...] = ()) -> Refined:
    """``steps`` HMC transitions targeting p(z | x) ∝ p(x, z) per example, started at a draw of the guide
    (or at ``start``, shaped (chains, B, D)); the step size stays fixed along the chain."""
    target = LatentTarget(pair, x, chains, base="prior", start="guide", what="MCMC inside training", inputs=inputs)
    z = target.z0 if start is None else start.detach()
    rates = []
    for _ in range(steps):
        z, _, prob = hmc_step(target, z, 1.0, step_size, leapfrog)
        rates.append(prob.mean())
    acceptance = float(torch.stack(rates).mean()) if rates else float("nan")
    return Refined(target.unflatten(z), acceptance, z)


def adapt_step_size(step_size: float, acceptance: float, target_accept: float) -> float:
    """The next minibatch's step size: ε·exp(rate − target), kept in [1e-4, 1]."""
    if not math.isfinite(acceptance):
        return step_size
    return min(1.0, max(1e-4, step_size * math.exp(acceptance - target_accept)))


def check_pair(pair: Any, x: torch.Tensor, inputs: tuple[torch.Tensor, ...] = ()) -> None:
    """Raise :class:`UserError` unless HMC can move the pair's latents (real-valued, inside the data plate)."""
    with torch.no_grad():
        LatentTarget(pair, x[:2], 1, base="prior", start="guide", what="MCMC inside training",
                     inputs=tuple(c[:2] for c in inputs))


def split_gradients(params: list[torch.Tensor], guide_loss: torch.Tensor, model_loss: torch.Tensor) -> None:
    """Set ``.grad`` of every parameter: from ``model_loss`` (−log p(x, z_T), z_T fixed) where the parameter
    enters it — the model's — and from ``guide_loss`` (the negative ELBO) for the rest — the guide's."""
    from_guide = torch.autograd.grad(guide_loss, params, allow_unused=True, retain_graph=False)
    from_model = torch.autograd.grad(model_loss, params, allow_unused=True)
    for p, g_guide, g_model in zip(params, from_guide, from_model):
        p.grad = g_model if g_model is not None else g_guide
