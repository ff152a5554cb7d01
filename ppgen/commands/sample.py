"""``ppgen sample RUN``: draws from a trained pair into a picture or a .npy file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ppgen.commands.args import add_rejection, check_rejection, non_negative, positive


def add(sub: argparse._SubParsersAction) -> None:
    from ppgen.workflows.sample import steps_families

    p = sub.add_parser("sample", help="draw from a trained model into a picture or .npy file",
                       description="Draw x from p(z) p(x|z) of a trained run (the likelihood's mean at each z).")
    p.add_argument("run", type=Path, help="run directory written by `ppgen train`")
    p.add_argument("-n", type=positive, default=64, help="number of samples (default 64)")
    p.add_argument("--out", type=Path, default=Path("samples.png"), help=".png (a grid) or .npy (the array)")
    p.add_argument("--seed", type=non_negative, default=0)
    p.add_argument("--steps", type=positive, metavar="S", help=f"{'/'.join(steps_families())}: sample in S steps "
                   "(a pair that samples in a chosen number of steps; at most its own)")
    add_rejection(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ppgen import workflows

    rejection = None
    if args.rejection:
        check_rejection(args)
        rejection = {"steps": args.rejection_steps, "quantile": args.quantile, "seed": args.seed}
    workflows.sample_run(args.run, args.n, args.out, seed=args.seed, steps=args.steps, rejection=rejection)
    print(f"wrote {args.out}")
    return 0
