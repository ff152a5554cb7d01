"""The likelihood leaderboard on full MNIST (50,000 / 10,000 / 10,000), beside the papers' figures.

Each row is one architecture of a paper, trained by ppgen's SVI backend on the dynamically binarized
50,000 training digits (a new Bernoulli draw of every image each epoch; ``--data mnist-full``), then
scored on the test digits (binarized once) by

  test NLL   −IWAE-K (Burda et al., 2016), K = ``--k`` (5,000 as in the papers), on all 10,000 test digits or on
             a seeded random subset of ``--test-points`` of them; ± its standard error sd(log p̂(x_n)) / √n
             over the digits (the spread of the digits, not only of the estimator)

beside the paper's number at the paper's epochs. Rows (``--rows``):

  vae-k1     one stochastic layer, Burda et al.'s 784-200-200-50 tanh nets, ELBO (k = 1)     paper 86.76
  iwae-k5    the same net, IWAE bound with k = 5                                             paper 85.54
  iwae-k50   the same net, IWAE bound with k = 50                                            paper 84.78
  vae2-k1    two stochastic layers (hvae), 784-(200-200)-100-(100-100)-50 tanh, ELBO         paper 85.33
  iwae2-k50  the same two-layer net, IWAE bound with k = 50                                  paper 82.90
  lvae       Ladder VAE, 2 layers 64-32 over 512-256 (batch norm, KL warm-up, softplus)     paper ≈ 81.7 (5 layers)
  dlgm       Rezende et al.'s DLGM, 2 Gaussian layers 100-50 over 200-200 / 100-100 (softplus)  paper ≈ 86.60
  nade       NADE, 500 hidden units, raster order: its exact log p(x)                          paper 88.86
  vqvae      VQ-VAE, 64 codes on a 7x7 grid, then its PixelCNN prior over the codes           no paper figure
  pixelcnn-vae  a VAE with a small PixelCNN decoder (GPU: its IWAE-5000 is 0.4 CPU-hours per 1,000 digits)
  ddpm       DDPM, T = 100, MLP 512-512, learned variances, L_vlb with importance-sampled t   no paper figure

The VQ-VAE's guide is a point mass at the nearest codes k(x), so IWAE-K = its ELBO for every K: the bound
log p(x) ≥ log p(x | k(x)) + log p_prior(k(x)) with the fitted PixelCNN prior (the stage ``prior``, ``--prior-minutes``).
The DDPM's figure is its bound L_vlb = −ELBO (every term a closed-form KL at one x_t per t and digit, ≥ −log p(x)),
not an IWAE-5000: the row says so (``bound``), and its validation curve is on the first 200 validation digits.

Burda et al. trained 3,280 epochs (Adam, lr 1e-3·10^(−i/7) over 3^i epochs, batch 20, so 10 times lower at the
end); ppgen uses Adam lr ``--lr`` falling geometrically to ``--lr`` × ``--lr-final`` at the last of ``--epochs``
(1: constant), batch ``--batch-size``, ``--epochs`` per row (``--epochs paper`` = the paper's 3,280).
Every row records its validation ELBO per epoch (the learning curve), process CPU seconds, wall seconds, the
load average during training, and writes ``ROW.json`` (and the weights ``ROW.pt``) into ``--out``;
``report`` turns the JSON files into the Markdown table and a figure of the curves.

    python benchmarks/mnist_table.py train --rows vae-k1 --epochs 300 --test-points 2000 --out runs/mnist_table
    python benchmarks/mnist_table.py train --rows vae-k1,iwae-k5,iwae-k50,vae2-k1,iwae2-k50,lvae --epochs paper \\
        --device cuda --out runs/mnist_table                                           # the papers' budget, GPU
    python benchmarks/mnist_table.py report runs/mnist_table --markdown docs/mnist_table.md --figure curves.png
    python benchmarks/mnist_table.py paired runs/mnist_table --rows vae-k1,iwae-k5,lvae --test-points 2000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ppgen  # noqa: E402
from ppgen.data import load  # noqa: E402
from ppgen.evaluation import ais, bdmc, iwae  # noqa: E402
from ppgen.inference.stages import fit_stage, stage_named  # noqa: E402
from ppgen.models import DLGM, NADE, VAE, HierarchicalVAE, LadderVAE  # noqa: E402
from ppgen.models.diffusion import DDPM  # noqa: E402
from ppgen.models.vqvae import VQVAE  # noqa: E402

#: Burda et al. (2016) trained every model for this many passes over the 50,000 training digits
PAPER_EPOCHS = 3280
BURDA = "Burda et al. 2016, Table 1"


@dataclass(frozen=True)
class Row:
    """One leaderboard row: the pair it builds, its training options, the paper's NLL (nats) and where it is from."""

    build: Callable[[tuple[int, ...]], Any]
    options: dict = field(default_factory=dict)
    paper: float | None = None
    source: str = BURDA
    #: the paper's epochs (None: it states none; ``--epochs paper`` then runs Burda et al.'s 3,280)
    paper_epochs: int | None = PAPER_EPOCHS
    about: str = ""
    #: the same pair from the command line: ``ppgen train`` + these words (tests/test_mnist_rows.py builds both)
    cli: str = ""
    #: what the test NLL is: "iwae" (−IWAE-K; exact for NADE, the point-mass bound for the VQ-VAE) or "vlb" (DDPM)
    bound: str = "iwae"
    #: a second stage fitted after training (the VQ-VAE's prior)
    stage: str | None = None


