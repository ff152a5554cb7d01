"""Which epoch a topic model should keep: per-epoch histories of the validation ELBO, the validation NPMI and the
NPMI on the whole training corpus, for docs/topics.md ("Which epoch is kept").

One run per call (ProdLDA or the Dirichlet-VAE on the news corpus, torch engine); ``--summary`` reads the JSON files
and prints, at 30, 100 and 200 epochs, the training-corpus NPMI of the epoch each rule keeps (best validation ELBO,
best validation NPMI, the last epoch):

    for s in 0 1 2; do for k in 20 50; do for m in prodlda dirvae; do
      python benchmarks/topics_selection.py $m $k $s --out sel_${m}_${k}_${s}_A.json
      python benchmarks/topics_selection.py $m $k $s --batch 200 --lr 2e-3 --beta1 0.99 --dropout 0.6 \
          --out sel_${m}_${k}_${s}_B.json
    done; done; done
    python benchmarks/topics_selection.py --summary sel_*.json
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import numpy as np
import pyro
import torch

import ppgen
from ppgen.data import load
from ppgen.evaluation import topics as T
from ppgen.evaluation.likelihood import validation_callback
from ppgen.models.dirvae import DirVAE
from ppgen.models.prodlda import ProdLDA

MODELS = {"prodlda": ProdLDA, "dirvae": DirVAE}


def history(args: argparse.Namespace) -> dict:
    """Train once, recording the validation ELBO, the NPMI on the validation and on the training documents and the
    diversity after every epoch."""
    data = load("news")
    validation = validation_callback(data, args.seed)

    def callback(fit) -> dict:
        row = validation(fit)
        top = T.top_words(fit.pair.topic_words(), 10)
        row.update(val_npmi=float(T.npmi(top, data.val).mean()), train_npmi=float(T.npmi(top, data.train).mean()),
                   diversity=T.diversity(fit.pair.topic_words()))
        return row

    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    pair = MODELS[args.model](data.x_shape, topics=args.topics, dropout=args.dropout)
    start = time.perf_counter()
    fit = ppgen.fit(pair, data, engine="torch", epochs=args.epochs, batch_size=args.batch, lr=args.lr,
                    adam_beta1=args.beta1, seed=args.seed, progress=False, callback=callback)
    return {**vars(args), "seconds": time.perf_counter() - start, "history": fit.history}


def summary(paths: list[str]) -> None:
    """Mean training-corpus NPMI (and diversity) of the epoch each rule keeps, per model, K, recipe and length."""
    rows = collections.defaultdict(list)
    for path in paths:
        run = json.load(open(path))
        h, recipe = run["history"], "B" if run["beta1"] > 0.9 else "A"
        for epochs in (30, 100, 200):
            if len(h) < epochs:
                continue
            by_elbo = max(h[:epochs], key=lambda r: r["val_elbo"])["epoch"]
            by_npmi = max(h[:epochs], key=lambda r: r["val_npmi"])["epoch"]
            kept = (h[by_elbo - 1], h[by_npmi - 1], h[epochs - 1])
            rows[(run["model"], run["topics"], recipe, epochs)].append(
                [r["train_npmi"] for r in kept] + [kept[1]["diversity"], kept[2]["diversity"], by_elbo, by_npmi])
    print("model K recipe epochs runs | training-corpus NPMI kept by: val ELBO, val NPMI, last | diversity: val "
          "NPMI, last | epochs kept by val ELBO, val NPMI")
    for key, values in sorted(rows.items()):
        a = np.asarray(values)
        print(*key, len(a), "|", *(f"{v:.3f}" for v in a[:, :5].mean(0)), "|", a[:, 5].astype(int).tolist(),
              a[:, 6].astype(int).tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", choices=sorted(MODELS))
    parser.add_argument("topics", nargs="?", type=int)
    parser.add_argument("seed", nargs="?", type=int)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta1", type=float, default=0.9)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--out", help="JSON file of the run's history")
    parser.add_argument("--summary", nargs="+", metavar="JSON", help="summarize these runs instead")
    args = parser.parse_args()
    if args.summary:
        summary(args.summary)
        return
    torch.set_num_threads(1)
    result = history(args)
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
