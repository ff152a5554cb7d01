"""``ppgen <stage> RUN``: a training stage a family declares (``Stage`` in :mod:`ppgen.models.base`), fitted on a
finished run by the one training loop (:func:`ppgen.inference.stages.fit_stage`) and written back into the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ppgen import models, plots, runs
from ppgen.errors import UserError
from ppgen.inference.stages import fit_stage, stage_options
from ppgen.workflows.common import quick_metrics, read_metrics, run_data


def declared_stages() -> dict[str, list]:
    """Every stage name the registered families declare -> the (family, stage) pairs that declare it."""
    found: dict[str, list] = {}
    for family, cls in sorted(models.REGISTRY.items()):
        for stage in cls.stages:
            found.setdefault(stage.name, []).append((family, stage))
    return found


def stage_checkpoint(stage_name: str) -> str:
    """The file of a stage's own per-epoch checkpoint in a run directory."""
    return f"{stage_name}_checkpoint.pt"


def stage_run(run_dir: Path, name: str, options: dict[str, Any], resume: bool = False, progress: bool | None = None,
              log=print) -> dict:
    """Fit the stage ``name`` of the run in ``run_dir``, then write the pair back (model.pt), ``<name>_history.csv``,
    the stage's figures into ``metrics.json`` (key ``name``) and ``samples.png`` drawn from the new pair; each epoch
    writes ``<name>_checkpoint.pt`` (``resume`` continues from it; ``options["epochs"]`` is then the new total).

    The stage's weights also go into the run's checkpoint (its last epoch's weights and, where kept, the best
    epoch's, whose score becomes the validation bound with them), so ``ppgen train MODEL --resume RUN`` afterwards
    continues stage one *with* what the stage learned instead of overwriting model.pt without it.

    Refused in one line, before anything is written, for a run of a family without the stage, a run whose stage
    one has not finished, and a stage the pair is not ready for.
    """
    run_dir = Path(run_dir)
    config = runs.open_run(run_dir)
    families = [family for family, _ in declared_stages().get(name, [])]
    if config.get("model") not in families:
        raise UserError(f"{run_dir} holds a {config.get('model')} run; `ppgen {name}` is for "
                        f"{' and '.join(families)} runs")
    if not (run_dir / runs.MODEL).exists() or runs.stale_model(run_dir) is not None:
        raise UserError(f"stage one of {run_dir} has not finished (no current {runs.MODEL}): finish it first "
                        f"(ppgen train {config['model']} --resume {run_dir}), then run `ppgen {name}`")
    pair = runs.load_pair(run_dir)
    stage = next(s for s in type(pair).stages if s.name == name)
    checkpoint = runs.load_checkpoint(run_dir)  # refused here, before the stage is fitted, if it is damaged
    resume_from = _resumable(run_dir, pair, stage, options, log) if resume else None
    chosen = stage_options(stage, options)  # validated before the data are read
    data = run_data(config)
    torch.manual_seed(chosen.seed)

    def on_epoch_end(fit) -> None:
        runs.save_torch(run_dir / stage_checkpoint(name), fit.checkpoint())
        row = fit.history[-1]
        log(f"{name} epoch {row['epoch']:3d}  train {stage.metric} {row[stage.metric]:8.3f}"
            + (f"  val {row[f'val_{stage.metric}']:8.3f}" if f"val_{stage.metric}" in row else ""))

    fit = fit_stage(pair, name, data, resume=resume_from, progress=progress, on_epoch_end=on_epoch_end, **options)
    if not fit.history:
        raise UserError(f"`ppgen {name}` stopped before its first epoch ended, nothing was written: {fit.stopped}")
    if fit.stopped:
        log(f"{name} stopped: {fit.stopped}")
    pair.eval()
    last = {k: v for k, v in fit.history[-1].items() if k != "epoch"}
    result = {"epochs": fit.state.epoch, "batch_size": chosen.batch_size, "lr": chosen.lr, "seed": chosen.seed,
              **last, "stopped": fit.stopped}
    result.update(quick_metrics(pair, data, seed=chosen.seed))
    weights = {k: v.detach().clone() for k, v in pair.state_dict().items() if k.startswith(stage.weights)}
    runs.save_torch(run_dir / runs.CHECKPOINT, with_stage_weights(checkpoint, weights, result.get("val_elbo")))
    runs.save_torch(run_dir / runs.MODEL, pair.state_dict())
    runs.write_history(run_dir, fit.history, name=f"{name}_history.csv")
    if pair.can_generate:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(chosen.seed)
            plots.sample_grid(pair.generate(64).cpu(), run_dir / "samples.png", f"{pair.name} samples ({stage.samples})")
    metrics = read_metrics(run_dir)
    metrics[name] = result
    runs.write_json(run_dir / runs.METRICS, metrics)  # last: the stage is finished (stage_finished)
    return result


def _resumable(run_dir: Path, pair, stage, options: dict[str, Any], log=print) -> dict:
    """The stage's own checkpoint in ``run_dir``, its weights loaded into ``pair``, checked against the new total."""
    path = run_dir / stage_checkpoint(stage.name)
    if not path.exists():
        raise UserError(f"{run_dir} has no {path.name} to resume; run `ppgen {stage.name} {run_dir}` without --resume")
    saved = runs.load_torch(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) or "model" not in saved:
        raise UserError(f"{path} is not a checkpoint of `ppgen {stage.name}`; run it again without --resume")
    runs.check_weights(pair, saved["model"], path)
    pair.load_state_dict(saved["model"])
    done = saved["state"].get("epoch", 0)
    total = stage_options(stage, options).epochs
    if done > total or (done == total and stage_finished(run_dir, stage.name, done)):
        raise UserError(f"{path.name} already holds {done} epochs; nothing to resume: give --epochs above {done}")
    if done == total:
        log(f"{run_dir}: `ppgen {stage.name}` ended at epoch {done} but was stopped before writing its results; "
            "finishing it (model.pt, metrics, samples)")
    return saved


def stage_finished(run_dir: Path, name: str, epochs: int) -> bool:
    """Whether the stage's results after ``epochs`` epochs are written: its entry in metrics.json, written last."""
    entry = read_metrics(run_dir).get(name)
    return isinstance(entry, dict) and entry.get("epochs") == epochs


def with_stage_weights(checkpoint: dict, weights: dict[str, torch.Tensor], val_elbo: float | None) -> dict:
    """``checkpoint`` with a stage's ``weights`` in its last and best weights; the best score is then ``val_elbo``
    (the bound with those weights), so a resumed run compares its epochs with the same bound."""
    checkpoint = {**checkpoint, "model": {**checkpoint["model"], **weights}, "state": dict(checkpoint["state"])}
    state = checkpoint["state"]
    if isinstance(state.get("best"), dict):
        state["best"] = {**state["best"], **weights}
        if val_elbo is not None:
            state["best_score"] = val_elbo
    return checkpoint
