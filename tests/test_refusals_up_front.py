"""Refused up front, in one line (exit 2, nothing written), rather than failing in the middle of the work:

* a text corpus on a family that observes no word counts (it named no family and ended in a traceback);
* an option that needs the torch engine on ``--engine jax`` (named by its flag, with ``--engine torch`` as the fix),
  and ``auto`` choosing torch because of it, saying which option;
* ``compare`` (NUTS) on a family whose latents NUTS cannot sample (declared by the family: ``nuts_refusal``);
* ``--nproc`` above what the machine runs side by side (no process started).

Also: a new Ladder VAE run takes batch_norm's declared default (on), where it took the value runs written before
the option existed had (off); and the KL between the encoder's Gaussians and NUTS's is computed from the Cholesky
factors, so a badly conditioned q no longer fails as "not positive-definite".
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest
import torch
from support import VQVAE_FLAGS, VQVAE_SMALL, run_cli

import ppgen
from ppgen.declare import OptionError
from ppgen.errors import UserError
from ppgen.evaluation.amortization import Gaussian
from ppgen.inference import distributed
from ppgen.inference.options import SVIOptions, cli_flags
from ppgen.inference.stages import StageOptions
from ppgen.inference.svi import choose_engine
from ppgen.models import VAE, ProdLDA
from ppgen.models.base import text_families
from ppgen.models.vqvae import VQVAE

WORDS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "olive", "peach", "plum", "melon", "kiwi", "lime"]


def _corpus(path) -> None:
    """80 short documents over 12 words, each word in about a third of them (a CountVectorizer keeps them all)."""
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["text"])
        writer.writeheader()
        for _ in range(80):
            writer.writerow({"text": " ".join(rng.choice(WORDS, size=4, replace=False).tolist() * 3)})


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_text_corpus_on_an_image_family_names_the_families_that_take_text(tmp_path, capsys):
    corpus = tmp_path / "corpus.csv"
    _corpus(corpus)
    out = tmp_path / "run"
    assert run_cli("train", "vae", "--data", corpus, "--epochs", "1", "--no-progress", "--out", out) == 2
    line = _one_line(capsys)
    assert "text corpus" in line and "vae does not model" in line and "prodlda" in line and "dirvae" in line, line
    assert sorted(os.listdir(tmp_path)) == ["corpus.csv"]
    assert {"prodlda", "dirvae"} <= set(text_families()) and "vae" not in text_families()


@pytest.mark.parametrize("family,flags,flag", [
    ("vae", ["--flows", "2"], "--flows 2"),
    ("vae", ["--free-bits", "0.5"], "--free-bits 0.5"),
])
def test_an_option_that_needs_torch_on_engine_jax_names_the_option_and_the_fix(tmp_path, capsys, family, flags,
                                                                                flag):
    out = tmp_path / "run"
    code = run_cli("train", family, "--data", "digits", "--epochs", "1", "--no-progress", "--out", out, "--engine",
                   "jax", *flags)
    assert code == 2
    line = _one_line(capsys)
    assert line.startswith(f"ppgen: error: {flag}: ") and "needs engine='torch'" in line, line
    assert "; use --engine torch" in line, line
    assert os.listdir(tmp_path) == []


def test_the_family_options_that_need_torch_are_declared_and_steer_auto():
    flows = VAE(x_shape=(1, 8, 8), z_dim=2, hidden=(8,), flows=2)
    assert flows.svi_engines == ("torch",) and [n for n, _ in flows.unsupported_options("jax")] == ["flows"]
    engine, why = choose_engine(flows, SVIOptions())
    assert engine == "torch" and "inverse autoregressive flows" in why and "JAX" in why
    topics = ProdLDA(x_shape=(12,), topics=3, hidden=(8,))  # batch norm on, its default
    assert topics.svi_engines == ("torch",) and [n for n, _ in topics.unsupported_options("jax")] == ["batch_norm"]
    engine, why = choose_engine(topics, SVIOptions())
    assert engine == "torch" and why.startswith("batch normalization needs engine='torch'")
    assert ProdLDA(x_shape=(12,), topics=3, hidden=(8,), batch_norm="off").svi_engines == ("jax", "torch")
    with pytest.raises(OptionError) as refused:
        choose_engine(topics, SVIOptions(engine="jax"))
    assert refused.value.option == "batch_norm" and refused.value.fix == {"engine": "torch"}


def test_a_new_ladder_run_takes_the_declared_batch_norm_and_a_resumed_one_keeps_its_own():
    from ppgen.workflows.train import _build, make_config

    data = ppgen.data.load("digits")
    config = make_config("lvae", {"z_dims": (4, 2), "hidden": (16, 8)}, {"name": "digits"}, {})
    assert _build(config, data).config.batch_norm == "on"  # the declared default, not the older runs' "off"
    assert config["model_config"]["batch_norm"] == "on"
    resumed = {**config, "model_config": {**config["model_config"], "batch_norm": "off"}}
    assert _build(resumed, data).config.batch_norm == "off"  # what the run was trained with
    older = {**config, "model_config": {k: v for k, v in config["model_config"].items() if k != "batch_norm"}}
    assert _build(older, data).config.batch_norm == "off"  # written before the option existed


def test_nuts_refuses_a_family_whose_latents_are_discrete_in_one_line():
    pair = VQVAE(x_shape=(1, 8, 8), **VQVAE_SMALL)
    data = ppgen.data.load("digits")
    with pytest.raises(UserError, match="NUTS cannot sample vqvae: its latents are discrete codes"):
        ppgen.fit(pair, data, backend="nuts", points=[0], chains=1, warmup=2, samples=2)


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
    """A one-epoch VQ-VAE run on the 8x8 digits (small networks)."""
    run = tmp_path_factory.mktemp("vq") / "run"
    assert run_cli("train", "vqvae", *VQVAE_FLAGS, "--epochs", "1", "--out", run) == 0
    return run


def test_compare_on_a_vqvae_run_is_one_line_before_any_work(vq_run, capsys):
    run = vq_run
    capsys.readouterr()
    before = sorted(os.listdir(run))
    assert run_cli("compare", run, "--points", "2", "--chains", "1", "--warmup", "5", "--samples", "5") == 2
    line = _one_line(capsys)
    assert "cannot sample vqvae" in line and "discrete codes" in line, line
    assert sorted(os.listdir(run)) == before


def test_nproc_above_the_cores_starts_no_process(tmp_path, capsys, monkeypatch):
    def no_process(*args, **kwargs):
        raise AssertionError("a process was started")

    monkeypatch.setattr(distributed.subprocess, "Popen", no_process)
    out = tmp_path / "run"
    assert run_cli("train", "vae", "--data", "digits", "--nproc", "1000", "--out", out) == 2
    line = _one_line(capsys)
    cores = distributed.usable_cores()
    assert line.startswith("ppgen: error: --nproc 1000:") and f"use --nproc {cores} or fewer" in line, line
    assert os.listdir(tmp_path) == []


def test_nproc_is_bounded_by_memory_too(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(distributed, "usable_cores", lambda: 64)
    monkeypatch.setattr(distributed, "resident_bytes", lambda: 300 * 2**20)
    monkeypatch.setattr(distributed, "_meminfo_bytes", lambda key: 1000 * 2**20)  # room for 3 such processes
    monkeypatch.setattr(distributed.subprocess, "Popen", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    assert run_cli("train", "vae", "--data", "digits", "--nproc", "8", "--out", tmp_path / "run") == 2
    line = _one_line(capsys)
    assert "each process takes at least 300 MiB" in line and "use --nproc 3 or fewer" in line, line


def test_the_kl_of_a_badly_conditioned_gaussian_is_exact_from_its_cholesky_factor():
    """L = [[1, 0], [1, 1e-4]] in float32: L Lᵀ rounds to a singular matrix, which MultivariateNormal refused as not
    positive-definite; the KL from the factors equals the closed form computed in float64 (to 1e-9 relative)."""
    q = Gaussian(torch.tensor([[0.5, -0.2]]), torch.tensor([[[1.0, 0.0], [1.0, 1e-4]]]), False)
    p = Gaussian(torch.tensor([[0.0, 0.0]]), torch.tensor([[[1.0, 0.0], [0.9, 0.05]]]), False)
    assert not bool(torch.linalg.cholesky_ex(q.cov.double())[1] == 0)  # the float32 covariance is not PD
    L0, L1 = (np.array(g.tril[0].tolist(), dtype=np.float64) for g in (q, p))
    S0, S1 = L0 @ L0.T, L1 @ L1.T
    d = np.array(p.loc[0].tolist(), dtype=np.float64) - np.array(q.loc[0].tolist(), dtype=np.float64)
    exact = 0.5 * (np.trace(np.linalg.solve(S1, S0)) + d @ np.linalg.solve(S1, d) - 2
                   + 2 * np.log(np.diag(L1)).sum() - 2 * np.log(np.diag(L0)).sum())
    kl = float(q.kl(p)[0])
    assert math.isfinite(kl) and abs(kl - exact) <= 1e-9 * abs(exact)


@pytest.mark.parametrize("flag,text", [(f"--{flag}", text) for flag, f in cli_flags(StageOptions)
                                       for text in (["nan", "inf", "-1"] if f.type in (float, "float") else ["2.5", "-1"])])
def test_every_stage_option_flag_refuses_bad_values_in_one_line(vq_run, capsys, flag, text):
    """The stage options (``ppgen prior RUN``), walked on the command line as the training options are."""
    before = sorted(os.listdir(vq_run))
    [stage] = [s.name for s in VQVAE.stages]
    assert run_cli(stage, vq_run, "--no-progress", f"{flag}={text}") == 2
    line = _one_line(capsys)
    assert flag in line, line
    assert sorted(os.listdir(vq_run)) == before
