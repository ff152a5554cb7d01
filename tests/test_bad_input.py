"""Bad input to the `ppgen` command (issue 10): every case ends with exit code 2, at most one line on stderr, no
traceback, and the file system exactly as it was. One good run is trained per module and copied for the cases
that damage it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from support import run_cli
from test_data import write_idx

from ppgen import plots, runs
from ppgen.workflows import train as train_workflow

TINY = ["--z-dim", "2", "--hidden", "16", "--epochs", "1", "--no-progress"]
DIGITS = ["--data", "digits", *TINY]


def snapshot(root: Path) -> dict:
    """Every path under ``root``: kind, size, mtime, mode and (files) content hash."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        st = path.lstat()
        kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if kind == "file" else os.readlink(path) \
            if kind == "link" else None
        out[str(path.relative_to(root))] = (kind, st.st_size if kind == "file" else None, st.st_mtime_ns, st.st_mode,
                                            digest)
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 1, err
    assert not err or "Traceback" not in err[0]
    return err[0] if err else ""


def assert_refused(capsys, root: Path, *args, needle: str = "") -> str:
    """``ppgen ARGS`` exits 2 with one line naming ``needle`` and leaves ``root`` exactly as it was."""
    before = snapshot(root)
    capsys.readouterr()
    code = run_cli(*args)
    line = one_error_line(capsys)
    assert code == 2, line
    assert needle in line, line
    assert snapshot(root) == before
    return line


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good") / "run"
    assert run_cli("train", "vae", *DIGITS, "--out", out) == 0
    return out


@pytest.fixture
def run_copy(good_run, tmp_path) -> Path:
    return Path(shutil.copytree(good_run, tmp_path / "run"))


# -- data files (ppgen.data.load -> sources.array_file / check_examples / check_same_shape) -------------------------


