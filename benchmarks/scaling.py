"""Data-parallel scaling on this machine: images/s of 1 vs 2 processes, all-reduce time per step, NUTS
over 1 vs 2 JAX devices.

``svi``: the 784-400-50 MLP VAE (Bernoulli, batch 256 in all, Adam 1e-3, torch engine) on the bundled MNIST
training split, trained by ``ppgen.fit`` in

  1 proc x 1 thread     the baseline: one process, one torch thread
  2 procs x 1 thread    data-parallel, gloo on loopback (each process 128 examples of every batch of 256)
  1 proc x 2 threads    the alternative on the same two cores: torch's intra-op threads

each in its own processes, rounds interleaved (rotated order), the median over rounds of each run's median epoch
after the first. Efficiency = images/s of 2 procs / (2 x images/s of 1 proc x 1 thread).

``allreduce``: 2 processes (gloo, loopback) time the step's one flat all-reduce (``Group.reduce_step``: gradients,
has-gradient flags and the loss; both processes enter it together, after a barrier, so waiting for the slower
process is not counted) for the VAE's 0.69 M parameters and for the diffusion U-Net (``UNetDenoiser``,
channels 32, mult 1,2, on 1x28x28), beside the compute of one training step of each (forward + backward at
batch 128 per process, i.e. 256 in all), measured in the same processes at the same time.

``nuts``: a subprocess with 2 XLA host devices samples PPCA latents (8 points x 4 chains) with
``chain_method="vectorized"`` (one device) and ``"parallel"`` (points x chains split over both, pmap); warm
calls, alternating; the smallest bulk ESS per second of each and their ratio.

    python benchmarks/scaling.py                      # all three, ~5 min on a loaded 2-core machine
    python benchmarks/scaling.py svi --rounds 3 --epochs 4
    python benchmarks/scaling.py allreduce --reps 50
    python benchmarks/scaling.py nuts
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve()


# -- workers (run in the launched processes) ---------------------------------------------------------------
def svi_worker(args) -> None:
    import ppgen

    torch.set_num_threads(args.threads)
    data = ppgen.data.load("mnist", binarize="threshold")
    torch.manual_seed(0)
    pair = ppgen.models.VAE(z_dim=50)
    fit = ppgen.fit(pair, data, epochs=args.epochs, batch_size=256, engine="torch", progress=False,
                    device=args.device)
    rates = [row["images_per_s"] for row in fit.history[1:]]
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"images_per_s": statistics.median(rates)}))


def allreduce_worker(args) -> None:
    import ppgen
    from ppgen.inference import distributed
    from ppgen.models.diffusion import DDPM

    torch.set_num_threads(1)
    group = distributed.join(args.device)
    device = torch.device(distributed.device_of(args.device))
    torch.manual_seed(0)
    nets = {"vae": (ppgen.models.VAE(z_dim=50), (1, 28, 28)),
            "unet": (DDPM((1, 28, 28), denoiser="unet", channels=32, likelihood="gaussian"), (1, 28, 28))}
    out = {}
    for name, (pair, shape) in nets.items():
        pair.to(device)
        params = [p for p in pair.parameters() if p.requires_grad]
        x = torch.rand((256 // group.world,) + shape, device=device)
        if name == "vae":
            x = x.round()
        from ppgen.inference.svi import ObjectiveLoss, make_elbo

        loss_fn = ObjectiveLoss(pair) if pair.has_objective else make_elbo("trace", 1, 1)
        compute, reduce = [], []
        reps = args.reps if name == "vae" else max(3, args.reps // 10)  # the U-Net step is ~100x the VAE's
        for rep in range(reps + 1):  # the step's compute, both processes at once (the first left out)
            for p in params:
                p.grad = None
            start = time.perf_counter()
            loss_fn.differentiable_loss(pair.model, pair.guide, x).backward()
            _sync(device)
            if rep:
                compute.append(time.perf_counter() - start)
        for _ in range(args.reps + 1):  # the all-reduce alone: both processes enter it together (a barrier)
            torch.distributed.barrier()
            start = time.perf_counter()
            group.reduce_step(params, [0.0], mean=False)
            _sync(device)
            reduce.append(time.perf_counter() - start)
        reduce = reduce[1:]
        out[name] = {"params": sum(p.numel() for p in params), "compute_ms": 1e3 * statistics.median(compute),
                     "allreduce_ms": 1e3 * statistics.median(reduce)}
    if group.rank == 0:
        print(json.dumps(out))
    distributed.leave()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


NUTS_SCRIPT = """
import json, os, sys, time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, {tests!r})
import numpy as np, torch, arviz as az, ppgen
from support import known_ppca
pair = known_ppca()
x = ppgen.data.from_tensor(torch.randn(8, 5, generator=torch.Generator().manual_seed(5)) * 2)
opts = dict(points=list(range(8)), chains=4, warmup={warmup}, samples={samples})
rates = {{"vectorized": [], "parallel": []}}
for method in rates:  # compile (cold) calls, untimed
    ppgen.fit(pair, x, backend="nuts", chain_method=method, seed=0, **opts)
