"""DDPM on the bundled MNIST digits: sample quality at multiples of the VAE's wall time.

In one process:

1. the feature classifier of :mod:`ppgen.evaluation.samples` (cached; its test accuracy is printed);
2. the README's VAE (``gan_mnist.train_vae``: 784-400-50, Bernoulli, dynamically binarized digits, SVI on the
   torch engine, ``--epochs`` epochs); its wall time is W (``--vae-seconds`` skips it and fixes W instead);
3. one DDPM (``--denoiser unet``: ppgen's U-Net with ``--channels`` and ``--mult``; or ``mlp`` on the flattened
   pixels), L_simple, ε-prediction, T = ``--timesteps`` with the ``--schedule`` schedule, Adam ``--lr``, batch
   ``--batch``, the same dynamically binarized training digits, SVI on the torch engine. It trains one epoch at
   a time, resumed from the loop's checkpoint (bit-exact), until its training wall time reaches each multiple
   of W in ``--times``; there a copy of the pair is taken (the snapshot; evaluation time is not training time);
4. each snapshot is scored as ``gan_mnist.py`` scores the VAE and GAN rows of the README: ``--n`` samples (the
   decoder's pixel probabilities) against the 1,000 grey-level test digits in the classifier's features: FID,
   KID, IS, precision and recall, for DDIM (η = 0) with each step count in ``--ddim`` and for ancestral sampling
   with all T steps (``--n-ancestral`` samples: T denoiser passes per sample, so fewer by default); sampling
   images/s beside each row. With ``--ema`` the denoiser's weights are averaged during training (Ho et al.) and
   each snapshot is scored twice: with the trained weights and with their moving average.

Reference rows: the 500 held-out grey digits, and one Bernoulli draw of them (the floor for a model of binary
digits). The budget clock (``--clock``) is the process's CPU time by default: on a shared machine wall time measures
the other jobs; ``--clock wall`` on a quiet one. Sample grids (ppgen.plots) go to ``--out``; ``--json`` writes every
figure.

    python benchmarks/diffusion_mnist.py --times 4 --ema 0.999 --n-ancestral 100     # README rows; --times 30 too
    python benchmarks/diffusion_mnist.py --times 1,4,30 --ema 0.999 --n-ancestral 1000 # ~1 CPU-hour of sampling
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gan_mnist import train_vae  # noqa: E402

import ppgen  # noqa: E402
from ppgen import plots  # noqa: E402
from ppgen.data import load  # noqa: E402
from ppgen.evaluation.samples import feature_classifier, sample_quality  # noqa: E402
from ppgen.models.diffusion import DDPM  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--times", default="1,4", help="DDPM training wall time at each snapshot, as multiples of the "
                                                 "VAE's (comma-separated)")
    p.add_argument("--epochs", type=int, default=30, help="VAE epochs (its wall time is W)")
    p.add_argument("--vae-seconds", type=float, default=0.0, help="fix W instead of training the VAE (quick runs)")
    p.add_argument("--denoiser", choices=("unet", "mlp"), default="unet")
    p.add_argument("--channels", type=int, default=16, help="U-Net base channels")
    p.add_argument("--mult", default="1,2", help="U-Net channel multiplier per level")
    p.add_argument("--hidden", default="1024,1024,1024", help="MLP denoiser's hidden sizes")
    p.add_argument("--timesteps", type=int, default=1000)
    p.add_argument("--schedule", choices=("linear", "cosine"), default="linear")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ema", type=float, default=0.0, help="decay of the weights' moving average (0: off)")
    p.add_argument("--ddim", default="10,50,100", help="DDIM step counts (empty: none)")
    p.add_argument("--n", type=int, default=1000, help="samples per DDIM row")
    p.add_argument("--n-ancestral", type=int, default=250, help="samples for the ancestral row (0: no row)")
    p.add_argument("--raw-ddim", default="50", help="with --ema: DDIM step counts for the trained (not averaged) "
                                                     "weights (no ancestral row for them)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="budget clock: the process's CPU time (robust on a shared machine) or wall time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/diffusion_mnist"))
    p.add_argument("--json", type=Path, default=None, help="write every figure here (default: OUT/metrics.json)")
    args = p.parse_args(argv)
    args.times = sorted(float(t) for t in args.times.split(","))
    args.ddim = [int(s) for s in args.ddim.split(",") if s]
    args.raw_ddim = [int(s) for s in args.raw_ddim.split(",") if s]
    args.mult = tuple(int(m) for m in args.mult.split(","))
    args.hidden = tuple(int(h) for h in args.hidden.split(","))
    return args


def make_ddpm(args) -> DDPM:
    torch.manual_seed(args.seed)
    options = dict(denoiser=args.denoiser, timesteps=args.timesteps, schedule=args.schedule, objective="simple",
                   prediction="eps")
    if args.denoiser == "unet":
        options.update(channels=args.channels, channel_mult=args.mult)
    else:
        options.update(hidden=args.hidden)
    if args.ema > 0:
        options["ema"] = args.ema
    return DDPM(**options)


def clock(args) -> float:
    return time.process_time() if args.clock == "cpu" else time.perf_counter()


def train_until(pair, data, seconds: float, state: dict, args) -> None:
    """Train epoch by epoch (resumed from the checkpoint) until the training wall time reaches about ``seconds``:
    stop when one more epoch, at the mean epoch time so far, would overshoot by more than half an epoch."""
    while True:
        per_epoch = state["seconds"] / state["epochs"] if state["epochs"] else 0.0
        if state["epochs"] and state["seconds"] + per_epoch / 2 > seconds:
            return
        start, wall = clock(args), time.perf_counter()
        fit = ppgen.fit(pair, data, backend="svi", epochs=state["epochs"] + 1, batch_size=args.batch, lr=args.lr,
                        seed=args.seed, engine="torch", progress=False, callback=None, resume=state["checkpoint"])
        state["seconds"] += clock(args) - start
        state["wall"] += time.perf_counter() - wall
        state["epochs"] += 1
        state["checkpoint"] = fit.checkpoint()
        state["loss"] = {k: round(v, 3) for k, v in fit.history[-1].items()
                         if k not in ("epoch", "seconds", "wall", "images_per_s") and isinstance(v, float)}


def draw(pair: DDPM, n: int, steps: int | None, seed: int) -> tuple[torch.Tensor, float, float]:
    """``n`` samples (DDIM with ``steps``, or ancestral for None) in chunks of 500; images per wall second and per
    CPU second."""
    torch.manual_seed(seed)
    start, cpu = time.perf_counter(), time.process_time()
    chunks = []
    for s in range(0, n, 500):
        m = min(500, n - s)
        chunks.append(pair.generate(m) if steps is None else pair.sample_ddim(m, steps, eta=0.0))
    return torch.cat(chunks), n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def score(pair: DDPM, label: str, grey, classifier, args, ddim: list[int], ancestral: bool) -> list[dict]:
    """One row per sampler for ``pair`` (in eval mode); sample grids to ``--out``."""
    rows = []
    samplers = [(f"DDIM-{s}", s, args.n) for s in ddim]
    if ancestral and args.n_ancestral:
        samplers.append((f"ancestral-{pair.T}", None, args.n_ancestral))
    for name, steps, n in samplers:
        samples, rate, cpu_rate = draw(pair, n, steps, args.seed)
        row = {"weights": label, "sampler": name, "images_per_s": rate, "images_per_cpu_s": cpu_rate,
               **sample_quality(samples, grey, classifier=classifier, seed=args.seed)}
        rows.append(row)
        tag = f"{label}_{name}".lower().replace(" ", "_").replace("×", "x")
        plots.sample_grid(samples[:64], args.out / f"samples_{tag}.png", f"DDPM {label}, {name}")
        print(f"  {label:<16} {name:<14} FID {row['fid']:7.2f}  KID×1e3 {1e3 * row['kid']:7.1f}  IS {row['is']:5.2f}  "
              f"P {row['precision']:.3f}  R {row['recall']:.3f}  ({n} samples, {rate:,.0f} img/s, {cpu_rate:,.0f} img/CPU-s)",
              flush=True)
    return rows


def snapshot(pair: DDPM, times: float, state: dict, grey, classifier, args) -> list[dict]:
    """Score a copy of ``pair``: its trained weights and, with ``--ema``, their moving average."""
    pair = copy.deepcopy(pair).eval()
    print(f"DDPM at {times:g}W: {state['seconds']:.1f} s ({args.clock}; {state['wall']:.0f} s wall), "
          f"{state['epochs']} epochs, loss {state['loss']}", flush=True)
    average = getattr(pair, "ema", None)
    variants = [("trained", None, args.ddim, True)] if average is None else [
        ("EMA", average, args.ddim, True), ("trained", None, args.raw_ddim, False)]
    rows = []
    for name, weights, ddim, ancestral in variants:
        pair.ema = weights
        for row in score(pair, f"{times:g}W {name}", grey, classifier, args, ddim, ancestral):
            rows.append({**row, "times": times, "seconds": state["seconds"], "wall_seconds": state["wall"],
                         "epochs": state["epochs"], "ema": weights is not None})
    return rows


def reference_rows(grey, classifier, seed: int) -> dict:
    """The held-out grey digits, and one Bernoulli draw of them (the floor for a model of binary digits)."""
    torch.manual_seed(seed)
    rows = {"real (val)": sample_quality(grey.val, grey, classifier=classifier, seed=seed),
            "binarized real (val)": sample_quality(torch.bernoulli(grey.val.float()), grey, classifier=classifier,
                                                   seed=seed)}
    for name, r in rows.items():
        print(f"{name}: FID {r['fid']:.2f}, KID×1e3 {1e3 * r['kid']:.0f}, IS {r['is']:.2f}, P {r['precision']:.3f}, "
              f"R {r['recall']:.3f} ({r['n_fake']} digits)", flush=True)
    return rows


def table(rows: list[dict], references: dict, vae_row: dict, vae_seconds: float, args) -> str:
    lines = ["| | FID | KID×10³ | IS | precision | recall | samples | img/s | img/CPU-s |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {r['fid']:.2f} | {1e3 * r['kid']:.0f} | {r['is']:.2f} | {r['precision']:.3f} | "
              f"{r['recall']:.3f} | {r['n_fake']} | | |" for name, r in references.items()]
    lines += [f"| VAE, {args.epochs} epochs ({vae_seconds:.0f} s) | {vae_row['fid']:.2f} | {1e3 * vae_row['kid']:.0f} | "
             f"{vae_row['is']:.2f} | {vae_row['precision']:.3f} | {vae_row['recall']:.3f} | {vae_row['n_fake']} | | |"]
    for r in rows:
        weights = " + EMA" if r["ema"] else ""
        lines.append(f"| DDPM, {r['times']:g}× ({r['seconds']:.0f} s, {r['epochs']} ep){weights}, {r['sampler']} | "
                     f"{r['fid']:.2f} | {1e3 * r['kid']:.0f} | {r['is']:.2f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['n_fake']} | {r['images_per_s']:,.1f} | {r['images_per_cpu_s']:,.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    grey = load("mnist", binarize=None, seed=args.seed)  # the reference: same split, grey levels
    classifier, accuracy = feature_classifier(grey)
    print(f"feature classifier: test accuracy {accuracy:.4f}", flush=True)

    references = reference_rows(grey, classifier, args.seed)
    if args.vae_seconds > 0:
        vae_seconds, vae_row = args.vae_seconds, None
        print(f"W fixed at {vae_seconds:g} s (no VAE trained)", flush=True)
    else:
        cpu = time.process_time()
        vae, vae_wall = train_vae(args.epochs, args.seed)
        vae_seconds = time.process_time() - cpu if args.clock == "cpu" else vae_wall
        vae.eval()
        vae_row = sample_quality(vae, grey, n=args.n, classifier=classifier, seed=args.seed)
        print(f"VAE: {args.epochs} epochs in {vae_seconds:.1f} s ({args.clock}; {vae_wall:.1f} s wall) = W; FID {vae_row['fid']:.2f}, recall "
              f"{vae_row['recall']:.3f}", flush=True)

    data = load("mnist", seed=args.seed)  # dynamically binarized, as the VAE's
    pair = make_ddpm(args)
    params = sum(p.numel() for p in pair.denoiser.parameters())
    print(f"DDPM: {args.denoiser} ({params:,} weights), T {args.timesteps} {args.schedule}, batch {args.batch}, "
          f"Adam {args.lr:g}, EMA {args.ema:g}, threads {torch.get_num_threads()}", flush=True)
    state: dict = {"seconds": 0.0, "wall": 0.0, "epochs": 0, "checkpoint": None, "loss": None}
    rows: list[dict] = []
    result = {"settings": {k: str(v) for k, v in vars(args).items()}, "classifier_accuracy": accuracy,
              "vae_seconds": vae_seconds, "clock": args.clock, "vae": vae_row,
              "references": references, "rows": rows}
    out_json = args.json or args.out / "metrics.json"
    for times in args.times:
        train_until(pair, data, times * vae_seconds, state, args)
        rows.extend(snapshot(pair, times, state, grey, classifier, args))
        out_json.write_text(json.dumps(result, indent=1))
    if vae_row is not None:
        print("\n" + table(rows, references, vae_row, vae_seconds, args))
    print(f"wrote {out_json} and sample grids in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
