"""Argument checks of the public Python calls (``ppgen.fit``, ``ppgen.load``, the estimators of
:mod:`ppgen.evaluation`): a value of the wrong kind is a one-line :class:`~ppgen.errors.UserError` saying what the
call expects, instead of an ``AttributeError`` or ``TypeError`` from deep inside Pyro or torch."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ppgen.errors import UserError
from ppgen.models.base import GenerativeModel


def kind_of(value: Any) -> str:
    """How a message names what it was given: ``a str 'vae'``, ``a list``, ``an ndarray of dtype <U1``."""
    if isinstance(value, str):
        text = f"str {value[:40]!r}"
    elif isinstance(value, (torch.Tensor, np.ndarray)):
        text = f"{type(value).__name__} of dtype {value.dtype}"
    else:
        text = type(value).__name__
    return ("an " if text[0].lower() in "aeiou" else "a ") + text


def check_pair(pair: Any, call: str) -> GenerativeModel:
    """``pair`` if it is a ppgen model/guide pair, else a UserError naming ``call`` and what it takes."""
    if not isinstance(pair, GenerativeModel):
        hint = (f"; build one with ppgen.models.get({pair!r})(x_shape=...)" if isinstance(pair, str) else
                " (an instance, not the class: call it with its options)" if isinstance(pair, type) else "")
        raise UserError(f"{call} expects a ppgen model/guide pair (such as ppgen.models.VAE(x_shape=(12,))), "
                        f"not {kind_of(pair)}{hint}")
    return pair


def check_examples(x: Any, call: str, what: str = "x") -> torch.Tensor:
    """``x`` as a floating-point tensor of examples (a tensor, NumPy array or nested list of numbers, one row per
    example), else a UserError naming ``call``, ``what`` and what it takes."""
    if isinstance(x, (list, tuple)):  # nested lists of numbers, as torch.as_tensor takes them
        try:
            x = np.asarray(x)
        except ValueError:  # ragged rows
            raise UserError(f"{call}: {what} is a ragged list; give rows of one length (a tensor or NumPy array of "
                            "numbers, one row per example)") from None
    if isinstance(x, torch.Tensor) and not x.is_sparse:
        tensor = x
    elif isinstance(x, np.ndarray) and x.dtype.kind in "biuf":
        tensor = torch.as_tensor(x)
    else:
        raise UserError(f"{call}: {what} must be a tensor or NumPy array of numbers (one row per example), not "
                        f"{kind_of(x)}")
    if tensor.dtype == torch.bool or not (tensor.is_floating_point() or tensor.dtype in
                                          (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
        raise UserError(f"{call}: {what} must hold real numbers, not {tensor.dtype}")
    if tensor.dim() < 1 or tensor.shape[0] == 0:
        raise UserError(f"{call}: {what} must hold at least one example, one per row (shape (N, ...)), not shape "
                        f"{tuple(tensor.shape)}")
    return tensor if tensor.is_floating_point() else tensor.float()


def check_path(path: Any, call: str, what: str) -> os.PathLike | str:
    """``path`` if it is a ``str`` or ``os.PathLike``, else a UserError naming ``call`` and ``what``."""
    if not isinstance(path, (str, os.PathLike)):
        raise UserError(f"{call} expects {what} as a str or pathlib.Path, not {kind_of(path)}")
    return path


def check_estimator_args(pair: Any, x: Any, call: str) -> Any:
    """For an estimator ``call(pair, x, ...)``: ``pair`` checked, ``x`` a tensor (a NumPy array of numbers becomes
    one; a text corpus's sparse counts pass as they are), else a one-line UserError."""
    check_pair(pair, call)
    if isinstance(x, torch.Tensor) or (not isinstance(x, np.ndarray) and hasattr(x, "ndim") and hasattr(x, "shape")):
        return x
    return check_examples(x, call)
