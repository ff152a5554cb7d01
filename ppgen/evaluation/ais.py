r"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) for log p(x).

AIS (Neal, 2001), as Wu et al. (2017) apply it to decoder-based models: for one x, anneal
from a normalized initial density π_0(z) to the unnormalized posterior p(x, z) along the
geometric path

    f_β(z) = π_0(z)^{1−β} p(x, z)^β,     0 = β_0 < β_1 < ... < β_K < β_{K+1} = 1,

with π_0 the prior p(z) (then f_β = p(z) p(x | z)^β) or the guide q(z | x). Starting from
z ~ π_0 and moving z by one HMC transition that leaves f_{β_t} invariant at each of the K
intermediate distributions, the weights

    log w = Σ_{t=1}^{K+1} log f_{β_t}(z_{t−1}) − log f_{β_{t−1}}(z_{t−1})

satisfy E[w] = p(x), so log((1/C) Σ_c w_c) over C chains is a stochastic lower bound on
log p(x) that becomes exact as K grows. The reverse chain (BDMC, Grosse, Ghahramani &
Adams, 2015) starts from an exact posterior sample — available for data simulated from
the model, (x, z) ~ p(x, z) — and anneals from β = 1 to 0; its weights have E[w] =
1/p(x), so −log((1/C) Σ_c w_c) is a stochastic *upper* bound. The two sandwich log p(x)
on simulated data and the gap shows how long the schedule must be (:func:`bdmc`; the reverse chain alone,
from any exact posterior draws: :func:`reverse_ais`).

A decoder without a density of its own — a GAN's generator, x = G(z) — gets one from a Gaussian
observation model N(x; G(z), σ² I) (:class:`ppgen.models.observation.GaussianObservation`), σ fitted on
held-out data by :func:`fit_sigma`, and is evaluated on dequantized grey levels (:func:`dequantize`), as
Wu et al. (2017) compare GANs, GMMNs and VAEs on continuous MNIST.

HMC (Neal, 2011; the kernel is :mod:`ppgen.inference.hmc`, shared with MCMC inside training):
unit mass, ``leapfrog`` steps, one transition per intermediate
distribution. The step size is one per point, adapted as Wu et al. do (×1.02 when the
acceptance rate exceeds ``target_accept``, ×0.98 otherwise) — but from ``tune`` extra
chains per point that carry no weight. Adapting each chain from its own acceptance makes
the next kernel depend on the chain's state and biases AIS upward (measured on PPCA:
+0.13 nats at 500 steps, 2.6 standard errors); with separate tuning chains every weighted
chain sees kernels independent of its own path, so E[w] = p(x) holds exactly. The default
β spacing is Grosse et al.'s sigmoid schedule.

Everything is batched: C chains × B points move together as a (C, B, D) tensor, and the
log densities come from the pair's own sample sites (the model conditioned on the latent
values inside a ``particles`` plate, reduced per example by :mod:`ppgen.sites` as the IWAE
estimator is: plates nested in the data plate summed; a global latent is refused, since
an annealing path per example cannot share it), so AIS works for every
pair whose latents are real-valued and whose likelihood can be evaluated — VAEs, the
layered families, PPCA, a GAN generator with a Gaussian observation model.

Discrete latents marked for enumeration (``infer={"enumerate": "parallel"}``) are summed out of the path exactly
and never moved: with e those sites and z the continuous latents, f_β(z) = π_0(z)^{1−β} p(x, z)^β with
p(x, z) = Σ_e p(x, e, z) and, for the prior path, π_0(z) = Σ_e p(e, z) (for the guide path the guide's
marginal Σ_e q(e, z | x)), so HMC runs on z alone and E[w] = p(x) still holds
(:meth:`ppgen.inference.hmc.LatentTarget._summed_parts`).

Written by hand, in torch: neither Pyro nor NumPyro ships AIS (Pyro's HMC is a single
chain with one step size; NumPyro has no annealing), and torch runs any pair directly,
including networks that do not lower to JAX; the per-step Pyro trace costs about a
millisecond, small beside the decoder on MNIST-sized batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ppgen.errors import UserError
from ppgen.inference.hmc import LatentTarget, hmc_step, is_latent
from ppgen.models.arguments import check_estimator_args, check_pair
from ppgen.progress import progress

SCHEDULES = ("sigmoid", "linear")


