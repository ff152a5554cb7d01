"""MCMC inside training (Hoffman 2017) and IAF guides (Kingma et al. 2016) beside plain SVI.

    PYTHONPATH=. MPLBACKEND=Agg python benchmarks/mcmc_training.py --epochs 30 --seeds 3

A VAE (8x8 bundled digits, dynamically binarized; z 8, hidden 128; Adam 1e-3, batch 128) trained for the same
epochs by the torch SVI engine, plain (the baseline, same engine, same process), with T HMC transitions of
``--leapfrog`` leapfrog steps refining the guide's z before the model's gradient (``mcmc_steps=T``), and with
``flows=2`` IAF steps on q(z|x). Per row, mean ± SE over the seeds:

* seconds per epoch (median over the run's epochs; runs interleaved seed by seed, so the machine's load hits
  every row alike) and its ratio to plain SVI;
* test NLL = −IWAE-``--iwae`` on the test split, and the test ELBO;
* the amortization gap of Cremer et al. (2018) on ``--gap-points`` test points, as ``ppgen compare`` reports
  it (:func:`ppgen.evaluation.amortization.gaps`: ELBO of the per-point optimal diagonal Gaussian minus the
  encoder's). With flows the encoder's q is not Gaussian, so that row has no gap.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

import ppgen
from ppgen.evaluation import amortization, elbo, iwae
from ppgen.models import VAE


def train(data, seed: int, args, mcmc_steps: int = 0, flows: int = 0) -> dict:
    torch.manual_seed(seed)
    pair = VAE(data.x_shape, args.z_dim, "bernoulli", (args.hidden,), flows=flows)
    fit = ppgen.fit(pair, data, backend="svi", engine="torch", epochs=args.epochs, batch_size=128, lr=1e-3,
                    seed=seed, mcmc_steps=mcmc_steps, mcmc_leapfrog=args.leapfrog, progress=False)
    out = {"sec_per_epoch": statistics.median(row["seconds"] for row in fit.history)}
    if mcmc_steps:
        out["acceptance"] = fit.history[-1]["mcmc_acceptance"]
    x = data.test
    torch.manual_seed(seed + 100)
    with torch.no_grad():
        out["nll"] = -float(iwae(pair, x, k=args.iwae).mean())
        out["elbo"] = float(elbo(pair, x, num_samples=10).mean())
    if not flows:
        g = amortization.gaps(pair, x[: args.gap_points], steps=args.gap_steps, elbo_samples=500, iwae_k=500,
                              seed=seed)
        out["amortization_gap"] = float(g["amortization_gap"].mean())
    return out


def summary(values: list[float]) -> str:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{mean:8.3f} ± {se:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--z-dim", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5], help="the mcmc_steps rows")
    parser.add_argument("--leapfrog", type=int, default=5)
    parser.add_argument("--iwae", type=int, default=1000)
    parser.add_argument("--gap-points", type=int, default=32)
    parser.add_argument("--gap-steps", type=int, default=500)
    args = parser.parse_args()
    data = ppgen.data.load("digits")
    rows = {"plain SVI": {}, **{f"mcmc_steps={t}": {} for t in args.steps}, "flows=2 (IAF)": {}}
    for seed in range(args.seeds):
        configs = [("plain SVI", {}), *((f"mcmc_steps={t}", {"mcmc_steps": t}) for t in args.steps),
                   ("flows=2 (IAF)", {"flows": 2})]
        for label, kw in configs:
            for key, value in train(data, seed, args, **kw).items():
                rows[label].setdefault(key, []).append(value)
            print(f"seed {seed} {label}: " + ", ".join(f"{k}={v[-1]:.3f}" for k, v in rows[label].items()), flush=True)
    base = statistics.fmean(rows["plain SVI"]["sec_per_epoch"])
    print(f"\n{args.epochs} epochs, {args.seeds} seeds, digits 8x8 (train {len(data.train)}, test {len(data.test)}), "
          f"leapfrog {args.leapfrog}; mean ± SE over seeds")
    print(f"{'row':16s} {'s/epoch':>17s} {'×plain':>7s} {'test NLL (IWAE)':>18s} {'test ELBO':>18s} "
          f"{'amortization gap':>18s} {'accept':>7s}")
    for label, r in rows.items():
        ratio = statistics.fmean(r["sec_per_epoch"]) / base
        gap = summary(r["amortization_gap"]) if "amortization_gap" in r else f"{'—':>17s}"
        acc = f"{statistics.fmean(r['acceptance']):.2f}" if "acceptance" in r else "—"
        print(f"{label:16s} {summary(r['sec_per_epoch'])} {ratio:7.2f} {summary(r['nll'])} "
              f"{summary(r['elbo'])} {gap} {acc:>7s}")


if __name__ == "__main__":
    main()
