r"""Networks of the neural topic models (ProdLDA, the Dirichlet-VAE): a bag-of-words encoder, a topic decoder.

``BowEncoder`` maps a document's word counts x ∈ ℕ^V (any leading batch dimensions) through softplus layers and
dropout to two heads (ProdLDA: the mean and log-variance of a logistic normal) or one (the Dirichlet-VAE:
concentrations), each optionally batch-normalized without affine parameters, as in Srivastava & Sutton (2017).

``TopicDecoder`` maps topic proportions θ on the simplex (or their logits) to the logits of the document's word
distribution, with the two decoders Burkhardt & Kramer (2019) compare:

* ``"poe"`` — product of experts (ProdLDA): p(w | θ) = softmax(BN(βᵀθ))_w, β ∈ ℝ^{K×V} unnormalized;
* ``"mixture"`` — the LDA mixture of multinomials: p(w | θ) = Σ_k θ_k softmax(β_k)_w.

With ``background=True`` a fixed vector b ∈ ℝ^V joins every topic's word scores (SAGE, Eisenstein et al. 2011;
Scholar, Card, Tan & Smith 2018): p(w | θ) = softmax(b + BN(βᵀθ))_w, resp. Σ_k θ_k softmax(b + β_k)_w, so that
a topic is a deviation β_k from the background distribution softmax(b). The family sets b to the training
corpus's log word frequencies (:func:`log_frequencies`) before training; with β = 0 the decoder then gives the
corpus unigram distribution exactly. b is a buffer: never trained, kept in the state dict and the checkpoints.

Batch normalization in training mode uses the batch's statistics and updates its running statistics in place:
a side effect a compiled JAX epoch cannot have, so a pair built with ``batch_norm=True`` trains on the torch
engine only and its networks do not lower (BatchNorm has no JAX rule); without it both engines train it.
Dropout lowers to the identity (JAX runs the networks for inference), so the JAX engine trains without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ppgen.nn.networks import Network

DECODERS = ("poe", "mixture")


def _batch_norm(bn: nn.BatchNorm1d, h: torch.Tensor) -> torch.Tensor:
    """Batch norm over every leading dimension (particles and documents alike)."""
    return bn(h.reshape(-1, h.shape[-1])).reshape(h.shape)


class BowEncoder(Network):
    """Word counts (…, V) -> ``heads`` outputs (…, K): softplus MLP, dropout, linear heads, optional batch norm.

    ``kind="normal"`` returns (μ, σ) with σ = exp(½·logvar); ``kind="dirichlet"`` returns the concentrations
    softplus(a) clamped to [1e-3, 1e3] (a Gamma draw below 1e-3 underflows in float32).
    """

    def __init__(self, vocab: int, topics: int, hidden: Sequence[int] = (100, 100), dropout: float = 0.2,
                 batch_norm: bool = False, kind: str = "normal"):
        super().__init__()
        sizes = [vocab, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.drop = nn.Dropout(dropout)
        self.kind = kind
        self.head_a = nn.Linear(sizes[-1], topics)
        self.head_b = nn.Linear(sizes[-1], topics) if kind == "normal" else None
        self.bn_a = nn.BatchNorm1d(topics, affine=False) if batch_norm else None
        self.bn_b = nn.BatchNorm1d(topics, affine=False) if batch_norm and kind == "normal" else None

    def forward(self, x: torch.Tensor) -> Any:
        h = x
        for layer in self.layers:
            h = F.softplus(layer(h))
        h = self.drop(h)
        a = self.head_a(h)
        if self.bn_a is not None:
            a = _batch_norm(self.bn_a, a)
        if self.head_b is None:
            return torch.clamp(F.softplus(a), 1e-3, 1e3)
        b = self.head_b(h)
        if self.bn_b is not None:
            b = _batch_norm(self.bn_b, b)
        return a, torch.exp(0.5 * b)


class TopicDecoder(Network):
    """Topic proportions (…, K) -> word logits (…, V); ``softmax_input`` first maps logits z to θ = softmax(z)."""

    def __init__(self, topics: int, vocab: int, decoder: str = "poe", dropout: float = 0.2,
                 batch_norm: bool = False, softmax_input: bool = False, background: bool = False):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
        self.decoder = decoder
        self.softmax_input = softmax_input
        self.drop = nn.Dropout(dropout)
        self.beta = nn.Linear(topics, vocab, bias=False)  # weight (V, K): column k is topic k's word scores
        self.bn = nn.BatchNorm1d(vocab, affine=False) if batch_norm and decoder == "poe" else None
        if background:  # log word frequencies b (V,), set from the training corpus by the family
            self.register_buffer("background", torch.zeros(vocab))
        else:
            self.background = None

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        if self.softmax_input:
            theta = F.softmax(theta, -1)
        theta = self.drop(theta)
        if self.decoder == "mixture":
            scores = self.beta.weight if self.background is None else self.beta.weight + self.background[:, None]
            words = F.softmax(scores, 0)  # (V, K): topic k's word distribution in column k
            return torch.log(torch.matmul(theta, torch.transpose(words, 0, 1)) + 1e-10)
        logits = self.beta(theta)
        if self.bn is not None:
            logits = _batch_norm(self.bn, logits)
        return logits if self.background is None else logits + self.background

    def topic_words(self) -> torch.Tensor:
        """(K, V): each topic's word scores — β's rows for the product of experts, log softmax(β_k) for the mixture
        (log p(w | k) without a background; with one, the deviations from it, as SAGE and Scholar rank topics)."""
        w = self.beta.weight.detach().t()
        return F.log_softmax(w, -1) if self.decoder == "mixture" else w


def log_frequencies(word_totals: torch.Tensor) -> torch.Tensor:
    """log p(w) = log((c_w + 1) / (Σ_v c_v + V)): the add-one smoothed log frequencies of words whose corpus counts
    are ``word_totals`` (V,) — the background b of :class:`TopicDecoder` (and the unigram baseline's p(w))."""
    totals = torch.as_tensor(word_totals, dtype=torch.float64)
    return torch.log((totals + 1.0) / (totals.sum() + totals.numel())).float()


def full(n: int, value: float, like: Any) -> Any:
    """A length-``n`` vector of ``value`` as a tensor (torch) or array (JAX) matching ``like``."""
    from ppgen.ppl import is_jax

    if is_jax(like):
        import jax.numpy as jnp

        return jnp.full((n,), value, dtype=like.dtype)
    return torch.full((n,), float(value), dtype=like.dtype, device=like.device)
