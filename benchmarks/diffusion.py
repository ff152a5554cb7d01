"""DDPM (issue 11): training speed beside a plain PyTorch DDPM loop, sampling speed, and mode coverage.

``speed``: one process, one denoiser, one batch size. Images per second of

  ppgen (engine=torch)  ppgen.fit(DDPM(...), data, engine="torch") on L_simple (the objective hook)
  ppgen (engine=jax)    the same call on the JAX engine (the denoiser lowered; each epoch one compiled scan)
  torch                 the loop a user writes after the diffusers / denoising-diffusion-pytorch examples: data in
                        memory, t ~ U{1..T}, x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, ‖ε − ε_θ(x_t, t)‖², Adam (fused), the
                        *same* denoiser module and schedule

Every method's first epoch (warm-up, JAX compilation) is left out; the median epoch of the rest is reported, and
the ratios ppgen/torch. Then images per second of ancestral sampling (T denoiser calls) and DDIM (``--ddim``
steps each). ``modes``: ring-8 / grid-25, several seeds, the GAN table's protocol (2,500 samples,
:func:`ppgen.evaluation.modes.evaluate_pair`), no rejection.

    python benchmarks/diffusion.py speed --data digits --epochs 4            # ~1 min on a 2-core CPU
    python benchmarks/diffusion.py speed --data mnist --denoiser unet --device cuda   # on a GPU
    python benchmarks/diffusion.py modes --seeds 3 --epochs 30
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

import ppgen
from ppgen.data import load
from ppgen.evaluation.modes import evaluate_pair, summarize
from ppgen.inference.svi import make_adam
from ppgen.models.diffusion import DDPM


def make_pair(x_shape, args, likelihood: str = "bernoulli") -> DDPM:
    return DDPM(x_shape, likelihood=likelihood, hidden=tuple(args.hidden), timesteps=args.timesteps,
                denoiser=args.denoiser, channels=args.channels)


def torch_loop_speed(pair: DDPM, x: torch.Tensor, epochs: int, batch: int, lr: float, device: str) -> list[float]:
    """Images/s per epoch of the plain PyTorch L_simple loop on ``pair.denoiser`` (the first epoch included)."""
    net = pair.denoiser.to(device)
    x = x.to(device)
    opt = make_adam(net.parameters(), lr)
    alpha_bar = torch.as_tensor(pair.alpha_bar, dtype=torch.float32, device=device)
    k = len(pair.x_shape)
    speeds = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(x), device=device)
        for i in range(0, len(x) - batch + 1, batch):
            x0 = 2 * x[order[i:i + batch]] - 1
            t = torch.randint(1, pair.T + 1, (batch,), device=device)
            ab = alpha_bar[t].reshape((batch,) + (1,) * k)
            eps = torch.randn_like(x0)
            loss = ((eps - net(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t.float())) ** 2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        speeds.append((len(x) // batch) * batch / (time.perf_counter() - start))
    return speeds


def speed(args) -> dict:
    data = load(args.data)
    x = data.train_epoch(0)
    out: dict = {"data": args.data, "denoiser": args.denoiser, "T": args.timesteps, "batch": args.batch}
    rows = {}
    for engine in ("torch", "jax"):
        torch.manual_seed(0)
        pair = make_pair(data.x_shape, args)
        fit = ppgen.fit(pair, data, epochs=args.epochs, batch_size=args.batch, lr=args.lr, engine=engine,
                        device=args.device, callback=None, progress=False)
        rows[f"ppgen (engine={engine})"] = [r["images_per_s"] for r in fit.history]
    torch.manual_seed(0)
    rows["torch"] = torch_loop_speed(make_pair(data.x_shape, args), x, args.epochs, args.batch, args.lr, args.device)
    med = {name: statistics.median(v[1:]) for name, v in rows.items()}
    for name, v in med.items():
        print(f"  {name:22s} {v:10.0f} img/s (median of epochs 2..{args.epochs})")
    for engine in ("torch", "jax"):
        print(f"  ratio ppgen (engine={engine}) / torch loop: {med[f'ppgen (engine={engine})'] / med['torch']:.3f}")
    out["train_images_per_s"] = med
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


def modes(args) -> dict:
    out = {}
    for name in args.mixtures:
        data = load(name)
        reports = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            pair = make_pair(data.x_shape, args, likelihood="gaussian")
            start = time.perf_counter()
            ppgen.fit(pair, data, epochs=args.epochs, batch_size=args.batch, lr=args.lr, engine=args.engine,
                      seed=seed, callback=None, progress=False)
            pair.eval()
            report = evaluate_pair(pair, name, seed=seed)
            report["seconds"] = round(time.perf_counter() - start, 1)
            reports.append(report)
            print(f"  {name} seed {seed}: {report['modes']}/{report['n_modes']} modes, high quality "
                  f"{100 * report['high_quality']:.1f}%, reverse KL {report['reverse_kl']:.3f} ({report['seconds']} s)")
        s = summarize(reports)
        print(f"{name}: modes {s['modes']:.1f} ± {s['modes_se']:.1f}, high quality {100 * s['high_quality']:.1f} ± "
              f"{100 * s['high_quality_se']:.1f}% over {s['seeds']} seeds")
        out[name] = {"summary": s, "runs": [{k: r[k] for k in ("modes", "high_quality", "reverse_kl", "seconds")}
                                            for r in reports]}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["speed", "modes"])
    p.add_argument("--data", default="digits")
    p.add_argument("--mixtures", nargs="+", default=["ring8", "grid25"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--denoiser", choices=["mlp", "unet"], default="mlp")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--timesteps", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--engine", default="jax", help="modes: the SVI engine")
    p.add_argument("--device", default="cpu")
    p.add_argument("--samples", type=int, default=64, help="speed: images drawn at once")
    p.add_argument("--ddim", type=int, default=50, help="speed: DDIM steps")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
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
