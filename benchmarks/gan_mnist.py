"""VAE and GAN on the bundled MNIST digits, compared on one sample-quality table.

1. Trains the feature classifier of :mod:`ppgen.evaluation.samples` on the grey-level
   digits (3,500 train; its accuracy on the 1,000 test digits is printed) and caches it.
2. Trains the VAE as ``ppgen train vae`` does (784-400-50, Bernoulli, dynamic binarization,
   SVI, ``--epochs`` epochs) and records its wall time.
3. Trains ppgen's implicit generator (``gan``, MLP generator 64-256-512-784 and MLP critic
   784-512-256-1, NS-GAN loss) on the grey-level digits with the adversarial backend for about
   the same wall time.
4. Scores 1,000 samples of each, and 500 held-out real digits as a reference row, against
   the 1,000 test digits: FID, KID (×10³), IS, precision and recall. Sample grids go to ``--out``.
5. Times one epoch of the backend against a plain PyTorch GAN loop with the same networks,
   in the same process, and prints the ratio.

    .venv/bin/python benchmarks/gan_mnist.py                 # a few minutes on 2 cores
    .venv/bin/python benchmarks/gan_mnist.py --epochs 3      # quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import ppgen
from ppgen import plots
from ppgen.data import load
from ppgen.evaluation.samples import feature_classifier, sample_quality
from ppgen.inference.rejection import fit_ratio_sampler
from ppgen.models import GAN, VAE


def train_vae(epochs: int, seed: int) -> tuple[VAE, float]:
    data = load("mnist", seed=seed)
    torch.manual_seed(seed)
    pair = VAE()
    start = time.perf_counter()
    ppgen.fit(pair, data, backend="svi", epochs=epochs, seed=seed, engine="torch", progress=False,
              monitor="val_elbo")  # the README's VAE row: torch engine
    return pair, time.perf_counter() - start


def make_gan(seed: int) -> GAN:
    torch.manual_seed(seed)
    return GAN(x_shape=(1, 28, 28), z_dim=64, hidden=(256, 512))


#: MLPs for both players: on a shared 2-core CPU the DCGAN-sized conv pair runs ~70 images/s
GAN_OPTIONS = dict(loss="ns", batch_size=64, lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999), critic_net="mlp",
                   critic_hidden=(512, 256))


def train_gan(data, seconds: float, seed: int, options: dict) -> tuple[GAN, float, int]:
    """Train for about ``seconds`` of wall time: one epoch to measure, then resume to the budget."""
    pair = make_gan(seed)
    start = time.perf_counter()
    first = ppgen.fit(pair, data, backend="adversarial", epochs=1, seed=seed, progress=False, **options)
    per_epoch = time.perf_counter() - start
    epochs = max(1, round(seconds / per_epoch))
    if epochs > 1:
        ppgen.fit(pair, data, backend="adversarial", epochs=epochs, seed=seed, progress=False,
                  resume=first.checkpoint(), **options)
    return pair, time.perf_counter() - start, epochs


def plain_gan_epoch(data, seed: int) -> float:
    """One epoch of the same NS-GAN in plain PyTorch (no Pyro trace): images per second."""
    from ppgen.nn.critics import critic_for

    pair = make_gan(seed)
    gen, critic = pair.generator, critic_for((1, 28, 28), net="mlp", hidden=GAN_OPTIONS["critic_hidden"])
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(critic.parameters(), lr=2e-4, betas=(0.5, 0.999))
    x, b = data.train, GAN_OPTIONS["batch_size"]
    order = torch.randperm(len(x))
    steps = len(x) // b
    start = time.perf_counter()
    for s in range(steps):
        xb = x[order[s * b : (s + 1) * b]]
        with torch.no_grad():
            fake = gen(torch.randn(b, 64))
        loss_d = F.softplus(-critic(xb)).mean() + F.softplus(critic(fake)).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        critic.requires_grad_(False)
        loss_g = F.softplus(-critic(gen(torch.randn(b, 64)))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        critic.requires_grad_(True)
    return steps * b / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30, help="VAE epochs (the GAN gets about the same wall time)")
    p.add_argument("--n", type=int, default=1000, help="generated samples per model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gan-lr", type=float, default=GAN_OPTIONS["lr_g"], help="both players' Adam learning rate")
    p.add_argument("--gan-time", type=float, default=1.0, help="GAN wall time as a multiple of the VAE's")
    p.add_argument("--pack", type=int, default=1, help="PacGAN: the critic scores this many digits at once")
    p.add_argument("--rejection", type=int, default=0, metavar="STEPS",
                   help="also score both models corrected by density-ratio rejection sampling (MLP classifier "
                        "trained this many steps; ppgen.inference.rejection)")
    p.add_argument("--out", type=Path, default=Path("runs/gan_mnist"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    grey = load("mnist", binarize=None, seed=args.seed)  # same split as the VAE's data, grey levels

    start = time.perf_counter()
    classifier, acc = feature_classifier(grey)
    print(f"feature classifier: test accuracy {acc:.4f} on {len(grey.test)} digits "
          f"({time.perf_counter() - start:.0f} s incl. cache lookup)")

    vae, vae_seconds = train_vae(args.epochs, args.seed)
    print(f"VAE: {args.epochs} epochs of SVI in {vae_seconds:.0f} s")
    options = {**GAN_OPTIONS, "lr_g": args.gan_lr, "lr_d": args.gan_lr, "pack": args.pack}
    gan, gan_seconds, gan_epochs = train_gan(grey, args.gan_time * vae_seconds, args.seed, options)
    print(f"GAN: {gan_epochs} epochs of NS-GAN (lr {args.gan_lr:g}, pack {args.pack}) in {gan_seconds:.0f} s")

    rows = {}
    rows["real (val)"] = sample_quality(grey.val, grey, classifier=classifier)
    for name, pair in (("VAE", vae), ("GAN", gan)):
        pair.eval()
        rows[name] = sample_quality(pair, grey, n=args.n, classifier=classifier, seed=args.seed)
        with torch.no_grad():
            torch.manual_seed(args.seed)
            plots.sample_grid(pair.generate(64), args.out / f"samples_{name.lower()}.png", f"{name} samples")
        if args.rejection:
            start = time.perf_counter()
            sampler = fit_ratio_sampler(pair, grey, steps=args.rejection, batch_size=256, net="mlp",
                                        hidden=(512, 256), seed=args.seed, progress=False)
            label = f"{name}+rej"
            rows[label] = sample_quality(sampler, grey, n=args.n, classifier=classifier, seed=args.seed)
            rows[label].update(sampler.report)
            print(f"{label}: ratio classifier held-out accuracy {sampler.report['classifier_accuracy']:.3f}, "
                  f"acceptance {100 * sampler.report['accept_rate']:.1f}% ({time.perf_counter() - start:.0f} s)")
            with torch.no_grad():
                torch.manual_seed(args.seed)
                plots.sample_grid(sampler.generate(64), args.out / f"samples_{name.lower()}_rejection.png",
                                  f"{name} samples after rejection sampling")
    print(f"\n{'':<11} {'FID':>9} {'KID×1e3':>9} {'IS':>6} {'precision':>10} {'recall':>7}   (vs {len(grey.test)} "
          f"test digits; feature classifier accuracy {acc:.3f})")
    for name, r in rows.items():
        print(f"{name:<11} {r['fid']:>9.2f} {1e3 * r['kid']:>9.2f} {r['is']:>6.2f} {r['precision']:>10.3f} "
              f"{r['recall']:>7.3f}")

    ours = ppgen.fit(make_gan(args.seed), grey, backend="adversarial", epochs=1, progress=False,
                     **GAN_OPTIONS).last["images_per_s"]
    plain = plain_gan_epoch(grey, args.seed)
    print(f"\nspeed, one NS-GAN epoch: ppgen {ours:,.0f} images/s, plain PyTorch {plain:,.0f} images/s, "
          f"ratio ppgen/plain = {ours / plain:.2f}")
    summary = {"classifier_accuracy": acc, "vae_seconds": vae_seconds, "gan_seconds": gan_seconds,
               "gan_epochs": gan_epochs, "metrics": rows, "speed": {"ppgen": ours, "plain": plain}}
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out}/samples_vae.png, samples_gan.png, metrics.json")


if __name__ == "__main__":
    main()
