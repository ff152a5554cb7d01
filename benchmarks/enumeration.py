"""The enumerated ELBO's time per epoch on a small Gaussian mixture (tests/discrete_pairs.py): ppgen's torch engine
(Pyro's TraceEnum_ELBO) and JAX engine (NumPyro's, through funsor) beside a plain Pyro SVI loop on the same pair, in
one process; the component summed out in the model ("model side") and drawn by the guide ("guide side").

    python benchmarks/enumeration.py [--n 10000] [--batch 256] [--epochs 6]

Per-epoch seconds are medians over the epochs after the first (the JAX engine's first epoch compiles; its time is
printed apart). The ELBO per example of the last epoch is printed beside the exact mean log p(x) of the data.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, TraceEnum_ELBO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ppgen  # noqa: E402
from tests.discrete_pairs import ComponentMixture, LabelGuideMixture, log_marginal, mixture_data  # noqa: E402


def plain_pyro(pair, x: torch.Tensor, batch: int, epochs: int, lr: float) -> tuple[list[float], float]:
    """Pyro's SVI with TraceEnum_ELBO and Adam over minibatches: (seconds per epoch, last epoch's ELBO/example)."""
    pair.trial_run(x[:batch])
    svi = SVI(pair.model, pair.guide, pyro.optim.Adam({"lr": lr}), TraceEnum_ELBO(max_plate_nesting=1))
    seconds, last = [], 0.0
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        start, total = time.perf_counter(), 0.0
        order = torch.randperm(len(x), generator=g)
        for i in range(len(x) // batch):
            total += svi.step(x[order[i * batch:(i + 1) * batch]])
        seconds.append(time.perf_counter() - start)
        last = -total / (batch * (len(x) // batch))
    return seconds, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    x = mixture_data(args.n, seed=0)
    print(f"{args.n} examples, batch {args.batch}, {args.epochs} epochs; exact mean log p(x) at the initial "
          f"parameters {float(log_marginal(x).mean()):.3f}")
    for label, cls in (("model side", ComponentMixture), ("guide side", LabelGuideMixture)):
        rows = {}
        for engine in ("torch", "jax"):
            fit = ppgen.fit(cls(), x, engine=engine, epochs=args.epochs, batch_size=args.batch, lr=args.lr, seed=0,
                            progress=False)
            secs = [r["seconds"] for r in fit.history]
            rows[f"ppgen {engine}"] = (secs, fit.history[-1]["elbo"])
        rows["plain Pyro"] = plain_pyro(cls(), x, args.batch, args.epochs, args.lr)
        base = statistics.median(rows["plain Pyro"][0][1:])
        for name, (secs, elbo) in rows.items():
            median = statistics.median(secs[1:])
            print(f"{label:10s}  {name:11s}  {median * 1e3:8.1f} ms/epoch (first {secs[0]:.2f} s)  "
                  f"{base / median:6.1f}x plain Pyro   ELBO/example {elbo:.3f}")


if __name__ == "__main__":
    main()
