"""Lowering torch networks to pure JAX functions.

A network is traced once with ``torch.fx`` into a graph of layer calls, torch
functions and tensor methods; :func:`lower` interprets that graph with
``jax.numpy`` / ``jax.lax`` so that ``fn(params, x)`` computes exactly what the
torch module computes, with ``params`` a dict of JAX arrays keyed like the
module's ``state_dict``. Nothing here copies a model: the weights come from the
torch module each time :func:`jax_params` is called.

Written by hand because no library converts torch modules to JAX functions
offline (torch's exporters target ONNX/StableHLO files, not a callable with
swappable weights). The supported vocabulary is what ``ppgen.nn`` networks use;
an unsupported op raises ``NotLowerable`` with its name, and NUTS falls back to
Pyro.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from ppgen.nn.norm import BatchNorm


class NotLowerable(Exception):
    """The network uses an operation with no JAX rule."""


def jax_params(module: nn.Module) -> dict[str, Any]:
    """The module's current weights (parameters and buffers) as JAX arrays."""
    import jax

    # a copy: on the CPU device_put of a NumPy array shares its memory, and torch updates these tensors in place
    # (running statistics, the optimizer's steps) while JAX takes its arrays as immutable; jnp.asarray would copy
    # too but compiles a small XLA program per shape to do it
    return {name: jax.device_put(np.array(t.detach().cpu().numpy(), copy=True))
            for name, t in module.state_dict().items()}


def _jnp():
    import jax
    import jax.numpy as jnp

    return jax, jnp


def _linear(mod: nn.Linear, p: Callable, x):
    y = x @ p("weight").T
    return y + p("bias") if mod.bias is not None else y


def _conv2d(mod: nn.Conv2d, p: Callable, x, weight=None):
    jax, jnp = _jnp()
    if isinstance(mod.padding, str):
        raise NotLowerable("Conv2d with string padding")
    y = jax.lax.conv_general_dilated(
        x,
        p("weight") if weight is None else weight,
        window_strides=mod.stride,
        padding=[(q, q) for q in mod.padding],
        rhs_dilation=mod.dilation,
        feature_group_count=mod.groups,
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )
    return y + p("bias")[None, :, None, None] if mod.bias is not None else y


def _conv_transpose2d(mod: nn.ConvTranspose2d, p: Callable, x):
    # A transposed convolution is a convolution of the stride-dilated input with the
    # spatially flipped, in/out-swapped kernel.
    jax, jnp = _jnp()
    if mod.groups != 1:
        raise NotLowerable("grouped ConvTranspose2d")
    w = jnp.flip(p("weight"), axis=(2, 3)).transpose(1, 0, 2, 3)
    pads = []
    for k, q, op, d in zip(mod.kernel_size, mod.padding, mod.output_padding, mod.dilation):
        edge = d * (k - 1) - q
        pads.append((edge, edge + op))
    y = jax.lax.conv_general_dilated(
        x,
        w,
        window_strides=(1, 1),
        padding=pads,
        lhs_dilation=mod.stride,
        rhs_dilation=mod.dilation,
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )
    return y + p("bias")[None, :, None, None] if mod.bias is not None else y


def _flatten(start: int, end: int, x):
    shape = x.shape
    start %= len(shape)
    end %= len(shape)
    return x.reshape(shape[:start] + (-1,) + shape[end + 1 :])