def burda_one_layer(shape) -> VAE:
    """784-200-200-50 with tanh hidden layers: Burda et al.'s one-stochastic-layer net (the decoder mirrors it)."""
    return VAE(shape, z_dim=50, hidden=(200, 200), activation="tanh")


def burda_two_layer(shape) -> HierarchicalVAE:
    """784-(200-200)-100-(100-100)-50, tanh: Burda et al.'s two-stochastic-layer net."""
    return HierarchicalVAE(shape, z_dims=(100, 50), hidden=((200, 200), (100, 100)), activation="tanh")


def ladder(shape) -> LadderVAE:
    """A two-layer Ladder VAE, 512-256 deterministic and 64-32 stochastic units: the first two of Sønderby et al.'s
    five layers (512-256-128-64-32 / 64-32-16-8-4), batch norm in the bottom-up pass."""
    return LadderVAE(shape, z_dims=(64, 32), hidden=((512, 512), (256, 256)))


def dlgm(shape) -> DLGM:
    """Rezende et al.'s DLGM with Burda et al.'s two-layer sizes: 100-50 Gaussian layers over 200-200 (recognition,
    decoder) and 100-100 (the mean network T_1), softplus."""
    return DLGM(shape, z_dims=(100, 50), hidden=((200, 200), (100, 100)))


def nade(shape) -> NADE:
    """Larochelle & Murray's NADE with 500 hidden units (their MNIST model), raster order."""
    return NADE(shape, hidden=500)


def vqvae(shape) -> VQVAE:
    """A VQ-VAE with 64 codes of size 16 on a 7x7 grid (two stride-2 convolutions of 32 channels) and a PixelCNN
    prior over the grid (4 masked layers, 64 channels), fitted after the VQ-VAE."""
    return VQVAE(shape, codes=64, code_dim=16, downsample=2, channels=32)


def pixelcnn_vae(shape) -> VAE:
    """A VAE whose decoder is a small PixelCNN conditioned on z (50 latents, 3 residual masked layers of 16 channels):
    IWAE-5000 costs 5,000 PixelCNN passes per digit (≈ 0.3 ms of CPU each: 0.4 CPU-hours on 1,000 digits)."""
    return VAE(shape, z_dim=50, net="pixelcnn", ar_channels=16, ar_layers=3)


