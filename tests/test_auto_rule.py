"""``engine="auto"`` knows the job: a fit of fewer SVI steps in all than ``AUTO_TORCH_BELOW_STEPS`` (measured by
benchmarks/auto_rule.py) trains on the torch engine, says so in its one line and records it; a larger job still
compiles for JAX; an engine asked for by name is never overridden; an option only torch runs still rules."""

from __future__ import annotations

import json

from support import binary, tiny_vae

import ppgen
from ppgen.data import from_tensor
from ppgen.inference import svi
from ppgen.inference.options import SVIOptions, unsupported
from ppgen.inference.svi import AUTO_TORCH_BELOW_STEPS, choose_engine, small_job, total_steps


def test_total_steps_are_the_epochs_times_the_full_batches_of_an_epoch():
    data = from_tensor(binary(100))  # its training split: the examples a fit steps over
    n = len(data.train)
    assert total_steps(data, SVIOptions(epochs=7, batch_size=16)) == 7 * (n // 16)  # the partial batch is dropped
    assert total_steps(data, SVIOptions(epochs=3, batch_size=10 * n)) == 3  # one whole-set batch an epoch


def test_the_rule_switches_at_the_measured_number_of_steps():
    pair = tiny_vae()
    below, at = AUTO_TORCH_BELOW_STEPS - 1, AUTO_TORCH_BELOW_STEPS
    assert choose_engine(pair, SVIOptions(), steps=below) == ("torch", small_job(below))
    assert f"auto: {below} steps in all" in small_job(below) and "engine='jax'" in small_job(below)
    assert choose_engine(pair, SVIOptions(), steps=at) == ("jax", "the pair lowers to JAX")
    assert choose_engine(pair, SVIOptions()) == ("jax", "the pair lowers to JAX")  # the job's size not known
    assert small_job(at) is None and small_job(None) is None


def test_an_engine_asked_for_is_never_overridden():
    for steps in (1, AUTO_TORCH_BELOW_STEPS - 1, 10 * AUTO_TORCH_BELOW_STEPS):
        assert choose_engine(tiny_vae(), SVIOptions(engine="jax"), steps=steps) == ("jax", "asked for")
        assert choose_engine(tiny_vae(), SVIOptions(engine="torch"), steps=steps) == ("torch", "asked for")


def test_an_option_only_torch_runs_still_sends_auto_to_torch_at_any_size():
    options = SVIOptions(free_bits=0.5)
    [(_, reason)] = unsupported(options, "jax")
    for steps in (1, 10 * AUTO_TORCH_BELOW_STEPS, None):
        assert choose_engine(tiny_vae(), options, steps=steps) == ("torch", reason)  # the option's reason, not size


def test_a_tiny_fit_trains_on_torch_and_says_why():
    said = []
    fit = ppgen.fit(tiny_vae(), binary(64), epochs=2, batch_size=32, progress=False, announce=said.append)
    steps = 2 * (len(from_tensor(binary(64)).train) // 32)
    assert fit.options["engine"] == "torch" and len(fit.history) == 2
    assert said == [f"SVI engine torch ({small_job(steps)})"]


def test_the_command_prints_and_records_the_choice(tmp_path, capsys):
    from ppgen.cli import main

    out = tmp_path / "run"
    assert main(["train", "vae", "--data", "digits", "--z-dim", "2", "--hidden", "8", "--epochs", "1",
                 "--no-progress", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["engine"] == "torch"  # a resume keeps it
    steps = 1 * (1257 // 256)  # the digits' training split, full batches of the default 256
    line = f"SVI engine torch ({small_job(steps)})"
    assert line in capsys.readouterr().out.splitlines() and line in (out / "train.log").read_text().splitlines()


def test_a_large_job_compiles_for_jax(monkeypatch):
    """The same tiny fit, with the measured threshold lowered below its steps (the rule's constant, not the job,
    moved: a job of AUTO_TORCH_BELOW_STEPS steps would take this test minutes on the torch engine)."""
    monkeypatch.setattr(svi, "AUTO_TORCH_BELOW_STEPS", 4)
    said = []
    fit = ppgen.fit(tiny_vae(), binary(64), epochs=2, batch_size=32, progress=False, announce=said.append)
    assert fit.options["engine"] == "jax" and said == ["SVI engine jax (the pair lowers to JAX)"]
