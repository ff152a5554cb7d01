"""Speed and scale of the GP decoder — ppgen's amortized, minibatched training beside Pyro's GPLVM
tutorial loop (full batch, non-amortized), in one process, at several N.

    PYTHONPATH=. python benchmarks/gp_scale.py [--sizes 500 1797 20000] [--inducing 64] [--repeats 3]

Data: the 8x8 digits (grey levels, 64 dimensions): the first 500, all 1,797, and a larger synthetic set of N
examples drawn from the 1,797 with replacement plus N(0, 0.05²) noise.

* ppgen — ``GPVAE(..., likelihood="gaussian", num_data=N)`` trained by ``ppgen.fit(engine="torch")``, batch 128,
  Adam 1e-2: an epoch is ⌈N/128⌉ gradient steps of cost O(B M² D) each (encoder, the sparse GP's conditional at
  the batch's latents, KL(q(u)) once per step): time per epoch grows linearly in N, per step it does not grow.
* Pyro — the GPLVM tutorial as a user writes it: ``SparseGPRegression(X, y.T, RBF, Xu, noise=0.01, jitter=1e-5)``
  with ``X`` a ``PyroSample`` under an N(0, 0.1²) prior and ``autoguide("X", Normal)``, trained by
  ``gp.util.train`` (Adam 1e-2, TraceMeanField_ELBO): one full-batch step per epoch, O(N M² + N M D) (the
  collapsed Titsias bound), q(X) one free Gaussian per point (no encoder: a new point needs its own optimization).

Both use M inducing points and an RBF kernel with ARD. Per N the two alternate ``--repeats`` times; the median
is printed, with the per-step times and the growth exponent between the smallest and largest N (log-log slope).
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
import warnings

import pyro
import pyro.contrib.gp as gp
import pyro.ops.stats as stats
import torch
from torch.nn import Parameter

import ppgen
from ppgen.models.gpvae import GPVAE
from ppgen.ppl import dist

print = functools.partial(print, flush=True)  # noqa: A001


def dataset(n: int, seed: int) -> torch.Tensor:
    data = ppgen.data.load("digits", binarize=None)
    x = torch.cat([data.train, data.val, data.test]).flatten(1)  # (1797, 64)
    if n <= len(x):
        return x[:n].contiguous()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(x), (n,), generator=g)
    return x[idx] + 0.05 * torch.randn(n, x.shape[1], generator=g)


def ppgen_epoch_seconds(x: torch.Tensor, inducing: int, epochs: int, seed: int) -> float:
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    pair = GPVAE((x.shape[1],), 2, inducing, "rbf", (128,), "gaussian", num_data=len(x))
    fit = ppgen.fit(pair, x, engine="torch", epochs=epochs, batch_size=128, lr=1e-2, seed=seed, progress=False)
    return statistics.median(row["seconds"] for row in fit.history)


def pyro_tutorial_step_seconds(x: torch.Tensor, inducing: int, steps: int, seed: int) -> float:
    """Pyro's GPLVM tutorial loop; seconds per (full-batch) step."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    y = x.t()
    x_prior_mean = torch.zeros(y.size(1), 2)
    kernel = gp.kernels.RBF(input_dim=2, lengthscale=torch.ones(2))
    X = Parameter(x_prior_mean.clone())
    Xu = stats.resample(x_prior_mean.clone(), inducing)
    gplvm = gp.models.SparseGPRegression(X, y, kernel, Xu, noise=torch.tensor(0.01), jitter=1e-5)
    gplvm.X = pyro.nn.PyroSample(dist.Normal(x_prior_mean, 0.1).to_event())
    gplvm.autoguide("X", dist.Normal)
    gp.util.train(gplvm, num_steps=1)  # the first step builds the guide's parameters
    start = time.perf_counter()
    gp.util.train(gplvm, num_steps=steps)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1797, 20000])
    parser.add_argument("--inducing", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="ppgen epochs per repeat")
    parser.add_argument("--steps", type=int, default=10, help="Pyro full-batch steps per repeat")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    rows = []
    for n in args.sizes:
        x = dataset(n, args.seed)
        ours, theirs = [], []
        for r in range(args.repeats):
            ours.append(ppgen_epoch_seconds(x, args.inducing, args.epochs, args.seed + r))
            theirs.append(pyro_tutorial_step_seconds(x, args.inducing, args.steps, args.seed + r))
        steps = math.ceil(n / 128)
        row = {"n": n, "ppgen_epoch": statistics.median(ours), "pyro_epoch": statistics.median(theirs),
               "ppgen_steps": steps}
        row["ppgen_step"] = row["ppgen_epoch"] / steps
        rows.append(row)
        print(f"N={n:6d}  ppgen {row['ppgen_epoch']:.3f} s/epoch ({steps} steps, {1e3 * row['ppgen_step']:.1f} ms/step)"
              f"   Pyro tutorial {row['pyro_epoch']:.3f} s/epoch (1 full-batch step)"
              f"   epoch ratio ppgen/Pyro {row['ppgen_epoch'] / row['pyro_epoch']:.1f}")
    a, b = rows[0], rows[-1]

    def slope(key: str) -> float:
        return math.log(b[key] / a[key]) / math.log(b["n"] / a["n"])

    print(f"growth exponent N={a['n']}..{b['n']} (time ~ N^e): ppgen per epoch {slope('ppgen_epoch'):.2f}, "
          f"per step {slope('ppgen_step'):.2f}; Pyro per epoch (= per step) {slope('pyro_epoch'):.2f}")


if __name__ == "__main__":
    main()
