"""``ppgen train``: a run's config (every option validated before anything is written), training on either
backend into a run directory with a checkpoint per epoch, then the selected weights, metrics, pictures and
posterior.nc."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from ppgen import data as datasets
from ppgen import models, plots, runs, tracking
from ppgen.declare import check_values
from ppgen.errors import UserError
from ppgen.evaluation.likelihood import validation_callback
from ppgen.inference import distributed
from ppgen.inference import fit as backend_fit
from ppgen.inference.loop import restore_best
from ppgen.inference.options import AdversarialOptions, OptionError, SVIOptions, as_dict, flag_of
from ppgen.inference.options import make as make_options
from ppgen.progress import heartbeat
from ppgen.workflows.common import (
    check_split_inputs,
    device_of,
    has_density,
    metric_columns,
    mode_metrics,
    quick_metrics,
    run_data,
    split_inputs,
)
from ppgen.workflows.topics import with_topic_coherence

#: what ``ppgen train`` sets differently from the library's defaults (a run trains longer than a quick fit)
CLI_DEFAULTS = {"epochs": 30}
#: options of the run, not of an engine
RUN_OPTIONS = {"select": "best"}
BACKENDS = ("svi", "adversarial")


def _option_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def backend_options(backend: str, train: dict) -> Any:
    """The validated options dataclass of ``backend`` for a run's ``train`` section (without run options)."""
    values = {k: v for k, v in train.items() if k not in RUN_OPTIONS and k != "backend"}
    return make_options(AdversarialOptions if backend == "adversarial" else SVIOptions, values)


def make_config(model: str, model_options: dict, data_options: dict, train_options: dict) -> dict:
    """The run's config; ``train_options["backend"]`` defaults to the family's ``default_backend`` (SVI).

    Every training option is validated here (:mod:`ppgen.inference.options`), before anything is written.
    """
    cls = models.get(model)
    check_values(cls.Config, model_options)  # a bad model option is refused before the data are read
    train_options = dict(train_options)
    backend = train_options.pop("backend", None) or cls.default_backend
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    adversarial = backend == "adversarial"
    own = _option_names(AdversarialOptions) if adversarial else _option_names(SVIOptions) | set(RUN_OPTIONS)
    wrong = sorted(k for k in train_options if k not in own)
    if wrong:
        other = "svi" if adversarial else "adversarial"
        raise OptionError(wrong[0], train_options[wrong[0]], f"only for --backend {other}, not {backend}; drop "
                          f"{'it' if len(wrong) == 1 else 'it (and ' + ', '.join(flag_of(k) for k in wrong[1:]) + ')'}"
                          f" or choose --backend {other}")
    run_options = {} if adversarial else {**RUN_OPTIONS, "select": cls.default_select}
    train = {**CLI_DEFAULTS, **cls.train_defaults, **run_options, **train_options}
    options = backend_options(backend, train)  # validates; the config records every value
    train = {**as_dict(options), **{k: train[k] for k in RUN_OPTIONS if k in train}}
    train.pop("monitor", None)  # set by --select
    declared = {f.name: f.default for f in dataclasses.fields(cls.Config)}
    likelihood = model_options.get("likelihood", declared.get("likelihood"))
    if adversarial and likelihood != "bernoulli" and data_options.get("binarize", "default") == "default":
        data_options = {**data_options, "binarize": None}  # a generator learns grey levels, not binarized digits
    if cls.trains_on_grey_levels(model_options) and data_options.get("binarize", "default") == "default":
        data_options = {**data_options, "binarize": None}  # a Bernoulli scoring grey levels (M2) is given them
    return {"model": cls.name, "model_options": model_options, "data": data_options,
            "train": {**train, "backend": backend}}


def _build(config: dict, data: datasets.Dataset):
    cls = models.get(config["model"])
    stored = config.get("model_config") if isinstance(config.get("model_config"), dict) else {}
    options = {**stored, **config["model_options"]}  # a resumed run: every value it was trained with
    trained = config.get("model_config", {}).get("x_shape") if isinstance(config.get("model_config"), dict) else None
    options.setdefault("x_shape", trained or data.x_shape)  # a resumed run keeps the shape it was trained on
    if tuple(options["x_shape"]) != data.x_shape:
        raise UserError(f"the model expects examples shaped {tuple(options['x_shape'])} but {data.name} has "
                        f"{data.x_shape}; give data of that shape (a resumed run needs the data it was trained on)")
    if "num_data" in {f.name for f in dataclasses.fields(cls.Config)}:  # a family scaled by the training-set size
        options.setdefault("num_data", (config.get("model_config") or {}).get("num_data") or len(data.train))
    pair = cls.from_config(options, written=bool(stored))  # a new run: what was not given takes its default
    config["model_config"] = pair.config_dict()
    config["inputs"] = list(pair.inputs)  # the data set's columns the pair takes beside x
    return pair


