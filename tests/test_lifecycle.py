"""A run's life cycle under real kills (SIGKILL, SIGTERM) at every stage: before the first checkpoint, mid-epoch,
during a checkpoint write, after the last epoch, during the final evaluation. Each leaves no run (and no hidden
folder once the path is next touched) or one that ``--resume`` completes with weights bit-identical to an
uninterrupted run's; a run without model.pt is still read (the checkpoint's selected weights) with a line saying
how to finish it.

The kills come from tests/kill_worker.py (a ``ppgen`` process that signals itself at the chosen moment). The whole
matrix (VAE on both engines, GAN, DDPM, VQ-VAE with its prior stage) is marked slow; ``make test`` runs the fast
representatives: the VAE killed after its last epoch and during its final evaluation, SIGTERM, and the fallbacks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import VQVAE_FLAGS, run_cli

from ppgen import runs

WORKER = Path(__file__).resolve().parent / "kill_worker.py"
VAE = ["vae", "--data", "digits", "--z-dim", "2", "--hidden", "16", "--batch-size", "128", "--epochs", "3",
       "--no-progress"]
FAMILIES = {
    "vae-torch": [*VAE, "--engine", "torch"],
    "vae-jax": [*VAE, "--engine", "jax"],
    "gan": ["gan", "--data", "ring8", "--hidden", "16,16", "--critic-hidden", "16,16", "--batch-size", "1000",
            "--epochs", "3", "--no-progress"],
    "ddpm": ["ddpm", "--data", "digits", "--timesteps", "10", "--hidden", "16", "--time-dim", "8", "--batch-size",
             "256", "--epochs", "3", "--ema", "0.9", "--no-progress"],
}
MOMENTS = ("first-epoch", "mid-epoch", "checkpoint-write", "after-last-epoch", "final-evaluation")
FAST = {("vae-torch", "after-last-epoch"), ("vae-torch", "final-evaluation")}


def kill_run(moment: str, signal: str, args: list[str]) -> subprocess.CompletedProcess:
    """``ppgen ARGS`` in a process that sends itself ``signal`` (KILL or TERM) at ``moment``, on one thread as the
    tests in this process (conftest.single_thread): the GAN's float sums depend on the number of threads."""
    return subprocess.run([sys.executable, str(WORKER), moment, signal, *map(str, args)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"})


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


#: history columns that measure time, not training
TIMINGS = {"seconds", "wall", "images_per_s", "examples_per_s", "extract_seconds"}


def training_columns(run: Path) -> list[dict]:
    """The run's history (from its checkpoint) without the timings: what an uninterrupted run must repeat exactly."""
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in runs.load_checkpoint(run)["history"]]


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, Path]:
    """The uninterrupted runs, trained once per family when a test first asks (in-process)."""
    root = tmp_path_factory.mktemp("uninterrupted")

    class Lazy(dict):
        def __missing__(self, family: str) -> Path:
            out = self[family] = root / family
            assert run_cli("train", *FAMILIES[family], "--out", out) == 0
            return out

    return Lazy()


def _case(family: str, moment: str):
    marks = () if (family, moment) in FAST else (pytest.mark.slow,)
    return pytest.param(family, moment, marks=marks, id=f"{family}-{moment}")


@pytest.mark.parametrize("family, moment", [_case(f, m) for f in FAMILIES for m in MOMENTS])
def test_a_sigkill_at_any_moment_leaves_no_run_or_one_resume_completes(tmp_path, capsys, references, family,
                                                                        moment):
    out = tmp_path / "run"
    killed = kill_run(moment, "KILL", ["train", *FAMILIES[family], "--out", out])
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert visible(tmp_path) in ([], ["run"])
    if not out.exists():  # killed before the first checkpoint: the next command on the path removes the leftovers
        assert moment == "first-epoch" and hidden(tmp_path)
        assert run_cli("evaluate", out) == 2
        assert "not a directory" in capsys.readouterr().err
        assert hidden(tmp_path) == []
        return
    assert runs.is_run_dir(out) and not runs.is_finished(out)
    assert run_cli("train", FAMILIES[family][0], "--resume", out, "--no-progress") == 0
    assert_same_weights(references[family] / runs.MODEL, out / runs.MODEL)
    assert runs.is_finished(out) and (out / "samples.png").exists() and (out / "loss.png").exists()
    assert hidden(out) == [] and hidden(tmp_path) == []  # the half-written checkpoint's temp file is gone
    assert training_columns(out) == training_columns(references[family])


