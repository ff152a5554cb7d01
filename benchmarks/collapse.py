"""The collapse table: a VAE with an autoregressive (PixelCNN) decoder, trained plain and with each cure,
beside the MLP-decoder VAE — equal epochs, data, encoder and seeds.

Rows (all ``ppgen.fit`` on the bundled binarized digits, ``ppgen.data.load("mnist")``):

  mlp            the factorized MLP decoder (the baseline that does not collapse)
  plain          the PixelCNN decoder, nothing else
  anneal         KL warm-up from 0 over half the epochs (Bowman et al., 2016)
  beta=0.5       the KL weighted by 0.5 (Higgins et al., 2017)
  free-bits      a floor of --free-bits nats per latent dimension (Kingma et al., 2016)
  delta-vae      the guide's scale fixed so KL >= --delta nats per dimension (Razavi et al., 2019)
  skip           z enters every masked layer (Skip-VAE, Dieng et al., 2019)
  aggressive     guide-only inner loops for the first --aggressive-epochs epochs (He et al., 2019)

Columns, on the test split: NLL by IWAE with K = --k (nats; ``ppgen.evaluation.likelihood.iwae``), the KL
term, active units, I(x; z) (``ppgen.evaluation.collapse``) and the accuracy of a logistic-regression probe on the
posterior means (fitted on the training digits' means, scored on the test digits'); mean ± sd over seeds.
``--figure`` draws KL per dimension for each row (``ppgen.plots.kl_per_dim_bars``, seed 0).

    python benchmarks/collapse.py --quick            # a few minutes: 1 seed, 2 epochs, 1,000 digits
    python benchmarks/collapse.py --seeds 5 --epochs 5 --out collapse.json --figure collapse.png
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

import ppgen
from ppgen import plots
from ppgen.evaluation import collapse
from ppgen.evaluation.likelihood import iwae
from ppgen.models.vae import VAE

ROWS = ("mlp", "plain", "anneal", "beta=0.5", "free-bits", "delta-vae", "skip", "aggressive")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0, help="seeds run from here (to split seeds over processes)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train", type=int, default=None, help="use only this many training digits (default: all)")
    p.add_argument("--n-test", type=int, default=500, help="test digits for the NLL and the diagnostics")
    p.add_argument("--k", type=int, default=50, help="IWAE samples per test digit")
    p.add_argument("--z-dim", type=int, default=16)
    p.add_argument("--hidden", type=int, default=256, help="the MLP encoder's (and MLP decoder's) hidden size")
    p.add_argument("--channels", type=int, default=16, help="PixelCNN channels")
    p.add_argument("--layers", type=int, default=3, help="PixelCNN residual masked layers")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--free-bits", type=float, default=0.25)
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--aggressive-epochs", type=float, default=2.0)
    p.add_argument("--aggressive-steps", type=int, default=10)
    p.add_argument("--data", default="mnist", help="bundled binarized digits: mnist (28x28) or digits (8x8)")
    p.add_argument("--engine", default="torch", help="SVI engine of every row (torch: the PixelCNN's convolutions "
                   "run ~10x faster per CPU second there than lowered to XLA on CPU; free bits and aggressive "
                   "updates need it)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, 1,000 training digits, 200 test, K=10")
    p.add_argument("--out", type=Path, default=None, help="write every run's row as JSON here")
    p.add_argument("--figure", type=Path, default=None, help="KL per dimension of each row (first seed) as a PNG")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.train, args.n_test, args.k = 1, 2, 1000, 200, 10
        args.aggressive_epochs = 1.0
    return args


def build(row: str, x_shape: tuple[int, ...], args) -> tuple[VAE, dict]:
    """The pair and the SVI options of one row of the table."""
    model = dict(x_shape=x_shape, z_dim=args.z_dim, hidden=(args.hidden,), net="pixelcnn", ar_channels=args.channels,
                 ar_layers=args.layers)
    options: dict = {}
    if row == "mlp":
        model["net"] = "mlp"
    elif row == "anneal":
        options["anneal_epochs"] = args.epochs / 2
    elif row == "beta=0.5":
        options["beta"] = 0.5
    elif row == "free-bits":
        options["free_bits"] = args.free_bits
    elif row == "delta-vae":
        model["committed_rate"] = args.delta
    elif row == "skip":
        model["skip"] = True
    elif row == "aggressive":
        options.update(aggressive_epochs=args.aggressive_epochs, aggressive_steps=args.aggressive_steps)
    elif row != "plain":
        raise SystemExit(f"unknown row {row!r}; choose from {', '.join(ROWS)}")
    return VAE(**model), options


def run_one(data, row: str, seed: int, args) -> dict:
    torch.manual_seed(seed)
    pair, options = build(row, data.x_shape, args)
    t = time.perf_counter()
    fit = ppgen.fit(pair, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
                    engine=args.engine if row not in ("free-bits", "aggressive") else "torch", progress=False,
                    announce=lambda m: None, **options)
    seconds = time.perf_counter() - t
    pair.eval()
    x_test = data.test[: args.n_test].float()
    with torch.no_grad():
        torch.manual_seed(seed)
        nll = -float(iwae(pair, x_test, k=args.k).mean())
    rep = collapse.report(pair, x_test)
    probe = collapse.linear_probe(pair, data.train.float(), data.train_labels, x_test,
                                  data.test_labels[: args.n_test])
    return {"row": row, "seed": seed, "engine": fit.options["engine"], "train_seconds": round(seconds, 1),
            "train_elbo": fit.history[-1]["elbo"], "nll": nll, "kl": rep["kl_total"], "active_units": rep["active_units"],
            "mi": rep["mutual_information"], "probe": probe, "kl_per_dim": rep["kl_per_dim"]}


def _summary(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(results: list[dict]) -> str:
    lines = ["| row | NLL (IWAE) | KL | active units | I(x;z) | probe acc. | s/run |", "|---|---|---|---|---|---|---|"]
    for row in dict.fromkeys(r["row"] for r in results):
        rs = [r for r in results if r["row"] == row]
        lines.append(f"| {row} | {_summary([r['nll'] for r in rs], 1)} | {_summary([r['kl'] for r in rs], 2)} | "
                     f"{_summary([r['active_units'] for r in rs], 1)} | {_summary([r['mi'] for r in rs], 2)} | "
                     f"{_summary([r['probe'] for r in rs], 3)} | {statistics.mean(r['train_seconds'] for r in rs):.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = ppgen.data.load(args.data)
    if args.train is not None and args.train < len(data.train):
        data.train, data.train_labels = data.train[: args.train], data.train_labels[: args.train]
    rows = args.rows.split(",")
    print(f"collapse table: {args.data}, {len(data.train)} training digits, {args.n_test} test, {args.epochs} epochs, "
          f"{args.seeds} seed(s), z_dim {args.z_dim}, PixelCNN {args.layers} layers x {args.channels} channels, "
          f"IWAE K={args.k}", flush=True)
    results = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for row in rows:
            r = run_one(data, row, seed, args)
            results.append(r)
            print(f"  seed {seed} {row:11s} NLL {r['nll']:7.2f}  KL {r['kl']:6.2f}  AU {r['active_units']:2d}  "
                  f"MI {r['mi']:5.2f}  probe {r['probe']:.3f}  ({r['engine']}, {r['train_seconds']:.0f} s)", flush=True)
            if args.out is not None:
                args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                "results": results}, indent=1))
    print(table(results))
    if args.figure is not None:
        first = {r["row"]: r["kl_per_dim"] for r in results if r["seed"] == args.first_seed}
        plots.kl_per_dim_bars(first, args.figure)
        print(f"figure: {args.figure}")
    return 0 if all(math.isfinite(r["nll"]) for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