def _check_kept_labels(pair, data_options: dict) -> None:
    """``--labels N`` keeps N labels of a column the pair takes as an input; a pair that takes none has no use for it."""
    column = data_options.get("label_column", "y")
    if data_options.get("labels") is not None and column not in pair.inputs:
        raise UserError(f"--labels keeps labels of the input column {column!r}, which {pair.who} does not take (its "
                        "model is model(x)); drop --labels, or train a family whose model takes the labels, "
                        "model(x, y)")


def train_run(config: dict, out: Path, resume: bool = False, overwrite: bool = False, progress: bool | None = None,
              log=print, track: tuple[str, ...] = ()) -> dict:
    """Train the run described by ``config`` into ``out`` (or continue it); return its metrics.

    Every check (output folder, data, model, checkpoint, tracking backends) runs before anything is written; a new
    run appears at ``out`` only with its first checkpoint, and a resumed one changes only from then on. What is
    logged is also written to ``out/train.log`` (a resumed run's lines follow the earlier ones). ``track``: the
    ``--log`` values (``tensorboard[=DIR]``, ``mlflow[=URI]``, :mod:`ppgen.tracking`).
    """
    out = Path(out)
    for spec in track:
        tracking.parse(spec)
    if resume:
        runs.open_run(out)
    else:
        runs.check_new_run_dir(out, overwrite)
    data = run_data(config)
    torch.manual_seed(config["train"].get("seed", 0))  # the networks' initial weights
    pair = _build(config, data)
    _check_kept_labels(pair, config.get("data", {}))
    train = dict(config["train"])
    backend = train.get("backend", "svi")
    select = train.get("select", "best" if backend == "svi" else "last")
    backend_options(backend, train)  # a damaged or hand-edited config is refused before anything is opened
    pair.check_data(data.train_epoch(0), f"{data.name} training data")
    check_split_inputs(pair, data)
    checkpoint = _resumable_checkpoint(out, pair, backend, train) if resume else None
    if not distributed.is_writer():  # data-parallel: the other processes train their shards and write nothing
        return _train_shard(pair, data, backend, config, checkpoint)
    log = Transcript(log, _earlier_log(out) if resume else "")
    log(data.describe())
    if _finishing(checkpoint, train):
        log(f"{out}: training ended at epoch {train['epochs']} but the run was stopped before its final stage; "
            "finishing it (selected weights, metrics, pictures)")
    start = time.perf_counter()

    def body(run: runs.RunWriter) -> dict:
        return _train(pair, data, backend, select, checkpoint, run, progress, log, start, track)

    opened = runs.resumed_run(out, config) if resume else runs.new_run(out, config, overwrite=overwrite)
    with opened as run:
        return body(run)


def _train_shard(pair, data: datasets.Dataset, backend: str, config: dict, checkpoint: dict | None) -> dict:
    """A data-parallel process other than rank 0: the same training, no files, no log, no progress bar."""
    options = backend_options(backend, config["train"])
    quiet = {"announce": lambda message: None} if backend == "svi" else {}
    fit = backend_fit(pair, data, backend=backend, options=options, progress=False, resume=checkpoint, **quiet)
    return {"epochs": fit.state.epoch, "stopped": fit.stopped}


def _resumable_checkpoint(run_dir: Path, pair, backend: str, train: dict) -> dict:
    """The run's checkpoint, checked against the rebuilt pair, its backend and the new number of epochs."""
    checkpoint = runs.load_checkpoint(run_dir)
    if checkpoint.get("backend", backend) != backend:
        raise UserError(f"{run_dir} was trained with the {checkpoint['backend']} backend, not {backend}; resume it "
                        "with its own backend")
    runs.check_weights(pair, checkpoint["model"], run_dir / runs.CHECKPOINT)
    done = checkpoint["state"].get("epoch", 0)
    epochs = train.get("epochs")
    if isinstance(epochs, int) and (done > epochs or (done == epochs and runs.is_finished(run_dir, done))):
        raise UserError(f"{run_dir} already trained {done} epochs; nothing to resume: give --epochs above {done}")
    return checkpoint


def _finishing(checkpoint: dict | None, train: dict) -> bool:
    """Whether a resume only finishes the run: its training ended (the checkpoint holds every epoch) but its final
    stage (selected weights, metrics, pictures) was cut short."""
    return checkpoint is not None and checkpoint["state"].get("epoch", 0) == train.get("epochs")