def _module_rule(mod: nn.Module) -> Callable:
    jax, jnp = _jnp()
    simple = {
        nn.ReLU: jax.nn.relu,
        nn.Tanh: jnp.tanh,
        nn.Sigmoid: jax.nn.sigmoid,
        nn.Identity: lambda x: x,
        nn.Dropout: lambda x: x,  # networks are lowered for inference: dropout is off
        nn.SiLU: jax.nn.silu,
        nn.GELU: lambda x: jax.nn.gelu(x, approximate=False),
    }
    for cls, fn in simple.items():
        if type(mod) is cls:
            return lambda p, x, fn=fn: fn(x)
    if isinstance(mod, nn.Softplus):
        if mod.beta != 1:
            raise NotLowerable("Softplus with beta != 1")
        return lambda p, x: _softplus_fn(x)
    if isinstance(mod, nn.LeakyReLU):
        return lambda p, x: jax.nn.leaky_relu(x, mod.negative_slope)
    if isinstance(mod, nn.ELU):
        return lambda p, x: jax.nn.elu(x, mod.alpha)
    if isinstance(mod, nn.Linear):
        return lambda p, x: _linear(mod, p, x)
    from ppgen.nn.layers import MaskedConv2d

    if isinstance(mod, MaskedConv2d):  # the fixed mask is a constant of the layer, not a weight
        mask = jnp.asarray(mod.mask.detach().cpu().numpy())
        return lambda p, x: _conv2d(mod, p, x, weight=p("weight") * mask)
    if isinstance(mod, nn.Conv2d):
        return lambda p, x: _conv2d(mod, p, x)
    if isinstance(mod, nn.ConvTranspose2d):
        return lambda p, x: _conv_transpose2d(mod, p, x)
    if isinstance(mod, nn.Flatten):
        return lambda p, x: _flatten(mod.start_dim, mod.end_dim, x)
    if isinstance(mod, nn.GroupNorm):
        return lambda p, x: _group_norm(mod, p, x)
    if isinstance(mod, nn.Unflatten):
        return lambda p, x: x.reshape(
            x.shape[: mod.dim % x.ndim] + tuple(mod.unflattened_size) + x.shape[mod.dim % x.ndim + 1 :]
        )
    if isinstance(mod, BatchNorm):
        return lambda p, x, put: _batch_norm(mod, p, x, put)  # both modes (checked at each call)
    if isinstance(mod, nn.BatchNorm1d) and mod.track_running_stats and not mod.training:
        return lambda p, x: _batch_norm_eval(mod, p, x)  # evaluation mode only (checked again at each call)
    raise NotLowerable(f"layer {type(mod).__name__}")


def _batch_norm_eval(mod: nn.BatchNorm1d, p: Callable, x):
    """BatchNorm1d with its running statistics (evaluation mode: inference, NUTS). In training mode it would
    normalize by the batch and update the statistics in place, which a lowered function cannot: refused."""
    if mod.training:
        raise NotLowerable("BatchNorm1d in training mode (batch statistics, updated in place)")
    _, jnp = _jnp()
    y = (x - p("running_mean")) / jnp.sqrt(p("running_var") + mod.eps)
    return y * p("weight") + p("bias") if mod.affine else y


def _batch_norm(mod: BatchNorm, p: Callable, x, put: Callable):
    """:class:`ppgen.nn.norm.BatchNorm`, last dimension normalized over all leading ones. The mode is read from
    the torch module when the function is traced. Training: batch mean and biased variance, and the running
    statistics' new values — torch's rule, running ← (1 − m) running + m · stat with the unbiased variance, or
    the cumulative average when ``momentum`` is None — handed to ``put`` (the caller's mutable state)."""
    _, jnp = _jnp()
    if mod.training or not mod.track_running_stats:
        flat = x.reshape((-1, x.shape[-1]))
        mean = flat.mean(0)
        var = ((flat - mean) ** 2).mean(0)
        if mod.training and mod.track_running_stats:
            count = p("num_batches_tracked") + 1
            m = 1.0 / count if mod.momentum is None else mod.momentum
            n = flat.shape[0]
            put("running_mean", (1 - m) * p("running_mean") + m * mean)
            put("running_var", (1 - m) * p("running_var") + m * var * (n / max(n - 1, 1)))
            put("num_batches_tracked", count)
    else:
        mean, var = p("running_mean"), p("running_var")
    y = (x - mean) / jnp.sqrt(var + mod.eps)
    return y * p("weight") + p("bias") if mod.affine else y


