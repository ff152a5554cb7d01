"""``ppgen compare``: NUTS beside the run's guide — per point (p(z | x, θ) against the encoder's q(z | x), the
distances and the inference gap) or, for a pair whose latents are global (no per-point latent: regression weights,
eight schools), over the whole model (p(w | x_{1:N}) against the guide's q(w), site by site)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ppgen import runs
from ppgen.errors import UserError
from ppgen.inference import fit as backend_fit
from ppgen.workflows.common import run_data, split_inputs

#: the points ``compare`` takes per point when ``points`` is not given
DEFAULT_POINTS = 16


def compare_run(run_dir, out=None, *, points: int | None = None, chains: int = 4, warmup: int = 500,
                samples: int = 1000, split: str = "test", steps: int = 1000, iwae_k: int = 5000, seed: int = 0,
                log=print) -> dict[str, Any]:
    """NUTS beside the run's guide, written into ``out`` (default RUN/compare); returns the table.

    Per point (the model has no global latent): NUTS on p(z | x, θ) for the first ``points`` examples of
    ``split`` (default 16) beside the encoder, with their input columns for a pair that takes them; writes
    ``compare.nc`` (ArviZ: svi and nuts along ``inference``), ``nuts.nc``, ``compare.json`` (the table) and
    ``forest.png``, ``pair.png``, ``gaps.png``. A model with global latents (sites outside the data plate) gets
    :func:`compare_whole_model` instead; ``points``, ``split``, ``steps`` and ``iwae_k`` do not apply there.
    """
    from ppgen.evaluation.likelihood import global_latents

    if points is not None and points < 1:
        raise UserError(f"--points must be at least 1, got {points}")
    run_dir = Path(run_dir)
    config = runs.read_config(run_dir)
    pair = runs.load_pair(run_dir)
    data = run_data(config)
    shared = global_latents(pair, data.train, split_inputs(pair, data, "train", limit=1))
    out = Path(out) if out is not None else run_dir / "compare"
    if shared:
        _check_globals_only(pair, data, shared)
        if points is not None:
            log(f"--points ignored: {', '.join(shared)} {'is' if len(shared) == 1 else 'are'} global (shared by every "
                "example), so NUTS runs on the whole model over the training data")
        return compare_whole_model(pair, data, run_dir, out, chains=chains, warmup=warmup, samples=samples,
                                   seed=seed, log=log)
    return _compare_points(pair, data, run_dir, out, points=DEFAULT_POINTS if points is None else points,
                           chains=chains, warmup=warmup, samples=samples, split=split, steps=steps, iwae_k=iwae_k,
                           seed=seed, log=log)


def _check_globals_only(pair, data, shared: list[str]) -> None:
    """A whole-model comparison reads each site's entries as the coordinates of one Gaussian: per-example latents
    beside the global ones would make that N times larger, so such a pair is refused in one line."""
    from ppgen.diagnostics import model_sites

    x, inputs = data.train[:1], split_inputs(pair, data, "train", limit=1)
    local = [k for k, s in model_sites(pair, x, inputs).items() if not s["is_observed"] and k not in shared]
    if local:
        raise UserError(f"ppgen compare takes per-example latents or global ones, but {pair.name} has both (global "
                        f"{', '.join(shared)}; per example {', '.join(local)}): run NUTS on it with "
                        "ppgen.fit(pair, data, backend='nuts') and put the guide beside it with "
                        "ppgen.diagnostics.compare_inference_data")


def _compare_points(pair, data, run_dir: Path, out: Path, *, points: int, chains: int, warmup: int, samples: int,
                    split: str, steps: int, iwae_k: int, seed: int, log) -> dict[str, Any]:
    from ppgen import diagnostics
    from ppgen.evaluation.amortization import compare, format_table, latent_site

    latent_site(pair, data.train[:1], split_inputs(pair, data, "train", limit=1))
    start = time.perf_counter()
    fit = backend_fit(pair, data, backend="nuts", points=points, split=split, chains=chains, warmup=warmup,
                      samples=samples, seed=seed)
    log(f"NUTS ({fit.state['engine']}): {points} {split} points x {chains} chains, {warmup} warmup + {samples} draws "
        f"in {time.perf_counter() - start:.1f} s")
    result = compare(pair, fit, steps=steps, iwae_k=iwae_k, seed=seed)
    result.update(run=str(run_dir), split=split, chains=chains, warmup=warmup, samples=samples,
                  seconds=round(time.perf_counter() - start, 1))
    out.mkdir(parents=True, exist_ok=True)
    combined = diagnostics.compare_inference_data(pair, fit, seed=seed, log_lik=False)
    runs.write_netcdf(out / "compare.nc", combined)
    runs.write_netcdf(out / "nuts.nc", diagnostics.to_inference_data(fit))
    runs.write_json(out / "compare.json", result)
    diagnostics.plot_forest(combined, out / "forest.png", 0)
    diagnostics.plot_pair(combined, out / "pair.png", 0)
    diagnostics.plot_gaps(result["points"], out / "gaps.png")
    log(format_table(result))
    log(f"wrote {out}/compare.nc, nuts.nc, compare.json, forest.png, pair.png, gaps.png")
    return result


def compare_whole_model(pair, data, run_dir: Path, out: Path, *, chains: int = 4, warmup: int = 500,
                        samples: int = 1000, seed: int = 0, log=print) -> dict[str, Any]:
    """NUTS over every unknown of the model given the whole training split beside the guide's posterior q(w), a row
    per latent site (:func:`~ppgen.evaluation.amortization.compare_global`: KL, W2, coverage, k̂, r_hat, ESS).

    Writes ``compare.nc`` (svi and nuts along ``inference``), ``nuts.nc`` (with the log-likelihood per example,
    unless the model subsamples its data plate itself: Pyro then traces a random few examples), ``compare.json``
    and a forest plot per site, ``forest_<site>.png``.
    """
    from ppgen import diagnostics, sites
    from ppgen.evaluation.amortization import compare_global, format_global_table

    start = time.perf_counter()
    fit = backend_fit(pair, data, backend="nuts", chains=chains, warmup=warmup, samples=samples, seed=seed)
    n = len(fit.state["x"])
    log(f"NUTS ({fit.state['engine']}) on the whole model: {n} training examples x {chains} chains, {warmup} warmup "
        f"+ {samples} draws in {time.perf_counter() - start:.1f} s")
    result = compare_global(pair, fit, seed=seed)
    result.update(run=str(run_dir), split="train", examples=n, chains=chains, warmup=warmup, samples=samples,
                  seconds=round(time.perf_counter() - start, 1))
    out.mkdir(parents=True, exist_ok=True)
    combined = diagnostics.compare_inference_data(pair, fit, seed=seed, log_lik=False)
    runs.write_netcdf(out / "compare.nc", combined)
    whole = _traces_every_example(pair, fit, sites)
    runs.write_netcdf(out / "nuts.nc", diagnostics.to_inference_data(fit, log_lik=whole))
    runs.write_json(out / "compare.json", result)
    pictures = []
    for row in result["sites"]:
        pictures.append(f"forest_{row['site']}.png")
        diagnostics.plot_forest(combined, out / pictures[-1], var=row["site"])
    log(format_global_table(result))
    if "khat_note" in result["overall"]:
        log(result["overall"]["khat_note"])
    if not whole:
        log("nuts.nc holds no log-likelihood: the model subsamples its data plate itself")
    log(f"wrote {out}/compare.nc, nuts.nc, compare.json, {', '.join(pictures)}")
    return result


def _traces_every_example(pair, fit, sites) -> bool:
    """Whether a Pyro trace of the model holds every example of the fit (it does unless the model subsamples its
    data plate itself)."""
    import torch
    from pyro import poutine

    from ppgen.diagnostics import nuts_inputs

    x = fit.state["x"]
    with torch.no_grad():
        trace = poutine.trace(pair.model).get_trace(x, *nuts_inputs(fit))
    return sites.layout(trace, pair.data_plate).examples == len(x)