def ddpm(shape) -> DDPM:
    """A DDPM on the binary pixels (Bernoulli decoder), T = 100, an MLP denoiser 512-512, learned reverse variances
    (Nichol & Dhariwal 2021), trained on L_vlb with importance-sampled timesteps."""
    return DDPM(shape, timesteps=100, hidden=(512, 512), variance="learned", objective="vlb",
                timestep_sampling="importance")


IWAE = {"elbo": "iwae"}
BURDA_ONE = "vae --z-dim 50 --hidden 200,200 --activation tanh"
BURDA_TWO = "hvae --z-dims 100,50 --hidden 200,200 100,100 --activation tanh"
ROWS: dict[str, Row] = {
    "vae-k1": Row(burda_one_layer, {}, 86.76, about="1 stochastic layer, ELBO", cli=BURDA_ONE),
    "iwae-k5": Row(burda_one_layer, IWAE | {"num_particles": 5}, 85.54, about="1 stochastic layer, IWAE k = 5",
                   cli=BURDA_ONE + " --elbo iwae --particles 5"),
    "iwae-k50": Row(burda_one_layer, IWAE | {"num_particles": 50}, 84.78, about="1 stochastic layer, IWAE k = 50",
                    cli=BURDA_ONE + " --elbo iwae --particles 50"),
    "vae2-k1": Row(burda_two_layer, {}, 85.33, about="2 stochastic layers, ELBO", cli=BURDA_TWO),
    "iwae2-k50": Row(burda_two_layer, IWAE | {"num_particles": 50}, 82.90, about="2 stochastic layers, IWAE k = 50",
                     cli=BURDA_TWO + " --elbo iwae --particles 50"),
    "lvae": Row(ladder, {"warmup_fraction": 0.25}, 81.74, "Sønderby et al. 2016, Table 1, best 5-layer row", 2000,
                "Ladder VAE, 2 layers, batch norm, KL warm-up",
                cli="lvae --z-dims 64,32 --hidden 512,512 256,256"),
    "dlgm": Row(dlgm, {}, 86.60, "Rezende et al. 2014; unchecked", None,
                "DLGM, 2 Gaussian layers 100-50, ELBO", cli="dlgm --z-dims 100,50 --hidden 200,200 100,100"),
    "nade": Row(nade, {}, 88.86, "Larochelle & Murray 2011, static binarization; unchecked", None,
                "NADE, 500 hidden units, exact log p(x)", cli="nade --hidden 500"),
    "vqvae": Row(vqvae, {}, None, "no binarized-MNIST figure", None, "VQ-VAE 64 codes 7x7, PixelCNN prior; its bound",
                 cli="vqvae --codes 64 --code-dim 16 --downsample 2 --channels 32",
                 stage="prior"),
    "pixelcnn-vae": Row(pixelcnn_vae, {}, None, "no figure for this architecture", None,
                        "VAE with a PixelCNN decoder (3 masked layers, 16 channels)",
                        cli="vae --z-dim 50 --net pixelcnn --ar-channels 16 --ar-layers 3"),
    "ddpm": Row(ddpm, {}, None, "no binarized-MNIST figure", None, "DDPM T = 100, learned variances; L_vlb",
                cli="ddpm --timesteps 100 --hidden 512,512 --variance learned --objective vlb "
                    "--timestep-sampling importance", bound="vlb"),
}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train and score rows, one JSON file per row")
    t.add_argument("--rows", default="vae-k1,iwae-k5,iwae-k50", help=f"comma-separated, of {', '.join(ROWS)}")
    t.add_argument("--epochs", default="100",
                   help="epochs per row: N for every row, ROW=N,ROW=N for each, or 'paper' (each row's paper epochs)")
    t.add_argument("--minutes", default="0",
                   help="wall-clock budget per row, N or ROW=N: training stops after the first epoch that ends past "
                        "it (0: none; the row records the epochs run)")
    t.add_argument("--prior-epochs", type=int, default=100, help="vqvae: epochs of its PixelCNN prior (at most)")
    t.add_argument("--prior-minutes", type=float, default=0, help="vqvae: wall-clock budget of its prior (0: none)")
    t.add_argument("--data", default="mnist-full", help="mnist-full (dynamic binarization) or mnist-full-static")
    t.add_argument("--batch-size", type=int, default=100)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--lr-final", type=float, default=1.0,
                   help="the last epoch's learning rate as a share of --lr (a geometric fall over --epochs; 1: constant)")
    t.add_argument("--engine", default="auto", choices=["auto", "torch", "jax"])
    t.add_argument("--k", type=int, default=5000, help="IWAE samples per test digit")
    t.add_argument("--test-points", type=int, default=0, help="a seeded random subset of this many test digits "
                   "(0: all 10,000)")
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, default=Path("runs/mnist_table"))
    q = sub.add_parser("paired", help="re-score saved rows on the same digits: paired differences of their NLLs")
    q.add_argument("folder", type=Path)
    q.add_argument("--rows", required=True)
    q.add_argument("--data", default="mnist-full")
    q.add_argument("--k", type=int, default=5000)
    q.add_argument("--test-points", type=int, default=0)
    q.add_argument("--device", default="cpu")
    q.add_argument("--threads", type=int, default=None)
    q.add_argument("--seed", type=int, default=0)
    a = sub.add_parser("ais", help="AIS with BDMC beside IWAE-K on the first --points of the table's seeded test "
                       "digits, from the rows' saved weights (ROW.pt); writes FOLDER/ais/ROW-INIT.json")
    a.add_argument("folder", type=Path)
    a.add_argument("--rows", required=True)
    a.add_argument("--points", type=int, default=10, help="the first N digits of the --test-points subset")
    a.add_argument("--steps", type=int, default=500, help="AIS intermediate distributions")
    a.add_argument("--chains", type=int, default=4)
    a.add_argument("--leapfrog", type=int, default=5)
    a.add_argument("--init", default="prior", choices=["prior", "guide"], help="AIS's initial distribution")
    a.add_argument("--bdmc", type=int, default=5, help="digits simulated from the model for BDMC (0: none)")
    a.add_argument("--data", default="mnist-full")
    a.add_argument("--k", type=int, default=5000)
    a.add_argument("--test-points", type=int, default=1000)
    a.add_argument("--device", default="cpu")
    a.add_argument("--threads", type=int, default=None)
    a.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("report", help="the Markdown table and the learning-curve figure from the rows' JSON files")
    r.add_argument("folder", type=Path)
    r.add_argument("--markdown", type=Path, default=None)
    r.add_argument("--figure", type=Path, default=None)
    return p.parse_args(argv)


