"""Mode collapse on the ring of 8 and the grid of 25 Gaussians (the VEEGAN / PacGAN protocol).

Trains ppgen's implicit-generator pair with the adversarial backend (NS-GAN, WGAN-GP,
LSGAN, ALI, and NS-GAN with a PacGAN critic) on ``ring8`` and ``grid25`` for several
seeds, scores 2,500 samples per run with :func:`ppgen.evaluation.modes.mode_report`, and
prints mean ± standard error beside the published figures. It also times the backend
against a plain PyTorch GAN loop with the same networks, in the same process, and prints
the ratio (the cost of drawing x from the pair's own Pyro sites).

Each generator is also scored after density-ratio rejection sampling
(:mod:`ppgen.inference.rejection`, ``--rejection STEPS`` of classifier training; 0 skips it).

    .venv/bin/python benchmarks/modes.py --losses ns wgan-gp lsgan ali
        # the all-losses table (defaults: 5 seeds, 4000 steps, batch 500, z-dim 2, rejection 10000
        # steps): ~80 min of one core
    .venv/bin/python benchmarks/modes.py --losses ns-pack4 --steps 16000 --rejection 20000
        # the goal configuration: PacGAN4 critic, 16k steps (~95 s/run) + rejection (~100 s/run)
    .venv/bin/python benchmarks/modes.py --seeds 2 --steps 300 --rejection 300 --speed-steps 50   # smoke run

Learning rates decay linearly to 0 (``lr_decay``) unless ``--no-decay``.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

import ppgen
from ppgen.data import from_tensor, load
from ppgen.errors import UserError
from ppgen.evaluation.modes import evaluate_pair, summarize
from ppgen.inference.rejection import fit_ratio_sampler
from ppgen.models import GAN

#: published figures (modes, % high quality): VEEGAN (Srivastava et al., 2017, Table 1) and
#: PacGAN (Lin et al., 2018, Table 3)
PUBLISHED = {
    "ring8": {"GAN": (1.0, None), "VEEGAN": (8.0, 52.9), "PacGAN4": (7.8, 95.9)},
    "grid25": {"GAN": (3.3, None), "VEEGAN": (24.6, 40.0), "PacGAN4": (24.8, 93.6)},
}

#: name -> adversarial options; "-packM" is NS-GAN with a PacGAN critic scoring M samples
CONFIGS = {
    "ns": dict(loss="ns"),
    "wgan-gp": dict(loss="wgan-gp", n_critic=5, lr_g=1e-4, lr_d=1e-4, betas=(0.5, 0.9)),
    "lsgan": dict(loss="lsgan"),
    "ali": dict(loss="ali"),
    "ns-pack4": dict(loss="ns", pack=4),
}


def run_one(name: str, data_name: str, seed: int, steps: int, batch: int, lr: float, z_dim: int,
            hidden: tuple[int, ...], data, decay: bool, critic_hidden: tuple[int, ...] | None = None,
            rejection_steps: int = 0) -> dict:
    options = dict(CONFIGS[name])
    options.setdefault("lr_g", lr)
    options.setdefault("lr_d", lr)
    n_critic = options.get("n_critic", 1)
    per_epoch = len(data.train) // batch
    epochs = max(1, math.ceil(steps * n_critic / per_epoch))
    torch.manual_seed(seed)
    pair = GAN(x_shape=(2,), z_dim=z_dim, hidden=hidden, encoder=options["loss"] == "ali")
    start = time.perf_counter()
    fit = ppgen.fit(pair, data, backend="adversarial", epochs=epochs, batch_size=batch, seed=seed,
                    critic_hidden=critic_hidden or hidden, progress=False, lr_decay=decay, **options)
    seconds = time.perf_counter() - start
    report = evaluate_pair(pair, data_name, seed=10_000 + seed)
    report.update(seconds=seconds, generator_steps=sum(r["generator_steps"] for r in fit.history),
                  stopped=fit.stopped)
    if rejection_steps:
        start = time.perf_counter()
        sampler = fit_ratio_sampler(pair, data, steps=rejection_steps, seed=seed, progress=False)
        try:
            corrected = evaluate_pair(sampler, data_name, seed=10_000 + seed)
        except UserError as err:  # acceptance too low to draw 2,500 points: reported, left out of the mean
            print(f"{name} seed {seed}: {err}", flush=True)
            return report
        corrected.update(sampler.report, seconds=time.perf_counter() - start)
        report["rejection"] = corrected
    return report


def print_row(name: str, reports: list[dict]) -> None:
    m = summarize(reports)
    secs = sum(r["seconds"] for r in reports) / len(reports)
    print(f"{name:<12} {m['modes']:>7.2f} ± {m['modes_se']:<4.2f} {100 * m['high_quality']:>8.1f} ± "
          f"{100 * m['high_quality_se']:<4.1f} {m['reverse_kl']:>7.3f} ± {m['reverse_kl_se']:<5.3f}"
          f" {secs:>6.1f}", flush=True)


def plain_torch_gan(data, steps: int, batch: int, z_dim: int, hidden) -> float:
    """The same NS-GAN step in plain PyTorch (no Pyro trace): examples per second."""
    from torch.nn import functional as F

    from ppgen.nn.critics import MLPCritic, MLPGenerator

    torch.manual_seed(0)
    gen, critic = MLPGenerator(z_dim, (2,), hidden), MLPCritic((2,), hidden)
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.999))
    x_all = data.train
    start = time.perf_counter()
    for _ in range(steps):
        xb = x_all[torch.randint(len(x_all), (batch,))]
        with torch.no_grad():
            fake = gen(torch.randn(batch, z_dim))
        loss_d = F.softplus(-critic(xb)).mean() + F.softplus(critic(fake)).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        critic.requires_grad_(False)
        loss_g = F.softplus(-critic(gen(torch.randn(batch, z_dim)))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        critic.requires_grad_(True)
    return steps * batch / (time.perf_counter() - start)


def speed(data, steps: int, batch: int, z_dim: int, hidden) -> None:
    n = steps * batch
    sub = from_tensor(data.train[:n])
    torch.manual_seed(0)
    pair = GAN(x_shape=(2,), z_dim=z_dim, hidden=hidden)
    fit = ppgen.fit(pair, sub, backend="adversarial", loss="ns", epochs=1, batch_size=batch, lr_g=1e-3, lr_d=1e-3,
                    critic_hidden=hidden, progress=False)
    ours = fit.history[-1]["images_per_s"]
    plain = plain_torch_gan(data, steps, batch, z_dim, hidden)
    print(f"\nspeed, NS-GAN step on ring8 ({steps} steps, batch {batch}): ppgen {ours:,.0f} ex/s, "
          f"plain PyTorch {plain:,.0f} ex/s, ratio ppgen/plain = {ours / plain:.2f}")
    start = time.perf_counter()
    fit_ratio_sampler(pair, data, steps=steps, batch_size=2 * batch, seed=0, calibration=1_000, progress=False)
    ours = steps * 2 * batch / (time.perf_counter() - start)
    plain = plain_ratio_classifier(pair, data, steps, batch)
    print(f"speed, density-ratio classifier ({steps} steps, {batch} data + {batch} samples): ppgen {ours:,.0f} ex/s,"
          f" plain PyTorch {plain:,.0f} ex/s, ratio ppgen/plain = {ours / plain:.2f}")


def plain_ratio_classifier(pair, data, steps: int, batch: int) -> float:
    """The same classifier loop in plain PyTorch (generator called directly): examples per second."""
    from torch.nn import functional as F

    from ppgen.nn.critics import MLPCritic

    torch.manual_seed(0)
    clf = MLPCritic((2,))
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3, betas=(0.5, 0.999))
    x_all = data.train
    start = time.perf_counter()
    for _ in range(steps):
        xb = x_all[torch.randint(len(x_all), (batch,))]
        with torch.no_grad():
            fake = pair.generator(torch.randn(batch, pair.config.z_dim))
        loss = F.softplus(-clf(xb)).mean() + F.softplus(clf(fake)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * 2 * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0, help="seeds run from here (to split a table across jobs)")
    p.add_argument("--rejection", type=int, default=10_000, metavar="STEPS",
                   help="also score each generator corrected by density-ratio rejection sampling with a classifier "
                        "trained this many steps (ppgen.inference.rejection; 0 skips it)")
    p.add_argument("--steps", type=int, default=4000, help="generator steps per run")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--z-dim", type=int, default=2, help="latent size (2 gave far more high-quality samples than 8)")
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128, 128], help="generator MLP hidden sizes")
    p.add_argument("--critic-hidden", type=int, nargs="+", help="critic MLP hidden sizes (default: --hidden)")
    p.add_argument("--losses", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--data", nargs="+", default=["ring8", "grid25"], choices=["ring8", "grid25"])
    p.add_argument("--no-decay", action="store_true", help="keep learning rates constant (default: linear decay)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these tiny MLPs)")
    p.add_argument("--json", help="write every run's report here")
    p.add_argument("--speed-steps", type=int, default=300, help="steps of the speed comparison (0 skips it)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    hidden = tuple(args.hidden)
    critic_hidden = tuple(args.critic_hidden) if args.critic_hidden else None
    runs = {}
    for data_name in args.data:
        data = load(data_name, n=20_000)
        print(f"\n{data_name}: {args.seeds} seeds, {args.steps} generator steps, batch {args.batch}, "
              f"z_dim {args.z_dim}, generator MLP {hidden}, critic MLP {critic_hidden or hidden}, lr {args.lr}"
              f"{'' if args.no_decay else ' decaying to 0'}")
        print(f"{'method':<12} {'modes':>14} {'high quality %':>16} {'reverse KL':>14} {'s/run':>7}")
        for name in args.losses:
            reports = [run_one(name, data_name, s, args.steps, args.batch, args.lr, args.z_dim, hidden, data,
                               not args.no_decay, critic_hidden, args.rejection) for s in range(args.first_seed,
                                                                                        args.first_seed + args.seeds)]
            runs[f"{data_name}/{name}"] = reports
            print_row(name, reports)
            if args.rejection:
                corrected = [r["rejection"] for r in reports if "rejection" in r]
                print_row("  +rejection" + ("" if len(corrected) == len(reports) else f" ({len(corrected)})"),
                          corrected)
                rate = sum(r["accept_rate"] for r in corrected) / len(corrected)
                acc = sum(r["classifier_accuracy"] for r in corrected) / len(corrected)
                print(f"{'':14}(ratio classifier held-out accuracy {acc:.3f}, acceptance {100 * rate:.1f}%)")
        for name, (modes, hq) in PUBLISHED[data_name].items():
            print(f"{name + ' (pub.)':<12} {modes:>7.1f}{'':7} {'—' if hq is None else f'{hq:.1f}':>10}")
    if args.speed_steps:
        speed(load("ring8", n=20_000), args.speed_steps, args.batch, args.z_dim, hidden)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