class Pickled:
    """Unpickling this creates the file ``marker``: proof that a pickle payload ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _grey(n: int = 60, shape=(8, 8), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape)).astype(np.float32)


def _npz_bad_crc(d: Path) -> Path:
    path = d / "d.npz"
    np.savez(path, x=_grey())
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the stored (uncompressed) array
    path.write_bytes(bytes(raw))
    return path


def _npz_object_array(d: Path) -> Path:
    np.savez(d / "d.npz", x=np.array([Pickled(str(d / "PAYLOAD_RAN")), 1], dtype=object))
    return d / "d.npz"


def _npy_strings(d: Path) -> Path:
    np.save(d / "d.npy", np.array([["a", "b"]] * 20))
    return d / "d.npy"


def _npy_text(d: Path) -> Path:
    (d / "d.npy").write_text("1,2,3\n4,5,6\n")
    return d / "d.npy"


def _npy_nan(d: Path) -> Path:
    x = _grey()
    x[3, 2, 2] = np.nan
    np.save(d / "d.npy", x)
    return d / "d.npy"


def _npz_nan_in_test_only(d: Path) -> Path:
    test = _grey(10, seed=1)
    test[0, 0, 0] = np.nan
    np.savez(d / "d.npz", x_train=_grey(), x_test=test)
    return d / "d.npz"


def _npz_split_shapes(d: Path) -> Path:
    np.savez(d / "d.npz", x_train=_grey(), x_test=_grey(10, shape=(6, 6)))
    return d / "d.npz"


def _idx_label_count(d: Path) -> Path:
    folder = d / "idx"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (40, 8, 8), dtype=np.uint8))
    write_idx(folder / "train-labels-idx1-ubyte", rng.integers(0, 10, 40).astype(np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (12, 8, 8), dtype=np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 11).astype(np.uint8))
    return folder


@pytest.mark.parametrize("make, extra, needle", [
    (_npz_bad_crc, [], "damaged"),
    (_npz_object_array, [], "Python objects"),
    (_npy_strings, [], "not numbers"),
    (_npy_text, [], "not a .npy file"),
    (_npy_nan, ["--binarize", "dynamic"], "NaN"),
    (_npy_nan, ["--binarize", "static"], "NaN"),
    (_npy_nan, ["--binarize", "threshold"], "NaN"),
    (_npz_nan_in_test_only, ["--likelihood", "gaussian"], "test split"),
    (_npz_split_shapes, ["--likelihood", "gaussian"], "same shape"),
    (_idx_label_count, ["--binarize", "threshold"], "12 examples but 11 labels"),
], ids=["npz-bad-crc", "npz-object-array", "npy-strings", "text-as-npy", "nan-dynamic", "nan-static",
        "nan-threshold", "nan-in-test-only", "split-shapes", "idx-label-count"])
def test_bad_data_files(tmp_path, capsys, make, extra, needle):
    data = make(tmp_path)
    line = assert_refused(capsys, tmp_path, "train", "vae", "--data", data, *TINY, *extra, "--out", tmp_path / "r",
                          needle=needle)
    assert "allow_pickle" not in line and "pickled data" not in line  # never advice to load unsafely
    assert not (tmp_path / "PAYLOAD_RAN").exists()


def test_metrics_are_standard_json(tmp_path):
    runs.write_json(tmp_path / "m.json", {"test_elbo": float("nan"), "x": [float("inf"), 1.0], "t": torch.tensor(2.0)})
    text = (tmp_path / "m.json").read_text()

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    assert json.loads(text, parse_constant=refuse) == {"test_elbo": None, "x": [None, 1.0], "t": 2.0}


# -- options (argparse types in ppgen.cli; one-line errors via cli.ArgumentParser) ---------------------------------


@pytest.mark.parametrize("args, needle", [
    (["evaluate", "RUN", "--bdmc", "-1"], "--bdmc"),
    (["evaluate", "RUN", "--samples", "-5"], "--samples"),
    (["evaluate", "RUN", "--samples", "0"], "--samples"),
    (["evaluate", "RUN", "--limit", "-1"], "--limit"),
    (["evaluate", "RUN", "--limit", "0"], "--limit"),
    (["evaluate", "RUN", "--ais-chains", "0"], "--ais-chains"),
    (["evaluate", "RUN", "--iwae", "0"], "--iwae"),
    (["evaluate", "RUN", "--seed", "-1"], "--seed"),
    (["sample", "RUN", "-n", "0"], "-n"),
    (["compare", "RUN", "--points", "0"], "--points"),
    (["compare", "RUN", "--chains", "0"], "--chains"),
    (["compare", "RUN", "--warmup", "-1"], "--warmup"),
    (["train", "vae", *DIGITS, "--split-seed", "-5", "--out", "NEW"], "--split-seed"),
    # training options: validated once, in ppgen.inference.options (the CLI names the flag)
    (["train", "vae", *DIGITS, "--lr", "inf", "--out", "NEW"], "--lr inf"),
    (["train", "vae", *DIGITS, "--lr", "nan", "--out", "NEW"], "--lr nan"),
    (["train", "vae", *DIGITS, "--lr", "0", "--out", "NEW"], "--lr 0"),
    (["train", "vae", *DIGITS, "--beta", "nan", "--out", "NEW"], "--beta nan"),
    (["train", "vae", *DIGITS, "--beta", "-1", "--out", "NEW"], "--beta -1"),
    (["train", "vae", *DIGITS, "--particles", "0", "--out", "NEW"], "--particles 0"),
    (["train", "vae", *DIGITS, "--elbo", "iwae", "--out", "NEW"], "--particles 1"),
    (["train", "vae", *DIGITS, "--epochs", "0", "--out", "NEW"], "--epochs 0"),
    (["train", "vae", *DIGITS, "--batch-size", "-3", "--out", "NEW"], "--batch-size -3"),
    (["train", "vae", *DIGITS, "--anneal-epochs", "inf", "--out", "NEW"], "--anneal-epochs inf"),
    (["train", "vae", *DIGITS, "--free-bits", "-0.5", "--out", "NEW"], "--free-bits -0.5"),
    (["train", "vae", *DIGITS, "--seed", "-2", "--out", "NEW"], "--seed"),
    (["train", "vae", *DIGITS, "--engine", "jax", "--free-bits", "0.5", "--out", "NEW"], "free bits needs"),
    (["train", "gan", "--data", "ring8", "--epochs", "1", "--pack", "3", "--out", "NEW"], "--batch-size 256"),
    (["train", "gan", "--data", "ring8", "--epochs", "1", "--n-critic", "0", "--out", "NEW"], "--n-critic 0"),
    (["train", "vae", *DIGITS, "--loss", "ns", "--out", "NEW"], "--loss"),
    # --device (cause 6): a name torch does not know, or one it knows and ppgen does not run on
    (["train", "vae", *DIGITS, "--device", "nonsense", "--out", "NEW"], "--device nonsense"),
    (["train", "vae", *DIGITS, "--device", "mps", "--out", "NEW"], "--device mps"),
    (["train", "vae", *DIGITS, "--device", "CPU", "--out", "NEW"], "--device CPU"),
    (["train", "vae", "--no-such-option"], "unrecognized arguments"),
    (["evaluate"], "required"),
], ids=lambda v: "-".join(v) if isinstance(v, list) else None)
def test_bad_numbers_and_argparse_mistakes_are_one_line(tmp_path, capsys, run_copy, args, needle):
    args = [run_copy if a == "RUN" else tmp_path / "new" if a == "NEW" else a for a in args]
    line = assert_refused(capsys, tmp_path, *args, needle=needle)
    command = args[0]
    if command != "compare":  # compare checks its numbers itself (one UserError line, before any work)
        # argparse's mistakes name the command; an option the library refused is a ppgen error naming the flag
        assert line.startswith((f"ppgen {command}: error:", "ppgen: error: --")), line
        assert line.endswith(f"(see ppgen {command} --help)"), line


@pytest.mark.parametrize("extra, needle", [
    (["--lr", "0.1"], "--lr"), (["--z-dim", "3"], "--z-dim"), (["--data", "mnist"], "--data"),
    (["--out", "elsewhere"], "--out"), (["--overwrite"], "--overwrite"),
])
def test_resume_refuses_options_it_would_ignore(tmp_path, capsys, run_copy, extra, needle):
    assert_refused(capsys, tmp_path, "train", "vae", "--resume", run_copy, "--epochs", "2", *extra, needle=needle)


# -- paths (runs.check_new_run_dir / check_output_file / check_output_dir) ----------------------------------------


def _user_folder(d: Path) -> Path:
    (d / "mine").mkdir()
    (d / "mine" / "thesis.tex").write_text("years of work")
    return d / "mine"


def _a_file(d: Path) -> Path:
    (d / "notes.txt").write_text("x")
    return d / "notes.txt"


def _through_a_file(d: Path) -> Path:
    return _a_file(d) / "run"


def _symlink_to_run(d: Path) -> Path:
    shutil.copytree(d / "run", d / "real")
    (d / "link").symlink_to(d / "real")
    return d / "link"


def _dangling_symlink(d: Path) -> Path:
    (d / "link").symlink_to(d / "nowhere")
    return d / "link"


@pytest.mark.parametrize("make, overwrite, needle", [
    (_user_folder, False, "not a ppgen run"),
    (_user_folder, True, "not a ppgen run"),
    (_a_file, True, "is a file"),
    (_through_a_file, False, "which is a file"),
    (_symlink_to_run, True, "symbolic link"),
    (_dangling_symlink, False, "symbolic link"),
], ids=["user-folder", "user-folder-overwrite", "a-file", "through-a-file", "symlink-overwrite", "dangling-symlink"])
def test_train_out_never_replaces_what_is_not_a_run(tmp_path, capsys, run_copy, make, overwrite, needle):
    out = make(tmp_path)
    flag = ["--overwrite"] if overwrite else []
    assert_refused(capsys, tmp_path, "train", "vae", *DIGITS, "--out", out, *flag, needle=needle)


def test_train_out_dot_never_empties_the_working_folder(tmp_path, capsys, monkeypatch):
    (tmp_path / "data.csv").write_text("1,2\n")
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path)
    assert_refused(capsys, tmp_path, "train", "vae", *DIGITS, "--out", ".", "--overwrite", needle="--out")


@pytest.mark.parametrize("failure, needle", [
    (["--data", "/no/such/data.npy"], "no data set"),
    (["--lr", "1e30"], "training stopped before its first epoch ended"),  # NaN at step 2: no checkpoint
], ids=["check-fails", "training-fails"])
def test_a_failing_new_run_leaves_the_old_run_intact(tmp_path, capsys, run_copy, failure, needle):
    assert_refused(capsys, tmp_path, "train", "vae", *DIGITS, *failure, "--out", run_copy, "--overwrite",
                   needle=needle)


def test_a_loss_nan_from_the_first_step_leaves_no_run(tmp_path, capsys):
    np.save(tmp_path / "huge.npy", np.full((60, 4), 1e30, dtype=np.float32))  # finite data, infinite loss
    assert_refused(capsys, tmp_path, "train", "vae", "--data", tmp_path / "huge.npy", "--likelihood", "gaussian", *TINY,
                   "--out", tmp_path / "r", needle="before its first epoch ended")


def test_overwrite_replaces_a_run(tmp_path, capsys, run_copy):
    before = runs.load_checkpoint(run_copy)["history"]
    assert run_cli("train", "vae", *DIGITS, "--batch-size", "32", "--out", run_copy, "--overwrite") == 0
    assert runs.load_checkpoint(run_copy)["history"] != before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no hidden sibling left


@pytest.mark.parametrize("make, needle", [
    (lambda d: (d / "pic.png").mkdir() or d / "pic.png", "is a folder"),
    (lambda d: _a_file(d) / "s.png", "which is a file"),
    (lambda d: d / "no" / "s.png", "does not exist"),
    (lambda d: d / "s.jpg", ".png or .npy"),
], ids=["folder-named-like-a-picture", "through-a-file", "missing-folder", "suffix"])
def test_sample_out_is_checked_before_the_work(tmp_path, capsys, run_copy, make, needle):
    assert_refused(capsys, tmp_path, "sample", run_copy, "--out", make(tmp_path), needle=needle)


def test_compare_out_is_checked_before_nuts(tmp_path, capsys, run_copy, monkeypatch):
    from ppgen import workflows

    monkeypatch.setattr(workflows, "compare_run", lambda *a, **k: pytest.fail("NUTS ran before the check"))
    assert_refused(capsys, tmp_path, "compare", run_copy, "--out", _a_file(tmp_path), needle="is a file")


def test_compare_refuses_a_pair_without_a_guide(tmp_path, capsys):
    gan = tmp_path / "gan"
    assert run_cli("train", "gan", "--data", "ring8", "--hidden", "16", "--critic-hidden", "16", "--batch-size", "500",
                   "--epochs", "1", "--no-progress", "--out", gan) == 0
    assert_refused(capsys, tmp_path, "compare", gan, needle="without a guide")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_out_folder(tmp_path, capsys):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        assert_refused(capsys, tmp_path, "train", "vae", *DIGITS, "--out", tmp_path / "ro" / "run", needle="writable")
    finally:
        os.chmod(tmp_path / "ro", 0o700)


def test_unwritable_out_folder_as_any_user(tmp_path, capsys, monkeypatch):
    """The same check for root too: os.access is what ppgen asks."""
    (tmp_path / "ro").mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path / "ro" and real(p, mode))
    assert_refused(capsys, tmp_path, "train", "vae", *DIGITS, "--out", tmp_path / "ro" / "run", needle="writable")
    assert_refused(capsys, tmp_path, "sample", tmp_path / "nowhere", "--out", tmp_path / "ro" / "s.png",
                   needle="writable")


def test_evaluate_on_a_read_only_run_prints_the_result_and_warns(capsys, run_copy, monkeypatch):
    def refuse(path, obj):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(runs, "write_json", refuse)
    assert run_cli("evaluate", run_copy, "--iwae", "5", "--json") == 0
    captured = capsys.readouterr()
    assert "elbo" in json.loads(captured.out)
    assert "warning" in captured.err and len(captured.err.strip().splitlines()) == 1


def test_run_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        assert run_cli("train", "vae", *DIGITS, "--out", tmp_path / "run") == 0
    finally:
        os.umask(old)
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
    assert set(modes.values()) == {0o644}, modes


def test_latent_scatter_of_unlabelled_data_warns_nothing(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.latent_scatter(torch.randn(50, 2), None, tmp_path / "latents.png")


# -- run files (runs.read_config / load_checkpoint / load_weights / check_weights / load_pair) ------------------------


def _config(value):
    return lambda run: (run / "config.json").write_text(json.dumps(value))


def _reshape_checkpoint(run: Path) -> None:
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    name = next(iter(checkpoint["model"]))
    checkpoint["model"][name] = torch.zeros(3, 3, 3)
    torch.save(checkpoint, run / "checkpoint.pt")


def _bare_tensor_model(run: Path) -> None:
    torch.save(torch.zeros(3), run / "model.pt")


def _model_over_checkpoint(run: Path) -> None:
    shutil.copy(run / "model.pt", run / "checkpoint.pt")


def _config_only(run: Path) -> None:
    for path in run.iterdir():
        if path.name != "config.json":
            path.unlink()


def _changed_data(run: Path) -> None:
    np.save(run.parent / "d.npy", _grey(shape=(6, 6)))
    config = json.loads((run / "config.json").read_text())
    config["data"].update(name=str(run.parent / "d.npy"), binarize="threshold")
    (run / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage, command, needle", [
    (_config([]), "sample", "not a ppgen run config"),
    (_config({"model": 3}), "evaluate", "not a ppgen run config"),
    (_config({"model": "vae", "model_config": {"z_dim": "many"}}), "sample", "config.json"),
    (_reshape_checkpoint, "resume", "do not fit"),
    (_model_over_checkpoint, "resume", "holds model weights"),
    (_bare_tensor_model, "sample", "not model weights"),
    (_bare_tensor_model, "evaluate", "not model weights"),
    (_config_only, "resume", "--overwrite"),
    (_changed_data, "resume", "expects examples shaped"),
    (lambda run: None, "resume-fewer-epochs", "nothing to resume"),
], ids=["config-list", "config-model-number", "config-bad-options", "checkpoint-other-shape",
        "model-over-checkpoint", "bare-tensor-sample", "bare-tensor-evaluate", "config-only", "changed-data",
        "fewer-epochs"])
def test_damaged_run_files_and_failed_resumes_change_nothing(tmp_path, capsys, run_copy, damage, command, needle):
    damage(run_copy)
    args = {"sample": ["sample", run_copy, "--out", tmp_path / "s.png"],
            "evaluate": ["evaluate", run_copy, "--iwae", "5"],
            "resume": ["train", "vae", "--resume", run_copy, "--epochs", "3", "--no-progress"],
            "resume-fewer-epochs": ["train", "vae", "--resume", run_copy, "--epochs", "1", "--no-progress"]}[command]
    assert_refused(capsys, tmp_path, *args, needle=needle)


def test_an_unfinished_run_leads_somewhere(tmp_path, capsys, run_copy):
    """A folder with only config.json (what older versions left): --resume says --overwrite, which then works."""
    _config_only(run_copy)
    line = assert_refused(capsys, tmp_path, "train", "vae", "--resume", run_copy, "--no-progress")
    assert f"--out {run_copy} --overwrite" in line
    assert_refused(capsys, tmp_path, "train", "vae", *DIGITS, "--out", run_copy, needle="--overwrite")
    assert run_cli("train", "vae", *DIGITS, "--out", run_copy, "--overwrite") == 0
    assert runs.is_run_dir(run_copy)


def test_a_damaged_feature_classifier_cache_is_retrained(tmp_path, capsys, run_copy, monkeypatch):
    monkeypatch.setenv("PPGEN_CACHE", str(tmp_path / "cache"))
    assert run_cli("evaluate", run_copy, "--iwae", "5", "--fid", "--json") == 0
    first = json.loads(capsys.readouterr().out)["sample_quality"]
    (cache,) = (tmp_path / "cache" / "classifiers").iterdir()
    cache.write_bytes(cache.read_bytes()[:100])  # truncated
    assert run_cli("evaluate", run_copy, "--iwae", "5", "--fid", "--json") == 0
    again = json.loads(capsys.readouterr().out)["sample_quality"]
    assert again["classifier_accuracy"] == first["classifier_accuracy"] and one_error_line(capsys) == ""


# -- interruption (runs.new_run / RunWriter / open_run; cli._interrupted_message) ----------------------------------


def test_sigkill_in_the_first_epoch_leaves_no_run_or_a_resumable_one(tmp_path):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "ppgen.cli", "train", "vae", "--data", "digits", "--z-dim", "2", "--hidden", "16",
            "--batch-size", "8", "--epochs", "3", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "MPLBACKEND": "Agg"})
    deadline = time.time() + 120
    while time.time() < deadline and not any(".ppgen-new-" in p.name for p in tmp_path.iterdir()):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() or runs.is_run_dir(out)
    if out.exists():
        runs.load_checkpoint(out)
    # the next run recognizes the killed run's hidden folder, removes it and starts afresh
    assert run_cli("train", "vae", *DIGITS, "--out", out, *(["--overwrite"] if out.exists() else [])) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["killed"]


def test_an_orphan_checkpoint_temp_file_is_cleaned_when_the_run_is_opened(tmp_path, run_copy):
    orphan = run_copy / ".checkpoint.pt.k1ll3d.tmp"
    orphan.write_bytes(b"half a checkpoint")
    assert run_cli("train", "vae", "--resume", run_copy, "--epochs", "2", "--no-progress") == 0
    assert not orphan.exists() and runs.load_checkpoint(run_copy)["state"]["epoch"] == 2


def _interrupt_after(epochs: int):
    real = train_workflow.backend_fit

    def fit(*args, on_epoch_end, **kwargs):
        def end(f):
            on_epoch_end(f)
            if f.state["epoch"] >= epochs:
                raise KeyboardInterrupt

        if epochs == 0:
            raise KeyboardInterrupt
        return real(*args, on_epoch_end=end, **kwargs)

    return fit


@pytest.mark.parametrize("epochs, needle", [(0, "nothing was written"), (1, "--resume")])
def test_ctrl_c_advice_matches_what_exists(tmp_path, capsys, monkeypatch, epochs, needle):
    monkeypatch.setattr(train_workflow, "backend_fit", _interrupt_after(epochs))
    out = tmp_path / "run"
    assert run_cli("train", "vae", "--data", "digits", "--z-dim", "2", "--hidden", "16", "--epochs", "3",
                   "--no-progress", "--out", out) == 130
    assert needle in one_error_line(capsys)
    assert runs.is_run_dir(out) == (epochs > 0)
    assert [p.name for p in tmp_path.iterdir()] == (["run"] if epochs else [])


# -- the Python API (ppgen.api, ppgen.models.arguments): arguments of the wrong kind are one-line UserErrors ------------


def _api_calls():
    from support import binary, tiny_vae

    import ppgen
    from ppgen.models import VAE

    return [
        (lambda: ppgen.fit("vae", binary(8)), "ppgen.models.get('vae')"),
        (lambda: ppgen.fit(VAE, binary(8)), "an instance, not the class"),
        (lambda: ppgen.fit(tiny_vae(), {"x": binary(8)}), "not a dict"),
        (lambda: ppgen.fit(tiny_vae(), [[0.0, 1.0], [1.0]]), "ragged"),
        (lambda: ppgen.fit(tiny_vae(), np.array(["a", "b"])), "tensor or NumPy array of numbers"),
        (lambda: ppgen.fit(tiny_vae(), torch.tensor(1.0)), "at least one example"),
        (lambda: ppgen.fit(tiny_vae(), binary(8), backend=3), "backend must be a name"),
        (lambda: ppgen.load(3), "str or pathlib.Path"),
        (lambda: ppgen.evaluation.elbo("vae", binary(4)), "ppgen.evaluation.elbo expects a ppgen model/guide pair"),
        (lambda: ppgen.evaluation.iwae(tiny_vae(), "x", k=2), "ppgen.evaluation.iwae: x must be a tensor"),
        (lambda: ppgen.evaluation.ais(None, binary(4)), "ppgen.evaluation.ais expects"),
    ]


@pytest.mark.parametrize("index", range(11))
def test_the_python_api_checks_its_arguments(index):
    from ppgen.errors import UserError

    call, needle = _api_calls()[index]
    with pytest.raises(UserError) as err:
        call()
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_ppgen_fit_takes_a_data_set_name_as_the_cli_does():
    import ppgen
    from ppgen.models import VAE

    torch.manual_seed(0)
    by_name = ppgen.fit(VAE(x_shape=(1, 8, 8), z_dim=2, hidden=(8,)), "digits", epochs=1, batch_size=256,
                        engine="torch", progress=False)
    torch.manual_seed(0)
    by_dataset = ppgen.fit(VAE(x_shape=(1, 8, 8), z_dim=2, hidden=(8,)), ppgen.data.load("digits"), epochs=1,
                           batch_size=256, engine="torch", progress=False)
    assert by_name.history[-1]["elbo"] == by_dataset.history[-1]["elbo"]
    assert "val_elbo" in by_name.history[-1]  # the named data set's validation split is used