def per_row(spec: str, names: list[str], flag: str, kind=int) -> dict:
    """``--epochs`` / ``--minutes``: one number for every row, ``ROW=N`` pairs, or (epochs) ``paper``."""
    if spec == "paper" and flag == "--epochs":
        return {n: ROWS[n].paper_epochs or PAPER_EPOCHS for n in names}
    if "=" not in spec:
        return {n: kind(spec) for n in names}
    given = dict(item.split("=") for item in spec.split(","))
    missing = set(names) - set(given)
    if missing:
        raise SystemExit(f"{flag}: no value for {', '.join(sorted(missing))}")
    return {n: kind(given[n]) for n in names}


class OutOfTime(Exception):
    """The row's wall-clock budget ran out at the end of an epoch (the pair holds that epoch's weights)."""


def test_subset(data, n: int, seed: int) -> tuple[torch.Tensor, list[int] | None]:
    """All test digits (n = 0) or a seeded random subset of n of them, with its indices."""
    if not n or n >= len(data.test):
        return data.test, None
    idx = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return data.test[idx], idx.tolist()


def score(pair, data, args, bound: str = "iwae") -> tuple[torch.Tensor, list[int] | None]:
    """IWAE-K log p̂(x) of every scored test digit (seeded: the same draws for the same weights), and their indices;
    ``bound="vlb"`` (DDPM): −L_vlb per digit instead, every term a closed-form KL at one x_t per t."""
    x, idx = test_subset(data, args.test_points, args.seed)
    pair.eval()
    torch.manual_seed(args.seed)
    with torch.no_grad():
        x = x.to(args.device)
        if bound == "vlb":
            return -torch.cat([pair.vlb_terms(x[r:r + 100]).sum(-1) for r in range(0, len(x), 100)]).double().cpu(), idx
        return iwae(pair, x, k=args.k).double().cpu(), idx


