r"""VQ-VAE: discrete codes on a grid, a point-mass guide and an autoregressive prior (van den Oord et al., 2017).

Networks. A convolutional encoder maps an image x (C, H, W) to a grid of continuous vectors
z_e(x) ∈ R^{D × h × w}, h = H / 2^d, w = W / 2^d (d = ``downsample`` stride-2 convolutions). Each
grid vector is quantized to the nearest of K codebook vectors e_1..e_K,

    k_ij(x) = argmin_k ‖z_e(x)_ij − e_k‖²,      z_q(x)_ij = e_{k_ij(x)},

and a convolutional decoder gives p(x | z_q) with the VAE family's likelihoods (Bernoulli,
continuous Bernoulli, Gaussian: :func:`ppgen.models.base.observation_dist`).

The pair. The latent site ``"z"`` is the grid of code indices k ∈ {1..K}^{h×w}.

* **guide** q(k | x) = δ_{k(x)}: a point mass at the chosen codes (deterministic and amortized);
* **model** p(k) p(x | e_k): stage one, a uniform prior, log p(k) = −hw log K (the "KL" of the
  paper is that constant); stage two, an autoregressive prior over the grid in raster order,
  p(k) = Π_ij p(k_ij | k_<ij), a small PixelCNN with masked convolutions (van den Oord et al., 2016)
  fitted by maximum likelihood on the codes of the training set (the stage ``prior``: ``ppgen prior RUN``,
  or :func:`ppgen.inference.stages.fit_stage` with ``name='prior'``).

The bound. For any q over the discrete grids, log p(x) ≥ E_q[log p(x, k) − log q(k | x)]. With
q a point mass (probability one at k(x), entropy zero) it is

    log p(x) = log Σ_k p(x | e_k) p(k) ≥ log p(x | z_q(x)) + log p(k(x)),

one term of the sum: the ELBO of this pair (what ``ppgen.evaluation.elbo`` computes from the traces:
the guide's log-density is log 1 = 0), and IWAE_K equals it for every K (all particles coincide).

Training (stage one) goes through the protocol's ``objective(x)``: per example, exactly (no Monte Carlo)

    −log p(x | z_q) − log p(k(x)) + β ‖z_e − sg(z_q)‖² [+ ‖sg(z_e) − z_q‖² with ``codebook="loss"``],

i.e. the negative bound above plus the commitment loss (weight β = ``commitment``) and, for a
loss-learned codebook, the codebook loss; sums run over the grid and the D coordinates. The
decoder sees the straight-through estimate z_e + sg(z_q − z_e): its value is z_q, its gradient
with respect to z_e is the identity's. The history's ``elbo`` is minus this (a lower bound on the
bound: the penalties are ≥ 0). Once the prior is fitted, training stage one again also trains the
prior on its term −log p(k) (maximum likelihood on the current codes).

Codebook. ``codebook="ema"`` (the paper's appendix; Razavi et al., 2019): with one-hot assignments of
a batch, n_k = #{vectors assigned to k}, s_k = Σ of those vectors, and decay γ,

    N_k ← γ N_k + (1 − γ) n_k,   S_k ← γ S_k + (1 − γ) s_k,   e_k ← S_k / N_k  (codes with N_k > 0).

From N = S = 0, after t steps the bias-corrected averages N_k / (1 − γ^t), S_k / (1 − γ^t) are
weighted means of the n_k, s_k, and the ratio e_k needs no correction; on one fixed assignment it is
the k-means centroid s_k / n_k (tested). ``restart_below`` > 0 restarts dead codes as Jukebox does
(Dhariwal et al., 2020): a code whose bias-corrected average count per batch N_k / (1 − γ^t) is
below it is moved to a random encoder output of the batch, and its averages restart as those of a code
used at exactly that rate there (so it stays while it is used at least that often; Jukebox instead
re-draws it every step until its stale count recovers). N, S,
the codebook and the step count are registered buffers, so checkpoints save and resume them; the
update is a side effect of the training step, so the family trains on the torch engine only
(``svi_engines``). ``codebook="loss"`` learns the codebook by gradient on the codebook loss (N is
still kept, for usage and restarts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pyro.distributions import TorchDistribution, constraints
from torch import nn
from torch.nn import functional as F

from ppgen.declare import (
    OptionError,
    fraction,
    nonnegative_float,
    nonnegative_int,
    one_of,
    option,
    positive_int,
    validate,
    whole_at_least,
)
from ppgen.models.base import (
    GenerativeModel,
    Stage,
    likelihood_option,
    observation_dist,
    observation_mean,
    x_shape_option,
)
from ppgen.nn import parallel
from ppgen.ppl import dist, pyro
from ppgen.progress import progress

CODEBOOKS = ("ema", "loss")


@dataclass(frozen=True)
class VQVAEConfig:
    x_shape: tuple[int, ...] = x_shape_option((1, 28, 28))
    codes: int = option(64, whole_at_least(2, "codes"), "K, the number of codebook vectors")
    code_dim: int = option(16, positive_int, "D, the size of each codebook vector")
    downsample: int = option(2, nonnegative_int, "stride-2 convolutions of the encoder: the code grid is "
                             "H/2^d x W/2^d")
    channels: int = option(64, positive_int, "channels of the encoder's and decoder's convolutions")
    likelihood: str = likelihood_option()
    commitment: float = option(0.25, nonnegative_float, "beta, the weight of the commitment loss")
    codebook: str = option("ema", one_of(CODEBOOKS, "codebook update"), "how the codebook learns: exponential "
                           "moving averages or its loss")
    decay: float = option(0.99, fraction, "decay of the codebook's moving averages")
    restart_below: float = option(1.0, nonnegative_float, "restart a code whose average count per batch falls below "
                                  "this (0: never)")
    prior_channels: int = option(64, positive_int, "channels of the PixelCNN prior over the codes")
    prior_layers: int = option(4, nonnegative_int, "masked 3x3 layers of the PixelCNN prior")

    def __post_init__(self) -> None:
        validate(self)
        if len(self.x_shape) != 3:
            raise OptionError("x_shape", self.x_shape, "vqvae needs images shaped (C, H, W)")
        _, h, w = self.x_shape
        if h % 2 ** self.downsample or w % 2 ** self.downsample:
            fits = [d for d in range(0, 8) if h % 2 ** d == 0 and w % 2 ** d == 0]
            raise OptionError("downsample", self.downsample, f"a code grid of {h}/2^{self.downsample} x "
                              f"{w}/2^{self.downsample} does not fit a {h}x{w} image; choose one of {fits}")


# -- networks ----------------------------------------------------------------------------------------
class ResBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))), the paper's residual block."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class VQEncoder(nn.Module):
    """x (…, C, H, W) -> z_e (…, D, H/2^d, W/2^d)."""

    def __init__(self, x_shape: Sequence[int], channels: int, code_dim: int, downsample: int):
        super().__init__()
        self.x_shape = tuple(x_shape)
        layers: list[nn.Module] = [nn.Conv2d(x_shape[0], channels, 3, 1, 1), nn.ReLU()]
        for _ in range(downsample):
            layers += [nn.Conv2d(channels, channels, 4, 2, 1), nn.ReLU()]
        layers += [ResBlock(channels), nn.ReLU(), nn.Conv2d(channels, code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        out = self.net(x.reshape((-1, *self.x_shape)))
        return out.reshape(lead + out.shape[1:])


class VQDecoder(nn.Module):
    """z_q (…, D, h, w) -> the likelihood's parameters shaped like x (logits; or (loc, scale) for a Gaussian)."""

    def __init__(self, x_shape: Sequence[int], channels: int, code_dim: int, downsample: int, n_params: int):
        super().__init__()
        self.x_shape, self.code_dim = tuple(x_shape), code_dim
        layers: list[nn.Module] = [nn.Conv2d(code_dim, channels, 3, 1, 1), ResBlock(channels), nn.ReLU()]
        for _ in range(downsample):
            layers += [nn.ConvTranspose2d(channels, channels, 4, 2, 1), nn.ReLU()]
        layers += [nn.Conv2d(channels, x_shape[0], 3, 1, 1)]
        self.net = nn.Sequential(*layers)
        self.log_scale = nn.Parameter(torch.zeros(self.x_shape)) if n_params == 2 else None

    def forward(self, z: torch.Tensor) -> Any:
        lead = z.shape[:-3]
        out = self.net(z.reshape((-1, *z.shape[-3:]))).reshape(lead + self.x_shape)
        if self.log_scale is None:
            return out
        return out, torch.exp(self.log_scale) + 0 * out


