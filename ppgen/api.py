"""The top-level calls: ``ppgen.fit``, ``ppgen.save`` and ``ppgen.load``.

``ppgen.fit`` takes a pair (an instance of a family, ``ppgen.models.VAE(x_shape=(1, 8, 8))``), not a family name:
the options of a family go to its constructor, the keywords of ``fit`` are the backend's training options, so a name
would leave no place for them. It takes the data as the CLI's ``--data`` does (a bundled name such as ``"digits"``
or a file path, loaded with the CLI's defaults), as a :class:`~ppgen.data.Dataset`, or as a tensor, NumPy array or
nested list of examples. Anything else is a one-line :class:`~ppgen.errors.UserError` saying what is expected.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ppgen import runs
from ppgen.data import BUNDLED, Dataset, from_tensor
from ppgen.data import load as load_data
from ppgen.errors import UserError
from ppgen.evaluation.likelihood import validation_callback
from ppgen.inference import Fit
from ppgen.inference import fit as backend_fit
from ppgen.inference.fit import TrainState
from ppgen.inference.loop import restore_best
from ppgen.models import REGISTRY
from ppgen.models.arguments import check_examples, check_pair, check_path, kind_of
from ppgen.models.base import GenerativeModel
from ppgen.tracking import Logger, epoch_logger, finish

#: what ``callback=`` returns each epoch: figures added to the epoch's history row
Callback = Callable[[Fit], "dict[str, Any] | None"]


def fit(pair: GenerativeModel, data: Dataset | torch.Tensor | np.ndarray | str | os.PathLike, backend: str = "svi",
        *, callback: Callback | Literal["default"] | None = "default",
        on_epoch_end: Callable[[Fit], None] | None = None, loggers: Sequence[Logger] = (), **options: Any) -> Fit:
    """Train or sample ``pair`` on ``data`` with ``backend`` ("svi" and, where installed, "nuts", "adversarial").

    ``data``: a :class:`~ppgen.data.Dataset`, a tensor, NumPy array or nested list of examples (one per row), or a data set name
    or path as ``ppgen train --data`` takes (``"digits"``, ``"mnist"``, a .npz file). The
    backend's options come as keywords or as its options object ``options=`` (``SVIOptions``, ``NUTSOptions``,
    ``AdversarialOptions``; keywords given beside it replace its fields): for SVI ``epochs``, ``batch_size``,
    ``lr``, ``num_particles``, ``seed``, ``device``, ``engine``, ``monitor``, … (``ppgen.inference.options``).

    For SVI on a data set with a validation split, the validation ELBO is recorded every epoch
    (``history[i]["val_elbo"]``); ``monitor="val_elbo"`` keeps and restores the best epoch's weights.
    ``callback(fit)`` returns more figures for each epoch's history row (beside the validation ELBO;
    ``callback=None`` records neither);
    ``on_epoch_end(fit)`` runs after each epoch. ``loggers`` (:class:`ppgen.tracking.TensorBoard`,
    :class:`ppgen.tracking.MLflow`) receive the options, every epoch's row, sample grids and the final figures.
    """
    check_pair(pair, "ppgen.fit")
    data = as_dataset(data, "ppgen.fit")
    if not isinstance(backend, str):
        raise UserError(f"ppgen.fit: backend must be a name such as 'svi', not {kind_of(backend)}")
    if loggers and backend == "nuts":
        raise UserError("loggers follow training epochs; NUTS has none: drop loggers= (its draws are in fit.samples)")
    given = options.get("options")  # the backend's options object, if one was passed (keywords replace its fields)
    if callback not in (None, "default") and not callable(callback):
        raise UserError(f"callback must be a function of the fit (or None), got {type(callback).__name__}")
    callbacks = [callback] if callable(callback) else []
    if backend == "svi" and len(data.val) and callback is not None:
        callbacks.insert(0, validation_callback(data, options.get("seed", getattr(given, "seed", 0))))
    if callbacks:
        options["callback"] = _all_of(callbacks)
    hooks = [hook for hook in (on_epoch_end,) if hook is not None]
    if loggers:
        hooks.append(epoch_logger(loggers, pair.name or type(pair).__name__, _params(pair, backend, options), data))
    if hooks:
        options["on_epoch_end"] = _each_of(hooks)
    result = backend_fit(pair, data, backend=backend, **options)
    if options.get("monitor", getattr(given, "monitor", None)):
        restore_best(result)
    if loggers:
        finish(loggers, {**result.last, "best_epoch": getattr(result.state, "best_epoch", None)})
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


def _all_of(callbacks: list[Callback]) -> Callback:
    """One callback whose figures are all of ``callbacks``' figures (later ones win a shared name)."""
    def every(fit: Fit) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for callback in callbacks:
            row.update(callback(fit) or {})
        return row

    return every