def _group_norm(mod: nn.GroupNorm, p: Callable, x):
    # x (N, C, *spatial): mean and biased variance over each group's channels and positions, as torch
    _, jnp = _jnp()
    n, c = x.shape[0], x.shape[1]
    g = x.reshape((n, mod.num_groups, -1))
    mean = g.mean(-1, keepdims=True)
    var = ((g - mean) ** 2).mean(-1, keepdims=True)
    y = ((g - mean) / jnp.sqrt(var + mod.eps)).reshape(x.shape)
    if mod.affine:
        shape = (1, c) + (1,) * (x.ndim - 2)
        y = y * p("weight").reshape(shape) + p("bias").reshape(shape)
    return y


def _interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None, recompute_scale_factor=None,
                 antialias=False):
    # nearest-neighbour up-sampling by an integer factor (what the U-Net uses)
    _, jnp = _jnp()
    factors = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * (x.ndim - 2)
    if mode != "nearest" or size is not None or any(f is None or float(f) != int(f) for f in factors):
        raise NotLowerable("interpolate other than nearest by an integer scale factor")
    for axis, f in enumerate(factors, start=2):
        x = jnp.repeat(x, int(f), axis=axis)
    return x


def _softplus_fn(x, beta=1, threshold=20):
    """softplus(βx)/β. torch switches to x above the threshold; jax.nn.softplus is exact there to float32 rounding
    (log1p(e^{-x}) < 2e-9 for x > 20), and skipping torch's compare-and-select on every hidden unit made the JAX
    engine's compiled step ~5% faster (benchmarks/README.md)."""
    jax, _ = _jnp()
    return jax.nn.softplus(x * beta) / beta


def _function_rules() -> dict[Any, Callable]:
    jax, jnp = _jnp()
    F = torch.nn.functional

    def cat(tensors, dim=0):
        return jnp.concatenate(tensors, axis=dim)

    return {
        operator.add: operator.add,
        operator.sub: operator.sub,
        operator.mul: operator.mul,
        operator.truediv: operator.truediv,
        operator.neg: operator.neg,
        operator.getitem: operator.getitem,
        operator.pow: operator.pow,
        getattr: getattr,
        torch.exp: jnp.exp,
        torch.sin: jnp.sin,
        torch.cos: jnp.cos,
        F.interpolate: _interpolate,
        torch.log: jnp.log,
        torch.tanh: jnp.tanh,
        torch.sigmoid: jax.nn.sigmoid,
        torch.cat: cat,
        torch.concat: cat,
        torch.flatten: lambda x, start_dim=0, end_dim=-1: _flatten(start_dim, end_dim, x),
        torch.clamp: lambda x, min=None, max=None: jnp.clip(x, min, max),
        torch.sqrt: jnp.sqrt,
        torch.tril: lambda x, diagonal=0: jnp.tril(x, diagonal),
        torch.diag_embed: lambda x: x[..., None] * jnp.eye(x.shape[-1], dtype=x.dtype),
        torch.diagonal: lambda x, offset=0, dim1=0, dim2=1: jnp.diagonal(x, offset, dim1, dim2),
        torch.zeros_like: jnp.zeros_like,
        torch.ones_like: jnp.ones_like,
        F.softplus: _softplus_fn,
        F.relu: lambda x, inplace=False: jax.nn.relu(x),
        F.leaky_relu: lambda x, negative_slope=0.01, inplace=False: jax.nn.leaky_relu(x, negative_slope),
        F.elu: lambda x, alpha=1.0, inplace=False: jax.nn.elu(x, alpha),
        F.silu: lambda x, inplace=False: jax.nn.silu(x),
        torch.relu: jax.nn.relu,
        # topic models (ppgen.nn.topics)
        F.softmax: lambda x, dim=None, _stacklevel=3, dtype=None: jax.nn.softmax(x, axis=dim),
        F.log_softmax: lambda x, dim=None, _stacklevel=3, dtype=None: jax.nn.log_softmax(x, axis=dim),
        torch.matmul: jnp.matmul,
        operator.matmul: operator.matmul,
        torch.transpose: lambda x, dim0, dim1: jnp.swapaxes(x, dim0, dim1),
    }


