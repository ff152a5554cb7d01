"""Topic models a user can trust: the kept epoch, coherence as the field computes it, tokens, perplexity.

Every figure is checked against an exact answer: gensim's CoherenceModel (the reference implementation), sums
done by hand, or a seeded run's own history.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ppgen.commands.train import early_warning, kept_line
from ppgen.data import text
from ppgen.evaluation import topics as T


# -- tokens ----------------------------------------------------------------------------------------------
def test_contractions_are_dropped_whole_and_possessives_cut():
    doc = "Don't we've you'll They're I'd I'm doesn't didn’t Trump's it’s O'Brien said don\"t x-ray 42 a"
    assert text.tokenize(doc) == ["trump", "it", "o'brien", "said", "ray"]


def test_no_contraction_fragment_reaches_a_vocabulary():
    docs = ["we don't know why it doesn't rain", "they didn't say we'll win", "you've seen what we're doing"] * 5
    vocabulary = text.vectorize(docs, text.Vectorizing(min_df=1, max_df=1.0, stop_words=None), n_val=1,
                                n_test=1).vocabulary
    assert not {"don", "doesn", "didn", "ll", "ve", "re", "t"} & set(vocabulary)
    assert {"know", "rain", "win", "seen", "doing"} <= set(vocabulary)


# -- coherence: gensim's CoherenceModel is the reference --------------------------------------------------
@pytest.fixture(scope="module")
def presence_corpus():
    """300 documents over 40 words (word w present with probability rising in w), two words always together,
    and six topics of 10 words."""
    rng = np.random.default_rng(1)
    ref = (rng.random((300, 40)) < np.linspace(0.02, 0.5, 40)).astype(np.float32)
    ref[:, 3] = ref[:, 4]
    top = np.stack([rng.choice(40, 10, replace=False) for _ in range(6)])
    top[0, :2] = (3, 4)
    return ref, top


@pytest.mark.parametrize("measure", ["c_npmi", "c_v", "u_mass"])
def test_coherence_equals_gensim(presence_corpus, measure):
    """ppgen's NPMI, C_V and UMass equal gensim's to 1e-12 (they agree to ~1e-16: the same sums in float64);
    gensim's sliding window is set to hold a whole document, which makes its counts document co-occurrence."""
    pytest.importorskip("gensim")
    from gensim.corpora import Dictionary
    from gensim.models.coherencemodel import CoherenceModel

    ref, top = presence_corpus
    vocab = [f"w{i}" for i in range(ref.shape[1])]
    texts = [[vocab[j] for j in np.flatnonzero(row)] for row in ref]
    dictionary = Dictionary(texts)
    words = [[vocab[i] for i in t] for t in top]
    if measure == "u_mass":  # document co-occurrence is UMass's own convention
        cm = CoherenceModel(topics=words, corpus=[dictionary.doc2bow(t) for t in texts], dictionary=dictionary,
                            coherence=measure, processes=1)
    else:
        cm = CoherenceModel(topics=words, texts=texts, dictionary=dictionary, coherence=measure,
                            window_size=ref.shape[1] + 1, processes=1)
    ours = {"c_npmi": T.npmi, "c_v": T.c_v, "u_mass": T.umass}[measure](top, ref)
    assert np.allclose(ours, cm.get_coherence_per_topic(), rtol=0, atol=1e-12)


def test_c_v_and_umass_by_hand():
    # four documents over three words: p = (3/4, 2/4, 2/4); pairs (0,1): 2/4, (0,2): 1/4, (1,2): 1/4
    ref = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 1]])
    p, joint = np.array([0.75, 0.5, 0.5]), np.array([[0.75, 0.5, 0.25], [0.5, 0.5, 0.25], [0.25, 0.25, 0.5]])
    pij = joint + T.EPS
    m = np.log(pij / np.outer(p, p)) / -np.log(pij)
    whole = m.sum(0)
    want_cv = np.mean([m[i] @ whole / (np.linalg.norm(m[i]) * np.linalg.norm(whole)) for i in range(3)])
    assert T.c_v(np.array([[0, 1, 2]]), ref)[0] == pytest.approx(want_cv, rel=1e-12)
    # UMass: mean over (later word, earlier word) of log((D(w_i, w_j)/D + ε) / (D(w_j)/D))
    want_umass = np.mean([math.log((0.5 + T.EPS) / 0.75), math.log((0.25 + T.EPS) / 0.75),
                          math.log((0.25 + T.EPS) / 0.5)])
    assert T.umass(np.array([[0, 1, 2]]), ref)[0] == pytest.approx(want_umass, rel=1e-12)


def test_rank_biased_overlap_and_inverted_rbo_by_hand():
    # a = (1, 2, 3), b = (1, 3, 2), p = 1/2: overlaps X_1..3 = 1, 1, 3
    # RBO = (3/3) p^3 + ((1 - p)/p) (1/1 p + 1/2 p^2 + 3/3 p^3) = 1/8 + 1/2 + 1/8 + 1/8 = 7/8
    assert T.rank_biased_overlap([1, 2, 3], [1, 3, 2], p=0.5) == pytest.approx(7 / 8, rel=1e-12)
    assert T.rank_biased_overlap([1, 2, 3], [1, 2, 3], p=0.9) == pytest.approx(1.0, rel=1e-12)
    assert T.inverted_rbo(np.array([[0, 1, 2], [3, 4, 5]])) == 1.0  # nothing shared
    assert T.inverted_rbo(np.array([[0, 1, 2], [0, 1, 2], [6, 7, 8]])) == pytest.approx(2 / 3)  # 1 - (1 + 0 + 0)/3