class Transcript:
    """``log`` that also keeps the lines, to be written as the run's train.log after ``earlier`` (a resumed run's)."""

    def __init__(self, echo, earlier: str = "") -> None:
        self.echo = echo
        self.lines = [earlier.rstrip("\n")] if earlier.strip() else []

    def __call__(self, text: str) -> None:
        self.echo(text)
        self.lines.append(str(text))

    def write(self, run_dir: Path) -> None:
        runs.atomic_write_bytes(Path(run_dir) / runs.TRAIN_LOG, ("\n".join(self.lines) + "\n").encode())


def _earlier_log(run_dir: Path) -> str:
    try:
        return (Path(run_dir) / runs.TRAIN_LOG).read_text()
    except (OSError, UnicodeDecodeError):
        return ""


def _train(pair, data: datasets.Dataset, backend: str, select: str, checkpoint: dict | None, run: runs.RunWriter,
           progress, log, start: float, track: tuple[str, ...] = ()) -> dict:
    """Train on either backend with a checkpoint per epoch; then the selected weights, metrics and pictures."""
    config = run.config
    options = backend_options(backend, config["train"])
    svi_only = {}
    callback = None
    if backend == "svi":
        options = dataclasses.replace(options, monitor=pair.select_by if select == "best" else None)
        svi_only["announce"] = log
        callback = with_topic_coherence(with_family_metrics(validation_callback(data, options.seed), data), data)

    loggers: list = []
    tracked: list = []

    def on_epoch_end(fit) -> None:
        if backend == "svi" and config["train"].get("engine") != fit.options.get("engine"):
            config["train"]["engine"] = fit.options["engine"]  # what `auto` chose: a resume uses the same
            if run.checkpoints:  # (before the first checkpoint, the config is written with it)
                runs.write_json(run.path / runs.CONFIG, config)
        run.save_checkpoint(fit)
        _log_epoch(fit, log)
        if track and not loggers:  # opened once the run is in place (its first checkpoint published it)
            loggers.extend(tracking.from_spec(spec, run.path) for spec in track)
            tracked.append(tracking.epoch_logger(loggers, config["model"], _tracked_params(config), data))
        for hook in tracked:
            hook(fit)
        if isinstance(log, Transcript):
            log.write(run.path)

    fit = backend_fit(pair, data, backend=backend, options=options, progress=progress, resume=checkpoint,
                      callback=callback, on_epoch_end=on_epoch_end, **svi_only)
    if not (_finishing(checkpoint, config["train"]) and fit.stopped is None):
        run.require_checkpoint(fit.stopped)
    if fit.stopped:
        log(f"training stopped: {fit.stopped}")
    if select == "best":
        restore_best(fit)
    run_dir = run.path
    runs.save_torch(run_dir / runs.MODEL, pair.state_dict())
    density = has_density(pair, data.train[:2], split_inputs(pair, data, "train", device_of(pair), limit=2))
    metrics: dict[str, Any] = quick_metrics(pair, data) if density else {}
    metrics.update(mode_metrics(pair, data.name))
    last = fit.history[-1] if fit.history else {}
    metrics.update({k: last[k] for k in ("loss_d", "loss_g", "w_distance") if k in last})
    metrics.update(epochs=fit.state.epoch, train_seconds=round(time.perf_counter() - start, 2), stopped=fit.stopped)
    if backend == "svi":
        metrics.update(best_epoch=fit.state.best_epoch, engine=fit.options.get("engine"))
    metrics.update(kept_epoch(fit, select, pair))
    pictures(pair, data, fit.history, run_dir)
    if density and backend == "svi" and posterior_fits(pair, data.train[:1], log=log,
                                                       inputs=split_inputs(pair, data, "train", limit=1)):
        write_posterior(fit, data, run_dir, log=log)
    tracking.finish(loggers, metrics)
    if isinstance(log, Transcript):
        log.write(run_dir)
    runs.write_json(run_dir / runs.METRICS, metrics)  # last: a run with metrics.json is finished (runs.is_finished)
    return metrics


def _tracked_params(config: dict) -> dict:
    """A run's hyper-parameters for the trackers: its data, training options and the model's config."""
    return {key: config[key] for key in ("model", "data", "train", "model_config") if key in config}


#: the most latent values posterior.nc holds (16 points x 1,000 draws x the latents per example)
POSTERIOR_VALUES = 50_000_000


def posterior_fits(pair, x: torch.Tensor, points: int = 16, draws: int = 1000, log=print,
                   inputs: tuple[torch.Tensor, ...] = ()) -> bool:
    """Whether posterior.nc (``draws`` of every latent for ``points`` examples) stays under POSTERIOR_VALUES; if not,
    say so (a diffusion model's T latents shaped like x are too many to keep). ``inputs``: the pair's input columns
    beside ``x``."""
    from pyro import poutine

    from ppgen.sites import sample_sites

    with torch.no_grad():
        guide_tr = poutine.trace(pair.guide).get_trace(x[:1], *(c[:1] for c in inputs))  # one example
    per_example = sum(s["value"].numel() for s in sample_sites(guide_tr).values() if not s["is_observed"])
    if per_example * points * draws <= POSTERIOR_VALUES:
        return True
    log(f"posterior.nc not written: {points} examples x {draws} draws x {per_example} latent values per example "
        f"exceed {POSTERIOR_VALUES:,}")
    return False


