"""What the ``ppgen`` commands do, as functions: train a run directory, evaluate it, sample from it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ppgen import data as datasets
from ppgen import evaluation, models, plots, runs
from ppgen.api import validation_callback
from ppgen.errors import UserError
from ppgen.inference import fit as backend_fit
from ppgen.inference.svi import restore_best

TRAIN_DEFAULTS = dict(epochs=30, batch_size=256, lr=1e-3, elbo="trace", num_particles=1, beta=1.0,
                      anneal_epochs=0.0, free_bits=0.0, seed=0, device="cpu", select="best")


#: the adversarial backend's defaults (``lr`` sets both players' learning rates)
ADVERSARIAL_DEFAULTS = dict(epochs=30, batch_size=256, lr=2e-4, loss="ns", n_critic=1, seed=0, device="cpu")
SVI_ONLY = ("elbo", "num_particles", "beta", "anneal_epochs", "free_bits", "engine", "select")
ADVERSARIAL_ONLY = ("loss", "n_critic", "pack", "lr_decay", "critic_hidden")
BACKENDS = ("svi", "adversarial")


def make_config(model: str, model_options: dict, data_options: dict, train_options: dict) -> dict:
    """The run's config; ``train_options["backend"]`` defaults to the family's ``default_backend`` (SVI)."""
    cls = models.get(model)
    train_options = dict(train_options)
    backend = train_options.pop("backend", None) or cls.default_backend
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    adversarial = backend == "adversarial"
    wrong = sorted(k for k in (SVI_ONLY if adversarial else ADVERSARIAL_ONLY) if k in train_options)
    if wrong:
        other = "svi" if adversarial else "adversarial"
        raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in wrong)}: only for --backend {other}, "
                        f"not {backend}; drop them or choose --backend {other}")
    defaults = ADVERSARIAL_DEFAULTS if adversarial else TRAIN_DEFAULTS
    likelihood = model_options.get("likelihood", getattr(cls.Config, "likelihood", None))
    if adversarial and likelihood != "bernoulli" and data_options.get("binarize", "default") == "default":
        data_options = {**data_options, "binarize": None}  # a generator learns grey levels, not binarized digits
    return {"model": cls.name, "model_options": model_options, "data": data_options,
            "train": {**defaults, **train_options, "backend": backend}}


def _load_data(options: dict) -> datasets.Dataset:
    return datasets.load(options.get("name", "mnist"), binarize=options.get("binarize", "default"),
                         seed=options.get("seed", 0), split_seed=options.get("split_seed", 0))


def _build(config: dict, data: datasets.Dataset):
    cls = models.get(config["model"])
    options = dict(config["model_options"])
    trained = config.get("model_config", {}).get("x_shape") if isinstance(config.get("model_config"), dict) else None
    options.setdefault("x_shape", trained or data.x_shape)  # a resumed run keeps the shape it was trained on
    if tuple(options["x_shape"]) != data.x_shape:
        raise UserError(f"the model expects examples shaped {tuple(options['x_shape'])} but {data.name} has "
                        f"{data.x_shape}; give data of that shape (a resumed run needs the data it was trained on)")
    pair = cls.from_config(options)
    config["model_config"] = pair.config_dict()
    return pair


def train_run(config: dict, out: Path, resume: bool = False, overwrite: bool = False, progress: bool | None = None,
              log=print) -> dict:
    """Train the run described by ``config`` into ``out`` (or continue it); return its metrics.

    Every check (output folder, data, model, checkpoint) runs before anything is written; a new run
    appears at ``out`` only with its first checkpoint, and a resumed one changes only from then on.
    """
    out = Path(out)
    if resume:
        runs.open_run(out)
    else:
        runs.check_new_run_dir(out, overwrite)
    data = _load_data(config["data"])
    torch.manual_seed(config["train"].get("seed", 0))  # the networks' initial weights
    pair = _build(config, data)
    train = dict(config["train"])
    backend = train.pop("backend", "svi")
    select = train.pop("select", "best")
    pair.check_data(data.train_epoch(0), f"{data.name} training data")
    checkpoint = _resumable_checkpoint(out, pair, backend, train) if resume else None
    log(data.describe())
    start = time.perf_counter()

    def body(run: runs.RunWriter) -> dict:
        if backend == "adversarial":
            return _train_adversarial(pair, data, train, checkpoint, run, progress, log, start)
        fit = backend_fit(pair, data, backend="svi", progress=progress, resume=checkpoint,
                          callback=validation_callback(data, train["seed"]),
                          monitor="val_elbo" if select == "best" else None,
                          on_epoch_end=lambda f: (run.save_checkpoint(f), _log_epoch(f, log)), **train)
        run.require_checkpoint(fit.stopped)
        if fit.stopped:
            log(f"training stopped: {fit.stopped}")
        if select == "best":
            restore_best(fit)
        runs.save_torch(run.path / runs.MODEL, pair.state_dict())
        metrics = quick_metrics(pair, data)
        metrics.update(epochs=fit.state.get("epoch"), best_epoch=fit.state.get("best_epoch"),
                       train_seconds=round(time.perf_counter() - start, 2), stopped=fit.stopped)
        runs.write_json(run.path / runs.METRICS, metrics)
        pictures(pair, data, fit.history, run.path)
        write_posterior(fit, data, run.path)
        return metrics

    opened = runs.resumed_run(out, config) if resume else runs.new_run(out, config, overwrite=overwrite)
    with opened as run:
        return body(run)


def _resumable_checkpoint(run_dir: Path, pair, backend: str, train: dict) -> dict:
    """The run's checkpoint, checked against the rebuilt pair, its backend and the new number of epochs."""
    checkpoint = runs.load_checkpoint(run_dir)
    if checkpoint.get("backend", backend) != backend:
        raise UserError(f"{run_dir} was trained with the {checkpoint['backend']} backend, not {backend}; resume it "
                        "with its own backend")
    runs.check_weights(pair, checkpoint["model"], run_dir / runs.CHECKPOINT)
    done = checkpoint["state"].get("epoch", 0)
    if isinstance(train.get("epochs"), int) and done >= train["epochs"]:
        raise UserError(f"{run_dir} already trained {done} epochs; nothing to resume: give --epochs above {done}")
    return checkpoint