def test_topic_quality_reads_a_sparse_training_corpus_as_its_dense_form(presence_corpus):
    ref, top = presence_corpus
    scores = torch.zeros(len(top), ref.shape[1])
    for k, words in enumerate(top):  # scores that rank each topic's words in the given order
        scores[k, words] = torch.arange(len(words), 0, -1, dtype=torch.float32)
    dense = T.topic_quality(scores, ref, n=10)
    sparse = T.topic_quality(scores, text.SparseCounts(ref), n=10)
    assert dense == sparse
    assert dense["npmi"] == pytest.approx(float(T.npmi(top, ref).mean()), rel=1e-12)


# -- perplexity ---------------------------------------------------------------------------------------------
def test_unigram_perplexity_by_hand():
    train = torch.tensor([[3.0, 1.0, 0.0], [1.0, 1.0, 2.0]])  # totals (4, 2, 2), add-one: (5, 3, 3) / 11
    x = torch.tensor([[1.0, 0.0, 2.0]])
    want = math.exp(-(math.log(5 / 11) + 2 * math.log(3 / 11)) / 3)
    assert T.unigram_perplexity(train, x) == pytest.approx(want, rel=1e-12)


def test_document_completion_split_and_oracle():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.multinomial(9, np.full(6, 1 / 6), size=30), dtype=torch.float32)
    x[0] = 0
    x[0, 2] = 1  # a one-word document has no half to infer from: left out
    observed, held = T.completion_split(x, seed=3)
    assert len(observed) == 29 and torch.equal(observed + held, x[1:])
    assert torch.equal(observed.sum(1), torch.full((29,), 4.0))  # ⌊9/2⌋ words observed per document
    # an oracle that knows p(w) = 1/6 scores the held-out words at perplexity 6 exactly
    assert T.completion_perplexity(lambda obs: torch.full(obs.shape, 1 / 6, dtype=torch.float64), x) == pytest.approx(6.0, rel=1e-12)


# -- the kept epoch ----------------------------------------------------------------------------------------
def test_final_line_and_early_warning():
    best = {"kept_epoch": 3, "epochs": 30, "kept_by": "best validation ELBO", "kept_score": -91.5}
    assert kept_line(best) == "; kept epoch 3 of 30: best validation ELBO -91.5"
    assert "epoch 3 of 30, in the first 10% of training" in early_warning(best)
    assert early_warning({**best, "kept_epoch": 4}) is None  # past 10% of 30 epochs
    assert early_warning({**best, "kept_epoch": 1, "epochs": 3}) is not None  # 10% of 3, rounded up: epoch 1
    assert early_warning({**best, "kept_epoch": 1, "epochs": 1}) is None  # the last epoch is the whole run
    last = {"kept_epoch": 30, "epochs": 30, "kept_by": "last epoch (--select last)"}
    assert kept_line(last) == "; kept epoch 30 of 30: last epoch (--select last)" and early_warning(last) is None


def zipf_lda_csv(path, vocab: int = 300, documents: int = 500, topics: int = 5, words: int = 80):
    """An LDA corpus whose topics are half a Zipfian background: the validation ELBO of ProdLDA peaks in its
    first epoch (the decoder leaves the word frequencies for topics), long before its topics are coherent."""
    rng = np.random.default_rng(0)
    names = [f"w{chr(97 + i // 676)}{chr(97 + i // 26 % 26)}{chr(97 + i % 26)}" for i in range(vocab)]
    zipf = 1 / np.arange(1, vocab + 1)
    beta = 0.5 * rng.dirichlet(np.full(vocab, 0.05), size=topics) + 0.5 * zipf / zipf.sum()
    theta = rng.dirichlet(np.full(topics, 0.3), size=documents)
    rows = [" ".join(rng.choice(names, words, p=t @ beta)) for t in theta]
    path.write_text("id,body\n" + "\n".join(f"{i},{r}" for i, r in enumerate(rows)), "utf-8")
    return f"{path}:body"


def test_a_topic_model_keeps_its_last_epoch_or_the_best_validation_npmi_never_the_best_elbo(tmp_path, capsys):
    """The validation ELBO peaks at epoch 1 of 8. `ppgen train` keeps the last epoch by default and, with --select
    best, the epoch of the best validation NPMI; its final line says which and why, and model.pt holds that
    epoch's topics (their NPMI on the validation documents, scored again by `ppgen topics`, is the history's)."""
    import json

    from ppgen.cli import main

    corpus = zipf_lda_csv(tmp_path / "docs.csv")
    args = ["train", "prodlda", "--data", corpus, "--topics", "5", "--hidden", "32", "--batch-size", "50",
            "--epochs", "8", "--lr", "0.003", "--no-progress"]
    for select, out in ((None, tmp_path / "last"), ("best", tmp_path / "best")):
        assert main([*args, "--out", str(out), *(["--select", select] if select else [])]) == 0
        final = capsys.readouterr().out.strip().splitlines()[-1]
        history = pd.read_csv(out / "history.csv")
        assert int(history.loc[history["val_elbo"].idxmax(), "epoch"]) == 1  # the ELBO would have kept epoch 1
        if select is None:
            kept = 8
            assert final.endswith("kept epoch 8 of 8: last epoch (prodlda's default; --select best keeps the best "
                                  "validation NPMI (top-10 words on the validation documents))")
        else:
            kept = int(history.loc[history["val_npmi"].idxmax(), "epoch"])
            assert kept > 1 and f"kept epoch {kept} of 8: best validation NPMI" in final
        assert main(["topics", str(out), "--split", "val", "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["npmi"] == pytest.approx(float(history.loc[kept - 1, "val_npmi"]), rel=1e-12)
