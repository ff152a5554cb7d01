r"""Log-likelihood estimates per example: ELBO and the IWAE bound.

With z_k ~ q(z|x) and log weights log w_k = log p(x, z_k) − log q(z_k|x):

    ELBO     = E[log w]                                 ≤ log p(x)
    IWAE_K   = E[log (1/K) Σ_k w_k]   (Burda et al., 2016)

and ELBO = IWAE_1 ≤ IWAE_K ≤ IWAE_{K+1} → log p(x). Both are computed from
the pair's own sample sites: the guide is traced inside a vectorized
``particles`` plate and the model replayed on its draws, so the encoder runs
once per example and the decoder once per particle (:func:`ppgen.sites.log_weights`,
where plates nested in the data plate are summed per example and global sites are
attributed 1/N per example). IWAE with K > 1 is not linear in the weights, so a pair
with global latents raises there (its per-example IWAE would bound nothing); the ELBO
is linear, and its sum over examples is the joint ELBO. Work is chunked over examples
and particles so K = 1000 on 1,000 digits stays in memory.

Discrete sites marked for enumeration (``infer={"enumerate": "parallel"}``, a sequential mark alike) are summed
out exactly, not sampled (:func:`ppgen.sites.enumerated_log_weights`): with y drawn by the guide and c a site of
the model only, at each draw z_k ~ q(z | x, y),

    ELBO   = (1/K) Σ_k Σ_y q(y|x) [ log Σ_c p(x, y, c, z_k) − log q(y|x) − log q(z_k|x, y) ]
    IWAE_K = log (1/K) Σ_k Σ_{y,c} p(x, y, c, z_k) / q(z_k | x, y)

(each inner sum Σ_{y,c} p/q has expectation p(x), so IWAE_K ≤ log p(x) and it rises to it with K; with no y,
IWAE_1 is the ELBO, with y IWAE_1 ≥ the ELBO). A pair whose only latents are enumerated gets log p(x) itself.

Engines (``engine=``). ``"torch"`` is the path above: Pyro traces, chunk after chunk, under ``torch.no_grad``.
``"jax"`` is the same estimate compiled (:mod:`ppgen.evaluation.compiled`): the pair's model and guide on NumPyro
with its networks lowered, one ``jax.jit`` function mapping over the same chunks of examples and particles (the
same ``budget``), log-sum-exp pooled in float32 as above; it takes a pair that lowers and has no enumerated
sites, no objective or closed-form ELBO of its own, no global or mutable sites
(:func:`ppgen.evaluation.compiled.why_not`). ``"auto"`` (the default) compiles where the pair can take it and
the job is large enough that compiling pays: examples × draws × values per example ≥ :data:`AUTO_MIN_WORK`
(IWAE-1000 on 1,000 MNIST digits is 7.8 × 10⁸ and compiles; one ELBO draw on 10,000 digits, 7.8 × 10⁶, does not), else it runs on torch.
The environment variable ``PPGEN_ESTIMATOR_ENGINE`` (``auto``, ``jax`` or ``torch``) replaces the default
``"auto"``, so ``PPGEN_ESTIMATOR_ENGINE=torch`` runs every estimate on torch for comparison; an ``engine`` given
in the call wins. Both paths draw from torch's generator (the JAX key is drawn from it), so ``torch.manual_seed``
makes either reproducible, but they draw different noise: their estimates agree in distribution, and their log
weights agree at the same draws (``tests/test_compiled_estimators.py`` feeds the compiled path's draws to the
torch path's trace).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import torch

from ppgen.errors import UserError
from ppgen.models.arguments import check_estimator_args
from ppgen.ppl import discrete_sites
from ppgen.progress import heartbeat, track
from ppgen.sites import enumerated_log_weights, log_weights

if TYPE_CHECKING:  # annotations only
    from ppgen.data import Dataset
    from ppgen.inference.fit import Fit

__all__ = ["bits_per_dim", "elbo", "iwae", "global_latents", "log_weights", "refuse_global_latents"]

#: the estimators' engines: ``auto`` picks ``jax`` (compiled) or ``torch`` (see the module docs)
ENGINES = ("auto", "jax", "torch")
#: names the default engine in place of ``auto`` (``torch`` forces the torch path for comparison)
ENGINE_VARIABLE = "PPGEN_ESTIMATOR_ENGINE"
#: examples × draws × values per example from which ``auto`` compiles: tracing and compiling cost 1-5 s on a
#: loaded 2-core machine (0.3-0.7 s from a warm compilation cache), the torch path ~70 ns per value and the
#: compiled one about half that (benchmarks/iwae_speed.py), so compiling pays from ~1.5 × 10⁸ values cold
AUTO_MIN_WORK = 200_000_000


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _budget(pair, k: int, budget: int) -> tuple[int, int]:
    per_particle = math.prod(pair.x_shape)
    rows = max(1, budget // per_particle)
    k_chunk = min(k, rows)
    return k_chunk, max(1, rows // k_chunk)


def enumerates(pair, x: torch.Tensor, inputs: tuple[torch.Tensor, ...] = ()) -> bool:
    """Whether the pair has discrete sites marked for enumeration (the estimators then sum them out)."""
    return pair.has_guide and bool(discrete_sites(pair, x, *inputs).enumerated)


def _weights_fn(pair, x: torch.Tensor, inputs: tuple[torch.Tensor, ...], which: int):
    """``log_weights``, or for a pair with enumerated sites the IWAE (``which=0``) or ELBO (1) terms of
    :func:`ppgen.sites.enumerated_log_weights`."""
    if not enumerates(pair, x, inputs):
        return log_weights

    def summed(pair, x, k, globals="split", inputs=()):
        return enumerated_log_weights(pair, x, k, globals, inputs)[which]

    return summed


def choose_engine(pair, x: torch.Tensor, draws: int, inputs: tuple[torch.Tensor, ...] = (),
                  engine: str | None = "auto", call: str = "ppgen.evaluation") -> str:
    """``"jax"`` or ``"torch"``: the engine an estimate of ``draws`` draws per example runs on (module docs).

    ``engine=None`` or ``"auto"`` reads ``PPGEN_ESTIMATOR_ENGINE`` first; ``"jax"`` where the pair cannot
    compile is a :class:`UserError` saying why.
    """
    if engine is None or engine == "auto":
        engine = os.environ.get(ENGINE_VARIABLE, "").strip().lower() or "auto"
        where = f"{ENGINE_VARIABLE}={engine}"
    else:
        where = f"engine={engine!r}"
    if engine not in ENGINES:
        raise UserError(f"{call}: {where} is not an estimator engine; use one of {', '.join(ENGINES)}")
    if engine == "torch":
        return "torch"
    from ppgen.evaluation import compiled

    if engine == "jax":
        compiled.require(pair, x, inputs, call)
        return "jax"
    work = x.shape[0] * draws * math.prod(pair.x_shape)
    return "jax" if work >= AUTO_MIN_WORK and compiled.why_not(pair, x, inputs) is None else "torch"


def _compiled(pair, x: torch.Tensor, which: str, k: int, budget: int, inputs: tuple[torch.Tensor, ...]):
    from ppgen.evaluation import compiled

    k_chunk, b_chunk = _budget(pair, k, budget)
    what = f"IWAE-{k}" if which == "iwae" else f"ELBO ({k} draws)"
    with heartbeat(f"{what} on {x.shape[0]} examples, compiled"):  # one call: no steps to count
        return compiled.estimate(pair, x, which, k, k_chunk, b_chunk, inputs)


def iwae(pair, x: torch.Tensor, k: int = 1000, budget: int = 8_000_000,
         inputs: tuple[torch.Tensor, ...] = (), engine: str = "auto") -> torch.Tensor:
    """IWAE_k estimate of log p(x) per example (a lower bound that tightens with k); for a pair with input columns
    (``inputs``, one row per example), of log p(x | inputs).

    A pair with a point-mass guide is evaluated with one draw: its IWAE_k equals its ELBO exactly for
    every k (:meth:`~ppgen.models.base.GenerativeModel.guide_draws`). ``engine``: ``"auto"``, ``"jax"``
    (compiled) or ``"torch"`` (module docs).
    """
    x = check_estimator_args(pair, x, "ppgen.evaluation.iwae")
    if k < 1:
        raise ValueError("k must be at least 1")
    k = pair.guide_draws(k)
    if k > 1:
        refuse_global_latents(pair, x, "IWAE with k > 1", inputs)
    if choose_engine(pair, x, k, inputs, engine, "ppgen.evaluation.iwae") == "jax":
        return _compiled(pair, x, "iwae", k, budget, inputs)
    k_chunk, b_chunk = _budget(pair, k, budget)
    options = {} if k == 1 else {"globals": "raise"}  # IWAE_1 is the ELBO: linear, global sites split 1/N
    weights_of = _weights_fn(pair, x, inputs, 0)
    out = []
    for rows in track(list(_chunks(x.shape[0], b_chunk)), f"IWAE-{k} on {x.shape[0]} examples"):
        parts = [torch.logsumexp(weights_of(pair, x[rows], len(range(*ks.indices(k))), **options,
                                             inputs=tuple(c[rows] for c in inputs)), 0)
                 for ks in _chunks(k, k_chunk)]
        out.append(torch.logsumexp(torch.stack(parts), 0) - math.log(k))
    return torch.cat(out)


def global_latents(pair, x: torch.Tensor, inputs: tuple[torch.Tensor, ...] = ()) -> list[str]:
    """The model's latent sites outside the data plate (shared by every example), from one trace at ``x[:1]``."""
    from pyro import poutine

    from ppgen import sites

    devices = [x.device] if x.is_cuda else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):  # a look at the sites leaves the draws as they were
        trace = poutine.trace(pair.model).get_trace(x[:1], *(c[:1] for c in inputs))
    return [n for n in sites.global_sites(trace, pair.data_plate) if not trace.nodes[n]["is_observed"]]


