"""The log-likelihood leaderboard (issue 4): VAE, DLGM, hierarchical VAE, Ladder VAE and NADE.

Every model is trained by the same SVI backend (``ppgen.fit(pair, data, backend="svi")``,
Trace_ELBO, Adam, the same epochs, batch size and learning rate) on the dynamically
binarized training split, then evaluated on the test split:

  test NLL     −IWAE-K (Burda et al., 2016) in nats, K = ``--k`` (exact log p(x) for NADE)
  AIS          −AIS log p(x) (prior → posterior, HMC) on the first ``--ais-points`` test
               digits, beside −IWAE-K on the same digits (``--ais-models``, default the VAE)
  active units per latent layer (Burda et al.'s Cov_x E_q[z_u] > 0.01), bottom layer first
  img/s        training images per second (mean over epochs after the first)

The Ladder VAE is trained with its KL warm-up (``anneal_epochs``, Sønderby et al.) and batch
normalization in its bottom-up layers (``lvae_td``: in its generative networks too); the others
without. ``--threads 1`` on a loaded, shared machine (two torch threads there ran ~15x slower). A plain Pyro baseline — the 784-400-50 VAE of Pyro's tutorial, its own
DataLoader/SVI loop — trains one epoch in the same process, and the table prints the
ppgen VAE's images/s relative to it.

    python benchmarks/likelihood_table.py --epochs 20 --k 1000            # bundled MNIST, modest
    python benchmarks/likelihood_table.py --data /path/to/mnist-idx --epochs 100 --k 5000 \\
        --ais-steps 10000 --device cuda                                    # full MNIST (IDX files)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ppgen  # noqa: E402
from ppgen.data import load  # noqa: E402
from ppgen.evaluation import ais, bdmc, elbo, iwae, layer_report  # noqa: E402
from ppgen.models import DLGM, NADE, VAE, HierarchicalVAE, LadderVAE  # noqa: E402
from ppgen.models.diffusion import DDPM  # noqa: E402
from ppgen.models.vqvae import VQVAE, fit_prior  # noqa: E402

Z, HIDDEN = (50, 20), ((400,), (200,))
MODELS = {
    "vae": lambda shape: VAE(shape, z_dim=50, hidden=(400,)),
    "dlgm": lambda shape: DLGM(shape, z_dims=Z, hidden=HIDDEN),
    "hvae": lambda shape: HierarchicalVAE(shape, z_dims=Z, hidden=HIDDEN),
    "lvae": lambda shape: LadderVAE(shape, z_dims=Z, hidden=HIDDEN),
    # the Ladder VAE with batch norm in the generative networks too (prior networks and decoder)
    "lvae_td": lambda shape: LadderVAE(shape, z_dims=Z, hidden=HIDDEN, batch_norm_top_down="on"),
    "lvae3": lambda shape: LadderVAE(shape, z_dims=(50, 20, 10), hidden=((400,), (200,), (100,))),
    "nade": lambda shape: NADE(shape, hidden=500),
    # VQ-VAE (issue 13): K = 64 codes on a 7x7 grid (MNIST) or 4x4 (8x8 digits); its bound uses the PixelCNN prior
    # fitted after stage one (--prior-epochs), and IWAE-K = its ELBO for every K (a point-mass guide: iwae uses one draw)
    "vqvae": lambda shape: VQVAE(shape, codes=64, code_dim=16, downsample=2 if shape[-1] >= 28 else 1, channels=64),
}
# DDPM (issue 11; not in the default --models): the bound L_vlb trained directly (its sampled-timestep estimator),
# T = --ddpm-steps; "IWAE" is then the importance-weighted bound over --ddpm-k forward trajectories
MODELS["ddpm"] = lambda shape: DDPM(shape, hidden=(512, 512), timesteps=DDPM_STEPS[0], objective="vlb")
# ... and with learned reverse-step variances (Nichol & Dhariwal, 2021), also trained on L_vlb
MODELS["ddpm-learned"] = lambda shape: DDPM(shape, hidden=(512, 512), timesteps=DDPM_STEPS[0], objective="vlb",
                                            variance="learned")
DDPM_STEPS = [100]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mnist", help="bundled 'mnist' or a folder of MNIST IDX files")
    p.add_argument("--models", default="vae,dlgm,hvae,lvae,lvae3,nade,vqvae")
    p.add_argument("--engine", default="torch", choices=["auto", "torch", "jax"],
                   help="SVI engine (default torch: the engine the README's table was made with)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=float, default=None, help="Ladder VAE KL warm-up epochs (default epochs/4)")
    p.add_argument("--k", type=int, default=5000, help="IWAE samples per test digit")
    p.add_argument("--test-points", type=int, default=None, help="evaluate on the first N test digits")
    p.add_argument("--ais-models", default="vae")
    p.add_argument("--ais-points", type=int, default=100)
    p.add_argument("--ais-steps", type=int, default=1000)
    p.add_argument("--ais-chains", type=int, default=16)
    p.add_argument("--ais-leapfrog", type=int, default=10)
    p.add_argument("--bdmc", type=int, default=0, help="BDMC bounds on this many simulated digits (AIS models)")
    p.add_argument("--baseline-epochs", type=int, default=1, help="epochs of the plain Pyro baseline (0: skip)")
    p.add_argument("--prior-epochs", type=int, default=None, help="vqvae: epochs of its PixelCNN prior (default --epochs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared, loaded machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ddpm-steps", type=int, default=100, help="ddpm: diffusion steps T")
    p.add_argument("--ddpm-k", type=int, default=50, help="ddpm: forward trajectories of its importance-weighted bound")
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    return p.parse_args(argv)


def pyro_baseline(data, epochs: int, batch_size: int, lr: float) -> float:
    """Images/s of Pyro's tutorial VAE loop (784-400-50) on the same training data."""
    from _baselines import images_per_s, make_loader, make_pyro_tutorial, pyro_tutorial_epoch

    _, svi = make_pyro_tutorial(lr=lr)
    loader = make_loader(data.train_epoch(0).reshape(len(data.train), -1), batch_size=batch_size)
    start = time.perf_counter()
    n = sum(pyro_tutorial_epoch(svi, loader, all_validation_off=True)[1] for _ in range(epochs))
    return images_per_s(n, time.perf_counter() - start)


