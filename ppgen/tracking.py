"""Experiment tracking: a training run's figures in TensorBoard or MLflow, from the command line or from Python.

``ppgen train vae --log tensorboard`` (event files in ``RUN/tensorboard``, or ``--log tensorboard=DIR``) and
``--log mlflow`` (an MLflow file store in ``RUN/mlruns``, experiment "ppgen", or ``--log mlflow=URI`` for any
tracking URI: ``sqlite:///mlflow.db``, ``http://host:5000``, a folder) log, through one :class:`Logger` each:

* the run's hyper-parameters (the options and the model's config) when training starts;
* every epoch's history row: the objective (``elbo`` or ``objective``), the validation ELBO, a family's own
  validation figures, the seconds and images per second, and, for a pair with an encoder, the KL of q(z|x)
  from the prior and the active units (Burda et al., 2016) on up to :data:`DIAGNOSTIC_EXAMPLES` validation
  examples;
* a grid of samples (means of p(x | z), z ~ p(z)) every ``samples_every`` epochs and after the last;
* the final metrics (``final/...``).

From Python the same loggers go to :func:`ppgen.fit`: ``ppgen.fit(pair, data, loggers=[TensorBoard("tb")])``.
TensorBoard's files are read by ``tensorboard --logdir DIR``; an MLflow file store by
``mlflow ui --backend-store-uri RUN/mlruns`` (MLflow 3 keeps the file store for reading and writing in
maintenance mode: ppgen sets ``MLFLOW_ALLOW_FILE_STORE=true`` for the file stores it opens).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ppgen.errors import UserError
from ppgen.models.base import GenerativeModel

#: the validation examples the per-epoch KL and active units are computed on
DIAGNOSTIC_EXAMPLES = 500
#: how often (in epochs) a sample grid is logged unless a logger says otherwise
SAMPLES_EVERY = 5
BACKENDS = ("tensorboard", "mlflow")
__all__ = ["BACKENDS", "Logger", "MLflow", "TensorBoard", "epoch_logger", "finish", "from_spec", "parse"]


class Logger(Protocol):
    """Where a run's figures go. ``start`` once, ``scalars``/``image`` per epoch, ``finish`` once."""

    samples_every: int

    def start(self, name: str, params: Mapping[str, Any]) -> None: ...

    def scalars(self, values: Mapping[str, float], step: int) -> None: ...

    def image(self, tag: str, picture: np.ndarray, step: int) -> None: ...

    def finish(self, metrics: Mapping[str, Any]) -> None: ...


