"""Plain baselines the ppgen benchmarks run beside ppgen, in the same process.

* :class:`TutorialVAE` and :func:`pyro_tutorial_epoch` — the VAE exactly as Pyro's
  VAE tutorial (https://pyro.ai/examples/vae.html) writes it: ``Encoder``/``Decoder``
  modules with softplus hidden units, ``exp`` for the encoder scale, ``sigmoid`` for
  the Bernoulli probabilities, a ``DataLoader`` over the training set, ``SVI`` with
  ``Trace_ELBO`` and ``pyro.optim.Adam``. Like the tutorial, distribution argument
  validation is switched off (``pyro.distributions.enable_validation(False)`` there;
  a scoped ``validation_enabled(False)`` here) and Pyro's inference-time validation is
  left at its default (on).
* :class:`TorchVAE` and :func:`torch_epoch` — a hand-written PyTorch loop: the
  same 784-400-50 networks as ``ppgen.nn.MLPEncoder``/``MLPDecoder`` (softplus
  hidden units, softplus scale + 1e-4, Bernoulli logits), the reparameterized
  ELBO with the Gaussian KL in closed form, data indexed from an in-memory tensor.
* :func:`numpyro_epoch_fn` — written as NumPyro's own VAE example (``examples/vae.py``:
  stax networks through ``numpyro.module``, ``SVI`` + ``Trace_ELBO``) with ppgen's
  parametrization (softplus scale + 1e-4, Bernoulli logits) and the whole epoch under
  ``jax.jit`` (``lax.scan`` over minibatches).
* :func:`spread` — the summary of per-round ppgen/baseline ratios the alternating benchmarks print.
"""

from __future__ import annotations

import math
import statistics
from contextlib import ExitStack

import pyro
import pyro.distributions as pdist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.nn import functional as F

X_DIM = 784


# --------------------------------------------------------------------------- Pyro tutorial
class Encoder(nn.Module):
    def __init__(self, z_dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(X_DIM, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        x = x.reshape(-1, X_DIM)
        hidden = self.softplus(self.fc1(x))
        z_loc = self.fc21(hidden)
        z_scale = torch.exp(self.fc22(hidden))
        return z_loc, z_scale


class Decoder(nn.Module):
    def __init__(self, z_dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, X_DIM)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        hidden = self.softplus(self.fc1(z))
        return self.sigmoid(self.fc21(hidden))


class TutorialVAE(nn.Module):
    """Pyro tutorial's VAE. Also usable as a pair by ``ppgen.evaluation`` (it has the
    ``model``/``guide``/``max_plate_nesting``/``x_shape``/``inputs``/``has_closed_form_elbo``/``guide_draws``
    that the estimators read)."""

    max_plate_nesting = 1
    data_plate = "data"
    x_shape = (X_DIM,)
    inputs: tuple[str, ...] = ()  # no input columns beside x
    has_closed_form_elbo = False  # the estimators trace model and guide

    @staticmethod
    def guide_draws(k: int) -> int:
        """A Gaussian q: an estimator averaging over k draws needs k."""
        return k

    def __init__(self, z_dim: int = 50, hidden_dim: int = 400):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim)
        self.decoder = Decoder(z_dim, hidden_dim)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", pdist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", pdist.Bernoulli(loc_img, validate_args=False).to_event(1), obs=x.reshape(-1, X_DIM))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", pdist.Normal(z_loc, z_scale).to_event(1))


def make_pyro_tutorial(z_dim: int = 50, hidden_dim: int = 400, lr: float = 1e-3, seed: int = 0):
    """A fresh tutorial VAE and its ``SVI`` object (clears Pyro's global param store, as the tutorial does)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = TutorialVAE(z_dim, hidden_dim)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": lr}), loss=Trace_ELBO())
    return vae, svi


def make_loader(x: torch.Tensor, batch_size: int = 256, seed: int = 0) -> torch.utils.data.DataLoader:
    """The tutorial's ``DataLoader(..., batch_size, shuffle=True)`` over (image, label) pairs, no workers."""
    labels = torch.zeros(len(x), dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=batch_size,
                                       shuffle=True, generator=g)


def pyro_tutorial_epoch(svi: SVI, loader, all_validation_off: bool = False) -> tuple[float, int]:
    """One pass of the tutorial's ``train``: returns (summed loss, images seen)."""
    with ExitStack() as stack:
        stack.enter_context(pdist.validation_enabled(False))  # the tutorial's enable_validation(False)
        if all_validation_off:
            stack.enter_context(pyro.validation_enabled(False))
        epoch_loss, n = 0.0, 0
        for x, _ in loader:
            epoch_loss += svi.step(x)
            n += len(x)
    return epoch_loss, n


