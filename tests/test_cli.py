"""End-to-end runs of the `ppgen` command on small data: outputs, resume, and one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from support import run_cli

from ppgen import runs
from ppgen.cli import main

FAST = ["--data", "digits", "--z-dim", "4", "--hidden", "32", "--batch-size", "64", "--no-progress"]


def test_train_evaluate_sample_and_load(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("train", "vae", *FAST, "--epochs", "3", "--out", out) == 0
    for name in ("config.json", "checkpoint.pt", "model.pt", "metrics.json", "history.csv", "samples.png",
                 "reconstructions.png", "loss.png", "latents.png", "posterior.nc"):
        assert (out / name).exists(), name
    import arviz as az

    posterior = az.from_netcdf(str(out / "posterior.nc"))
    assert posterior.posterior["z"].shape == (4, 250, 16, 4)  # chains, draws, data, z_dim
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["test_elbo"] < 0
    capsys.readouterr()
    assert run_cli("evaluate", out, "--iwae", "50", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    # IWAE_50 >= ELBO up to Monte Carlo error (both averaged over the same test digits)
    assert result["iwae_50"] >= result["elbo"] - 3 * result["elbo_se"]
    assert 0 <= result["active_units"] <= 4 and len(result["kl_per_dim"]) == 4
    assert run_cli("sample", out, "-n", "16", "--out", tmp_path / "s.npy") == 0
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (16, 1, 8, 8) and (samples >= 0).all() and (samples <= 1).all()
    import ppgen

    pair = ppgen.load(out)
    state = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(pair.state_dict()[k], v) for k, v in state.items())


def test_resume_continues_to_the_same_result(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli("train", "vae", *FAST, "--epochs", "4", "--select", "last", "--out", straight) == 0
    assert run_cli("train", "vae", *FAST, "--epochs", "2", "--select", "last", "--out", split) == 0
    assert run_cli("train", "vae", "--resume", split, "--epochs", "4", "--no-progress") == 0
    a = torch.load(straight / "model.pt", weights_only=True)
    b = torch.load(split / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ha = (straight / "history.csv").read_text().splitlines()
    hb = (split / "history.csv").read_text().splitlines()
    assert len(ha) == len(hb) == 5
    elbo = [line.split(",")[1] for line in ha], [line.split(",")[1] for line in hb]
    assert elbo[0] == elbo[1]


def test_sigkill_mid_epoch_then_resume_matches(tmp_path):
    """A run killed with SIGKILL part-way and resumed ends exactly where an uninterrupted one does."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = ["train", "vae", "--data", "digits", "--z-dim", "4", "--hidden", "32", "--batch-size", "16",
            "--epochs", "6", "--select", "last", "--no-progress", "--engine", "torch"]
    assert run_cli(*args, "--out", straight) == 0
    proc = subprocess.Popen([sys.executable, "-m", "ppgen.cli", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "MPLBACKEND": "Agg"})
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "checkpoint.pt").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = runs.load_torch(killed / "checkpoint.pt")["state"]["epoch"]
    assert 1 <= done < 6, "the run must have been killed part-way"
    assert run_cli("train", "vae", "--resume", killed, "--epochs", "6", "--no-progress") == 0
    a = torch.load(straight / "model.pt", weights_only=True)
    b = torch.load(killed / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "nosuchmodel"], "unknown model"),
        (["train", "vae", "--data", "/no/such/file.npz"], "no data set"),
        (["train", "vae", "--data", "digits", "--binarize", "none"], "not binary"),
        (["evaluate", "/no/such/run"], "not a directory"),
        (["train", "vae", "--data", "digits", "--z-dim", "0"], "positive"),
        (["train", "vae", "--data", "digits", "--binarize", "none", "--likelihood", "cbernoulli", "--epochs", "0"],
         "positive"),
    ],
)
def test_user_mistakes_end_with_one_line_and_exit_2(tmp_path, capsys, args, needle):
    out = tmp_path / "never"
    code = run_cli(*args, "--out", out) if args[0] == "train" else run_cli(*args)
    assert code == 2
    assert needle in _error_line(capsys)
    assert not out.exists(), "no half-written run directory"


def test_bad_files_end_with_one_line(tmp_path, capsys):
    nan = tmp_path / "nan.npy"
    x = np.random.default_rng(0).random((50, 6)).astype(np.float32)
    x[3, 2] = np.nan
    np.save(nan, x)
    assert run_cli("train", "vae", "--data", nan, "--likelihood", "gaussian", "--out", tmp_path / "r") == 2
    assert "NaN" in _error_line(capsys) and not (tmp_path / "r").exists()
    bad = tmp_path / "run"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model": "vae", "model_config": {"x_shape": [1, 8, 8]}}))
    (bad / "model.pt").write_bytes(b"not a checkpoint")
    assert run_cli("sample", bad, "--out", tmp_path / "s.png") == 2
    assert "corrupt" in _error_line(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("evaluate", empty) == 2
    assert "holds no trained run" in _error_line(capsys)


def test_listings_and_help(capsys):
    assert run_cli("models") == 0 and "vae" in capsys.readouterr().out
    assert run_cli("data") == 0 and "mnist" in capsys.readouterr().out
    for cmd in ("train", "evaluate", "sample"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert "usage" in capsys.readouterr().out


def test_existing_out_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert run_cli("train", "vae", *FAST, "--out", out) == 2
    # a folder of the user's files is never a run to continue or replace: the message says to choose another
    assert "choose another --out" in _error_line(capsys) and (out / "keep.txt").exists()