class MaskedConv2d(nn.Conv2d):
    """A convolution that sees only earlier positions in raster order: mask "A" excludes the centre
    (the first layer), mask "B" includes it (later layers, whose centre holds only earlier inputs)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, mask_type: str):
        super().__init__(c_in, c_out, kernel, padding=kernel // 2)
        mask = torch.ones_like(self.weight)
        c = kernel // 2
        mask[:, :, c, c + (mask_type == "B"):] = 0
        mask[:, :, c + 1:, :] = 0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNNPrior(nn.Module):
    """p(k) = Π_ij softmax(logits_ij(k_<ij))[k_ij] over a grid of codes in raster order (van den Oord et al., 2016).

    Embedding of the codes, one 5x5 mask-A convolution, ``layers`` residual 3x3 mask-B convolutions,
    a 1x1 convolution to K logits per position.
    """

    def __init__(self, codes: int, channels: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(codes, channels)
        self.first = MaskedConv2d(channels, channels, 5, "A")
        self.hidden = nn.ModuleList(MaskedConv2d(channels, channels, 3, "B") for _ in range(layers))
        self.out = nn.Conv2d(channels, codes, 1)

    def logits(self, k: torch.Tensor) -> torch.Tensor:
        """(N, h, w) codes -> (N, K, h, w) logits of every position given the earlier ones."""
        h = F.relu(self.first(self.embed(k).permute(0, 3, 1, 2)))
        for layer in self.hidden:
            h = h + F.relu(layer(h))
        return self.out(h)

    def log_prob(self, k: torch.Tensor) -> torch.Tensor:
        """log p(k) per grid: (N, h, w) -> (N,)."""
        logp = F.log_softmax(self.logits(k), 1)
        return logp.gather(1, k.unsqueeze(1)).squeeze(1).sum((1, 2))

    @torch.no_grad()
    def sample(self, n: int, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Ancestral draws, position by position in raster order: (n, h, w)."""
        k = torch.zeros((n, *grid), dtype=torch.long, device=device)
        report = progress(grid[0] * grid[1], f"PixelCNN prior: {n} code grid(s), position by position")
        for i in range(grid[0]):
            for j in range(grid[1]):
                probs = F.softmax(self.logits(k)[:, :, i, j], -1)
                k[:, i, j] = torch.multinomial(probs, 1).squeeze(-1)
                report.update(1)
        report.close()
        return k