def paired(args) -> int:
    """Re-score the rows' saved weights (ROW.pt) on the same digits with the same seed (the figures ``train``
    recorded) and print every pair's mean difference of −log p̂ with its paired standard error."""
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.rows.split(",")
    data = load(args.data, binarize=None if args.data == "mnist-full-static" else "dynamic", seed=args.seed)
    logp = {}
    for name in names:
        pair = ROWS[name].build(data.x_shape)
        pair.load_state_dict(torch.load(args.folder / f"{name}.pt", weights_only=True))
        logp[name], _ = score(pair, data, args, ROWS[name].bound)
        print(f"{name}: test NLL {-float(logp[name].mean()):.2f} ± {float(logp[name].std()) / math.sqrt(len(logp[name])):.2f}",
              flush=True)
    print("\n| row A | row B | NLL A − NLL B | paired SE |\n|---|---|---|---|")
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = logp[b] - logp[a]
            print(f"| {a} | {b} | {float(d.mean()):+.2f} | {float(d.std()) / math.sqrt(len(d)):.2f} |")
    return 0


def ais_rows(args) -> int:
    """AIS (Neal, 2001; Wu et al., 2017) from ``--init`` to the posterior, HMC transitions, on the first ``--points``
    digits of the table's seeded test subset, beside IWAE-K on the same digits (paired difference: AIS − IWAE), and
    BDMC (Grosse et al., 2015) on ``--bdmc`` digits simulated from the model: forward AIS ≤ log p(x) ≤ reverse AIS,
    the gap bounding forward AIS's error on such digits."""
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load(args.data, binarize=None if args.data == "mnist-full-static" else "dynamic", seed=args.seed)
    x, _ = test_subset(data, args.test_points, args.seed)
    x = x[:args.points].to(args.device)
    (args.folder / "ais").mkdir(exist_ok=True)
    for name in args.rows.split(","):
        pair = ROWS[name].build(data.x_shape).to(args.device)
        pair.load_state_dict(torch.load(args.folder / f"{name}.pt", weights_only=True))
        pair.eval()
        cpu, wall = time.process_time(), time.perf_counter()
        torch.manual_seed(args.seed)
        with torch.no_grad():
            ll = iwae(pair, x, k=args.k).double().cpu()
        result = ais(pair, x, steps=args.steps, chains=args.chains, leapfrog=args.leapfrog, init=args.init,
                     seed=args.seed)
        diff = result.log_px.double().cpu() - ll
        record = {"row": name, "points": len(x), "test_subset_seed": args.seed, "steps": args.steps,
                  "chains": args.chains, "leapfrog": args.leapfrog, "init": args.init, "k": args.k,
                  "ais_nll": -result.mean, "ais_mc_se": result.mean_se, "ais_acceptance": result.acceptance,
                  "iwae_nll": -float(ll.mean()), "ais_minus_iwae": float(diff.mean()),
                  "ais_minus_iwae_se": float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")}
        if args.bdmc:
            both = bdmc(pair, n=args.bdmc, steps=args.steps, chains=args.chains, leapfrog=args.leapfrog,
                        init=args.init, seed=args.seed)
            record.update(bdmc_points=args.bdmc, bdmc_lower=both.lower.mean, bdmc_upper=both.upper.mean,
                          bdmc_gap=both.gap)
        record.update(cpu_s=time.process_time() - cpu, wall_s=time.perf_counter() - wall, load=os.getloadavg()[0])
        (args.folder / "ais" / f"{name}-{args.init}.json").write_text(json.dumps(record, indent=1))
        print(json.dumps(record), flush=True)
    return 0


def ais_markdown(records: list[dict]) -> str:
    """The AIS table: AIS beside IWAE-K on the same digits, and BDMC's sandwich on simulated digits."""
    lines = ["| row | digits | −AIS (steps × chains × leapfrog) | −IWAE-K same digits | log p̂: AIS − IWAE (paired; > 0: AIS tighter) | "
             "BDMC on simulated digits: log p lower, upper (gap) | CPU s |", "|---|---|---|---|---|---|---|"]
    for r in records:
        sandwich = (f"{r['bdmc_lower']:.2f}, {r['bdmc_upper']:.2f} ({r['bdmc_gap']:.2f}), {r['bdmc_points']} digits"
                    if "bdmc_gap" in r else "—")
        lines.append(f"| {r['row']} | {r['points']} | {r['ais_nll']:.2f} ± {r['ais_mc_se']:.2f} ({r['steps']} × "
                     f"{r['chains']} × {r['leapfrog']}, from the {r['init']}) | {r['iwae_nll']:.2f} (K = {r['k']:,}) | "
                     f"{r['ais_minus_iwae']:+.2f} ± {r['ais_minus_iwae_se']:.2f} | {sandwich} | {r['cpu_s']:.0f} |")
    return "\n".join(lines)


def train_row(name: str, epochs: int, minutes: float, data, args) -> dict:
    """Train row ``name`` for ``epochs`` (or until ``minutes`` of wall time have passed at the end of an epoch), score
    it by IWAE-K on the test digits, and return its record."""
    row = ROWS[name]
    pair = row.build(data.x_shape)
    options = dict(row.options)
    if "warmup_fraction" in options:
        options["anneal_epochs"] = options.pop("warmup_fraction") * epochs
    loads, history = [], []
    cpu, wall = time.process_time(), time.perf_counter()

    def progress(fit) -> None:
        h = fit.history[-1]
        history[:] = fit.history
        loads.append(os.getloadavg()[0])
        print(f"  {name} epoch {len(fit.history)}/{epochs}: train {h.get('elbo', float('nan')):.2f}  val ELBO "
              f"{h.get('val_elbo', float('nan')):.2f}  {h.get('images_per_s', 0):.0f} img/s  load {loads[-1]:.1f}",
              flush=True)
        if minutes and time.perf_counter() - wall > 60 * minutes and len(fit.history) < epochs:
            raise OutOfTime

    try:
        ppgen.fit(pair, train_data(data, row), backend="svi", epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                  lr_final=args.lr_final, seed=args.seed, device=args.device, engine=args.engine, progress=False, on_epoch_end=progress,
                  **options)
        stopped = None
    except OutOfTime:
        stopped = f"wall budget of {minutes:g} min"
    train_cpu, train_wall = time.process_time() - cpu, time.perf_counter() - wall
    stage = fit_second_stage(pair, name, data, args) if row.stage else {}
    torch.save(pair.state_dict(), args.out / f"{name}.pt")
    cpu, wall = time.process_time(), time.perf_counter()
    ll, idx = score(pair, data, args, row.bound)
    n = len(ll)
    return {"row": name, "about": row.about, "data": args.data, "epochs": epochs, "epochs_run": len(history),
            "stopped_by": stopped, "engine": args.engine, "options": row.options, "bound": row.bound,
            "command": command(row, len(history), args, stage.get("stage_epochs_run"), planned=epochs), **stage,
            "batch_size": args.batch_size, "lr": args.lr, "lr_final": args.lr_final, "seed": args.seed,
            "nll": -float(ll.mean()), "nll_se": float(ll.std() / math.sqrt(n)), "k": args.k, "test_digits": n,
            "test_subset_seed": args.seed if idx is not None else None,
            "train_cpu_s": train_cpu, "train_wall_s": train_wall, "eval_cpu_s": time.process_time() - cpu,
            "eval_wall_s": time.perf_counter() - wall, "load_mean": sum(loads) / max(1, len(loads)),
            "load_max": max(loads, default=float("nan")), "cores": os.cpu_count(),
            "paper": row.paper, "paper_source": row.source, "paper_epochs": row.paper_epochs,
            "curve_val_elbo": [h.get("val_elbo") for h in history],
            "curve_train_elbo": [h.get("elbo") for h in history],
            "params": sum(p.numel() for p in pair.parameters())}


def command(row: Row, epochs: int, args, stage_epochs: int | None = None, planned: int | None = None) -> str:
    """The ``ppgen train`` line that trains the row's pair for ``epochs`` as this script did, and for a row with a
    second stage the ``ppgen STAGE RUN`` line after it (the VQ-VAE's prior, ``stage_epochs``). A run planned for
    ``planned`` epochs and stopped by its wall budget after ``epochs`` followed lr · f^(e / (planned − 1)); the
    line's ``--lr-final`` f^((epochs − 1) / (planned − 1)) gives the same rate at every epoch it ran."""
    line = (f"ppgen train {row.cli} --data {args.data} --epochs {epochs} --batch-size {args.batch_size} "
            f"--lr {args.lr:g} --seed {args.seed}")
    if args.lr_final != 1.0:
        planned = planned or epochs
        final = args.lr_final ** ((epochs - 1) / (planned - 1)) if planned > 1 else args.lr_final
        line += f" --lr-final {final:.6g}"
    if "warmup_fraction" in row.options:
        line += f" --anneal-epochs {row.options['warmup_fraction'] * epochs:g}"
    if row.stage:
        line += f"; ppgen {row.stage} RUN --epochs {stage_epochs or args.prior_epochs} --batch-size {args.batch_size}"
    return line


def train_data(data, row: Row):
    """The data set a row trains on: the DDPM's validation bound costs T denoiser passes per digit, so its curve is
    on the first 200 validation digits (the others validate on all 10,000)."""
    if row.bound != "vlb":
        return data
    return dataclasses.replace(data, val=data.val[:200], val_labels=None, val_inputs={})


def fit_second_stage(pair, name: str, data, args) -> dict:
    """Fit the row's second stage (the VQ-VAE's PixelCNN prior over its codes) for ``--prior-epochs`` or until
    ``--prior-minutes`` of wall time have passed at the end of an epoch; its record."""
    cpu, wall, curve = time.process_time(), time.perf_counter(), []

    def progress(fit) -> None:
        curve[:] = [h.get("val_prior_nll") for h in fit.history]
        print(f"  {name} prior epoch {len(fit.history)}: val prior NLL {curve[-1]}", flush=True)
        if args.prior_minutes and time.perf_counter() - wall > 60 * args.prior_minutes:
            raise OutOfTime

    try:
        fit_stage(pair, ROWS[name].stage, data, epochs=args.prior_epochs, batch_size=args.batch_size, seed=args.seed,
                  on_epoch_end=progress)
        stopped = None
    except OutOfTime:  # the stage's weights are those of its last finished epoch: make the pair use them
        stage_named(pair, ROWS[name].stage).finish(pair)
        stopped = f"wall budget of {args.prior_minutes:g} min"
    return {"stage": ROWS[name].stage, "stage_epochs_run": len(curve), "stage_stopped_by": stopped,
            "stage_cpu_s": time.process_time() - cpu, "stage_wall_s": time.perf_counter() - wall,
            "curve_stage_val": curve}


def train(args) -> int:
    names = args.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"--rows: unknown {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    epochs = per_row(args.epochs, names, "--epochs")
    minutes = per_row(args.minutes, names, "--minutes", float)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load(args.data, binarize=None if args.data == "mnist-full-static" else "dynamic", seed=args.seed)
    print(data.describe(), flush=True)
    for name in names:
        record = train_row(name, epochs[name], minutes[name], data, args)
        (args.out / f"{name}.json").write_text(json.dumps(record, indent=1))
        what = "L_vlb" if record["bound"] == "vlb" else f"IWAE-{args.k}"
        print(f"{name}: test NLL {record['nll']:.2f} ± {record['nll_se']:.2f} ({what}, {record['test_digits']} "
              f"digits), {record['epochs_run']} epochs, train {record['train_cpu_s']:.0f} CPU s / "
              f"{record['train_wall_s']:.0f} wall s, load {record['load_mean']:.1f}", flush=True)
    return 0


def still_falling(curve: list[float], window: int = 10) -> float:
    """Mean validation −ELBO gain per epoch over the last ``window`` epochs (nats/epoch; > 0: still improving)."""
    v = [c for c in curve if c is not None]
    if len(v) < 2:
        return float("nan")
    w = min(window, len(v) - 1)
    return (v[-1] - v[-1 - w]) / w


def markdown(records: list[dict]) -> str:
    lines = ["| row | model | test NLL (nats) | paper | difference | epochs (paper) | train CPU s | train wall s | "
             "load avg | final val ELBO | val −ELBO drop per epoch, last 10 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        diff = f"{r['nll'] - r['paper']:+.2f}" if r["paper"] else "—"
        paper = f"{r['paper']:.2f} ({r['paper_source']})" if r["paper"] else r["paper_source"]
        nll = f"{r['nll']:.2f} ± {r['nll_se']:.2f}" + (" (L_vlb)" if r.get("bound") == "vlb" else "")
        lines.append(f"| {r['row']} | {r['about']} | {nll} | {paper} | {diff} | "
                     f"{r['epochs_run']} ({r['paper_epochs'] or '—'}) | "
                     f"{r['train_cpu_s']:.0f} | {r['train_wall_s']:.0f} | {r['load_mean']:.1f} | "
                     f"{r['curve_val_elbo'][-1]:.2f} | {still_falling(r['curve_val_elbo']):.3f} |")
    lines += ["", curves(records)]
    ks = {(r["k"], r["test_digits"]) for r in records}
    lines.append("")
    lines.append("Test NLL: −IWAE-K on " + "; ".join(f"{n:,} test digits, K = {k:,}" for k, n in sorted(ks)) +
                 " (± one standard error over the digits).")
    return "\n".join(lines)


def curves(records: list[dict], marks: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)) -> str:
    """The learning curves as a table: validation −ELBO (nats) after selected epochs and after the last."""
    longest = max(r["epochs_run"] for r in records)
    cols = [m for m in marks if m < longest]
    lines = ["| row | " + " | ".join(f"epoch {m}" for m in cols) + " | last epoch |",
             "|---|" + "---|" * (len(cols) + 1)]
    for r in records:
        v = r["curve_val_elbo"]
        cells = [f"{-v[m - 1]:.2f}" if m <= len(v) and v[m - 1] is not None else "" for m in cols]
        lines.append(f"| {r['row']} | " + " | ".join(cells) + f" | {-v[-1]:.2f} ({len(v)}) |")
    return "\n".join(lines)


def figure(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in records:
        curve = [-v for v in r["curve_val_elbo"] if v is not None]
        ax.plot(range(1, len(curve) + 1), curve, label=f"{r['row']} (test NLL {r['nll']:.1f})")
        if r["paper"]:
            ax.axhline(r["paper"], ls=":", lw=0.8, color=ax.lines[-1].get_color())
    ax.set_xscale("log")
    ax.set_ylim(80, 130)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation −ELBO (nats)")
    ax.set_title("full MNIST: validation −ELBO per epoch (dotted: the paper's test NLL)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(args) -> int:
    records = [json.loads(p.read_text()) for p in sorted(args.folder.glob("*.json"))]
    order = list(ROWS)
    records.sort(key=lambda r: order.index(r["row"]) if r["row"] in order else len(order))
    text = markdown(records)
    sampled = [json.loads(p.read_text()) for p in sorted((args.folder / "ais").glob("*.json"))]
    if sampled:
        text += "\n\n" + ais_markdown(sampled)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.figure:
        figure(records, args.figure)
    return 0


def main(argv=None) -> int:
    args = parse(argv)
    return {"train": train, "paired": paired, "report": report, "ais": ais_rows}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