def evaluate(name: str, pair, x: torch.Tensor, args) -> dict:
    pair.eval()
    row: dict = {}
    torch.manual_seed(args.seed)
    with torch.no_grad():
        t = time.perf_counter()
        # a point-mass guide (vqvae) is evaluated with one draw: exact
        k = args.ddpm_k if name.startswith("ddpm") else args.k
        ll = iwae(pair, x, k=k)
        row.update(nll=-float(ll.mean()), nll_se=float(ll.std() / math.sqrt(len(x))), iwae_seconds=time.perf_counter() - t)
        row["elbo"] = float(elbo(pair, x, num_samples=10).mean())
    if name not in ("nade", "vqvae", "ddpm", "ddpm-learned"):
        layers = layer_report(pair, x)
        row["active_units"] = [layers[f"z{i}"]["active_units"] for i in range(1, len(layers) + 1)] if "z1" in layers \
            else [layers["z"]["active_units"]]
        row["kl_per_layer"] = [round(v["kl_total"], 2) for v in list(layers.values())[::-1]]
    if name in args.ais_models.split(","):
        xa = x[: args.ais_points]
        t = time.perf_counter()
        result = ais(pair, xa, steps=args.ais_steps, chains=args.ais_chains, leapfrog=args.ais_leapfrog, seed=args.seed)
        row.update(ais_nll=-result.mean, ais_se=result.mean_se, ais_acceptance=result.acceptance,
                   ais_seconds=time.perf_counter() - t, iwae_nll_same_points=-float(ll[: args.ais_points].mean()))
        if args.bdmc:
            both = bdmc(pair, n=args.bdmc, steps=args.ais_steps, chains=args.ais_chains, leapfrog=args.ais_leapfrog,
                        seed=args.seed)
            row.update(bdmc_lower=both.lower.mean, bdmc_upper=both.upper.mean, bdmc_gap=both.gap)
    return row


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = load(args.data, binarize="dynamic", seed=args.seed)
    x_test = (data.test if len(data.test) else data.val).to(args.device)
    if args.test_points:
        x_test = x_test[: args.test_points]
    print(data.describe())
    print(f"settings: epochs {args.epochs}, batch {args.batch_size}, Adam lr {args.lr}, IWAE K {args.k} on "
          f"{len(x_test)} test digits, AIS {args.ais_steps} steps x {args.ais_chains} chains x {args.ais_leapfrog} "
          f"leapfrog on {args.ais_points} digits, torch threads {torch.get_num_threads()}", flush=True)
    warmup = args.warmup if args.warmup is not None else args.epochs / 4
    rows = {}
    DDPM_STEPS[0] = args.ddpm_steps
    for name in args.models.split(","):
        pair = MODELS[name](data.x_shape)
        options = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                       engine=args.engine, progress=False)
        if name.startswith("lvae"):
            options["anneal_epochs"] = warmup
        t = time.perf_counter()
        fit = ppgen.fit(pair, data, backend="svi", **options)
        if name == "vqvae":  # stage two: the autoregressive prior over the codes, then the bound uses it
            prior = fit_prior(pair, data, epochs=args.prior_epochs or args.epochs, batch_size=args.batch_size,
                              seed=args.seed)
        speeds = [r["images_per_s"] for r in fit.history[1:] or fit.history]
        row = {"train_seconds": time.perf_counter() - t, "images_per_s": sum(speeds) / len(speeds),
               "train_elbo": fit.history[-1].get("elbo"), "val_elbo": fit.history[-1].get("val_elbo"),
               "params": sum(p.numel() for p in pair.parameters())}
        if name == "vqvae":
            pair.eval()
            row.update(pair.codebook_stats(x_test), prior_val_nll=prior[-1].get("val_prior_nll"))
        row.update(evaluate(name, pair, x_test, args))
        if name == "vae" and args.baseline_epochs:  # right after ppgen's VAE, so both see the same machine load
            row["pyro_baseline_images_per_s"] = pyro_baseline(data, args.baseline_epochs, args.batch_size, args.lr)
        rows[name] = row
        print(name, json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        if args.out:
            args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=2))
    print_table(rows, args, rows.get("vae", {}).get("pyro_baseline_images_per_s"))
    return 0


