"""The top-level calls: ``ppgen.fit`` and ``ppgen.load``."""

from __future__ import annotations

from typing import Any

import torch

from ppgen.data import Dataset, from_tensor
from ppgen.evaluation.likelihood import validation_callback
from ppgen.inference import Fit
from ppgen.inference import fit as backend_fit
from ppgen.inference.loop import restore_best


def fit(pair, data: Any, backend: str = "svi", **options) -> Fit:
    """Train or sample ``pair`` on ``data`` with ``backend`` ("svi" and, where installed, "nuts", "adversarial").

    For SVI on a :class:`~ppgen.data.Dataset` with a validation split, the validation
    ELBO is recorded every epoch (``history[i]["val_elbo"]``); pass
    ``monitor="val_elbo"`` to keep and restore the best epoch's weights.
    """
    if not isinstance(data, Dataset):
        data = from_tensor(torch.as_tensor(data))
    given = options.get("options")  # the backend's options object, if one was passed (keywords replace its fields)
    if backend == "svi" and "callback" not in options and len(data.val):
        options["callback"] = validation_callback(data, options.get("seed", getattr(given, "seed", 0)))
    result = backend_fit(pair, data, backend=backend, **options)
    if options.get("monitor", getattr(given, "monitor", None)):
        restore_best(result)
    return result


def load(run_dir) -> Any:
    """The trained pair of a run directory written by ``ppgen train``."""
    from ppgen.runs import load_pair

    return load_pair(run_dir)