def _train_adversarial(pair, data: datasets.Dataset, train: dict, checkpoint: dict | None, run: runs.RunWriter,
                       progress, log, start: float) -> dict:
    """The adversarial backend's run: checkpoint per epoch, last weights kept, metrics that apply to the pair."""
    options = dict(train)
    lr = options.pop("lr", ADVERSARIAL_DEFAULTS["lr"])
    options.setdefault("lr_g", lr)
    options.setdefault("lr_d", lr)
    if options.get("critic_hidden") is not None:
        options["critic_hidden"] = tuple(options["critic_hidden"])
    fit = backend_fit(pair, data, backend="adversarial", progress=progress, resume=checkpoint,
                      on_epoch_end=lambda f: (run.save_checkpoint(f), _log_adversarial_epoch(f, log)),
                      **options)
    run.require_checkpoint(fit.stopped)
    if fit.stopped:
        log(f"training stopped: {fit.stopped}")
    run_dir = run.path
    runs.save_torch(run_dir / runs.MODEL, pair.state_dict())
    metrics: dict[str, Any] = quick_metrics(pair, data) if has_density(pair, data.train[:2]) else {}
    metrics.update(mode_metrics(pair, data.name))
    last = fit.history[-1] if fit.history else {}
    metrics.update({k: last[k] for k in ("loss_d", "loss_g", "w_distance") if k in last})
    metrics.update(epochs=fit.state.get("epoch"), train_seconds=round(time.perf_counter() - start, 2),
                   stopped=fit.stopped)
    runs.write_json(run_dir / runs.METRICS, metrics)
    pictures(pair, data, fit.history, run_dir)
    return metrics


def _log_adversarial_epoch(fit, log) -> None:
    row = fit.history[-1]
    w = f"  W estimate {row['w_distance']:8.4f}" if "w_distance" in row else ""
    log(f"epoch {row['epoch']:3d}  loss D {row['loss_d']:8.4f}  loss G {row['loss_g']:8.4f}{w}  "
        f"{row['images_per_s']:7.0f} img/s")


def has_density(pair, x: torch.Tensor) -> bool:
    """Whether ELBO/IWAE apply: the pair has a guide and its observed site is not a Delta (an implicit generator)."""
    from pyro import poutine
    from pyro.distributions import Delta

    if not pair.has_guide:
        return False
    with torch.no_grad():
        trace = poutine.trace(pair.model).get_trace(x)
    observed = [s for s in trace.nodes.values() if s["type"] == "sample" and s["is_observed"]]
    return not any(isinstance(getattr(s["fn"], "base_dist", s["fn"]), Delta) for s in observed)


