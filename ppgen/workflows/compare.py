"""``ppgen compare``: NUTS on p(z | x, θ) beside the run's encoder q(z | x), the distances and the inference gap."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ppgen import runs
from ppgen.errors import UserError
from ppgen.inference import fit as backend_fit
from ppgen.workflows.common import run_data


def compare_run(run_dir, out=None, *, points: int = 16, chains: int = 4, warmup: int = 500, samples: int = 1000,
                split: str = "test", steps: int = 1000, iwae_k: int = 5000, seed: int = 0, log=print) -> dict[str, Any]:
    """NUTS on p(z | x, θ) for the first ``points`` examples of ``split`` beside the run's encoder.

    Writes ``compare.nc`` (ArviZ: svi and nuts along ``inference``), ``nuts.nc``,
    ``compare.json`` (the table) and ``forest.png``, ``pair.png``, ``gaps.png`` into
    ``out`` (default RUN/compare); returns the table.
    """
    from ppgen import diagnostics
    from ppgen.evaluation.amortization import compare, format_table, latent_site

    if points < 1:
        raise UserError(f"--points must be at least 1, got {points}")
    run_dir = Path(run_dir)
    config = runs.read_config(run_dir)
    pair = runs.load_pair(run_dir)
    latent_site(pair)
    data = run_data(config)
    start = time.perf_counter()
    fit = backend_fit(pair, data, backend="nuts", points=points, split=split, chains=chains, warmup=warmup,
                      samples=samples, seed=seed)
    log(f"NUTS ({fit.state['engine']}): {points} {split} points x {chains} chains, {warmup} warmup + {samples} draws "
        f"in {time.perf_counter() - start:.1f} s")
    result = compare(pair, fit, steps=steps, iwae_k=iwae_k, seed=seed)
    result.update(run=str(run_dir), split=split, chains=chains, warmup=warmup, samples=samples,
                  seconds=round(time.perf_counter() - start, 1))
    out = Path(out) if out is not None else run_dir / "compare"
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
