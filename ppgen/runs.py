"""Run directories: config, checkpoints, metrics, history and pictures; resume and load.

A run directory written by ``ppgen train`` holds::

    config.json        model, data and training options (enough to rebuild and resume)
    checkpoint.pt      the last finished epoch: weights, optimizer, history, RNG plan
    model.pt           the selected weights (best validation epoch, or last)
    metrics.json       held-out figures
    history.csv        one row per epoch
    samples.png, reconstructions.png, loss.png, latents.png

Every file is written to a temporary name in the same folder and renamed, so a
crash never leaves a half-written file; checkpoints are loaded with
``torch.load(..., weights_only=True)``. A run that fails before its first
checkpoint removes its folder, so no half-written run directory is left behind.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ppgen.errors import UserError

CONFIG, CHECKPOINT, MODEL, METRICS, HISTORY = "config.json", "checkpoint.pt", "model.pt", "metrics.json", "history.csv"


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_jsonable) + "\n").encode())


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def save_torch(path: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_torch(path: Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} is missing; train the run first (ppgen train ... --out {path.parent})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle with non-tensor objects, ...
        raise UserError(f"{path} is corrupt or not a ppgen checkpoint ({type(err).__name__}); "
                        "retrain, or resume from a good copy") from None


def read_config(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory; give a run directory written by `ppgen train`")
    if not path.exists():
        raise UserError(f"{run_dir} holds no trained run ({CONFIG} missing); give a directory written by `ppgen train`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg}); the run directory is damaged") from None


def write_history(run_dir: Path, history: list[dict]) -> None:
    if not history:
        return
    keys = list(dict.fromkeys(k for row in history for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(Path(run_dir) / HISTORY, buffer.getvalue().encode())


def build_pair(config: dict):
    from ppgen import models

    return models.get(config["model"]).from_config(config["model_config"])


def load_pair(run_dir: Path):
    """The trained pair of ``run_dir``: selected weights (model.pt), else the last checkpoint."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    pair = build_pair(config)
    if (run_dir / MODEL).exists():
        state = load_torch(run_dir / MODEL)
    else:
        state = load_torch(run_dir / CHECKPOINT)["model"]
    try:
        pair.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"{run_dir}: weights do not fit the model in {CONFIG} ({str(err).splitlines()[0]})") from None
    pair.eval()
    return pair


def save_checkpoint(run_dir: Path, fit) -> None:
    save_torch(Path(run_dir) / CHECKPOINT, fit.checkpoint())
    write_history(run_dir, fit.history)


@contextlib.contextmanager
def new_run(out: Path, config: dict, overwrite: bool = False) -> Iterator[Path]:
    """Create ``out`` with its config; remove it again if the block fails before a checkpoint exists."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} already exists and is not empty; choose another --out or continue it with --resume {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG, config)
    try:
        yield out
    except BaseException:
        if not (out / CHECKPOINT).exists():
            shutil.rmtree(out, ignore_errors=True)
        raise
