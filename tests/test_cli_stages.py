"""A family's own stage, topics and sampling steps reach the ``ppgen`` command through the protocol (no edit of the
shared layers): the stage's subcommand, its training in the one loop (resume bit-exact, NaN stop with the last
good weights, the validation figure), model flags and their choices derived from the families' Config fields."""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import shutil
from dataclasses import dataclass, field

import pytest
import torch
from support import VQVAE_FLAGS as FAST
from support import VQVAE_SMALL as SMALL

import ppgen
from ppgen import models
from ppgen.cli import main
from ppgen.commands.train import add_model_flags
from ppgen.inference.stages import fit_stage
from ppgen.models.base import GenerativeModel
from ppgen.models.vqvae import PRIOR, VQVAE


@pytest.fixture(scope="module")
def digits():
    return ppgen.data.load("digits")


def _history(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_resumed_stage_is_the_straight_stage_bit_for_bit(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", "vqvae", *FAST, "--epochs", "1", "--out", str(straight)]) == 0
    shutil.copytree(straight, split)
    assert main(["prior", str(straight), "--epochs", "2", "--no-progress"]) == 0
    assert main(["prior", str(split), "--resume", "--no-progress"]) == 2  # nothing to resume yet
    assert "no prior_checkpoint.pt" in capsys.readouterr().err
    assert main(["prior", str(split), "--epochs", "1", "--no-progress"]) == 0
    assert main(["prior", str(split), "--epochs", "1", "--resume", "--no-progress"]) == 2  # 1 epoch already done
    assert "give --epochs above 1" in capsys.readouterr().err
    assert main(["prior", str(split), "--epochs", "2", "--resume", "--no-progress"]) == 0
    a, b = _history(straight / "prior_history.csv"), _history(split / "prior_history.csv")
    assert [r["prior_nll"] for r in a] == [r["prior_nll"] for r in b] and len(a) == 2
    assert [r["val_prior_nll"] for r in a] == [r["val_prior_nll"] for r in b]
    wa, wb = torch.load(straight / "model.pt", weights_only=True), torch.load(split / "model.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa if k.startswith("prior_net."))
    assert main(["prior", str(straight), "--lr", "-1"]) == 2  # the option named by its flag, one line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ppgen: error: --lr -1")


def test_a_nan_stops_the_stage_with_the_last_good_weights(digits, monkeypatch):
    torch.manual_seed(0)
    pair = VQVAE(digits.x_shape, **SMALL)
    ppgen.fit(pair, digits, epochs=1, batch_size=64, lr=3e-3, progress=False, engine="torch")
    seen: list[dict] = []

    def loss_turning_nan(p, k):  # the second epoch's first step gives NaN
        nll = PRIOR.loss(p, k)
        return nll * float("nan") if seen else nll

    def after_epoch(fit):
        val_codes = pair.codes(digits.val)
        with torch.no_grad():
            by_hand = float(-pair.prior_net.log_prob(val_codes).mean())
        assert fit.history[-1]["val_prior_nll"] == pytest.approx(by_hand, rel=1e-6)  # the same mean, same weights
        seen.append(copy.deepcopy(pair.prior_net.state_dict()))

    monkeypatch.setattr(VQVAE, "stages", (dataclasses.replace(PRIOR, loss=loss_turning_nan),))
    fit = fit_stage(pair, "prior", digits, epochs=3, seed=0, on_epoch_end=after_epoch)
    assert len(fit.history) == 1 and fit.stopped.startswith("prior_nll became nan at epoch 2, step 1")
    assert all(torch.equal(v, seen[0][k]) for k, v in pair.prior_net.state_dict().items())
    assert bool(pair.prior_fitted)  # one good epoch: the pair uses it


def test_a_stage_is_refused_for_a_run_of_another_family_before_anything_is_written(tmp_path, capsys):
    vae = tmp_path / "vae"
    assert main(["train", "vae", "--data", "digits", "--z-dim", "2", "--hidden", "8", "--epochs", "1",
                 "--no-progress", "--out", str(vae)]) == 0
    before = sorted(p.name for p in vae.iterdir())
    capsys.readouterr()
    assert main(["prior", str(vae)]) == 2
    assert "`ppgen prior` is for vqvae runs" in capsys.readouterr().err
    assert sorted(p.name for p in vae.iterdir()) == before


def test_topics_and_sampling_steps_are_declared_on_the_protocol():
    from ppgen.models.diffusion import DDPM

    assert models.ProdLDA((30,), topics=3, hidden=(8,)).has_topics
    assert not models.VAE((1, 8, 8), z_dim=2, hidden=(8,)).has_topics
    ddpm = DDPM((2,), likelihood="gaussian", hidden=(8,), timesteps=10)
    faster = ddpm.in_steps(4)
    assert ddpm.samples_in_steps and faster.config.sample_steps == 4 and faster.config.sampler == "ddim"
    assert all(torch.equal(v, faster.state_dict()[k]) for k, v in ddpm.state_dict().items())
    assert not models.VAE((1, 8, 8), z_dim=2, hidden=(8,)).samples_in_steps


class _NoSamples(GenerativeModel):
    """A pair without ``generate`` (unregistered: no name)."""

    def __init__(self):
        super().__init__(type("C", (), {"x_shape": (2,)})())
        self.w = torch.nn.Parameter(torch.zeros(1))


def test_pictures_skip_samples_for_a_pair_that_cannot_generate(tmp_path):
    from ppgen.workflows.train import pictures

    data = ppgen.data.load("ring8")
    pictures(_NoSamples(), data, [{"epoch": 1, "elbo": -1.0}, {"epoch": 2, "elbo": -0.5}], tmp_path)
    assert not (tmp_path / "samples.png").exists() and (tmp_path / "loss.png").exists()


def _family(name: str, choices: tuple[str, ...] | None, default: str):
    metadata = {"help": "how it mixes"} | ({"choices": choices} if choices else {})

    @dataclass(frozen=True)
    class Config:
        x_shape: tuple[int, ...] = (2,)
        mixing: str = field(default=default, metadata=metadata)

    return type(name, (), {"Config": Config})


@pytest.mark.parametrize("second, offered", [(("b", "c"), ["a", "b", "c"]), (None, None)])
def test_model_flags_and_their_choices_come_from_the_config_fields(monkeypatch, second, offered):
    """Two families declare ``mixing``: the flag offers the union of their choices; where one family declares none,
    the flag leaves the value to that family's own check."""
    registry = {"one": _family("One", ("a", "b"), "a"), "two": _family("Two", second, "b")}
    monkeypatch.setattr(models, "REGISTRY", registry)
    parser = argparse.ArgumentParser()
    assert add_model_flags(parser) == ("mixing",)
    action = next(a for a in parser._actions if a.dest == "mixing")
    assert action.option_strings == ["--mixing"] and action.choices == offered
    assert "one/two: how it mixes (default: the family's own)" == action.help


def test_a_family_adds_its_own_subcommand_by_declaring_a_stage(monkeypatch, capsys):
    """A stage declared on a family (here a VQ-VAE variant under another name) becomes ``ppgen <stage>`` with the
    stage's own help and defaults; nothing in the shared layers names it."""
    from ppgen.models.base import Stage

    warmup = Stage(name="warmup", help="the toy's warm-up stage", description="Warm the toy up.",
                   module=PRIOR.module, examples=PRIOR.examples, loss=PRIOR.loss, metric="toy_nll",
                   weights=PRIOR.weights, finish=PRIOR.finish, options={"epochs": 7})
    toy = type("Toy", (VQVAE,), {"stages": (warmup,)})  # unnamed: not registered by its definition
    monkeypatch.setitem(models.REGISTRY, "toy", toy)
    with pytest.raises(SystemExit) as exc:
        main(["warmup", "--help"])
    shown = capsys.readouterr().out
    assert exc.value.code == 0 and "Warm the toy up." in shown and "(toy)" in shown and "(default 7)" in shown
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    listed = capsys.readouterr().out
    assert "warmup" in listed and "the toy's warm-up stage" in listed and "prior" in listed