def write_posterior(fit, data: datasets.Dataset, run_dir: Path, points: int = 16, seed: int = 0, log=print) -> None:
    """posterior.nc: ArviZ draws of q(z | x) (4 chains x 250) for the first test examples (with their input columns,
    for a pair that takes them)."""
    from ppgen.diagnostics import to_inference_data

    split = "test" if len(data.test) else "train"
    x = getattr(data, split)[:points].to(device_of(fit.pair))
    inputs = split_inputs(fit.pair, data, split, device_of(fit.pair), limit=points)
    with torch.random.fork_rng(devices=[]), heartbeat(f"posterior.nc: 4 x 250 draws of q(z | x) for {len(x)} examples"):
        idata = to_inference_data(fit, x=x, num_samples=1000, chains=4, seed=seed, inputs=inputs)
    runs.write_netcdf(run_dir / "posterior.nc", idata)


def _log_epoch(fit, log) -> None:
    row = fit.history[-1]
    val = f"  val ELBO {row['val_elbo']:8.2f}" if "val_elbo" in row else ""
    if "elbo" in row or "objective" in row:
        text = (f"train ELBO {row['elbo']:8.2f}" if "elbo" in row else f"train objective {row['objective']:8.4f}") + val
    else:
        text = f"loss D {row['loss_d']:8.4f}  loss G {row['loss_g']:8.4f}" + (
            f"  W estimate {row['w_distance']:8.4f}" if "w_distance" in row else "")
    log(f"epoch {row['epoch']:3d}  {text}  {row['images_per_s']:7.0f} img/s")


def pictures(pair, data: datasets.Dataset, history: list[dict], run_dir: Path, seed: int = 0) -> None:
    """samples.png (a pair that can generate), reconstructions.png, loss.png and latents.png in ``run_dir``."""
    pair.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if pair.can_generate:
            plots.sample_grid(pair.generate(64 if data.is_images else 2500).cpu(), run_dir / "samples.png",
                              f"{pair.name} samples (means of p(x|z), z ~ p(z))")
        split = "test" if len(data.test) else "train"
        test = (data.test if len(data.test) else data.train)[:1000].to(device_of(pair))
        inputs = split_inputs(pair, data, split, device_of(pair), limit=1000)  # the pair's columns beside test
        if pair.can_reconstruct and data.is_images:
            plots.reconstructions(test[:16].cpu(), pair.reconstruct(test[:16], *(c[:16] for c in inputs)).cpu(),
                                  run_dir / "reconstructions.png")
        if pair.has_encoder:
            labels = data.test_labels if len(data.test) else data.train_labels
            plots.latent_scatter(pair.encode(test, *inputs)[0].cpu(), None if labels is None else labels[:1000],
                                 run_dir / "latents.png")
    if history:
        plots.loss_curve(history, run_dir / "loss.png")


def with_family_metrics(callback, data: datasets.Dataset):
    """``callback`` followed by the pair's own figures on the validation split (``pair.family_metrics``, e.g. a
    codebook's usage and perplexity), prefixed ``val_``, in each epoch's history row."""
    def callback_and_family_metrics(fit) -> dict:
        row = dict(callback(fit) or {})
        if len(data.val):
            fit.pair.eval()
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                device = device_of(fit.pair)
                family = fit.pair.family_metrics(data.val.to(device), *metric_columns(fit.pair, data, "val", device))
            fit.pair.train()
            row.update({f"val_{k}": v for k, v in family.items()})
        return row

    return callback_and_family_metrics



def kept_epoch(fit, select: str, pair) -> dict:
    """Which epoch's weights model.pt holds and why: ``kept_epoch``, ``epochs`` trained, ``kept_by`` in words and,
    for the best epoch, ``kept_score`` (the figure it was best by)."""
    epochs = fit.state.epoch
    if select == "best" and pair.select_by and fit.state.best_epoch is not None:
        return {"kept_epoch": fit.state.best_epoch, "epochs": epochs, "kept_by": f"best {pair.select_by_words}",
                "kept_score": fit.state.best_score}
    if select == "last" and pair.default_select == "last" and pair.select_by:
        why = f"{pair.name}'s default; --select best keeps the best {pair.select_by_words}"
    elif select == "last":
        why = "--select last"
    else:
        why = "the family keeps its last epoch" if not pair.select_by else "no validation figure to select by"
    return {"kept_epoch": epochs, "epochs": epochs, "kept_by": f"last epoch ({why})"}
