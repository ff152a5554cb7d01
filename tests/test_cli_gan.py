"""`ppgen train gan` end to end: the adversarial backend through the CLI, resume, evaluate, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support import run_cli

from ppgen import runs, workflows
from ppgen.evaluation.modes import evaluate_pair

FAST = ["--data", "ring8", "--hidden", "32,32", "--critic-hidden", "32,32", "--batch-size", "500", "--no-progress"]


def test_backend_defaults_by_family_and_options_are_checked():
    gan = workflows.make_config("gan", {}, {"name": "mnist", "binarize": "default"}, {})
    vae = workflows.make_config("vae", {}, {"name": "mnist", "binarize": "default"}, {})
    assert gan["train"]["backend"] == "adversarial" and gan["train"]["loss"] == "ns" and "elbo" not in gan["train"]
    assert gan["data"]["binarize"] is None  # a generator learns grey levels
    assert vae["train"]["backend"] == "svi" and "loss" not in vae["train"] and vae["data"]["binarize"] == "default"
    both = workflows.make_config("vae", {}, {}, {"backend": "adversarial", "loss": "lsgan"})
    assert both["train"]["backend"] == "adversarial" and both["train"]["loss"] == "lsgan"


def test_train_gan_on_ring8_writes_a_run_resumes_and_evaluates(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PPGEN_CACHE", str(tmp_path / "cache"))
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli("train", "gan", *FAST, "--loss", "ns", "--epochs", "3", "--out", straight) == 0
    for name in ("config.json", "checkpoint.pt", "model.pt", "metrics.json", "history.csv", "samples.png", "loss.png"):
        assert (straight / name).exists(), name
    assert not (straight / "posterior.nc").exists() and not (straight / "latents.png").exists()  # no guide
    config = runs.read_config(straight)
    assert config["train"]["backend"] == "adversarial" and config["train"]["loss"] == "ns"
    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and not any(k.endswith("_elbo") for k in metrics)
    assert metrics["n_modes"] == 8 and 0 <= metrics["modes"] <= 8 and 0 <= metrics["high_quality"] <= 1
    history = (straight / "history.csv").read_text().splitlines()
    assert len(history) == 4 and "loss_d" in history[0] and "loss_g" in history[0]
    # the figures in metrics.json are mode_report on 2,500 seeded draws of the saved generator
    pair = runs.load_pair(straight)
    assert evaluate_pair(pair, "ring8", seed=0)["modes"] == metrics["modes"]

    # stopping after 2 epochs and resuming to 3 gives the uninterrupted run's weights
    assert run_cli("train", "gan", *FAST, "--loss", "ns", "--epochs", "2", "--out", split) == 0
    assert run_cli("train", "gan", "--resume", split, "--epochs", "3", "--no-progress") == 0
    a = torch.load(straight / "model.pt", weights_only=True)
    b = torch.load(split / "model.pt", weights_only=True)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    capsys.readouterr()
    assert run_cli("evaluate", straight, "--fid", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert "elbo" not in result and result["modes"] == metrics["modes"]
    quality = result["sample_quality"]
    assert quality["fid"] >= 0 and quality["n_fake"] == quality["n_real"] == 2000
    assert run_cli("evaluate", straight) == 0
    text = capsys.readouterr().out
    assert "mode coverage" in text and "/8" in text and "reverse KL" in text and "IWAE" not in text

    # density-ratio rejection: the classifier is trained once, cached in the run, and reused
    assert run_cli("evaluate", straight, "--rejection", "--rejection-steps", "150", "--json") == 0
    first = json.loads(capsys.readouterr().out)["rejection"]
    assert (straight / "rejection.pt").exists() and 0 < first["accept_rate"] <= 1
    assert first["n_modes"] == 8 and 0.5 <= first["classifier_accuracy"] <= 1
    assert run_cli("evaluate", straight, "--rejection", "--rejection-steps", "150", "--fid", "--json") == 0
    again = json.loads(capsys.readouterr().out)["rejection"]
    assert again["log_bound"] == first["log_bound"] and again["sample_quality"]["fid"] >= 0
    (straight / "rejection.pt").write_bytes(b"not a checkpoint")  # a damaged cache is retrained, not fatal
    assert run_cli("evaluate", straight, "--rejection", "--rejection-steps", "150", "--json") == 0
    assert json.loads(capsys.readouterr().out)["rejection"]["log_bound"] == first["log_bound"]
    points = tmp_path / "points.npy"
    assert run_cli("sample", straight, "--rejection", "--rejection-steps", "150", "-n", "300", "--out", points) == 0
    assert np.load(points).shape == (300, 2)
    assert run_cli("sample", straight, "--rejection", "--quantile", "0", "--out", points) == 2
    assert "--quantile" in capsys.readouterr().err


@pytest.mark.parametrize("args, needle", [
    (["gan", "--data", "ring8", "--loss", "ali"], "needs a guide"),
    (["vae", "--data", "digits", "--backend", "adversarial"], "no reparameterized draw"),
    (["vae", "--data", "digits", "--loss", "ns"], "--backend adversarial"),
    (["gan", "--data", "ring8", "--elbo", "iwae"], "--backend svi"),
])
def test_bad_adversarial_input_exits_2_with_one_line(tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    assert run_cli("train", *args, "--epochs", "1", "--out", out, "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ppgen: error:") and needle in err
    assert not out.exists()  # nothing half-written
