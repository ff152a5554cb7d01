r"""Denoising diffusion probabilistic model (DDPM; Ho et al., 2020) as a model/guide pair, with DDIM sampling.

Notation: β_t (t = 1..T) the noise schedule, α_t = 1 − β_t, ᾱ_t = Π_{s≤t} α_s (ᾱ_0 = 1); y = x_0 the data in
the model's space (binary pixels as y = 2x − 1 ∈ {−1, 1}, continuous data as they are). The latents are
x_1, …, x_T, each shaped like x (sites ``x_1`` … ``x_T``; the observed site is ``x``).

Guide (no parameters): the forward process q(x_{1:T} | x_0) written in its reverse factorization::

    q(x_T | x_0) Π_{t=2}^T q(x_{t−1} | x_t, x_0),
    q(x_t | x_0) = N(√ᾱ_t y, (1 − ᾱ_t) I),
    q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I),   μ̃_t = c_t^0 y + c_t^x x_t,
    c_t^0 = √ᾱ_{t−1} β_t / (1 − ᾱ_t),   c_t^x = √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t),   β̃_t = (1 − ᾱ_{t−1}) β_t / (1 − ᾱ_t).

Model: p(x_T) = N(0, I); p_θ(x_{t−1} | x_t) = N(μ_θ(x_t, t), σ_t² I) with μ_θ = c_t^0 x̂_0 + c_t^x x_t, where the
denoiser predicts ε (x̂_0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t), x_0 itself, or v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (Salimans & Ho,
2022; x̂_0 = √ᾱ_t x_t − √(1−ᾱ_t) v̂), and σ_t² = β_t or β̃_t (``variance``), or learned between them (Nichol &
Dhariwal, 2021): a second output v of the denoiser gives log σ_t² = u log β_t + (1 − u) log β̃_t per coordinate.
Their u = (v + 1)/2 is unconstrained; here u = sigmoid(v) keeps σ_t² within [β̃_t, β_t], the two ends Ho et al.
showed bracket the optimal isotropic variance (unconstrained, a small model's u left that range within two epochs
of digits and its variances overflowed to 0 and ∞). The decoder p(x_0 | x_1) has mean
μ_θ(x_1, 1) = x̂_0(x_1, 1) and variance σ_1² = β_1: a Gaussian N(x̂_0, β_1 I) for continuous points, and for
binary pixels the Gaussian discretized to two bins at 0 (Ho et al.'s decoder with two levels),
P(x = 1 | x_1) = Φ(x̂_0 / σ_1).

The ELBO of the pair, with the Gaussian KLs in closed form, is the DDPM bound (Ho et al., eq. 5)::

    −ELBO = L_vlb = L_T + Σ_{t=2}^T L_{t−1} + L_0,
    L_T = KL(q(x_T | x_0) ‖ p(x_T)),  L_{t−1} = E_q KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)),
    L_0 = −E_q log p(x_0 | x_1),

with KL(N(a, u) ‖ N(b, v)) = ½ Σ_d [log(v/u) + (u + (a − b)²)/v − 1] and a − b = c_t^0 (y − x̂_0).

Objectives (``objective``; the pair's own estimator through the protocol's ``objective`` hook, trained by both
SVI engines), per example:

* ``"vlb"`` — L_T in closed form plus T·L_{t−1} (T·L_0 at t = 1) at one timestep t ~ U{1..T} and one
  x_t ~ q(x_t | x_0): an unbiased estimate of L_vlb.
* ``"simple"`` — Ho et al.'s L_simple, ‖target − f_θ(x_t, t)‖² summed over dimensions at t ~ U{1..T}, where the
  target is what the network predicts (ε, x_0 or v). Not a bound; the default, for sample quality.
* ``"hybrid"`` — L_simple + λ·(the ``"vlb"`` estimate), λ = ``vlb_weight`` (Nichol & Dhariwal, 2021). With
  fixed variances the L_vlb term trains the mean too; with learned ones it trains only the variance (a stop-gradient
  on x̂_0 in that term, as theirs), so L_simple alone drives the mean. Learned variances need ``"vlb"`` or
  ``"hybrid"`` (L_simple gives v no gradient).

Importance-sampled timesteps (``timestep_sampling="importance"``; Nichol & Dhariwal, 2021, §3.3; ``"vlb"`` and
``"hybrid"``): t ~ p_t instead of U{1..T}, and the sampled term L_{t−1} weighted by 1/(T p_t), so
E_p[L_T + L_{t−1}/p_t] is still L_vlb. p_t ∝ sqrt(E[L_t²]) over a history of the last 10 values of each L_t
(:class:`~ppgen.nn.history.LossHistory`, module ``timestep_history``: buffers written by each training-mode call
of ``objective``, as batch norm's running statistics; in the checkpoint, so a resume is exact), mixed with 0.1%
of the uniform distribution as their code does; uniform until every t has 10 values. In the hybrid both terms
share t, so L_simple is weighted by 1/(T p_t) too (unbiased for its uniform mean; one denoiser call). Both SVI
engines carry the history: the JAX engine in the module's NumPyro ``mutable`` site, through its compiled epoch,
as it carries batch-norm statistics.

Schedules: ``"linear"`` — −log α_t linear from 0.1/T to 20/T: Ho et al.'s β_t from 1e-4 to 0.02 at T = 1000 to
first order, and for every T the same ᾱ_T = e^{−10.05} ≈ 4.3e-5 (β_t itself linear in t, scaled to T as Nichol &
Dhariwal do, would pass 1 for T < 20); ``"cosine"`` — ᾱ_t = f(t)/f(0), f(t) = cos²(π/2 · (t/T + s)/(1 + s)),
s = 0.008, β_t capped at 0.999 (Nichol & Dhariwal, 2021).

Weights' moving average (``ema`` = its decay; Ho et al. sample with decay 0.9999): every training step moves a frozen
copy of the denoiser towards the trained weights (:class:`~ppgen.nn.average.WeightAverage`, with TensorFlow's warm-up
d_n = min(decay, (1 + n)/(10 + n))), and in evaluation mode — sampling, the bound, ``ppgen evaluate`` — the pair
computes with the copy (``network``). The copy is state carried between steps, as the timestep history: in the
checkpoint, and on the JAX engine in the module's ``mutable`` site. It is updated inside the objective, before the
step's optimizer update, so after n steps it averages the weights θ_0 … θ_{n−1}.

Sampling (``generate``): ancestral, x_T ~ p(x_T), x_{t−1} ~ p_θ(x_{t−1} | x_t), then the decoder's mean at x_1;
or DDIM (Song et al., 2021) over S = ``sample_steps`` timesteps τ_S = T > … > τ_1 = 1 with
x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε̂ + σ z, σ = η √((1 − ᾱ_s)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_s), then the decoder's
mean from x̂_0 at τ_1. For binary pixels the samplers clip x̂_0 to the data's range [−1, 1], as Ho et al. and
Song et al. do (the bound never clips).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pyro.distributions import TorchDistribution, constraints

from ppgen import ppl
from ppgen.declare import (
    OptionError,
    boolean,
    fraction,
    nonnegative_float,
    nonnegative_int,
    one_of,
    option,
    positive_int,
    sizes,
    validate,
    whole_at_least,
)
from ppgen.errors import UserError
from ppgen.models.base import GenerativeModel, likelihood_option, x_shape_option
from ppgen.nn import MLPDenoiser, UNetDenoiser
from ppgen.nn.average import WeightAverage
from ppgen.nn.history import LossHistory
from ppgen.ppl import dist, is_jax, pyro

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("beta", "beta_tilde", "learned")
OBJECTIVES = ("simple", "vlb", "hybrid")
SAMPLERS = ("ancestral", "ddim")
DENOISERS = ("mlp", "unet")
DECODERS = ("bernoulli", "gaussian", "discretized")
TIMESTEP_SAMPLING = ("uniform", "importance")
HISTORY = 10  # importance sampling: the last values of each L_t kept (Nichol & Dhariwal, 2021)
UNIFORM_MIX = 0.001  # importance sampling: the share of the uniform distribution mixed into p_t (theirs)


def _time_dim(v: Any) -> str | None:
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= 4 and v % 2 == 0
    return None if ok else "must be an even whole number, at least 4 (sines and cosines in pairs)"


@dataclass(frozen=True)
class DDPMConfig:
    x_shape: tuple[int, ...] = x_shape_option((1, 28, 28))
    likelihood: str = likelihood_option("bernoulli", DECODERS)
    hidden: tuple[int, ...] = option((256, 256), sizes, "hidden layer sizes of the MLP denoiser")
    timesteps: int = option(100, whole_at_least(1, "step"), "diffusion steps T")
    schedule: str = option("linear", one_of(SCHEDULES, "schedule"), "beta schedule")
    prediction: str = option("eps", one_of(PREDICTIONS, "prediction"), "what the denoiser predicts")
    variance: str = option("beta", one_of(VARIANCES, "variance"), "reverse-step variance sigma_t^2: beta, beta_tilde, "
                           "or learned between them (needs objective vlb or hybrid)")
    objective: str = option("simple", one_of(OBJECTIVES, "objective"), "training objective: simple (eps loss), vlb "
                            "(sampled-timestep bound), hybrid")
    vlb_weight: float = option(0.001, nonnegative_float, "lambda of the hybrid objective L_simple + lambda L_vlb")
    sampler: str = option("ancestral", one_of(SAMPLERS, "sampler"), "generate by ancestral sampling or DDIM")
    sample_steps: int = option(0, nonnegative_int, "DDIM steps (0: T)")
    eta: float = option(0.0, nonnegative_float, "DDIM eta (0 deterministic, 1 ancestral-like)")
    denoiser: str = option("mlp", one_of(DENOISERS, "denoiser"), "denoising network")
    time_dim: int = option(64, _time_dim, "size of the sinusoidal time embedding")
    channels: int = option(32, positive_int, "U-Net base channels")
    channel_mult: tuple[int, ...] = option((1, 2), sizes, "U-Net channel multiplier per resolution level")
    attention: bool = option(False, boolean, "U-Net: a self-attention block at the lowest resolution")
    levels: int = option(256, whole_at_least(2, "levels"), "grey levels of the discretized decoder (data "
                         "k/(levels-1) in [0, 1])")
    timestep_sampling: str = option("uniform", one_of(TIMESTEP_SAMPLING, "timestep sampling"), "timesteps of the "
                                    "bound's term: uniform, or importance-sampled with p_t ~ sqrt(E[L_t^2]) over the "
                                    "last 10 values of each L_t (Nichol & Dhariwal 2021; needs objective vlb or "
                                    "hybrid; both engines)")
    ema: float = option(0.0, fraction, "decay of an exponential moving average of the denoiser's weights, which "
                        "sampling and evaluation use (Ho et al. 0.9999; 0.999 for runs of a few thousand steps; 0: off)")

    def __post_init__(self) -> None:
        validate(self)
        if self.sample_steps > self.timesteps:
            raise OptionError("sample_steps", self.sample_steps, f"DDIM steps must be between 1 and T = "
                              f"{self.timesteps} (0 for T)")
        if self.variance == "learned" and self.objective == "simple":
            raise OptionError("variance", self.variance, "a learned variance is trained by the bound only; use "
                              "objective='hybrid' or 'vlb'")
        if self.timestep_sampling == "importance" and self.objective == "simple":
            raise OptionError("timestep_sampling", self.timestep_sampling, "importance-sampled timesteps weight the "
                              "bound's terms; use objective vlb or hybrid")
        if self.attention and self.denoiser != "unet":
            raise OptionError("attention", self.attention, "a self-attention block is part of the U-Net; use "
                              "denoiser='unet'")


def beta_schedule(name: str, timesteps: int) -> np.ndarray:
    """β_1..β_T (float64) of the ``"linear"`` or ``"cosine"`` schedule (see the module docs)."""
    T = timesteps
    if name == "linear":
        rates = np.linspace(0.1 / T, 20.0 / T, T) if T > 1 else np.array([10.05])
        betas = -np.expm1(-rates)
    elif name == "cosine":
        s = 0.008
        f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * math.pi / 2) ** 2
        betas = 1 - f[1:] / f[:-1]
    else:
        raise UserError(f"ddpm: unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return np.clip(betas, 1e-8, 0.999)


def _kl_normal(m1: Any, v1: Any, m2: Any, v2: Any, log: Any) -> Any:
    """KL(N(m1, v1) ‖ N(m2, v2)) per coordinate (variances; ``log`` of the backend)."""
    return 0.5 * (log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0)


class _Ops:
    """The few array functions the objective needs, on the backend of ``like`` (torch or JAX)."""

    def __init__(self, like: Any):
        if is_jax(like):
            import jax
            import jax.numpy as jnp
            from jax.scipy.special import log_ndtr

            self.log, self.sqrt, self.where, self.log_ndtr = jnp.log, jnp.sqrt, jnp.where, log_ndtr
            self.log1p, self.exp, self.stop, self.sigmoid = jnp.log1p, jnp.exp, jax.lax.stop_gradient, jax.nn.sigmoid
            self.cumsum = jnp.cumsum
            self.search_right = lambda sorted_, v: jnp.searchsorted(sorted_, v, side="right")
            self.clip_max = lambda a, m: jnp.minimum(a, m)
        else:
            self.log, self.sqrt, self.where, self.log_ndtr = torch.log, torch.sqrt, torch.where, torch.special.log_ndtr
            self.log1p, self.exp, self.stop, self.sigmoid = torch.log1p, torch.exp, torch.Tensor.detach, torch.sigmoid
            self.cumsum = lambda a: torch.cumsum(a, 0)
            self.search_right = lambda sorted_, v: torch.searchsorted(sorted_, v.to(sorted_.dtype), right=True)
            self.clip_max = lambda a, m: torch.clamp(a, max=m)


def discretized_log_prob(y: Any, loc: Any, scale: float, levels: int, ops: _Ops) -> Any:
    """log P(y) per coordinate of N(loc, scale²) discretized to ``levels`` bins of [−1, 1] (the end bins open), at
    y on the grid −1 + 2k/(levels − 1): log[Φ(b) − Φ(a)], a, b the bin's edges in standard units (Ho et al.)."""
    half = 1.0 / (levels - 1)
    a = (y - half - loc) / scale
    b = (y + half - loc) / scale
    low, high = y < -1 + half, y > 1 - half  # the open end bins
    flip = a > 0  # Φ(b) − Φ(a) = Φ(−a) − Φ(−b): keep both arguments where log Φ is accurate
    lo = ops.where(flip, -b, a)
    hi = ops.where(flip, -a, b)
    log_hi = ops.log_ndtr(hi)
    middle = log_hi + ops.log1p(-ops.exp(ops.log_ndtr(lo) - log_hi))
    return ops.where(low, ops.log_ndtr(b), ops.where(high, ops.log_ndtr(-a), middle))


