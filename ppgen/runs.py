"""Run directories: config, checkpoints, metrics, history and pictures; resume and load.

A run directory written by ``ppgen train`` holds::

    config.json        model, data and training options (enough to rebuild and resume)
    checkpoint.pt      the last finished epoch: weights, optimizer, history, RNG plan
    model.pt           the selected weights (best validation epoch, or last)
    metrics.json       held-out figures
    history.csv        one row per epoch
    samples.png, reconstructions.png, loss.png, latents.png

A run directory is always either absent or resumable. A new run is built in a
hidden sibling folder (``.NAME.ppgen-new-PID-*``) and renamed into place once
its first checkpoint exists; ``--overwrite`` swaps it with the old run only then,
and only if the old folder is a ppgen run. A resumed run changes nothing until
its first new checkpoint is written. Every file is written to a temporary name
in the same folder and renamed (the umask respected), so a crash never leaves a
half-written file; the leftovers of a killed run (hidden sibling folders, temp
files) are removed when the run is next opened. Checkpoints are loaded with
``torch.load(..., weights_only=True)`` and their structure checked.

Every way in goes through one of: :func:`check_new_run_dir` (``train --out``),
:func:`check_output_file` / :func:`check_output_dir` (other outputs),
:func:`read_config`, :func:`load_checkpoint`, :func:`load_weights` and
:func:`load_pair` (reading a run), :func:`new_run` / :func:`resumed_run`
(writing one).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ppgen.errors import UserError

CONFIG, CHECKPOINT, MODEL, METRICS, HISTORY = "config.json", "checkpoint.pt", "model.pt", "metrics.json", "history.csv"
#: what a training run printed, line by line (every run directory has one)
TRAIN_LOG = "train.log"
#: hidden sibling folders of a run being built (``new``) or replaced (``old``): ``.NAME.ppgen-new-PID-XXXX``
STAGING = re.compile(r"^\.(?P<name>.+)\.ppgen-(?:new|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")
#: temporary files of :func:`atomic_write_bytes` (``.NAME.XXXX.tmp``) and of the posterior (``.posterior.nc.tmp``)
TEMP_FILE = re.compile(r"^\.[^/]+\.tmp$")


# -- writing files -----------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary file and an atomic rename (mode as the umask says)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def standard_json(value: Any) -> Any:
    """``value`` with tensors/arrays as lists and NaN/infinite numbers as None (standard JSON: null)."""
    if isinstance(value, dict):
        return {str(k): standard_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [standard_json(v) for v in value]
    if isinstance(value, torch.Tensor):
        return standard_json(value.tolist())
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars
        return standard_json(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(standard_json(obj), indent=2, allow_nan=False) + "\n").encode())


def save_torch(path: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def write_history(run_dir: Path, history: list[dict], name: str = HISTORY) -> None:
    """``history`` (one dict per epoch) as CSV ``name`` in ``run_dir``, one column per key any row has."""
    if not history:
        return
    keys = list(dict.fromkeys(k for row in history for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(Path(run_dir) / name, buffer.getvalue().encode())


def write_netcdf(path: Path, idata: Any) -> None:
    """An ArviZ InferenceData as netCDF at ``path``, via a temporary file beside it and an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        idata.to_netcdf(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# -- reading a run -------------------------------------------------------------------------------


def load_torch(path: Path) -> Any:
    """A file written by :func:`save_torch`, loaded weights-only; a missing or damaged file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing; the run directory is incomplete (train it again with --overwrite)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle with non-tensor objects, ...
        raise UserError(f"{path} is corrupt or not a ppgen checkpoint ({type(err).__name__}); "
                        "retrain, or resume from a good copy") from None


def check_config(config: Any, path: Path) -> dict:
    """``config`` if it has the structure ``ppgen train`` writes, else a UserError naming what is wrong."""
    problem = _config_problem(config)
    if problem:
        raise UserError(f"{path} is not a ppgen run config ({problem}); the run directory is damaged, train it again")
    return config


def _config_problem(config: Any) -> str | None:
    if not isinstance(config, dict):
        return f"a JSON {type(config).__name__}, not an object"
    if not isinstance(config.get("model"), str):
        return "no model name"
    if not isinstance(config.get("model_config", config.get("model_options")), dict):
        return "no model options"
    for key in ("model_config", "model_options", "data", "train"):
        if key in config and not isinstance(config[key], dict):
            return f"{key!r} is not an object"
    return None


def read_config(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    remove_stale_staging(run_dir)  # a dead process's hidden build of this path goes with the next look at it
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory; give a run directory written by `ppgen train`")
    if not path.exists():
        raise UserError(f"{run_dir} holds no trained run ({CONFIG} missing); give a directory written by `ppgen train`")
    try:
        return check_config(json.loads(path.read_text()), path)
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg}); the run directory is damaged") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None


def open_run(run_dir: Path) -> dict:
    """The config of a run to continue, checked to hold what training needs; stale temp files removed."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    missing = [key for key in ("model_options", "data", "train") if not isinstance(config.get(key), dict)]
    if missing:
        raise UserError(f"{run_dir / CONFIG} lacks {', '.join(missing)}, so the run cannot be continued; train it "
                        f"again with --out {run_dir} --overwrite")
    if not (run_dir / CHECKPOINT).exists():
        load_checkpoint(run_dir)  # the message that says what to do
    clean_stale_temp_files(run_dir)
    return config


def _is_weights(state: Any) -> bool:
    return isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict (``model.pt``): names to tensors."""
    state = load_torch(path)
    if not _is_weights(state):
        raise UserError(f"{path} holds a {type(state).__name__}, not model weights; retrain, or copy a good model.pt")
    return state


def load_checkpoint(run_dir: Path) -> dict:
    """``checkpoint.pt`` of ``run_dir``, checked to be a training checkpoint."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise UserError(f"{run_dir} has no {CHECKPOINT}: it stopped before its first epoch ended; start it again "
                        f"with --out {run_dir} --overwrite")
    checkpoint = load_torch(path)
    if _is_weights(checkpoint):
        raise UserError(f"{path} holds model weights (a copy of {MODEL}?), not a training checkpoint; resume from a "
                        "good copy or train again with --overwrite")
    if not (isinstance(checkpoint, dict) and _is_weights(checkpoint.get("model"))
            and isinstance(checkpoint.get("state"), dict) and isinstance(checkpoint.get("history"), list)):
        raise UserError(f"{path} is not a ppgen training checkpoint; resume from a good copy or train again "
                        "with --overwrite")
    return checkpoint