def _call_method(name: str, obj, *args, **kwargs):
    jax, jnp = _jnp()
    if name in ("reshape", "view"):
        shape = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        return jnp.reshape(obj, tuple(shape))
    if name == "flatten":
        start = args[0] if args else kwargs.get("start_dim", 0)
        end = args[1] if len(args) > 1 else kwargs.get("end_dim", -1)
        return _flatten(start, end, obj)
    if name == "size":
        return obj.shape if not args else obj.shape[args[0]]
    if name == "unsqueeze":
        return jnp.expand_dims(obj, args[0])
    if name == "chunk":
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        return tuple(jnp.split(obj, args[0], axis=dim))
    if name == "expand":
        shape = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        shape = tuple(o if s == -1 else s for s, o in zip(shape, (1,) * (len(shape) - obj.ndim) + obj.shape))
        return jnp.broadcast_to(obj, shape)
    elementwise = {"exp": jnp.exp, "log": jnp.log, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "sqrt": jnp.sqrt,
                   "sin": jnp.sin, "cos": jnp.cos}
    if name in elementwise:
        return elementwise[name](obj)
    if name == "contiguous":
        return obj
    if name == "transpose":
        return jnp.swapaxes(obj, *(args or (kwargs["dim0"], kwargs["dim1"])))
    raise NotLowerable(f"tensor method .{name}()")


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return len(list(m.children())) == 0


def lower(module: nn.Module) -> Callable:
    """Trace ``module`` once and return ``fn(params, *inputs)`` built from JAX ops.

    ``params`` is what :func:`jax_params` returns for the module. Raises
    :class:`NotLowerable` naming the first operation JAX has no rule for. A module with buffers that
    change in training (:class:`ppgen.nn.norm.BatchNorm`'s running statistics) writes their new values
    into ``updates`` (``fn(params, *inputs, updates={})``), keyed like ``params``; without ``updates``
    they are dropped.
    """
    try:
        graph = _Tracer().trace(module)
    except Exception as err:  # fx cannot trace data-dependent control flow
        raise NotLowerable(f"{type(module).__name__} cannot be traced by torch.fx: {err}") from None
    modules = dict(module.named_modules())
    functions = _function_rules()
    nodes = list(graph.nodes)
    rules: dict[str, Callable] = {}
    stateful: set[str] = set()
    for node in nodes:
        if node.op == "call_module":
            rules[node.name] = _module_rule(modules[node.target])
            if isinstance(modules[node.target], BatchNorm):
                stateful.add(node.name)
        elif node.op == "call_function" and node.target not in functions:
            raise NotLowerable(f"function {getattr(node.target, '__name__', node.target)}")

    def fn(params: dict[str, Any], *inputs, updates: dict[str, Any] | None = None):
        env: dict[str, Any] = {}
        args_iter = iter(inputs)

        def load(a):
            return fx.node.map_arg(a, lambda n: env[n.name])

        for node in nodes:
            if node.op == "placeholder":
                env[node.name] = next(args_iter)
            elif node.op == "get_attr":
                env[node.name] = params[node.target]
            elif node.op == "call_module":
                prefix = node.target

                def p(name, prefix=prefix):
                    return params[f"{prefix}.{name}"]

                if node.name in stateful:
                    def put(name, value, prefix=prefix):
                        if updates is not None:
                            updates[f"{prefix}.{name}"] = value

                    env[node.name] = rules[node.name](p, *load(node.args), put)
                else:
                    env[node.name] = rules[node.name](p, *load(node.args))
            elif node.op == "call_function":
                env[node.name] = functions[node.target](*load(node.args), **load(node.kwargs))
            elif node.op == "call_method":
                obj, *rest = load(node.args)
                env[node.name] = _call_method(node.target, obj, *rest, **load(node.kwargs))
            elif node.op == "output":
                return load(node.args[0])
        raise NotLowerable("graph has no output")

    return fn
