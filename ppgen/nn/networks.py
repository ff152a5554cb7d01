"""Encoders and decoders used by the model families.

Every network here is a :class:`Network`: a torch module that, called on a JAX
array, runs the same computation lowered to JAX (:mod:`ppgen.nn.lower`) with
its current weights. All accept any number of leading batch dimensions
(particles, chains, data), which the vectorized estimators rely on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ppgen import ppl
from ppgen.nn.norm import BatchNorm
from ppgen.ppl import is_jax


class Network(nn.Module):
    """A torch module callable on torch tensors *and* on JAX arrays.

    On a JAX array it runs its lowered function with the weights that ``pyro.module``
    bound to it on NumPyro (a ``numpyro.param`` site: trained by SVI, substituted by NUTS),
    or, outside any such site, with its current torch weights as constants.
    """

    _lowered = None

    def __call__(self, *inputs: Any) -> Any:
        if inputs and is_jax(inputs[0]):
            bound = ppl.bound_weights(self)
            if bound is None:
                return self.jax_function()(self.jax_params(), *inputs)
            if bound.buffers is None:
                return self.jax_function()(bound.weights, *inputs)
            updates: dict[str, Any] = {}
            out = self.jax_function()(bound.weights, *inputs, updates=updates)
            bound.record(updates)
            return out
        return super().__call__(*inputs)

    def jax_function(self):
        """``fn(params, *inputs)``: this network as a pure JAX function (traced once)."""
        if self._lowered is None:
            from ppgen.nn.lower import lower

            object.__setattr__(self, "_lowered", lower(self))
        return self._lowered

    def jax_params(self) -> dict[str, Any]:
        """The current weights as JAX arrays, keyed like ``state_dict``."""
        from ppgen.nn.lower import jax_params

        return jax_params(self)


def outermost_networks(module: nn.Module) -> dict[str, Network]:
    """The outermost :class:`Network` submodules of ``module`` (itself if it is one), by dotted name."""
    if isinstance(module, Network):
        return {"": module}
    nets: dict[str, Network] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, Network) and not any(name.startswith(outer + ".") for outer in nets):
            nets[name] = sub
    return nets


#: suffix of the NumPyro ``mutable`` site holding a module's buffers (``pyro.module("up", m)``: ``"up$buffers"``)
BUFFERS_SUFFIX = "$buffers"


@dataclass
class BoundWeights:
    """What a network computes with on NumPyro: its weights (parameters and buffers, keyed like its
    ``state_dict``) and, where the module has buffers, the ``numpyro.mutable`` dict that receives their
    new values (batch norm's running statistics in training mode) under the keys ``prefix + name``."""

    weights: dict[str, Any]
    buffers: dict[str, Any] | None = None
    prefix: str = ""

    def record(self, updates: dict[str, Any]) -> None:
        """Store new buffer values: later calls in the same run see them (as torch's in-place update), and
        NumPyro's ELBO carries the mutable site to the next step."""
        import jax

        for key, value in updates.items():
            value = jax.lax.stop_gradient(value)
            self.weights[key] = value
            self.buffers[self.prefix + key] = value


def buffer_names(module: nn.Module) -> set[str]:
    """The ``state_dict`` keys that SVI must not train: the module's buffers (batch norm's running statistics)
    and its frozen parameters (``requires_grad=False``), carried in the mutable site, never in the param site."""
    frozen = {name for name, p in module.named_parameters() if not p.requires_grad}
    # only what the state_dict holds: a non-persistent buffer (the PixelCNN's mask) is a constant of the network
    return ({name for name, _ in module.named_buffers()} | frozen) & set(module.state_dict())


def numpyro_buffers(module: nn.Module) -> dict[str, Any]:
    """The module's buffers as JAX arrays keyed like its ``state_dict``: the initial value of its mutable site."""
    names = buffer_names(module)
    return {k: v for k, v in _jax_state(module).items() if k in names}


def register_numpyro_params(name: str, module: nn.Module) -> None:
    """``pyro.module(name, module)`` on NumPyro: one ``numpyro.param`` site ``name`` holding the module's
    trainable weights (a dict keyed like its ``state_dict``, initialised from the torch weights) and, if it
    has buffers, one ``numpyro.mutable`` site ``name + "$buffers"`` holding them (NumPyro's mechanism for
    batch-norm statistics: SVI carries the values the networks write there from step to step); every
    network in the module computes with its part of the sites' values."""
    import numpyro
    from numpyro.primitives import mutable

    nets = outermost_networks(module)
    if not nets:
        return
    state, buffered = _jax_state(module), buffer_names(module)
    weights = numpyro.param(name, {k: v for k, v in state.items() if k not in buffered})
    buffers = mutable(name + BUFFERS_SUFFIX, {k: v for k, v in state.items() if k in buffered}) \
        if buffered else None
    merged = {**weights, **(buffers or {})}
    for prefix, net in nets.items():
        start = f"{prefix}." if prefix else ""
        own = {k[len(start):]: v for k, v in merged.items() if k.startswith(start)}
        has_buffers = buffers is not None and any(k.startswith(start) for k in buffers)
        ppl.bind_weights(net, BoundWeights(own, buffers if has_buffers else None, start))


def _jax_state(module: nn.Module) -> dict[str, Any]:
    from ppgen.nn.lower import jax_params

    return jax_params(module)


ppl._numpyro_module_rule[:] = [register_numpyro_params]


def _mlp(sizes: Sequence[int]) -> nn.ModuleList:
    return nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))


