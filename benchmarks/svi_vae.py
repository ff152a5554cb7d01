"""Speed of ppgen's SVI training beside plain Pyro, PyTorch and NumPyro loops (issue 2, "Speed").

One process, one model: the 784-400-50 MLP VAE (softplus hidden units, Bernoulli
likelihood), batch 256, Adam 1e-3, on the bundled MNIST training split binarized at
0.5 (``ppgen.data.load("mnist", binarize="threshold")``). Images per second of:

  ppgen            ppgen.fit(pair, data, backend="svi") — default Trace_ELBO, progress off
  ppgen-analytic   the same with elbo="analytic" (closed-form KL)
  ppgen (engine=jax)  ppgen.fit(..., engine="jax"): the same call on ppgen's JAX engine (NumPyro SVI,
                   networks lowered to JAX, each epoch one compiled lax.scan); each call compiles
                   in its first, untimed epoch
  pyro-tutorial    Pyro's VAE tutorial loop: DataLoader + SVI + Trace_ELBO + pyro.optim.Adam,
                   distribution validation off and Pyro's inference validation at its default (on),
                   as the tutorial has them
  pyro-noval       the same loop with all of Pyro's validation off (what ppgen's loop does)
  torch            a hand-written PyTorch loop with analytic KL, data in memory, torch.optim.Adam
                   with its defaults (on CPU: the per-parameter for-loop implementation)
  torch-fused      the same loop with Adam(fused=True), the kernel ppgen's loop uses: ppgen's
                   speed over this row is the cost of the model/guide abstraction alone
  torch-compile    that step (forward + backward + Adam) under one torch.compile      [--compile]
  numpyro-jit      NumPyro SVI, the whole epoch under jax.jit (lax.scan over batches)
  ppgen-jax        ppgen's own model/guide source run by NumPyro SVI on the JAX side, the
                   networks through ppgen's torch.fx lowering (``jax_function``), whole epoch jitted:
                   the loop of the JAX engine without ppgen.fit around it (ppgen.inference.svi_jax)

Steady state only: every method is warmed up first (ppgen: each round is a
``ppgen.fit`` call that resumes the run and whose first epoch is not timed; JAX:
compile time is reported apart).
Each round runs every method for ``--epochs`` epochs, in a rotated order; the table
reports the median over ``--rounds`` rounds and the best round (on a shared machine,
the round least disturbed by other jobs), and ratios of both.

    python benchmarks/svi_vae.py              # a few minutes on an idle 2-core machine
    python benchmarks/svi_vae.py --quick      # about a minute
    python benchmarks/svi_vae.py --threads 1  # steadier ratios when the machine is shared
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _baselines as B  # noqa: E402

import ppgen  # noqa: E402

BATCH, LR, Z, HIDDEN = 256, 1e-3, 50, 400
JAX_FIT = "ppgen (engine=jax)"


# --------------------------------------------------------------------------- runners
# Each runner is ``run(epochs) -> (images, wall seconds, CPU seconds, loss per image)`` for
# steady-state epochs. CPU seconds (``time.process_time``, all threads of this process) are
# less sensitive to other jobs on a shared machine than wall time.

def ppgen_runner(data, elbo: str, engine: str = "torch"):
    """Each round continues one run (``resume=`` the last checkpoint) for 1 + ``epochs`` epochs
    and times the last ``epochs``, from the end of the first to the end of the last."""
    torch.manual_seed(0)
    pair = ppgen.models.VAE(x_shape=data.x_shape, z_dim=Z, hidden=(HIDDEN,), likelihood="bernoulli")
    holder: dict = {"checkpoint": None}

    def run(epochs: int):
        stamps: list[tuple[float, float]] = []
        done = holder["checkpoint"]["state"]["epoch"] if holder["checkpoint"] else 0
        fit = ppgen.fit(pair, data, backend="svi", epochs=done + epochs + 1, batch_size=BATCH, lr=LR, elbo=elbo,
                        engine=engine, progress=False, callback=None, resume=holder["checkpoint"],
                        on_epoch_end=lambda f: stamps.append((time.perf_counter(), time.process_time())))
        holder["checkpoint"] = fit.checkpoint()
        rows = fit.history[done + 1 :]
        images = sum(r["images_per_s"] * r["seconds"] for r in rows)
        (wall0, cpu0), (wall1, cpu1) = stamps[0], stamps[-1]
        return round(images), wall1 - wall0, cpu1 - cpu0, -rows[-1]["elbo"]

    return run


def pyro_runner(x, all_validation_off: bool, shared: dict):
    if "svi" not in shared:  # one tutorial VAE (Pyro's global param store holds one model of that name)
        shared["vae"], shared["svi"] = B.make_pyro_tutorial(Z, HIDDEN, LR)
        shared["loader"] = B.make_loader(x, BATCH)
        B.pyro_tutorial_epoch(shared["svi"], shared["loader"])  # warm-up

    def run(epochs: int):
        start, cpu, images, loss = time.perf_counter(), time.process_time(), 0, 0.0
        for _ in range(epochs):
            loss, n = B.pyro_tutorial_epoch(shared["svi"], shared["loader"], all_validation_off)
            images += n
        return images, time.perf_counter() - start, time.process_time() - cpu, loss / n

    return run


def torch_runner(x_flat, compiled: bool = False, fused: bool = False):
    torch.manual_seed(0)
    vae = B.TorchVAE(Z, HIDDEN)
    opt = torch.optim.Adam(vae.parameters(), lr=LR, **({"fused": True} if fused else {}))
    g = torch.Generator().manual_seed(0)
    step = B.compiled_torch_step(vae, opt) if compiled else None
    start = time.perf_counter()
    B.torch_epoch(vae, opt, x_flat, BATCH, g, step)  # warm-up (and compilation)
    warmup = time.perf_counter() - start

    def run(epochs: int):
        start, cpu, images, loss = time.perf_counter(), time.process_time(), 0, 0.0
        for _ in range(epochs):
            loss, n = B.torch_epoch(vae, opt, x_flat, BATCH, g, step)
            images += n
        return images, time.perf_counter() - start, time.process_time() - cpu, loss / n

    run.warmup = warmup
    return run


def jax_runner(epoch_fn, state, n: int, context=contextlib.nullcontext):
    import jax

    keys = iter(jax.random.split(jax.random.PRNGKey(1), 10_000))
    holder = {"state": state}
    steps = n // BATCH
    start = time.perf_counter()
    with context():
        holder["state"], loss = epoch_fn(holder["state"], next(keys))  # compile
        loss.block_until_ready()
    warmup = time.perf_counter() - start

    def run(epochs: int):
        start, cpu, loss = time.perf_counter(), time.process_time(), None
        with context():
            for _ in range(epochs):
                holder["state"], loss = epoch_fn(holder["state"], next(keys))
            loss = float(loss)
        return epochs * steps * BATCH, time.perf_counter() - start, time.process_time() - cpu, loss / (steps * BATCH)

    run.warmup = warmup
    return run


def ppgen_jax_epoch_fn(x_train, seed: int = 0):
    """ppgen's VAE ``model``/``guide`` trained by NumPyro SVI, the epoch under jit (see module docs)."""
    import jax
    import jax.numpy as jnp
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO

    from ppgen.inference.svi_jax import networks_read_numpyro_params

    torch.manual_seed(seed)
    pair = ppgen.models.VAE(x_shape=tuple(x_train.shape[1:]), z_dim=Z, hidden=(HIDDEN,))
    x = jnp.asarray(x_train.numpy())
    steps = len(x) // BATCH
    svi = SVI(pair.model, pair.guide, numpyro.optim.Adam(LR), Trace_ELBO())
    with networks_read_numpyro_params(pair):
        state = svi.init(jax.random.PRNGKey(seed), x[:BATCH])

    @jax.jit
    def epoch(state, key):
        idx = jax.random.permutation(key, len(x))[: steps * BATCH].reshape(steps, BATCH)

        def body(s, i):
            return svi.update(s, x[i])

        state, losses = jax.lax.scan(body, state, idx)
        return state, losses.sum()

    return epoch, state, lambda: networks_read_numpyro_params(pair)


