r"""ProdLDA: a VAE topic model with a logistic-normal prior and a product-of-experts decoder.

Srivastava & Sutton, "Autoencoding Variational Inference for Topic Models", ICLR 2017.

A document is its vector of word counts x ∈ ℕ^V with N = Σ_w x_w words; its topic proportions θ = softmax(z)
live on the (K−1)-simplex. Model and guide::

    z ~ N(μ₀, diag σ₀²)                                   (logistic normal ≈ Dirichlet(α), below)
    x | z ~ Multinomial(N, softmax(BN(βᵀ softmax(z))))     (product of experts: β ∈ ℝ^{K×V} unnormalized)
    q(z | x) = N(μ_φ(x), diag σ_φ²(x))                     (softplus MLP, dropout, batch-normalized heads)

The prior is the Laplace approximation (in the softmax basis) to a Dirichlet(α) on θ (MacKay 1998; the
paper's eq. 3), in closed form::

    μ₀_k  = log α_k − (1/K) Σ_i log α_i
    σ₀²_k = (1/α_k)(1 − 2/K) + (1/K²) Σ_i 1/α_i

(:func:`laplace_prior`); for the symmetric α used here μ₀ = 0 and σ₀² = (1/α)(1 − 1/K). The likelihood is
the multinomial over the document's counts (a document is one example; its words are not a plate). The
topics are β's rows; a topic's top words are its largest entries.

Batch normalization (affine-free, on both encoder heads and on the decoder's logits, as in the paper) keeps
the decoder from collapsing every topic onto the most frequent words; with it (``batch_norm="on"``, the default) the pair
trains on the torch engine only (the option is declared so: ``engine="jax"`` is refused naming it, ``"auto"``
picks torch saying why), since updating running statistics is a side effect a compiled JAX epoch cannot have. ``batch_norm="off"`` gives a pair that lowers and trains on both engines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyro.distributions as pyro_dist
import torch
from torch.distributions.utils import lazy_property

from ppgen.data.text import SparseCounts
from ppgen.declare import (
    auto_switch,
    fraction,
    on_off,
    one_of,
    option,
    positive_float,
    sizes,
    supported,
    validate,
    whole_at_least,
)
from ppgen.errors import UserError
from ppgen.models.base import GenerativeModel, x_shape_option
from ppgen.nn.topics import DECODERS, BowEncoder, TopicDecoder, log_frequencies
from ppgen.ppl import dist, get_backend
from ppgen.ppl import pyro as ppl_pyro


def laplace_prior(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ₀, σ₀²) of the logistic normal approximating Dirichlet(α) (Laplace approximation, softmax basis)."""
    alpha = torch.as_tensor(alpha, dtype=torch.float64)
    k = alpha.shape[-1]
    mu = alpha.log() - alpha.log().mean(-1, keepdim=True)
    var = (1.0 / alpha) * (1 - 2.0 / k) + (1.0 / alpha).sum(-1, keepdim=True) / k**2
    return mu, var