def test_a_finished_run_still_has_nothing_to_resume(tmp_path, capsys, references):
    run = references["vae-torch"]
    assert run_cli("train", "vae", "--resume", run, "--no-progress") == 2
    assert "already trained 3 epochs" in capsys.readouterr().err


def stopped_before_model_pt(monkeypatch, *command) -> None:
    """Run ``ppgen COMMAND`` and stop it, as Ctrl-C would, just before model.pt is written: exit 130."""
    real = runs.save_torch

    def interrupted_before_model_pt(path, obj):
        if Path(path).name == runs.MODEL:
            raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(runs, "save_torch", interrupted_before_model_pt)
    assert run_cli(*command) == 130
    monkeypatch.setattr(runs, "save_torch", real)


def resume_stopped_before_model_pt(run, monkeypatch, family: str = "vae", epochs: int = 4) -> None:
    """Resume a finished ``run`` of ``family`` to ``epochs`` and stop it just before model.pt is written."""
    stopped_before_model_pt(monkeypatch, "train", family, "--resume", run, "--epochs", str(epochs), "--no-progress")


def test_a_resume_to_more_epochs_stopped_after_its_last_epoch_is_finished_too(tmp_path, capsys, references,
                                                                              monkeypatch):
    """The old run's metrics.json (3 epochs) does not make a run whose training went on to 4 look finished."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(references["vae-torch"], run)
    resume_stopped_before_model_pt(run, monkeypatch)
    assert runs.load_checkpoint(run)["state"]["epoch"] == 4 and not runs.is_finished(run, 4)
    assert run_cli("train", "vae", "--resume", run, "--no-progress") == 0
    assert "finishing it" in capsys.readouterr().out
    assert runs.is_finished(run, 4) and json.loads((run / runs.METRICS).read_text())["epochs"] == 4


def test_a_model_pt_older_than_the_checkpoint_is_not_used_and_the_commands_say_how_to_finish(tmp_path, capsys,
                                                                                              references,
                                                                                              monkeypatch):
    """A run finished at 3 epochs, resumed to 4 and stopped before its final stage keeps its old model.pt: ppgen.load,
    evaluate and sample use the checkpoint's selection of epoch 4 — the weights the finished run's model.pt will hold
    — and evaluate and sample say so in one line, with how to finish the run."""
    import shutil

    import ppgen

    run = tmp_path / "run"
    shutil.copytree(references["vae-torch"], run)
    resume_stopped_before_model_pt(run, monkeypatch)
    capsys.readouterr()
    old = weights(run / runs.MODEL)
    assert runs.load_checkpoint(run)["state"]["best_epoch"] == 4
    loaded = ppgen.load(run).state_dict()
    assert any(not torch.equal(loaded[k], old[k]) for k in old)  # not the model.pt of 3 epochs
    assert runs.stale_model(run) == (3, 4)
    for command in (["evaluate", run, "--iwae", "2", "--limit", "20"], ["sample", run, "-n", "4", "--out",
                                                                        tmp_path / "s.npy"]):
        assert run_cli(*command) == 0, command
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"ppgen: note: {run}'s {runs.MODEL} is from its first 3 epochs (its resume to 4 epochs stopped "
                       f"before its final stage); using the weights {runs.CHECKPOINT} selects after epoch 4; finish "
                       f"the run with `ppgen train vae --resume {run}`"], err
    assert run_cli("train", "vae", "--resume", run, "--no-progress") == 0
    assert runs.stale_model(run) is None and runs.unfinished_note(run) is None
    finished = weights(run / runs.MODEL)
    assert all(torch.equal(loaded[k], finished[k]) for k in finished)


def test_compare_and_topics_on_a_run_without_model_pt_say_how_to_finish(tmp_path, capsys, references, monkeypatch):
    """compare and topics read a run without model.pt from its checkpoint, as evaluate and sample do, and print the
    same one-line note (their own work is replaced here by a stand-in that records the pair it was given)."""
    from ppgen import workflows

    run = _unfinished_copy(references["vae-torch"], tmp_path)
    expected = runs.unfinished_note(run)
    assert expected is not None and f"ppgen train vae --resume {run}" in expected
    monkeypatch.setattr(workflows, "compare_run", lambda *args, **kwargs: None)
    monkeypatch.setattr(workflows, "topics_run", lambda *args, **kwargs: {"topics": []})
    for command in (["compare", run, "--points", "1"], ["topics", run, "--json"]):
        assert run_cli(*command) == 0, command
        assert capsys.readouterr().err.strip().splitlines() == [expected], command


@pytest.mark.parametrize("moment, code_line", [("first-epoch", "nothing was written"), ("mid-epoch", "--resume")])
def test_sigterm_is_handled_as_ctrl_c(tmp_path, references, moment, code_line):
    """SIGTERM (a scheduler, `timeout`, a container stop): one line, exit 143 (128 + 15), the last checkpoint kept
    (or, before the first, nothing at all); the resumed run equals the uninterrupted one."""
    out = tmp_path / "run"
    terminated = kill_run(moment, "TERM", ["train", *FAMILIES["vae-torch"], "--out", out])
    assert terminated.returncode == 143
    lines = terminated.stderr.strip().splitlines()
    assert len(lines) == 1 and "terminated (SIGTERM)" in lines[0] and code_line in lines[0], lines
    assert "Traceback" not in terminated.stderr
    if moment == "first-epoch":
        assert list(tmp_path.iterdir()) == []
        return
    assert runs.load_checkpoint(out)["state"]["epoch"] == 1
    assert run_cli("train", "vae", "--resume", out, "--no-progress") == 0
    assert_same_weights(references["vae-torch"] / runs.MODEL, out / runs.MODEL)


def _unfinished_copy(reference: Path, tmp_path: Path) -> Path:
    """The reference run as a run killed after its last epoch leaves it: no model.pt, metrics.json or pictures."""
    import shutil

    run = tmp_path / "unfinished"
    shutil.copytree(reference, run)
    for name in (runs.MODEL, runs.METRICS, "samples.png", "reconstructions.png", "loss.png", "latents.png",
                 "posterior.nc"):
        (run / name).unlink(missing_ok=True)
    return run


def test_commands_on_a_run_without_model_pt_use_the_checkpoint_and_say_how_to_finish(tmp_path, capsys, references):
    """evaluate, sample and their --rejection read the checkpoint's selected weights (the same numbers as the
    finished run's model.pt) and add one line: how to finish the run."""
    finished = references["vae-torch"]
    run = _unfinished_copy(finished, tmp_path)
    assert run_cli("evaluate", finished, "--iwae", "5", "--limit", "50", "--json") == 0
    expected = json.loads(capsys.readouterr().out)
    assert run_cli("evaluate", run, "--iwae", "5", "--limit", "50", "--json") == 0
    captured = capsys.readouterr()
    got = json.loads(captured.out)
    assert {k: got[k] for k in ("elbo", "iwae_5")} == {k: expected[k] for k in ("elbo", "iwae_5")}
    note = captured.err.strip().splitlines()
    assert len(note) == 1 and f"ppgen train vae --resume {run}" in note[0]
    for command in (["sample", run, "-n", "4", "--out", tmp_path / "s.npy"],
                    ["sample", run, "-n", "4", "--rejection", "--rejection-steps", "20", "--out", tmp_path / "r.npy"],
                    ["evaluate", run, "--iwae", "2", "--limit", "20", "--rejection", "--rejection-steps", "20"]):
        assert run_cli(*command) == 0, command
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--resume" in err[0] and "Traceback" not in err[0], err
    import ppgen

    pair = ppgen.load(run)
    assert all(torch.equal(v, weights(finished / runs.MODEL)[k]) for k, v in pair.state_dict().items())


