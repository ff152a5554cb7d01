"""Issue 12: topic models (ProdLDA, the Dirichlet-VAE), their bag-of-words data and their evaluation.

Statistical tolerances are multiples of a Monte Carlo standard error computed from the draws (said at each
assertion); the topic-recovery threshold (Hungarian-matched cosine ≥ 0.9) is the issue's.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyro
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import ppgen
from ppgen import evaluation
from ppgen.data import text
from ppgen.errors import UserError
from ppgen.evaluation import topics as T
from ppgen.inference.options import OptionError
from ppgen.models.dirvae import DirVAE
from ppgen.models.prodlda import ProdLDA, laplace_prior

K, V = 5, 100


# -- a corpus drawn from a known LDA model ---------------------------------------------------------------
@pytest.fixture(scope="module")
def lda_corpus():
    """2,000 documents of 80 words from 5 known topics over 100 words (LDA: θ ~ Dir(0.3), w ~ Σ_k θ_k β_k)."""
    rng = np.random.default_rng(0)
    topics = rng.dirichlet(np.full(V, 0.05), size=K)
    theta = rng.dirichlet(np.full(K, 0.3), size=2000)
    x = np.stack([rng.multinomial(80, t @ topics) for t in theta]).astype(np.float32)
    data = ppgen.data.Dataset("lda", torch.tensor(x[:1800]), torch.tensor(x[1800:1900]), torch.tensor(x[1900:]))
    return topics, data


def matched_cosines(pair, true_topics: np.ndarray) -> np.ndarray:
    """Cosine similarity of each true topic with its Hungarian-matched learned topic (p(w | θ = e_k))."""
    pair.eval()
    with torch.no_grad():
        learned = pair.word_distribution(torch.eye(K) * (1 - 1e-6) + 1e-6 / K).numpy()
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731
    cos = unit(learned) @ unit(true_topics).T
    rows, cols = linear_sum_assignment(-cos)
    return cos[rows, cols]


def _fit(pair, data, engine):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pyro.clear_param_store()
        return ppgen.fit(pair, data, engine=engine, epochs=60, batch_size=100, lr=1e-2, seed=0, progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("cls,engine", [(DirVAE, "torch"), (ProdLDA, "jax")])
def test_learned_topics_match_the_true_ones(lda_corpus, cls, engine):
    true_topics, data = lda_corpus
    torch.manual_seed(0)
    pair = cls((V,), topics=K, hidden=(50,), dropout=0.0, batch_norm=False, decoder="mixture")
    _fit(pair, data, engine)
    cos = matched_cosines(pair, true_topics)
    assert cos.min() >= 0.9, cos


# -- exact pieces ---------------------------------------------------------------------------------------
def test_laplace_prior_closed_form():
    alpha = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    mu, var = laplace_prior(alpha)
    # the mode of Σ_k α_k log softmax(h)_k with Σ h = 0 is h_k = log α_k − mean log α (θ = α / α₀)
    assert torch.allclose(torch.softmax(mu, -1), alpha / alpha.sum())
    assert abs(float(mu.sum())) < 1e-12
    k = 4
    assert torch.allclose(var, (1 / alpha) * (1 - 2 / k) + (1 / alpha).sum() / k**2)
    # symmetric α: μ₀ = 0, σ₀² = (1/α)(1 − 1/K), which the model's prior uses
    mu, var = laplace_prior(torch.full((20,), 0.7))
    pair = ProdLDA((30,), topics=20, alpha=0.7)
    assert torch.allclose(mu, torch.zeros(20, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(var, torch.full((20,), pair.prior_scale() ** 2, dtype=torch.float64))


def test_dirichlet_kl_closed_form_equals_monte_carlo():
    torch.manual_seed(0)
    a = torch.tensor([0.3, 2.0, 5.0, 1.2], dtype=torch.float64)
    b = torch.tensor([1.0, 1.0, 0.5, 3.0], dtype=torch.float64)
    q, p = torch.distributions.Dirichlet(a), torch.distributions.Dirichlet(b)
    theta = q.sample((200_000,))
    log_ratio = q.log_prob(theta) - p.log_prob(theta)
    mc, se = float(log_ratio.mean()), float(log_ratio.std() / math.sqrt(len(log_ratio)))
    exact = float(torch.distributions.kl_divergence(q, p))  # the closed form the analytic ELBO uses
    assert abs(exact - mc) < 4 * se  # 4 Monte Carlo standard errors


def test_numpyro_dirichlet_is_reparameterized():
    """d/da E_{Dir(a)}[θ_0²] through NumPyro's Dirichlet samples equals the exact derivative within 4 SE."""
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as nd

    def estimate(a, key):
        return (nd.Dirichlet(a).sample(key, (20_000,))[:, 0] ** 2).mean()

    a = jnp.array([1.5, 2.0, 0.7])
    keys = jax.random.split(jax.random.PRNGKey(0), 20)
    grads = np.asarray(jax.jit(jax.vmap(jax.grad(estimate), in_axes=(None, 0)))(a, keys))
    a0 = float(a.sum())

    def exact(v):  # E[θ_0²] = a_0 (a_0 + 1) / (A (A + 1))
        s = v.sum()
        return v[0] * (v[0] + 1) / (s * (s + 1))

    g = np.asarray(jax.grad(exact)(a))
    assert a0 > 0 and np.all(np.abs(grads.mean(0) - g) < 4 * grads.std(0, ddof=1) / math.sqrt(len(keys)) + 1e-6)