class WordCounts(pyro_dist.Multinomial):
    r"""torch's Multinomial over a batch of documents, its log-probability computed in fewer passes.

    log p(x) = log N! − Σ_w log x_w! + Σ_w x_w ℓ_w − N logsumexp(ℓ), ℓ the unnormalized logits (finite: a
    network's output). torch normalizes ℓ into a new (documents, V) tensor when the distribution is built,
    builds a Binomial beside it (a softmax, for ``entropy`` only), clones the logits to mask −∞, and evaluates
    log Γ(x_w + 1) at all V entries of every document; here Σ_w log x_w! runs over the entries with x_w ≥ 2
    only (log 0! = log 1! = 0: a bag of words is mostly zeros and ones), and the Categorical and Binomial are
    built only when sampling or moments ask for them. Same numbers (tested against torch's and scipy's
    multinomial), less time per ProdLDA step (benchmarks/topics.py --speed)."""

    def __init__(self, total_count: int, logits: torch.Tensor, validate_args: bool | None = None):
        self.total_count = total_count
        self._unnormalized = logits
        torch.distributions.Distribution.__init__(self, logits.shape[:-1], logits.shape[-1:],
                                                  validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> WordCounts:
        batch_shape = torch.Size(batch_shape)
        return WordCounts(self.total_count, self._unnormalized.expand(batch_shape + self.event_shape),
                          validate_args=False)

    @lazy_property
    def _categorical(self) -> torch.distributions.Categorical:
        return pyro_dist.Categorical(logits=self._unnormalized)

    @lazy_property
    def _binomial(self) -> torch.distributions.Binomial:
        return pyro_dist.Binomial(total_count=self.total_count, probs=self.probs)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        where = (value > 1).nonzero(as_tuple=True)
        log_factorials = value.new_zeros(value.shape[:-1]).index_put_(where[:-1], torch.lgamma(value[where] + 1),
                                                                      accumulate=True)
        n = value.sum(-1)
        logits = self._unnormalized
        return torch.lgamma(n + 1) - log_factorials + (logits * value).sum(-1) - n * logits.logsumexp(-1)


def word_counts(x, logits):
    """The multinomial over a document's counts, N = Σ_w x_w per document.

    torch's Multinomial takes one integer ``total_count`` but scores any count vector summing to at most it
    (the log-probability uses the value's own sum), so Pyro gets the batch's largest N (:class:`WordCounts`);
    NumPyro's takes N per document."""
    if get_backend() == "pyro":
        return WordCounts(int(x.sum(-1).max()), logits=logits)
    return dist.Multinomial(total_count=x.sum(-1), logits=logits)


def check_counts(x, vocab: int, what: str) -> None:
    """UserError unless ``x`` (a tensor, or sparse :class:`~ppgen.data.text.SparseCounts`) holds documents of
    non-negative whole word counts over ``vocab`` words."""
    if isinstance(x, SparseCounts):  # check the stored counts; a zero is a count
        values, per_document = torch.from_numpy(x.csr.data), x.sum(-1)
    else:
        values, per_document = x, (x.sum(-1) if x.ndim == 2 else None)
    if x.ndim != 2 or x.shape[1] != vocab:
        raise UserError(f"{what} has shape {tuple(x.shape[1:])} per document but the model expects ({vocab},) "
                        "word counts; vectorize it with the model's vocabulary")
    if x.shape[0] == 0:
        raise UserError(f"{what} is empty; give at least one document")
    if not torch.isfinite(values).all() or (values < 0).any() or (values != values.round()).any():
        raise UserError(f"{what} is not word counts (non-negative whole numbers); give a bag of words")
    if (per_document == 0).any():
        raise UserError(f"{what} holds {int((per_document == 0).sum())} empty document(s); drop them")


TOPICS_HELP = "number of topics K"
ALPHA_HELP = "symmetric Dirichlet prior concentration alpha"
DROPOUT_HELP = "dropout rate in encoder and decoder"
BATCH_NORM_HELP = "batch-normalize encoder heads and decoder logits as the papers do (on: torch engine only)"
DECODER_HELP = "decoder: product of experts (ProdLDA) or LDA's mixture of multinomials"
BACKGROUND_HELP = ("topics as deviations from a fixed background: the training corpus's log word frequencies added "
                   "to the decoder's word scores (SAGE; Scholar)")
#: ProdLDA's default: on (5 seeds, news: NPMI 0.243 / 0.257 at K = 20 / 50 against 0.235 / 0.248 without, at higher
#: diversity and a per-word bound of 915-919 against 1,100-1,115; speeches: level); the Dirichlet-VAE's: off (it
#: lost 0.03 on news and 0.2 on speeches with it). docs/topics.md has the table.
PRODLDA_BACKGROUND_HELP = BACKGROUND_HELP + ("; on by default with the product-of-experts decoder, off with the "
                                             "mixture (off for runs written before it was a default)")


@dataclass(frozen=True)
class ProdLDAConfig:
    x_shape: tuple[int, ...] = x_shape_option((2000,))
    topics: int = option(20, whole_at_least(2, "topics"), TOPICS_HELP)
    hidden: tuple[int, ...] = option((100, 100), sizes, "encoder hidden layer sizes")
    alpha: float = option(1.0, positive_float, ALPHA_HELP)
    dropout: float = option(0.2, fraction, DROPOUT_HELP)
    batch_norm: str = supported(option("on", on_off, BATCH_NORM_HELP), engines=("torch",),
                                feature="batch normalization",
                                why="its running statistics change as a side effect of each training step, which "
                                    "a compiled JAX epoch cannot have (batch_norm='off' trains on both)",
                                active=lambda value: value == "on")
    decoder: str = option("poe", one_of(DECODERS, "decoder"), DECODER_HELP)
    background: str | None = option(None, auto_switch, PRODLDA_BACKGROUND_HELP, absent="off")

    def __post_init__(self) -> None:
        validate(self)
        if self.background is None:  # measured with the product of experts; the mixture lowers to JAX without it
            object.__setattr__(self, "background", "on" if self.decoder == "poe" else "off")


class ProdLDA(GenerativeModel):
    """ProdLDA (see the module docs)."""

    name = "prodlda"
    Config = ProdLDAConfig
    likelihood = "multinomial"
    observes_word_counts = True

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        c = self.config
        batch_norm = c.batch_norm == "on"
        vocab = math.prod(c.x_shape)
        self.encoder = BowEncoder(vocab, c.topics, c.hidden, c.dropout, batch_norm, kind=self._encoder_kind)
        self.decoder = TopicDecoder(c.topics, vocab, c.decoder, c.dropout, batch_norm,
                                    softmax_input=self._encoder_kind == "normal", background=c.background == "on")

    _encoder_kind = "normal"
    #: ``--select best`` keeps the epoch of the most coherent topics on the validation documents: a validation
    #: ELBO peaks within the first epochs, long before the topics are trained (docs/topics.md)
    select_by = "val_npmi"
    select_by_words = "validation NPMI (top-10 words on the validation documents)"
    #: by default the last epoch: as coherent on the training corpus as the best validation NPMI's, and never a
    #: noisy early pick; 100 epochs (30 leave NPMI at about half its value on the news corpus) of batches of 64
    #: documents (more steps: on a corpus of 800 documents batch 256 makes 3 steps an epoch and untrained topics;
    #: docs/topics.md)
    default_select = "last"
    train_defaults = {"epochs": 100, "batch_size": 64}

    @property
    def topics(self) -> int:
        return self.config.topics

    def prior_scale(self) -> float:
        """σ₀ of the symmetric logistic-normal prior: sqrt((1/α)(1 − 1/K))."""
        k, a = self.config.topics, self.config.alpha
        return math.sqrt((1.0 / a) * (1 - 1.0 / k))

    def _prior(self):
        return dist.Normal(0.0, self.prior_scale()).expand([self.config.topics]).to_event(1)

    def model(self, x) -> None:
        ppl_pyro.module("decoder", self.decoder)
        with ppl_pyro.plate("data", x.shape[0]):
            z = ppl_pyro.sample("z", self._prior())
            ppl_pyro.sample("x", word_counts(x, self.decoder(z)), obs=x)

    def guide(self, x) -> None:
        ppl_pyro.module("encoder", self.encoder)
        with ppl_pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            ppl_pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def initialize_from_data(self, train: Any) -> None:
        """With ``background="on"``: the decoder's background b = the training corpus's add-one smoothed log word
        frequencies (:func:`~ppgen.nn.topics.log_frequencies`), fixed from here on."""
        if self.decoder.background is not None:
            csr = getattr(train, "csr", None)
            totals = (torch.as_tensor(csr.sum(axis=0), dtype=torch.float64).reshape(-1) if csr is not None
                      else torch.as_tensor(train, dtype=torch.float64).sum(0))
            self.decoder.background.copy_(log_frequencies(totals))

    # -- what a caller may ask ------------------------------------------------------------------------------
    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        check_counts(x, math.prod(self.x_shape), what)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z | x) (z the logits of θ)."""
        return self.encoder(x)

    def proportions(self, x: torch.Tensor) -> torch.Tensor:
        """θ at the mean of q(z | x): softmax(μ_φ(x))."""
        return torch.softmax(self.encode(x)[0], -1)

    def sample_proportions(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """(n, documents, K) draws of θ = softmax(z), z ~ q(z | x)."""
        loc, scale = self.encode(x)
        return torch.softmax(loc + scale * torch.randn((n, *loc.shape), device=loc.device), -1)

    def word_distribution(self, theta: torch.Tensor) -> torch.Tensor:
        """p(w | θ) for topic proportions ``theta`` (…, K)."""
        dec = self.decoder
        logits = dec(torch.log(theta.clamp_min(1e-30))) if dec.softmax_input else dec(theta)
        return torch.softmax(logits, -1)

    def topic_words(self) -> torch.Tensor:
        """(K, V) word scores of each topic."""
        return self.decoder.topic_words()

    def generate(self, n: int) -> torch.Tensor:
        """n draws of p(w | θ) (word distributions, rows sum to 1) at θ from the prior."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.topics, device=device) * self.prior_scale()
        return torch.softmax(self.decoder(z), -1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Expected counts N · p(w | θ) at the mean of q."""
        return x.sum(-1, keepdim=True) * self.word_distribution(self.proportions(x))