def test_a_stage_needs_stage_one_finished_and_an_interrupted_stage_is_finished_by_its_resume(tmp_path, capsys,
                                                                                             monkeypatch):
    """Stage one without model.pt: `ppgen prior` says how to finish it, and that finishes it. A prior stage
    stopped after its last epoch (here Ctrl-C just before model.pt; the kills are the slow tests below) is finished by
    `ppgen prior RUN --resume` with the uninterrupted stage's weights."""
    import shutil

    run, straight = tmp_path / "vq", tmp_path / "straight"
    assert run_cli("train", "vqvae", *VQVAE_FLAGS, "--epochs", "1", "--out", run) == 0
    shutil.copytree(run, straight)
    assert run_cli("prior", straight, "--epochs", "1", "--no-progress") == 0
    (run / runs.MODEL).unlink()
    (run / runs.METRICS).unlink()
    assert run_cli("prior", run, "--epochs", "1", "--no-progress") == 2
    assert f"ppgen train vqvae --resume {run}" in capsys.readouterr().err
    assert run_cli("train", "vqvae", "--resume", run, "--no-progress") == 0  # what it says finishes stage one
    assert runs.is_finished(run)
    stopped_before_model_pt(monkeypatch, "prior", run, "--epochs", "1", "--no-progress")
    assert "prior" not in json.loads((run / runs.METRICS).read_text())
    assert run_cli("prior", run, "--epochs", "1", "--resume", "--no-progress") == 0
    assert_same_weights(straight / runs.MODEL, run / runs.MODEL)
    assert json.loads((run / runs.METRICS).read_text())["prior"]["epochs"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["after-last-epoch", "final-evaluation"])