class CodeGridPrior(TorchDistribution):
    """The prior over a grid of codes: uniform (``net=None``) or the PixelCNN; event shape (h, w)."""

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, net: PixelCNNPrior | None, codes: int, grid: tuple[int, int], batch_shape=()):
        self.net, self.codes, self.grid = net, codes, tuple(grid)
        super().__init__(torch.Size(batch_shape), torch.Size(self.grid), validate_args=False)

    @property
    def support(self):
        return constraints.integer_interval(0, self.codes - 1)

    def expand(self, batch_shape, _instance=None) -> CodeGridPrior:
        return CodeGridPrior(self.net, self.codes, self.grid, batch_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        lead = value.shape[:-2]
        if self.net is None:
            lp = torch.full(lead, -math.prod(self.grid) * math.log(self.codes), device=value.device)
        else:
            lp = self.net.log_prob(value.reshape(-1, *self.grid).long()).reshape(lead)
        return lp.expand(torch.broadcast_shapes(lead, self.batch_shape))

    def sample(self, sample_shape=()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        n = max(1, shape.numel())
        device = None if self.net is None else self.net.out.weight.device
        if self.net is None:
            k = torch.randint(self.codes, (n, *self.grid), device=device)
        else:
            k = self.net.sample(n, self.grid, device)
        return k.reshape(shape + self.event_shape)


# -- the codebook --------------------------------------------------------------------------------------
class Codebook(nn.Module):
    """K vectors of size D, nearest-neighbour quantization and the EMA / restart updates (see the module docs).

    Buffers: ``count`` N (K,), ``total`` S (K, D) and ``steps`` t; the codebook ``embed`` (K, D) is a
    parameter (learned by its loss, or ``requires_grad=False`` and set from N and S under EMA).
    """

    def __init__(self, codes: int, code_dim: int, ema: bool, decay: float, restart_below: float):
        super().__init__()
        self.ema, self.decay, self.restart_below = ema, decay, restart_below
        self.embed = nn.Parameter(torch.empty(codes, code_dim).uniform_(-1 / codes, 1 / codes), requires_grad=not ema)
        self.register_buffer("count", torch.zeros(codes))
        self.register_buffer("total", torch.zeros(codes, code_dim))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector of every row of ``z`` (N, D) -> (N,)."""
        with torch.no_grad():
            e = self.embed
            d = (z * z).sum(1, keepdim=True) - 2 * z @ e.T + (e * e).sum(1)
            return d.argmin(1)

    @torch.no_grad()
    def update(self, z: torch.Tensor, k: torch.Tensor) -> None:
        """One training step's codebook update from the batch's vectors ``z`` (N, D) and their codes ``k`` (N,)."""
        one_hot = F.one_hot(k, self.embed.shape[0]).to(z.dtype)
        counts, sums = one_hot.sum(0), one_hot.T @ z
        parallel.all_sum_(counts, sums)  # data-parallel: the whole batch's statistics (no-op in one process)
        g = self.decay
        self.count.mul_(g).add_(counts, alpha=1 - g)
        self.steps += 1
        if self.ema:
            self.total.mul_(g).add_(sums, alpha=1 - g)
            live = self.count > 1e-30
            self.embed.data[live] = self.total[live] / self.count[live, None]
        if self.restart_below > 0:
            self.restart(z)

    def corrected_count(self) -> torch.Tensor:
        """N_k / (1 − γ^t): the bias-corrected average count per batch of every code."""
        t = int(self.steps)
        return self.count / (1 - self.decay ** t) if t > 0 and self.decay > 0 else self.count.clone()

    @torch.no_grad()
    def restart(self, z: torch.Tensor) -> int:
        """Move every code used less than ``restart_below`` times per batch (bias-corrected) to a random row of
        ``z``, its averages reset to a code used exactly at that rate there (N_k = threshold · (1 − γ^t),
        S_k = N_k e_k): it stays while it is used at least that often. Returns how many moved."""
        dead = (self.corrected_count() < self.restart_below).nonzero().squeeze(-1)
        if len(dead):
            z = parallel.gather_rows(z)  # data-parallel: the draw one process makes from the whole batch, the same
            with parallel.whole_batch_draws():  # on every rank (rank 0's is taken, should they differ)
                rows = torch.randint(len(z), (len(dead),), device=z.device)
            parallel.broadcast_(rows)
            self.embed.data[dead] = z[rows]
            t = int(self.steps)
            self.count[dead] = self.restart_below * ((1 - self.decay ** t) if t > 0 and self.decay > 0 else 1.0)
            self.total[dead] = self.count[dead, None] * self.embed.data[dead]
        return len(dead)


# -- the pair ----------------------------------------------------------------------------------------------
class VQVAE(GenerativeModel):
    """The VQ-VAE pair: guide = point mass at the codes, model = prior over the code grid and decoder."""

    name = "vqvae"
    Config = VQVAEConfig
    svi_engines = ("torch",)  # the EMA codebook update is a side effect of the training step
    nuts_refusal = ("its latents are discrete codes (a grid of codebook indices), and NUTS samples continuous "
                    "latents by the gradient of log p(x, z); `ppgen evaluate` gives its ELBO and codebook usage")
    point_mass_guide = True  # q(k | x) = δ_{k(x)}: IWAE_K = ELBO for every K, one draw is exact

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        c = self.config
        self.grid = grid_of(c.x_shape, c.downsample)
        self.encoder = VQEncoder(c.x_shape, c.channels, c.code_dim, c.downsample)
        self.decoder = VQDecoder(c.x_shape, c.channels, c.code_dim, c.downsample,
                                 2 if c.likelihood == "gaussian" else 1)
        self.quantizer = Codebook(c.codes, c.code_dim, c.codebook == "ema", c.decay, c.restart_below)
        self.prior_net = PixelCNNPrior(c.codes, c.prior_channels, c.prior_layers)
        self.register_buffer("prior_fitted", torch.zeros((), dtype=torch.bool))

    # -- pieces ------------------------------------------------------------------------------------------
    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_e (…, D, h, w), codes k (…, h, w), z_q (…, D, h, w)) of images x (…, C, H, W)."""
        z_e = self.encoder(x)
        flat = z_e.movedim(-3, -1)
        k = self.quantizer.nearest(flat.reshape(-1, flat.shape[-1]).detach()).reshape(flat.shape[:-1])
        return z_e, k, self.embed_codes(k)

    def embed_codes(self, k: torch.Tensor) -> torch.Tensor:
        """Codes (…, h, w) -> z_q = e_k (…, D, h, w)."""
        return F.embedding(k.long(), self.quantizer.embed).movedim(-1, -3)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """k(x): the guide's point mass, (…, h, w) integer codes."""
        with torch.no_grad():
            return self.quantize(x)[1]

    def code_prior(self) -> CodeGridPrior:
        """p(k): the PixelCNN once the stage ``prior`` has run, else uniform."""
        return CodeGridPrior(self.prior_net if bool(self.prior_fitted) else None, self.config.codes, self.grid)

    def observation(self, z_q: torch.Tensor):
        return observation_dist(self.likelihood, self.decoder(z_q), len(self.x_shape))

    # -- the pair -------------------------------------------------------------------------------------------
    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            k = pyro.sample("z", self.code_prior())
            pyro.sample("x", self.observation(self.embed_codes(k)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(self.codes(x), event_dim=2))

    def objective(self, x: torch.Tensor) -> torch.Tensor:
        """Per example: −log p(x | z_q) − log p(k) + β‖z_e − sg(z_q)‖² (+ ‖sg(z_e) − z_q‖² for a loss-learned
        codebook), exact (no sampling): the negative bound plus the VQ penalties (module docs). In training
        mode with gradients on, it then updates the codebook (EMA, counts, restarts): a side effect."""
        z_e, k, z_q = self.quantize(x)
        z_st = z_e + (z_q - z_e).detach()  # straight-through: value z_q, gradient of the identity on z_e
        dims = tuple(range(-3, 0))
        loss = -self.observation(z_st).log_prob(x) - self.code_prior().log_prob(k)
        loss = loss + self.config.commitment * ((z_e - z_q.detach()) ** 2).sum(dims)
        if self.config.codebook == "loss":
            loss = loss + ((z_e.detach() - z_q) ** 2).sum(dims)
        if self.training and torch.is_grad_enabled():
            flat = z_e.detach().movedim(-3, -1)
            self.quantizer.update(flat.reshape(-1, flat.shape[-1]), k.reshape(-1))
        return loss

    # -- helpers ------------------------------------------------------------------------------------------------
    def decode(self, k: torch.Tensor) -> torch.Tensor:
        """E[x | z_q = e_k] for codes (…, h, w)."""
        return observation_mean(self.likelihood, self.decoder(self.embed_codes(k)))

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """Codes from the prior (uniform, or the fitted PixelCNN) -> E[x | z_q] (no gradient: the codes are discrete)."""
        return self.decode(self.code_prior().sample((n,)).to(self.quantizer.embed.device))

    def log_bound_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(x | z_q(x)), log p(k(x))) per example: the two terms of the bound."""
        with torch.no_grad():
            k = self.codes(x)
            return self.observation(self.embed_codes(k)).log_prob(x), self.code_prior().log_prob(k)

    def codebook_stats(self, x: torch.Tensor) -> dict[str, float]:
        """On ``x``: the share of the K codes used, the perplexity exp(H) of the codes' empirical distribution
        (K when all are used equally, 1 when one code takes everything), −log p(x | z_q) and the squared error
        of E[x | z_q] per example."""
        with torch.no_grad():
            k = self.codes(x)
            p = torch.bincount(k.reshape(-1), minlength=self.config.codes).double() / k.numel()
            entropy = -(p[p > 0] * p[p > 0].log()).sum()
            z_q = self.embed_codes(k)
            rec = -self.observation(z_q).log_prob(x)
            mean = observation_mean(self.likelihood, self.decoder(z_q))
        return {"codebook_usage": float((p > 0).double().mean()), "perplexity": float(entropy.exp()),
                "reconstruction_nll": float(rec.mean()),
                "reconstruction_mse": float(((mean - x) ** 2).sum(tuple(range(1, x.dim()))).mean())}

    def family_metrics(self, x: torch.Tensor) -> dict[str, float]:
        return self.codebook_stats(x)


def grid_of(x_shape: Sequence[int], downsample: int) -> tuple[int, int]:
    """The code grid (h, w) = (H / 2^d, W / 2^d) of images shaped ``x_shape`` (:class:`VQVAEConfig` checks that
    it fits)."""
    _, h, w = x_shape
    return h // 2 ** downsample, w // 2 ** downsample


# -- stage two: ``ppgen prior RUN`` (declared in ``VQVAE.stages``, trained by the one training loop) -------------------
def _prior_ready(pair: VQVAE) -> str | None:
    if int(pair.quantizer.steps) == 0:
        return ("the VQ-VAE has not been trained yet (stage one): train it first (ppgen train vqvae ...), then fit "
                "its prior")
    return None


def _prior_nll(pair: VQVAE, k: torch.Tensor) -> torch.Tensor:
    """−log p(k) per grid under the PixelCNN, in nats."""
    return -pair.prior_net.log_prob(k)


def _use_prior(pair: VQVAE) -> None:
    pair.prior_fitted.fill_(True)


PRIOR = Stage(
    name="prior",
    help="vqvae stage two: fit an autoregressive prior (PixelCNN) over a run's codes",
    description="Fit the PixelCNN prior of a trained VQ-VAE run by maximum likelihood on the codes of its training "
                "data; the run then samples codes from it and its bound is log p(x|z_q) + log p_prior(z_q). Rewrites "
                "model.pt, samples.png and the checkpoint (a later `ppgen train --resume RUN` keeps training with the "
                "prior), adds prior_history.csv and metrics.json's \"prior\".",
    module=lambda pair: pair.prior_net,
    examples=lambda pair, x: pair.codes(x),
    loss=_prior_nll,
    metric="prior_nll",
    weights=("prior_net.", "prior_fitted"),
    finish=_use_prior,
    ready=_prior_ready,
    options={"epochs": 20, "batch_size": 64, "lr": 1e-3},
    samples="codes from the learned prior",
)
VQVAE.stages = (PRIOR,)
