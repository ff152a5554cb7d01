"""``make demo``: train a VAE on the bundled MNIST digits, evaluate it honestly, draw pictures.

Runs offline in a few minutes on 2 cores: 30 epochs of SVI (784-400-50, batch 256,
Adam 1e-3, dynamic binarization, best validation epoch kept), then the test ELBO,
the IWAE-1000 log-likelihood, KL per latent dimension and active units, then NUTS
on NumPyro over p(z | x, θ) of a few test digits beside the encoder, with the
approximation / amortization gap table (Cremer et al., 2018).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ppgen import workflows
from ppgen.errors import UserError


def compare_step(run_dir: Path, args) -> None:
    """NUTS on p(z | x, θ) for a few test digits beside the encoder: the inference-gap table."""
    from ppgen.workflows import compare_run

    print(f"== NUTS (NumPyro) on p(z | x, θ) of {args.points} test digits vs the encoder q(z | x)")
    compare_run(run_dir, points=args.points, chains=2, warmup=300, samples=500, steps=300, iwae_k=1000)


#: the steps after training and evaluation; each takes (run_dir, args)
STEPS: list = [compare_step]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ppgen.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (replaced if present)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--iwae", type=int, default=1000)
    parser.add_argument("--points", type=int, default=4, help="test digits for the NUTS comparison")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        config = workflows.make_config("vae", {"z_dim": 50, "hidden": (400,)}, {"name": "mnist"},
                                       {"epochs": args.epochs})
        print(f"== training a VAE on the bundled MNIST digits into {args.out}")
        metrics = workflows.train_run(config, args.out, overwrite=True)
        print(f"== evaluating on the test split (IWAE-{args.iwae})")
        result = workflows.evaluate_run(args.out, iwae_k=args.iwae)
        from ppgen.runs import write_json

        write_json(args.out / "evaluation_test.json", result)
        print(f"   train ELBO {metrics['train_elbo']:.2f}   validation ELBO {metrics['val_elbo']:.2f}   "
              f"test ELBO {result['elbo']:.2f} ± {result['elbo_se']:.2f}")
        print(f"   test log p(x) by IWAE-{args.iwae}: {result[f'iwae_{args.iwae}']:.2f} ± "
              f"{result[f'iwae_{args.iwae}_se']:.2f} nats; active units {result['active_units']}/50; "
              f"KL {result['kl_total']:.1f} nats; I(x;z) {result['mutual_information']:.2f}")
        for step in STEPS:
            step(args.out, args)
    except UserError as err:
        print(f"ppgen: error: {err}", file=sys.stderr)
        return 2
    print(f"== done in {time.perf_counter() - start:.0f} s; pictures: {args.out}/samples.png, reconstructions.png, "
          f"loss.png, latents.png, compare/forest.png, compare/gaps.png; ArviZ: {args.out}/posterior.nc")
    return 0


if __name__ == "__main__":
    sys.exit(main())
