r"""Topic-model evaluation: coherence (NPMI, C_V, UMass), diversity and inverted RBO, and held-out perplexity
(IWAE bound, document completion, unigram baseline). ``ppgen topics``, ``ppgen evaluate`` and
benchmarks/topics.py all use :func:`topic_quality` and :func:`perplexities`.

Coherence of a topic's top-n words (n = 10), by document co-occurrence in a reference corpus — the whole
training corpus by default (gensim's ``CoherenceModel`` and OCTIS's convention), the test split or an external
corpus by option. p(w) is the share of reference documents holding w, p(wᵢ, wⱼ) the share holding both,
D(·) the corresponding counts, ε = 10⁻¹² (gensim's):

NPMI (Bouma 2009; Lau et al. 2014)
    mean over pairs i < j of log[(p(wᵢ, wⱼ) + ε) / (p(wᵢ) p(wⱼ))] / −log(p(wᵢ, wⱼ) + ε); a pair that never
    co-occurs scores close to −1; a word absent from the reference scores 0 (gensim's convention).
C_V (Röder et al. 2015)
    v_i = (NPMI(wᵢ, wⱼ))_j over the top words (the diagonal included: NPMI(w, w) ≈ 1), V = Σ_i v_i, and the
    mean over i of cos(v_i, V): gensim's ``c_v`` (one-set segmentation, indirect cosine of ``nlr``, γ = 1).
UMass (Mimno et al. 2011)
    mean over ordered pairs (later word wᵢ, earlier word wⱼ) of log((D(wᵢ, wⱼ)/D + ε) / (D(wⱼ)/D)).

All three equal gensim 4's ``CoherenceModel`` (``c_npmi`` and ``c_v`` with a sliding window holding a whole
document, ``u_mass``) to 1e-12 (tests/test_topics_quality.py).

Topic diversity (Dieng et al. 2020)
    The share of unique words among the top-25 words of all topics: 1 when no two topics share a word.
Inverted RBO (Terragni et al. 2021)
    1 − the mean extrapolated rank-biased overlap (Webber et al. 2010, p = 0.9) of every pair of topics'
    top-10 lists: 1 when no two topics share a word.

Perplexity
    exp(−Σ_d L(x_d) / Σ_d N_d) over held-out documents d with N_d words, where L is a per-document lower
    bound on log p(x_d): the ELBO (:func:`ppgen.evaluation.elbo`), or the tighter IWAE-K bound
    (:func:`ppgen.evaluation.iwae`); a bound on log p gives an upper bound on the perplexity. The
    multinomial's log-probability includes the multinomial coefficient log(N! / Π_w x_w!), which does not
    depend on the model; the *word-sequence* perplexity subtracts it (:func:`log_multinomial_coefficient`),
    as LDA papers count. Beside it (:func:`perplexities`): the unigram baseline of the training counts (exact)
    and document completion (Wallach et al. 2009; an estimate, not a bound).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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
    """Binary document-word presence (scipy CSR) of a count matrix (tensor, array, sparse or
    :class:`~ppgen.data.text.SparseCounts`)."""
    import scipy.sparse as sp

    reference = getattr(reference, "csr", reference)  # SparseCounts: its CSR counts
    if isinstance(reference, torch.Tensor):
        reference = reference.detach().cpu().numpy()
    m = sp.csr_matrix(reference)
    m.data = (m.data > 0).astype(np.float64)
    m.eliminate_zeros()
    return m


@dataclass(frozen=True)
class Cooccurrence:
    """Document frequencies of a topic's top words in a reference corpus: ``count[i]`` documents hold word i,
    ``joint[i, j]`` hold both (``joint[i, i] = count[i]``), out of ``documents``."""

    count: np.ndarray
    joint: np.ndarray
    documents: int

    @property
    def p(self) -> np.ndarray:
        return self.count / self.documents

    @property
    def p_joint(self) -> np.ndarray:
        return self.joint / self.documents


def cooccurrence(words: np.ndarray, docs: Any) -> Cooccurrence:
    """The :class:`Cooccurrence` of ``words`` (indices) in ``docs``, a binary CSR presence matrix."""
    cols = docs[:, np.asarray(words)]
    joint = np.asarray((cols.T @ cols).toarray(), dtype=np.float64)
    return Cooccurrence(np.diag(joint).copy(), joint, docs.shape[0])


def npmi_matrix(c: Cooccurrence, eps: float = EPS) -> np.ndarray:
    """NPMI(w_i, w_j) for every pair of the top words, the diagonal included (gensim's ``nlr``: NPMI(w, w) ≈ 1);
    0 where a word is absent from the reference."""
    p, pij = c.p, c.p_joint + eps
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(pij / np.outer(p, p)) / -np.log(pij)
    absent = p == 0
    out[absent, :] = 0.0
    out[:, absent] = 0.0
    return out


def _reference_docs(reference: Any) -> Any:
    docs = presence(reference)
    if docs.shape[0] == 0:
        raise UserError("the reference corpus for topic coherence has no documents")
    return docs


def npmi(top: np.ndarray, reference: Any, eps: float = EPS) -> np.ndarray:
    """Mean NPMI over the word pairs of each topic's top words (rows of ``top``), by document co-occurrence in
    ``reference`` (documents, vocabulary) — see the module docs."""
    docs = _reference_docs(reference)
    out = []
    for words in np.asarray(top):
        m = npmi_matrix(cooccurrence(words, docs), eps)
        out.append(float(m[np.triu_indices(len(words), 1)].mean()))
    return np.asarray(out)


def c_v(top: np.ndarray, reference: Any, eps: float = EPS) -> np.ndarray:
    """C_V of each topic (Röder et al. 2015) by document co-occurrence — see the module docs."""
    docs = _reference_docs(reference)
    out = []
    for words in np.asarray(top):
        m = npmi_matrix(cooccurrence(words, docs), eps)  # row i: the context vector of word i
        whole = m.sum(0)  # the context vector of the whole top-word set
        norms = np.linalg.norm(m, axis=1) * np.linalg.norm(whole)
        with np.errstate(divide="ignore", invalid="ignore"):
            cosines = np.where(norms > 0, m @ whole / norms, 0.0)
        out.append(float(cosines.mean()))
    return np.asarray(out)


def umass(top: np.ndarray, reference: Any, eps: float = EPS) -> np.ndarray:
    """UMass coherence of each topic (Mimno et al. 2011) — see the module docs."""
    docs = _reference_docs(reference)
    out = []
    for words in np.asarray(top):
        c = cooccurrence(words, docs)
        scores = [math.log((c.p_joint[i, j] + eps) / c.p[j]) if c.count[j] else 0.0
                  for i in range(1, len(words)) for j in range(i)]
        out.append(float(np.mean(scores)))
    return np.asarray(out)


def rank_biased_overlap(a: Sequence[int], b: Sequence[int], p: float = 0.9) -> float:
    """Extrapolated rank-biased overlap of two rankings of equal length k (Webber et al. 2010, eq. 32):
    RBO = (X_k / k) p^k + ((1 − p) / p) Σ_{d=1..k} (X_d / d) p^d, X_d = |a[:d] ∩ b[:d]|; 1 for equal lists."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"two rankings of equal, positive length expected: {len(a)} and {len(b)}")
    k = len(a)
    overlap = [len(set(a[:d]) & set(b[:d])) for d in range(1, k + 1)]
    tail = sum(x / d * p**d for d, x in enumerate(overlap, start=1))
    return overlap[-1] / k * p**k + (1 - p) / p * tail


def inverted_rbo(top: np.ndarray, p: float = 0.9) -> float:
    """1 − the mean rank-biased overlap of every pair of topics' top-word lists (Terragni et al. 2021): 0 when
    all topics rank the same words alike, 1 when no two share a word."""
    top = np.asarray(top)
    pairs = [(i, j) for i in range(len(top)) for j in range(i + 1, len(top))]
    if not pairs:
        return 1.0
    return 1.0 - float(np.mean([rank_biased_overlap(list(top[i]), list(top[j]), p) for i, j in pairs]))


def diversity(scores: torch.Tensor, n: int = 25) -> float:
    """Share of unique words among the top-``n`` words of all topics."""
    top = top_words(scores, n)
    return len(np.unique(top)) / top.size


def coherence(top: np.ndarray, reference: Any) -> dict[str, np.ndarray]:
    """Per-topic NPMI, C_V and UMass of the top words ``top`` (topics, n) on ``reference`` (documents, vocabulary)."""
    return {"npmi": npmi(top, reference), "c_v": c_v(top, reference), "umass": umass(top, reference)}


def topic_quality(scores: torch.Tensor, reference: Any, vocabulary: Sequence[str] | None = None,
                  n: int = 10) -> dict[str, Any]:
    """The topic figures of a topic-word score matrix ``scores`` (topics, vocabulary), as ``ppgen topics``,
    ``ppgen evaluate`` and benchmarks/topics.py report them: mean NPMI, C_V and UMass of the top ``n`` words on
    ``reference``, diversity of the top 25, inverted RBO of the top ``n``; with ``vocabulary``, the per-topic
    table (``topics``), best NPMI first."""
    top = top_words(scores, n)
    per_topic = coherence(top, reference)
    out: dict[str, Any] = {name: float(values.mean()) for name, values in per_topic.items()}
    out.update(diversity=diversity(scores), inverted_rbo=inverted_rbo(top), top_words=n)
    if vocabulary is not None:
        rows = [{"topic": k, **{name: float(values[k]) for name, values in per_topic.items()},
                 "words": [vocabulary[i] for i in top[k]]} for k in range(len(top))]
        out["topics"] = sorted(rows, key=lambda r: -r["npmi"])
    return out


def topic_table(pair, vocabulary: Sequence[str], reference: Any, n: int = 10) -> list[dict[str, Any]]:
    """One row per topic: its top ``n`` words and their NPMI, C_V and UMass on ``reference``, best NPMI first."""
    return topic_quality(pair.topic_words(), reference, vocabulary, n)["topics"]


def reference_counts(source: str, vocabulary: Sequence[str]) -> Any:
    """A reference corpus (any ``ppgen.data.text`` source: CSV, .txt folder, bundled name) counted over
    ``vocabulary`` (sparse), tokenized as the training corpus was, for coherence on other documents."""
    from ppgen.data import text

    docs = [d if isinstance(d, str) else "" for d in text.documents(source)]
    counts = text.counter(vocabulary=list(vocabulary)).transform(docs)
    counts = counts[np.asarray(counts.sum(axis=1)).ravel() > 0]
    if counts.shape[0] == 0:
        raise UserError(f"{source}: no document holds a word of the model's vocabulary; give another reference")
    return counts


def unigram_log_probs(train: Any, smoothing: float = 1.0) -> np.ndarray:
    """log p(w) of the unigram baseline fitted on the training counts: (c_w + s) / (Σ c + s V), add-s smoothing."""
    counts = np.asarray(word_totals(train), dtype=np.float64)
    return np.log((counts + smoothing) / (counts.sum() + smoothing * len(counts)))


def word_totals(counts: Any) -> np.ndarray:
    """Σ_d x_dw: the corpus count of each word (dense, sparse or :class:`~ppgen.data.text.SparseCounts`)."""
    counts = getattr(counts, "csr", counts)
    if isinstance(counts, torch.Tensor):
        return counts.detach().double().sum(0).cpu().numpy()
    return np.asarray(counts.sum(axis=0), dtype=np.float64).ravel()


def unigram_perplexity(train: Any, x: torch.Tensor) -> float:
    """exp(−Σ_d Σ_w x_dw log p(w) / Σ_d N_d): the word-sequence perplexity of the documents ``x`` under the
    unigram baseline of :func:`unigram_log_probs` (exact, no bound: every word is independent of the document)."""
    log_p = torch.as_tensor(unigram_log_probs(train))
    return math.exp(-float((x.double() * log_p).sum()) / total_words(x))


def completion_split(x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each document's words cut at random into an observed half (⌊N/2⌋ words, drawn without replacement: a
    multivariate hypergeometric draw of its counts) and the held-out rest, for documents of two or more words."""
    rng = np.random.default_rng(seed)
    counts = x.detach().cpu().numpy().astype(np.int64)
    counts = counts[counts.sum(1) >= 2]
    observed = np.stack([rng.multivariate_hypergeometric(row, int(row.sum()) // 2) for row in counts])
    return torch.as_tensor(observed, dtype=torch.float32), torch.as_tensor(counts - observed, dtype=torch.float32)


def completion_perplexity(word_probs, x: torch.Tensor, seed: int = 0) -> float:
    r"""Document completion (Wallach et al. 2009, "Evaluation methods for topic models", §4.2): the topic
    proportions are inferred from a random half of each document's words (:func:`completion_split`) and the
    other half scored, exp(−Σ_d Σ_w x^{held}_dw log p(w | first half of d) / Σ held words). ``word_probs``
    maps observed counts (documents, V) to predictive word distributions (documents, V). An estimate of a
    predictive perplexity, not a bound; word-sequence perplexity (no multinomial coefficient)."""
    observed, held = completion_split(x, seed)
    p = torch.as_tensor(word_probs(observed), dtype=torch.float64).clamp_min(1e-300)
    return math.exp(-float((held.double() * p.log()).sum()) / total_words(held))


def pair_completion_perplexity(pair, x: torch.Tensor, draws: int = 20, seed: int = 0) -> float:
    """:func:`completion_perplexity` of a topic model: p(w | first half) = E_q[p(w | θ)], θ ~ q(θ | first half),
    averaged over ``draws`` draws."""
    device = next(pair.parameters()).device

    def word_probs(observed: torch.Tensor) -> torch.Tensor:
        theta = pair.sample_proportions(observed.to(device), draws)
        return pair.word_distribution(theta).mean(0).cpu()

    pair.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return completion_perplexity(word_probs, x, seed)


def perplexities(pair, train: Any, x: torch.Tensor, iwae: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Per-word held-out perplexities of the word sequence of the documents ``x``: the model's IWAE bound
    (``iwae``: per-document IWAE-K of the counts, less the multinomial coefficient — an upper bound on the
    perplexity in expectation), the unigram baseline (exact) and document completion (an estimate, no bound)."""
    sequence = iwae.double().cpu() - log_multinomial_coefficient(x.cpu())
    return {"perplexity_iwae_bound": perplexity_from(sequence, x.cpu()),
            "perplexity_unigram": unigram_perplexity(train, x.cpu()),
            "perplexity_completion": pair_completion_perplexity(pair, x, seed=seed)}
