"""`ppgen train MODEL --help` lists the flags every family shares and that family's own, not every family's."""

from __future__ import annotations

import dataclasses
import re

import pytest

from ppgen.cli import main
from ppgen.models import REGISTRY


def flags_of(capsys, *argv: str) -> set[str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 0
    return set(re.findall(r"^  (--[a-z0-9-]+)", capsys.readouterr().out, flags=re.M))


def test_a_familys_help_shows_its_own_and_the_common_flags_only(capsys):
    every = flags_of(capsys, "train", "--help")
    vae = flags_of(capsys, "train", "vae", "--help")
    ddpm = flags_of(capsys, "train", "ddpm", "--help")
    assert vae < every and ddpm < every and len(vae) < len(every) // 2 + 1
    assert {"--z-dim", "--net", "--flows", "--epochs", "--lr", "--log", "--data", "--out"} <= vae
    assert not {"--timesteps", "--n-critic", "--pack"} & vae  # DDPM's and the GAN's
    assert {"--timesteps", "--schedule", "--epochs"} <= ddpm and "--flows" not in ddpm
    assert {"--n-critic", "--loss"} <= flags_of(capsys, "train", "gan", "--help")  # adversarial by default
    shared = vae & ddpm
    declared = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(REGISTRY["vae"].Config)}
    assert not (vae - shared) - declared - {"--particles"}  # vae's extra flags are its Config's


def test_help_before_the_family_lists_every_flag(capsys):
    assert flags_of(capsys, "train", "--help") == flags_of(capsys, "train", "--help", "vae")


def test_a_familys_help_shows_the_training_defaults_it_trains_with(capsys):
    """The topic models train 100 epochs by default (their ``train_defaults``); the other families the command's 30."""
    def epochs_default(*argv: str) -> str:
        with pytest.raises(SystemExit):
            main(list(argv))
        text = " ".join(capsys.readouterr().out.split())
        return re.search(r"--epochs EPOCHS number of epochs .*?\(default (\d+)\)", text).group(1)

    assert epochs_default("train", "prodlda", "--help") == str(REGISTRY["prodlda"].train_defaults["epochs"]) == "100"
    assert epochs_default("train", "vae", "--help") == "30"
