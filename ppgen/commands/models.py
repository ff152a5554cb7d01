"""``ppgen models``: the registered model families, one per line."""

from __future__ import annotations

import argparse

from ppgen.commands import help_of


def add(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("models", help=help_of("models"), description="List the model families, one per line."
                   ).set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ppgen import models

    for name, line in models.describe().items():
        print(f"{name:14s} {line}")
    return 0
