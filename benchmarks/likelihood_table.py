"""The log-likelihood leaderboard: VAE, DLGM, hierarchical VAE, Ladder VAE and NADE.

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
    python benchmarks/likelihood_table.py --models ddpm-unet --epochs 20 --ddpm-steps 100 --ddpm-k 10 \
        --ddpm-iw-points 100 --ddpm-timestep-sampling importance --ais-models none --baseline-epochs 0 [--grey]

DDPM rows: the bound L_vlb on the test digits (every term in closed form) with its terms by t, and the
importance-weighted bound over --ddpm-k forward trajectories on a stratified subset; ``--grey`` trains them on the
8-bit grey levels with the discretized decoder and adds bits/dim.
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
from ppgen.inference.stages import fit_stage  # noqa: E402
from ppgen.models import DLGM, NADE, VAE, HierarchicalVAE, LadderVAE  # noqa: E402
from ppgen.models.diffusion import DDPM  # noqa: E402
from ppgen.models.vqvae import VQVAE  # noqa: E402

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
    # VQ-VAE: K = 64 codes on a 7x7 grid (MNIST) or 4x4 (8x8 digits); its bound uses the PixelCNN prior
    # fitted after stage one (--prior-epochs), and IWAE-K = its ELBO for every K (a point-mass guide: iwae uses one draw)
    "vqvae": lambda shape: VQVAE(shape, codes=64, code_dim=16, downsample=2 if shape[-1] >= 28 else 1, channels=64),
}
# DDPM (not in the default --models): T = --ddpm-steps, trained on --ddpm-objective (default the bound
# L_vlb, its sampled-timestep estimator); "IWAE" is the importance-weighted bound over --ddpm-k forward trajectories.
# ddpm: MLP 512-512 on flattened pixels; ddpm-learned: the same with learned reverse-step variances (Nichol &
# Dhariwal, 2021); ddpm-unet: the U-Net denoiser (--ddpm-channels, levels (1, 2)). With --grey all three observe
# the 8-bit grey levels through the discretized decoder (Ho et al.) and the bound is also given in bits/dim.
DDPM_MODELS = {"ddpm": dict(hidden=(512, 512)), "ddpm-learned": dict(hidden=(512, 512), variance="learned"),
               "ddpm-unet": dict(denoiser="unet")}


def build(name: str, shape, args) -> object:
    """The pair ``name`` for data shaped ``shape`` (the DDPMs configured from the --ddpm-* flags)."""
    if name not in DDPM_MODELS:
        return MODELS[name](shape)
    options = {"variance": args.ddpm_variance} | DDPM_MODELS[name]  # ddpm-learned: learned whatever the flag
    return DDPM(shape, timesteps=args.ddpm_steps, objective=args.ddpm_objective,
                timestep_sampling=args.ddpm_timestep_sampling, channels=args.ddpm_channels,
                likelihood="discretized" if args.grey else "bernoulli", levels=256, **options)


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
    p.add_argument("--ddpm-objective", default="vlb", choices=["vlb", "hybrid", "simple"], help="ddpm: training objective")
    p.add_argument("--ddpm-timestep-sampling", default="uniform", choices=["uniform", "importance"],
                   help="ddpm: timesteps of the bound's term (importance: Nichol & Dhariwal; vlb or hybrid)")
    p.add_argument("--ddpm-variance", default="beta", choices=["beta", "beta_tilde", "learned"],
                   help="ddpm, ddpm-unet: reverse-step variances sigma_t^2 (learned: Nichol & Dhariwal)")
    p.add_argument("--ddpm-channels", type=int, default=32, help="ddpm-unet: channels of the U-Net's first level")
    p.add_argument("--ddpm-iw-points", type=int, default=0,
                   help="ddpm: the importance-weighted bound on a stratified subset of this many test digits (the "
                        "first N/10 of each class; 0: all), beside L_vlb on the same digits")
    p.add_argument("--ddpm-val-every", type=int, default=10,
                   help="ddpm: validation bound (first 100 validation digits) every N epochs and at the last")
    p.add_argument("--grey", action="store_true",
                   help="8-bit grey levels (no binarization), the DDPMs' discretized decoder, bits/dim; ddpm models only")
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
        ll = iwae(pair, x, k=args.k)
        row.update(nll=-float(ll.mean()), nll_se=float(ll.std() / math.sqrt(len(x))), iwae_seconds=time.perf_counter() - t)
        row["elbo"] = float(elbo(pair, x, num_samples=10).mean())
    if name not in ("nade", "vqvae"):
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


def sparse_validation(data, args, digits: int = 100):
    """The DDPM's validation bound −L_vlb (all terms in closed form) on the first ``digits`` validation digits, every
    ``--ddpm-val-every`` epochs and at the last (each costs T denoiser passes per digit)."""
    x_val = data.val[:digits].to(args.device)

    def callback(fit) -> dict:
        epoch = len(fit.history)
        if epoch % args.ddpm_val_every and epoch != args.epochs:
            return {}
        fit.pair.eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(args.seed)
            value = float(elbo(fit.pair, x_val).mean())
        fit.pair.train()
        print(f"  epoch {epoch}: validation bound {-value:.2f} nats ({len(x_val)} digits)", flush=True)
        return {"val_elbo": value}

    return callback


def stratified(labels: torch.Tensor | None, n: int) -> torch.Tensor:
    """Indices of the first n // 10 test digits of each class (the first n digits without labels)."""
    if labels is None:
        return torch.arange(n)
    classes = labels.unique()
    per = max(1, n // len(classes))
    return torch.cat([torch.nonzero(labels == c).flatten()[:per] for c in classes]).sort().values


def mean_se(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    return float(v.mean()), float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def variance_floor(pair) -> float:
    """The least Σ_{t≥2} L_{t−1} of a fixed-variance DDPM, in nats per example, whatever its denoiser and data:
    KL(N(μ̃, β̃_t) ‖ N(μ, σ_t²)) ≥ D/2 [log(σ_t²/β̃_t) + β̃_t/σ_t² − 1], equality at μ = μ̃ (0 for β̃_t and learned)."""
    if pair.config.variance == "learned":
        return 0.0
    ratio = [pair.beta_tilde[t] / pair.step_variance(t) for t in range(2, pair.T + 1)]
    return math.prod(pair.x_shape) * sum(0.5 * (r - 1 - math.log(r)) for r in ratio)


def evaluate_ddpm(pair, data, x: torch.Tensor, args) -> dict:
    """The test bound L_vlb (every term in closed form, one x_t per t and digit) on all of x, its terms grouped by t,
    and the importance-weighted bound over --ddpm-k forward trajectories on a stratified subset (L_vlb there too,
    and their paired difference), in nats per digit; bits/dim = nats / (D ln 2)."""
    pair.eval()
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        terms = torch.cat([pair.vlb_terms(x[r:r + 100]) for r in range(0, len(x), 100)]).double()  # (N, T + 1)
    bound = terms.sum(-1)
    row = {"T": pair.T, "bound_seconds": time.perf_counter() - t0, "test_digits": len(x),
           "variance_floor": variance_floor(pair)}
    row["vlb"], row["vlb_se"] = mean_se(bound)
    T = pair.T
    groups = {"L_0": terms[:, 0], "L_1..L_9": terms[:, 1:min(10, T)].sum(-1),
              f"L_10..L_{T - 1}": terms[:, 10:T].sum(-1), "L_T": terms[:, T]}
    row["terms"] = {k: round(float(v.mean()), 3) for k, v in groups.items()}
    labels = data.test_labels if len(data.test) else data.val_labels
    idx = stratified(None if labels is None else labels[: len(x)], args.ddpm_iw_points) if args.ddpm_iw_points \
        else torch.arange(len(x))
    t0 = time.perf_counter()
    torch.manual_seed(args.seed + 1)
    with torch.no_grad():
        ll = iwae(pair, x[idx.to(x.device)], k=args.ddpm_k, budget=1_600_000).double().cpu()
    row.update(iw_seconds=time.perf_counter() - t0, iw_digits=len(idx), iw_k=args.ddpm_k)
    row["iw"], row["iw_se"] = mean_se(-ll)
    row["vlb_subset"], row["vlb_subset_se"] = mean_se(bound[idx])
    row["gap"], row["gap_se"] = mean_se(bound[idx] - (-ll))
    row["nll"], row["nll_se"], row["elbo"] = row["iw"], row["iw_se"], -row["vlb"]
    bpd = math.prod(pair.x_shape) * math.log(2)
    row.update({f"{k}_bpd": row[k] / bpd for k in ("vlb", "vlb_se", "iw", "iw_se", "vlb_subset", "gap", "gap_se",
                                                 "variance_floor")})
    return row


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.grey and not set(args.models.split(",")) <= set(DDPM_MODELS):
        raise SystemExit(f"--grey: only the DDPM models ({', '.join(DDPM_MODELS)}) have a grey-level decoder")
    data = load(args.data, binarize=None if args.grey else "dynamic", seed=args.seed)
    x_test = (data.test if len(data.test) else data.val).to(args.device)
    if args.test_points:
        x_test = x_test[: args.test_points]
    print(data.describe())
    print(f"settings: epochs {args.epochs}, batch {args.batch_size}, Adam lr {args.lr}, IWAE K {args.k} on "
          f"{len(x_test)} test digits, AIS {args.ais_steps} steps x {args.ais_chains} chains x {args.ais_leapfrog} "
          f"leapfrog on {args.ais_points} digits, torch threads {torch.get_num_threads()}", flush=True)
    warmup = args.warmup if args.warmup is not None else args.epochs / 4
    rows = {}
    for name in args.models.split(","):
        pair = build(name, data.x_shape, args)
        options = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                       engine=args.engine, progress=False)
        if name.startswith("lvae"):
            options["anneal_epochs"] = warmup
        if name in DDPM_MODELS:  # its validation bound costs T denoiser passes per digit: sparser, on fewer digits
            options["callback"] = sparse_validation(data, args)
        t = time.perf_counter()
        fit = ppgen.fit(pair, data, backend="svi", **options)
        if name == "vqvae":  # stage two: the autoregressive prior over the codes, then the bound uses it
            prior = fit_stage(pair, "prior", data, epochs=args.prior_epochs or args.epochs,
                              batch_size=args.batch_size, seed=args.seed).history
        speeds = [r["images_per_s"] for r in fit.history[1:] or fit.history]
        row = {"train_seconds": time.perf_counter() - t, "images_per_s": sum(speeds) / len(speeds),
               "train_elbo": fit.history[-1].get("elbo"), "val_elbo": fit.history[-1].get("val_elbo"),
               "params": sum(p.numel() for p in pair.parameters())}
        if name == "vqvae":
            pair.eval()
            row.update(pair.codebook_stats(x_test), prior_val_nll=prior[-1].get("val_prior_nll"))
        row.update(evaluate_ddpm(pair, data, x_test, args) if name in DDPM_MODELS else evaluate(name, pair, x_test, args))
        if name == "vae" and args.baseline_epochs:  # right after ppgen's VAE, so both see the same machine load
            row["pyro_baseline_images_per_s"] = pyro_baseline(data, args.baseline_epochs, args.batch_size, args.lr)
        rows[name] = row
        print(name, json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        if args.out:
            args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=2))
    print_table({k: v for k, v in rows.items() if k not in DDPM_MODELS}, args,
                rows.get("vae", {}).get("pyro_baseline_images_per_s"))
    print_ddpm_table({k: v for k, v in rows.items() if k in DDPM_MODELS}, args)
    return 0


