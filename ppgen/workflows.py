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


def make_config(model: str, model_options: dict, data_options: dict, train_options: dict) -> dict:
    cls = models.get(model)
    return {"model": cls.name, "model_options": model_options, "data": data_options,
            "train": {**TRAIN_DEFAULTS, **train_options}}


def _load_data(options: dict) -> datasets.Dataset:
    return datasets.load(options.get("name", "mnist"), binarize=options.get("binarize", "default"),
                         seed=options.get("seed", 0), split_seed=options.get("split_seed", 0))


def _build(config: dict, data: datasets.Dataset):
    cls = models.get(config["model"])
    options = dict(config["model_options"])
    options.setdefault("x_shape", data.x_shape)
    if tuple(options["x_shape"]) != data.x_shape:
        raise UserError(f"the model expects examples shaped {tuple(options['x_shape'])} but {data.name} has {data.x_shape}")
    pair = cls.from_config(options)
    config["model_config"] = pair.config_dict()
    return pair


def train_run(config: dict, out: Path, resume: bool = False, overwrite: bool = False, progress: bool | None = None,
              log=print) -> dict:
    """Train the run described by ``config`` into ``out`` (or continue it); return its metrics."""
    out = Path(out)
    data = _load_data(config["data"])
    torch.manual_seed(config["train"].get("seed", 0))  # the networks' initial weights
    pair = _build(config, data)
    train = dict(config["train"])
    select = train.pop("select", "best")
    pair.check_data(data.train_epoch(0), f"{data.name} training data")
    checkpoint = runs.load_torch(out / runs.CHECKPOINT) if resume else None
    if checkpoint is not None and checkpoint["state"].get("epoch", 0) >= train["epochs"]:
        log(f"{out} already trained {checkpoint['state']['epoch']} epochs; nothing to resume (raise --epochs)")
    log(data.describe())
    start = time.perf_counter()

    def body(run_dir: Path) -> dict:
        fit = backend_fit(pair, data, backend="svi", progress=progress, resume=checkpoint,
                          callback=validation_callback(data, train["seed"]),
                          monitor="val_elbo" if select == "best" else None,
                          on_epoch_end=lambda f: (runs.save_checkpoint(run_dir, f), _log_epoch(f, log)), **train)
        if fit.stopped:
            log(f"training stopped: {fit.stopped}")
        if select == "best":
            restore_best(fit)
        runs.save_torch(run_dir / runs.MODEL, pair.state_dict())
        metrics = quick_metrics(pair, data)
        metrics.update(epochs=fit.state.get("epoch"), best_epoch=fit.state.get("best_epoch"),
                       train_seconds=round(time.perf_counter() - start, 2), stopped=fit.stopped)
        runs.write_json(run_dir / runs.METRICS, metrics)
        pictures(pair, data, fit.history, run_dir)
        write_posterior(fit, data, run_dir)
        return metrics

    if resume:
        runs.write_json(out / runs.CONFIG, config)
        return body(out)
    with runs.new_run(out, config, overwrite=overwrite) as run_dir:
        return body(run_dir)


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
        if hasattr(pair, "reconstruct") and data.is_images:
            plots.reconstructions(test[:16].cpu(), pair.reconstruct(test[:16]).cpu(), run_dir / "reconstructions.png")
        if hasattr(pair, "encode"):
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
    if hasattr(pair, "encode"):
        result.update(evaluation.report(pair, x))
    return result
