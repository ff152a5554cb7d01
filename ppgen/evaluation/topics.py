r"""Topic-model evaluation: held-out perplexity, NPMI coherence and topic diversity.

Perplexity
    exp(−Σ_d L(x_d) / Σ_d N_d) over held-out documents d with N_d words, where L is a per-document lower
    bound on log p(x_d): the ELBO (:func:`ppgen.evaluation.elbo`), or the tighter IWAE-K bound
    (:func:`ppgen.evaluation.iwae`); a bound on log p gives an upper bound on the perplexity. The
    multinomial's log-probability includes the multinomial coefficient log(N! / Π_w x_w!), which does not
    depend on the model: two models are comparable on the same documents. The *sequence* perplexity
    subtracts it (:func:`log_multinomial_coefficient`), the quantity scikit-learn's LDA ``perplexity`` and
    most topic-model papers report (see benchmarks/topics.py).
NPMI coherence (Bouma 2009; Lau et al. 2014)
    For each topic's top-n words (n = 10), the mean over word pairs of
    NPMI(w_i, w_j) = log[(p(w_i, w_j) + ε) / (p(w_i) p(w_j))] / −log(p(w_i, w_j) + ε), with probabilities
    the share of reference documents containing the word(s) (document co-occurrence) and ε = 10⁻¹² as
    in gensim's ``CoherenceModel(coherence="c_npmi")`` (Röder et al. 2015): a pair that never co-occurs scores
    log(ε / (p_i p_j)) / −log ε, close to −1. The reference corpus is the held-out documents by default.
Topic diversity (Dieng et al. 2020)
    The share of unique words among the top-25 words of all topics: 1 when no two topics share a word.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ppgen.errors import UserError

EPS = 1e-12


def total_words(x: torch.Tensor) -> float:
    """Σ_d N_d: the number of words in the documents ``x`` (documents, vocabulary)."""
    return float(x.sum())


def log_multinomial_coefficient(x: torch.Tensor) -> torch.Tensor:
    """log(N! / Π_w x_w!) per document: the gap between the log-probability of a document's counts and of
    one ordering of its words (the word sequence)."""
    x = x.double()
    return torch.lgamma(x.sum(-1) + 1) - torch.lgamma(x + 1).sum(-1)


def perplexity_from(bounds: torch.Tensor, x: torch.Tensor) -> float:
    """exp(−Σ_d bound_d / Σ_d N_d) from per-document lower bounds on log p(x_d)."""
    if bounds.shape != (len(x),):
        raise ValueError(f"one bound per document expected: {tuple(bounds.shape)} for {len(x)} documents")
    return math.exp(-float(bounds.double().sum()) / total_words(x))


def perplexity(pair, x: torch.Tensor, num_samples: int = 10, iwae_k: int | None = None) -> dict[str, float]:
    """Held-out perplexity from the ELBO (``num_samples`` draws per document) and, with ``iwae_k``, IWAE-K."""
    from ppgen.evaluation.likelihood import elbo, iwae

    pair.eval()
    with torch.no_grad():
        out = {"perplexity": perplexity_from(elbo(pair, x, num_samples=num_samples), x)}
        if iwae_k:
            out[f"perplexity_iwae_{iwae_k}"] = perplexity_from(iwae(pair, x, k=iwae_k), x)
    return out


def top_words(scores: torch.Tensor, n: int = 10) -> np.ndarray:
    """(K, n) indices of each topic's ``n`` highest-scoring words, best first (all words if fewer than n)."""
    return scores.detach().cpu().topk(min(n, scores.shape[-1]), dim=-1).indices.numpy()


def presence(reference: Any) -> Any:
    """Binary document-word presence (scipy CSR) of a count matrix (tensor, array or sparse)."""
    import scipy.sparse as sp

    if isinstance(reference, torch.Tensor):
        reference = reference.detach().cpu().numpy()
    m = sp.csr_matrix(reference)
    m.data = (m.data > 0).astype(np.float64)
    m.eliminate_zeros()
    return m


def npmi(top: np.ndarray, reference: Any, eps: float = EPS) -> np.ndarray:
    """Mean NPMI over the word pairs of each topic's top words (rows of ``top``), by document co-occurrence in
    ``reference`` (documents, vocabulary) — see the module docs."""
    docs = presence(reference)
    n_docs = docs.shape[0]
    if n_docs == 0:
        raise UserError("the reference corpus for NPMI has no documents")
    out = []
    for words in np.asarray(top):
        cols = docs[:, words]
        p = np.asarray(cols.sum(axis=0)).ravel() / n_docs
        joint = (cols.T @ cols).toarray() / n_docs
        scores = []
        for i in range(len(words)):
            for j in range(i + 1, len(words)):
                if p[i] == 0 or p[j] == 0:
                    scores.append(0.0)  # gensim's convention for a word absent from the reference
                    continue
                pij = joint[i, j] + eps
                scores.append(math.log(pij / (p[i] * p[j])) / -math.log(pij))
        out.append(float(np.mean(scores)))
    return np.asarray(out)


def diversity(scores: torch.Tensor, n: int = 25) -> float:
    """Share of unique words among the top-``n`` words of all topics."""
    top = top_words(scores, n)
    return len(np.unique(top)) / top.size


def topic_table(pair, vocabulary: Sequence[str], reference: Any, n: int = 10) -> list[dict[str, Any]]:
    """One row per topic: its top ``n`` words and their NPMI on ``reference``, best coherence first."""
    scores = pair.topic_words()
    top = top_words(scores, n)
    coherence = npmi(top, reference)
    rows = [{"topic": k, "npmi": float(coherence[k]), "words": [vocabulary[i] for i in top[k]]}
            for k in range(len(top))]
    return sorted(rows, key=lambda r: -r["npmi"])


def reference_counts(source: str, vocabulary: Sequence[str]) -> Any:
    """A reference corpus (any ``ppgen.data.text`` source: CSV, .txt folder, bundled name) counted over
    ``vocabulary`` (sparse), for NPMI on documents other than the held-out ones."""
    from sklearn.feature_extraction.text import CountVectorizer

    from ppgen.data import text

    docs = [d if isinstance(d, str) else "" for d in text.documents(source)]
    counts = CountVectorizer(vocabulary=list(vocabulary), token_pattern=text.Vectorizing().token_pattern,
                             lowercase=True).transform(docs)
    counts = counts[np.asarray(counts.sum(axis=1)).ravel() > 0]
    if counts.shape[0] == 0:
        raise UserError(f"{source}: no document holds a word of the model's vocabulary; give another reference")
    return counts


def report(pair, vocabulary: Sequence[str], x: torch.Tensor, reference: Any | None = None, iwae_k: int | None = None,
           seed: int = 0) -> dict[str, Any]:
    """Perplexity on ``x`` (ELBO and IWAE-K), mean NPMI of the top-10 words on ``reference`` (default ``x``),
    diversity of the top-25 words, and the topic table."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out: dict[str, Any] = perplexity(pair, x, iwae_k=iwae_k)
    table = topic_table(pair, vocabulary, x if reference is None else reference)
    out["npmi"] = float(np.mean([r["npmi"] for r in table]))
    out["diversity"] = diversity(pair.topic_words())
    out["topics"] = table
    return out