def print_table(rows: dict, args, baseline: float | None) -> None:
    if not rows:
        return
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
    if baseline and "vae" in rows:
        print(f"\nplain Pyro tutorial VAE loop: {baseline:.0f} img/s; ppgen VAE / Pyro = {rows['vae']['images_per_s'] / baseline:.2f}")


def print_ddpm_table(rows: dict, args) -> None:
    """The DDPM rows: L_vlb on all test digits, L_vlb and the importance-weighted bound on the IW subset, in nats per
    digit and (grey levels) bits/dim."""
    if not rows:
        return
    unit = "bits/dim" if args.grey else "nats"
    scale = (lambda r, k: r[f"{k}_bpd"]) if args.grey else (lambda r, k: r[k])
    data = "8-bit grey levels, discretized decoder" if args.grey else "binarized, Bernoulli (2-bin) decoder"
    print(f"\nDDPM ({data}; T = {args.ddpm_steps}, objective {args.ddpm_objective}, timesteps "
          f"{args.ddpm_timestep_sampling}, variance {args.ddpm_variance}, {args.epochs} epochs, seed {args.seed}), "
          f"in {unit}:")
    print("| model | L_vlb (test digits) | L_vlb (IW digits) | IW-K bound (IW digits) | gap | terms (nats) | img/s | "
          "train s | eval s | params |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        terms = ", ".join(f"{k} {v:.1f}" for k, v in r["terms"].items())
        print(f"| {name} | {scale(r, 'vlb'):.3f} ± {scale(r, 'vlb_se'):.3f} ({r['test_digits']}) | "
              f"{scale(r, 'vlb_subset'):.3f} ({r['iw_digits']}) | {scale(r, 'iw'):.3f} ± {scale(r, 'iw_se'):.3f} "
              f"(K = {r['iw_k']}) | {scale(r, 'gap'):.3f} ± {scale(r, 'gap_se'):.3f} | "
              f"{terms} | {r['images_per_s']:.0f} | {r['train_seconds']:.0f} | "
              f"{r['bound_seconds'] + r['iw_seconds']:.0f} | {r['params']:,} |")
    for name, r in rows.items():
        if r["variance_floor"]:
            print(f"{name}: with fixed variances σ_t² the terms L_1..L_{args.ddpm_steps - 1} cannot go below "
                  f"{r['variance_floor']:.1f} nats ({r['variance_floor_bpd']:.3f} bits/dim), "
                  "the variance part of their KLs, whatever the denoiser")


if __name__ == "__main__":
    raise SystemExit(main())
