r"""An exponential moving average of a network's weights (Polyak averaging; DDPM samples with it, Ho et al., 2020).

:class:`WeightAverage` holds ``shadow``, a frozen copy of the network, and ``count``, the number of updates so far.
Each training step's :meth:`WeightAverage.update` moves the shadow towards the network's current weights::

    θ̄ ← d_n θ̄ + (1 − d_n) θ,   d_n = min(decay, (1 + n) / (10 + n)),

the warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=n)``: early on, when θ moves fast, the average
forgets quickly (d_0 = 0.1), so a short run is not dominated by its random initialization; from about
n = 9/(1 − decay) on, d_n is the decay. The network's buffers (if any) are copied, not averaged.

Like batch norm's running statistics the shadow changes in training steps, outside the gradients: on torch in place,
on NumPyro in the module's ``numpyro.mutable`` site (the shadow's weights are frozen parameters, which
:func:`ppgen.nn.networks.buffer_names` puts there), so both SVI engines carry it, and a checkpoint holds it (a
resume is exact). The JAX function is written by hand: the update reads the network's bound weights, which an
``fx`` trace of ``forward`` would not see.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ppgen import ppl
from ppgen.nn.networks import Network

SHADOW = "shadow."
WARMUP = 10.0  # d_n = min(decay, (1 + n) / (WARMUP + n))


class WeightAverage(Network):
    """θ̄, the exponential moving average of ``net``'s weights with ``decay`` (module docs); ``shadow`` computes
    with it."""

    def __init__(self, net: nn.Module, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"WeightAverage needs 0 < decay < 1, got {decay}")
        self.decay = float(decay)
        self.shadow = copy.deepcopy(net).requires_grad_(False)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, net: nn.Module) -> None:
        """Torch: one update of the shadow towards ``net``'s weights, in place."""
        with torch.no_grad():
            mine, theirs, mine_buffers, their_buffers = self._tensors_of(net)
            if self.count.is_cpu:  # reading the count costs nothing here
                n = float(self.count)
                weight: Any = 1.0 - min(self.decay, (1.0 + n) / (WARMUP + n))
            else:  # on a GPU d_n stays a tensor there: reading the count would wait for the device every step
                n = self.count.to(mine[0].dtype if mine else torch.float32)
                weight = 1.0 - torch.clamp((1.0 + n) / (WARMUP + n), max=self.decay)
            torch._foreach_lerp_(mine, theirs, weight)
            if mine_buffers:
                torch._foreach_copy_(mine_buffers, their_buffers)
            self.count.add_(1)

    def _tensors_of(self, net: nn.Module) -> tuple[list[torch.Tensor], ...]:
        """The shadow's parameters, ``net``'s, the shadow's buffers and ``net``'s, in order; listed once per network
        (the training step's hot path). ``load_state_dict`` keeps these tensor objects; ``to`` / ``cuda`` of the
        pair may replace buffers, so :meth:`_apply` lists them again."""
        if getattr(self, "_listed", None) is None or self._listed[0] is not net:
            self._listed = (net, list(self.shadow.parameters()), list(net.parameters()), list(self.shadow.buffers()),
                            list(net.buffers()))
        return self._listed[1:]

    def _apply(self, fn, recurse: bool = True):
        self._listed = None
        return super()._apply(fn, recurse)

    def update(self, net: nn.Module) -> None:
        """One update towards ``net``'s current weights, on the backend in use: torch in place; on NumPyro from the
        weights ``pyro.module`` bound to ``net``, into the mutable site ``pyro.module`` bound to this average."""
        mine, theirs = ppl.bound_weights(self), ppl.bound_weights(net)
        if mine is None or theirs is None:
            self.forward(net)  # (not through nn.Module.__call__'s hooks: once per training step)
            return
        updates: dict[str, Any] = {}
        self.jax_function()(mine.weights, theirs.weights, updates=updates)
        mine.record(updates)

    def jax_function(self):
        decay = self.decay
        copied = {SHADOW + name for name in self.shadow.state_dict() if name not in dict(self.shadow.named_parameters())}

        def fn(params: dict[str, Any], current: dict[str, Any], updates: dict[str, Any] | None = None) -> None:
            import jax
            import jax.numpy as jnp

            n = params["count"].astype(jnp.float32)
            d = jnp.minimum(decay, (1.0 + n) / (WARMUP + n))
            new = {"count": params["count"] + 1}
            for key, value in params.items():
                if key.startswith(SHADOW):
                    theirs = jax.lax.stop_gradient(current[key[len(SHADOW):]]).astype(value.dtype)
                    new[key] = theirs if key in copied else d * value + (1.0 - d) * theirs
            if updates is not None:
                updates.update(new)

        return fn