def mode_metrics(pair, data_name: str, seed: int = 0) -> dict:
    """Mode coverage (modes captured, share of high-quality samples, reverse KL) on ring8/grid25; else {}."""
    from ppgen.data.sources import MIXTURES
    from ppgen.evaluation.modes import evaluate_pair

    if data_name not in MIXTURES:
        return {}
    pair.eval()
    report = evaluate_pair(pair, data_name, seed=seed)
    return {"modes": report["modes"], "n_modes": report["n_modes"], "high_quality": report["high_quality"],
            "reverse_kl": report["reverse_kl"]}


def write_posterior(fit, data: datasets.Dataset, run_dir: Path, points: int = 16, seed: int = 0) -> None:
    """posterior.nc: ArviZ draws of q(z | x) (4 chains x 250) for the first test examples."""
    import os

    from ppgen.diagnostics import to_inference_data

    x = (data.test if len(data.test) else data.train)[:points].to(_device(fit.pair))
    with torch.random.fork_rng(devices=[]):
        idata = to_inference_data(fit, x=x, num_samples=1000, chains=4, seed=seed)
    tmp = run_dir / ".posterior.nc.tmp"
    idata.to_netcdf(str(tmp))
    os.replace(tmp, run_dir / "posterior.nc")


def _log_epoch(fit, log) -> None:
    row = fit.history[-1]
    val = f"  val ELBO {row['val_elbo']:8.2f}" if "val_elbo" in row else ""
    log(f"epoch {row['epoch']:3d}  train ELBO {row['elbo']:8.2f}{val}  {row['images_per_s']:7.0f} img/s")


def quick_metrics(pair, data: datasets.Dataset, seed: int = 0) -> dict:
    """Single-sample ELBO on train/validation/test (seeded)."""
    out: dict[str, Any] = {}
    pair.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for split in ("train", "val", "test"):
            x = data.train_epoch(0) if split == "train" else getattr(data, split)
            if len(x):
                out[f"{split}_elbo"] = float(evaluation.elbo(pair, x.to(_device(pair))).mean())
    return out


def _device(pair) -> torch.device:
    return next(pair.parameters()).device


def pictures(pair, data: datasets.Dataset, history: list[dict], run_dir: Path, seed: int = 0) -> None:
    """samples.png, reconstructions.png, loss.png and latents.png in ``run_dir``."""
    pair.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        plots.sample_grid(pair.generate(64 if data.is_images else 2500).cpu(), run_dir / "samples.png",
                          f"{pair.name} samples (means of p(x|z), z ~ p(z))")
        test = (data.test if len(data.test) else data.train)[:1000].to(_device(pair))
        if pair.can_reconstruct and data.is_images:
            plots.reconstructions(test[:16].cpu(), pair.reconstruct(test[:16]).cpu(), run_dir / "reconstructions.png")
        if pair.has_encoder:
            labels = data.test_labels if len(data.test) else data.train_labels
            plots.latent_scatter(pair.encode(test)[0].cpu(), None if labels is None else labels[:1000],
                                 run_dir / "latents.png")
    if history:
        plots.loss_curve(history, run_dir / "loss.png")


