"""The top-level calls: ``ppgen.fit`` and ``ppgen.load``.

``ppgen.fit`` takes a pair (an instance of a family, ``ppgen.models.VAE(x_shape=(1, 8, 8))``), not a family name:
the options of a family go to its constructor, the keywords of ``fit`` are the backend's training options, so a name
would leave no place for them. It takes the data as the CLI's ``--data`` does (a bundled name such as ``"digits"``
or a file path, loaded with the CLI's defaults), as a :class:`~ppgen.data.Dataset`, or as a tensor, NumPy array or
nested list of examples. Anything else is a one-line :class:`~ppgen.errors.UserError` saying what is expected.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ppgen.data import Dataset, from_tensor
from ppgen.data import load as load_data
from ppgen.errors import UserError
from ppgen.evaluation.likelihood import validation_callback
from ppgen.inference import Fit
from ppgen.inference import fit as backend_fit
from ppgen.inference.loop import restore_best
from ppgen.models.arguments import check_examples, check_pair, check_path, kind_of
from ppgen.models.base import GenerativeModel


def fit(pair: GenerativeModel, data: Dataset | torch.Tensor | np.ndarray | str | os.PathLike, backend: str = "svi",
        **options: Any) -> Fit:
    """Train or sample ``pair`` on ``data`` with ``backend`` ("svi" and, where installed, "nuts", "adversarial").

    ``data``: a :class:`~ppgen.data.Dataset`, a tensor, NumPy array or nested list of examples (one per row), or a data set name
    or path as ``ppgen train --data`` takes (``"digits"``, ``"mnist"``, a .npz file). For SVI on a
    :class:`~ppgen.data.Dataset` with a validation split, the validation ELBO is recorded every epoch
    (``history[i]["val_elbo"]``); pass ``monitor="val_elbo"`` to keep and restore the best epoch's weights.
    """
    check_pair(pair, "ppgen.fit")
    data = as_dataset(data, "ppgen.fit")
    if not isinstance(backend, str):
        raise UserError(f"ppgen.fit: backend must be a name such as 'svi', not {kind_of(backend)}")
    given = options.get("options")  # the backend's options object, if one was passed (keywords replace its fields)
    if backend == "svi" and "callback" not in options and len(data.val):
        options["callback"] = validation_callback(data, options.get("seed", getattr(given, "seed", 0)))
    result = backend_fit(pair, data, backend=backend, **options)
    if options.get("monitor", getattr(given, "monitor", None)):
        restore_best(result)
    return result


def as_dataset(data: Any, call: str) -> Dataset:
    """``data`` as a :class:`~ppgen.data.Dataset`: as it is, loaded by name or path (the CLI's ``--data``), or
    wrapped (a tensor, NumPy array or nested list of examples); anything else is a UserError naming ``call``."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_data(os.fspath(data))
    if isinstance(data, (torch.Tensor, np.ndarray, list, tuple)):
        return from_tensor(check_examples(data, call, "data"))
    raise UserError(f"{call}: data must be a ppgen.data.Dataset, a tensor or NumPy array of examples, or a data set "
                    f"name or path such as 'digits', not {kind_of(data)}")


def load(run_dir: str | os.PathLike) -> GenerativeModel:
    """The trained pair of a run directory written by ``ppgen train``."""
    from ppgen.runs import load_pair

    return load_pair(check_path(run_dir, "ppgen.load", "the run directory"))
