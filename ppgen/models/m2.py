r"""Semi-supervised VAE M2 (Kingma, Rezende, Mohamed & Welling, 2014): the class y a latent where unlabelled.

"Semi-supervised learning with deep generative models" (NeurIPS 2014). The model and the guide::

    p(y) = Cat(1/K),   p(z) = N(0, I),   p(x | y, z) = Bernoulli | ContinuousBernoulli | Normal(decoder(z, y)),
    q(y | x) = Cat(π(x)),   q(z | x, y) = N(μ(x, y), diag σ²(x, y)).

For a labelled example (x, y) the bound is that of log p(x, y) with y observed,

    L(x, y) = E_{q(z|x,y)}[log p(x | y, z) + log p(z) − log q(z | x, y)] + log p(y),

and for an unlabelled x the class is summed out exactly (enumerated, not sampled),

    U(x) = Σ_y q(y | x) (L(x, y) − log q(y | x))   ≤ log p(x).

Since q(y | x) appears in U only, Kingma et al. add the classification loss on the labelled examples:
J^α = Σ_l −L(x_l, y_l) + Σ_u −U(x_u) + α E_labelled[−log q(y | x)], α = 0.1 N (their choice, N the size of the
training set), i.e. a weight of 0.1 N / N_l on each of the N_l labelled examples (:func:`kingma_alpha`: 50 for 100
labels of 50,000 digits). Here ``alpha`` is that weight on each labelled row a batch holds, whatever else the batch
holds (a weight α B / B_l scaled by the batch's own count of labels is biased low where most batches hold none). The
default 46 is Pyro's ss-vae example's ``aux_loss_multiplier``.

Batches (:meth:`M2.epoch_order`): where labels are rare, a plain shuffle puts a labelled digit in a step once an
epoch (100 of 50,000 at batch 200: two batches in three have none), and q(y | x) learns from them slowly: on the full
MNIST with 100 labels the test accuracy was 0.18 / 0.50 / 0.56 after 1 / 2 / 3 epochs and 0.57-0.63 after 7-12. So
every batch takes at least ``labelled_share`` (10%) labelled rows, the labelled examples drawn in turn (each 50 times
an epoch at batch 200), beside unlabelled rows each seen at most once an epoch: 0.725 / 0.717 / 0.709 after 1 / 2 / 3
epochs (the classifier on the 100 labels alone: 0.744; docs/m2.md has the curves). This weighs the labelled terms
more than J^α does (as Pyro's example does by its separate labelled batches). ``labelled_batches="apart"`` is Pyro's
ss-vae example's schedule instead: the labelled rows in batches of their own, each seen once an epoch, one such
batch every ⌊N / N_l⌋ steps (:func:`labelled_apart`).

Grey levels (``grey_levels``). Pyro's example feeds grey pixels x ∈ [0, 1] to the networks and scores them as
Bernoulli targets, log p(x | y, z) = Σ_d x_d log σ(l_d) + (1 − x_d) log(1 − σ(l_d)) (its support check off). That
cross-entropy is no normalized density of grey levels (it integrates to less than 1 over [0, 1]^D) and no
likelihood of binary digits, so the bound it gives is no log-likelihood: ``ppgen evaluate`` says so beside it
(``likelihood_note``). Train such a pair on data that are not binarized (``--binarize none``); by default
(``False``) the Bernoulli takes binary pixels only, the normalized protocol the leaderboard uses.

Labels. The pair takes the data set's label column (``label_column``, default ``y``) as its one input: a class in
0..K−1, or −1 (:data:`ppgen.data.MISSING_LABEL`) where it is missing (``ppgen train --labels N`` keeps N of the
training labels, balanced per class). One site ``y`` serves both kinds of rows: the guide's q(y | x) is the point
mass on the label where there is one, and π(x) where there is none, so Pyro's ``TraceEnum_ELBO`` summing the
guide's enumerated ``y`` (``infer={"enumerate": "parallel"}``) gives L(x, y) + 0 on a labelled row (the other
classes have weight 0) and U(x) on an unlabelled one; an estimator that samples ``y`` from the guide (IWAE, AIS)
sees the same joint.

Training (``y_guide``; the family's own objective, :meth:`M2.objective`, on both SVI engines: on JAX arrays
:meth:`M2.jax_objective`, the same estimator, every row through fixed shapes):

* ``enumerate`` — U(x) exactly as above (one pass of the networks over the K classes of every unlabelled row).
* ``sample`` — one y ~ q(y | x) per unlabelled row; the gradient of q by the score function (REINFORCE, no
  baseline): the plain Monte Carlo ELBO of a guide that samples y (Kingma et al.'s comparison; Pyro's ss-vae
  tutorial reports ≈ 0.20 test accuracy with it).
* ``relaxed`` — the Gumbel-softmax / Concrete relaxation (Jang, Gu & Poole 2017; Maddison, Mnih & Teh 2017):
  ỹ = softmax((log π(x) + g) / τ), g Gumbel, a point of the simplex that the networks take as a soft one-hot
  (their first layer is linear in one-hot(y)), reparameterized; with the categorical KL in closed form as Jang et
  al. use it,

      R_τ(x) = E_{ỹ ~ Concrete(π, τ)}[L_z(x, ỹ)] + Σ_y π_y (log p(y) − log π_y),   L_z = L − log p(y).

  R_τ is not a bound on log p(x); as τ → 0, ỹ → one-hot(argmax(log π + g)), which is a draw of y ~ π (the
  Gumbel-max trick), so R_τ(x) → U(x) for any networks continuous on the simplex. :meth:`M2.relaxed_elbo` gives
  R_τ per example and :meth:`M2.gumbel_max_elbo` the same draws at τ = 0 (an unbiased estimate of U): their
  paired difference is the relaxation's bias.

Held-out figures (``family_metrics``): test accuracy of argmax q(y | x), and the bound U(x) with the labels hidden
(``ppgen evaluate`` reports the bound given the split's labels, log p(x, y)). ``generate(n, labels)`` draws
x ~ p(x | y, z), z ~ p(z); :meth:`M2.style_transfer` decodes the z of given digits under every class.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ppgen import ppl
from ppgen.data import MISSING_LABEL
from ppgen.declare import (
    boolean,
    column_name,
    fraction,
    nonnegative_float,
    one_of,
    option,
    positive_float,
    positive_int,
    sizes,
    supported,
    validate,
    whole_at_least,
)
from ppgen.errors import UserError
from ppgen.models.base import (
    GenerativeModel,
    check_observations,
    likelihood_option,
    observation_dist,
    observation_mean,
    x_shape_option,
)
from ppgen.models.cvae import LabelledMLP, class_labels
from ppgen.nn import Network
from ppgen.ppl import dist, is_jax, pyro

#: how the guide treats the class of an unlabelled example during training
Y_GUIDES = ("enumerate", "sample", "relaxed")
#: the arithmetic of the networks' matrix products during training (``precision``)
PRECISIONS = ("float32", "bfloat16")
#: how a training epoch places the labelled rows (``labelled_batches``)
LABELLED_BATCHES = ("mixed", "apart")
#: ``engine="auto"`` trains M2 on the JAX engine up to this many weights in the decoder's output layer (first hidden
#: width × pixels; measured faster than torch at 78,400 = 100 × 784, slower at 392,000 = 500 × 784)
JAX_FIRST_UP_TO = 100_000


class ClassMLP(LabelledMLP):
    """u, y -> an MLP on [u, one-hot(y)]; y a class index, or a point of the simplex (a soft one-hot: a relaxed
    draw), whose first-layer term is then ỹ W_y, the same linear map."""

    def forward(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rows = y @ self.label_rows if y.is_floating_point() else self.label_rows[y]
        h = F.softplus(self.first(u.flatten(-self.in_ndim)) + rows)
        for layer in self.layers:
            h = F.softplus(layer(h))
        return self.out(h)

    def jax_apply(self, params: dict[str, Any], prefix: str, u: Any, y: Any) -> Any:
        """:meth:`forward` on JAX arrays with the weights ``params`` (keys ``prefix`` + this module's
        ``state_dict`` keys); written by hand, as torch.fx cannot trace the branch on y's dtype."""
        import jax.numpy as jnp

        rows = params[prefix + "label_rows"]
        u = u.reshape(u.shape[:u.ndim - self.in_ndim] + (-1,))
        softplus = _jax_softplus()
        h = _dense(params, prefix + "first", u) + (y @ rows if jnp.issubdtype(y.dtype, jnp.floating) else rows[y])
        h = softplus(h)
        for i in range(len(self.layers)):
            h = softplus(_dense(params, f"{prefix}layers.{i}", h))
        return _dense(params, prefix + "out", h)

    def jax_function(self):
        """``fn(params, u, y)``: :meth:`forward` in JAX."""
        return lambda params, u, y: self.jax_apply(params, "", u, y)