@dataclass
class AISResult:
    """Per-point AIS estimates: ``log_px`` (B,), its standard error ``se`` (B,), raw ``log_w`` (C, B)."""

    log_px: torch.Tensor
    se: torch.Tensor
    log_w: torch.Tensor
    acceptance: float
    steps: int

    @property
    def mean(self) -> float:
        return float(self.log_px.mean())

    @property
    def mean_se(self) -> float:
        """MC standard error of the mean over points (given the points)."""
        return float(self.se.pow(2).sum().sqrt() / len(self.se))


@dataclass
class BDMCResult:
    """Forward (lower) and reverse (upper) AIS on data simulated from the model."""

    x: torch.Tensor
    lower: AISResult
    upper: AISResult

    @property
    def gap(self) -> float:
        """Mean upper − lower bound over the simulated points, in nats."""
        return self.upper.mean - self.lower.mean


def schedule(steps: int, kind: str = "sigmoid", delta: float = 4.0) -> torch.Tensor:
    """β_0 = 0, the ``steps`` intermediate β's, β_{K+1} = 1 (float64, increasing)."""
    if steps < 2:
        raise UserError(f"AIS needs at least 2 intermediate distributions, got {steps}; use e.g. --ais 1000")
    t = torch.linspace(0.0, 1.0, steps + 2, dtype=torch.float64)
    if kind == "linear":
        return t
    if kind == "sigmoid":
        s = torch.sigmoid(delta * (2 * t - 1))
        return (s - s[0]) / (s[-1] - s[0])
    raise UserError(f"unknown AIS schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")


def _anneal(target: LatentTarget, z, betas: torch.Tensor, step_size: float, leapfrog: int, target_accept: float,
            tune: int, report=None):
    """Run the chains along ``betas`` (increasing: forward; decreasing: reverse); log w of every chain.

    The step size is one per point, adapted from the acceptance of the last ``tune`` chains
    only: those chains carry no weight, so the kernels the weighted chains see never depend
    on their own states and the estimate stays unbiased.
    """
    log_w = torch.zeros(target.shape, dtype=torch.float64, device=z.device)
    eps = torch.full((1, target.shape[1], 1), step_size, device=z.device)
    with torch.no_grad():
        _, b = target.parts(z)
    accepted = []
    for t in range(1, len(betas)):
        if t > 1:
            z, b, prob = hmc_step(target, z, float(betas[t - 1]), eps, leapfrog)
            accepted.append(float(prob.mean()))
            if tune:
                rate = prob[-tune:].mean(0)
                eps = (eps * torch.where(rate > target_accept, 1.02, 0.98)[None, :, None]).clamp(1e-4, 1.0)
        log_w = log_w + (betas[t] - betas[t - 1]) * b.double()
        if report is not None:
            report.update(1)
    return log_w[: target.shape[0] - tune], (sum(accepted) / len(accepted) if accepted else float("nan"))


def _target(pair, x: torch.Tensor, chains: int, init: str, inputs: tuple[torch.Tensor, ...] = ()) -> LatentTarget:
    if init not in ("prior", "guide"):
        raise UserError(f"AIS init must be 'prior' or 'guide', got {init!r}")
    from ppgen.evaluation.likelihood import refuse_global_latents

    refuse_global_latents(pair, x, "AIS", inputs)
    return LatentTarget(pair, x, chains, base=init, what="AIS", inputs=inputs)


def _summarize(log_w: torch.Tensor, sign: float, acceptance: float, steps: int) -> AISResult:
    c = log_w.shape[0]
    log_mean = torch.logsumexp(log_w, 0) - math.log(c)
    w = torch.exp(log_w - log_w.max(0).values)  # delta method: se(log mean w) = sd(w) / (√C mean w)
    se = w.std(0, unbiased=True) / (math.sqrt(c) * w.mean(0)) if c > 1 else torch.full_like(log_mean, math.nan)
    return AISResult(log_px=(sign * log_mean).float(), se=se.float(), log_w=log_w.float(), acceptance=acceptance,
                     steps=steps)


def _check(steps: int, chains: int, leapfrog: int, tune: int) -> None:
    if steps < 2:
        raise UserError(f"AIS needs at least 2 intermediate distributions, got {steps}; use e.g. --ais 1000")
    if chains < 1 or leapfrog < 1 or tune < 0:
        raise UserError("AIS needs chains >= 1, leapfrog >= 1 and tune >= 0")