#: hidden-layer nonlinearities of the MLP networks: softplus (ppgen's default) or tanh (Burda et al. 2016's nets)
ACTIVATIONS = {"softplus": F.softplus, "tanh": torch.tanh}


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLPEncoder(Network):
    """x -> (loc, scale) of a diagonal Gaussian q(z|x); hidden layers use ``activation`` (softplus or tanh)."""

    def __init__(self, x_shape: Sequence[int], z_dim: int, hidden: Sequence[int] = (400,),
                 activation: str = "softplus"):
        super().__init__()
        self.x_ndim = len(x_shape)
        self.activation = _activation(activation)
        self.layers = _mlp([math.prod(x_shape), *hidden])
        self.loc = nn.Linear(hidden[-1], z_dim)
        self.raw_scale = nn.Linear(hidden[-1], z_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer h(x) (the context of a flow on q(z|x))."""
        h = x.flatten(-self.x_ndim)
        for layer in self.layers:
            h = self.activation(layer(h))
        return h

    def head(self, h: torch.Tensor):
        """(loc, scale) from the hidden state."""
        return self.loc(h), F.softplus(self.raw_scale(h)) + 1e-4

    def forward(self, x: torch.Tensor):
        return self.head(self.features(x))


class MLPDecoder(Network):
    """z -> distribution parameters of p(x|z), each shaped like x.

    ``skip=True`` is the Skip-VAE decoder (Dieng et al., 2019): z is concatenated
    to the input of every layer, so the decoder cannot ignore it as easily.
    ``n_params`` outputs: 1 for Bernoulli logits, 2 for Gaussian (loc, scale with
    a learned per-pixel log-scale). ``batch_norm=True`` normalizes each hidden pre-activation
    (:class:`ppgen.nn.norm.BatchNorm`); hidden layers use ``activation`` (softplus or tanh).
    """

    def __init__(self, z_dim: int, x_shape: Sequence[int], hidden: Sequence[int] = (400,), skip: bool = False,
                 n_params: int = 1, batch_norm: bool = False, activation: str = "softplus"):
        super().__init__()
        self.x_shape = tuple(x_shape)
        self.activation = _activation(activation)
        self.skip = skip
        d = math.prod(x_shape)
        ins = [z_dim] + [h + (z_dim if skip else 0) for h in hidden]
        outs = [*hidden, d]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(ins, outs))
        self.norms = nn.ModuleList(BatchNorm(h) for h in hidden) if batch_norm else None
        self.log_scale = nn.Parameter(torch.zeros(d)) if n_params == 2 else None

    def forward(self, z: torch.Tensor):
        h = z
        for i, layer in enumerate(self.layers):
            if i > 0 and self.skip:
                h = torch.cat([h, z], -1)
            h = layer(h)
            if i < len(self.layers) - 1:
                if self.norms is not None:
                    h = self.norms[i](h)
                h = self.activation(h)
        out = h.reshape(h.shape[:-1] + self.x_shape)
        if self.log_scale is None:
            return out
        return out, torch.exp(self.log_scale).reshape(self.x_shape) + 0 * out


class ConvEncoder(Network):
    """Two stride-2 convolutions then a dense layer: x (C,H,W) -> (loc, scale)."""

    def __init__(self, x_shape: Sequence[int], z_dim: int, hidden: Sequence[int] = (256,), channels: int = 32):
        super().__init__()
        c, h, w = x_shape
        if h % 4 or w % 4:
            raise ValueError(f"conv networks need height and width divisible by 4, got {h}x{w}; use net='mlp'")
        self.x_shape = tuple(x_shape)
        self.conv1 = nn.Conv2d(c, channels, 4, 2, 1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 4, 2, 1)
        self.dense = nn.Linear(2 * channels * (h // 4) * (w // 4), hidden[-1])
        self.loc = nn.Linear(hidden[-1], z_dim)
        self.raw_scale = nn.Linear(hidden[-1], z_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The dense hidden layer h(x) (the context of a flow on q(z|x))."""
        lead = x.shape[:-3]
        h = x.reshape((-1,) + self.x_shape)
        h = F.relu(self.conv1(h))
        h = F.relu(self.conv2(h))
        h = F.relu(self.dense(h.flatten(1)))
        return h.reshape(lead + (-1,))

    def head(self, h: torch.Tensor):
        """(loc, scale) from the hidden state."""
        return self.loc(h), F.softplus(self.raw_scale(h)) + 1e-4

    def forward(self, x: torch.Tensor):
        return self.head(self.features(x))


class ConvDecoder(Network):
    """z -> dense -> two stride-2 transposed convolutions -> parameters shaped like x."""

    def __init__(self, z_dim: int, x_shape: Sequence[int], hidden: Sequence[int] = (256,), channels: int = 32,
                 skip: bool = False, n_params: int = 1):
        super().__init__()
        c, h, w = x_shape
        if h % 4 or w % 4:
            raise ValueError(f"conv networks need height and width divisible by 4, got {h}x{w}; use net='mlp'")
        self.x_shape = tuple(x_shape)
        self.z_dim = z_dim
        self.skip = skip
        self.small = (2 * channels, h // 4, w // 4)
        self.dense1 = nn.Linear(z_dim, hidden[-1])
        self.dense2 = nn.Linear(hidden[-1] + (z_dim if skip else 0), math.prod(self.small))
        self.deconv1 = nn.ConvTranspose2d(2 * channels, channels, 4, 2, 1)
        self.deconv2 = nn.ConvTranspose2d(channels, c, 4, 2, 1)
        self.log_scale = nn.Parameter(torch.zeros(self.x_shape)) if n_params == 2 else None

    def forward(self, z: torch.Tensor):
        lead = z.shape[:-1]
        z = z.reshape(-1, self.z_dim)
        h = F.relu(self.dense1(z))
        if self.skip:
            h = torch.cat([h, z], -1)
        h = F.relu(self.dense2(h)).reshape((-1,) + self.small)
        h = F.relu(self.deconv1(h))
        out = self.deconv2(h).reshape(lead + self.x_shape)
        if self.log_scale is None:
            return out
        return out, torch.exp(self.log_scale) + 0 * out


class GaussianMLP(Network):
    """Input (any trailing ``in_shape``) -> softplus hidden layers -> (loc, scale) of a diagonal Gaussian.

    With ``hidden=()`` the map is affine: loc = A u + a, scale = softplus(B u + b) + 1e-4.
    Used by the multi-layer families for p(z_l | z_{l+1}) and q(z_{l+1} | z_l). ``batch_norm=True``
    normalizes each hidden pre-activation (:class:`ppgen.nn.norm.BatchNorm`); hidden layers use ``activation``
    (softplus or tanh; the scale's softplus is not a hidden layer and stays).
    """

    def __init__(self, in_shape: Sequence[int] | int, out_dim: int, hidden: Sequence[int] = (),
                 batch_norm: bool = False, activation: str = "softplus"):
        super().__init__()
        self.activation = _activation(activation)
        in_shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
        self.in_ndim = len(in_shape)
        sizes = [math.prod(in_shape), *hidden]
        self.layers = _mlp(sizes)
        self.norms = nn.ModuleList(BatchNorm(h) for h in hidden) if batch_norm else None
        self.loc = nn.Linear(sizes[-1], out_dim)
        self.raw_scale = nn.Linear(sizes[-1], out_dim)

    def forward(self, u: torch.Tensor):
        h = u.flatten(-self.in_ndim)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if self.norms is not None:
                h = self.norms[i](h)
            h = self.activation(h)
        return self.loc(h), F.softplus(self.raw_scale(h)) + 1e-4


class DeterministicMLP(Network):
    """Input (any trailing ``in_shape``) -> softplus layers of sizes ``hidden``: a deterministic feature map.

    ``batch_norm=True`` normalizes every layer's pre-activation (:class:`BatchNorm`): softplus(BN(W h + b)),
    as the deterministic layers of the Ladder VAE (Sønderby et al., 2016).
    """

    def __init__(self, in_shape: Sequence[int] | int, hidden: Sequence[int], batch_norm: bool = False):
        super().__init__()
        in_shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
        self.in_ndim = len(in_shape)
        self.layers = _mlp([math.prod(in_shape), *hidden])
        self.norms = nn.ModuleList(BatchNorm(h) for h in hidden) if batch_norm else None

    def forward(self, u: torch.Tensor):
        h = u.flatten(-self.in_ndim)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if self.norms is not None:
                h = self.norms[i](h)
            h = F.softplus(h)
        return h
