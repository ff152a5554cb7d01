r"""SVI in Pyro: maximize an ELBO over the pair's networks with Adam.

Objectives (``elbo=``):

* ``"trace"`` — Pyro's ``Trace_ELBO``: log p(x, z) − log q(z|x) at z ~ q.
* ``"analytic"`` — Pyro's ``TraceMeanField_ELBO``: E_q[log p(x|z)] − KL(q‖p) with the KL
  in closed form where Pyro has it (Gaussian q and prior).
* ``"iwae"`` — Pyro's ``RenyiELBO(alpha=0)``, the IWAE bound of Burda et al. (2016):
  E[log (1/K) Σ_k p(x, z_k)/q(z_k|x)] with K = ``num_particles``, vectorized.
* ``free_bits=λ`` (any of the above) — Kingma et al. (2016): per latent dimension,
  the KL term is max(λ, KL_j averaged over the batch), so no unit is pushed all the
  way to the prior. Pyro has no such estimator; ``FreeBitsELBO`` is ppgen's.

KL weight: ``beta`` scales every latent site (β-VAE), and ``anneal_epochs`` warms β up
linearly from 0 (Bowman et al., 2016; Sønderby et al., 2016), applied as a Pyro
``scale`` handler on latent sites only.

The loop keeps all data in memory (no DataLoader), reshuffles each epoch with a
generator seeded by (seed, epoch) and reseeds torch's RNG at the start of every
epoch, so resuming from an epoch checkpoint reproduces an uninterrupted run.
A NaN or infinite loss stops training, restores the last good epoch, and says so.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions import Independent, Normal
from pyro.distributions.kl import kl_divergence
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ppgen.errors import UserError
from ppgen.inference.fit import Fit, register

ELBOS = ("trace", "analytic", "iwae")


class ScaleLatents(Messenger):
    """Multiply the log-density of every *latent* sample site by ``factor`` (β)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.factor


def _unwrap(fn) -> tuple[Any, int]:
    extra = 0
    while isinstance(fn, Independent):
        extra += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, extra


class FreeBitsELBO:
    """ELBO with the free-bits KL floor of Kingma et al. (2016), one floor per latent dimension.

    loss = −Σ_obs log p(x|z) + β Σ_sites Σ_j max(λ, mean_batch KL_j) · B.
    KL_j is closed-form for Normal q and p, else the single-sample log q − log p.
    """

    def __init__(self, free_bits: float):
        self.free_bits = free_bits

    def differentiable_loss(self, model: Callable, guide: Callable, *args) -> torch.Tensor:
        guide_tr = poutine.trace(guide).get_trace(*args)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args)
        loss = 0.0
        for name, site in model_tr.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):  # a plate's subsample site is no latent
                continue
            if site["is_observed"]:
                loss = loss - site["fn"].log_prob(site["value"]).sum() * site["scale"]
                continue
            q_site = guide_tr.nodes[name]
            q, q_extra = _unwrap(q_site["fn"])
            p, _ = _unwrap(site["fn"])
            if isinstance(q, Normal) and isinstance(p, Normal):
                kl = kl_divergence(q, p.expand(q.batch_shape))  # (..., B, dims)
                batch_dims = kl.dim() - q_extra
                per_dim = kl.reshape(kl.shape[:batch_dims] + (-1,))
            else:
                value = q_site["value"]
                per_dim = (q_site["fn"].log_prob(value) - site["fn"].log_prob(value)).unsqueeze(-1)
            n = per_dim.reshape(-1, per_dim.shape[-1]).shape[0]
            floored = torch.clamp(per_dim.reshape(-1, per_dim.shape[-1]).mean(0), min=self.free_bits)
            loss = loss + floored.sum() * n * q_site["scale"]
        return loss


def make_elbo(name: str, num_particles: int, max_plate_nesting: int, free_bits: float = 0.0):
    """The Pyro ELBO object for ``name`` (see module docs)."""
    if free_bits > 0:
        return FreeBitsELBO(free_bits)
    if name == "trace":
        return Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                          max_plate_nesting=max_plate_nesting)
    if name == "analytic":
        return TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                                   max_plate_nesting=max_plate_nesting)
    if name == "iwae":
        if num_particles < 2:
            raise UserError("the IWAE objective needs num_particles >= 2 (e.g. --particles 5)")
        return RenyiELBO(alpha=0.0, num_particles=num_particles, vectorize_particles=True,
                         max_plate_nesting=max_plate_nesting)
    raise UserError(f"unknown ELBO {name!r}; choose one of {', '.join(ELBOS)}")