def test_per_document_estimators_are_per_document(lda_corpus):
    """ELBO and IWAE give one number per document, and the model's per-document log density at fixed θ is the
    document's multinomial log-probability plus the prior's (scipy), not a per-word or per-batch number."""
    from pyro import poutine
    from scipy.stats import multinomial

    from ppgen import sites

    _, data = lda_corpus
    x = data.test[:7]
    torch.manual_seed(0)
    for pair in (ProdLDA((V,), topics=K, batch_norm=False), DirVAE((V,), topics=K)):  # with and without BN
        pair.eval()
        assert evaluation.elbo(pair, x, num_samples=3).shape == (7,)
        assert evaluation.iwae(pair, x, k=5).shape == (7,)
        with torch.no_grad():
            guide = poutine.trace(pair.guide).get_trace(x)
            model = poutine.trace(poutine.replay(pair.model, trace=guide)).get_trace(x)
            per_doc = sites.log_density(model)
            z = guide.nodes["z"]["value"]
            probs = torch.softmax(pair.decoder(z), -1).double().numpy()
            prior = model.nodes["z"]["fn"].log_prob(z).double().numpy()
        want = np.array([multinomial(int(d.sum()), p).logpmf(d.numpy()) for d, p in zip(x, probs)]) + prior
        got = model.nodes["x"]["fn"].log_prob(x).double().numpy() + prior
        assert np.allclose(got, want, atol=1e-3)
        assert np.allclose(per_doc.double().numpy(), want, atol=1e-3)


def test_perplexity_npmi_and_diversity_by_hand():
    bounds = torch.tensor([-10.0, -20.0])
    x = torch.tensor([[2.0, 3.0, 0.0], [0.0, 1.0, 4.0]])
    assert T.perplexity_from(bounds, x) == pytest.approx(math.exp(30 / 10))
    # log(5! / (2! 3!)) = log 10 and log(5! / (1! 4!)) = log 5
    assert torch.allclose(T.log_multinomial_coefficient(x), torch.tensor([10.0, 5.0], dtype=torch.float64).log())
    # four documents over four words; topic (0, 1): p0 = 3/4, p1 = 2/4, p01 = 2/4
    ref = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1], [0, 0, 1, 1]])
    p0, p1, p01 = 0.75, 0.5, 0.5 + T.EPS
    want = math.log(p01 / (p0 * p1)) / -math.log(p01)
    assert T.npmi(np.array([[0, 1]]), ref)[0] == pytest.approx(want)
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0], [3.0, 0.0, 2.0, 1.0]])
    assert T.diversity(scores, n=2) == pytest.approx(3 / 4)  # {0, 1} and {0, 2}