def _chunk_size(pair, chains: int, budget: int) -> int:
    return max(1, budget // (chains * math.prod(pair.x_shape)))


def ais(pair, x: torch.Tensor, steps: int = 1000, chains: int = 16, leapfrog: int = 10, step_size: float = 0.1,
        init: str = "prior", schedule_kind: str = "sigmoid", target_accept: float = 0.65, tune: int = 2,
        seed: int | None = 0, budget: int = 4_000_000, inputs: tuple[torch.Tensor, ...] = ()) -> AISResult:
    """AIS estimate of log p(x) per example with ``steps`` intermediate distributions and ``chains`` chains;
    of log p(x | inputs) for a pair with input columns (``inputs``, one row per example: the path runs with them
    fixed).

    Points are processed in chunks of at most ``budget`` pixels × chains. ``tune`` extra
    chains per point adapt the step size and carry no weight (``tune=0``: fixed step size).
    A stochastic lower bound on log p(x) (Jensen), exact as ``steps`` → ∞.
    """
    x = check_estimator_args(pair, x, "ppgen.evaluation.ais")
    _check(steps, chains, leapfrog, tune)
    betas = schedule(steps, schedule_kind)
    results = []
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        if seed is not None:
            torch.manual_seed(seed)
        size = _chunk_size(pair, chains + tune, budget)
        starts = range(0, x.shape[0], size)
        report = progress(len(starts) * (len(betas) - 1), f"AIS ({x.shape[0]} points, {steps} steps)")
        for start in starts:
            target = _target(pair, x[start:start + size], chains + tune, init,
                             tuple(c[start:start + size] for c in inputs))
            log_w, acc = _anneal(target, target.z0, betas, step_size, leapfrog, target_accept, tune, report)
            results.append((log_w, acc))
        report.close()
    log_w = torch.cat([r[0] for r in results], 1)
    return _summarize(log_w, 1.0, sum(r[1] for r in results) / len(results), steps)


def simulate(pair, n: int, seed: int | None = 0, inputs: tuple[torch.Tensor, ...] = ()) -> tuple[torch.Tensor, dict]:
    """(x, z) ~ p(x, z): ``n`` joint draws from the model (the observed site sampled, not conditioned); given the
    first ``n`` rows of ``inputs`` for a pair with input columns."""
    if any(len(c) < n for c in inputs):
        raise UserError(f"BDMC simulates {n} points and needs {n} rows of every input column; ask for fewer points")
    inputs = tuple(c[:n] for c in inputs)
    device = next(pair.parameters()).device
    template = torch.zeros((n, *pair.x_shape), device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        with pyro.validation_enabled(False):
            conditioned = poutine.trace(pair.model).get_trace(template, *inputs)
            observed = [name for name, s in conditioned.nodes.items()
                        if s["type"] == "sample" and s["is_observed"] and not site_is_subsample(s)]
            if len(observed) != 1:
                raise UserError("BDMC simulates data from the model and needs exactly one observed site")
            trace = poutine.trace(poutine.uncondition(pair.model)).get_trace(template, *inputs)
    latents = {name: s["value"] for name, s in trace.nodes.items() if is_latent(s) and name != observed[0]}
    return trace.nodes[observed[0]]["value"].detach(), latents


def bdmc(pair, n: int = 100, steps: int = 1000, chains: int = 16, leapfrog: int = 10, step_size: float = 0.1,
         init: str = "prior", schedule_kind: str = "sigmoid", target_accept: float = 0.65, tune: int = 2,
         seed: int = 0, inputs: tuple[torch.Tensor, ...] = ()) -> BDMCResult:
    """Bidirectional Monte Carlo on ``n`` points simulated from the model: lower ≤ log p(x) ≤ upper (given the
    first ``n`` rows of ``inputs`` for a pair with input columns).

    The forward chain is :func:`ais`; the reverse chain starts every chain at the exact
    posterior sample that generated x and anneals β from 1 to 0.
    """
    check_pair(pair, "ppgen.evaluation.bdmc")
    _check(steps, chains, leapfrog, tune)
    x, latents = simulate(pair, n, seed, inputs)
    inputs = tuple(c[:n] for c in inputs)
    lower = ais(pair, x, steps, chains, leapfrog, step_size, init, schedule_kind, target_accept, tune, seed=seed + 1,
                inputs=inputs)
    upper = reverse_ais(pair, x, latents, steps, chains, leapfrog, step_size, init, schedule_kind, target_accept,
                        tune, seed=seed + 2, inputs=inputs, what="BDMC reverse chains")
    return BDMCResult(x=x, lower=lower, upper=upper)


def reverse_ais(pair, x: torch.Tensor, latents: dict[str, torch.Tensor], steps: int = 1000, chains: int = 16,
                leapfrog: int = 10, step_size: float = 0.1, init: str = "prior", schedule_kind: str = "sigmoid",
                target_accept: float = 0.65, tune: int = 2, seed: int | None = 0,
                inputs: tuple[torch.Tensor, ...] = (), what: str = "reverse AIS") -> AISResult:
    r"""Reverse AIS (Grosse et al., 2015): every chain starts at ``latents``, an exact draw from p(z | x) (for data
    simulated from the model, the z that generated x: :func:`simulate`), and β runs from 1 down to 0. The weights
    have E[w] = 1/p(x), so ``log_px`` = −log((1/C) Σ_c w_c) is a stochastic *upper* bound on log p(x), exact as
    ``steps`` → ∞. ``latents`` maps each latent site to its values, one row per example of ``x``; ``what`` names
    the work on the progress line.
    """
    _check(steps, chains, leapfrog, tune)
    betas = schedule(steps, schedule_kind).flip(0)
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        if seed is not None:
            torch.manual_seed(seed)
        target = _target(pair, x, chains + tune, init, inputs)
        z = target.flatten({name: v.expand(target.shape + v.shape[1:]) for name, v in latents.items()})
        report = progress(len(betas) - 1, f"{what} ({x.shape[0]} points, {steps} steps)")
        log_w, acc = _anneal(target, z, betas, step_size, leapfrog, target_accept, tune, report)
        report.close()
    return _summarize(log_w, -1.0, acc, steps)


def check_steps(steps: int) -> None:
    """Raise :class:`UserError` unless ``steps`` intermediate distributions are enough for AIS (≥ 2)."""
    _check(steps, 1, 1, 0)


def summary(pair, x: torch.Tensor, steps: int, chains: int = 16, bdmc_points: int = 0, seed: int = 0,
            inputs: tuple[torch.Tensor, ...] = ()) -> dict:
    """The AIS rows of a likelihood table: mean log p(x), its MC error, bits/dim and, on request, BDMC."""
    check_steps(steps)
    if not pair.latent_sites:
        return {"ais_note": "no latent variables: the ELBO/IWAE value is the exact log p(x)"}
    result = ais(pair, x, steps=steps, chains=chains, seed=seed, inputs=inputs)
    out = {f"ais_{steps}": result.mean, f"ais_{steps}_se": result.mean_se, "ais_acceptance": result.acceptance,
           "ais_bits_per_dim": float((-result.log_px / (math.log(2) * math.prod(pair.x_shape))).mean())}
    if bdmc_points:
        both = bdmc(pair, n=bdmc_points, steps=steps, chains=chains, seed=seed, inputs=inputs)
        out.update(bdmc_points=bdmc_points, bdmc_lower=both.lower.mean, bdmc_upper=both.upper.mean, bdmc_gap=both.gap)
    return out


@dataclass
class SigmaFit:
    """σ of a Gaussian observation model fitted on held-out data: the grid, the AIS estimates along it, the pick."""

    sigma: float
    se_log_sigma: float
    grid: list[float]
    log_px: list[float]
    se: list[float]


def fit_sigma(pair, x: torch.Tensor, grid: list[float] | None = None, steps: int = 200, chains: int = 8,
              leapfrog: int = 10, seed: int = 0, inputs: tuple[torch.Tensor, ...] = (),
              widen: int = 8) -> SigmaFit:
    r"""σ maximizing the mean AIS estimate of log p_σ(x) over held-out ``x`` under N(x; E[x | z], σ² I)
    (:class:`ppgen.models.observation.GaussianObservation`), as Wu et al. (2017) choose it on a validation set.

    ``grid``: geometric, equally spaced in log σ (default std(x)·2^{−k/2}, k = 0..6). Every σ on it gets one AIS
    run with the same seed (common random numbers, so the curve is smooth in σ); while the best lies at an end
    the grid is extended by one point past it (at most ``widen`` times). The pick interpolates the best point
    and its two neighbours by the curve a Gaussian observation model follows once the posterior is concentrated,

        L(σ) = c − D' log σ − R / (2σ²)       (D' = the dimensions G does not explain, R = E‖x − G(z)‖²),

    exact for a linear-Gaussian generator up to its latent directions; its maximum σ*² = R / D' (clipped to the
    neighbours; where the three points do not fit such a maximum, the best grid point). ``se_log_sigma`` is the
    Monte Carlo standard error of log σ* by the delta method from the three estimates' standard errors (taken as
    independent: an overstatement, as the common random numbers correlate them positively). AIS's downward
    bias grows as σ shrinks (a sharper posterior), so a short schedule leans toward a larger σ.
    """
    from ppgen.models.observation import GaussianObservation, check_sigma

    if grid is None:
        scale = float(x.float().std())
        if not scale > 0:
            raise UserError("fitting sigma needs held-out examples that vary (their standard deviation is 0); give "
                            "--sigma a value")
        grid = [scale * 2 ** (-k / 2) for k in range(7)]
    grid = sorted(check_sigma(float(g)) for g in grid)
    if len(grid) < 3:
        raise UserError(f"fitting sigma needs a grid of at least 3 values, got {len(grid)}")
    ratio = grid[1] / grid[0]
    if any(abs(b / a - ratio) > 1e-6 * ratio for a, b in zip(grid, grid[1:])):
        raise UserError("the sigma grid must be geometric (a constant ratio between neighbours)")

    estimates: dict[float, AISResult] = {}

    def at(sigma: float) -> AISResult:
        if sigma not in estimates:
            estimates[sigma] = ais(GaussianObservation(pair, sigma), x, steps=steps, chains=chains,
                                   leapfrog=leapfrog, seed=seed, inputs=inputs)
        return estimates[sigma]

    for sigma in grid:
        at(sigma)
    for _ in range(widen):
        best = max(range(len(grid)), key=lambda i: at(grid[i]).mean)
        if best == 0:
            grid.insert(0, grid[0] / ratio)
        elif best == len(grid) - 1:
            grid.append(grid[-1] * ratio)
        else:
            break
        at(grid[0] if best == 0 else grid[-1])
    best = max(range(len(grid)), key=lambda i: at(grid[i]).mean)
    if best in (0, len(grid) - 1):
        raise UserError(f"the AIS estimate still rises at sigma={grid[best]:.3g}, the end of the grid; give a grid "
                        "that brackets its maximum, or --sigma a value")
    three = grid[best - 1:best + 2]
    values = [at(g).mean for g in three]
    ses = [at(g).mean_se for g in three]
    log_sigma = _peak(values, three)
    grads = []  # delta method: numerical partial derivatives of log σ* in the three estimates
    for j in range(3):
        bumped = list(values)
        bumped[j] += 1e-3
        grads.append((_peak(bumped, three) - log_sigma) / 1e-3)
    se = math.sqrt(sum((g * s) ** 2 for g, s in zip(grads, ses)))
    return SigmaFit(sigma=math.exp(log_sigma), se_log_sigma=se, grid=list(grid), log_px=[at(g).mean for g in grid],
                    se=[at(g).mean_se for g in grid])


def _peak(values: list[float], sigmas: list[float]) -> float:
    """log σ* of the curve c − D' log σ − R/(2σ²) through three (σ, L) points (see :func:`fit_sigma`), clipped to
    [σ_1, σ_3]; log σ_2 where the fitted curve has no maximum (D' ≤ 0 or R ≤ 0)."""
    basis = torch.tensor([[1.0, -math.log(s), -0.5 / s**2] for s in sigmas], dtype=torch.float64)
    c, d, r = torch.linalg.solve(basis, torch.tensor(values, dtype=torch.float64)).tolist()
    if d <= 0 or r <= 0:
        return math.log(sigmas[1])
    return min(math.log(sigmas[2]), max(math.log(sigmas[0]), 0.5 * math.log(r / d)))


#: the grids of grey levels k/L recognized, coarsest first: divisors of 256 (the MNIST pickle's k/256, the 8x8
#: digits' k/16) and of 255 (bytes divided by 255)
LEVELS = (2, 3, 4, 5, 8, 15, 16, 17, 32, 51, 64, 85, 128, 255, 256)


def quantization_levels(x: torch.Tensor) -> int | None:
    """The coarsest L in :data:`LEVELS` with every value of ``x`` equal to k/L for an integer k, else None."""
    for levels in LEVELS:
        scaled = x.double() * levels
        if bool(((scaled - scaled.round()).abs() < 1e-4).all()):
            return levels
    return None


def dequantize(x: torch.Tensor, levels: int, seed: int = 0) -> torch.Tensor:
    """Uniform dequantization (Uria et al., 2013; Theis et al., 2016): x + u/L with u ~ U[0, 1), one seeded draw.

    For grey levels k/L the result has a density on the cells [k/L, (k+1)/L), so the log density of a
    continuous model on it is a lower bound on the discrete model's log-probability plus D log L — and the
    figure Wu et al. (2017) report for continuous MNIST (their evaluation adds U(0, 1)/256 noise too).
    """
    g = torch.Generator().manual_seed(seed)
    return x + torch.rand(x.shape, generator=g, dtype=x.dtype).to(x.device) / levels
