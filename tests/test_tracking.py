"""Experiment tracking read back by the trackers' own readers (TensorBoard's EventAccumulator, MLflow's client), the
run's train.log, callbacks that add to the validation ELBO, and a one-line error for a backend not installed."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest
import torch
from support import run_cli

import ppgen
from ppgen import tracking
from ppgen.errors import UserError

FAST = ["--data", "digits", "--z-dim", "4", "--hidden", "32", "--batch-size", "64", "--no-progress"]
EPOCHS = 2


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    out = tmp_path_factory.mktemp("tracked") / "run"
    assert run_cli("train", "vae", *FAST, "--epochs", str(EPOCHS), "--out", out, "--log", "tensorboard",
                   "--log", "mlflow") == 0
    with open(out / "history.csv") as f:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return out, history, json.loads((out / "metrics.json").read_text())


def test_tensorboard_event_files_hold_the_history_and_samples(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, history, metrics = tracked_run
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    for column in ("elbo", "val_elbo", "images_per_s"):
        logged = events.Scalars(f"train/{column}")
        assert [e.step for e in logged] == list(range(1, EPOCHS + 1))
        assert [e.value for e in logged] == pytest.approx([row[column] for row in history], rel=1e-6)
    kl = [e.value for e in events.Scalars("train/val_kl")]
    units = [e.value for e in events.Scalars("train/val_active_units")]
    assert len(kl) == EPOCHS and all(k >= 0 for k in kl) and all(0 <= u <= 4 for u in units)
    assert events.Scalars("final/test_elbo")[0].value == pytest.approx(metrics["test_elbo"], rel=1e-6)
    images = events.Images("samples")
    assert [i.step for i in images] == [EPOCHS] and images[0].width > 100  # the last epoch's grid
    assert "hparams/text_summary" in events.Tags()["tensors"]


def test_mlflow_file_store_holds_metrics_params_and_images(tracked_run):
    from mlflow.tracking import MlflowClient

    out, history, metrics = tracked_run
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("ppgen")
    (run,) = client.search_runs([experiment.experiment_id])
    elbo = client.get_metric_history(run.info.run_id, "train/elbo")
    assert [m.step for m in elbo] == list(range(1, EPOCHS + 1))
    assert [m.value for m in elbo] == pytest.approx([row["elbo"] for row in history], rel=1e-6)
    assert run.data.params["train.lr"] == "0.001" and run.data.params["model_config.z_dim"] == "4"
    assert run.data.params["model"] == "vae" and run.info.status == "FINISHED"
    assert run.data.metrics["final/test_elbo"] == pytest.approx(metrics["test_elbo"], rel=1e-6)
    assert any(a.path.endswith(".png") for a in client.list_artifacts(run.info.run_id, "images"))


def test_train_log_is_what_was_printed_and_a_resume_adds_to_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("train", "vae", *FAST, "--epochs", "1", "--out", out) == 0
    printed = capsys.readouterr().out.splitlines()
    logged = (out / "train.log").read_text().splitlines()
    assert logged == printed[:-1] and printed[-1].startswith("wrote ")  # all but the closing summary
    assert any(line.startswith("epoch   1  train ELBO") for line in logged)
    assert run_cli("train", "vae", "--resume", out, "--epochs", "2", "--no-progress") == 0
    resumed = (out / "train.log").read_text().splitlines()
    assert resumed[:len(logged)] == logged and any(line.startswith("epoch   2  train ELBO") for line in resumed)


def test_python_loggers_and_a_callback_that_adds_to_the_validation_elbo(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = ppgen.data.load("digits")
    pair = ppgen.models.VAE(x_shape=data.x_shape, z_dim=2, hidden=(16,))
    seen = []

    def weight_norm(fit) -> dict:
        seen.append(fit.state.epoch)
        return {"weight_norm": float(sum(p.detach().norm() for p in fit.pair.parameters()))}

    board = tracking.TensorBoard(tmp_path / "tb", samples_every=1)
    fit = ppgen.fit(pair, data, epochs=2, batch_size=128, callback=weight_norm, loggers=[board])
    assert seen == [1, 2] and all({"val_elbo", "weight_norm"} <= set(row) for row in fit.history)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("train/weight_norm")] == pytest.approx(
        [row["weight_norm"] for row in fit.history], rel=1e-6)
    assert [i.step for i in events.Images("samples")] == [1, 2]


def test_a_backend_not_installed_or_unknown_is_one_line(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(UserError, match=r"--log mlflow needs the mlflow package: pip install 'ppgen\[track\]'"):
        tracking.parse("mlflow")
    out = tmp_path / "run"
    assert run_cli("train", "vae", *FAST, "--epochs", "1", "--out", out, "--log", "mlflow") == 2
    assert "needs the mlflow package" in capsys.readouterr().err and not out.exists()
    with pytest.raises(UserError, match="unknown tracking backend 'wandb'"):
        tracking.parse("wandb")


def test_a_place_that_cannot_be_written_is_one_line_before_anything_is_written(tmp_path, capsys):
    """--log BACKEND=WHERE with WHERE under a file (no folder can be made there): exit 2, one line, no run, and
    the check leaves nothing behind; a remote tracking URI is not checked here."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = tmp_path / "run"
    for spec in (f"tensorboard={blocker / 'tb'}", f"mlflow=file:{blocker / 'ml'}"):
        assert run_cli("train", "vae", *FAST, "--epochs", "1", "--out", out, "--log", spec) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "cannot write in" in err and spec in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    assert tracking.parse(f"tensorboard={tmp_path / 'new' / 'tb'}") == ("tensorboard", str(tmp_path / "new" / "tb"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    assert tracking.parse("mlflow=http://localhost:5000") == ("mlflow", "http://localhost:5000")


def test_generated_and_encoded_tensors_are_detached():
    pair = ppgen.models.VAE(x_shape=(1, 8, 8), z_dim=2, hidden=(16,))
    x = torch.rand(3, 1, 8, 8)
    assert pair.generate(4).numpy().shape == (4, 1, 8, 8)
    loc, scale = pair.encode(x)
    assert loc.numpy().shape == (3, 2) and not scale.requires_grad
    assert not pair.reconstruct(x).requires_grad