def test_npmi_equals_gensim_c_npmi():
    pytest.importorskip("gensim")
    from gensim.corpora import Dictionary
    from gensim.models.coherencemodel import CoherenceModel

    rng = np.random.default_rng(1)
    ref = (rng.random((300, 40)) < np.linspace(0.02, 0.5, 40)).astype(np.float32)
    ref[:, 3] = ref[:, 4]  # two words that always co-occur
    vocab = [f"w{i}" for i in range(40)]
    top = np.stack([rng.choice(40, 10, replace=False) for _ in range(6)])
    top[0, :2] = (3, 4)
    texts = [[vocab[j] for j in np.flatnonzero(row)] for row in ref]
    cm = CoherenceModel(topics=[[vocab[i] for i in t] for t in top], texts=texts, dictionary=Dictionary(texts),
                        coherence="c_npmi", window_size=41, processes=1)  # a window holding a whole document
    assert np.allclose(T.npmi(top, ref), cm.get_coherence_per_topic(), atol=1e-12)


# -- both engines; batch norm is torch-only -------------------------------------------------------------
def test_batch_norm_trains_on_torch_only(lda_corpus):
    _, data = lda_corpus
    pair = ProdLDA((V,), topics=K, hidden=(20,))
    assert pair.svi_engines == ("torch",)
    with pytest.raises(OptionError):
        ppgen.fit(pair, data, engine="jax", epochs=1, progress=False)
    assert DirVAE((V,), topics=K, batch_norm="off").svi_engines == ("jax", "torch")


def test_topic_networks_lower_to_jax():
    import jax.numpy as jnp

    torch.manual_seed(0)
    for decoder in ("poe", "mixture"):
        pair = DirVAE((V,), topics=K, decoder=decoder, batch_norm="off").eval()
        theta = torch.distributions.Dirichlet(torch.ones(K)).sample((3, 4))
        want = pair.decoder(theta).detach().numpy()
        got = np.asarray(pair.decoder(jnp.asarray(theta.numpy())))
        assert np.allclose(got, want, atol=1e-5)
    pair = ProdLDA((V,), topics=K, batch_norm=False).eval()
    x = torch.poisson(torch.ones(6, V))
    want = [t.detach().numpy() for t in pair.encoder(x)]
    got = pair.encoder(jnp.asarray(x.numpy()))
    assert all(np.allclose(np.asarray(g), w, atol=1e-4) for g, w in zip(got, want))


def test_batch_norm_lowers_in_evaluation_mode_only():
    """A batch-normalized decoder (trained on torch) lowers with its running statistics for inference (NUTS),
    and refuses in training mode, where batch statistics are used and updated in place."""
    import jax.numpy as jnp

    from ppgen.nn.lower import NotLowerable

    torch.manual_seed(0)
    pair = ProdLDA((V,), topics=K)  # batch norm on
    pair.train()
    for _ in range(3):  # move the running statistics away from (0, 1)
        pair.decoder(torch.randn(32, K))
    pair.eval()
    z = torch.randn(2, 3, K)
    assert np.allclose(np.asarray(pair.decoder(jnp.asarray(z.numpy()))), pair.decoder(z).detach().numpy(), atol=1e-5)
    pair.train()
    with pytest.raises(NotLowerable, match="training mode"):
        pair.decoder(jnp.asarray(z.numpy()))


# -- data -----------------------------------------------------------------------------------------------
def test_news_corpus_is_real_and_large():
    if text.news_file() is None:  # `make install` fetches it (ppgen data --fetch news)
        pytest.skip("the news corpus is not fetched: ppgen data --fetch news")
    assert len(text.news_documents()) == 3824
    data = ppgen.data.load("news")
    assert len(data.train) + len(data.val) + len(data.test) >= 2000
    assert data.x_shape == (2000,) and "president" in data.vocabulary
    assert (data.train.sum(-1) > 0).all() and "news:" in data.describe()


