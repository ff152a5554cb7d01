"""``ppgen topics`` and the topic figures of ``ppgen evaluate``, for any pair that has topics (``pair.has_topics``:
it declares ``topic_words`` and ``sample_proportions``)."""

from __future__ import annotations

from pathlib import Path

import torch

from ppgen import data as datasets
from ppgen import models, runs
from ppgen.data.text import SparseCounts
from ppgen.errors import UserError
from ppgen.workflows.common import run_data


def vocabulary_of(data: datasets.Dataset, pair) -> list[str]:
    """The corpus's words, or ``word0``, ``word1``, ... for counts given without a vocabulary."""
    return list(data.info.get("vocabulary") or [f"word{i}" for i in range(pair.x_shape[-1])])


def topic_metrics(pair, data: datasets.Dataset, x: torch.Tensor, elbo: torch.Tensor, iwae: torch.Tensor | None,
                  iwae_k: int) -> dict:
    """Perplexity of the documents ``x`` from the per-document ELBO (and IWAE-K), beside the unigram baseline and
    document completion; coherence (NPMI, C_V, UMass) of the top-10 words on the whole training corpus,
    diversity and inverted RBO."""
    from ppgen.evaluation import topics

    coefficient = topics.log_multinomial_coefficient(x).to(elbo)
    out = {"words": topics.total_words(x), "perplexity": topics.perplexity_from(elbo, x),
           "perplexity_sequence": topics.perplexity_from(elbo - coefficient, x)}
    if iwae is not None:
        out[f"perplexity_iwae_{iwae_k}"] = topics.perplexity_from(iwae, x)
        out[f"perplexity_sequence_iwae_{iwae_k}"] = topics.perplexity_from(iwae - coefficient, x)
        out.update(topics.perplexities(pair, data.train, x, iwae))
    quality = topics.topic_quality(pair.topic_words(), data.train)
    out.update({k: quality[k] for k in ("npmi", "c_v", "umass", "diversity", "inverted_rbo")})
    out["coherence_reference"] = f"{data.name} training split ({len(data.train)} documents)"
    return out


def with_topic_coherence(callback, data: datasets.Dataset):
    """``callback`` followed, for a pair with topics, by ``val_npmi``: the mean NPMI of its top-10 words on the
    validation documents (held out from training), the figure a topic model's ``select_by`` keeps an epoch by."""
    def callback_and_coherence(fit) -> dict:
        row = dict(callback(fit) or {})
        if fit.pair.has_topics and len(data.val):
            from ppgen.evaluation import topics

            with torch.no_grad():
                row["val_npmi"] = float(topics.npmi(topics.top_words(fit.pair.topic_words(), 10), data.val).mean())
        return row

    return callback_and_coherence


def topics_run(run_dir: Path, n: int = 10, split: str = "train", reference: str | None = None) -> dict:
    """Each topic's top ``n`` words and their coherence (NPMI, C_V, UMass) on the run's ``split`` documents —
    the whole training corpus by default, gensim's convention — or on the corpus ``reference`` (vectorized with
    the run's vocabulary); diversity and inverted RBO. Writes topics.json, topics.png and proportions.nc (q's
    draws of the topic proportions of the first 16 test documents) into the run directory."""
    from ppgen.evaluation import topics

    config = runs.read_config(run_dir)
    pair = runs.load_pair(run_dir)
    if not pair.has_topics:
        with_topics = sorted(name for name, cls in models.REGISTRY.items() if cls.declares("topic_words"))
        raise UserError(f"{run_dir} holds a {pair.name} run, which has no topics; `ppgen topics` needs the run of a "
                        f"pair with topics ({', '.join(with_topics)})")
    data = run_data(config)
    pair.eval()
    vocabulary = vocabulary_of(data, pair)
    if reference is not None and not data.info.get("vocabulary"):
        raise UserError(f"{data.name} has no vocabulary to read --reference with; leave --reference off")
    ref = getattr(data, split) if reference is None else topics.reference_counts(reference, vocabulary)
    ref = ref.csr if isinstance(ref, SparseCounts) else ref  # coherence reads presence from the sparse counts
    with torch.no_grad():
        quality = topics.topic_quality(pair.topic_words(), ref, vocabulary, n=n)
        result = {"run": str(run_dir), "reference": reference or f"{data.name} {split} split",
                  "documents": int(ref.shape[0]), **quality}
        plots_topics(pair, vocabulary, quality["topics"], Path(run_dir) / "topics.png")
        shown = data.test if len(data.test) else data.train
        write_proportions(pair, shown[:16], Path(run_dir) / "proportions.nc")
    runs.write_json(Path(run_dir) / "topics.json", result)
    return result


def write_proportions(pair, x: torch.Tensor, path: Path, draws: int = 1000, seed: int = 0) -> None:
    """proportions.nc: ArviZ draws of the topic proportions θ under q(θ | x) (1 chain) for the documents ``x``."""
    import arviz as az

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        theta = pair.sample_proportions(x, draws).cpu().numpy()
    idata = az.from_dict(posterior={"theta": theta[None]}, dims={"theta": ["document", "topic"]})
    runs.write_netcdf(path, idata)


def plots_topics(pair, vocabulary, table: list[dict], path: Path, words: int = 8) -> None:
    """topics.png: each topic's top words as horizontal bars of their topic-word scores (β for the product of
    experts, log p(w | topic) for the mixture decoder), one panel per topic."""
    import matplotlib.pyplot as plt

    scores = pair.topic_words()
    scores = scores - scores.min(-1, keepdim=True).values  # bars start at the topic's lowest-scoring word
    k = len(table)
    cols = min(5, k)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.flat[k:]:
        ax.axis("off")
    for ax, row in zip(axes.flat, table):
        idx = [vocabulary.index(w) for w in row["words"][:words]]
        ax.barh(range(len(idx))[::-1], scores[row["topic"], idx].numpy(), color="tab:blue")
        ax.set_yticks(range(len(idx))[::-1], [vocabulary[i] for i in idx], fontsize=7)
        ax.set_title(f"topic {row['topic']}  NPMI {row['npmi']:.2f}", fontsize=8)
        ax.tick_params(axis="x", labelsize=6)
        ax.set_xlabel("score above the topic's minimum", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