def _each_of(hooks: list[Callable[[Fit], None]]) -> Callable[[Fit], None]:
    def each(fit: Fit) -> None:
        for hook in hooks:
            hook(fit)

    return each


def _params(pair: GenerativeModel, backend: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The hyper-parameters a logger records: the backend, its options and the pair's config."""
    given = options.get("options")
    chosen = dataclasses.asdict(given) if dataclasses.is_dataclass(given) and not isinstance(given, type) else {}
    chosen.update({k: v for k, v in options.items() if k not in ("options", "callback", "on_epoch_end")})
    config = pair.config_dict() if isinstance(pair, GenerativeModel) else {}
    return {"model": pair.name or type(pair).__name__, "backend": backend, "train": chosen, "model_config": config}


def save(pair: GenerativeModel, path: str | Path, fit: Fit | None = None, *, data: Dataset | str | None = None,
         overwrite: bool = False) -> Path:
    """Write ``pair`` (trained in Python) as a run directory that ``ppgen evaluate``, ``ppgen sample`` and
    :func:`load` read: config.json, model.pt and, with its ``fit``, checkpoint.pt, history.csv and metrics.json.

    ``data`` (a bundled name, a path, or a :class:`~ppgen.data.Dataset` loaded from one) is the data set
    ``ppgen evaluate`` scores the run on. The folder appears complete or not at all (it is built beside ``path``
    and renamed into place); an existing run is replaced only with ``overwrite``.
    """
    if not isinstance(pair, GenerativeModel) or REGISTRY.get(pair.name) is not type(pair):
        raise UserError(f"ppgen.save writes registered families only, not {type(pair).__name__}: give the class a "
                        "name (name = \"...\") so `ppgen` can rebuild it from config.json")
    config: dict[str, Any] = {"model": pair.name, "model_options": pair.config_dict(),
                              "model_config": pair.config_dict(), "inputs": list(pair.inputs)}
    if fit is not None:
        config["train"] = {**runs.standard_json(fit.options), "backend": fit.backend}
    if data is not None:
        config["data"] = _data_section(data)
    if Path(path).exists() and not overwrite:
        raise UserError(f"{path} exists; choose another path or pass overwrite=True to replace it")
    state = {k: v.detach().cpu() for k, v in pair.state_dict().items()}

    def write(folder: Path) -> None:
        runs.save_torch(folder / runs.MODEL, state)
        if fit is not None and isinstance(fit.state, TrainState):
            runs.save_torch(folder / runs.CHECKPOINT, fit.checkpoint())
        if fit is not None:
            runs.write_history(folder, fit.history)
            runs.write_json(folder / runs.METRICS, _fit_metrics(fit))
        runs.write_json(folder / runs.CONFIG, config)

    return runs.write_new_run(Path(path), write, overwrite=overwrite)


def _data_section(data: Dataset | str) -> dict[str, Any]:
    """config.json's ``data``: what reloads the same data set (``ppgen.data.load(name, ...)``)."""
    if isinstance(data, str):
        return {"name": data}
    if data.name not in BUNDLED and not Path(data.name).exists():
        raise UserError(f"data {data.name!r} cannot be loaded again by name; pass data= a bundled name or a path "
                        "(or leave it out: `ppgen evaluate` then needs the run's data)")
    inputs = [name for name in data.input_names if name != "y"] or None
    return {"name": data.name, "binarize": data.binarize, "seed": data.seed,
            "split_seed": data.info.get("split_seed", 0), "inputs": inputs}


def _fit_metrics(fit: Fit) -> dict[str, Any]:
    last = {k: v for k, v in fit.last.items() if isinstance(v, int | float) and math.isfinite(v)}
    state = fit.state if isinstance(fit.state, TrainState) else None
    return {**last, "epochs": state.epoch if state else None, "best_epoch": state.best_epoch if state else None,
            "stopped": fit.stopped, "backend": fit.backend}


def load(run_dir: str | os.PathLike) -> GenerativeModel:
    """The trained pair of a run directory written by ``ppgen train`` or :func:`save` (in evaluation mode)."""
    pair: GenerativeModel = runs.load_pair(check_path(run_dir, "ppgen.load", "the run directory"))
    return pair
