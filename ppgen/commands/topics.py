"""``ppgen topics RUN``: a topic model's topics (any pair that has topics): top words and their coherence."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ppgen.commands import help_of
from ppgen.commands.args import positive


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("topics", help=help_of("topics"),
                       description="Print each topic's top words with its coherence (NPMI, C_V and UMass of the "
                                   "top words by document co-occurrence on the whole training corpus, as gensim's "
                                   "CoherenceModel does; or on --split or --reference), best NPMI first, with the "
                                   "topics' diversity and inverted RBO; write topics.json and topics.png into the "
                                   "run directory.")
    p.add_argument("run", type=Path, help="run directory of a pair with topics (see `ppgen models`)")
    p.add_argument("--words", type=positive, default=10, help="top words per topic (default 10)")
    p.add_argument("--split", choices=["train", "val", "test"], default="train",
                   help="reference documents for coherence (default train: the whole training corpus)")
    p.add_argument("--reference", help="an external reference corpus for coherence: news, FILE.csv[:COLUMN] or a "
                                       ".txt folder (tokenized as the training corpus)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ppgen import runs, workflows

    result = workflows.topics_run(args.run, n=args.words, split=args.split, reference=args.reference)
    note = runs.unfinished_note(args.run)  # the weights came from the checkpoint: say so, and how to finish
    if note:
        print(note, file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.run}: {len(result['topics'])} topics; top-{result['top_words']} words on {result['documents']} "
          f"documents ({result['reference']}): NPMI {result['npmi']:.3f}, C_V {result['c_v']:.3f}, UMass "
          f"{result['umass']:.3f}; diversity {result['diversity']:.3f} (top 25), inverted RBO "
          f"{result['inverted_rbo']:.3f}")
    print("  topic    NPMI    C_V  words")
    for row in result["topics"]:
        print(f"  {row['topic']:5d}  {row['npmi']:6.3f}  {row['c_v']:5.3f}  {' '.join(row['words'])}")
    return 0
