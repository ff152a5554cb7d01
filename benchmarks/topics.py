"""Topic models on the bundled news corpus: ProdLDA, the Dirichlet-VAE and scikit-learn's LDA (issue 12).

The same vectorized corpus for all (``ppgen.data.load("news")``: 3,824 articles, 2,000-word vocabulary fitted on
the training documents, 80/10/10 split by documents). For each number of topics and seed:

  prodlda   ppgen.fit(ProdLDA(topics=K), engine="torch"), batch norm on (the paper's), Adam, batch 200
  dirvae    ppgen.fit(DirVAE(topics=K), ...) with the same settings and networks
  sklearn   LatentDirichletAllocation(learning_method="online") (online variational Bayes, Hoffman et al. 2010)

Metrics, on the held-out documents:

  perplexity   exp(−Σ bound / Σ words) with each model's own bound on the held-out documents. The neural
               models' bound is the ELBO of the *counts* minus the multinomial coefficient log(N!/Π x_w!),
               i.e. the bound on the word *sequence*, which is what scikit-learn's ``perplexity`` bounds: the
               two are bounds on the same quantity, but different bounds (an amortized encoder vs. a
               per-document variational E-step), so lower is better and neither is exact.
  NPMI         mean NPMI of each topic's top-10 words, document co-occurrence on the validation + test
               documents (ppgen.evaluation.topics.npmi; equal to gensim's c_npmi, tested)
  diversity    unique share of the top-25 words of all topics
  seconds      wall time of training

``--speed`` adds documents/s of ppgen's SVI on ProdLDA beside Pyro's ProdLDA tutorial loop (SVI + Trace_ELBO +
pyro.optim.Adam, a Python loop over shuffled minibatches; same network, batch and corpus).

    python benchmarks/topics.py                                  # 20 and 50 topics, 2 seeds, 100 epochs
    python benchmarks/topics.py --seeds 0 1 2 3 4 --epochs 200    # the issue's 5 seeds
    python benchmarks/topics.py --speed --topics 50 --seeds 0 --models prodlda
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import pyro
import torch

import ppgen
from ppgen.evaluation import elbo as per_doc_elbo
from ppgen.evaluation import topics as T
from ppgen.models.dirvae import DirVAE
from ppgen.models.prodlda import ProdLDA

BATCH, LR = 200, 2e-3
MODELS = {"prodlda": ProdLDA, "dirvae": DirVAE}


def scores(topic_words: torch.Tensor, reference) -> dict:
    top = T.top_words(topic_words, 10)
    return {"npmi": float(T.npmi(top, reference).mean()), "diversity": T.diversity(topic_words)}


def neural(name: str, data, k: int, seed: int, epochs: int, reference) -> dict:
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    pair = MODELS[name](data.x_shape, topics=k)
    start = time.perf_counter()
    ppgen.fit(pair, data, engine="torch", epochs=epochs, batch_size=BATCH, lr=LR, seed=seed, progress=False)
    seconds = time.perf_counter() - start
    pair.eval()
    with torch.no_grad():
        bound = per_doc_elbo(pair, data.test, num_samples=20).double()
    sequence = bound - T.log_multinomial_coefficient(data.test)
    return {"perplexity": T.perplexity_from(sequence, data.test), "seconds": seconds,
            **scores(pair.topic_words(), reference)}


def sklearn_lda(data, k: int, seed: int, epochs: int, reference) -> dict:
    from sklearn.decomposition import LatentDirichletAllocation

    lda = LatentDirichletAllocation(n_components=k, learning_method="online", batch_size=BATCH, max_iter=epochs,
                                    random_state=seed, n_jobs=1)
    start = time.perf_counter()
    lda.fit(data.train.numpy())
    seconds = time.perf_counter() - start
    return {"perplexity": float(lda.perplexity(data.test.numpy())), "seconds": seconds,
            **scores(torch.as_tensor(np.log(lda.components_ / lda.components_.sum(1, keepdims=True))), reference)}


def mean_se(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values) / math.sqrt(len(values)):.2g}"


def speed(data, k: int, epochs: int) -> dict:
    """Documents/s: ppgen.fit (torch engine) vs Pyro's ProdLDA tutorial loop, same network and batches."""
    from pyro.infer import SVI, Trace_ELBO

    out = {}
    torch.manual_seed(0)
    pair = ProdLDA(data.x_shape, topics=k)
    ppgen.fit(pair, data, engine="torch", epochs=1, batch_size=BATCH, lr=LR, seed=0, progress=False)  # warm-up
    start = time.perf_counter()
    ppgen.fit(pair, data, engine="torch", epochs=epochs, batch_size=BATCH, lr=LR, seed=0, progress=False)
    out["ppgen (torch engine)"] = epochs * len(data.train) / (time.perf_counter() - start)
    torch.manual_seed(0)
    pyro.clear_param_store()
    pair = ProdLDA(data.x_shape, topics=k)
    pair.train()
    svi = SVI(pair.model, pair.guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    x = data.train
    svi.step(x[:BATCH])  # warm-up
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), BATCH):
            svi.step(x[order[i:i + BATCH]])
    out["pyro tutorial loop"] = epochs * len(x) / (time.perf_counter() - start)
    out["ratio"] = out["ppgen (torch engine)"] / out["pyro tutorial loop"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topics", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=100, help="neural models' epochs (default 100)")
    parser.add_argument("--lda-iter", type=int, default=20, help="scikit-learn LDA passes (default 20)")
    parser.add_argument("--models", nargs="+", default=["prodlda", "dirvae", "sklearn"])
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="write the raw results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = ppgen.data.load("news")
    print(data.describe())
    reference = torch.cat([data.val, data.test])
    rows: dict = {}
    for k in args.topics:
        for seed in args.seeds:
            for name in args.models:
                if name == "sklearn":
                    r = sklearn_lda(data, k, seed, args.lda_iter, reference)
                else:
                    r = neural(name, data, k, seed, args.epochs, reference)
                rows.setdefault((k, name), []).append(r)
                print(f"K={k} seed={seed} {name:8s} perplexity {r['perplexity']:8.1f}  NPMI {r['npmi']:.3f}  "
                      f"diversity {r['diversity']:.3f}  {r['seconds']:.0f} s", flush=True)
    print(f"\n| K | model | held-out perplexity (sequence) | NPMI (top 10) | diversity (top 25) | seconds |  "
          f"({len(args.seeds)} seeds, mean ± SE)")
    print("|---|---|---|---|---|---|")
    for (k, name), rs in rows.items():
        print(f"| {k} | {name} | " + " | ".join(mean_se([r[m] for r in rs])
                                               for m in ("perplexity", "npmi", "diversity", "seconds")) + " |")
    result = {f"{k}/{name}": rs for (k, name), rs in rows.items()}
    if args.speed:
        result["speed"] = speed(data, args.topics[0], epochs=5)
        print(f"\nspeed (documents/s, ProdLDA K={args.topics[0]}, batch {BATCH}): "
              + ", ".join(f"{k} {v:.3g}" for k, v in result["speed"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