@functools.cache
def _jax_softplus() -> Any:
    """softplus(x) = max(x, 0) + log1p(e^{−|x|}) on JAX with its derivative sigmoid(x) given (a custom JVP):
    the same values as ``jax.nn.softplus`` to float32 rounding, and with its gradient a sixth of its time on the CPU
    (2,000 × 1,000 values, one thread: 1.4 ms against 9.6 ms; torch's 7.3 ms), which ``logaddexp``'s guards cost."""
    import jax
    import jax.numpy as jnp

    @jax.custom_jvp
    def softplus(x):
        return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))

    @softplus.defjvp
    def _(primals, tangents):
        (x,), (dx,) = primals, tangents
        return softplus(x), jax.nn.sigmoid(x) * dx

    return softplus


def _dense(params: dict[str, Any], name: str, h: Any) -> Any:
    """An ``nn.Linear`` layer ``name`` on a JAX array: h Wᵀ + b."""
    return h @ params[name + ".weight"].T + params[name + ".bias"]


class ClassEncoder(Network):
    """x, y -> (loc, scale) of q(z | x, y)."""

    def __init__(self, x_shape: Sequence[int], classes: int, z_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.net = ClassMLP(x_shape, classes, hidden, 2 * z_dim)
        self.z_dim = z_dim

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x, y).to(self.net.out.weight.dtype)
        return out[..., : self.z_dim], F.softplus(out[..., self.z_dim:]) + 1e-4

    def jax_function(self):
        """``fn(params, x, y)``: :meth:`forward` in JAX (float32; the JAX engine has no bfloat16 autocast)."""
        def fn(params, x, y):
            out = self.net.jax_apply(params, "net.", x, y)
            return out[..., : self.z_dim], _jax_softplus()(out[..., self.z_dim:]) + 1e-4

        return fn