def check_weights(pair, state: dict[str, torch.Tensor], path: Path) -> None:
    """UserError unless ``state`` has exactly the names and shapes of ``pair``'s weights (once the fresh pair has
    made what its first call makes: ``pyro.param`` values, an autoguide's parameters)."""
    try:
        pair.make_room(state)
    except Exception as err:  # the kept example inputs do not run through this pair's model
        raise UserError(f"{path}: weights do not fit the model in {CONFIG} ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:120] if str(err) else ''}); it belongs to another model: "
                        "retrain, or copy the run's own file") from None
    own = pair.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        kind = "missing" if missing else "unexpected" if unexpected else "of another shape"
        raise UserError(f"{path}: weights do not fit the model in {CONFIG} ({first} {kind}); "
                        "it belongs to another model: retrain, or copy the run's own file")


def build_pair(config: dict, path: Path | str = CONFIG):
    from ppgen import models

    try:
        return models.get(config["model"]).from_config(config.get("model_config", config.get("model_options")))
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    except (TypeError, ValueError, KeyError) as err:
        raise UserError(f"{path}: the model options do not build a {config['model']} ({err}); the run is damaged"
                        ) from None


def is_finished(run_dir: Path, epochs: int | None = None) -> bool:
    """Whether the run's final stage (selected weights, pictures, posterior, then ``metrics.json``) is complete, for
    training that ended at ``epochs`` (the checkpoint's; None: any): ``ppgen train`` writes metrics.json last, so a
    run killed after its last epoch has a checkpoint and no metrics, or the metrics of the epochs before a resume."""
    try:
        metrics = json.loads((Path(run_dir) / METRICS).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and (epochs is None or metrics.get("epochs") == epochs)


def stale_model(run_dir: Path) -> tuple[int, int] | None:
    """(epochs, trained): the epochs ``model.pt`` was selected after and the epochs the checkpoint holds, when
    ``model.pt`` is left from before a resume that trained more epochs and stopped before its own final stage
    (``metrics.json``, written after ``model.pt``, names fewer epochs than the checkpoint); None otherwise."""
    run_dir = Path(run_dir)
    if not (run_dir / MODEL).exists() or not (run_dir / CHECKPOINT).exists():
        return None
    try:
        epochs = json.loads((run_dir / METRICS).read_text()).get("epochs")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(epochs, int):
        return None
    trained = load_checkpoint(run_dir)["state"].get("epoch", 0)
    return (epochs, trained) if isinstance(trained, int) and trained > epochs else None


def selected_weights(run_dir: Path, config: dict | None = None) -> tuple[Path, dict[str, torch.Tensor]]:
    """The run's selected weights and the file they come from: ``model.pt``; for a run without one (stopped before
    its final stage), or whose ``model.pt`` is older than its checkpoint (:func:`stale_model`), the checkpoint's
    weights as the run's ``select`` would choose them (the best validation epoch's where it kept them, else the
    last epoch's)."""
    run_dir = Path(run_dir)
    if (run_dir / MODEL).exists() and stale_model(run_dir) is None:
        return run_dir / MODEL, load_weights(run_dir / MODEL)
    checkpoint = load_checkpoint(run_dir)
    train = (config or read_config(run_dir)).get("train") or {}
    best = checkpoint["state"].get("best")
    if train.get("select", "best") == "best" and _is_weights(best) and best:
        return run_dir / CHECKPOINT, best
    return run_dir / CHECKPOINT, checkpoint["model"]


def unfinished_note(run_dir: Path) -> str | None:
    """One line for a command that reads a run without a current ``model.pt`` (none, or one older than the
    checkpoint: :func:`stale_model`): which weights it uses and how to finish the run; None for a finished run."""
    run_dir = Path(run_dir)
    stale = stale_model(run_dir)
    if (run_dir / MODEL).exists() and stale is None:
        return None
    config = read_config(run_dir)
    if stale is not None:
        epochs, epoch = stale
        why = (f"{run_dir}'s {MODEL} is from its first {epochs} epochs (its resume to {epoch} epochs stopped before "
               "its final stage)")
    else:
        epoch = load_checkpoint(run_dir)["state"].get("epoch", 0)
        why = f"{run_dir} has no {MODEL} (its training stopped before its final stage)"
    return (f"ppgen: note: {why}; using the weights {CHECKPOINT} selects after epoch {epoch}; finish the run with "
            f"`ppgen train {config['model']} --resume {run_dir}`")


def load_pair(run_dir: Path):
    """The trained pair of ``run_dir``: selected weights (model.pt), else those the last checkpoint selects."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    pair = build_pair(config, run_dir / CONFIG)
    path, state = selected_weights(run_dir, config)
    check_weights(pair, state, path)
    pair.load_state_dict(state)
    pair.eval()
    return pair


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a ppgen run directory: a real folder, a ppgen config, and a checkpoint or model."""
    path = Path(path)
    return _has_ppgen_config(path) and ((path / CHECKPOINT).is_file() or (path / MODEL).is_file())


def is_unfinished_run(path: Path) -> bool:
    """A run stopped before its first checkpoint (older ppgen left these): a ppgen config and nothing else."""
    path = Path(path)
    return _has_ppgen_config(path) and all(p.name == CONFIG or TEMP_FILE.match(p.name) for p in path.iterdir())


def _has_ppgen_config(path: Path) -> bool:
    if path.is_symlink() or not path.is_dir() or not (path / CONFIG).is_file():
        return False
    try:
        return _config_problem(json.loads((path / CONFIG).read_text())) is None
    except (OSError, ValueError):
        return False


def clean_stale_temp_files(run_dir: Path) -> None:
    """Remove temporary files of ppgen's own naming left in ``run_dir`` by a killed write."""
    with contextlib.suppress(OSError):
        for entry in Path(run_dir).iterdir():
            if TEMP_FILE.match(entry.name) and entry.is_file() and not entry.is_symlink():
                with contextlib.suppress(OSError):
                    entry.unlink()


# -- checking output paths before the work -------------------------------------------------------


def _first_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and not path.is_symlink():
        path = path.parent
    return path


def check_output_dir(path: Path, what: str = "--out") -> None:
    """UserError unless a folder can be created (or written) at ``path``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; choose another {what}")
    base = _first_existing(path)
    if not base.is_dir():
        raise UserError(f"{what} {path} goes through {base}, which is a file; choose another {what}")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: folder {base} is not writable; choose another {what}")


def check_output_file(path: Path, suffixes: tuple[str, ...], what: str = "--out") -> None:
    """UserError unless a file with one of ``suffixes`` can be written at ``path``."""
    path = Path(path)
    if path.suffix not in suffixes:
        raise UserError(f"{what} {path}: use a {' or '.join(suffixes)} file name")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name such as {path / ('samples' + suffixes[0])}")
    if not path.parent.exists():
        base = _first_existing(path.parent)
        if not base.is_dir():
            raise UserError(f"{what} {path} goes through {base}, which is a file; choose another {what}")
        raise UserError(f"folder {path.parent} does not exist; create it first")
    if not path.parent.is_dir():
        raise UserError(f"{what} {path} goes through {path.parent}, which is a file; choose another {what}")
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"{what} {path} is not writable; choose another {what}")


def check_new_run_dir(out: Path, overwrite: bool = False) -> None:
    """UserError unless ``train --out out`` may write there: nothing of the user's is ever replaced."""
    out = Path(out)
    if out.is_symlink():
        raise UserError(f"--out {out} is a symbolic link; give the real folder ({os.path.realpath(out)}) or another")
    check_output_dir(out)
    check_output_dir(out.parent)  # the run is built beside ``out`` and renamed into place
    here = Path.cwd().resolve()
    if out.exists() and (out.resolve() == here or out.resolve() in here.parents):
        raise UserError(f"--out {out} is the working folder or above it; give a new folder such as runs/NAME")
    if not out.exists() or not any(out.iterdir()):
        return
    if is_unfinished_run(out):
        if not overwrite:
            raise UserError(f"{out} holds a run stopped before its first checkpoint; start it again with "
                            f"--out {out} --overwrite")
        return
    if not is_run_dir(out):
        raise UserError(f"{out} exists and is not a ppgen run directory; --overwrite replaces only runs, so "
                        "choose another --out")
    if not overwrite:
        raise UserError(f"{out} already holds a run; continue it with --resume {out}, or replace it with --overwrite")
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"--out {out} is not writable; choose another --out")


