"""``ppgen topics RUN``: a topic model's topics (any pair that has topics): top words and NPMI coherence."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ppgen.commands.args import positive


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("topics", help="a topic model's topics: top words and NPMI coherence",
                       description="Print each topic's top words with its NPMI coherence (document co-occurrence "
                                   "on the run's held-out documents, or on --reference), best first; write "
                                   "topics.json and topics.png into the run directory.")
    p.add_argument("run", type=Path, help="run directory of a pair with topics (see `ppgen models`)")
    p.add_argument("--words", type=positive, default=10, help="top words per topic (default 10)")
    p.add_argument("--split", choices=["test", "val", "train"], default="test",
                   help="reference documents for NPMI (default test)")
    p.add_argument("--reference", help="another reference corpus for NPMI: news, FILE.csv[:COLUMN] or a .txt folder")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ppgen import workflows

    result = workflows.topics_run(args.run, n=args.words, split=args.split, reference=args.reference)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.run}: {len(result['topics'])} topics; mean NPMI {result['npmi']:.3f} on {result['documents']} "
          f"documents ({result['reference']}); diversity {result['diversity']:.3f}")
    for row in result["topics"]:
        print(f"  {row['topic']:3d}  {row['npmi']:6.3f}  {' '.join(row['words'])}")
    return 0
