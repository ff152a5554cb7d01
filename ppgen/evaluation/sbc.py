r"""Simulation-based calibration (Talts et al., 2018) of an amortized guide — and the rank statistics any
sampler's SBC uses (the NUTS tests share them).

For n = 1..N: draw (z_n, x_n) ~ p(z) p(x | z) from the model, then L draws z_n^(1..L) ~ q(z | x_n) from
the guide, and rank the truth among them per test quantity f (a coordinate of z, or a projection vᵀz):

    r_n = #{l : f(z_n^(l)) < f(z_n)}  ∈ {0, …, L}.

If q(z | x) is the exact posterior, z_n and the L draws are exchangeable given x_n, so r_n is uniform on
{0, …, L}; a χ² test on a histogram of the ranks gives a p-value. The shape says how q is wrong: a ∪
(ranks pile at 0 and L) is a q too narrow along f — what a mean-field guide fit by KL(q ‖ p) does along the
direction in which the true posterior is correlated (its variance is 1/Λ_ii, the conditional, not the
marginal, variance); a ∩ is a q too wide along f; a slope is a biased mean.

The model's parameters stay fixed (SBC of the guide for this model, not of the whole fit). Written with
NumPy/SciPy: ArviZ has no SBC, and SBC packages (``sbc`` in R, ``simuk``) do not take a Pyro guide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ppgen import sites
from ppgen.errors import UserError
from ppgen.evaluation.ais import simulate


def ranks(truth: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Rank of each true value among its draws: ``truth`` (N, m), ``draws`` (L, N, m) -> (N, m) in 0..L."""
    truth, draws = np.asarray(truth), np.asarray(draws)
    if draws.shape[1:] != truth.shape:
        raise UserError(f"SBC draws shaped {draws.shape} do not match the truth {truth.shape} as (L, N, m)")
    return (draws < truth[None]).sum(0)


def bin_probabilities(draws: int, bins: int) -> np.ndarray:
    """The probability of each of ``bins`` equal-width bins over the ranks 0..L under uniformity."""
    counts = np.histogram(np.arange(draws + 1), bins=bins, range=(0, draws + 1))[0]
    return counts / (draws + 1)


def histogram(ranks_: np.ndarray, draws: int, bins: int = 10) -> np.ndarray:
    """Counts of the ranks (N, m) in ``bins`` equal-width bins over 0..L: (bins, m)."""
    r = np.asarray(ranks_).reshape(len(ranks_), -1)
    return np.stack([np.histogram(r[:, j], bins=bins, range=(0, draws + 1))[0] for j in range(r.shape[1])], 1)


def uniformity_pvalues(ranks_: np.ndarray, draws: int, bins: int = 10) -> np.ndarray:
    """χ² p-value of uniform ranks per column of ``ranks_`` (N, m), the expected counts exact for 0..L."""
    from scipy import stats  # SciPy's statistics take ~0.7 s to import: loaded when a test is run

    counts = histogram(ranks_, draws, bins)
    expected = bin_probabilities(draws, bins)[:, None] * counts.sum(0, keepdims=True)
    return stats.chisquare(counts, expected, axis=0).pvalue


def outer_share(ranks_: np.ndarray, draws: int, tail: float = 0.1) -> tuple[np.ndarray, float, np.ndarray]:
    """(observed share of ranks in the lowest and highest ``tail`` of 0..L per column, its expectation under
    uniformity, its binomial standard error): above expectation is a ∪ (q too narrow), below a ∩ (too wide)."""
    r = np.asarray(ranks_).reshape(len(ranks_), -1)
    cut = int(np.floor(tail * (draws + 1)))
    outer = (r < cut) | (r > draws - cut)
    expected = 2 * cut / (draws + 1)
    return outer.mean(0), expected, np.full(r.shape[1], np.sqrt(expected * (1 - expected) / len(r)))


@dataclass
class SBCResult:
    """Ranks (N, m) of the true values of ``names`` among ``draws`` guide draws, and their χ² p-values."""

    ranks: np.ndarray
    names: list[str]
    draws: int
    bins: int
    pvalues: np.ndarray

    def outer_share(self, tail: float = 0.1) -> tuple[np.ndarray, float, np.ndarray]:
        return outer_share(self.ranks, self.draws, tail)

    def table(self) -> dict[str, float]:
        """{quantity: χ² p-value}."""
        return dict(zip(self.names, map(float, self.pvalues)))


def _flat_latents(values: dict[str, torch.Tensor], names: tuple[str, ...], lead: int) -> torch.Tensor:
    return torch.cat([values[name].reshape(values[name].shape[:lead] + (-1,)) for name in names], -1)


@torch.no_grad()
def guide_sbc(pair, n: int = 1000, draws: int = 99, directions: torch.Tensor | None = None, bins: int = 10,
              seed: int = 0, inputs: tuple[torch.Tensor, ...] = ()) -> SBCResult:
    """SBC of ``pair``'s guide: ``n`` (z, x) simulated from the model, ``draws`` guide draws per x; the test
    quantities are every coordinate of the flattened latents and, if given, the projections onto the columns
    of ``directions`` (D, m). A pair with input columns simulates x_i ~ p(x | z_i, inputs_i) and draws
    q(z | x_i, inputs_i) with the first ``n`` rows of ``inputs`` (one column per name in ``pair.inputs``)."""
    if not pair.has_guide:
        raise UserError(f"{pair.who} has no guide q(z|x) to calibrate")
    if n < bins or draws < 1:
        raise UserError(f"SBC needs at least {bins} simulations and 1 draw per simulation, got n={n}, draws={draws}")
    x, truth_values = simulate(pair, n, seed, inputs)
    inputs = tuple(c[:n] for c in inputs)
    latent = tuple(name for name in pair.latent_sites if name in truth_values)
    truth = _flat_latents(truth_values, latent, 1)  # (N, D)
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        torch.manual_seed(seed + 1)
        guide_tr, _ = sites.trace_pair(pair, x, draws, inputs)
    found = sites.sample_sites(guide_tr)
    placed = {name: sites.unplace(found[name]["value"], len(found[name]["fn"].event_shape), True) for name in latent}
    sample = _flat_latents(placed, latent, 2)  # (L, N, D)
    names = [f"{name}[{j}]" for name in latent for j in range(truth_values[name].reshape(n, -1).shape[1])]
    if directions is not None:
        v = torch.as_tensor(directions, dtype=truth.dtype, device=truth.device).reshape(truth.shape[-1], -1)
        truth, sample = torch.cat([truth, truth @ v], -1), torch.cat([sample, sample @ v], -1)
        names += [f"direction[{j}]" for j in range(v.shape[1])]
    r = ranks(truth.cpu().numpy(), sample.cpu().numpy())
    return SBCResult(r, names, draws, bins, uniformity_pvalues(r, draws, bins))