# -- writing a run -------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_staging(out: Path) -> None:
    """Remove hidden sibling folders that a killed ppgen process left while building or replacing ``out``."""
    out = Path(out)
    with contextlib.suppress(OSError):
        for entry in out.parent.iterdir():
            match = STAGING.match(entry.name)
            if match and match["name"] == out.name and entry.is_dir() and not entry.is_symlink() \
                    and not _pid_alive(int(match["pid"])):
                shutil.rmtree(entry, ignore_errors=True)


class RunWriter:
    """Where a training run writes: ``path`` (a hidden sibling until the first checkpoint is published)."""

    def __init__(self, path: Path, config: dict, publish=None):
        self.path = Path(path)
        self.config = config
        self.checkpoints = 0
        self._publish = publish

    def save_checkpoint(self, fit) -> None:
        """The epoch's checkpoint and history; the first one also writes the config and publishes a new run."""
        save_torch(self.path / CHECKPOINT, fit.checkpoint())
        write_history(self.path, fit.history)
        if self.checkpoints == 0:
            write_json(self.path / CONFIG, self.config)
            if self._publish is not None:
                self.path = self._publish(self.path)
        self.checkpoints += 1

    def require_checkpoint(self, stopped: str | None) -> None:
        """UserError (and nothing written) if training ended before its first checkpoint."""
        if self.checkpoints == 0:
            reason = stopped or "no epoch was completed"
            raise UserError(f"training stopped before its first epoch ended, nothing was written: {reason}")


