r"""Neural autoregressive distribution estimator, NADE (Larochelle & Murray, 2011).

No latent variables: for binary x ∈ {0, 1}^D in a fixed (raster) order,

    p(x) = Π_d p(x_d | x_{<d}),   p(x_d = 1 | x_{<d}) = σ(b_d + V_d · h_d),
    h_d = σ(c + W_{:, <d} x_{<d}),

with the input weights W shared across d, so all D conditionals cost O(DH) through the
running pre-activation a_d = a_{d−1} + W_{:, d−1} x_{d−1}. log p(x) is exact.

As a pair: the model observes x under ``NADEDistribution`` and the guide is empty, so the
SVI backend's ELBO *is* log p(x) and SVI is maximum likelihood — no separate trainer —
and ``iwae``/``elbo`` return the exact log-likelihood for any K. NADE runs on the Pyro
backend only (it has no latents for NUTS to sample).

Written by hand: neither Pyro, NumPyro nor torch ships NADE. The D conditionals are
computed in blocks of ~2√D pixels (a strictly-lower-triangular batched matrix product inside
a block, a running sum between blocks) to keep memory at O(N √D H) instead of O(N D H).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pyro.distributions import TorchDistribution, constraints
from torch import nn

from ppgen.declare import as_int, option, positive_int, validate, with_convert
from ppgen.errors import UserError
from ppgen.models.base import GenerativeModel, check_observations, x_shape_option
from ppgen.nn import Network
from ppgen.ppl import pyro


def _one_size(v: Any) -> Any:
    """The CLI's ``--hidden 500`` arrives as (500,): NADE has one hidden layer, so one size."""
    return v[0] if isinstance(v, tuple | list) and len(v) == 1 else as_int(v)


def _hidden_units(v: Any) -> str | None:
    return positive_int(v) and "must be a positive whole number (the number of hidden units)"


with_convert(_hidden_units, _one_size)


@dataclass(frozen=True)
class NADEConfig:
    x_shape: tuple[int, ...] = x_shape_option((1, 28, 28))
    hidden: int = option(500, _hidden_units, "hidden units H of the shared input weights")

    def __post_init__(self) -> None:
        validate(self)


class NADENet(Network):
    """Parameters W (H×D), c (H), V (D×H), b (D) and the conditional logits of every pixel."""

    def __init__(self, d: int, h: int):
        super().__init__()
        self.W = nn.Parameter(torch.randn(h, d) * 0.01)
        self.c = nn.Parameter(torch.zeros(h))
        self.V = nn.Parameter(torch.randn(d, h) * 0.01)
        self.b = nn.Parameter(torch.zeros(d))
        self.block = max(1, int(2 * math.sqrt(d)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """logit p(x_d = 1 | x_{<d}) for x of shape (N, D)."""
        n = x.shape[0]
        a = self.c.expand(n, -1)  # c + W x_{<start}, the running pre-activation
        strict = torch.tril(torch.ones(self.block, self.block, device=x.device), -1)
        out = []
        for start in range(0, x.shape[1], self.block):
            xb = x[:, start:start + self.block]
            wb = self.W[:, start:start + self.block].T  # (b, H)
            b = xb.shape[1]
            # pre[n, i] = a[n] + Σ_{j<i in block} x[n, j] W[:, j]: one batched matrix product
            pre = torch.baddbmm(a.unsqueeze(1).expand(-1, b, -1), xb.unsqueeze(1) * strict[:b, :b], wb.expand(n, -1, -1))
            out.append(torch.einsum("nih,ih->ni", torch.sigmoid(pre), self.V[start:start + self.block])
                       + self.b[start:start + self.block])
            a = a + xb @ wb
        return torch.cat(out, 1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for x of shape (N, D)."""
        logits = self(x)
        return -nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Ancestral draws, pixel by pixel: (n, D)."""
        d = self.b.shape[0]
        x = torch.zeros(n, d, device=self.b.device)
        a = self.c.expand(n, -1)
        for i in range(d):
            p = torch.sigmoid(self.b[i] + torch.sigmoid(a) @ self.V[i])
            x[:, i] = torch.bernoulli(p)
            a = a + x[:, i : i + 1] * self.W[:, i]
        return x


class NADEDistribution(TorchDistribution):
    """Pyro distribution over binary arrays shaped ``x_shape`` with NADE's exact log-probability."""

    arg_constraints: dict = {}
    support = constraints.boolean
    has_rsample = False

    def __init__(self, net: NADENet, x_shape: Sequence[int], batch_shape=()):
        self.net = net
        self.x_shape = tuple(x_shape)
        super().__init__(torch.Size(batch_shape), torch.Size(self.x_shape), validate_args=False)

    def expand(self, batch_shape, _instance=None) -> NADEDistribution:
        return NADEDistribution(self.net, self.x_shape, batch_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        lead = value.shape[: value.dim() - len(self.x_shape)]
        lp = self.net.log_prob(value.reshape(-1, math.prod(self.x_shape))).reshape(lead)
        return lp.expand(torch.broadcast_shapes(lead, self.batch_shape))

    def sample(self, sample_shape=()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        return self.net.sample(max(1, shape.numel())).reshape(shape + self.event_shape)


class NADE(GenerativeModel):
    """NADE as a pair: the model observes x under NADE, the guide is empty (maximum likelihood by SVI)."""

    name = "nade"
    Config = NADEConfig
    likelihood = "bernoulli"
    latent_sites: tuple[str, ...] = ()

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        self.net = NADENet(math.prod(self.config.x_shape), self.config.hidden)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("nade", self.net)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", NADEDistribution(self.net, self.x_shape), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """Empty: NADE has no latent variables, so the ELBO is log p(x)."""

    # -- helpers -----------------------------------------------------------------------
    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        check_observations(x, self.x_shape, "gaussian", what)  # shape and finiteness
        if not ((x == 0) | (x == 1)).all():
            raise UserError(f"{what} is not binary but NADE models binary vectors; binarize it "
                            "(binarize: dynamic, static or threshold)")

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) per example."""
        self.check_data(x)
        return self.net.log_prob(x.reshape(x.shape[0], -1))

    def generate(self, n: int) -> torch.Tensor:
        return self.net.sample(n).reshape((n, *self.x_shape))