# --------------------------------------------------------------------------- hand-written torch
class TorchVAE(nn.Module):
    """784-400-50 VAE with ppgen.nn's parametrization, trained by :func:`torch_epoch`."""

    def __init__(self, z_dim: int = 50, hidden_dim: int = 400):
        super().__init__()
        self.enc = nn.Linear(X_DIM, hidden_dim)
        self.loc = nn.Linear(hidden_dim, z_dim)
        self.raw_scale = nn.Linear(hidden_dim, z_dim)
        self.dec1 = nn.Linear(z_dim, hidden_dim)
        self.dec2 = nn.Linear(hidden_dim, X_DIM)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO summed over the batch: −E_q log p(x|z) (one draw) + KL(q‖N(0, I)) in closed form."""
        h = F.softplus(self.enc(x))
        loc, scale = self.loc(h), F.softplus(self.raw_scale(h)) + 1e-4
        z = loc + scale * torch.randn_like(loc)
        logits = self.dec2(F.softplus(self.dec1(z)))
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1.0 - 2.0 * scale.log()).sum()
        return rec + kl


def torch_epoch(vae: TorchVAE, optimizer, x: torch.Tensor, batch_size: int, generator: torch.Generator,
                step=None) -> tuple[float, int]:
    """One epoch over ``x`` (flattened, in memory), reshuffled; drops the last partial batch."""
    n = len(x)
    order = torch.randperm(n, generator=generator)
    total, steps = 0.0, n // batch_size
    for i in range(steps):
        xb = x[order[i * batch_size : (i + 1) * batch_size]]
        if step is None:
            optimizer.zero_grad()
            loss = vae.loss(xb)
            loss.backward()
            optimizer.step()
        else:
            loss = step(xb)
        total += loss.item()
    return total, steps * batch_size


def compiled_torch_step(vae: TorchVAE, optimizer):
    """The whole step (forward, backward, Adam) under one ``torch.compile``."""

    @torch.compile(fullgraph=False)
    def step(xb):
        optimizer.zero_grad(set_to_none=True)
        loss = vae.loss(xb)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


# --------------------------------------------------------------------------- NumPyro
def numpyro_epoch_fn(x_train, z_dim: int = 50, hidden_dim: int = 400, batch_size: int = 256, lr: float = 1e-3,
                     seed: int = 0):
    """The NumPyro VAE (see module docs) with the whole epoch jitted.

    Returns ``(epoch, state)``: ``epoch(state, key) -> (state, summed loss)`` runs one
    reshuffled pass (``lax.scan`` over ``n // batch_size`` minibatches of ``svi.update``).
    """
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist
    from jax.example_libraries import stax
    from numpyro.infer import SVI as NSVI
    from numpyro.infer import Trace_ELBO as NTrace_ELBO

    encoder_nn = stax.serial(
        stax.Dense(hidden_dim), stax.Softplus, stax.FanOut(2),
        stax.parallel(stax.Dense(z_dim), stax.serial(stax.Dense(z_dim), stax.Softplus)),
    )
    decoder_nn = stax.serial(stax.Dense(hidden_dim), stax.Softplus, stax.Dense(X_DIM))

    def model(batch):
        decode = numpyro.module("decoder", decoder_nn, (batch_size, z_dim))
        with numpyro.plate("batch", batch.shape[0]):
            z = numpyro.sample("z", ndist.Normal(0.0, 1.0).expand([z_dim]).to_event(1))
            numpyro.sample("obs", ndist.Bernoulli(logits=decode(z)).to_event(1), obs=batch)

    def guide(batch):
        encode = numpyro.module("encoder", encoder_nn, (batch_size, X_DIM))
        loc, raw = encode(batch)
        with numpyro.plate("batch", batch.shape[0]):
            numpyro.sample("z", ndist.Normal(loc, raw + 1e-4).to_event(1))

    svi = NSVI(model, guide, numpyro.optim.Adam(lr), NTrace_ELBO())
    x = jnp.asarray(x_train.reshape(len(x_train), X_DIM).numpy())
    steps = len(x) // batch_size
    state = svi.init(jax.random.PRNGKey(seed), x[:batch_size])

    @jax.jit
    def epoch(state, key):
        idx = jax.random.permutation(key, len(x))[: steps * batch_size].reshape(steps, batch_size)

        def body(s, i):
            s, loss = svi.update(s, x[i])
            return s, loss

        state, losses = jax.lax.scan(body, state, idx)
        return state, losses.sum()

    return epoch, state


def images_per_s(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else math.nan


def spread(ratios: list[float]) -> dict:
    """Median, quartiles and range of per-round ratios, and a bootstrap 95% interval of their median."""
    q = statistics.quantiles(ratios, n=4)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor(ratios)
    boot = t[torch.randint(len(t), (2000, len(t)), generator=g)].median(1).values
    return {"median": statistics.median(ratios), "q1": q[0], "q3": q[2], "min": min(ratios), "max": max(ratios),
            "ci95": [float(boot.quantile(0.025)), float(boot.quantile(0.975))], "rounds": len(ratios)}
