"""What the subcommands share: argparse types, flags derived from declared dataclass fields, printed lines."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ppgen.errors import UserError


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "whole number"
    return parse


#: argparse types: whole numbers >= 1 (counts) and >= 0 (seeds, optional counts where 0 means off)
positive = _int_at_least(1)
non_negative = _int_at_least(0)


def ints(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers (layer sizes): ``400`` or ``512,256``."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 400 or 512,256, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return values


class StageGroups(argparse.Action):
    """Several comma-separated groups (``--hidden 200,200 100,100``): one tuple of sizes per stage of a layered
    family; one group alone stays a flat tuple (one size per stage, e.g. ``--hidden 400,200``)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values[0] if len(values) == 1 else tuple(values))


def kind_of(f: dataclasses.Field) -> str:
    """The base type name of a field's annotation: ``int``, ``float``, ``str``, ``bool`` or ``tuple``."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
    return kind.split("|")[0].split("[")[0].strip()


def choices_of(f: dataclasses.Field) -> tuple | None:
    """The values a field declares it takes: its ``metadata["choices"]``, or its declared check's ``.choices``."""
    declared = f.metadata.get("choices") or getattr(f.metadata.get("check"), "choices", None)
    return tuple(declared) if declared else None


def add_flag(group, flag: str, f: dataclasses.Field, help_text: str, choices: tuple | None = None,
             groups: bool = False) -> None:
    """One flag for the field ``f`` (dest = its name): its type from the annotation, unset (None) by default;
    ``groups``: one or more comma-separated groups of sizes (:class:`StageGroups`)."""
    kind = kind_of(f)
    if kind == "bool":
        group.add_argument(flag, dest=f.name, action="store_true", default=None, help=help_text)
    elif groups:
        group.add_argument(flag, dest=f.name, type=ints, nargs="+", action=StageGroups, metavar="SIZES",
                           help=help_text)
    elif kind == "tuple":
        group.add_argument(flag, dest=f.name, type=ints, help=help_text)
    else:
        group.add_argument(flag, dest=f.name, type={"int": int, "float": float}.get(kind, str),
                           choices=list(choices) if choices else None, help=help_text)


def add_option_flags(group, cls, skip=(), defaults: dict | None = None) -> None:
    """One flag per option the options dataclass ``cls`` exposes (:func:`ppgen.inference.options.cli_flags`): its
    type, choices and help come from the declaration; ``defaults`` replaces the shown defaults."""
    from ppgen.inference.options import cli_flags

    for flag, f in cli_flags(cls):
        if f.name in skip:
            continue
        default = (defaults or {}).get(f.name, f.default)
        help_text = f.metadata["help"] if default is None or default is False else f"{f.metadata['help']} (default {default})"
        add_flag(group, f"--{flag}", f, help_text, choices_of(f))


def write_result(path: Path, result: dict) -> None:
    """Write ``result`` as JSON; if the folder is not writable, warn (the result is still printed)."""
    from ppgen import runs

    try:
        runs.write_json(path, result)
    except OSError as err:
        print(f"ppgen: warning: could not write {path} ({err.strerror or err}); the result is printed only",
              file=sys.stderr)


def modes_line(m: dict) -> str:
    return (f"modes {m['modes']}/{m['n_modes']}, high quality {100 * m['high_quality']:.1f}%, "
            f"reverse KL {m['reverse_kl']:.3f}")


def quality_line(q: dict) -> str:
    shown = [f"{label} {q[key]:.4g}" for key, label in (("fid", "FID"), ("kid", "KID"), ("is", "IS"),
                                                        ("precision", "precision"), ("recall", "recall")) if key in q]
    return (f"samples ({q['n_fake']} vs {q['n_real']} test; classifier accuracy "
            f"{q.get('classifier_accuracy', float('nan')):.3f}): " + ", ".join(shown))


def add_rejection(p) -> None:
    r = p.add_argument_group("density-ratio rejection sampling (Azadi et al., 2019): a classifier of data vs "
                             "samples estimates log p_data/p_model; samples are kept with probability exp(D - M)")
    r.add_argument("--rejection", action="store_true", help="correct the samples by rejection (classifier cached "
                   "in the run directory as rejection.pt)")
    r.add_argument("--rejection-steps", type=positive, metavar="N",
                   help="training steps of the ratio classifier (default 10000 on vectors, 2000 on images)")
    r.add_argument("--quantile", type=float, default=0.999, metavar="Q",
                   help="bound M = this quantile of the classifier's logits on samples (default 0.999): 1 is "
                        "exact rejection for the estimated ratio but may accept almost nothing; lower accepts more")


def check_rejection(args) -> None:
    if (args.rejection_steps is not None and args.rejection_steps < 1) or not 0 < args.quantile <= 1:
        raise UserError("--rejection-steps must be at least 1 and --quantile in (0, 1]")