class ClassDecoder(Network):
    """z, y -> the likelihood's parameters, shaped like x (Gaussian: (loc, scale), a learned scale per pixel)."""

    def __init__(self, z_dim: int, classes: int, x_shape: Sequence[int], hidden: Sequence[int], n_params: int):
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.net = ClassMLP((z_dim,), classes, hidden, math.prod(x_shape))
        self.log_scale = nn.Parameter(torch.zeros(math.prod(x_shape))) if n_params == 2 else None

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> Any:
        h = self.net(z, y).to(self.net.out.weight.dtype)
        out = h.reshape(h.shape[:-1] + self.x_shape)
        if self.log_scale is None:
            return out
        return out, torch.exp(self.log_scale).reshape(self.x_shape) + 0 * out

    def jax_function(self):
        """``fn(params, z, y)``: :meth:`forward` in JAX."""
        import jax.numpy as jnp

        def fn(params, z, y):
            h = self.net.jax_apply(params, "net.", z, y)
            out = h.reshape(h.shape[:-1] + self.x_shape)
            if self.log_scale is None:
                return out
            return out, jnp.exp(params["log_scale"]).reshape(self.x_shape) + 0 * out

        return fn


class Classifier(Network):
    """x -> the logits of q(y | x): an MLP with softplus hidden layers."""

    def __init__(self, x_shape: Sequence[int], classes: int, hidden: Sequence[int]):
        super().__init__()
        self.in_ndim = len(x_shape)
        widths = [math.prod(x_shape), *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(widths[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(-self.in_ndim)
        for layer in self.layers:
            h = F.softplus(layer(h))
        return self.out(h).to(self.out.weight.dtype)  # float32 again after bfloat16 autocast

    def jax_function(self):
        """``fn(params, x)``: :meth:`forward` in JAX."""
        def fn(params, x):
            h = x.reshape(x.shape[:x.ndim - self.in_ndim] + (-1,))
            for i in range(len(self.layers)):
                h = _jax_softplus()(_dense(params, f"layers.{i}", h))
            return _dense(params, "out", h)

        return fn


@dataclass(frozen=True)
class M2Config:
    x_shape: tuple[int, ...] = x_shape_option((1, 28, 28))
    z_dim: int = option(50, positive_int, "dimension of the latent z (the style the class leaves open)")
    likelihood: str = likelihood_option()
    hidden: tuple[int, ...] = option((500,), sizes, "hidden layer sizes of the encoder and the classifier (the "
                                     "decoder mirrors them)")
    classes: int = option(10, whole_at_least(2), "number of classes of the label y (0 .. classes-1)")
    label_column: str = option("y", column_name, "the data set's input column holding the label (bundled digits: y)")
    alpha: float = option(46.0, nonnegative_float, "weight of the classification loss -log q(y|x) of each labelled "
                          "example beside its bound (Pyro's ss-vae: 46; Kingma et al.'s alpha 0.1 N over N_l labels "
                          "is 0.1 N / N_l each)")
    y_guide: str = option("enumerate", one_of(Y_GUIDES, "y_guide"), "how training treats an unlabelled class: "
                          "enumerate (exact sum), sample (score function), relaxed (Gumbel-softmax)")
    temperature: float = option(0.5, positive_float, "temperature of the Gumbel-softmax relaxation (y_guide relaxed)")
    labelled_share: float = option(0.1, fraction, "least share of labelled rows in every training batch: where "
                                   "labels are rarer, each batch takes that many labelled rows, the labelled examples "
                                   "drawn again in turn; 0: batches are plain shuffles", absent=0.0)
    labelled_batches: str = option("mixed", one_of(LABELLED_BATCHES, "labelled_batches"), "where an epoch puts the "
                                   "labelled rows: mixed (into every batch, labelled_share), or apart (Pyro's ss-vae: "
                                   "in batches of their own, each row once an epoch, one such batch every N/N_l steps)",
                                   absent="mixed")
    grey_levels: bool = option(False, boolean, "Bernoulli targets of grey levels in [0, 1] (Pyro's ss-vae; train on "
                               "data not binarized): the cross-entropy is then no normalized likelihood, the bound no "
                               "log-likelihood", absent=False)
    precision: str = supported(option("float32", one_of(PRECISIONS, "precision"), "arithmetic of the networks' matrix "
                                      "products in training: float32, or bfloat16 (autocast; the densities and the "
                                      "weights stay float32; several times faster on CPUs with AMX and on recent "
                                      "GPUs; torch engine only)"),
                               engines=("torch",), feature="bfloat16 products",
                               why="they are torch's autocast, which the JAX objective does not have")

    def __post_init__(self) -> None:
        validate(self)


class M2(GenerativeModel):
    """The M2 pair: ``model(x, y)`` is p(y) p(z) p(x | y, z), ``guide(x, y)`` is q(y | x) q(z | x, y), y = −1
    where the label is missing."""

    name = "m2"
    Config = M2Config
    latent_sites = ("y", "z")
    #: Pyro's ss-vae example's batch, learning rate and epochs (Adam's β1 0.9 is the options' default already)
    train_defaults = {"epochs": 50, "batch_size": 200, "lr": 4.2e-4}
    #: ``ppgen train`` keeps the epoch of the best validation accuracy of q(y|x), as Pyro's example reports it
    select_by = "val_accuracy"
    select_by_words = "validation accuracy of q(y|x)"

    @classmethod
    def trains_on_grey_levels(cls, options: dict[str, Any]) -> bool:
        """With ``grey_levels`` the Bernoulli scores grey pixels: ``ppgen train`` leaves them grey."""
        return bool(options.get("grey_levels", M2Config.grey_levels))

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        c = self.config
        n_params = 2 if c.likelihood == "gaussian" else 1
        self.classifier = Classifier(c.x_shape, c.classes, c.hidden)
        self.encoder = ClassEncoder(c.x_shape, c.classes, c.z_dim, c.hidden)
        self.decoder = ClassDecoder(c.z_dim, c.classes, c.x_shape, c.hidden[::-1], n_params)
        self.register_buffer("prior_logits", torch.full((c.classes,), -math.log(c.classes)))

    @property
    def engine_preference(self) -> tuple[str, ...]:
        """Both engines train M2 (:meth:`objective`, :meth:`jax_objective`); ``engine="auto"`` takes the compiled JAX
        epoch where the decoder's output layer (first hidden width × pixels) is at most :data:`JAX_FIRST_UP_TO`, torch
        above it: there the float32 matrix products decide the time, and torch's are faster than XLA's on the CPU
        (CPU s/epoch, one thread, torch / JAX / Pyro loop: digits hidden 64: 0.09 / 0.03 / 0.17; digits hidden 256:
        0.12 / 0.08 / 0.21; MNIST hidden 100: 0.51 / 0.43 / 0.68; MNIST hidden 500: 1.48 / 1.73 / 1.91; docs/m2.md)."""
        c = self.config
        return ("jax", "torch") if c.hidden[0] * math.prod(c.x_shape) <= JAX_FIRST_UP_TO else ("torch", "jax")

    @property
    def inputs(self) -> tuple[str, ...]:
        """The one input column: the label (−1 where missing)."""
        return (self.config.label_column,)

    @property
    def metric_inputs(self) -> tuple[str, ...]:
        """The label column again: ``family_metrics`` scores q(y | x) against it."""
        return (self.config.label_column,)

    # -- the pair ---------------------------------------------------------------------------------
    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            label = pyro.sample("y", dist.Categorical(logits=self.prior_logits.expand(x.shape[0], -1)))
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.config.z_dim]).to_event(1))
            pyro.sample("x", self.observation(self.decoder(z, label)), obs=x)

    def observation(self, params: Any) -> Any:
        """p(x | y, z) as an event distribution; with ``grey_levels`` the Bernoulli scores grey levels in [0, 1] (its
        support check off): log p = Σ x log σ(l) + (1 − x) log(1 − σ(l))."""
        if self.config.grey_levels and self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=params, validate_args=False).to_event(len(self.x_shape))
        return observation_dist(self.likelihood, params, len(self.x_shape))

    @property
    def likelihood_note(self) -> str | None:
        """What ``ppgen evaluate`` says beside the bound: with ``grey_levels`` it is not a log-likelihood."""
        if self.config.grey_levels and self.likelihood == "bernoulli":
            return ("Bernoulli cross-entropy on grey levels (grey_levels): the bound is no log-likelihood of binary "
                    "data and no normalized density of grey levels; compare it only with runs trained the same way")
        return None

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("classifier", self.classifier)
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            label = pyro.sample("y", dist.Categorical(probs=self.class_probs(x, y)),
                                infer={"enumerate": "parallel"})
            loc, scale = self.encoder(x, label)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def class_probs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The guide's q(y | x) per example: the point mass on the label where there is one, else softmax(π(x))."""
        probs = F.softmax(self.classifier(x), -1)
        known = (y != MISSING_LABEL).unsqueeze(-1)
        return torch.where(known, F.one_hot(y.clamp(min=0), self.config.classes).to(probs.dtype), probs)

    def epoch_order(self, n: int, inputs: tuple[torch.Tensor, ...], batch: int, steps: int,
                    generator: torch.Generator) -> torch.Tensor:
        """Every batch holds k = ⌈``labelled_share`` · batch⌉ labelled rows where the labels are rarer than that: the
        labelled examples in turn (each epoch reshuffled, drawn again as often as the steps need them), beside
        batch − k unlabelled rows each seen at most once an epoch (those that do not fit wait for a later epoch's
        shuffle); rows in random order within a batch. Otherwise (labels common enough, all or none of the rows
        labelled, ``labelled_share`` 0) the plain shuffle. With 100 labels of 50,000 digits at batch 200 each
        labelled digit is seen 50 times an epoch instead of once, every step has its classification term, and
        q(y | x) learns from the labels from the first epoch (module docs). ``labelled_batches="apart"``: Pyro's
        schedule instead (:func:`labelled_apart`)."""
        y = inputs[0].cpu()
        labelled = (y != MISSING_LABEL).nonzero().squeeze(-1)
        unlabelled = (y == MISSING_LABEL).nonzero().squeeze(-1)
        if self.config.labelled_batches == "apart":
            return labelled_apart(labelled, unlabelled, batch, steps, generator)
        k = min(batch - 1, math.ceil(self.config.labelled_share * batch))
        if k <= 0 or not len(labelled) or not len(unlabelled) or len(labelled) >= self.config.labelled_share * n:
            return torch.randperm(n, generator=generator)
        rows_l = _in_turn(labelled, steps * k, generator).view(steps, k)
        rows_u = _in_turn(unlabelled, steps * (batch - k), generator).view(steps, batch - k)
        both = torch.cat([rows_u, rows_l], 1)
        mixed = torch.rand(steps, batch, generator=generator).argsort(1)
        return both.gather(1, mixed).flatten()

    # -- the bound ---------------------------------------------------------------------------------
    def elbo_given_class(self, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """L_z(x, y) = log p(x | y, z) + log p(z) − log q(z | x, y) at z = μ(x, y) + σ(x, y) ε (one reparameterized
        draw); ``y`` class indices or soft one-hots, broadcasting against x's rows like ``eps`` does."""
        loc, scale = self.encoder(x, y)
        z = loc + scale * eps
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        return self.log_likelihood(x, self.decoder(z, y)) + log_prior - log_q

    def log_likelihood(self, x: torch.Tensor, params: Any) -> torch.Tensor:
        """log p(x | y, z) summed over x's dims; for the Bernoulli likelihood straight from the logits,
        −BCE(logits, x) = Σ x l − softplus(l) (the value of the distribution's ``log_prob``, without building the
        distribution, checking x or expanding it first: half the time of that call at 10 × 200 × 784)."""
        if self.likelihood != "bernoulli":
            return observation_dist(self.likelihood, params, len(self.x_shape)).log_prob(x)
        bce = F.binary_cross_entropy_with_logits(params, x.expand_as(params), reduction="none")
        return -bce.flatten(-len(self.x_shape)).sum(-1)

    def labelled_elbo(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """L(x, y) per example, one draw of z."""
        eps = torch.randn(x.shape[0], self.config.z_dim, device=x.device)
        return self.elbo_given_class(x, y, eps) + self.prior_logits[y]

    def enumerated_elbo(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """U(x) = Σ_y q(y | x)(L(x, y) − log q(y | x)) per example, the sum over the K classes exact (one draw of z
        per class: ``eps`` shaped (K, rows, z_dim), standard normal by default)."""
        k = self.config.classes
        log_q = F.log_softmax(self.classifier(x), -1)  # (rows, K)
        if eps is None:
            eps = torch.randn(k, x.shape[0], self.config.z_dim, device=x.device)
        every = torch.arange(k, device=x.device).unsqueeze(-1)  # (K, 1): each class beside every row
        per_class = self.elbo_given_class(x, every, eps).T + self.prior_logits  # (rows, K)
        return (log_q.exp() * (per_class - log_q)).sum(-1)

    def sampled_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """One draw y ~ q(y | x): L(x, y) − log q(y | x) per example, as a surrogate whose value is that estimate
        and whose gradient adds the score-function term (L − log q) ∇ log q(y | x)."""
        log_q = F.log_softmax(self.classifier(x), -1)
        y = torch.multinomial(log_q.exp().detach(), 1).squeeze(-1)
        log_qy = log_q.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        value = self.labelled_elbo(x, y) - log_qy
        score = value.detach() * log_qy
        return value + score - score.detach()

    def relaxed_elbo(self, x: torch.Tensor, temperature: float | None = None,
                     gumbel: torch.Tensor | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
        """R_τ(x) (module docs) per example, one reparameterized Concrete draw ỹ = softmax((log π + g)/τ) of
        temperature τ (default the config's): ``gumbel`` (rows, K) and ``eps`` (rows, z_dim) fix the noise."""
        tau = self.config.temperature if temperature is None else temperature
        log_q = F.log_softmax(self.classifier(x), -1)
        gumbel, eps = self._noise(x, gumbel, eps)
        soft = F.softmax((log_q + gumbel) / tau, -1)
        return self.elbo_given_class(x, soft, eps) + self._categorical_terms(log_q)

    def gumbel_max_elbo(self, x: torch.Tensor, gumbel: torch.Tensor | None = None,
                        eps: torch.Tensor | None = None) -> torch.Tensor:
        """R_0(x): the relaxed estimate's draws at τ → 0, ỹ = one-hot(argmax(log π + g)), a draw y ~ q(y | x)
        (Gumbel-max): an unbiased estimate of U(x) (with the categorical terms in closed form)."""
        log_q = F.log_softmax(self.classifier(x), -1)
        gumbel, eps = self._noise(x, gumbel, eps)
        y = (log_q + gumbel).argmax(-1)
        return self.elbo_given_class(x, y, eps) + self._categorical_terms(log_q)

    def _noise(self, x: torch.Tensor, gumbel: torch.Tensor | None, eps: torch.Tensor | None):
        k = self.config.classes
        if gumbel is None:
            gumbel = -torch.log(-torch.log(torch.rand(x.shape[0], k, device=x.device).clamp(1e-20, 1.0)))
        if eps is None:
            eps = torch.randn(x.shape[0], self.config.z_dim, device=x.device)
        return gumbel, eps

    def _categorical_terms(self, log_q: torch.Tensor) -> torch.Tensor:
        """Σ_y q(y | x)(log p(y) − log q(y | x)) = −KL(q(y | x) ‖ p(y)), exactly."""
        return (log_q.exp() * (self.prior_logits - log_q)).sum(-1)

    def unlabelled_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """The training estimate for unlabelled rows under the configured ``y_guide``."""
        if self.config.y_guide == "sample":
            return self.sampled_elbo(x)
        if self.config.y_guide == "relaxed":
            return self.relaxed_elbo(x)
        return self.enumerated_elbo(x)

    def objective(self, x: Any, y: Any) -> Any:
        """Per example: −L(x, y) + α (−log q(y | x)) on a labelled row, minus the ``y_guide`` estimate of U(x) on an
        unlabelled one (module docs); the networks' products in bfloat16 where ``precision`` says so. On JAX arrays
        (the JAX engine) :meth:`jax_objective` at fresh draws."""
        if is_jax(x):
            return self.jax_objective(x, y, *self._jax_noise(x))
        with torch.autocast(x.device.type, torch.bfloat16, enabled=self.config.precision == "bfloat16"):
            return self._objective(x, y)

    def _objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        known = y != MISSING_LABEL
        out = torch.zeros(x.shape[0], device=x.device, dtype=self.prior_logits.dtype)
        if known.any():
            xl, yl = x[known], y[known]
            loss = -self.labelled_elbo(xl, yl)
            if self.config.alpha > 0:
                loss = loss + self.config.alpha * F.cross_entropy(self.classifier(xl), yl, reduction="none")
            out = out.index_put((known.nonzero().squeeze(-1),), loss)
        if not known.all():
            out = out.index_put(((~known).nonzero().squeeze(-1),), -self.unlabelled_elbo(x[~known]))
        return out

    # -- the objective on JAX ---------------------------------------------------------------------------
    def _jax_noise(self, x: Any) -> tuple[Any, Any]:
        """The draws of :meth:`jax_objective` for ``y_guide``, from the NumPyro seed (:func:`ppgen.ppl.normal`):
        ε shaped (rows, K, z_dim) when enumerating (one z per class), else (rows, z_dim) and Gumbel noise
        (rows, K)."""
        import jax.numpy as jnp

        c, rows = self.config, x.shape[0]
        if c.y_guide == "enumerate":
            return ppl.normal((rows, c.classes, c.z_dim), like=x), None
        u = ppl.uniform((rows, c.classes), like=x)
        return ppl.normal((rows, c.z_dim), like=x), -jnp.log(-jnp.log(jnp.clip(u, 1e-20, 1.0)))

    def jax_objective(self, x: Any, y: Any, eps: Any, gumbel: Any = None) -> Any:
        """:meth:`objective` per example on JAX arrays at given draws, every row through the same fixed shapes
        (labelled and unlabelled rows selected with ``where``, not split): ``eps`` (rows, K, z_dim) for
        ``y_guide="enumerate"`` — class k of row n takes ε[n, k], a labelled row its label's —, else ``eps``
        (rows, z_dim) with ``gumbel`` (rows, K): ``sample`` draws y = argmax(log π(x) + g) (Gumbel-max, a draw of
        q(y | x)), ``relaxed`` takes ỹ = softmax((log π(x) + g)/τ); a labelled row takes its label (one-hot). The
        weights are those ``pyro.module`` binds on NumPyro (the JAX engine's param sites), else the torch ones."""
        import jax
        import jax.numpy as jnp

        if ppl.get_backend() != "pyro":  # NumPyro binds the weights here; the torch engine trains pair.parameters()
            for name in ("classifier", "encoder", "decoder"):
                pyro.module(name, getattr(self, name))
        c = self.config
        prior = jnp.asarray(self.prior_logits.detach().cpu().numpy())
        known = y != MISSING_LABEL
        label = jnp.where(known, y, 0)
        log_q = jax.nn.log_softmax(self.classifier(x), -1)  # (rows, K)
        loss_labelled = c.alpha * -_at(log_q, label) if c.alpha > 0 else 0.0
        if c.y_guide == "enumerate":
            every = jnp.arange(c.classes)[:, None]  # (K, 1): each class beside every row
            per_class = self._jax_elbo_given_class(x, every, jnp.swapaxes(eps, 0, 1)).T + prior  # (rows, K)
            unlabelled = (jnp.exp(log_q) * (per_class - log_q)).sum(-1)
            return jnp.where(known, -_at(per_class, label) + loss_labelled, -unlabelled)
        if c.y_guide == "sample":
            drawn = jnp.where(known, label, jnp.argmax(log_q + gumbel, -1))
            bound = self._jax_elbo_given_class(x, drawn, eps) + prior[drawn]
            log_qy = _at(log_q, drawn)
            value = bound - log_qy  # the surrogate: that value, and the score-function term in its gradient
            score = jax.lax.stop_gradient(value) * log_qy
            return jnp.where(known, -bound + loss_labelled, -(value + score - jax.lax.stop_gradient(score)))
        soft = jax.nn.softmax((log_q + gumbel) / c.temperature, -1)
        soft = jnp.where(known[:, None], jax.nn.one_hot(label, c.classes, dtype=soft.dtype), soft)
        bound_z = self._jax_elbo_given_class(x, soft, eps)
        categorical = (jnp.exp(log_q) * (prior - log_q)).sum(-1)
        return jnp.where(known, -(bound_z + prior[label]) + loss_labelled, -(bound_z + categorical))

    def _jax_elbo_given_class(self, x: Any, y: Any, eps: Any) -> Any:
        """:meth:`elbo_given_class` on JAX arrays (the same terms, the same order of operations)."""
        import jax.numpy as jnp

        loc, scale = self.encoder(x, y)
        z = loc + scale * eps
        half_log_2pi = 0.5 * math.log(2 * math.pi)
        log_q = (-((z - loc) ** 2) / (2 * scale**2) - jnp.log(scale) - half_log_2pi).sum(-1)
        log_prior = (-(z**2) / 2 - half_log_2pi).sum(-1)
        params = self.decoder(z, y)
        if self.likelihood == "bernoulli":  # Σ x l − softplus(l), as log_likelihood
            logits = params.reshape(params.shape[:params.ndim - len(self.x_shape)] + (-1,))  # flat pixels: no copies
            flat_x = x.reshape(x.shape[:x.ndim - len(self.x_shape)] + (-1,))
            log_lik = (flat_x * logits - _jax_softplus()(logits)).sum(-1)
        else:
            log_lik = observation_dist(self.likelihood, params, len(self.x_shape)).log_prob(x)
        return log_lik + log_prior - log_q

    def closed_form_elbo(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The bound per example with the class summed exactly: L(x, y) where labelled, U(x) where not."""
        known = y != MISSING_LABEL
        out = torch.zeros(x.shape[0], device=x.device, dtype=self.prior_logits.dtype)
        if known.any():
            out[known] = self.labelled_elbo(x[known], y[known])
        if not known.all():
            out[~known] = self.enumerated_elbo(x[~known])
        return out

    # -- checks, figures ---------------------------------------------------------------------------
    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        """As every pair's; with ``grey_levels`` a Bernoulli likelihood takes values anywhere in [0, 1]."""
        if not (self.config.grey_levels and self.likelihood == "bernoulli"):
            return super().check_data(x, what)
        check_observations(x, self.x_shape, "gaussian", what)  # shape, finite values
        if ((x < 0) | (x > 1)).any():
            raise UserError(f"{what} lies outside [0, 1] but grey_levels scores grey levels in [0, 1]; rescale it")

    def check_inputs(self, x: torch.Tensor, inputs: tuple[torch.Tensor, ...], what: str = "data") -> None:
        """The label column: integers in 0..classes−1, or −1 where missing."""
        super().check_inputs(x, inputs, what)
        check_label_column(inputs[0], self.config.label_column, self.config.classes, what)

    def family_metrics(self, x: torch.Tensor, *columns: torch.Tensor) -> dict[str, float]:
        """Accuracy of argmax q(y | x) on the labelled examples of ``x`` (when given their labels) and the mean
        bound U(x) with the labels hidden."""
        out = {}
        with torch.no_grad():
            if columns:
                (y,) = columns
                known = y != MISSING_LABEL
                if known.any():
                    predicted = self.classify(x[known])
                    out["accuracy"] = float((predicted == y[known]).float().mean())
            out["elbo_unlabelled"] = float(torch.cat([self.enumerated_elbo(x[r:r + 500])
                                                      for r in range(0, x.shape[0], 500)]).mean())
        return out

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """argmax_y q(y | x)."""
        return self.classifier(x).argmax(-1)

    def labels(self, n: int, labels: Any = None) -> torch.Tensor:
        """``n`` labels on the model's device (:func:`ppgen.models.cvae.class_labels`)."""
        return class_labels(n, labels, self.config.classes, self.prior_logits.device)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """E[x | y, z]."""
        return observation_mean(self.likelihood, self.decoder(z, y))

    def generate(self, n: int, labels: Any = None) -> torch.Tensor:
        """n draws of E[x | y, z] at z ~ p(z), for the given label(s) (default: each class in turn)."""
        y = self.labels(n, labels)
        return self.decode(torch.randn(n, self.config.z_dim, device=y.device), y)

    def encode(self, x: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z | x, y): y the label where given, else argmax q(y | x)."""
        y = self.classify(x)
        if inputs:
            y = torch.where(inputs[0] != MISSING_LABEL, inputs[0], y)
        return self.encoder(x, y)

    def reconstruct(self, x: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """E[x | y, z] at the mean of q(z | x, y)."""
        y = self.classify(x)
        if inputs:
            y = torch.where(inputs[0] != MISSING_LABEL, inputs[0], y)
        return self.decode(self.encoder(x, y)[0], y)

    def style_transfer(self, x: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """Analogies (Kingma et al. 2014, Fig. 1): z = mean of q(z | x, y) of each example (its style), decoded
        under every class: (examples, classes, *x_shape), row i column k = E[x | y=k, z_i]."""
        loc, _ = self.encode(x, *inputs)
        every = torch.arange(self.config.classes, device=x.device)
        return self.decode(loc.unsqueeze(1).expand(-1, len(every), -1), every)


def labelled_apart(labelled: torch.Tensor, unlabelled: torch.Tensor, batch: int, steps: int,
                   generator: torch.Generator) -> torch.Tensor:
    """One epoch's rows in step order with the labelled rows in batches of their own, as Pyro's ss-vae example
    schedules them: the N_l labelled rows (shuffled) fill ⌈N_l / batch⌉ batches (the last one topped up with
    unlabelled rows), placed at steps 1, 1 + p, 1 + 2p, ... with p = ⌊N / N_l⌋ (N = N_l + N_u; where that runs past
    the epoch, the last free steps), the shuffled unlabelled rows in the other steps; every row at most once an
    epoch. Without labelled or without unlabelled rows, a plain shuffle."""
    n = len(labelled) + len(unlabelled)
    if not len(labelled) or not len(unlabelled):
        return torch.randperm(n, generator=generator)
    k = -(-len(labelled) // batch)
    period = n // len(labelled)
    at = [min(1 + j * period, steps - k + j) for j in range(k)]
    rows = labelled[torch.randperm(len(labelled), generator=generator)]
    rest = unlabelled[torch.randperm(len(unlabelled), generator=generator)]
    top_up = k * batch - len(rows)
    rows, rest = torch.cat([rows, rest[:top_up]]), rest[top_up:]
    is_labelled = torch.zeros(steps, dtype=torch.bool)
    is_labelled[at] = True
    order = torch.empty(steps, batch, dtype=rows.dtype)
    order[is_labelled] = rows.view(k, batch)
    free = int((~is_labelled).sum()) * batch
    order[~is_labelled] = rest[:free].view(-1, batch)
    return torch.cat([order.flatten(), rest[free:]])
def _at(table: Any, index: Any) -> Any:
    """table[n, index[n]] for every row n of a JAX array."""
    import jax.numpy as jnp

    return jnp.take_along_axis(table, index[:, None], -1)[:, 0]


def _in_turn(rows: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` of ``rows``: shuffles of them one after another (each row once per shuffle)."""
    rounds = -(-count // len(rows))
    return torch.cat([rows[torch.randperm(len(rows), generator=generator)] for _ in range(rounds)])[:count]


def kingma_alpha(examples: int, labelled: int, fraction: float = 0.1) -> float:
    """The weight per labelled example of Kingma et al.'s (2014) classification term α E_labelled[−log q(y | x)] with
    α = ``fraction`` · N (their 0.1 N): α / N_l = fraction · N / N_l, for N training examples of which N_l are
    labelled."""
    if labelled < 1 or examples < labelled:
        raise UserError(f"kingma_alpha needs 1 <= labelled <= examples, got {labelled} of {examples}")
    return fraction * examples / labelled


def check_label_column(y: torch.Tensor, name: str, classes: int, what: str = "data") -> None:
    """A label column: one integer per example, each in 0..classes−1 or −1 (missing); else one line saying what to
    do."""
    if y.is_floating_point() or y.dtype == torch.bool or y.ndim != 1:
        raise UserError(f"{what}: the label column {name!r} must hold one class index per example (integers, -1 "
                        f"where missing), got {y.dtype} shaped {tuple(y.shape)}; save the labels as integers")
    present = y[y != MISSING_LABEL]
    if len(present) and (int(present.min()) < 0 or int(present.max()) >= classes):
        raise UserError(f"{what}: labels {name!r} run from {int(present.min())} to {int(present.max())} but the model "
                        f"has classes={classes} (labels 0..{classes - 1}, -1 missing); build it with "
                        f"--classes {int(present.max()) + 1} or fix the labels")
