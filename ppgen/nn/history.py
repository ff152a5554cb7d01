r"""A running history of a per-index loss, and the importance distribution it gives (Nichol & Dhariwal, 2021, §3.3).

:class:`LossHistory` keeps, for each of ``rows`` indices (DDPM's timesteps), the last ``size`` values of a loss in a
ring (buffer ``values``; ``count`` the values recorded so far, whose remainder modulo ``size`` is the next slot).
Called on one array ``like`` it returns the sampling distribution p over the rows: uniform until every row has
``size`` values, then p_i ∝ sqrt(mean of row i²) (the root mean square of its recent values), mixed with
``uniform_mix`` of the uniform distribution so every p_i > 0. Called on ``(index, losses)`` it records each loss
in its index's ring, in order (only the last ``size`` of an index within one call matter).

Like batch norm's running statistics the buffers change in training steps: on torch in place; on NumPyro they
ride in the module's ``numpyro.mutable`` site (:func:`ppgen.nn.networks.register_numpyro_params`), so the JAX
engine carries them through its compiled epoch and copies them back with the weights. The JAX function is
written by hand (:meth:`LossHistory.jax_function`): the ring update is a scatter that ``torch.fx`` cannot trace.
"""

from __future__ import annotations

from typing import Any

import torch

from ppgen.nn.networks import Network


class LossHistory(Network):
    """The last ``size`` values of a loss for each of ``rows`` indices, and p ∝ their root mean square."""

    def __init__(self, rows: int, size: int = 10, uniform_mix: float = 0.001):
        super().__init__()
        if rows < 1 or size < 1 or not 0 < uniform_mix <= 1:
            raise ValueError(f"LossHistory needs rows, size >= 1 and 0 < uniform_mix <= 1, got {rows}, {size}, "
                             f"{uniform_mix}")
        self.size, self.uniform_mix = int(size), float(uniform_mix)
        self.register_buffer("values", torch.zeros(rows, size))
        self.register_buffer("count", torch.zeros(rows, dtype=torch.long))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | None:
        if len(inputs) == 1:
            return _probabilities(self.values, self.count, self.size, self.uniform_mix, torch)
        index, losses = inputs
        values, count = _record(self.values, self.count, index.to(self.count.device), losses.detach(), self.size,
                                torch)
        self.values.copy_(values)
        self.count.copy_(count)
        return None

    def jax_function(self):
        size, mix = self.size, self.uniform_mix

        def fn(params: dict[str, Any], *inputs: Any, updates: dict[str, Any] | None = None) -> Any:
            import jax
            import jax.numpy as jnp

            if len(inputs) == 1:
                return _probabilities(params["values"], params["count"], size, mix, jnp)
            index, losses = inputs
            values, count = _record(params["values"], params["count"], index, jax.lax.stop_gradient(losses), size,
                                    jnp)
            if updates is not None:
                updates["values"], updates["count"] = values, count
            return None

        return fn


def _probabilities(values: Any, count: Any, size: int, mix: float, xp: Any) -> Any:
    rows = values.shape[0]
    rms = xp.sqrt((values ** 2).mean(-1))
    total = rms.sum()
    weighted = rms / xp.where(total > 0, total, 1.0) * (1 - mix) + mix / rows
    return xp.where((count >= size).all(), weighted, xp.ones_like(rms) / rows)


def _record(values: Any, count: Any, index: Any, losses: Any, size: int, xp: Any) -> tuple[Any, Any]:
    """The ring after appending ``losses`` at ``index`` in order; the same code on torch and JAX (``xp``)."""
    rows = values.shape[0]
    if xp is torch:
        order = torch.argsort(index, stable=True)
        bincount = torch.bincount(index, minlength=rows)
    else:
        order = xp.argsort(index, stable=True)
        bincount = xp.bincount(index, length=rows)
    sorted_index, sorted_losses = index[order], losses[order]
    rank = xp.arange(sorted_index.shape[0]) - xp.searchsorted(sorted_index, sorted_index)
    keep = rank >= bincount[sorted_index] - size  # only the last `size` values of an index matter
    slot = (count[sorted_index] + rank) % size
    if xp is torch:
        values = values.clone()
        values[sorted_index[keep], slot[keep]] = sorted_losses[keep].to(values.dtype)
    else:
        row = xp.where(keep, sorted_index, rows)  # out of range: dropped
        values = values.at[row, slot].set(sorted_losses.astype(values.dtype), mode="drop")
    return values, count + bincount