# --------------------------------------------------------------------------- main
def measure(runners: dict, rounds: int, epochs: int) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate: no method always runs first
        for name in order:
            images, seconds, cpu, loss = runners[name](epochs)
            results[name].append({"images": images, "seconds": seconds, "cpu_seconds": cpu,
                                  "images_per_s": images / seconds, "images_per_cpu_s": images / cpu,
                                  "loss_per_image": loss})
        line = "  ".join(f"{n}={results[n][-1]['images_per_s']:,.0f}" for n in names)
        print(f"round {r + 1}/{rounds}: {line}", flush=True)
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 epochs, no torch.compile")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 7; 2 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs per method per round (default 3)")
    parser.add_argument("--compile", dest="compile", action="store_true", default=None,
                        help="also time torch.compile of the hand-written step (default on, off with --quick)")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-jax", action="store_true", help="skip the NumPyro and JAX-side rows")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default="runs/bench/svi_vae.json", help="where to write the figures")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (2 if args.quick else 7)
    epochs = args.epochs or (2 if args.quick else 3)
    use_compile = (not args.quick) if args.compile is None else args.compile

    torch.manual_seed(0)
    data = ppgen.data.load("mnist", binarize="threshold")
    x_flat = data.train.reshape(len(data.train), -1).contiguous()
    print(f"data: {data.describe()}; batch {BATCH}, Adam {LR}, 784-{HIDDEN}-{Z}")
    print(f"machine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f} at start (the machine may be shared with other jobs)", flush=True)
    if torch.get_num_threads() > 1 and os.getloadavg()[0] > (os.cpu_count() or 1):
        print("warning: more runnable jobs than cores; with several torch threads every op waits for its slowest "
              "thread, so wall-clock figures measure the other jobs. --threads 1 gives steadier ratios.", flush=True)

    shared: dict = {}
    runners = {
        "ppgen": ppgen_runner(data, "trace"),
        "ppgen-analytic": ppgen_runner(data, "analytic"),
        "pyro-tutorial": pyro_runner(data.train, False, shared),
        "pyro-noval": pyro_runner(data.train, True, shared),
        "torch": torch_runner(x_flat),
        "torch-fused": torch_runner(x_flat, fused=True),
    }
    warmups = {}
    if use_compile:
        print("compiling the torch step ...", flush=True)
        runners["torch-compile"] = torch_runner(x_flat, compiled=True)
        warmups["torch-compile"] = runners["torch-compile"].warmup
    if not args.no_jax:
        epoch, state = B.numpyro_epoch_fn(data.train, Z, HIDDEN, BATCH, LR)
        runners["numpyro-jit"] = jax_runner(epoch, state, len(x_flat))
        epoch, state, ctx = ppgen_jax_epoch_fn(data.train)
        runners["ppgen-jax"] = jax_runner(epoch, state, len(x_flat), ctx)
        runners[JAX_FIT] = ppgen_runner(data, "trace", engine="jax")
        warmups.update({k: runners[k].warmup for k in ("numpyro-jit", "ppgen-jax")})
    for name, seconds in warmups.items():
        print(f"warm-up/compile {name}: {seconds:.1f} s")

    results = measure(runners, rounds, epochs)
    summary = {name: statistics.median(r["images_per_s"] for r in rows) for name, rows in results.items()}
    report_table(results, summary)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    out = {"rounds": rounds, "epochs_per_round": epochs, "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "load_average_end": os.getloadavg()[0],
           "median_images_per_s": summary, "warmup_seconds": warmups, "raw": results,
           "ratios": ratios(summary),
           "ratios_best_round": ratios({n: max(r["images_per_s"] for r in rows) for n, rows in results.items()})}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {path}")
    return out


