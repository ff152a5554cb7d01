r"""Density-ratio rejection sampling: correct any pair's sampler with a trained classifier.

A classifier D trained by logistic regression to tell data x ~ p_data (label 1) from the
pair's samples x ~ p_g (label 0), in equal numbers, reaches at its optimum

    D*(x) = log p_data(x) − log p_g(x)                     (the density-ratio trick).

Rejection sampling with proposal p_g and acceptance probability exp(D(x) − M), M ≥ sup D,
then draws exactly from p_g(x) exp D*(x) / Z = p_data(x): the generator's off-manifold
samples (the "bridges" a continuous G must lay between separated modes, blurry digits) are
the ones thrown away. This is Discriminator Rejection Sampling (Azadi et al., 2019, ICLR),
here with a *fresh* classifier trained after the fact against the frozen sampler, so it
corrects any pair that can ``generate`` — a GAN trained with any loss (WGAN and PacGAN
critics do not estimate the per-example ratio), or a VAE — and not only the NS-GAN whose own
discriminator would approximate D*.

M is a high quantile of the logits of ``calibration`` proposals. ``quantile=1`` (the largest)
is exact rejection sampling for the estimated ratio, but one proposal in a barely covered
region — where the ratio estimate is least reliable — can set M so high that almost nothing
is accepted; the default 0.999 clips the top 0.1% of logits instead (DRS's γ shift: a logit
above M is always accepted, so that region stays somewhat under-weighted).

The held-out report (``RatioSampler.report``) gives the classifier's log loss and accuracy
on the validation split against fresh samples — log 2 ≈ 0.693 and 0.5 mean p_g = p_data as
far as the classifier can tell — and the acceptance rate. Nothing in Pyro, NumPyro or
torchmetrics implements this (Pyro's importance sampling needs a density p_g, which an
implicit generator lacks), hence the loop here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ppgen.errors import UserError
from ppgen.inference.loop import progress_bar as _progress_bar
from ppgen.models.base import samples_from
from ppgen.nn.critics import critic_for


@dataclass
class RatioSampler:
    """``pair``'s sampler corrected by ``classifier`` (logit ≈ log p_data/p_g) and rejection at ``log_bound``."""

    pair: nn.Module
    classifier: nn.Module
    log_bound: float
    report: dict = field(default_factory=dict)

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.pair.x_shape)

    @torch.no_grad()
    def log_ratio(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's estimate of log p_data(x) − log p_g(x)."""
        return self.classifier(x)

    @torch.no_grad()
    def generate(self, n: int, max_proposals: int | None = None) -> torch.Tensor:
        """``n`` accepted samples (uses the global torch RNG, like ``pair.generate``)."""
        limit = max_proposals or max(100_000, 2_000 * n)
        accepted, drawn, kept = [], 0, 0
        chunk = min(max(4 * n, 1_000), 50_000)
        while kept < n:
            if drawn >= limit:
                rate = kept / max(drawn, 1)
                raise UserError(f"rejection sampling accepted {kept} of {drawn} proposals ({rate:.2%}); lower "
                                "quantile (e.g. 0.99) so that the bound M is not an outlier")
            x = self.pair.generate(chunk)
            keep = torch.rand(chunk, device=x.device).log() < (self.log_ratio(x) - self.log_bound).clamp(max=0)
            accepted.append(x[keep])
            drawn, kept = drawn + chunk, kept + int(keep.sum())
        return torch.cat(accepted)[:n]


def _generated(pair, n: int) -> torch.Tensor:
    with torch.no_grad():
        return pair.generate(n).float()


def _check(pair, data, steps: int, batch_size: int, quantile: float, calibration: int) -> torch.Tensor:
    if not samples_from(pair):
        raise UserError(f"{type(pair).__name__} cannot generate samples; rejection sampling corrects a sampler")
    if steps < 1 or batch_size < 2 or calibration < 1:
        raise UserError("steps and calibration must be positive and the batch size at least 2")
    if not 0 < quantile <= 1:
        raise UserError(f"quantile must be in (0, 1], got {quantile}")
    x = data.train
    if len(x) < batch_size:
        raise UserError(f"only {len(x)} training examples for a batch of {batch_size}; lower batch_size")
    probe = _generated(pair, 2)
    if tuple(probe.shape[1:]) != tuple(x.shape[1:]):
        raise UserError(f"the pair generates {tuple(probe.shape[1:])} but the data is {tuple(x.shape[1:])}; "
                        "give the data set the pair was trained on")
    if not torch.isfinite(probe).all():
        raise UserError("the pair generates NaN or infinite values; retrain it before rejection sampling")
    return x


def _train_classifier(pair, clf, x, steps, batch_size, lr, seed, progress) -> None:
    opt = torch.optim.Adam(clf.parameters(), lr=lr, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(seed)
    half = batch_size // 2
    x = x.to(_device(pair))  # once, not per step
    bar = _progress_bar(steps, "density-ratio classifier", progress)
    for step in range(steps):
        for group in opt.param_groups:  # linear decay to 0: the ratio must be sharp at the modes' edges
            group["lr"] = lr * (1 - step / steps)
        real = x[torch.randint(len(x), (half,), generator=g).to(x.device)]
        fake = _generated(pair, half)
        loss = F.softplus(-clf(real)).mean() + F.softplus(clf(fake)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
    bar.close()


def _device(pair) -> torch.device:
    return next(pair.parameters()).device


@torch.no_grad()
def _held_out(pair, clf, x_val: torch.Tensor) -> dict:
    if len(x_val) == 0:
        return {}
    real = x_val.to(_device(pair)).float()
    fake = _generated(pair, len(real))
    d_real, d_fake = clf(real), clf(fake)
    log_loss = 0.5 * float(F.softplus(-d_real).mean() + F.softplus(d_fake).mean())
    acc = 0.5 * float((d_real > 0).float().mean() + (d_fake <= 0).float().mean())
    return {"classifier_log_loss": log_loss, "classifier_accuracy": acc, "n_val": len(real)}


def fit_ratio_sampler(pair, data, *, steps: int = 10_000, batch_size: int = 1_000, lr: float = 1e-3,
                      hidden: Sequence[int] | None = None, net: str = "auto", quantile: float = 0.999,
                      calibration: int = 20_000, seed: int = 0, progress: bool | None = None,
                      classifier: nn.Module | None = None) -> RatioSampler:
    """Train the density-ratio classifier of ``pair``'s samples against ``data.train``; return the sampler.

    ``hidden`` sizes the classifier (:func:`ppgen.nn.critics.critic_for`, chosen by data shape, or
    ``net="mlp"`` to force an MLP on images);
    half of each batch is data, half fresh samples. ``quantile`` sets the bound M (module docs).
    A ``classifier`` already trained for this pair is used as it is (only M and the report are computed).
    """
    was_training = pair.training
    pair.eval()
    try:
        return _fit(pair, data, steps, batch_size, lr, hidden, net, quantile, calibration, seed, progress, classifier)
    finally:
        pair.train(was_training)


def _fit(pair, data, steps, batch_size, lr, hidden, net, quantile, calibration, seed, progress, classifier):
    with torch.random.fork_rng(devices=[]):  # the caller's RNG is left as it was
        x = _check(pair, data, steps, batch_size, quantile, calibration)
        torch.manual_seed(seed)
        clf = classifier
        if clf is None:
            try:
                clf = critic_for(pair.x_shape, hidden=hidden, net=net).to(_device(pair))
            except ValueError as err:
                raise UserError(str(err)) from None
            _train_classifier(pair, clf, x, steps, batch_size, lr, seed, progress)
        clf.eval().requires_grad_(False)
        torch.manual_seed(seed + 1)  # the bound does not depend on whether the classifier was trained here
        logits = torch.cat([clf(_generated(pair, min(5_000, calibration - s))) for s in range(0, calibration, 5_000)])
        bound = float(logits.max() if quantile == 1 else torch.quantile(logits.double(), quantile))
        accept = float((logits.double() - bound).clamp(max=0).exp().mean())
        report = {"steps": steps, "quantile": quantile, "log_bound": bound, "accept_rate": accept,
                  **_held_out(pair, clf, data.val)}
    if not math.isfinite(bound):
        raise UserError("the density-ratio classifier diverged (non-finite logits); lower lr")
    return RatioSampler(pair, clf, bound, report)
