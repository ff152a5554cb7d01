"""Index collapse of the VQ-VAE codebook: usage, perplexity and reconstruction for K in {16, 64, 512}.

For each K, three ways of learning the codebook, everything else equal (same networks, seed, data, epochs):

  loss         the codebook learned by gradient on ‖sg(z_e) − e‖² (van den Oord et al., 2017)
  ema          exponential moving averages, decay 0.99 (the paper's appendix)
  ema+restart  EMA, and a code whose bias-corrected count per batch falls below 1 moves to a random encoder
               output of the batch (Dhariwal et al., 2020)

Reported on the test split: codebook usage (share of the K codes any test grid position uses), perplexity
exp(H) of the empirical code distribution, −log p(x | z_q) and the squared error of E[x | z_q] per image,
and the uniform-prior bound log p(x | z_q) − hw log K.

    python benchmarks/vqvae_collapse.py --data digits --epochs 30
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ppgen
from ppgen.data import load
from ppgen.evaluation import elbo
from ppgen.models.vqvae import VQVAE

MODES = {"loss": dict(codebook="loss", restart_below=0.0), "ema": dict(codebook="ema", restart_below=0.0),
         "ema+restart": dict(codebook="ema", restart_below=1.0)}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits")
    p.add_argument("--codes", default="16,64,512")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--code-dim", type=int, default=8)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--downsample", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    return p.parse_args(argv)


def run_one(data, k: int, mode: str, args) -> dict:
    torch.manual_seed(args.seed)
    pair = VQVAE(data.x_shape, codes=k, code_dim=args.code_dim, downsample=args.downsample, channels=args.channels,
                 **MODES[mode])
    t = time.perf_counter()
    ppgen.fit(pair, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                    engine="torch", progress=False)
    row = {"codes": k, "mode": mode, "train_seconds": round(time.perf_counter() - t, 1)}
    pair.eval()
    row.update(pair.codebook_stats(data.test))
    row["bound"] = float(elbo(pair, data.test).mean())
    return row


def main(argv=None) -> int:
    args = parse(argv)
    data = load(args.data, binarize="dynamic", seed=args.seed)
    print(data.describe(), f"| epochs {args.epochs}, batch {args.batch_size}, lr {args.lr}, D {args.code_dim}, "
          f"channels {args.channels}, downsample {args.downsample}, torch threads {torch.get_num_threads()}",
          flush=True)
    rows = []
    for k in (int(v) for v in args.codes.split(",")):
        for mode in args.modes.split(","):
            rows.append(run_one(data, k, mode, args))
            print(json.dumps({a: (round(b, 4) if isinstance(b, float) else b) for a, b in rows[-1].items()}), flush=True)
            if args.out:
                args.out.write_text(json.dumps({"settings": {**vars(args), "out": str(args.out)}, "rows": rows},
                                               indent=2))
    print("\n| K | codebook | usage (test) | perplexity | −log p(x|z_q) | squared error | bound (uniform prior) | s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['codes']} | {r['mode']} | {r['codebook_usage']:.3f} | {r['perplexity']:.1f} | "
              f"{r['reconstruction_nll']:.2f} | {r['reconstruction_mse']:.2f} | {r['bound']:.2f} | "
              f"{r['train_seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
