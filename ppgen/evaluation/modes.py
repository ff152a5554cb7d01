r"""Mode coverage on Gaussian mixtures: the VEEGAN / PacGAN protocol.

For the ring of 8 and the grid of 25 (:data:`ppgen.data.sources.MIXTURES`) and
n = 2,500 generated points (Srivastava et al., 2017; Lin et al., 2018):

* each point is assigned to its nearest mode centre;
* it is *high quality* when it lies within ``threshold`` = 3 standard deviations of
  that centre (‖x − μ_k‖ ≤ 3σ);
* a mode is *captured* when at least ``min_count`` (1) high-quality points fall on it;
* ``reverse_kl`` = KL(q ‖ p) = Σ_k q_k log(q_k / p_k) between the histogram q of points over
  their nearest modes (all points) and the true uniform weights p_k = 1/K (PacGAN's
  column): 0 for a perfect histogram, log K for a single mode.

Nothing in the field's libraries computes this protocol, hence the dozen lines here.
:func:`summarize` averages reports over seeds with standard errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ppgen.errors import UserError

N_SAMPLES = 2_500


def mixture_spec(name: str) -> tuple[np.ndarray, float]:
    """Mode centres and component standard deviation of a bundled mixture ("ring8" | "grid25")."""
    from ppgen.data.sources import MIXTURES

    if name not in MIXTURES:
        raise UserError(f"no mode protocol for {name!r}; choose one of {', '.join(MIXTURES)}")
    make, std = MIXTURES[name]
    return make(), std


def mode_report(samples, modes=None, std: float | None = None, *, mixture: str | None = None,
                threshold: float = 3.0, min_count: int = 1) -> dict:
    """Modes captured, share of high-quality samples and reverse KL of the mode histogram.

    Give ``mixture="ring8" | "grid25"`` or the mode centres ``modes`` (K, D) and ``std``.
    """
    if mixture is not None:
        modes, std = mixture_spec(mixture)
    if modes is None or std is None:
        raise UserError("give mixture='ring8' or 'grid25', or the mode centres and their standard deviation")
    x = np.asarray(torch.as_tensor(samples).detach().cpu().double())
    mu = np.asarray(modes, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != mu.shape[1]:
        raise UserError(f"samples must be shaped (N, {mu.shape[1]}) like the mode centres, got {x.shape}")
    if not np.isfinite(x).all():
        raise UserError("samples hold NaN or infinite values; the generator diverged")
    dist = np.sqrt(((x[:, None, :] - mu[None, :, :]) ** 2).sum(-1))
    nearest = dist.argmin(1)
    good = dist[np.arange(len(x)), nearest] <= threshold * std
    k = len(mu)
    hq_counts = np.bincount(nearest[good], minlength=k)
    q = np.bincount(nearest, minlength=k) / len(x)
    nz = q > 0
    return {
        "modes": int((hq_counts >= min_count).sum()),
        "n_modes": k,
        "high_quality": float(good.mean()),
        "reverse_kl": float((q[nz] * np.log(q[nz] * k)).sum()),
        "counts": hq_counts.tolist(),
    }


def summarize(reports: Sequence[dict]) -> dict:
    """Mean and standard error (over seeds) of modes, high_quality and reverse_kl."""
    out: dict = {"seeds": len(reports)}
    for key in ("modes", "high_quality", "reverse_kl"):
        v = np.array([r[key] for r in reports], dtype=float)
        out[key] = float(v.mean())
        out[key + "_se"] = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return out


def evaluate_pair(pair, mixture: str, n: int = N_SAMPLES, seed: int = 0, **kwargs) -> dict:
    """The report for ``n`` draws of ``pair.generate`` (seeded)."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        samples = pair.generate(n)
    return mode_report(samples.reshape(n, -1), mixture=mixture, **kwargs)