def print_table(rows: dict, args, baseline: float | None) -> None:
    print(f"\n| model | test NLL (IWAE-{args.k}) | AIS NLL ({args.ais_points} digits) | IWAE NLL same digits | "
          "ELBO | active units (z1, z2, ...) | KL per layer | img/s | params |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        a = f"{r['ais_nll']:.2f} ± {r['ais_se']:.2f}" if "ais_nll" in r else ""
        same = f"{r['iwae_nll_same_points']:.2f}" if "ais_nll" in r else ""
        au = ", ".join(map(str, r.get("active_units", []))) or "—"
        kl = ", ".join(f"{v:.1f}" for v in r.get("kl_per_layer", [])) or "—"
        print(f"| {name} | {r['nll']:.2f} ± {r['nll_se']:.2f} | {a} | {same} | {-r['elbo']:.2f} | {au} | {kl} | "
              f"{r['images_per_s']:.0f} | {r['params']:,} |")
    for name, r in rows.items():
        if "bdmc_gap" in r:
            print(f"{name}: BDMC on {args.bdmc} simulated digits: lower {r['bdmc_lower']:.2f}, upper {r['bdmc_upper']:.2f}, "
                  f"gap {r['bdmc_gap']:.2f} nats")
    if "vqvae" in rows:
        r = rows["vqvae"]
        print(f"\nvqvae: its NLL is the bound −[log p(x|z_q) + log p_prior(k)] with the fitted PixelCNN prior (IWAE-K equals "
              f"it for every K: a point-mass guide); test codebook usage {r['codebook_usage']:.3f}, perplexity "
              f"{r['perplexity']:.1f}, −log p(x|z_q) {r['reconstruction_nll']:.2f} nats")
    if "ddpm" in rows:
        print(f"ddpm (T = {args.ddpm_steps}): its NLL column is the importance-weighted bound over {args.ddpm_k} forward "
              "trajectories, its ELBO column the bound L_vlb, in nats")
    if baseline and "vae" in rows:
        print(f"\nplain Pyro tutorial VAE loop: {baseline:.0f} img/s; ppgen VAE / Pyro = {rows['vae']['images_per_s'] / baseline:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