class DiscretizedNormal(TorchDistribution):
    """Pyro: x ∈ {k/(levels − 1)} with log P(x) = :func:`discretized_log_prob` of y = 2x − 1 under N(loc, scale²)."""

    arg_constraints: dict = {}
    support = constraints.unit_interval

    def __init__(self, loc: torch.Tensor, scale: float, levels: int, validate_args: bool | None = None):
        self.loc, self.scale, self.levels = loc, float(scale), int(levels)
        super().__init__(batch_shape=loc.shape, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return DiscretizedNormal(self.loc.expand(batch_shape), self.scale, self.levels)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return discretized_log_prob(2 * value - 1, self.loc, self.scale, self.levels, _Ops(self.loc))

    def sample(self, sample_shape=()) -> torch.Tensor:
        with torch.no_grad():
            y = self.loc.expand(tuple(sample_shape) + tuple(self.loc.shape))
            y = y + self.scale * torch.randn_like(y)
            k = torch.round((y.clamp(-1, 1) + 1) / 2 * (self.levels - 1))
            return k / (self.levels - 1)


class DDPM(GenerativeModel):
    """A DDPM pair: ``guide`` is the fixed forward process, ``model`` the learned reverse chain (module docs)."""

    name = "ddpm"
    Config = DDPMConfig
    sample_steps_option = "sample_steps"  # `ppgen sample --steps S`: DDIM in S steps
    sample_steps_config = {"sampler": "ddim"}

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        c = self.config
        T = c.timesteps
        betas = np.concatenate([[0.0], beta_schedule(c.schedule, T)])  # index t = 0..T
        alpha_bar = np.cumprod(1.0 - betas)
        prev = np.concatenate([[1.0], alpha_bar[:-1]])  # ᾱ_{t−1}
        with np.errstate(divide="ignore", invalid="ignore"):
            self.betas = betas
            self.alpha_bar = alpha_bar
            self.coef_x0 = np.sqrt(prev) * betas / (1.0 - alpha_bar)
            self.coef_xt = np.sqrt(1.0 - betas) * (1.0 - prev) / (1.0 - alpha_bar)
            self.beta_tilde = (1.0 - prev) * betas / (1.0 - alpha_bar)
        self.coef_x0[0] = self.coef_xt[0] = self.beta_tilde[0] = 0.0
        # log β̃_t for the learned variance; t = 1 has β̃_1 = 0 and no learned step (the decoder's variance is β_1)
        self.log_beta_tilde = np.log(np.where(np.arange(T + 1) >= 2, self.beta_tilde, 1.0))
        # importance-sampled timesteps: the last HISTORY values of each L_{t−1} (row t − 1), p_t from them
        self.timestep_history = LossHistory(T, HISTORY, UNIFORM_MIX) if c.timestep_sampling == "importance" else None
        self._tables: dict[str, np.ndarray] | None = None  # the objective's per-timestep constants, built once
        self._torch_tables: dict[tuple, torch.Tensor] = {}
        outputs = 2 if c.variance == "learned" else 1
        if c.denoiser == "mlp":
            self.denoiser = MLPDenoiser(c.x_shape, c.hidden, c.time_dim, outputs=outputs)
        else:
            try:
                self.denoiser = UNetDenoiser(c.x_shape, c.channels, c.channel_mult, c.time_dim, outputs=outputs,
                                             attention=c.attention)
            except ValueError as err:
                raise UserError(f"ddpm: {err}") from None
        # Ho et al. sample with an exponential moving average of the weights (ppgen.nn.average)
        self.ema = WeightAverage(self.denoiser, c.ema) if c.ema > 0 else None

    @property
    def training_notice(self) -> str | None:
        """An MLP denoiser whose last hidden layer is narrower than the D values it predicts ε (or v) for: its last
        layer is linear, so its output spans at most that many of the D directions, while ε ~ N(0, I) spreads over
        all of them; L_simple cannot fall below (D − width) per example, and the x₀ that sampling derives from ε̂ at
        large t, (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t, multiplies that error many times: the samples stay noise. x₀ has
        the data's structure and a narrow layer can carry it (measured on the digits: a 512-512 MLP draws digits
        predicting x₀ and noise predicting ε; a 1024-1024 one predicting ε still drew noise after 2,100 steps, so
        width alone is not the advice)."""
        c = self.config
        values = math.prod(c.x_shape)
        if c.denoiser != "mlp" or c.prediction == "x0" or not c.hidden or c.hidden[-1] >= values:
            return None
        return (f"the MLP denoiser's last hidden layer ({c.hidden[-1]}) is narrower than the {values} values it "
                f"predicts {c.prediction} for, which it then cannot represent (its samples stay noise); use "
                f"--prediction x0 or --denoiser unet")

    @property
    def network(self) -> Any:
        """The denoiser that computes: the weights' moving average in evaluation mode (sampling, the bound) when
        ``ema`` is on, the trained weights otherwise."""
        return self.ema.shadow if self.ema is not None and not self.training else self.denoiser

    # -- the schedule's pieces a test (or a subclass) may replace ----------------------------------------
    @property
    def T(self) -> int:
        return self.config.timesteps

    @property
    def latent_sites(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(f"x_{t}" for t in range(self.T, 0, -1))

    def step_variance(self, t: int) -> float:
        """σ_t² of p_θ(x_{t−1} | x_t), t ≥ 2, for a fixed variance (``beta`` or ``beta_tilde``)."""
        return float(self.betas[t] if self.config.variance == "beta" else self.beta_tilde[t])

    def learned_variance(self, v: Any, t: int) -> Any:
        """σ_t²(v) = exp(u log β_t + (1 − u) log β̃_t), u = sigmoid(v) (module docs), t ≥ 2."""
        ops = _Ops(v)
        u = ops.sigmoid(v)
        return ops.exp(u * math.log(self.betas[t]) + (1 - u) * float(self.log_beta_tilde[t]))

    def decoder_variance(self) -> float:
        """σ_1² of the decoder p(x_0 | x_1)."""
        return float(self.betas[1])

    def prior(self) -> tuple[Any, float]:
        """(loc, scale) of p(x_T) = N(0, I)."""
        return 0.0, 1.0

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        super().check_data(x, what)
        if self.likelihood == "discretized":
            k = x * (self.config.levels - 1)
            if ((x < 0) | (x > 1)).any() or ((k - k.round()).abs() > 1e-3).any():
                raise UserError(f"{what} is not on the grid of {self.config.levels} grey levels in [0, 1] that the "
                                "discretized decoder observes; give the data's grey levels (levels), leave the data "
                                "unbinarized, or use likelihood='gaussian'")

    # -- the pair ---------------------------------------------------------------------------------------
    def to_model_space(self, x: Any) -> Any:
        """y = 2x − 1 for binary pixels, x itself for continuous data."""
        return x if self.likelihood == "gaussian" else 2 * x - 1

    def _event(self) -> int:
        return len(self.x_shape)

    def _net(self, x_t: Any, t: Any) -> tuple[Any, Any]:
        """(the denoiser's prediction, its variance output v or None) at x_t and t (an int, or one timestep per
        example shaped like x_t's leading dims)."""
        lead = x_t.shape[: len(x_t.shape) - self._event()]
        if isinstance(t, int):
            t = x_t.reshape(tuple(lead) + (-1,))[..., 0] * 0 + float(t)
        out = self.network(x_t, t)
        return out if self.config.variance == "learned" else (out, None)

    def _x0_from(self, out: Any, x_t: Any, sqrt_ab: Any, sqrt_1mab: Any) -> Any:
        if self.config.prediction == "eps":
            return (x_t - sqrt_1mab * out) / sqrt_ab
        if self.config.prediction == "x0":
            return out
        return sqrt_ab * x_t - sqrt_1mab * out

    def predict_x0(self, x_t: Any, t: int) -> Any:
        """x̂_0(x_t, t) from the denoiser's output."""
        ab = float(self.alpha_bar[t])
        return self._x0_from(self._net(x_t, t)[0], x_t, math.sqrt(ab), math.sqrt(1 - ab))

    def reverse_mean(self, x_t: Any, t: int) -> Any:
        """μ_θ(x_t, t) = c_t^0 x̂_0 + c_t^x x_t."""
        return float(self.coef_x0[t]) * self.predict_x0(x_t, t) + float(self.coef_xt[t]) * x_t

    def reverse_step(self, x_t: Any, t: int, clip: bool = False) -> tuple[Any, Any, Any]:
        """(x̂_0, μ_θ(x_t, t), σ_t²) of p_θ(x_{t−1} | x_t), t ≥ 2, from one call of the denoiser; ``clip``: x̂_0
        clipped to the data's range first (the samplers, for pixels)."""
        out, v = self._net(x_t, t)
        ab = float(self.alpha_bar[t])
        x0_hat = self._x0_from(out, x_t, math.sqrt(ab), math.sqrt(1 - ab))
        if clip and self.likelihood != "gaussian":
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        mean = float(self.coef_x0[t]) * x0_hat + float(self.coef_xt[t]) * x_t
        variance = self.step_variance(t) if v is None else self.learned_variance(v, t)
        return x0_hat, mean, variance

    def _decoder(self, x_1: Any):
        mean = self.predict_x0(x_1, 1)
        scale = math.sqrt(self.decoder_variance())
        if self.likelihood == "bernoulli":
            z = mean / scale
            log_ndtr = _Ops(z).log_ndtr
            return dist.Bernoulli(logits=log_ndtr(z) - log_ndtr(-z)).to_event(self._event())
        if self.likelihood == "discretized":
            if ppl.get_backend() != "pyro":
                raise UserError("ddpm: the discretized decoder's model runs on Pyro only (the JAX engine trains the "
                                "objective, which needs no model)")
            return DiscretizedNormal(mean, scale, self.config.levels).to_event(self._event())
        return dist.Normal(mean, scale).to_event(self._event())

    def model(self, x: Any) -> None:
        pyro.module("denoiser", self.denoiser)
        k = self._event()
        loc, scale = self.prior()
        with pyro.plate("data", x.shape[0]):
            x_t = pyro.sample(f"x_{self.T}", dist.Normal(loc, scale * (x[0] * 0 + 1)).to_event(k))
            for t in range(self.T, 1, -1):
                _, mean, variance = self.reverse_step(x_t, t)
                x_t = pyro.sample(f"x_{t - 1}", dist.Normal(mean, variance ** 0.5).to_event(k))
            pyro.sample("x", self._decoder(x_t), obs=x)

    def guide(self, x: Any) -> None:
        k = self._event()
        y = self.to_model_space(x)
        ab = float(self.alpha_bar[self.T])
        with pyro.plate("data", x.shape[0]):
            x_t = pyro.sample(f"x_{self.T}", dist.Normal(math.sqrt(ab) * y, math.sqrt(1 - ab) + 0 * y).to_event(k))
            for t in range(self.T, 1, -1):
                loc = float(self.coef_x0[t]) * y + float(self.coef_xt[t]) * x_t
                x_t = pyro.sample(f"x_{t - 1}", dist.Normal(loc, math.sqrt(self.beta_tilde[t])).to_event(k))

    # -- the bound's terms --------------------------------------------------------------------------------
    def _prior_kl(self, y: Any, log: Any) -> Any:
        """L_T = KL(q(x_T | x_0) ‖ p(x_T)) per example, in closed form."""
        ab = float(self.alpha_bar[self.T])
        loc, scale = self.prior()
        kl = _kl_normal(math.sqrt(ab) * y, 1 - ab, loc, scale ** 2, math.log) + 0 * y
        return kl.reshape(tuple(kl.shape[: len(kl.shape) - self._event()]) + (-1,)).sum(-1)

    def _decoder_nll(self, x: Any, y: Any, x0_hat: Any, ops: _Ops) -> Any:
        """−log p(x_0 | x_1) per coordinate, from x̂_0(x_1, 1)."""
        v = self.decoder_variance()
        if self.likelihood == "bernoulli":
            return -ops.log_ndtr(y * x0_hat / math.sqrt(v))
        if self.likelihood == "discretized":
            return -discretized_log_prob(y, x0_hat, math.sqrt(v), self.config.levels, ops)
        return 0.5 * math.log(2 * math.pi * v) + (y - x0_hat) ** 2 / (2 * v)

    def prior_kl(self, x: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) ‖ p(x_T)) per example, in closed form (torch)."""
        return self._prior_kl(self.to_model_space(x), math.log)

    def step_kl(self, x: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)) per example at the given x_t, t ≥ 2, in closed form."""
        y = self.to_model_space(x)
        x0_hat, _, variance = self.reverse_step(x_t, t)
        log = math.log if isinstance(variance, float) else torch.log
        kl = _kl_normal(float(self.coef_x0[t]) * (y - x0_hat), float(self.beta_tilde[t]), 0.0, variance, log)
        return kl.flatten(-self._event()).sum(-1)

    def decoder_nll(self, x: torch.Tensor, x_1: torch.Tensor) -> torch.Tensor:
        """−log p(x_0 | x_1) per example (torch)."""
        nll = self._decoder_nll(x, self.to_model_space(x), self.predict_x0(x_1, 1), _Ops(x))
        return nll.flatten(-self._event()).sum(-1)

    def vlb_terms(self, x: torch.Tensor, budget: int = 2_000_000) -> torch.Tensor:
        """(N, T + 1): [L_0, L_1, …, L_{T−1}, L_T] per example, each KL in closed form at one x_t ~ q(x_t | x_0)
        (L_0 at one x_1); their sum is a single-draw estimate of L_vlb = −ELBO (torch). The timesteps go through
        the denoiser together, in chunks of about ``budget`` values."""
        y = self.to_model_space(x)
        per_chunk = max(1, budget // max(1, y.numel()))
        steps = list(range(2, self.T + 1))
        cols = [self.decoder_nll(x, math.sqrt(self.alpha_bar[1]) * y + math.sqrt(1 - self.alpha_bar[1])
                                 * torch.randn_like(y))]
        for start in range(0, len(steps), per_chunk):
            cols.append(self._step_kls(y, steps[start:start + per_chunk]))
        cols.append(self.prior_kl(x).unsqueeze(-1))
        return torch.cat([cols[0].unsqueeze(-1), *cols[1:]], -1)

    def _step_kls(self, y: torch.Tensor, steps: list[int]) -> torch.Tensor:
        """(N, len(steps)): KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)) at one x_t ~ q(x_t | x_0) per t ≥ 2, the
        timesteps batched along a leading dim of one denoiser call."""
        k = self._event()

        def col(values) -> torch.Tensor:  # (S, 1, 1, ...) broadcasting against (S, N, *x_shape)
            return torch.as_tensor(np.asarray(values), dtype=y.dtype, device=y.device).reshape((-1,) + (1,) * (k + 1))

        ab = col([self.alpha_bar[t] for t in steps])
        x_t = ab.sqrt() * y + (1 - ab).sqrt() * torch.randn((len(steps),) + tuple(y.shape), dtype=y.dtype,
                                                                 device=y.device)
        t = torch.as_tensor(steps, dtype=y.dtype, device=y.device).reshape(-1, 1).expand(len(steps), y.shape[0])
        out, v = self._net(x_t, t)
        x0_hat = self._x0_from(out, x_t, ab.sqrt(), (1 - ab).sqrt())
        if v is None:
            variance = col([self.step_variance(t) for t in steps])
        else:
            u = torch.sigmoid(v)
            variance = torch.exp(u * col(np.log(self.betas[steps])) + (1 - u) * col(self.log_beta_tilde[steps]))
        kl = _kl_normal(col(self.coef_x0[steps]) * (y - x0_hat), col(self.beta_tilde[steps]), 0.0, variance,
                        torch.log)
        return kl.flatten(-k).sum(-1).transpose(0, 1)

    def closed_form_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """The ELBO per example with every term in closed form: −Σ of :meth:`vlb_terms` (the protocol's
        lower-variance ELBO; ``ppgen evaluate`` and the validation ELBO use it)."""
        return -self.vlb_terms(x).sum(-1)

    def _objective_tables(self) -> dict[str, np.ndarray]:
        """The per-timestep constants the objective gathers at t (index 0..T), computed once. At t = 1 the KL branch
        is never selected; its variances there are 1 so it stays finite."""
        if self._tables is None:
            T = self.T
            later = np.arange(T + 1) >= 2
            self._tables = {
                "sqrt_ab": np.sqrt(self.alpha_bar), "sqrt_1mab": np.sqrt(1 - self.alpha_bar),
                "coef_x0": self.coef_x0, "beta_tilde": np.where(later, self.beta_tilde, 1.0),
                "sigma2": np.array([self.step_variance(t) if t >= 2 else 1.0 for t in range(T + 1)]),
                "log_beta": np.log(np.where(later, self.betas, 1.0)), "log_beta_tilde": self.log_beta_tilde}
        return self._tables

    def _table(self, name: str, like: Any) -> Any:
        """The objective's table ``name`` as an array of ``like``'s backend (torch: cached per dtype and device)."""
        if is_jax(like):
            import jax.numpy as jnp

            return jnp.asarray(self._objective_tables()[name], dtype=like.dtype)
        key = (name, like.dtype, like.device)
        if key not in self._torch_tables:
            self._torch_tables[key] = torch.as_tensor(self._objective_tables()[name], dtype=like.dtype,
                                                      device=like.device)
        return self._torch_tables[key]

    # -- importance-sampled timesteps (Nichol & Dhariwal, 2021, §3.3) ---------------------------------------
    def timestep_probs(self) -> torch.Tensor:
        """p_t for t = 1..T (:class:`~ppgen.nn.history.LossHistory`): uniform until every L_{t−1} has ``HISTORY``
        recorded values, then ∝ the root mean square of its last ``HISTORY``, mixed with ``UNIFORM_MIX`` uniform."""
        return self.timestep_history(self.timestep_history.values)

    def record_losses(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Append each example's L_{t−1} to the history of its t (in batch order)."""
        self.timestep_history(t - 1, losses)

    def _importance_timesteps(self, x: Any, ops: _Ops) -> tuple[Any, Any]:
        """(t, 1/(T p_t)) per example, t ~ p_t by inverting the CDF of :meth:`timestep_probs` at U(0, 1)."""
        if ppl.get_backend() != "pyro":  # the history rides in the module's mutable site on NumPyro
            pyro.module("timestep_history", self.timestep_history)
        p = self.timestep_history(x)
        u = ppl.uniform((x.shape[0],), like=x)
        row = ops.clip_max(ops.search_right(ops.cumsum(p), u), self.T - 1)
        return row + 1, 1.0 / (self.T * p[row])

    def objective(self, x: Any) -> Any:
        """Per example: the ``objective`` the config names (module docs), one t per example: t ~ U{1..T}, or
        t ~ p_t with the sampled terms weighted by 1/(T p_t) (``timestep_sampling="importance"``)."""
        if ppl.get_backend() != "pyro":  # NumPyro binds the weights here; the torch engine trains pair.parameters()
            pyro.module("denoiser", self.denoiser)
        if self.ema is not None and self.training:  # the average of the weights before this step's update
            if ppl.get_backend() != "pyro":
                pyro.module("denoiser_ema", self.ema)
            self.ema.update(self.denoiser)
        ops = _Ops(x)
        T, k = self.T, self._event()
        y = self.to_model_space(x)
        n = x.shape[0]
        importance = self.config.timestep_sampling == "importance"
        if importance:
            t_index, weight = self._importance_timesteps(x, ops)
        else:
            t_index, weight = ppl.randint(1, T + 1, (n,), like=x), None
        eps = ppl.normal(tuple(y.shape), like=x)
        per_example = (n,) + (1,) * k

        def at(name: str) -> Any:
            return self._table(name, x)[t_index].reshape(per_example)

        sqrt_ab, sqrt_1mab = at("sqrt_ab"), at("sqrt_1mab")
        x_t = sqrt_ab * y + sqrt_1mab * eps
        out = self.network(x_t, t_index * 1.0)
        out, v = out if self.config.variance == "learned" else (out, None)

        def per_ex(v: Any) -> Any:
            return v.reshape((n, -1)).sum(-1)

        simple = None
        if self.config.objective != "vlb":
            prediction = self.config.prediction
            target = eps if prediction == "eps" else y if prediction == "x0" else sqrt_ab * eps - sqrt_1mab * y
            simple = per_ex((target - out) ** 2)
            if self.config.objective == "simple":
                return simple
            if importance:  # the hybrid's two terms share t: both weighted, so both stay unbiased
                simple = weight * simple
        x0_hat = self._x0_from(out, x_t, sqrt_ab, sqrt_1mab)
        if v is None:
            sigma2 = at("sigma2")
            bound_x0 = x0_hat
        else:  # log σ² = u log β + (1 − u) log β̃; in the hybrid the bound trains the variance only
            u = ops.sigmoid(v)
            sigma2 = ops.exp(u * at("log_beta") + (1 - u) * at("log_beta_tilde"))
            bound_x0 = ops.stop(x0_hat) if self.config.objective == "hybrid" else x0_hat
        kl = _kl_normal(at("coef_x0") * (y - bound_x0), at("beta_tilde"), 0.0, sigma2, ops.log)
        nll = self._decoder_nll(x, y, bound_x0, ops)
        term = per_ex(ops.where(t_index.reshape(per_example) == 1, nll, kl))  # L_{t−1} (L_0 at t = 1)
        if importance:
            if self.training:  # as batch norm's running statistics: training steps update the history
                self.timestep_history(t_index - 1, term)
            term = weight * term
        vlb = T * term + self._prior_kl(y, ops.log)
        return vlb if simple is None else simple + self.config.vlb_weight * vlb

    # -- sampling ----------------------------------------------------------------------------------------
    def _sampling_x0(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        x0_hat = self.predict_x0(x_t, t)
        return x0_hat if self.likelihood == "gaussian" else x0_hat.clamp(-1.0, 1.0)

    def _decoder_mean(self, x0_hat: torch.Tensor) -> torch.Tensor:
        if self.likelihood == "bernoulli":
            return torch.special.ndtr(x0_hat / math.sqrt(self.decoder_variance()))
        if self.likelihood == "discretized":
            return ((x0_hat + 1) / 2).clamp(0.0, 1.0)
        return x0_hat

    def _start(self, n: int) -> torch.Tensor:
        weight = next(self.parameters(), None)
        device = weight.device if weight is not None else torch.device("cpu")
        loc, scale = self.prior()
        return loc + scale * torch.randn((n, *self.x_shape), device=device)

    def ddim_timesteps(self, steps: int | None = None) -> list[int]:
        """τ_S = T > … > τ_1 = 1: ``steps`` timesteps evenly spaced (rounded) over 1..T."""
        steps = steps or self.config.sample_steps or self.T
        if not 1 <= steps <= self.T:
            raise UserError(f"ddpm: DDIM steps must be between 1 and T = {self.T}, got {steps}")
        if steps == 1:
            return [self.T]
        return sorted({int(round(v)) for v in np.linspace(1, self.T, steps)}, reverse=True)

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """``n`` draws: the decoder's mean (pixel probabilities, or x̂_0 for points) at the end of the chain."""
        if self.config.sampler == "ddim":
            return self.sample_ddim(n)
        x = self._start(n)
        for t in _bar(range(self.T, 1, -1), "ancestral sampling"):
            _, mean, variance = self.reverse_step(x, t, clip=True)
            x = mean + variance ** 0.5 * torch.randn_like(x)
        return self._decoder_mean(self._sampling_x0(x, 1))

    @torch.no_grad()
    def sample_ddim(self, n: int, steps: int | None = None, eta: float | None = None) -> torch.Tensor:
        """DDIM (Song et al., 2021) over :meth:`ddim_timesteps` with ``eta`` (default: the config's)."""
        eta = self.config.eta if eta is None else eta
        taus = self.ddim_timesteps(steps)
        x = self._start(n)
        for t, s in _bar(list(zip(taus[:-1], taus[1:])), "DDIM sampling"):
            ab_t, ab_s = float(self.alpha_bar[t]), float(self.alpha_bar[s])
            x0_hat = self._sampling_x0(x, t)
            eps_hat = (x - math.sqrt(ab_t) * x0_hat) / math.sqrt(1 - ab_t)
            sigma = eta * math.sqrt(max((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s), 0.0))
            x = (math.sqrt(ab_s) * x0_hat + math.sqrt(max(1 - ab_s - sigma ** 2, 0.0)) * eps_hat
                 + sigma * torch.randn_like(x))
        return self._decoder_mean(self._sampling_x0(x, taus[-1]))


def _bar(steps: Any, what: str) -> Any:
    """``steps`` counted in a progress report on stderr (:mod:`ppgen.progress`) when the chain is long."""
    from ppgen.progress import track

    steps = list(steps)
    return track(steps, what, enabled=None if len(steps) >= 50 else False)
