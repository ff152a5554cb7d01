"""``--hidden`` with one group of sizes per stage (hvae, lvae, dlgm): ``ppgen train hvae --hidden 200,200 100,100``
builds Burda et al.'s two-layer net exactly as the API does; one group alone keeps its meaning (one size per stage);
a malformed list is refused in one line with nothing written. The full-MNIST leaderboard's rows
(benchmarks/mnist_table.py) each state their ``ppgen train`` line, and it builds the row's pair."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

import pytest
import torch
from support import run_cli

from ppgen import models
from ppgen.models import DLGM, HierarchicalVAE, LadderVAE

MNIST = (1, 28, 28)
ROOT = Path(__file__).resolve().parent.parent


def cli_config(*words: str) -> dict:
    """The run config ``ppgen train WORDS`` would write (nothing trained, nothing read)."""
    from ppgen.cli import build_parser
    from ppgen.commands.train import _new_config

    argv = ["train", *words]
    return _new_config(build_parser(argv).parse_args(argv))


def cli_pair(*words: str, x_shape=MNIST):
    config = cli_config(*words)
    return models.get(config["model"])(x_shape=x_shape, **config["model_options"])


def shapes(pair) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in pair.state_dict().items()}


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def test_groups_build_burdas_two_layer_net_as_the_api_does():
    pair = cli_pair("hvae", "--z-dims", "100,50", "--hidden", "200,200", "100,100", "--activation", "tanh")
    assert pair.config.hidden == ((200, 200), (100, 100))
    api = HierarchicalVAE(MNIST, z_dims=(100, 50), hidden=((200, 200), (100, 100)), activation="tanh")
    assert pair.config == api.config
    assert shapes(pair) == shapes(api)
    # 784-(200-200)-100-(100-100)-50 and back, every Gaussian layer a loc and a scale head:
    encoder = linear(784, 200) + linear(200, 200) + 2 * linear(200, 100) \
        + linear(100, 100) + linear(100, 100) + 2 * linear(100, 50)
    generative = linear(50, 100) + linear(100, 100) + 2 * linear(100, 100) \
        + linear(100, 200) + linear(200, 200) + linear(200, 784)
    assert sum(p.numel() for p in pair.parameters()) == encoder + generative == 521_084


@pytest.mark.parametrize("family, cls", [("lvae", LadderVAE), ("dlgm", DLGM)])
def test_groups_reach_every_layered_family(family, cls):
    pair = cli_pair(family, "--z-dims", "8,4", "--hidden", "32,16", "12", x_shape=(1, 8, 8))
    api = cls((1, 8, 8), z_dims=(8, 4), hidden=((32, 16), (12,)))
    assert pair.config.hidden == ((32, 16), (12,))
    assert shapes(pair) == shapes(api)


def test_one_group_is_still_one_size_per_stage():
    assert cli_config("hvae", "--z-dims", "50,20", "--hidden", "400,200")["model_options"]["hidden"] == (400, 200)
    assert cli_pair("hvae", "--z-dims", "50,20", "--hidden", "400,200").config.hidden == ((400,), (200,))
    assert cli_pair("vae", "--hidden", "200,200").config.hidden == (200, 200)


@pytest.mark.parametrize("words, says", [
    (["hvae", "--z-dims", "100,50", "--hidden", "200,200", "100,100", "50"], "does not chain"),
    (["hvae", "--z-dims", "100,50", "--hidden", "200,200", "100,x"], "expected comma-separated integers"),
    (["hvae", "--z-dims", "100,50", "--hidden", "200,0", "100"], "sizes must be positive"),
    (["vae", "--hidden", "200,200", "100,100"], "--hidden"),
])
def test_a_malformed_group_list_is_refused_in_one_line(tmp_path, capsys, words, says):
    out = tmp_path / "run"
    assert run_cli("train", *words, "--data", "digits", "--epochs", "1", "--out", out, "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) <= 2  # argparse: the usage line, then the one error line
    assert not out.exists()


def load_table():
    spec = importlib.util.spec_from_file_location("mnist_table", ROOT / "benchmarks" / "mnist_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mnist_table", module)
    spec.loader.exec_module(module)
    return module


def test_every_leaderboard_row_is_a_plain_ppgen_train_line():
    table = load_table()
    for name, row in table.ROWS.items():
        words = shlex.split(row.cli)
        pair, api = cli_pair(*words), row.build(MNIST)
        assert type(pair) is type(api) and pair.config == api.config, name
        assert shapes(pair) == shapes(api), name
        config = cli_config(*words)["train"]
        for option, value in row.options.items():
            if option != "warmup_fraction":  # the Ladder VAE's warm-up: a quarter of the epochs run
                assert config[option] == value, (name, option)


def test_every_recorded_command_parses_with_the_rows_training_options():
    from types import SimpleNamespace

    table = load_table()
    args = SimpleNamespace(data="mnist-full", batch_size=100, lr=1e-3, lr_final=0.1, seed=0, prior_epochs=100)
    for name, row in table.ROWS.items():
        line = table.command(row, 30, args, stage_epochs=4, planned=40)  # stopped after 30 of 40 epochs
        first, _, then = line.partition("; ")
        assert first.startswith("ppgen train "), name
        assert then == ("ppgen prior RUN --epochs 4 --batch-size 100" if row.stage == "prior" else ""), name
        train = cli_config(*shlex.split(first)[2:])["train"]
        assert (train["epochs"], train["batch_size"], train["lr"], train["seed"]) == (30, 100, 1e-3, 0), name
        # the rate of the epochs run, as planned for 40: lr · 0.1^(e/39) = lr · f^(e/29)
        assert train["lr_final"] == pytest.approx(0.1 ** (29 / 39), rel=1e-5), name
        if "warmup_fraction" in row.options:
            assert train["anneal_epochs"] == 7.5  # a quarter of the 30 epochs


def test_the_tables_ais_step_scores_the_tables_own_digits(tmp_path, capsys):
    """``mnist_table.py ais``: AIS beside IWAE-K on the first --points of the seeded --test-points subset, from
    ROW.pt; its IWAE figure is exactly the estimator's on those digits with the table's seed."""
    import json

    from ppgen.data import load
    from ppgen.evaluation import iwae

    table = load_table()
    data = load("digits", binarize="dynamic", seed=0)
    pair = table.ROWS["dlgm"].build(data.x_shape)
    torch.save(pair.state_dict(), tmp_path / "dlgm.pt")
    assert table.main(["ais", str(tmp_path), "--rows", "dlgm", "--data", "digits", "--points", "3", "--steps", "4",
                       "--chains", "2", "--leapfrog", "1", "--bdmc", "2", "--k", "10", "--test-points", "50"]) == 0
    record = json.loads((tmp_path / "ais" / "dlgm-prior.json").read_text())
    x, idx = table.test_subset(data, 50, 0)
    assert len(idx) == 50 and record["points"] == 3
    pair.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        expected = -float(iwae(pair, x[:3], k=10).double().mean())
    assert record["iwae_nll"] == pytest.approx(expected, abs=1e-9)
    # the AIS mean is float32 (≈ 2e-6 relative), the paired difference float64
    assert record["ais_minus_iwae"] == pytest.approx(record["iwae_nll"] - record["ais_nll"], abs=1e-4)
    assert record["bdmc_gap"] == pytest.approx(record["bdmc_upper"] - record["bdmc_lower"], abs=1e-9)
    assert "| dlgm | 3 |" in table.ais_markdown([record])


def test_a_stage_derives_its_examples_in_chunks_with_the_same_result():
    """The VQ-VAE prior's codes of a whole training set come chunk by chunk (full MNIST at once needs > 5 GB): the
    codes of 10 digits in chunks of 3 are exactly those of all 10 at once."""
    from types import SimpleNamespace

    from ppgen.inference.stages import StageExamples, stage_named
    from ppgen.models.vqvae import VQVAE

    torch.manual_seed(0)
    pair = VQVAE((1, 8, 8), codes=8, code_dim=4, downsample=1, channels=8)
    x = torch.bernoulli(torch.full((10, 1, 8, 8), 0.3))
    derive = StageExamples(pair, stage_named(pair, "prior"), SimpleNamespace(train=x))
    assert torch.equal(derive.examples(x, chunk=3), derive.examples(x, chunk=1000))
    assert derive.examples(x, chunk=3).shape == (10, 4, 4)