def test_a_killed_prior_stage_is_finished_by_its_resume(tmp_path, moment):
    """`ppgen prior RUN` killed after its last epoch or while drawing its samples: `ppgen prior RUN --resume`
    finishes it, with the model.pt and metrics of the uninterrupted stage."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for out in (straight, killed):
        assert run_cli("train", "vqvae", *VQVAE_FLAGS, "--epochs", "2", "--out", out) == 0
    assert run_cli("prior", straight, "--epochs", "2", "--no-progress") == 0
    dead = kill_run(moment, "KILL", ["prior", killed, "--epochs", "2", "--no-progress"])
    assert dead.returncode == -9, dead.stderr[-2000:]
    assert "prior" not in json.loads((killed / runs.METRICS).read_text())
    assert run_cli("prior", killed, "--epochs", "2", "--resume", "--no-progress") == 0
    assert_same_weights(straight / runs.MODEL, killed / runs.MODEL)
    a, b = (json.loads((run / runs.METRICS).read_text())["prior"] for run in (straight, killed))
    assert a["epochs"] == b["epochs"] == 2 and a["val_elbo"] == b["val_elbo"]
    assert run_cli("prior", killed, "--epochs", "2", "--resume", "--no-progress") == 2  # now finished


def test_a_stage_on_a_run_whose_model_pt_is_older_than_its_checkpoint_says_how_to_finish_it(tmp_path, capsys,
                                                                                         monkeypatch):
    """Stage one finished at 1 epoch, resumed to 2 and stopped before its new model.pt: the old model.pt is not
    stage one's result, so `ppgen prior` is refused in one line (nothing written) saying how to finish stage one,
    and runs once that is done."""
    run = tmp_path / "vq"
    assert run_cli("train", "vqvae", *VQVAE_FLAGS, "--epochs", "1", "--out", run) == 0
    resume_stopped_before_model_pt(run, monkeypatch, "vqvae", 2)
    assert (run / runs.MODEL).exists() and runs.stale_model(run) is not None
    before = sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*"))
    capsys.readouterr()
    assert run_cli("prior", run, "--epochs", "1", "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"ppgen train vqvae --resume {run}" in err
    assert sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*")) == before
    assert run_cli("train", "vqvae", "--resume", run, "--no-progress") == 0
    assert runs.stale_model(run) is None
    assert run_cli("prior", run, "--epochs", "1", "--no-progress") == 0
