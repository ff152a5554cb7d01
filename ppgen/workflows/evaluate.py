"""``ppgen evaluate``: held-out ELBO, IWAE-K and AIS log-likelihoods, collapse figures, topics, sample quality."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ppgen import evaluation, runs
from ppgen.errors import UserError
from ppgen.evaluation.samples import METRICS
from ppgen.workflows.common import has_density, metric_columns, mode_metrics, run_data, split_inputs
from ppgen.workflows.topics import topic_metrics


def evaluate_run(run_dir: Path, iwae_k: int = 1000, split: str = "test", limit: int | None = None, seed: int = 0,
                 elbo_samples: int = 10, ais_steps: int | None = None, ais_chains: int = 16,
                 bdmc_points: int = 0, sigma: float | str | None = None, sigma_points: int = 100) -> dict:
    """Held-out ELBO, IWAE-K log-likelihood, KL per latent dimension, active units and I(x; z).

    With ``ais_steps`` also AIS with that many intermediate distributions (and, with
    ``bdmc_points``, BDMC's lower/upper bounds on as many points simulated from the model).
    With ``sigma`` every figure is of the pair under a Gaussian observation model N(x; E[x | z], σ² I)
    (:class:`ppgen.models.observation.GaussianObservation`, Wu et al. 2017: the likelihood of a GAN's generator, or
    of a VAE's decoder mean, on continuous data), ``sigma="fit"``: σ maximizing the AIS estimate on the first
    ``sigma_points`` validation examples (:func:`ppgen.evaluation.ais.fit_sigma`). Data on a grid of grey levels
    k/L are dequantized first (x + u/L, one seeded draw), as Wu et al. evaluate continuous MNIST.
    A pair with topics gets perplexity, NPMI and diversity instead of the per-dimension KL; a pair's own
    figures (``family_metrics``) come under ``family_metrics``. A pair with input columns (``pair.inputs``) is
    evaluated with the split's columns beside its examples: log p(x | inputs).
    """
    if ais_steps is not None:
        from ppgen.evaluation.ais import check_steps

        check_steps(ais_steps)
    if sigma is not None and ais_steps is None:
        raise UserError("--sigma sets the Gaussian observation model whose likelihood AIS estimates; add --ais N "
                        "(e.g. --ais 1000)")
    if sigma is not None and sigma != "fit":
        from ppgen.models.observation import check_sigma

        check_sigma(sigma)
    config = runs.read_config(run_dir)
    pair = runs.load_pair(run_dir)
    if sigma is not None:
        from ppgen.models.observation import GaussianObservation

        # the model is continuous, so it sees grey levels (never binarized); the refusal comes before any work
        pair = GaussianObservation(pair, 1.0 if sigma == "fit" else sigma)
    data = run_data(config, grey_levels=sigma is not None)
    x = getattr(data, split)
    x = x[:limit] if limit or not isinstance(x, torch.Tensor) else x  # a sparse split (SparseCounts) densified
    if len(x) == 0:
        raise UserError(f"the {split} split of {data.name} is empty; choose --split train, val or test")
    pair.check_data(x, f"{split} data")
    inputs = split_inputs(pair, data, split, limit=len(x))
    pair.check_inputs(x, inputs, f"{data.name} {split} data")
    if iwae_k < 1:
        raise UserError("--iwae needs K >= 1")
    result: dict[str, Any] = {"run": str(run_dir), "split": split, "n": len(x)}
    result.update(mode_metrics(pair, data.name, seed=seed))
    if sigma is not None:
        pair, x = _gaussian_observation(pair, data, x, sigma, sigma_points, ais_steps, ais_chains, seed, result)
    if not has_density(pair, x[:2], tuple(c[:2] for c in inputs), guide=False):  # an implicit generator
        result["seconds"] = 0.0
        result["note"] = (f"{pair.name} has no density p(x|z): no ELBO or log-likelihood (score its samples with "
                          "--fid, --kid, --is, --pr" + ("" if pair.gaussian_observation_refusal else
                                                        "; or give it Gaussian observations: --ais N --sigma S|fit")
                          + ")")
        return result
    if not pair.has_guide:  # a generator with a density but no q(z|x): AIS from the prior is its likelihood
        result["seconds"] = 0.0
        result["note"] = f"{pair.who} has no guide q(z|x): no ELBO or IWAE" + (
            "; log p(x) by AIS from the prior" if ais_steps is not None else "; estimate log p(x) with --ais N")
        if ais_steps is not None:
            result.update(_ais_rows(pair, x, ais_steps, ais_chains, bdmc_points, seed, inputs))
        return result
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        t = time.perf_counter()
        elbo = evaluation.elbo(pair, x, num_samples=elbo_samples, inputs=inputs)
        result["elbo"] = float(elbo.mean())
        result["elbo_se"] = float(elbo.std() / len(x) ** 0.5)
        ll = evaluation.iwae(pair, x, k=iwae_k, inputs=inputs)
        result[f"iwae_{iwae_k}"] = float(ll.mean())
        result[f"iwae_{iwae_k}_se"] = float(ll.std() / len(x) ** 0.5)
        result["nll"] = -float(ll.mean())
        result["bits_per_dim"] = float(evaluation.bits_per_dim(ll, pair.x_shape).mean())
        if pair.guide_draws(iwae_k) < iwae_k:  # the estimators then use one draw of q (guide_draws says why)
            result["iwae_note"] = (f"the guide is a point mass: IWAE-{iwae_k} equals the ELBO exactly, computed "
                                   "from one draw")
        result["seconds"] = round(time.perf_counter() - t, 2)
        if pair.likelihood_note:
            result["likelihood_note"] = pair.likelihood_note
    if ais_steps is not None:
        result.update(_ais_rows(pair, x, ais_steps, ais_chains, bdmc_points, seed, inputs))
    if pair.has_topics:  # perplexity, coherence, diversity (no per-dimension KL)
        result.update(topic_metrics(pair, data, x, elbo, ll, iwae_k))
    elif pair.has_encoder:
        result.update(evaluation.report(pair, x, inputs))
    family = pair.family_metrics(x, *metric_columns(pair, data, split, limit=len(x)))
    if family:
        result["family_metrics"] = family
    return result


def _ais_rows(pair, x: torch.Tensor, steps: int, chains: int, bdmc_points: int, seed: int,
              inputs: tuple[torch.Tensor, ...]) -> dict:
    from ppgen.evaluation.ais import summary

    t = time.perf_counter()
    rows = summary(pair, x, steps, chains=chains, bdmc_points=bdmc_points, seed=seed, inputs=inputs)
    rows["ais_seconds"] = round(time.perf_counter() - t, 2)
    return rows


def _gaussian_observation(pair, data, x: torch.Tensor, sigma: float | str, sigma_points: int, steps: int,
                          chains: int, seed: int, result: dict) -> tuple[Any, torch.Tensor]:
    """The pair under N(x; E[x | z], σ² I) with σ given or fitted on the validation split, and ``x`` dequantized
    where it lies on a grid of grey levels; what was done goes into ``result``."""
    from ppgen.evaluation.ais import dequantize, fit_sigma, quantization_levels
    from ppgen.models.observation import GaussianObservation

    levels = quantization_levels(x)
    if levels is not None:
        x = dequantize(x, levels, seed)
    result["data_convention"] = (f"grey levels k/{levels} dequantized: x + u/{levels}, u ~ U[0, 1) (seed {seed})"
                                 if levels else "as stored (not on a grid of grey levels: no dequantization)")
    if sigma == "fit":
        val = data.val[:sigma_points]
        if len(val) == 0:
            raise UserError(f"--sigma fit fits sigma on the validation split, which {data.name} lacks; give --sigma "
                            "a value")
        if quantization_levels(val) == levels and levels is not None:
            val = dequantize(val, levels, seed + 1)
        t = time.perf_counter()
        fit = fit_sigma(pair.inner, val, steps=steps, chains=chains, seed=seed,
                        inputs=split_inputs(pair, data, "val", limit=len(val)))
        result["sigma_fit"] = {"points": len(val), "steps": steps, "chains": chains, "grid": fit.grid,
                               "log_px": fit.log_px, "se": fit.se, "se_log_sigma": fit.se_log_sigma,
                               "seconds": round(time.perf_counter() - t, 2)}
        sigma = fit.sigma
    result["sigma"] = float(sigma)
    return GaussianObservation(pair.inner, float(sigma)), x


def evaluate_run_samples(run_dir, metrics: Sequence[str] = METRICS, n: int | None = None, seed: int = 0,
                         cache_dir=None, sampler=None) -> dict:
    """:func:`sample_quality` of a run directory's pair (or of ``sampler``) against its data set's grey-level test
    split.

    The reference and the feature classifier use the run's data with the same split but no
    binarization (a Bernoulli pair's samples are its pixel probabilities, E[x|z]). ``sampler``
    is anything with ``generate(n)``, e.g. the run's pair corrected by rejection sampling.
    """
    from ppgen.evaluation.samples import sample_quality

    data = run_data(runs.read_config(run_dir), grey_levels=True)
    if sampler is None:
        sampler = runs.load_pair(run_dir)
        sampler.eval()
    return sample_quality(sampler, data, metrics, n=n, seed=seed, cache_dir=cache_dir)