def test_csv_folder_and_bad_input(tmp_path):
    docs = [f"the cat sat on the mat number {i} with the dog" for i in range(30)] + ["12 34 !!"]
    (tmp_path / "docs.csv").write_text("id,body\n" + "\n".join(f"{i},{d}" for i, d in enumerate(docs)), "utf-8")
    settings = text.Vectorizing(min_df=1, max_df=1.0)
    bow = text.vectorize(text.documents(f"{tmp_path / 'docs.csv'}:body"), settings, n_val=3, n_test=3)
    assert sum(bow.dropped.values()) == 1  # "12 34 !!" has no word
    assert set(bow.vocabulary) == {"cat", "sat", "mat", "number", "dog"}
    folder = tmp_path / "txt"
    folder.mkdir()
    for i, d in enumerate(docs[:5]):
        (folder / f"{i}.txt").write_text(d, "utf-8")
    assert text.is_text_source(str(folder)) and len(text.documents(str(folder))) == 5
    with pytest.raises(UserError, match="no column 'text'"):
        text.documents(str(tmp_path / "docs.csv"))
    (folder / "bad.txt").write_bytes(b"caf\xe9 au lait")
    with pytest.raises(UserError, match="not UTF-8"):
        text.documents(str(folder))
    (tmp_path / "bad.csv").write_bytes(b"text\ncaf\xe9\n")
    with pytest.raises(UserError, match="not UTF-8"):
        text.documents(str(tmp_path / "bad.csv"))
    with pytest.raises(UserError, match="no documents with text"):
        text.vectorize(["", "  "], settings)
    with pytest.raises(UserError, match="no word is left"):
        text.vectorize(["the and of", "a the", "of of", "and", "the"], settings, n_val=1, n_test=1)
    (tmp_path / "empty.csv").write_text("text\n", "utf-8")
    with pytest.raises(UserError, match="no documents"):
        ppgen.data.load(str(tmp_path / "empty.csv"))


def test_20news_offline_is_one_line(tmp_path):
    with pytest.raises(UserError, match="offline"):
        text.newsgroups_documents(data_home=str(tmp_path))


# -- use: ppgen train / evaluate / topics / resume, and one-line mistakes ---------------------------------
def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    """600 synthetic 'documents' of real words from 4 themes, as a CSV with a ``body`` column."""
    rng = np.random.default_rng(0)
    themes = [["election", "vote", "senate", "party", "campaign", "governor"],
              ["game", "team", "season", "coach", "player", "score"],
              ["market", "stock", "price", "bank", "trade", "economy"],
              ["rain", "storm", "weather", "flood", "wind", "snow"]]
    rows = [" ".join(rng.choice(themes[rng.integers(4)], 30)) for _ in range(600)]
    path = tmp_path_factory.mktemp("corpus") / "docs.csv"
    path.write_text("id,body\n" + "\n".join(f"{i},{r}" for i, r in enumerate(rows)), "utf-8")
    return f"{path}:body"