def _make_staging(out: Path, kind: str) -> Path:
    path = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.ppgen-{kind}-{os.getpid()}-"))
    os.chmod(path, 0o777 & ~_umask())
    return path


def _swap_into_place(staging: Path, out: Path) -> Path:
    """Rename ``staging`` to ``out``; an old run (or empty folder) at ``out`` is moved aside, then removed."""
    old = None
    if out.exists():
        old = _make_staging(out, "old")
        os.rmdir(old)
        os.rename(out, old)
    os.rename(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, deepest first."""
    created = []
    folder = Path(os.path.abspath(folder))
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    for path in reversed(created):
        path.mkdir()
    return created


@contextlib.contextmanager
def new_run(out: Path, config: dict, overwrite: bool = False) -> Iterator[RunWriter]:
    """A writer for a new run at ``out``, built in a hidden sibling and renamed into place at its first checkpoint.

    If the block fails before that, the sibling (and any parent folder made for it) is removed and
    ``out`` is untouched; an old run at ``out`` is replaced (``overwrite``) only then.
    """
    out = Path(out)
    check_new_run_dir(out, overwrite)
    remove_stale_staging(out)
    created = _make_parents(out.parent)
    staging = _make_staging(out, "new")
    writer = RunWriter(staging, config, publish=lambda path: _swap_into_place(path, out))
    try:
        yield writer
    except BaseException:
        if writer.checkpoints == 0:
            shutil.rmtree(staging, ignore_errors=True)
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise


def write_new_run(out: Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """A complete run at ``out`` at once: ``write(folder)`` fills a hidden sibling, which is then renamed into place
    (an old run at ``out`` replaced only with ``overwrite``); if ``write`` fails, ``out`` is untouched."""
    out = Path(out)
    check_new_run_dir(out, overwrite)
    remove_stale_staging(out)
    created = _make_parents(out.parent)
    staging = _make_staging(out, "new")
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return _swap_into_place(staging, out)


@contextlib.contextmanager
def resumed_run(run_dir: Path, config: dict) -> Iterator[RunWriter]:
    """A writer that continues ``run_dir`` in place: nothing in it changes before the first new checkpoint."""
    yield RunWriter(Path(run_dir), config)
