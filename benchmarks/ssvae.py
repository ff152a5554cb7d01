"""Speed of ppgen's M2 (semi-supervised VAE, y enumerated) per epoch beside a plain Pyro loop after Pyro's ss-vae example.

One process, one model: M2 with ppgen's networks (classifier q(y|x), encoder q(z|x,y), decoder p(x|y,z); MLPs of
``--hidden`` softplus units, z of ``--z-dim``), Bernoulli likelihood, on ``--data`` (default the bundled MNIST
training split, 3,500 digits; ``mnist-full``: 50,000; dynamically binarized) with ``--labels`` of them labelled (a
class-balanced seeded set), batch ``--batch``, Adam at ``--lr`` (Pyro's example's 200 and 4.2e-4), the
classification loss weighted 46 per labelled example on both sides (Pyro's ``aux_loss_multiplier``).

  ppgen       ``ppgen.fit(pair, data, engine="torch")``: the family's own objective, the class summed in one batched
              pass of the networks over every class of the unlabelled rows (labelled and unlabelled rows mixed in
              each shuffled batch), the Bernoulli log-likelihood straight from the logits; fused Adam;
              ``--precision bfloat16``: the networks' products in bfloat16 (autocast), densities float32
  ppgen-jax   ``ppgen.fit(pair, data, engine="jax")``: the same objective in JAX (``M2.jax_objective``: every row
              through the K classes, labelled rows taking their label's term), each epoch one compiled ``lax.scan``
              over NumPyro's ``SVI.update`` (float32 only: ``--precision bfloat16`` leaves this row out)
  pyro-loop   written here after the structure of Pyro's ss-vae example (examples/vae/ss_vae_M2.py; not copied):
              the same networks (the same initial weights) in a model/guide pair of its own, the guide marked with
              ``config_enumerate``, ``SVI`` with ``TraceEnum_ELBO(max_plate_nesting=1)`` and ``pyro.optim.Adam``;
              each epoch the labelled examples in their own batches (y observed) and the unlabelled in theirs (y
              enumerated), and the auxiliary loss a second ``SVI`` (``Trace_ELBO``) on the labelled batches, as the
              example does

Each round runs each for ``--epochs`` epochs (ppgen: a resumed fit, its first epoch untimed: for the JAX engine the
first epoch holds the compilation), rotating which goes first; the table gives the median epoch time over rounds
(wall and this process's CPU time, the steadier on a shared machine) and the ratio pyro-loop / ppgen per engine, with
the load average. Before the rounds, ``--whole E`` times E epochs of each from a fresh start (a new pair, the JAX
engine's tracing and compiling counted; the persistent compilation cache off, so nothing compiled before is reused).
``--threads 1`` also keeps XLA to one thread, as torch.

    nice -n 10 python benchmarks/ssvae.py --threads 1                          # a few minutes
    nice -n 10 python benchmarks/ssvae.py --threads 1 --precision bfloat16
    python benchmarks/ssvae.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import pyro
import pyro.distributions as pdist
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam

import ppgen
from ppgen import data as datasets
from ppgen.models.m2 import M2


class PyroLoopM2:
    """The M2 model and guide written the way Pyro's ss-vae example writes them (y given or enumerated), on the
    networks of a ppgen ``M2`` pair."""

    def __init__(self, nets: M2, aux_scale: float):
        self.nets, self.aux_scale = nets, aux_scale
        self.z_dim, self.classes = nets.config.z_dim, nets.config.classes

    def model(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        pyro.module("ss_vae", self.nets)
        with pyro.plate("data", xs.shape[0]):
            z = pyro.sample("z", pdist.Normal(0.0, 1.0).expand([self.z_dim]).to_event(1))
            ys = pyro.sample("y", pdist.Categorical(logits=torch.zeros(xs.shape[0], self.classes)), obs=ys)
            pyro.sample("x", pdist.Bernoulli(logits=self.nets.decoder(z, ys)).to_event(3), obs=xs)

    def guide(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", pdist.Categorical(logits=self.nets.classifier(xs)))
            loc, scale = self.nets.encoder(xs, ys)
            pyro.sample("z", pdist.Normal(loc, scale).to_event(1))

    def model_classify(self, xs: torch.Tensor, ys: torch.Tensor) -> None:
        pyro.module("ss_vae", self.nets)
        with pyro.plate("data", xs.shape[0]), poutine.scale(scale=self.aux_scale):
            pyro.sample("y_aux", pdist.Categorical(logits=self.nets.classifier(xs)), obs=ys)

    def guide_classify(self, xs: torch.Tensor, ys: torch.Tensor) -> None:
        pass


def pyro_loop_runner(data: datasets.Dataset, args) -> callable:
    torch.manual_seed(0)
    nets = M2(x_shape=data.x_shape, z_dim=args.z_dim, hidden=(args.hidden,))
    y = data.train_inputs["y"]
    known = y >= 0
    m2 = PyroLoopM2(nets, aux_scale=args.alpha)
    pyro.clear_param_store()
    optimizer = Adam({"lr": args.lr})
    svi = SVI(m2.model, config_enumerate(m2.guide, "parallel"), optimizer, loss=TraceEnum_ELBO(max_plate_nesting=1))
    aux = SVI(m2.model_classify, m2.guide_classify, optimizer, loss=Trace_ELBO())
    labelled, unlabelled = known.nonzero().squeeze(-1), (~known).nonzero().squeeze(-1)

    def run(epochs: int) -> list[tuple[float, float]]:
        times = []
        for epoch in range(epochs):
            start, cpu = time.perf_counter(), time.process_time()
            x = data.train_epoch(epoch)
            g = torch.Generator().manual_seed(epoch)
            for rows in labelled[torch.randperm(len(labelled), generator=g)].split(args.batch):
                svi.step(x[rows], y[rows])
                aux.step(x[rows], y[rows])
            for rows in unlabelled[torch.randperm(len(unlabelled), generator=g)].split(args.batch):
                svi.step(x[rows])
            times.append((time.perf_counter() - start, time.process_time() - cpu))
        return times

    return run


def ppgen_runner(data: datasets.Dataset, args, engine: str = "torch") -> callable:
    torch.manual_seed(0)
    # plain shuffles (labelled_share 0): each epoch the same unlabelled rows as the Pyro loop, not the labelled ones
    # drawn again in every batch (ppgen drops the last partial batch: 3,400 of the 3,500 rows, 3% fewer)
    pair = M2(x_shape=data.x_shape, z_dim=args.z_dim, hidden=(args.hidden,), alpha=args.alpha,
              precision=args.precision, labelled_share=0.0)
    holder = {"checkpoint": None}

    def run(epochs: int) -> list[tuple[float, float]]:
        done = holder["checkpoint"]["state"]["epoch"] if holder["checkpoint"] else 0
        stamps = []  # (wall, CPU) at the end of every epoch: the first epoch of each call is not timed

        def stamp(fit) -> None:
            stamps.append((time.perf_counter(), time.process_time()))

        fit = ppgen.fit(pair, data, backend="svi", engine=engine, epochs=done + epochs + 1, batch_size=args.batch,
                        lr=args.lr, progress=False, resume=holder["checkpoint"], announce=lambda message: None,
                        callback=stamp)
        holder["checkpoint"] = fit.checkpoint()
        return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])]

    return run


def whole_fit_seconds(data: datasets.Dataset, args, name: str) -> tuple[float, float]:
    """Wall and CPU seconds of ``args.whole`` epochs of ``name`` from a fresh start: a new pair, and for ppgen the
    whole ``ppgen.fit`` (for the JAX engine its tracing and compilation)."""
    start, cpu = time.perf_counter(), time.process_time()
    if name == "pyro-loop":
        pyro_loop_runner(data, args)(args.whole)
    else:
        torch.manual_seed(0)
        pair = M2(x_shape=data.x_shape, z_dim=args.z_dim, hidden=(args.hidden,), alpha=args.alpha,
                  precision=args.precision, labelled_share=0.0)
        ppgen.fit(pair, data, backend="svi", engine="jax" if name == "ppgen-jax" else "torch", epochs=args.whole,
                  batch_size=args.batch, lr=args.lr, progress=False, announce=lambda message: None)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--lr", type=float, default=4.2e-4)
    parser.add_argument("--alpha", type=float, default=46.0, help="weight of -log q(y|x) per labelled example")
    parser.add_argument("--precision", default="float32", help="ppgen's networks: float32 or bfloat16")
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--z-dim", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per method per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    parser.add_argument("--engines", default="torch,jax", help="ppgen's engines to time: torch, jax or both")
    parser.add_argument("--whole", type=int, default=0, help="also time this many epochs of each from a fresh start")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 epoch")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.epochs = 1, 1
    engines = [e for e in args.engines.split(",") if e != "jax" or args.precision == "float32"]
    os.environ["PPGEN_NO_COMPILE_CACHE"] = "1"  # every compilation counted, none read from an earlier run
    if args.threads == 1:  # XLA's CPU client on one thread too (read when JAX starts, which is later)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1").strip()
    # the labelled batches have no enumerated site: TraceEnum_ELBO says so every step, as in Pyro's example
    warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = datasets.keep_labels(datasets.load(args.data), args.labels, seed=0)
    names = {"torch": "ppgen", "jax": "ppgen-jax"}
    runners = {names[e]: ppgen_runner(data, args, e) for e in engines}
    runners["pyro-loop"] = pyro_loop_runner(data, args)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    whole = {name: whole_fit_seconds(data, args, name) for name in runners} if args.whole else {}

    def median(name: str, clock: int) -> float:
        return statistics.median(t[clock] for t in times[name])

    for r in range(args.rounds):
        order = list(runners)[r % len(runners):] + list(runners)[:r % len(runners)]
        for name in order:
            times[name] += runners[name](args.epochs)
        print(f"round {r + 1}: " + ", ".join(f"{n} {median(n, 0):.2f} s/epoch (CPU {median(n, 1):.2f})"
                                             for n in times) + f"; load {os.getloadavg()[0]:.1f}", flush=True)
    n = len(data.train)
    print(f"\nM2 on {args.data} ({n} train, {args.labels} labelled), batch {args.batch}, hidden {args.hidden}, "
          f"z {args.z_dim}, ppgen {args.precision}, {torch.get_num_threads()} thread(s); median over "
          f"{len(times['ppgen'])} epochs; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    for name in times:
        print(f"  {name:10s} {median(name, 0):7.2f} s/epoch wall {median(name, 1):7.2f} s CPU  "
              f"{n / median(name, 0):7.0f} images/s")
    for name in (n for n in times if n != "pyro-loop"):
        print(f"  ratio pyro-loop / {name}: wall {median('pyro-loop', 0) / median(name, 0):.2f}, "
              f"CPU {median('pyro-loop', 1) / median(name, 1):.2f}")
    if whole:
        print(f"  {args.whole} epochs from a fresh start (compiling counted), wall / CPU: "
              + ", ".join(f"{name} {wall:.1f} / {cpu:.1f} s" for name, (wall, cpu) in whole.items())
              + "; ratio pyro-loop / " + ", ".join(f"{name} {whole['pyro-loop'][0] / whole[name][0]:.2f} / "
                                                    f"{whole['pyro-loop'][1] / whole[name][1]:.2f}"
                                                    for name in whole if name != "pyro-loop"))


if __name__ == "__main__":
    main()
