"""DDPM: training speed beside a plain PyTorch DDPM loop, sampling speed, and mode coverage.

``speed``: one process, one denoiser, one batch size. Images per second of

  ppgen (engine=torch)  ppgen.fit(DDPM(...), data, engine="torch") on L_simple (the objective hook)
  ppgen (engine=jax)    the same call on the JAX engine (the denoiser lowered; each epoch one compiled scan)
  torch                 the loop a user writes after the diffusers / denoising-diffusion-pytorch examples: data in
                        memory, t ~ U{1..T}, x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, ‖ε − ε_θ(x_t, t)‖², Adam (fused), the
                        *same* denoiser module and schedule

Both engines are measured the same way, in one process: one ``ppgen.fit`` whose callback runs an epoch of the plain
loop after each of ppgen's epochs, ``--rounds`` rounds after a warm-up round (JAX compilation); each round's ratio
is ppgen's images/s over the mean of the plain epochs on either side, and the median ratio is reported with its
quartiles, range and a bootstrap 95% interval (as ``vqvae_speed.py``). Then images per second of ancestral
sampling (T denoiser calls) and DDIM (``--ddim`` steps each).

``modes``: ring-8 / grid-25, several seeds, the GAN table's protocol (2,500 samples,
:func:`ppgen.evaluation.modes.evaluate_pair`), no rejection.

    python benchmarks/diffusion.py speed --data digits --threads 1          # ~15 s on a 2-core CPU
    python benchmarks/diffusion.py speed --data mnist --denoiser unet --device cuda --rounds 10  # on a GPU
    python benchmarks/diffusion.py modes --seeds 3 --epochs 30
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import ppgen
from ppgen.data import load
from ppgen.evaluation.modes import evaluate_pair, summarize
from ppgen.inference.svi import make_adam
from ppgen.models.diffusion import DDPM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _baselines import spread  # noqa: E402


def make_pair(x_shape, args, likelihood: str = "bernoulli") -> DDPM:
    return DDPM(x_shape, likelihood=likelihood, hidden=tuple(args.hidden), timesteps=args.timesteps,
                denoiser=args.denoiser, channels=args.channels, sampler=args.sampler, sample_steps=args.sample_steps,
                ema=args.ema)


def torch_loop(pair: DDPM, data, batch: int, lr: float, device: str, ema: float = 0.0) -> Callable[[int], float]:
    """The plain PyTorch L_simple loop on a copy of ``pair.denoiser`` (the same weights and schedule): a function
    that runs epoch ``index`` and returns its images/s. Its examples are ``data.train_epoch(index)``, ppgen's
    (a fresh binarization per epoch where the data set has dynamic binarization, drawn inside the timed epoch
    as ppgen's loop draws it). With ``ema`` > 0 it keeps a moving average of the weights after every step, as
    the diffusers training examples do (``EMAModel.step``), so ppgen's ``--ema`` is compared like for like."""
    net = copy.deepcopy(pair.denoiser).to(device)
    opt = make_adam(net.parameters(), lr)
    params = list(net.parameters())
    shadow = [p.detach().clone() for p in params] if ema > 0 else []
    alpha_bar = torch.as_tensor(pair.alpha_bar, dtype=torch.float32, device=device)
    k = len(pair.x_shape)

    def epoch(index: int) -> float:
        g = torch.Generator().manual_seed(index)
        start = time.perf_counter()
        x = data.train_epoch(index).to(device)
        order = torch.randperm(len(x), generator=g).to(device)
        for i in range(0, len(x) - batch + 1, batch):
            x0 = 2 * x[order[i:i + batch]] - 1
            t = torch.randint(1, pair.T + 1, (batch,), device=device)
            ab = alpha_bar[t].reshape((batch,) + (1,) * k)
            eps = torch.randn_like(x0)
            loss = ((eps - net(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t.float())) ** 2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if shadow:
                with torch.no_grad():
                    torch._foreach_lerp_(shadow, params, 1.0 - ema)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (len(x) // batch) * batch / (time.perf_counter() - start)

    return epoch


def alternate(pair: DDPM, data, engine: str, args) -> dict:
    """One ``ppgen.fit`` of 1 + ``--rounds`` epochs whose callback runs one epoch of the plain loop after each of
    ppgen's: the sequence O_0 P_0 O_1 P_1 …, O_0 and P_0 the warm-up (JAX compilation). Round r ≥ 1 gives the ratio
    O_r / ((P_{r−1} + P_r) / 2), ppgen's epoch against the mean of the plain epochs on either side, so a trend in
    the machine's load falls on both alike."""
    plain = torch_loop(pair, data, args.batch, args.lr, args.device, args.ema)
    theirs: list[float] = []

    def callback(fit) -> None:
        theirs.append(plain(fit.state.epoch))

    fit = ppgen.fit(pair, data, epochs=args.rounds + 1, batch_size=args.batch, lr=args.lr, engine=engine,
                    device=args.device, callback=callback, progress=False)
    ours = [r["images_per_s"] for r in fit.history]
    ratios = [ours[r] / ((theirs[r - 1] + theirs[r]) / 2) for r in range(1, len(ours))]
    s = spread(ratios)
    name = f"ppgen (engine={engine})"
    print(f"  {name:22s} {statistics.median(ours[1:]):8.0f} img/s, plain PyTorch loop {statistics.median(theirs[1:]):8.0f}"
          f" img/s (medians); ratio per round: median {s['median']:.3f}, quartiles {s['q1']:.3f}–{s['q3']:.3f}, "
          f"range {s['min']:.3f}–{s['max']:.3f}, bootstrap 95% interval of the median {s['ci95'][0]:.3f}–"
          f"{s['ci95'][1]:.3f} ({s['rounds']} rounds)", flush=True)
    return {"ppgen": statistics.median(ours[1:]), "plain": statistics.median(theirs[1:]), "ratio": s}


def speed(args) -> dict:
    data = load(args.data)
    out: dict = {"data": args.data, "denoiser": args.denoiser, "T": args.timesteps, "batch": args.batch,
                 "torch_threads": torch.get_num_threads()}
    print(data.describe(), f"| {args.denoiser} denoiser, T {args.timesteps}, batch {args.batch}, L_simple, torch "
          f"threads {torch.get_num_threads()}, {args.rounds} alternating rounds", flush=True)
    for engine in args.engines:
        torch.manual_seed(0)
        out[f"train_{engine}"] = alternate(make_pair(data.x_shape, args), data, engine, args)
    torch.manual_seed(0)
    pair = make_pair(data.x_shape, args).to(args.device).eval()
    sampling = {}
    for name, fn in (("ancestral", lambda: pair.generate(args.samples)),
                     (f"ddim-{args.ddim}", lambda: pair.sample_ddim(args.samples, steps=args.ddim))):
        fn()  # warm-up
        start = time.perf_counter()
        fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        sampling[name] = args.samples / (time.perf_counter() - start)
        print(f"  sampling {name:12s} {sampling[name]:10.1f} images/s ({args.samples} at once)")
    out["sample_images_per_s"] = sampling
    return out


def with_sampler(pair: DDPM, sampler: str) -> DDPM:
    """``pair`` sampling by ``sampler``: "ancestral" (all T steps) or "ddim-S" (S steps, η = 0); a prefix "raw-"
    samples with the trained weights instead of their moving average (when ``--ema`` is on)."""
    raw = sampler.startswith("raw-")
    name = sampler.removeprefix("raw-")
    steps = int(name[5:]) if name.startswith("ddim-") else 0
    config = {**pair.config_dict(), "sampler": "ddim" if steps else "ancestral", "sample_steps": steps}
    other = type(pair).from_config(config)
    other.load_state_dict(pair.state_dict())
    return other.train(raw)  # training mode computes with the trained weights, evaluation mode with the average


def modes(args) -> dict:
    out = {}
    samplers = args.samplers or [f"ddim-{args.sample_steps or args.timesteps}" if args.sampler == "ddim"
                                 else "ancestral"]
    for name in args.mixtures:
        data = load(name)
        reports: dict[str, list] = {s: [] for s in samplers}
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            torch.manual_seed(seed)
            pair = make_pair(data.x_shape, args, likelihood="gaussian")
            start = time.perf_counter()
            ppgen.fit(pair, data, epochs=args.epochs, batch_size=args.batch, lr=args.lr, engine=args.engine,
                      seed=seed, callback=None, progress=False)
            seconds = round(time.perf_counter() - start, 1)
            for sampler in samplers:
                report = evaluate_pair(with_sampler(pair, sampler), name, seed=seed)
                report["seconds"] = seconds
                reports[sampler].append(report)
                print(f"  {name} seed {seed} {sampler}: {report['modes']}/{report['n_modes']} modes, high quality "
                      f"{100 * report['high_quality']:.1f}%, reverse KL {report['reverse_kl']:.3f} (trained in "
                      f"{seconds} s)", flush=True)
        out[name] = {}
        for sampler, runs in reports.items():
            s = summarize(runs)
            print(f"{name} {sampler}: modes {s['modes']:.1f} ± {s['modes_se']:.1f}, high quality "
                  f"{100 * s['high_quality']:.1f} ± {100 * s['high_quality_se']:.1f}% over {s['seeds']} seeds",
                  flush=True)
            out[name][sampler] = {"summary": s, "runs": [{k: r[k] for k in ("modes", "high_quality", "reverse_kl",
                                                                             "seconds")} for r in runs]}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["speed", "modes"])
    p.add_argument("--data", default="digits")
    p.add_argument("--mixtures", nargs="+", default=["ring8", "grid25"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed-start", type=int, default=0, help="modes: the first seed (split seeds over processes)")
    p.add_argument("--samplers", nargs="+", help="modes: evaluate each trained pair with each of these: ancestral, "
                                                  "ddim-S; raw-... with the trained weights instead of their average")
    p.add_argument("--denoiser", choices=["mlp", "unet"], default="mlp")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--timesteps", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=4, help="modes: training epochs")
    p.add_argument("--rounds", type=int, default=40, help="speed: alternating rounds (one epoch of each loop)")
    p.add_argument("--engines", nargs="+", default=["torch", "jax"], choices=["torch", "jax"], help="speed")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--engine", default="jax", help="modes: the SVI engine")
    p.add_argument("--sampler", default="ancestral", choices=["ancestral", "ddim"], help="modes: how samples are drawn")
    p.add_argument("--sample-steps", type=int, default=0, help="modes: DDIM steps (0: T)")
    p.add_argument("--ema", type=float, default=0.0, help="decay of the weights' moving average sampled with (0: off)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--samples", type=int, default=64, help="speed: images drawn at once")
    p.add_argument("--ddim", type=int, default=50, help="speed: DDIM steps")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    for sampler in args.samplers or []:
        name = sampler.removeprefix("raw-")
        if name != "ancestral" and not (name.startswith("ddim-") and name[5:].isdigit()
                                        and 1 <= int(name[5:]) <= args.timesteps):
            p.error(f"--samplers: unknown sampler {sampler!r}; give ancestral or ddim-S with 1 <= S <= --timesteps "
                    f"({args.timesteps}), each optionally prefixed raw-")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = speed(args) if args.what == "speed" else modes(args)
    result["argv"] = argv
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
    return result


if __name__ == "__main__":
    main()
