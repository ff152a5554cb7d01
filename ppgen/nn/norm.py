"""Batch normalization over every leading dimension, the one normalization layer ppgen lowers in training mode."""

from __future__ import annotations

import torch
from torch import nn


class BatchNorm(nn.BatchNorm1d):
    """Batch normalization (Ioffe & Szegedy, 2015) of the last dimension over every leading one.

    Training mode: y = γ (h − mean) / sqrt(var + ε) + b with the mean and biased variance over all
    leading dimensions (particles and examples alike), and the running statistics move by torch's
    momentum rule, running ← (1 − m) running + m · batch statistic (the variance unbiased, n/(n − 1)).
    Evaluation mode (``pair.eval()``): the running statistics instead, so each example's output depends
    on that example only — what a per-example ELBO / IWAE needs. It lowers to JAX in both modes
    (:mod:`ppgen.nn.lower`); on the JAX engine the running statistics are a ``numpyro.mutable`` site
    (:func:`register_numpyro_params`) and come back to torch with the weights.
    """

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return super().forward(h.reshape(-1, h.shape[-1])).reshape(h.shape)
