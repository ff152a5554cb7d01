"""The cost of a pair owning its ``pyro.param`` values on the torch engine.

Every ``model``/``guide`` call of a family enters its pair's parameter scope (a wrapper added when the
family class is defined). In one process, alternating round by round: the VAE of ``svi_vae.py`` trained
by ``ppgen.fit(engine="torch")`` as shipped, beside the same VAE with ``model``/``guide`` unwrapped (the
original functions), the hand-written torch loop and Pyro's tutorial loop. Both ppgen rows must print
the same losses (the wrapper changes no number). Last, the scope's enter and exit timed alone.

``python benchmarks/param_scope.py --rounds 12`` (one torch thread).
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import svi_vae as S  # noqa: E402

import ppgen  # noqa: E402
from ppgen import ppl  # noqa: E402
from ppgen.models.vae import VAE  # noqa: E402

SHIPPED, BARE = "wrapped (shipped)", "unwrapped"


class BareVAE(VAE):
    """The VAE with its model and guide as written, outside the pair's parameter scope."""


BareVAE.model = VAE.model.__wrapped__
BareVAE.guide = VAE.guide.__wrapped__


def scope_seconds(calls: int = 20_000) -> float:
    """Seconds to enter and leave one pair's parameter scope around nothing."""
    holder = VAE(x_shape=(1, 28, 28), z_dim=S.Z, hidden=(S.HIDDEN,), likelihood="bernoulli").pyro_params
    start = time.perf_counter()
    for _ in range(calls):
        with ppl.param_owner(holder):
            pass
    return (time.perf_counter() - start) / calls


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=12, help="alternating rounds of 3 epochs each")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = ppgen.data.load("mnist", binarize="threshold")
    x_flat = data.train.reshape(len(data.train), -1).contiguous()
    print(f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
    runners = {SHIPPED: S.ppgen_runner(data, "trace", engine="torch")}
    ppgen.models.VAE = BareVAE  # ppgen_runner builds ppgen.models.VAE
    try:
        runners[BARE] = S.ppgen_runner(data, "trace", engine="torch")
    finally:
        ppgen.models.VAE = VAE
    runners["torch"] = S.torch_runner(x_flat)
    runners["pyro-tutorial"] = S.pyro_runner(data.train, False, {})
    results = S.measure(runners, args.rounds, 3)
    median = {n: statistics.median(r["images_per_s"] for r in rows) for n, rows in results.items()}
    for name, speed in median.items():
        print(f"{name:<20}{speed:>10,.0f} images/s  losses {[round(r['loss_per_image'], 1) for r in results[name]]}")
    paired = [a["images_per_s"] / b["images_per_s"] for a, b in zip(results[SHIPPED], results[BARE])]
    print(f"per round {SHIPPED} / {BARE}: {[round(p, 3) for p in paired]}, median {statistics.median(paired):.3f}")
    for name in (SHIPPED, BARE):
        print(f"{name} / torch loop {median[name] / median['torch']:.3f}, "
              f"/ pyro-tutorial {median[name] / median['pyro-tutorial']:.3f}")
    steps = len(x_flat) // S.BATCH
    per = scope_seconds()
    print(f"scope enter+exit {per * 1e6:.1f} µs; 2 calls a step x {steps} steps = {2 * per * steps * 1e3:.2f} ms an epoch")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