def test_train_evaluate_topics_and_resume(tmp_path, capsys, small_csv):
    from ppgen.cli import main

    out = tmp_path / "run"
    args = ["train", "prodlda", "--data", small_csv, "--topics", "4", "--hidden", "32", "--batch-size", "50",
            "--no-progress", "--select", "last"]
    assert main([*args, "--epochs", "2", "--out", str(out)]) == 0
    assert main(["train", "prodlda", "--resume", str(out), "--epochs", "3", "--no-progress"]) == 0
    assert len((out / "history.csv").read_text().splitlines()) == 4  # header + 3 epochs
    capsys.readouterr()
    assert main(["evaluate", str(out), "--iwae", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    words = result["words"]
    assert result["perplexity"] == pytest.approx(math.exp(-result["elbo"] * result["n"] / words), rel=1e-6)  # float32 mean
    assert result["perplexity_iwae_20"] <= result["perplexity"] * math.exp(3 * result["elbo_se"] * result["n"] / words)
    assert -1 <= result["npmi"] <= 1 and 0 < result["diversity"] <= 1
    # the sequence perplexity drops log(N!/Π x_w!) per document from the bound: larger by exactly that
    x = ppgen.data.load(small_csv).test
    coefficient = float(T.log_multinomial_coefficient(x).sum())
    assert math.log(result["perplexity_sequence"]) == pytest.approx(math.log(result["perplexity"]) + coefficient / words,
                                                                   rel=1e-5)
    # per-word perplexity: the IWAE bound on the word sequence, the unigram baseline (exact) and completion
    assert result["perplexity_iwae_bound"] == pytest.approx(result["perplexity_sequence_iwae_20"], rel=1e-6)  # float32
    assert result["perplexity_unigram"] == pytest.approx(T.unigram_perplexity(ppgen.data.load(small_csv).train, x),
                                                         rel=1e-12)
    assert result["perplexity_completion"] > 1
    assert main(["evaluate", str(out), "--iwae", "5"]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert main(["topics", str(out), "--words", "5"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 6 and "NPMI" in shown[0] and "C_V" in shown[1]  # a summary, a header and 4 topics
    assert (out / "topics.png").exists() and (out / "topics.json").exists()
    import arviz as az

    theta = az.from_netcdf(str(out / "proportions.nc")).posterior["theta"]
    assert theta.shape == (1, 1000, 16, 4) and np.allclose(theta.sum("topic"), 1, atol=1e-5)
    # the training split is held sparse; evaluating it or measuring NPMI on it reads it as well
    assert isinstance(x_train := ppgen.data.load(small_csv).train, text.SparseCounts) and len(x_train) == 480
    assert main(["evaluate", str(out), "--split", "train", "--iwae", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 480
    assert main(["topics", str(out), "--split", "train", "--words", "3"]) == 0


def test_topic_mistakes_are_one_line(tmp_path, capsys, small_csv):
    from ppgen.cli import main

    (tmp_path / "a.csv").write_text("title\nhello world\n", "utf-8")
    assert main(["train", "prodlda", "--data", str(tmp_path / "a.csv"), "--out", str(tmp_path / "r")]) == 2
    line = _error_line(capsys)  # a CSV without a text column is read as a table of numbers
    assert "a text corpus needs a column named text" in line and "a.csv:title" in line and not (tmp_path / "r").exists()
    assert main(["train", "dirvae", "--data", small_csv, "--topics", "1", "--out", str(tmp_path / "r")]) == 2
    assert "at least 2 topics" in _error_line(capsys)
    vae = tmp_path / "vae"
    assert main(["train", "vae", "--data", "digits", "--z-dim", "2", "--hidden", "8", "--epochs", "1",
                 "--no-progress", "--out", str(vae)]) == 0
    capsys.readouterr()
    assert main(["topics", str(vae)]) == 2
    assert "has no topics" in _error_line(capsys)


# -- counts sparse until a batch is formed; the count likelihood ------------------------------------------
class _RecordingCounts(text.SparseCounts):
    """SparseCounts that records the largest block of rows it densified, and refuses to densify everything."""

    largest = 0

    def __getitem__(self, index):
        out = super().__getitem__(index)
        _RecordingCounts.largest = max(_RecordingCounts.largest, out.shape[0] if out.ndim == 2 else 1)
        return out

    def to(self, device):
        return self

    def numpy(self):
        raise AssertionError("the whole training matrix was densified")


@pytest.mark.parametrize("n,vocab,batch", [
    (4_000, 5_000, 500),  # 80 MB dense, 0.3 MB sparse
    pytest.param(20_000, 50_000, 1000, marks=pytest.mark.slow),  # 4 GB dense, 1.6 MB sparse (~1 min unloaded)
])
def test_a_corpus_too_large_to_densify_trains_batch_by_batch(n, vocab, batch):
    """Documents held as CSR train on the torch engine one densified batch at a time (never more rows than the
    batch) and the whole matrix is never densified; the CSR holds a small fraction of the dense bytes."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    per_doc = 10
    rows = np.repeat(np.arange(n), per_doc)
    counts = sp.csr_matrix((rng.integers(1, 4, n * per_doc).astype(np.float32),
                            (rows, rng.integers(0, vocab, n * per_doc))), shape=(n, vocab))
    train = _RecordingCounts(counts)
    _RecordingCounts.largest = 0
    assert train.nbytes < n * vocab * 4 / 200
    held = torch.as_tensor(counts[:5].toarray())
    data = ppgen.data.TextDataset("big", train, held, held, info={"vocabulary": [], "dropped_empty": {}})
    pair = ProdLDA((vocab,), topics=3, hidden=(4,), batch_norm="off")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit = ppgen.fit(pair, data, engine="torch", epochs=1, batch_size=batch, seed=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert _RecordingCounts.largest == batch and math.isfinite(fit.history[-1]["elbo"])


@pytest.mark.parametrize("engine", ["torch", pytest.param("jax", marks=pytest.mark.slow)])
def test_sparse_and_dense_corpora_train_identically(lda_corpus, engine):
    """The same documents held sparse (densified per batch, or per run on JAX) and dense give the same weights."""
    _, data = lda_corpus
    sparse = ppgen.data.TextDataset("lda", text.SparseCounts(data.train.numpy()), data.val, data.test)
    weights = []
    for d in (data, sparse):
        torch.manual_seed(0)
        pair = ProdLDA((V,), topics=K, hidden=(16,), batch_norm="off")
        pyro.clear_param_store()
        ppgen.fit(pair, d, engine=engine, epochs=2, batch_size=200, lr=1e-2, seed=0, progress=False)
        weights.append(pair.state_dict())
    for name, w in weights[0].items():
        assert torch.equal(w, weights[1][name]), name


def test_word_counts_equal_torch_multinomial():
    """WordCounts (the faster count likelihood) gives torch's Multinomial log-probability, also broadcast over
    particles and expanded."""
    from ppgen.models.prodlda import WordCounts

    torch.manual_seed(0)
    x = torch.poisson(torch.rand(7, 50) * 3)
    logits = torch.randn(4, 7, 50)
    n = int(x.sum(-1).max())
    ours, theirs = WordCounts(n, logits=logits), torch.distributions.Multinomial(n, logits=logits)
    torch.testing.assert_close(ours.log_prob(x), theirs.log_prob(x), atol=1e-4, rtol=0)
    assert ours.expand((2, 4, 7)).log_prob(x).shape == (2, 4, 7)
    torch.testing.assert_close(ours.mean, theirs.mean)


# -- the Dirichlet guide beside NUTS and the exact posterior; AIS per document ----------------------------
def _conjugate_dirvae(alpha: float = 0.8):
    """A Dirichlet-VAE whose mixture decoder maps θ to p(w | θ) = θ (topic k is word k, up to e^-30): the
    posterior of θ given counts x is Dirichlet(α + x) and log p(x) is the Dirichlet-multinomial's."""
    torch.manual_seed(0)
    pair = DirVAE((3,), topics=3, hidden=(4,), alpha=alpha, dropout=0.0, batch_norm="off", decoder="mixture")
    with torch.no_grad():
        pair.decoder.beta.weight.copy_(30.0 * torch.eye(3))
    return pair.eval()


def _dirichlet_multinomial_log_pmf(x: torch.Tensor, alpha: float) -> torch.Tensor:
    x = x.double()
    a = torch.full_like(x, alpha)
    n, a0 = x.sum(-1), a.sum(-1)
    return (torch.lgamma(n + 1) - torch.lgamma(x + 1).sum(-1) + torch.lgamma(a0) - torch.lgamma(a0 + n)
            + (torch.lgamma(a + x) - torch.lgamma(a)).sum(-1))


def test_dirichlet_guide_gaps_against_the_exact_posterior():
    """With the exact posterior Dirichlet(α + x) as q*, ELBO[q*] equals the Dirichlet-multinomial log p(x)
    within 4 SE and IWAE with it is exact (every weight equal); the optimized q* is no better than exact and no
    worse than the encoder (4 SE); the Beta-marginal intervals of a Dirichlet cover its own draws at their level
    (4 binomial SE)."""
    from ppgen.evaluation import amortization as am

    pair, alpha = _conjugate_dirvae(), 0.8
    x = torch.tensor([[3.0, 1.0, 0.0], [0.0, 5.0, 2.0]])
    exact = _dirichlet_multinomial_log_pmf(x, alpha)
    posterior = am.DirichletQ(alpha + x)
    g = am.gaps(pair, x, q_star=posterior, elbo_samples=4000, iwae_k=500, seed=0)
    assert torch.all((g["elbo_qstar"] - exact).abs() < 4 * g["elbo_qstar_se"] + 1e-6), (g["elbo_qstar"], exact)
    assert torch.allclose(g["log_px_estimates"]["iwae_qstar"], exact, atol=1e-4)
    assert isinstance(g["encoder"], am.DirichletQ)
    opt = am.gaps(pair, x, steps=150, lr=0.05, elbo_samples=4000, iwae_k=500, seed=0)
    assert torch.all(opt["elbo_qstar"] <= exact + 4 * opt["elbo_qstar_se"])
    assert torch.all(opt["amortization_gap"] >= -4 * opt["amortization_gap_se"])
    draws = posterior.dist().sample((20_000,)).transpose(0, 1)  # (P, S, k)
    for level in (0.5, 0.9):
        cover = am.interval_coverage(*posterior.interval(level), draws)
        assert torch.all((cover - level).abs() < 4 * math.sqrt(level * (1 - level) / 20_000))
    torch.testing.assert_close(posterior.cov, am.gaussian_fit(draws)[1].float(), atol=4e-3, rtol=0)


@pytest.mark.slow  # NUTS compiles (~15 s on an idle 2-core machine, minutes under load)
def test_compare_runs_nuts_on_the_simplex_beside_the_dirichlet_guide():
    """NUTS over θ on the simplex (NumPyro's transforms) samples the exact posterior Dirichlet(α + x): its draws
    fall inside that posterior's 50% / 90% intervals at those rates (4 SE at NUTS's effective sample size), and
    ``compare`` reports the Dirichlet guide beside it."""
    from ppgen.evaluation import amortization as am

    pair, alpha = _conjugate_dirvae(), 0.8
    x = torch.tensor([[3.0, 1.0, 0.0], [0.0, 5.0, 2.0]])
    data = ppgen.data.Dataset("conjugate", x, x[:0], x)
    fit = ppgen.fit(pair, data, backend="nuts", points=2, split="test", chains=2, warmup=300, samples=500, seed=0)
    draws = am.nuts_draws(fit)
    assert draws.shape == (2, 1000, 3) and torch.allclose(draws.sum(-1), torch.ones(2, 1000, dtype=draws.dtype))
    exact = am.against_nuts(pair, x, draws, am.DirichletQ(alpha + x))
    result = am.compare(pair, fit, steps=50, elbo_samples=500, iwae_k=500)
    ess = min(r["ess_bulk_min"] for r in result["points"])
    for level in (0.5, 0.9):
        assert torch.all((exact[f"coverage{int(level * 100)}"] - level).abs() < 4 * math.sqrt(level * (1 - level) / ess))
    row = result["points"][0]
    assert {"kl", "w2", "coverage50", "coverage90", "khat", "amortization_gap"} <= set(row)
    assert row["divergences"] == 0


def test_ais_on_a_topic_model_is_per_document():
    """AIS on ProdLDA with K = 2 topics: θ = softmax(z) depends on d = z₁ − z₂ ~ N(0, 2σ₀²) only, so each document's
    log p(x) is a 1-D integral (quadrature on a fine grid). AIS gives one estimate per document, and each
    matches its own document's log p(x) — not a per-word or per-batch figure — within 4 SE plus 0.01 nats
    (AIS's downward bias at 200 steps)."""
    from ppgen.evaluation.ais import ais

    torch.manual_seed(0)
    pair = ProdLDA((6,), topics=2, hidden=(4,), dropout=0.0, batch_norm="off").eval()
    with torch.no_grad():
        pair.decoder.beta.weight.copy_(torch.tensor([[2.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 2.0],
                                                     [0.5, 0.5], [-2.0, -2.0]]))
    x = torch.tensor([[3.0, 1.0, 0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 4.0, 9.0, 2.0, 1.0], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    sd = math.sqrt(2) * pair.prior_scale()
    d = torch.linspace(-12 * sd, 12 * sd, 40_001, dtype=torch.float64)
    with torch.no_grad():
        z = torch.stack([d / 2, -d / 2], -1).float()  # any z with z₁ − z₂ = d gives the same θ
        log_p_w = torch.log_softmax(pair.decoder(z), -1).double()  # (grid, V)
    log_prior = torch.distributions.Normal(0.0, sd).log_prob(d)
    exact = []
    for doc in x.double():
        log_lik = T.log_multinomial_coefficient(doc[None])[0] + (log_p_w * doc).sum(-1)
        exact.append(torch.logsumexp(log_prior + log_lik, 0) + math.log(float(d[1] - d[0])))
    exact = torch.stack(exact)
    result = ais(pair, x, steps=200, chains=16, leapfrog=5, step_size=0.3, seed=0)
    assert result.log_px.shape == (3,)
    assert torch.all((result.log_px.double() - exact).abs() < 4 * result.se.double() + 0.01), (result.log_px, exact)
    assert float(exact[1] - exact[2]) < -5  # the documents differ: a per-batch figure could not match all three


# -- the background word frequencies (SAGE / Scholar) ------------------------------------------------------------
@pytest.mark.parametrize("decoder", ["poe", "mixture"])
@pytest.mark.parametrize("cls", [ProdLDA, DirVAE])
def test_background_with_zero_topic_weights_is_the_corpus_unigram(lda_corpus, cls, decoder):
    """β = 0: p(w | θ) = softmax(b) = (c_w + 1) / (Σ c + V), the unigram baseline's distribution, for every θ, in
    training (batch statistics) and evaluation mode; exact up to float32 rounding (relative 1e-5) and the
    mixture's 1e-10 added inside its log (absolute 2e-10). No dropout: in training it scales θ, which the mixture's weights then no longer sum to 1."""
    _, data = lda_corpus
    pair = cls((V,), topics=K, hidden=(16,), decoder=decoder, background="on", dropout=0.0)
    pair.initialize_from_data(text.SparseCounts(data.train.numpy()))  # sparse counts, as the loader gives them
    with torch.no_grad():
        pair.decoder.beta.weight.zero_()
    unigram = T.unigram_log_probs(data.train)
    theta = torch.distributions.Dirichlet(torch.ones(K)).sample((7,))
    for mode in (pair.train, pair.eval):
        mode()
        with torch.no_grad():
            got = pair.word_distribution(theta).double().numpy()
        assert np.allclose(got, np.exp(unigram), rtol=1e-5, atol=2e-10)


@pytest.mark.parametrize("engine", ["torch", "jax"])
def test_background_is_set_once_and_never_trained(lda_corpus, engine, tmp_path):
    """Both engines train a pair with the background (batch norm off, which lowers); the background they end with
    is the corpus's log frequencies exactly as set, β moved; the state dict carries it (a resumed run keeps it)."""
    _, data = lda_corpus
    pyro.clear_param_store()
    pair = ProdLDA((V,), topics=K, hidden=(16,), batch_norm="off", background="on")
    before = pair.decoder.beta.weight.detach().clone()
    fit = ppgen.fit(pair, data, engine=engine, epochs=1, batch_size=300, seed=0, progress=False, callback=None)
    assert fit.options["engine"] == engine
    want = torch.from_numpy(T.unigram_log_probs(data.train)).float()
    assert torch.equal(pair.decoder.background, want)
    assert not torch.equal(pair.decoder.beta.weight, before)
    copy = ProdLDA((V,), topics=K, hidden=(16,), batch_norm="off", background="on")
    copy.load_state_dict(pair.state_dict())
    assert torch.equal(copy.decoder.background, want)
    # without the option the decoder holds no background (old runs' state dicts load unchanged)
    assert "decoder.background" not in ProdLDA((V,), topics=K, hidden=(16,), background="off").state_dict()


@pytest.mark.parametrize("model", ["prodlda", "dirvae"])
def test_the_benchmark_trains_what_the_command_trains(model):
    """benchmarks/topics.py's neural rows (docs/topics.md's table) train the config ``ppgen train`` makes from the
    same flags: the command's defaults (epochs, batch, learning rate, background, kept epoch) reach both alike."""
    import importlib.util
    from pathlib import Path

    from ppgen.cli import _parse, build_parser
    from ppgen.commands.train import _new_config

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "topics.py"
    spec = importlib.util.spec_from_file_location("benchmark_topics", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["train", model, "--data", "speeches", "--topics", "50", "--seed", "3", "--out", "unused"]
    assert bench.neural_config(model, "speeches", 50, 3) == _new_config(_parse(build_parser(argv), argv))