def _loss_and_grads(loss_fn, model, guide, x) -> float:
    """Backpropagate the negative ELBO into the networks' ``.grad``; return its value."""
    if hasattr(loss_fn, "differentiable_loss"):
        loss = loss_fn.differentiable_loss(model, guide, x)
        loss.backward()
        return loss.item()
    return float(loss_fn.loss_and_grads(model, guide, x))  # RenyiELBO: backward happens inside


def beta_at(epoch: int, step: int, steps_per_epoch: int, beta: float, anneal_epochs: float) -> float:
    """Linear KL warm-up from 0 to ``beta`` over ``anneal_epochs`` epochs."""
    if anneal_epochs <= 0:
        return beta
    progress = (epoch + step / steps_per_epoch) / anneal_epochs
    return beta * min(1.0, progress)


def make_adam(params, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel where torch has one for the device (CPU and CUDA in torch >= 2.4).

    Same update rule as the default implementation; one kernel for all parameters costs
    a third of the multi-tensor (``foreach``) version per step on CPU, which for a
    784-400-50 VAE at batch 256 is ~10% of the step (benchmarks/svi_vae.py).
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.Adam(params, lr=lr, foreach=True)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**62)


def check_options(epochs: int, batch_size: int, lr: float) -> None:
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise UserError("epochs and batch size must be positive integers and the learning rate positive")


def loss_stop_message(value: float, epoch: int, step: int) -> str:
    """``fit.stopped`` when the loss of step ``step`` (0-based) of epoch ``epoch`` (0-based) is not finite."""
    return (f"loss became {value} at epoch {epoch + 1}, step {step + 1}; restored the weights "
            f"of epoch {epoch}. Lower the learning rate (--lr) or check the data")


def weights_stop_message(epoch: int) -> str:
    return (f"weights became NaN or infinite in epoch {epoch + 1}; restored the weights of epoch "
            f"{epoch}. Lower the learning rate (--lr) or check the data")


def resume_into(fit: Fit, resume: dict) -> None:
    """Take the history and backend state of checkpoint ``resume`` (the caller loads weights and optimizer)."""
    fit.history = list(resume["history"])
    fit.state = dict(resume["state"])


def end_epoch(fit: Fit, row: dict, optimizer_state: Any, callback: Callable[[Fit], dict | None] | None,
              monitor: str | None) -> None:
    """Record epoch ``row["epoch"]``: state, history row, held-out metrics, best-epoch weights.

    Shared by both SVI engines; the caller keeps its last good weights and calls ``on_epoch_end``.
    """
    fit.state = {**fit.state, "epoch": row["epoch"], "optimizer": optimizer_state}
    fit.history.append(row)
    if callback is not None:
        row.update(callback(fit) or {})
    if monitor is not None and monitor in row:
        best = fit.state.get("best_score")
        if best is None or row[monitor] > best:
            fit.state["best_score"] = row[monitor]
            fit.state["best_epoch"] = row["epoch"]
            fit.state["best"] = copy.deepcopy(fit.pair.state_dict())


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not enabled, mininterval=0.5, file=sys.stderr)


