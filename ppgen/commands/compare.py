"""``ppgen compare RUN``: NUTS on p(z|x) beside the encoder's q(z|x), the distances and the inference gap."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ppgen.commands import help_of
from ppgen.commands.args import non_negative
from ppgen.errors import UserError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help=help_of("compare"),
                       description="Sample p(z | x, θ) with NUTS (NumPyro; the trained decoder fixed) for test "
                                   "points, compare it with the encoder's q(z | x) (KL, W2, interval coverage, PSIS "
                                   "k-hat) and split log p(x) - ELBO into approximation and amortization gaps "
                                   "(Cremer et al., 2018). A model with global latents (shared by every example: "
                                   "regression weights) gets NUTS on the whole model given the training data beside "
                                   "the guide's q(w), a row per site. Writes compare.nc (ArviZ), compare.json and "
                                   "pictures.")
    p.add_argument("run", type=Path, help="run directory written by `ppgen train`")
    p.add_argument("--points", type=int, help="the first N points of the split (default 16; a model with global "
                                                "latents takes the whole training split)")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--chains", type=int, default=4, help="NUTS chains per point (default 4)")
    p.add_argument("--warmup", type=int, default=500, help="NUTS warmup iterations (default 500)")
    p.add_argument("--samples", type=int, default=1000, help="NUTS draws per chain (default 1000)")
    p.add_argument("--steps", type=int, default=1000, help="Adam steps of the per-point Gaussian q* (default 1000)")
    p.add_argument("--iwae", type=int, default=5000, metavar="K", help="importance samples for log p(x) (default 5000)")
    p.add_argument("--out", type=Path, help="output directory (default RUN/compare)")
    p.add_argument("--seed", type=non_negative, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ppgen import runs, workflows

    if (args.points is not None and args.points < 1) or args.chains < 1 or args.samples < 1 or args.warmup < 0 or args.steps < 0 or args.iwae < 1:
        raise UserError("--points, --chains, --samples and --iwae must be at least 1, --warmup and --steps at least 0")
    pair = runs.load_pair(args.run)
    note = runs.unfinished_note(args.run)  # the weights came from the checkpoint: say so, and how to finish
    if note:
        print(note, file=sys.stderr)
    if pair.nuts_refusal:
        raise UserError(f"ppgen compare runs NUTS on the latents, which cannot sample {pair.who}: {pair.nuts_refusal}")
    if not pair.has_guide:
        raise UserError(f"{args.run} holds a {pair.name} without a guide q(z|x); compare needs an encoder to compare "
                        "with NUTS (train a pair that has one)")
    runs.check_output_dir(args.out if args.out is not None else args.run / "compare")
    workflows.compare_run(args.run, args.out, points=args.points, chains=args.chains, warmup=args.warmup,
                          samples=args.samples, split=args.split, steps=args.steps, iwae_k=args.iwae, seed=args.seed)
    return 0
