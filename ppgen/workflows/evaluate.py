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
                 bdmc_points: int = 0) -> dict:
    """Held-out ELBO, IWAE-K log-likelihood, KL per latent dimension, active units and I(x; z).

    With ``ais_steps`` also AIS with that many intermediate distributions (and, with
    ``bdmc_points``, BDMC's lower/upper bounds on as many points simulated from the model).
    A pair with topics gets perplexity, NPMI and diversity instead of the per-dimension KL; a pair's own
    figures (``family_metrics``) come under ``family_metrics``. A pair with input columns (``pair.inputs``) is
    evaluated with the split's columns beside its examples: log p(x | inputs).
    """
    if ais_steps is not None:
        from ppgen.evaluation.ais import check_steps

        check_steps(ais_steps)
    config = runs.read_config(run_dir)
    pair = runs.load_pair(run_dir)
    data = run_data(config)
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
    if not has_density(pair, x[:2], tuple(c[:2] for c in inputs)):  # an implicit generator: no likelihood, so no ELBO/IWAE/AIS
        result["seconds"] = 0.0
        result["note"] = (f"{pair.name} has no density p(x|z) or no guide q(z|x): no ELBO or log-likelihood "
                          "(score its samples with --fid, --kid, --is, --pr)")
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
    if ais_steps is not None:
        from ppgen.evaluation.ais import summary

        t = time.perf_counter()
        result.update(summary(pair, x, ais_steps, chains=ais_chains, bdmc_points=bdmc_points, seed=seed,
                              inputs=inputs))
        result["ais_seconds"] = round(time.perf_counter() - t, 2)
    if pair.has_topics:  # perplexity, coherence, diversity (no per-dimension KL)
        result.update(topic_metrics(pair, data, x, elbo, ll, iwae_k))
    elif pair.has_encoder:
        result.update(evaluation.report(pair, x, inputs))
    family = pair.family_metrics(x, *metric_columns(pair, data, split, limit=len(x)))
    if family:
        result["family_metrics"] = family
    return result


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