for r in range({rounds}):
    for method in (list(rates) if r % 2 == 0 else list(rates)[::-1]):
        t = time.perf_counter()
        fit = ppgen.fit(pair, x, backend="nuts", chain_method=method, seed=r + 1, **opts)
        wall = time.perf_counter() - t
        z = np.asarray(fit.samples["z"])
        ess = float(az.ess(az.convert_to_dataset({{"z": z}}), method="bulk")["z"].min())
        rates[method].append(ess / wall)
print(json.dumps({{m: float(np.median(v)) for m, v in rates.items()}}))
"""


# -- the driver ----------------------------------------------------------------------------------------------
def launch(argv: list[str], world: int, threads: int = 1) -> dict:
    """Run ``scaling.py ARGV`` in ``world`` processes (torchrun's variables when world > 1); rank 0's JSON line."""
    from ppgen.inference.distributed import free_port

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    if world > 1:
        env.update(WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    procs = [subprocess.Popen([sys.executable, str(HERE), *argv],
                              env={**env, **({"RANK": str(r), "LOCAL_RANK": str(r)} if world > 1 else {})},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    outs = [p.communicate() for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode:
            raise SystemExit(f"a worker failed:\n{err[-3000:]}")
    return json.loads(outs[0][0].strip().splitlines()[-1])


def bench_svi(args) -> dict:
    configs = {"1 proc x 1 thread": (1, 1), "2 procs x 1 thread": (2, 1), "1 proc x 2 threads": (1, 2)}
    rates: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(args.rounds):
        for name in names[r % 3:] + names[: r % 3]:
            world, threads = configs[name]
            result = launch(["_svi", "--epochs", str(args.epochs), "--threads", str(threads), "--device",
                             args.device], world, threads)
            rates[name].append(result["images_per_s"])
            print(f"  round {r + 1}: {name:20s} {result['images_per_s']:8.0f} img/s", flush=True)
    med = {name: statistics.median(v) for name, v in rates.items()}
    base = med["1 proc x 1 thread"]
    print("\nSVI, 784-400-50 VAE, batch 256, torch engine (median over rounds)")
    print(f"{'':22s}{'img/s':>9s}{'speed-up':>10s}{'efficiency':>12s}")
    for name, (world, threads) in configs.items():
        print(f"{name:22s}{med[name]:9.0f}{med[name] / base:10.2f}{med[name] / base / (world * threads):12.2f}")
    return med


def bench_allreduce(args) -> dict:
    result = launch(["_allreduce", "--reps", str(args.reps), "--device", args.device], 2)
    print("\nOne training step, 2 processes (gloo on loopback; compute = forward + backward of 128 examples)")
    print(f"{'':8s}{'params':>10s}{'MB':>8s}{'compute ms':>12s}{'all-reduce ms':>15s}{'ratio':>8s}")
    for name, r in result.items():
        print(f"{name:8s}{r['params']:10,d}{4 * r['params'] / 1e6:8.2f}{r['compute_ms']:12.2f}"
              f"{r['allreduce_ms']:15.2f}{r['allreduce_ms'] / r['compute_ms']:8.2f}")
    return result


def bench_nuts(args) -> dict:
    script = NUTS_SCRIPT.format(tests=str(ROOT / "tests"), warmup=args.warmup, samples=args.samples,
                                rounds=args.nuts_rounds)
    out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    rates = json.loads(out.stdout.strip().splitlines()[-1])
    print("\nNUTS, PPCA latents, 8 points x 4 chains (min bulk ESS per second, warm, median)")
    print(f"  1 device (vectorized)   {rates['vectorized']:8.1f}")
    print(f"  2 devices (parallel)    {rates['parallel']:8.1f}   ratio {rates['parallel'] / rates['vectorized']:.2f}")
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", nargs="?", default="all", choices=["all", "svi", "allreduce", "nuts", "_svi", "_allreduce"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3, help="epochs per SVI run (the first is left out)")
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--reps", type=int, default=30, help="all-reduce repetitions")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--samples", type=int, default=600)
    p.add_argument("--nuts-rounds", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or cuda (a GPU per process: cuda:LOCAL_RANK)")
    args = p.parse_args()
    if args.part == "_svi":
        return svi_worker(args)
    if args.part == "_allreduce":
        return allreduce_worker(args)
    if args.part in ("all", "svi"):
        bench_svi(args)
    if args.part in ("all", "allreduce"):
        bench_allreduce(args)
    if args.part in ("all", "nuts"):
        bench_nuts(args)


if __name__ == "__main__":
    main()