def ratios(summary: dict) -> dict:
    out = {"ppgen/pyro-tutorial": summary["ppgen"] / summary["pyro-tutorial"],
           "ppgen/pyro-noval": summary["ppgen"] / summary["pyro-noval"],
           "ppgen/torch": summary["ppgen"] / summary["torch"],
           "ppgen/torch-fused": summary["ppgen"] / summary["torch-fused"]}
    for name in ("torch-compile", "numpyro-jit", "ppgen-jax", JAX_FIT):
        if name in summary:
            out[f"{name}/ppgen"] = summary[name] / summary["ppgen"]
    if JAX_FIT in summary:
        out[f"{JAX_FIT}/torch"] = summary[JAX_FIT] / summary["torch"]
        out[f"{JAX_FIT}/pyro-tutorial"] = summary[JAX_FIT] / summary["pyro-tutorial"]
    return out


def report_table(results: dict, summary: dict) -> None:
    best = {name: max(r["images_per_s"] for r in rows) for name, rows in results.items()}
    base = summary["pyro-tutorial"]
    print(f"\n{'method':<19}{'images/s':>10}{'min':>9}{'best':>9}{'x pyro-tut':>12}{'img/CPU-s':>11}{'loss/img':>10}")
    for name, rows in results.items():
        speeds = [r["images_per_s"] for r in rows]
        per_cpu = statistics.median(r["images_per_cpu_s"] for r in rows)
        print(f"{name:<19}{summary[name]:>10,.0f}{min(speeds):>9,.0f}{best[name]:>9,.0f}"
              f"{summary[name] / base:>12.2f}{per_cpu:>11,.0f}{rows[-1]['loss_per_image']:>10.1f}")
    r, rb = ratios(summary), ratios(best)
    print(f"\n{'':<33}{'median':>7}{'best':>7}")
    for key, target in (("ppgen/pyro-tutorial", 1.3), ("ppgen/torch", 0.9)):
        verdict = "meets" if r[key] >= target else "MISSES"
        print(f"{key:<33}{r[key]:>7.2f}{rb[key]:>7.2f}   target >= {target}: {verdict} (median)")
    for key in ("ppgen/pyro-noval", "ppgen/torch-fused", "torch-compile/ppgen", "numpyro-jit/ppgen", "ppgen-jax/ppgen",
                f"{JAX_FIT}/ppgen", f"{JAX_FIT}/torch", f"{JAX_FIT}/pyro-tutorial"):
        if key in r:
            print(f"{key:<33}{r[key]:>7.2f}{rb[key]:>7.2f}")
    print("images/s: median over rounds of wall-clock throughput; best: the fastest round (the one least disturbed by "
          "other jobs); img/CPU-s: median per CPU-second of this process")
    print("loss/img: the last round's training loss per image (−ELBO, nats) — a check that all train the same model")


if __name__ == "__main__":
    main()
