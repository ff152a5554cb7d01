"""A GAN and a VAE on full MNIST, one likelihood: AIS under Gaussian observations, with BDMC bounding its error.

Wu, Burda, Salakhutdinov & Grosse (2017, "On the quantitative analysis of decoder-based generative
models") compare decoders trained by different objectives through one density,
p_σ(x) = ∫ N(x; m(z), σ² I) p(z) dz, with m(z) the GAN's generator or the VAE's decoder mean and σ
chosen on validation digits, estimated by AIS from the prior on continuous (dequantized) MNIST.
This script does the same with ppgen's pieces:

1. full MNIST (50,000 / 10,000 / 10,000, ``ppgen.data.load("mnist-full")``), grey levels k/256;
2. the VAE (784-400-Z, Bernoulli decoder, dynamic binarization: ``ppgen train vae``'s model) and
   the GAN (MLP generator Z-256-512-784 with sigmoid output, MLP critic 784-512-256-1, NS-GAN loss:
   ``benchmarks/gan_mnist.py``'s pair) trained on the 50,000 training digits, the GAN on grey levels,
   for the epochs given (wall time printed);
3. σ for each by :func:`ppgen.evaluation.ais.fit_sigma` on ``--val`` validation digits (dequantized
   x + u/256, one seeded draw);
4. log p_σ(x) by AIS from the prior (sigmoid schedule, HMC with its step size adapted
   by two tuning chains; ``--leapfrog`` steps each) on the first ``--test`` test digits, dequantized the same way;
5. BDMC on ``--bdmc`` digits simulated from each model, (z, x) ~ p(z) p_σ(x | z): forward AIS is a
   stochastic lower bound, reverse AIS from the true z an upper bound, on the same schedule as 4; the
   gap bounds AIS's error on simulated data (Grosse et al., 2015).

    nice -n 10 .venv/bin/python benchmarks/gan_ais.py      # 19 min on 2 cores shared at load 8-13
    .venv/bin/python benchmarks/gan_ais.py --steps 10000 --chains 16 --leapfrog 10 --test 1000 --val 100 \
        --bdmc 100 --fit-steps 1000 --vae-epochs 100 --gan-epochs 50 --z-dim 50   # Wu et al.'s scale

Wu et al.'s own settings (their released evaluation code): 10,000 intermediate distributions, 16 chains,
σ² = 0.03 / 0.005 for VAE-10 / VAE-50 and 0.025 / 0.01 for GAN-10 / GAN-50 (σ = 0.17, 0.07, 0.16, 0.10),
test digits dequantized by U(0, 1)/256, the first 5,000 test digits as validation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ppgen
from ppgen.data import load
from ppgen.evaluation.ais import ais, bdmc, dequantize, fit_sigma
from ppgen.models import GAN, VAE
from ppgen.models.observation import GaussianObservation

#: Wu et al.'s σ for MNIST (the square roots of the variances in their released evaluation code), by model
WU_SIGMA = {("VAE", 10): 0.03 ** 0.5, ("VAE", 50): 0.005 ** 0.5, ("GAN", 10): 0.025 ** 0.5, ("GAN", 50): 0.01 ** 0.5}

GAN_OPTIONS = dict(loss="ns", batch_size=64, lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999), critic_net="mlp",
                   critic_hidden=(512, 256))


def train_vae(z_dim: int, epochs: int, seed: int) -> tuple[VAE, float]:
    data = load("mnist-full", seed=seed)  # dynamic binarization: a new Bernoulli draw of the grey levels each epoch
    torch.manual_seed(seed)
    pair = VAE(x_shape=(1, 28, 28), z_dim=z_dim, hidden=(400,))
    start = time.perf_counter()
    ppgen.fit(pair, data, backend="svi", epochs=epochs, seed=seed, progress=False, monitor="val_elbo")
    return pair.eval(), time.perf_counter() - start


def train_gan(grey, z_dim: int, epochs: int, batch_size: int, seed: int) -> tuple[GAN, float]:
    torch.manual_seed(seed)
    pair = GAN(x_shape=(1, 28, 28), z_dim=z_dim, hidden=(256, 512))
    start = time.perf_counter()
    options = {**GAN_OPTIONS, "batch_size": batch_size}
    ppgen.fit(pair, grey, backend="adversarial", epochs=epochs, seed=seed, progress=False, **options)
    return pair.eval(), time.perf_counter() - start


def evaluate(name: str, pair, val: torch.Tensor, test: torch.Tensor, args) -> dict:
    start = time.perf_counter()
    fit = fit_sigma(pair, val, grid=[0.3 * 2 ** (-k / 2) for k in range(5)], steps=args.fit_steps,
                    chains=args.chains, leapfrog=args.leapfrog, seed=args.seed)
    fit_seconds = time.perf_counter() - start
    print(f"{name}: sigma {fit.sigma:.4f} ± {100 * fit.se_log_sigma:.1f}% fitted on {len(val)} validation digits "
          f"({args.fit_steps} steps; {fit_seconds:.0f} s); AIS along the grid: "
          + ", ".join(f"{s:.3f}: {v:.1f}" for s, v in zip(fit.grid, fit.log_px)), flush=True)
    observed = GaussianObservation(pair, fit.sigma)
    start = time.perf_counter()
    test_result = ais(observed, test, steps=args.steps, chains=args.chains, leapfrog=args.leapfrog, seed=args.seed)
    test_seconds = time.perf_counter() - start
    start = time.perf_counter()
    sandwich = bdmc(observed, n=args.bdmc, steps=args.steps, chains=args.chains, leapfrog=args.leapfrog,
                    seed=args.seed)
    bdmc_seconds = time.perf_counter() - start
    row = {"sigma": fit.sigma, "sigma_se_log": fit.se_log_sigma, "sigma_grid": fit.grid, "sigma_curve": fit.log_px,
           "sigma_seconds": fit_seconds, "test_points": len(test), "ais": test_result.mean,
           "ais_se": test_result.mean_se, "acceptance": test_result.acceptance, "ais_seconds": test_seconds,
           "bdmc_points": args.bdmc, "bdmc_lower": sandwich.lower.mean, "bdmc_upper": sandwich.upper.mean,
           "bdmc_gap": sandwich.gap, "bdmc_seconds": bdmc_seconds}
    print(f"{name}: AIS {row['ais']:.1f} ± {row['ais_se']:.1f} nats on {len(test)} test digits ({test_seconds:.0f} s);"
          f" BDMC on {args.bdmc} simulated: [{row['bdmc_lower']:.1f}, {row['bdmc_upper']:.1f}], gap "
          f"{row['bdmc_gap']:.2f} ({bdmc_seconds:.0f} s)", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--z-dim", type=int, default=10, help="latent dimensions of both models (Wu et al.: 10 and 50)")
    p.add_argument("--vae-epochs", type=int, default=3)
    p.add_argument("--gan-epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=150, help="AIS intermediate distributions (test and BDMC)")
    p.add_argument("--fit-steps", type=int, default=30, help="AIS intermediate distributions while fitting sigma")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--leapfrog", type=int, default=5, help="leapfrog steps per HMC transition")
    p.add_argument("--gan-batch", type=int, default=128)
    p.add_argument("--val", type=int, default=10, help="validation digits sigma is fitted on")
    p.add_argument("--test", type=int, default=20, help="test digits evaluated")
    p.add_argument("--bdmc", type=int, default=5, help="digits simulated from each model for BDMC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/gan_ais"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    grey = load("mnist-full", binarize=None, seed=args.seed)
    val = dequantize(grey.val[: args.val], 256, seed=args.seed + 1)
    test = dequantize(grey.test[: args.test], 256, seed=args.seed)

    vae, vae_seconds = train_vae(args.z_dim, args.vae_epochs, args.seed)
    print(f"VAE 784-400-{args.z_dim}: {args.vae_epochs} epochs on {len(grey.train)} digits in {vae_seconds:.0f} s",
          flush=True)
    gan, gan_seconds = train_gan(grey, args.z_dim, args.gan_epochs, args.gan_batch, args.seed)
    print(f"GAN {args.z_dim}-256-512-784: {args.gan_epochs} epochs in {gan_seconds:.0f} s", flush=True)
    rows = {}
    for name, pair, seconds, epochs in (("VAE", vae, vae_seconds, args.vae_epochs),
                                        ("GAN", gan, gan_seconds, args.gan_epochs)):
        rows[name] = {"epochs": epochs, "train_seconds": seconds, **evaluate(name, pair, val, test, args)}

    print(f"\nlog p_sigma(x) on {args.test} dequantized test digits, nats (AIS, {args.steps} intermediate "
          f"distributions, {args.chains} chains; BDMC gap on {args.bdmc} simulated digits)")
    print(f"{'model':<10} {'epochs':>6} {'sigma':>7} {'AIS':>9} {'± SE':>6} {'BDMC gap':>9}   Wu et al.'s sigma")
    for name, r in rows.items():
        wu = WU_SIGMA.get((name, args.z_dim))
        print(f"{name}-{args.z_dim:<6} {r['epochs']:>6} {r['sigma']:>7.4f} {r['ais']:>9.1f} {r['ais_se']:>6.1f} "
              f"{r['bdmc_gap']:>9.2f}   " + (f"{wu:.3f}" if wu else "-"))
    (args.out / "metrics.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "rows": rows}, indent=1))
    print(f"wrote {args.out}/metrics.json")


if __name__ == "__main__":
    main()