def evaluate_run(run_dir: Path, iwae_k: int = 1000, split: str = "test", limit: int | None = None, seed: int = 0,
                 elbo_samples: int = 10, ais_steps: int | None = None, ais_chains: int = 16,
                 bdmc_points: int = 0) -> dict:
    """Held-out ELBO, IWAE-K log-likelihood, KL per latent dimension, active units and I(x; z).

    With ``ais_steps`` also AIS with that many intermediate distributions (and, with
    ``bdmc_points``, BDMC's lower/upper bounds on as many points simulated from the model).
    """
    if ais_steps is not None:
        from ppgen.evaluation.ais import check_steps

        check_steps(ais_steps)
    config = runs.read_config(run_dir)
    pair = runs.load_pair(run_dir)
    data = _load_data(config["data"])
    x = getattr(data, split)
    if limit:
        x = x[:limit]
    if len(x) == 0:
        raise UserError(f"the {split} split of {data.name} is empty; choose --split train, val or test")
    pair.check_data(x, f"{split} data")
    if iwae_k < 1:
        raise UserError("--iwae needs K >= 1")
    result: dict[str, Any] = {"run": str(run_dir), "split": split, "n": len(x)}
    result.update(mode_metrics(pair, data.name, seed=seed))
    if not has_density(pair, x[:2]):  # an implicit generator: no likelihood, so no ELBO/IWAE/AIS
        result["seconds"] = 0.0
        result["note"] = (f"{pair.name} has no density p(x|z) or no guide q(z|x): no ELBO or log-likelihood "
                          "(score its samples with --fid, --kid, --is, --pr)")
        return result
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        t = time.perf_counter()
        elbo = evaluation.elbo(pair, x, num_samples=elbo_samples)
        result["elbo"] = float(elbo.mean())
        result["elbo_se"] = float(elbo.std() / len(x) ** 0.5)
        if iwae_k:
            ll = evaluation.iwae(pair, x, k=iwae_k)
            result[f"iwae_{iwae_k}"] = float(ll.mean())
            result[f"iwae_{iwae_k}_se"] = float(ll.std() / len(x) ** 0.5)
            result["nll"] = -float(ll.mean())
            result["bits_per_dim"] = float(evaluation.bits_per_dim(ll, pair.x_shape).mean())
        result["seconds"] = round(time.perf_counter() - t, 2)
    if ais_steps is not None:
        from ppgen.evaluation.ais import summary

        t = time.perf_counter()
        result.update(summary(pair, x, ais_steps, chains=ais_chains, bdmc_points=bdmc_points, seed=seed))
        result["ais_seconds"] = round(time.perf_counter() - t, 2)
    if pair.has_encoder:
        result.update(evaluation.report(pair, x))
    return result


REJECTION = "rejection.pt"


def ratio_sampler(run_dir: Path, steps: int | None = None, quantile: float = 0.999, seed: int = 0,
                  progress: bool | None = None):
    """The run's pair corrected by density-ratio rejection sampling (:mod:`ppgen.inference.rejection`).

    The classifier, an MLP (a convolutional one costs ~6x more per step on a CPU), is trained for
    ``steps`` (default 10,000 on vectors, 2,000 on images: ~2 min on a 2-core CPU for MNIST)
    against the run's grey-level training data and cached in
    ``rejection.pt`` (keyed by the model weights' digest, ``steps`` and ``seed``); the bound
    M is recomputed for ``quantile`` on every call.
    """
    import hashlib

    from ppgen.evaluation.samples import reference_data
    from ppgen.inference.rejection import fit_ratio_sampler
    from ppgen.nn.critics import critic_for

    run_dir = Path(run_dir)
    pair = runs.load_pair(run_dir)
    data = reference_data(runs.read_config(run_dir))
    steps = steps or (2_000 if len(pair.x_shape) == 3 else 10_000)
    digest = hashlib.sha256((run_dir / runs.MODEL).read_bytes()).hexdigest()
    key = {"model_sha256": digest, "steps": steps, "seed": seed}
    classifier = None
    cache = run_dir / REJECTION
    if cache.exists():
        try:
            saved = runs.load_torch(cache)
        except UserError:  # a damaged cache is only a cache: train the classifier again
            saved = {}
        if isinstance(saved, dict) and saved.get("key") == key:
            classifier = critic_for(pair.x_shape, net="mlp")
            classifier.load_state_dict(saved["classifier"])
    sampler = fit_ratio_sampler(pair, data, steps=steps, net="mlp", quantile=quantile, seed=seed, progress=progress,
                                classifier=classifier)
    if classifier is None:
        runs.save_torch(cache, {"key": key, "classifier": sampler.classifier.state_dict()})
    return sampler


def evaluate_rejection(run_dir: Path, metrics: list[str], steps: int | None = None, quantile: float = 0.999,
                       n: int | None = None, seed: int = 0, progress: bool | None = None) -> dict:
    """The classifier's held-out report, acceptance rate, mode coverage (ring8/grid25) and ``metrics``
    (fid/kid/is/pr) of the run's pair corrected by density-ratio rejection."""
    from ppgen.data.sources import MIXTURES
    from ppgen.evaluation.modes import evaluate_pair
    from ppgen.evaluation.samples import evaluate_run_samples

    sampler = ratio_sampler(run_dir, steps=steps, quantile=quantile, seed=seed, progress=progress)
    out = dict(sampler.report)
    name = runs.read_config(run_dir).get("data", {}).get("name")
    if name in MIXTURES:
        report = evaluate_pair(sampler, name, seed=seed)
        out.update({k: report[k] for k in ("modes", "n_modes", "high_quality", "reverse_kl")})
    if metrics:
        out["sample_quality"] = evaluate_run_samples(run_dir, metrics, n=n, seed=seed, sampler=sampler)
    return out