def refuse_global_latents(pair, x: torch.Tensor, what: str, inputs: tuple[torch.Tensor, ...] = ()) -> None:
    """Raise :class:`UserError` (one line, what to use instead) when the model has a latent outside the data plate.

    A global latent w is shared by every example, so p(x_n) = ∫ p(x_n | w) p(w) dw per example is not what
    the model's posterior couples (p(x_{1:N}) ≠ Π_n p(x_n)): a per-example importance weight or annealing path
    does not exist. The ELBO is linear in the per-example terms (global terms split 1/N), so its sum over
    examples is the joint ELBO; the posterior of w is checked against whole-model NUTS.
    """
    latent = global_latents(pair, x, inputs)
    if latent:
        raise UserError(f"{what} estimates log p(x) per example, but latent {', '.join(map(repr, latent))} is global "
                        f"(outside the data plate {pair.data_plate!r}, shared by every example): use the ELBO "
                        "(ppgen.evaluation.elbo; summed over examples it is the joint ELBO) and whole-model NUTS "
                        "beside the guide (ppgen.evaluation.amortization.compare_global)")


def elbo(pair, x: torch.Tensor, num_samples: int = 1, budget: int = 8_000_000,
         inputs: tuple[torch.Tensor, ...] = (), engine: str = "auto") -> torch.Tensor:
    """Monte Carlo ELBO per example, averaged over ``num_samples`` draws of q (one for a point-mass q: exact); for a
    pair that declares ``closed_form_elbo`` (DDPM's bound, every KL in closed form), the mean of that many of its
    estimates. ``inputs``: the pair's input columns beside ``x`` (one row per example). ``engine``: ``"auto"``,
    ``"jax"`` (compiled) or ``"torch"`` (module docs)."""
    x = check_estimator_args(pair, x, "ppgen.evaluation.elbo")
    if pair.has_closed_form_elbo:
        rows = max(1, budget // 8 // math.prod(pair.x_shape))  # a denoiser call holds a few such batches
        with torch.no_grad():
            return torch.cat([torch.stack([pair.closed_form_elbo(x[r], *(c[r] for c in inputs))
                                           for _ in range(num_samples)]).mean(0)
                              for r in _chunks(x.shape[0], rows)])
    num_samples = pair.guide_draws(num_samples)
    if choose_engine(pair, x, num_samples, inputs, engine, "ppgen.evaluation.elbo") == "jax":
        return _compiled(pair, x, "elbo", num_samples, budget, inputs)
    k_chunk, b_chunk = _budget(pair, num_samples, budget)
    weights_of = _weights_fn(pair, x, inputs, 1)
    out = []
    for rows in _chunks(x.shape[0], b_chunk):
        sums = [weights_of(pair, x[rows], len(range(*ks.indices(num_samples))),
                            inputs=tuple(c[rows] for c in inputs)).sum(0)
                for ks in _chunks(num_samples, k_chunk)]
        out.append(torch.stack(sums).sum(0) / num_samples)
    return torch.cat(out)


def bits_per_dim(log_px: torch.Tensor, x_shape) -> torch.Tensor:
    """−log₂ p(x) / D."""
    return -log_px / (math.log(2) * math.prod(x_shape))


def validation_callback(data: Dataset, seed: int = 0, engine: str | None = None):
    """Held-out ELBO per example on the validation split, after every epoch (one seeded draw).

    ``engine`` (None: chosen per run) is the estimator's: a run that trains on the JAX engine validates
    compiled where the pair compiles and its validation work over all epochs (examples × values per example ×
    epochs) reaches :data:`AUTO_MIN_WORK` — compiled once for the run, the weights passed in each epoch — and on
    torch otherwise; a torch-trained run on torch; each unless ``PPGEN_ESTIMATOR_ENGINE`` says otherwise.
    """
    def callback(fit: Fit) -> dict:
        if len(data.val) == 0:
            return {}
        fit.pair.eval()
        device = next(fit.pair.parameters()).device
        inputs = tuple(c.to(device) for c in data.inputs("val", fit.pair.inputs))
        chosen = engine or _validation_engine(fit, data.val, inputs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            value = float(elbo(fit.pair, data.val.to(device), inputs=inputs, engine=chosen).mean())
        fit.pair.train()
        return {"val_elbo": value}

    return callback


def _validation_engine(fit: Fit, x: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> str:
    """The validation ELBO's engine: ``PPGEN_ESTIMATOR_ENGINE`` where set; ``"torch"`` after the torch engine;
    after the JAX engine ``"jax"`` where the pair compiles and the run's validation work (examples × values per
    example × epochs: it compiles once for them all) reaches :data:`AUTO_MIN_WORK`, else ``"torch"``."""
    chosen = os.environ.get(ENGINE_VARIABLE, "").strip().lower()
    options = fit.options or {}
    if chosen or options.get("engine") != "jax":
        return chosen or "torch"
    work = x.shape[0] * math.prod(fit.pair.x_shape) * max(1, int(options.get("epochs") or 1))
    if work < AUTO_MIN_WORK:
        return "torch"
    from ppgen.evaluation import compiled

    return "jax" if compiled.why_not(fit.pair, x, inputs) is None else "torch"
