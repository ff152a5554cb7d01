"""`ppgen.save`: a pair trained in Python becomes a run directory that `ppgen evaluate`, `ppgen sample` and
`ppgen.load` read, written all at once or not at all."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support import run_cli

import ppgen
from ppgen import runs
from ppgen.errors import UserError


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = ppgen.data.load("digits")
    pair = ppgen.models.VAE(x_shape=data.x_shape, z_dim=3, hidden=(16,))
    fit = ppgen.fit(pair, data, epochs=2, batch_size=128, monitor="val_elbo", progress=False)
    return pair, fit, data


def test_a_saved_pair_is_a_run_the_commands_read(trained, tmp_path, capsys):
    pair, fit, data = trained
    out = ppgen.save(pair, tmp_path / "run", fit=fit, data=data)
    assert runs.is_run_dir(out)
    loaded = ppgen.load(out)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in pair.state_dict().items())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["best_epoch"] == fit.state.best_epoch
    assert (out / "history.csv").read_text().count("\n") == 3  # header and two epochs
    capsys.readouterr()
    assert run_cli("evaluate", out, "--iwae", "5", "--limit", "40", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    with torch.no_grad():  # the same figure from the pair in memory, on the same 40 test digits and seed
        torch.manual_seed(0)
        direct = float(ppgen.evaluation.elbo(pair.eval(), data.test[:40], num_samples=10).mean())
    assert result["n"] == 40 and result["elbo"] == pytest.approx(direct, rel=1e-5)
    assert run_cli("sample", out, "-n", "4", "--out", tmp_path / "s.npy") == 0
    assert np.load(tmp_path / "s.npy").shape == (4, 1, 8, 8)


def test_save_is_all_or_nothing_and_refuses_what_it_cannot_rebuild(trained, tmp_path, monkeypatch):
    pair, fit, data = trained
    out = ppgen.save(pair, tmp_path / "run")  # the weights alone
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.pt"]
    with pytest.raises(UserError, match="exists; choose another path or pass overwrite=True"):
        ppgen.save(pair, out)
    monkeypatch.setattr(runs, "write_history", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        ppgen.save(pair, tmp_path / "broken", fit=fit)
    assert not (tmp_path / "broken").exists() and [p.name for p in tmp_path.iterdir()] == ["run"]

    class Unnamed(ppgen.models.VAE):
        name = ""

    with pytest.raises(UserError, match="registered families only"):
        ppgen.save(Unnamed(x_shape=(4,), z_dim=1, hidden=(4,)), tmp_path / "other")
    with pytest.raises(UserError, match="cannot be loaded again by name"):
        ppgen.save(pair, tmp_path / "other", data=ppgen.data.from_tensor(torch.rand(10, 1, 8, 8)))