@register("svi")
def fit_svi(
    pair,
    data,
    *,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 1e-3,
    elbo: str = "trace",
    num_particles: int = 1,
    beta: float = 1.0,
    anneal_epochs: float = 0.0,
    free_bits: float = 0.0,
    seed: int = 0,
    device: str = "cpu",
    progress: bool | None = None,
    callback: Callable[[Fit], dict | None] | None = None,
    monitor: str | None = None,
    on_epoch_end: Callable[[Fit], None] | None = None,
    resume: dict | None = None,
    engine: str = "torch",
) -> Fit:
    """Train ``pair`` by SVI; returns a :class:`Fit` whose ``history`` has one row per epoch.

    ``callback(fit)`` runs after every epoch and may return held-out metrics to add
    to that epoch's row; with ``monitor="val_elbo"`` the weights of the best epoch
    by that metric are kept in ``fit.state["best"]`` and restored at the end (early
    stopping by selection). ``on_epoch_end(fit)`` is where a run writes its
    checkpoint; ``resume`` is such a checkpoint (see :meth:`Fit.checkpoint`).

    ``engine="jax"`` trains the same model/guide with NumPyro SVI, the networks lowered
    to JAX and each epoch compiled whole (:mod:`ppgen.inference.svi_jax`).
    """
    if engine == "jax":
        from ppgen.inference.svi_jax import fit_svi_jax

        return fit_svi_jax(pair, data, epochs=epochs, batch_size=batch_size, lr=lr, elbo=elbo,
                           num_particles=num_particles, beta=beta, anneal_epochs=anneal_epochs, free_bits=free_bits,
                           seed=seed, device=device, progress=progress, callback=callback, monitor=monitor,
                           on_epoch_end=on_epoch_end, resume=resume)
    if engine != "torch":
        raise UserError(f"unknown SVI engine {engine!r}; choose 'torch' (Pyro) or 'jax' (NumPyro)")
    check_options(epochs, batch_size, lr)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for but no CUDA GPU is visible; use --device cpu")
    pair.check_data(data.train_epoch(0), "training data")
    options = dict(epochs=epochs, batch_size=batch_size, lr=lr, elbo=elbo, num_particles=num_particles, beta=beta,
                   anneal_epochs=anneal_epochs, free_bits=free_bits, seed=seed, monitor=monitor)
    loss_fn = make_elbo(elbo, num_particles, pair.max_plate_nesting, free_bits)
    pair.to(device)
    optimizer = make_adam(pair.parameters(), lr)
    fit = Fit(pair=pair, backend="svi", options=options, state={"epoch": 0})
    if resume is not None:
        if isinstance(resume["state"].get("optimizer"), list):
            raise UserError("this checkpoint was written by engine='jax'; resume it with engine='jax'")
        pair.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["state"]["optimizer"])
        resume_into(fit, resume)
    n = len(data.train)
    steps = max(1, n // batch_size)  # drop the last partial batch: fixed shapes, as the baselines do
    show = sys.stderr.isatty() if progress is None else progress
    wall = fit.history[-1]["wall"] if fit.history else 0.0
    last_good = copy.deepcopy(pair.state_dict())
    with pyro.validation_enabled(False):
        for epoch in range(fit.state["epoch"], epochs):
            torch.manual_seed(_epoch_seed(seed, epoch))
            g = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
            x_epoch = data.train_epoch(epoch).to(device)
            order = torch.randperm(n, generator=g).to(device)
            total, start = 0.0, time.perf_counter()
            bar = _progress_bar(steps, f"epoch {epoch + 1}/{epochs}", show)
            for step in range(steps):
                xb = x_epoch[order[step * batch_size : (step + 1) * batch_size]]
                b = beta_at(epoch, step, steps, beta, anneal_epochs)
                scale = ScaleLatents(b) if b != 1.0 else None
                optimizer.zero_grad(set_to_none=True)
                model, guide = (pair.model, pair.guide) if scale is None else (scale(pair.model), scale(pair.guide))
                value = _loss_and_grads(loss_fn, model, guide, xb)
                if not math.isfinite(value):
                    pair.load_state_dict(last_good)
                    bar.close()
                    fit.stopped = loss_stop_message(value, epoch, step)
                    return fit
                optimizer.step()
                total += value
                bar.update(1)
                if show and step % 10 == 0:
                    bar.set_postfix(elbo=f"{-total / ((step + 1) * batch_size):.2f}")
            bar.close()
            if not all(torch.isfinite(p).all() for p in pair.parameters()):
                pair.load_state_dict(last_good)
                fit.stopped = weights_stop_message(epoch)
                return fit
            seconds = time.perf_counter() - start
            wall += seconds
            row = {"epoch": epoch + 1, "elbo": -total / (steps * batch_size), "beta": b, "seconds": seconds,
                   "wall": wall, "images_per_s": steps * batch_size / seconds}
            end_epoch(fit, row, optimizer.state_dict(), callback, monitor)
            last_good = copy.deepcopy(pair.state_dict())
            if on_epoch_end is not None:
                on_epoch_end(fit)
    return fit


def restore_best(fit: Fit) -> Fit:
    """Load the weights of the best monitored epoch, if one was kept."""
    if fit.state.get("best") is not None:
        fit.pair.load_state_dict(fit.state["best"])
    return fit
