"""Topic models on the bundled news corpus: ProdLDA, the Dirichlet-VAE and scikit-learn's LDA.

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

``--alpha``, ``--dropout`` and ``--beta1`` set the neural models' prior, dropout and Adam β1 (the ProdLDA paper's
code: β1 = 0.99, dropout 0.6 — keep_prob 0.4 — and α = 1).

``--speed`` (alone) measures documents/s of ppgen's SVI on ProdLDA (torch engine, the default for a batch-normalized
pair) beside Pyro's ProdLDA tutorial (https://pyro.ai/examples/prodlda.html, transcribed below: its Encoder,
Decoder, model and guide, SVI + TraceMeanField_ELBO + pyro.optim.Adam, minibatches in order) on the same corpus,
topics, hidden sizes, dropout, batch and learning rate. Like with like: ppgen runs without the per-epoch validation
ELBO ``ppgen.fit`` records by default (the tutorial computes none), once with the analytic KL (the tutorial's
TraceMeanField_ELBO) and once with Trace_ELBO (ppgen's default); both sides run with Pyro's argument validation
off (ppgen's loop turns it off) and include their setup. The three alternate in this process, ``--repeats`` times;
the medians and ranges are printed for wall-clock throughput and for CPU-time throughput (the process's own CPU
seconds: on a shared machine wall time mostly measures the others' load), with the ratio of each back-to-back pair.

    python benchmarks/topics.py                                  # 20 and 50 topics, 2 seeds, 100 epochs
    python benchmarks/topics.py --seeds 0 1 2 3 4 --epochs 20 --lda-iter 10 --threads 1   # the README's table
    python benchmarks/topics.py --topics 50 --seeds 0 --epochs 100 --models prodlda --beta1 0.99 --dropout 0.6
    python benchmarks/topics.py --speed --topics 20 --repeats 7 --speed-epochs 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import pyro
import pyro.distributions as pdist
import torch
from torch import nn
from torch.nn import functional as F

import ppgen
from ppgen.data import text
from ppgen.evaluation import elbo as per_doc_elbo
from ppgen.evaluation import topics as T
from ppgen.models.dirvae import DirVAE
from ppgen.models.prodlda import ProdLDA

BATCH, LR = 200, 2e-3
MODELS = {"prodlda": ProdLDA, "dirvae": DirVAE}


def scores(topic_words: torch.Tensor, reference) -> dict:
    top = T.top_words(topic_words, 10)
    return {"npmi": float(T.npmi(top, reference).mean()), "diversity": T.diversity(topic_words)}


def neural(name: str, data, k: int, seed: int, epochs: int, reference, alpha: float = 1.0, dropout: float = 0.2,
           beta1: float = 0.9) -> dict:
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    pair = MODELS[name](data.x_shape, topics=k, alpha=alpha, dropout=dropout)
    start = time.perf_counter()
    ppgen.fit(pair, data, engine="torch", epochs=epochs, batch_size=BATCH, lr=LR, seed=seed, adam_beta1=beta1,
              progress=False)
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
    lda.fit(data.train.csr)  # the sparse counts
    seconds = time.perf_counter() - start
    return {"perplexity": float(lda.perplexity(data.test.numpy())), "seconds": seconds,
            **scores(torch.as_tensor(np.log(lda.components_ / lda.components_.sum(1, keepdims=True))), reference)}


def mean_se(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values) / math.sqrt(len(values)):.2g}"


# -- Pyro's ProdLDA tutorial (https://pyro.ai/examples/prodlda.html), transcribed -------------------------------
class TutorialEncoder(nn.Module):
    def __init__(self, vocab_size: int, num_topics: int, hidden: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Linear(vocab_size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fcmu = nn.Linear(hidden, num_topics)
        self.fclv = nn.Linear(hidden, num_topics)
        self.bnmu = nn.BatchNorm1d(num_topics, affine=False)
        self.bnlv = nn.BatchNorm1d(num_topics, affine=False)

    def forward(self, inputs):
        h = F.softplus(self.fc1(inputs))
        h = F.softplus(self.fc2(h))
        h = self.drop(h)
        logtheta_loc = self.bnmu(self.fcmu(h))
        logtheta_logvar = self.bnlv(self.fclv(h))
        return logtheta_loc, (0.5 * logtheta_logvar).exp()


class TutorialDecoder(nn.Module):
    def __init__(self, vocab_size: int, num_topics: int, dropout: float):
        super().__init__()
        self.beta = nn.Linear(num_topics, vocab_size, bias=False)
        self.bn = nn.BatchNorm1d(vocab_size, affine=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, inputs):
        inputs = self.drop(inputs)
        return F.softmax(self.bn(self.beta(inputs)), dim=1)


class TutorialProdLDA(nn.Module):
    def __init__(self, vocab_size: int, num_topics: int, hidden: int = 100, dropout: float = 0.2):
        super().__init__()
        self.num_topics = num_topics
        self.encoder = TutorialEncoder(vocab_size, num_topics, hidden, dropout)
        self.decoder = TutorialDecoder(vocab_size, num_topics, dropout)

    def model(self, docs):
        pyro.module("decoder", self.decoder)
        with pyro.plate("documents", docs.shape[0]):
            logtheta_loc = docs.new_zeros((docs.shape[0], self.num_topics))
            logtheta_scale = docs.new_ones((docs.shape[0], self.num_topics))
            logtheta = pyro.sample("logtheta", pdist.Normal(logtheta_loc, logtheta_scale).to_event(1))
            theta = F.softmax(logtheta, -1)
            count_param = self.decoder(theta)
            total_count = int(docs.sum(-1).max())
            pyro.sample("obs", pdist.Multinomial(total_count, count_param), obs=docs)

    def guide(self, docs):
        pyro.module("encoder", self.encoder)
        with pyro.plate("documents", docs.shape[0]):
            logtheta_loc, logtheta_scale = self.encoder(docs)
            pyro.sample("logtheta", pdist.Normal(logtheta_loc, logtheta_scale).to_event(1))


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def tutorial_run(docs: torch.Tensor, k: int, epochs: int, seed: int) -> tuple[float, float]:
    """The tutorial's loop (SVI, TraceMeanField_ELBO, pyro.optim.Adam, minibatches in order, the last one partial);
    documents/s (wall, CPU) including the setup, as a user would time it."""
    from pyro.infer import SVI, TraceMeanField_ELBO

    def run() -> None:
        pyro.set_rng_seed(seed)
        pyro.clear_param_store()
        prodlda = TutorialProdLDA(docs.shape[1], k)
        svi = SVI(prodlda.model, prodlda.guide, pyro.optim.Adam({"lr": LR}), loss=TraceMeanField_ELBO())
        num_batches = int(math.ceil(docs.shape[0] / BATCH))
        with pyro.validation_enabled(False):  # ppgen's loop runs without Pyro's argument checks: so does this
            for _ in range(epochs):
                running_loss = 0.0
                for i in range(num_batches):
                    batch_docs = docs[i * BATCH:(i + 1) * BATCH, :]
                    running_loss += svi.step(batch_docs) / batch_docs.size(0)

    wall, cpu = _timed(run)
    return epochs * docs.shape[0] / wall, epochs * docs.shape[0] / cpu


def ppgen_run(data, k: int, epochs: int, seed: int, elbo: str) -> tuple[float, float]:
    """ppgen.fit on the torch engine without the per-epoch validation ELBO that ``ppgen.fit`` records by default
    (``callback=None``: the tutorial computes none); documents/s (wall, CPU) including the setup. ppgen drops the
    last partial batch, so it counts the documents it saw."""
    def run() -> None:
        pyro.clear_param_store()
        torch.manual_seed(seed)
        pair = ProdLDA(data.x_shape, topics=k)
        ppgen.fit(pair, data, engine="torch", epochs=epochs, batch_size=BATCH, lr=LR, seed=seed, elbo=elbo,
                  callback=None, progress=False)

    wall, cpu = _timed(run)
    seen = epochs * (len(data.train) // BATCH) * BATCH
    return seen / wall, seen / cpu


def speed(data, k: int, epochs: int, repeats: int) -> dict:
    """Documents/s of ppgen (torch engine; Trace_ELBO, its default, and the analytic KL, as the tutorial's
    TraceMeanField_ELBO) and of the tutorial loop, alternating in this process: median and range over
    ``repeats`` of wall-clock and of CPU-time throughput, and of the ratios of back-to-back runs."""
    docs = torch.as_tensor(data.train.numpy()) if isinstance(data.train, text.SparseCounts) else data.train
    names = ("pyro tutorial loop", "ppgen analytic", "ppgen trace")
    runs: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in names}
    tutorial_run(docs, k, 1, 0)  # warm-up both
    ppgen_run(data, k, 1, 0, "analytic")
    for r in range(repeats):
        for name in names:
            wall, cpu = (tutorial_run(docs, k, epochs, r) if name == names[0]
                         else ppgen_run(data, k, epochs, r, name.split()[1]))
            runs[name]["wall"].append(wall)
            runs[name]["cpu"].append(cpu)
        print(f"repeat {r}: " + ", ".join(f"{n} {v['wall'][-1]:.0f} (CPU {v['cpu'][-1]:.0f})" for n, v in runs.items()),
              flush=True)
    out: dict = {}
    for clock in ("wall", "cpu"):
        for name in names:
            v = runs[name][clock]
            out[f"{name} [{clock}]"] = {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
        base = runs[names[0]][clock]
        for name in names[1:]:
            ratios = [a / b for a, b in zip(runs[name][clock], base)]  # each repeat's runs went back to back
            out[f"ratio {name} [{clock}]"] = {"median": statistics.median(ratios), "min": min(ratios),
                                              "max": max(ratios), "runs": ratios}
    return out


def engines_without_batch_norm(data, k: int, epochs: int, repeats: int) -> dict:
    """What ``engine="auto"`` would pick if batch norm lowered to JAX: ProdLDA with ``batch_norm="off"`` (which lowers)
    on the torch and the JAX engine, alternating; steady-state documents/s (the loop's ``images_per_s`` of every
    epoch after the first, which holds the JAX compilation), median and range over ``repeats`` fits."""
    def run(engine: str, seed: int) -> float:
        pyro.clear_param_store()
        torch.manual_seed(seed)
        pair = ProdLDA(data.x_shape, topics=k, batch_norm="off")
        fit = ppgen.fit(pair, data, engine=engine, epochs=max(2, epochs), batch_size=BATCH, lr=LR, seed=seed,
                        callback=None, progress=False)
        return statistics.median(row["images_per_s"] for row in fit.history[1:])

    runs: dict[str, list[float]] = {"torch": [], "jax": []}
    for r in range(repeats):
        for engine in runs:
            runs[engine].append(run(engine, r))
        print(f"repeat {r}: " + ", ".join(f"{e} {v[-1]:.0f}" for e, v in runs.items()), flush=True)
    out = {f"ppgen {e}, batch norm off": {"median": statistics.median(v), "min": min(v), "max": max(v)}
           for e, v in runs.items()}
    ratios = [j / t for j, t in zip(runs["jax"], runs["torch"])]
    out["ratio jax / torch"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topics", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=100, help="neural models' epochs (default 100)")
    parser.add_argument("--lda-iter", type=int, default=20, help="scikit-learn LDA passes (default 20)")
    parser.add_argument("--models", nargs="+", default=["prodlda", "dirvae", "sklearn"])
    parser.add_argument("--alpha", type=float, default=1.0, help="neural models' Dirichlet prior concentration")
    parser.add_argument("--dropout", type=float, default=0.2, help="neural models' dropout")
    parser.add_argument("--beta1", type=float, default=0.9, help="Adam's beta1 for the neural models")
    parser.add_argument("--speed", action="store_true", help="only the speed comparison (ProdLDA, first --topics)")
    parser.add_argument("--speed-engines", action="store_true",
                        help="only ProdLDA without batch norm on the torch vs the JAX engine")
    parser.add_argument("--repeats", type=int, default=5, help="speed: alternating repeats")
    parser.add_argument("--speed-epochs", type=int, default=3, help="speed: epochs per timed run")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="write the raw results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = ppgen.data.load("news")
    print(data.describe())
    if args.speed or args.speed_engines:
        measure = engines_without_batch_norm if args.speed_engines else speed
        result = measure(data, args.topics[0], args.speed_epochs, args.repeats)
        print(f"\nspeed (documents/s, ProdLDA K={args.topics[0]}, batch {BATCH}, {args.speed_epochs} epochs per run, "
              f"{args.repeats} alternating repeats; median [min, max]):")
        for name, v in result.items():
            print(f"  {name:32s} {v['median']:8.3g}  [{v['min']:.3g}, {v['max']:.3g}]")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return
    reference = torch.cat([data.val, data.test])
    rows: dict = {}
    for k in args.topics:
        for seed in args.seeds:
            for name in args.models:
                if name == "sklearn":
                    r = sklearn_lda(data, k, seed, args.lda_iter, reference)
                else:
                    r = neural(name, data, k, seed, args.epochs, reference, args.alpha, args.dropout, args.beta1)
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
