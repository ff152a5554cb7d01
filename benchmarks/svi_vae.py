"""Speed of ppgen's SVI training beside plain Pyro, PyTorch and NumPyro loops.

One process, one model: the 784-400-50 MLP VAE (softplus hidden units, Bernoulli
likelihood), batch 256, Adam 1e-3, on the bundled MNIST training split binarized at
0.5 (``ppgen.data.load("mnist", binarize="threshold")``). Images per second of:

  ppgen (engine=torch)    ppgen.fit(pair, data, backend="svi", engine="torch") — Pyro SVI, default
                   Trace_ELBO, progress off
  ppgen-analytic (torch)  the same with elbo="analytic" (closed-form KL)
  ppgen (default: auto)   ppgen.fit(...) with the default engine="auto", which picks the JAX engine for
                   this pair (NumPyro SVI, networks lowered to JAX, each epoch one compiled lax.scan);
                   each call compiles in its first, untimed epoch. The table's last line names the
                   engine each ppgen.fit row used. With --hooks also "+hook": an on_epoch_end hook, so
                   the weights are synced to torch and a checkpoint built every epoch (as `ppgen train`)
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
  ppgen-jax        ppgen's own model/guide source run by NumPyro SVI on the JAX side (the NumPyro
                   backend: pyro.module is a numpyro.param site holding the weights, the networks their
                   torch.fx lowering), the epoch jitted exactly as numpyro-jit's: what separates it from
                   numpyro-jit is the model code and the lowering
  ppgen-jax-engine the JAX engine's own compiled epoch (svi_jax.scaled_model_guide + make_epoch_fn: β
                   handler, data and per-step β as arguments, finiteness check) without the loop
                   around it: what separates it from "ppgen (default: auto)" is ppgen.fit's loop

Steady state only: every method is warmed up first (ppgen: each round is a
``ppgen.fit`` call that resumes the run and times whole epochs of its loop from the
start of its second epoch; JAX: compile time is reported apart).
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
TORCH_FIT = "ppgen (engine=torch)"
AUTO_FIT = "ppgen (default: auto)"


# --------------------------------------------------------------------------- runners
# Each runner is ``run(epochs) -> (images, wall seconds, CPU seconds, loss per image)`` for
# steady-state epochs. CPU seconds (``time.process_time``, all threads of this process) are
# less sensitive to other jobs on a shared machine than wall time.

class _EpochStamps:
    """Time stamps at the start of every epoch of ``ppgen.fit``, taken where the loop opens the epoch's
    progress bar (:func:`ppgen.inference.loop.progress_bar`). Unlike an ``on_epoch_end`` hook this adds
    nothing to the loop: with a hook (or a callback) the loop copies the weights back into the torch
    modules and builds the checkpoint every epoch, which a plain ``ppgen.fit`` call does not do."""

    def __init__(self):
        from ppgen.inference import loop

        self.loop, self.original, self.stamps = loop, loop.progress_bar, None

    def bar(self, *args, **kwargs):
        if self.stamps is not None:
            self.stamps.append((time.perf_counter(), time.process_time()))
        return self.original(*args, **kwargs)

    @contextlib.contextmanager
    def recording(self):
        self.stamps, self.loop.progress_bar = [], self.bar
        try:
            yield self.stamps
        finally:
            self.loop.progress_bar, self.stamps = self.original, None


def ppgen_runner(data, elbo: str, engine: str = "torch", on_epoch_end: bool = False, device: str = "cpu"):
    """Each round continues one run (``resume=`` the last checkpoint) for 2 + ``epochs`` epochs and times
    ``epochs`` whole epochs of the loop, from the start of the second to the start of the last: the first
    (compilation on the JAX engine) and the end of the call (the weights copied back, the checkpoint) are
    not timed. ``on_epoch_end=True`` times the loop as ``ppgen train`` runs it (a hook every epoch, so the
    weights are synced and the checkpoint built every epoch). ``run.engines``: the engine each call used."""
    torch.manual_seed(0)
    pair = ppgen.models.VAE(x_shape=data.x_shape, z_dim=Z, hidden=(HIDDEN,), likelihood="bernoulli")
    holder: dict = {"checkpoint": None}
    recorder = _EpochStamps()

    def run(epochs: int):
        done = holder["checkpoint"]["state"]["epoch"] if holder["checkpoint"] else 0
        with recorder.recording() as stamps:
            fit = ppgen.fit(pair, data, backend="svi", epochs=done + epochs + 2, batch_size=BATCH, lr=LR,
                            elbo=elbo, engine=engine, progress=False, callback=None, resume=holder["checkpoint"],
                            device=device,
                            announce=lambda message: None,
                            on_epoch_end=(lambda f: None) if on_epoch_end else None)
        holder["checkpoint"] = fit.checkpoint()
        run.engines.append(fit.options["engine"])
        rows = fit.history[done + 1 : done + 1 + epochs]
        images = sum(r["images_per_s"] * r["seconds"] for r in rows)
        (wall0, cpu0), (wall1, cpu1) = stamps[1], stamps[1 + epochs]
        return round(images), wall1 - wall0, cpu1 - cpu0, -rows[-1]["elbo"]

    run.engines = []
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
    vae = B.TorchVAE(Z, HIDDEN).to(x_flat.device)
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


def jax_runner(epoch_fn, state, n: int):
    import jax

    keys = iter(jax.random.split(jax.random.PRNGKey(1), 10_000))
    holder = {"state": state}
    steps = n // BATCH
    start = time.perf_counter()
    holder["state"], loss = epoch_fn(holder["state"], next(keys))  # compile
    loss.block_until_ready()
    warmup = time.perf_counter() - start

    def run(epochs: int):
        start, cpu, loss = time.perf_counter(), time.process_time(), None
        for _ in range(epochs):
            holder["state"], loss = epoch_fn(holder["state"], next(keys))
        loss = float(loss)
        return epochs * steps * BATCH, time.perf_counter() - start, time.process_time() - cpu, loss / (steps * BATCH)

    run.warmup = warmup
    return run


def ppgen_jax_epoch_fn(x_train, seed: int = 0, engine_epoch: bool = False):
    """ppgen's VAE ``model``/``guide`` trained by NumPyro SVI, the epoch under jit, without ``ppgen.fit``.

    ``engine_epoch=False`` (row ``ppgen-jax``): the pair's own model and guide run on the NumPyro
    backend (``pyro.module`` is a ``numpyro.param`` site holding the weights, the networks their
    torch.fx lowering), the epoch written as ``numpyro-jit`` writes it (data closed over). ``True``
    (row ``ppgen-jax-engine``): the JAX engine's own pieces — :func:`~ppgen.inference.svi_jax.scaled_model_guide`
    (β handler), its ELBO, and :func:`~ppgen.inference.svi_jax.make_epoch_fn` (data and per-step β as
    arguments, finiteness check) — i.e. what ``engine.epoch`` runs, without the loop around it.
    """
    import jax
    import jax.numpy as jnp
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO

    from ppgen.inference import svi_jax
    from ppgen.ppl import backend, make_elbo

    torch.manual_seed(seed)
    pair = ppgen.models.VAE(x_shape=tuple(x_train.shape[1:]), z_dim=Z, hidden=(HIDDEN,))
    x = jnp.asarray(x_train.numpy())
    steps = len(x) // BATCH
    if engine_epoch:
        model, guide = svi_jax.scaled_model_guide(pair)
        svi = SVI(model, guide, numpyro.optim.Adam(LR), make_elbo("trace", backend_name="numpyro"))
        state = svi.init(jax.random.PRNGKey(seed), x[:BATCH], 1.0)
        epoch_fn, betas = svi_jax.make_epoch_fn(svi, len(x), steps, BATCH), jnp.ones(steps, dtype=jnp.float32)

        def epoch(state, key):
            state, losses, _finite = epoch_fn(state, x, key, betas)
            return state, losses.sum()

        return epoch, state

    def model(batch):
        with backend("numpyro"):
            pair.model(batch)

    def guide(batch):
        with backend("numpyro"):
            pair.guide(batch)

    svi = SVI(model, guide, numpyro.optim.Adam(LR), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(seed), x[:BATCH])

    @jax.jit
    def epoch(state, key):
        idx = jax.random.permutation(key, len(x))[: steps * BATCH].reshape(steps, BATCH)

        def body(s, i):
            return svi.update(s, x[i])

        state, losses = jax.lax.scan(body, state, idx)
        return state, losses.sum()

    return epoch, state


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
    parser.add_argument("--hooks", action="store_true",
                        help="also time the default ppgen.fit with an on_epoch_end hook (as `ppgen train` runs it)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default="runs/bench/svi_vae.json", help="where to write the figures")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: the ppgen torch-engine and plain torch rows "
                        "(the Pyro tutorial rows run on CPU only and are left out on cuda; the JAX rows run on JAX's "
                        "default device)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (2 if args.quick else 7)
    epochs = args.epochs or (2 if args.quick else 3)
    use_compile = (not args.quick) if args.compile is None else args.compile

    torch.manual_seed(0)
    data = ppgen.data.load("mnist", binarize="threshold")
    x_flat = data.train.reshape(len(data.train), -1).contiguous().to(args.device)
    print(f"data: {data.describe()}; batch {BATCH}, Adam {LR}, 784-{HIDDEN}-{Z}")
    print(f"machine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f} at start (the machine may be shared with other jobs)", flush=True)
    if torch.get_num_threads() > 1 and os.getloadavg()[0] > (os.cpu_count() or 1):
        print("warning: more runnable jobs than cores; with several torch threads every op waits for its slowest "
              "thread, so wall-clock figures measure the other jobs. --threads 1 gives steadier ratios.", flush=True)

    shared: dict = {}
    runners = {
        TORCH_FIT: ppgen_runner(data, "trace", engine="torch", device=args.device),
        "ppgen-analytic (torch)": ppgen_runner(data, "analytic", engine="torch", device=args.device),
        "torch": torch_runner(x_flat),
        "torch-fused": torch_runner(x_flat, fused=True),
    }
    if args.device == "cpu":
        runners["pyro-tutorial"] = pyro_runner(data.train, False, shared)
        runners["pyro-noval"] = pyro_runner(data.train, True, shared)
    warmups = {}
    if use_compile:
        print("compiling the torch step ...", flush=True)
        runners["torch-compile"] = torch_runner(x_flat, compiled=True)
        warmups["torch-compile"] = runners["torch-compile"].warmup
    if not args.no_jax:
        runners["numpyro-jit"] = jax_runner(*B.numpyro_epoch_fn(data.train, Z, HIDDEN, BATCH, LR), len(x_flat))
        runners["ppgen-jax"] = jax_runner(*ppgen_jax_epoch_fn(data.train), len(x_flat))
        runners["ppgen-jax-engine"] = jax_runner(*ppgen_jax_epoch_fn(data.train, engine_epoch=True), len(x_flat))
        warmups.update({k: runners[k].warmup for k in ("numpyro-jit", "ppgen-jax", "ppgen-jax-engine")})
    runners[AUTO_FIT] = ppgen_runner(data, "trace", engine="auto", device=args.device)
    if args.hooks:
        runners[AUTO_FIT + " +hook"] = ppgen_runner(data, "trace", engine="auto", on_epoch_end=True, device=args.device)
    for name, seconds in warmups.items():
        print(f"warm-up/compile {name}: {seconds:.1f} s")

    results = measure(runners, rounds, epochs)
    summary = {name: statistics.median(r["images_per_s"] for r in rows) for name, rows in results.items()}
    engines = {name: sorted(set(r.engines)) for name, r in runners.items() if hasattr(r, "engines")}
    report_table(results, summary, engines)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    out = {"rounds": rounds, "epochs_per_round": epochs, "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "load_average_end": os.getloadavg()[0],
           "median_images_per_s": summary, "warmup_seconds": warmups, "engines": engines, "raw": results,
           "ratios": ratios(summary),
           "ratios_best_round": ratios({n: max(r["images_per_s"] for r in rows) for n, rows in results.items()})}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {path}")
    return out


# (ratio name, numerator, denominator, the figure before the engine redesign on a quiet 2-core machine, goal)
RATIOS = (
    ("torch engine / torch loop", TORCH_FIT, "torch", 0.87, 0.9),
    ("torch engine / pyro-tutorial", TORCH_FIT, "pyro-tutorial", 1.69, 1.3),
    ("torch engine / torch-fused", TORCH_FIT, "torch-fused", None, None),
    ("torch engine / pyro-noval", TORCH_FIT, "pyro-noval", None, None),
    ("torch-compile / torch engine", "torch-compile", TORCH_FIT, None, None),
    ("default (auto) / numpyro-jit", AUTO_FIT, "numpyro-jit", 0.79, 0.95),
    ("ppgen-jax (bare) / numpyro-jit", "ppgen-jax", "numpyro-jit", 0.92, None),
    ("ppgen-jax-engine / numpyro-jit", "ppgen-jax-engine", "numpyro-jit", None, None),
    ("default (auto) / ppgen-jax-engine", AUTO_FIT, "ppgen-jax-engine", None, None),
    ("default +hook / default", AUTO_FIT + " +hook", AUTO_FIT, None, None),
    ("default (auto) / torch engine", AUTO_FIT, TORCH_FIT, None, None),
    ("default (auto) / torch loop", AUTO_FIT, "torch", None, None),
    ("default (auto) / pyro-tutorial", AUTO_FIT, "pyro-tutorial", None, None),
)


def ratios(speeds: dict) -> dict:
    return {name: speeds[a] / speeds[b] for name, a, b, _, _ in RATIOS if a in speeds and b in speeds}


def report_table(results: dict, summary: dict, engines: dict) -> None:
    best = {name: max(r["images_per_s"] for r in rows) for name, rows in results.items()}
    base = summary["pyro-tutorial"]
    print(f"\n{'method':<27}{'images/s':>10}{'min':>9}{'best':>9}{'x pyro-tut':>12}{'img/CPU-s':>11}{'loss/img':>10}")
    for name, rows in results.items():
        speeds = [r["images_per_s"] for r in rows]
        per_cpu = statistics.median(r["images_per_cpu_s"] for r in rows)
        print(f"{name:<27}{summary[name]:>10,.0f}{min(speeds):>9,.0f}{best[name]:>9,.0f}"
              f"{summary[name] / base:>12.2f}{per_cpu:>11,.0f}{rows[-1]['loss_per_image']:>10.1f}")
    r, rb = ratios(summary), ratios(best)
    print(f"\n{'ratio':<36}{'median':>7}{'best':>7}{'before':>8}")
    for key, _, _, before, goal in RATIOS:
        if key not in r:
            continue
        line = f"{key:<36}{r[key]:>7.2f}{rb[key]:>7.2f}{before if before else '':>8}"
        if goal:
            line += f"   goal >= {goal}: {'meets' if r[key] >= goal else 'MISSES'} (median)"
        print(line)
    print("engines used by the ppgen.fit rows: " + "; ".join(f"{n}: {', '.join(e)}" for n, e in engines.items()))
    print("images/s: median over rounds of wall-clock throughput; best: the fastest round (the one least disturbed by "
          "other jobs); img/CPU-s: median per CPU-second of this process; before: the ratio measured before the "
          "engine redesign (quiet 2-core machine)")
    print("loss/img: the last round's training loss per image (−ELBO, nats) — a check that all train the same model")


if __name__ == "__main__":
    main()
