"""``ppgen sample RUN``: draws from a trained pair into a picture or a .npy file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ppgen.commands import help_of
from ppgen.commands.args import add_rejection, check_rejection, non_negative, positive


def add(sub: argparse._SubParsersAction) -> None:
    from ppgen.workflows.sample import steps_families

    p = sub.add_parser("sample", help=help_of("sample"),
                       description="Draw x from p(z) p(x|z) of a trained run (the likelihood's mean at each z).")
    p.add_argument("run", type=Path, help="run directory written by `ppgen train`")
    p.add_argument("-n", type=positive, default=64, help="number of samples (default 64)")
    p.add_argument("--out", type=Path, default=Path("samples.png"), help=".png (a grid) or .npy (the array)")
    p.add_argument("--seed", type=non_negative, default=0)
    p.add_argument("--steps", type=positive, metavar="S", help=f"{'/'.join(steps_families())}: sample in S steps "
                   "(a pair that samples in a chosen number of steps; at most its own)")
    p.add_argument("--label", type=labels, metavar="K", help="a pair with an input column (a label): draw "
                   "x ~ p(x | y=K) for every sample, or give -n labels as a comma list (e.g. 0,1,2,3)")
    add_rejection(p)
    p.set_defaults(func=run)


def labels(text: str) -> int | list[int]:
    """``--label``: one whole number (every draw's label) or a comma list of them (one per draw)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a class index such as 3 or a comma list such as 0,1,2, got "
                                         f"{text!r}") from None
    return values[0] if len(values) == 1 else values


def run(args: argparse.Namespace) -> int:
    from ppgen import runs, workflows

    rejection = None
    if args.rejection:
        check_rejection(args)
        rejection = {"steps": args.rejection_steps, "quantile": args.quantile, "seed": args.seed}
    workflows.sample_run(args.run, args.n, args.out, seed=args.seed, steps=args.steps, rejection=rejection,
                         labels=args.label)
    print(f"wrote {args.out}")
    note = runs.unfinished_note(args.run)  # the weights came from the checkpoint: say so, and how to finish
    if note:
        print(note, file=sys.stderr)
    return 0