def _flat(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested options as one level of ``a/b`` names."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _plain(value: Any) -> bool | int | float | str:
    """A hyper-parameter as TensorBoard and MLflow take it: a number, a flag or text."""
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of ``values`` (a history row, metrics) as floats; lists, text and None are left out."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


class TensorBoard:
    """TensorBoard event files in ``log_dir`` (torch's ``SummaryWriter``; needs the ``tensorboard`` package).

    Scalars are tagged ``train/<column>`` per epoch and ``final/<metric>`` at the end, the sample grid
    ``samples``, the hyper-parameters in TensorBoard's HParams tab (with the final metrics) and as a text table.
    """

    def __init__(self, log_dir: str | Path, samples_every: int = SAMPLES_EVERY) -> None:
        require("tensorboard")
        self.log_dir = Path(log_dir)
        self.samples_every = samples_every
        self.writer: Any = None
        self.params: dict[str, Any] = {}
        self.step = 0

    def start(self, name: str, params: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.params = {k: _plain(v) for k, v in _flat(params).items()}
        table = "\n".join(f"| {k} | {v} |" for k, v in self.params.items())
        self.writer.add_text("hparams", f"| option | value |\n|---|---|\n{table}", 0)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.step = step
        self.writer.flush()

    def image(self, tag: str, picture: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, picture, step, dataformats="HWC")
        self.writer.flush()

    def finish(self, metrics: Mapping[str, Any]) -> None:
        final = {f"final/{k}": v for k, v in numbers(metrics).items()}
        self.scalars(final, self.step)
        self.writer.add_hparams(self.params, final, run_name=".", global_step=self.step)
        self.writer.close()


class MLflow:
    """An MLflow run (experiment ``experiment``) at the tracking URI ``uri``; a folder or ``file:`` URI is a file
    store. Metrics are named ``train/<column>`` (step: the epoch) and ``final/<metric>``; the sample grids are
    MLflow images (key ``samples``)."""

    def __init__(self, uri: str | Path, experiment: str = "ppgen", samples_every: int = SAMPLES_EVERY) -> None:
        require("mlflow")
        self.uri = _tracking_uri(uri)
        self.experiment = experiment
        self.samples_every = samples_every
        self.client: Any = None
        self.run_id = ""
        self.step = 0

    def start(self, name: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        if self.uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        # MLflow keeps a parameter's value as text of at most 6000 characters
        values = [Param(k.replace("/", "."), str(_plain(v))[:6000]) for k, v in _flat(params).items()]
        for start in range(0, len(values), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=values[start:start + 100])

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.step = step

    def image(self, tag: str, picture: np.ndarray, step: int) -> None:
        self.client.log_image(self.run_id, picture, key=tag, step=step)

    def finish(self, metrics: Mapping[str, Any]) -> None:
        self.scalars({f"final/{k}": v for k, v in numbers(metrics).items()}, self.step)
        self.client.set_terminated(self.run_id)


def _tracking_uri(uri: str | Path) -> str:
    """An MLflow tracking URI; a bare folder becomes the ``file:`` URI of its absolute path."""
    text = str(uri)
    if "://" in text or text.startswith("file:"):
        return text
    return Path(text).resolve().as_uri()


#: the module each backend imports, and the smallest distribution that provides it (MLflow's client and stores come
#: in mlflow-skinny, without the server, UI and SQL stack; ``pip install mlflow`` adds those)
INSTALL = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny")}


def require(backend: str) -> None:
    """A one-line :class:`UserError` if ``backend``'s package is not installed."""
    import importlib.util

    module, distribution = INSTALL[backend]
    if importlib.util.find_spec(module) is None:
        raise UserError(f"--log {backend} needs the {module} package: pip install 'ppgen[track]' "
                        f"(or pip install {distribution})")


def parse(spec: str) -> tuple[str, str | None]:
    """``--log BACKEND[=WHERE]`` -> (backend, where or None); an unknown backend is a one-line UserError."""
    backend, _, where = spec.partition("=")
    backend = backend.strip().lower()
    if backend not in BACKENDS:
        raise UserError(f"--log {spec}: unknown tracking backend {backend!r}; choose tensorboard[=DIR] or "
                        "mlflow[=URI]")
    if _ == "=" and not where:
        raise UserError(f"--log {spec}: give a place after '=' or drop it (default: inside the run directory)")
    require(backend)
    if where:
        _check_writable(spec, where)
    return backend, where or None


def _local_folder(where: str) -> Path | None:
    """The local folder a ``--log`` place names (a path or a ``file:`` URI), None for a remote tracking URI."""
    if where.startswith("file:"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(where).path))
    return None if "://" in where else Path(where)


def _check_writable(spec: str, where: str) -> None:
    """A one-line :class:`UserError`, before anything is written, if the folder ``where`` names cannot be made or
    written: a folder is made and removed in its nearest existing ancestor (permissions alone do not say: root may
    write anywhere but in /proc)."""
    import tempfile

    folder = _local_folder(where)
    if folder is None:
        return
    existing = folder.expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        Path(tempfile.mkdtemp(prefix=".ppgen-log-check-", dir=existing)).rmdir()
    except OSError:
        raise UserError(f"--log {spec}: cannot write in {existing}; choose a folder you can write to (or drop "
                        "'=...': the run directory holds it)") from None


def from_spec(spec: str, run_dir: Path) -> TensorBoard | MLflow:
    """The logger of one ``--log`` value: TensorBoard in ``RUN/tensorboard`` or an MLflow file store in
    ``RUN/mlruns`` unless a place is given."""
    backend, where = parse(spec)
    if backend == "tensorboard":
        return TensorBoard(where or Path(run_dir) / "tensorboard")
    return MLflow(where or Path(run_dir) / "mlruns")


def sample_picture(pair: GenerativeModel, images: bool, seed: int = 0) -> np.ndarray | None:
    """The samples grid of :func:`ppgen.plots.sample_grid` as an (H, W, 3) array in [0, 1]; None for a pair that
    cannot generate."""
    if not pair.can_generate:
        return None
    from matplotlib.image import imread

    from ppgen import plots

    was_training = pair.training
    pair.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            samples = pair.generate(64 if images else 2500).detach().cpu()
    finally:
        pair.train(was_training)
    with tempfile.TemporaryDirectory() as folder:
        path = plots.sample_grid(samples, Path(folder) / "samples.png", f"{pair.name} samples")
        picture = imread(path)
    return np.ascontiguousarray(picture[..., :3])


def encoder_figures(pair: GenerativeModel, x: torch.Tensor, inputs: Sequence[torch.Tensor] = ()) -> dict[str, float]:
    """KL(q(z|x) || p(z)) summed over dimensions and the active units, on ``x``, for a pair with one encoded
    latent; {} otherwise (or where the family cannot say)."""
    if not pair.has_encoder or len(pair.latent_sites) != 1 or len(x) < 2:
        return {}
    from ppgen.evaluation import active_units, kl_per_dim

    was_training = pair.training
    pair.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            kl = kl_per_dim(pair, x, inputs=tuple(inputs))
            units, _ = active_units(pair, x, inputs=tuple(inputs))
    except (UserError, NotImplementedError, ValueError):
        return {}
    finally:
        pair.train(was_training)
    return {"kl": float(kl.sum()), "active_units": float(units)}


def epoch_logger(loggers: Sequence[Logger], name: str, params: Mapping[str, Any], data: Any = None
                 ) -> Callable[[Any], None]:
    """An ``on_epoch_end(fit)`` that logs the epoch's history row (and the encoder's figures, and every
    ``samples_every`` epochs a sample grid) to each of ``loggers``; the first call starts them with ``params``."""
    started: list[bool] = []

    def log_epoch(fit: Any) -> None:
        if not started:
            for logger in loggers:
                logger.start(name, params)
            started.append(True)
        row = fit.history[-1]
        epoch = int(row["epoch"])
        values = {f"train/{k}": v for k, v in numbers(row).items() if k not in ("epoch", "wall")}
        if data is not None and len(data.val):
            device = next(iter(fit.pair.parameters()), torch.empty(0)).device
            x = data.val[:DIAGNOSTIC_EXAMPLES].to(device)
            inputs = [c[:DIAGNOSTIC_EXAMPLES].to(device) for c in data.inputs("val", fit.pair.inputs)]
            values.update({f"train/val_{k}": v for k, v in encoder_figures(fit.pair, x, inputs).items()})
        for logger in loggers:
            logger.scalars(values, epoch)
        last = epoch == fit.options.get("epochs")
        due = [logger for logger in loggers if last or (logger.samples_every and epoch % logger.samples_every == 0)]
        picture = sample_picture(fit.pair, bool(getattr(data, "is_images", True))) if due else None
        if picture is not None:
            for logger in due:
                logger.image("samples", picture, epoch)

    return log_epoch


def finish(loggers: Sequence[Logger], metrics: Mapping[str, Any]) -> None:
    """Log the final ``metrics`` and close each logger."""
    for logger in loggers:
        logger.finish(metrics)
