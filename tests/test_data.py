"""Data: the stratified seeded split, binarization modes, the user's own files, and bad input."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ppgen.data import Dataset, from_tensor, load, sources
from ppgen.errors import UserError

# -- the bundled digits ---------------------------------------------------------------------


def test_mnist_split_is_stratified_and_disjoint(mnist_cached):
    x, y = mnist_cached
    data = load("mnist", binarize=None)
    assert (len(data.train), len(data.val), len(data.test)) == (3500, 500, 1000)
    assert data.x_shape == (1, 28, 28) and data.train.dtype == torch.float32
    assert torch.bincount(data.test_labels, minlength=10).tolist() == [100] * 10
    assert torch.bincount(data.val_labels, minlength=10).tolist() == [50] * 10
    assert torch.bincount(data.train_labels, minlength=10).tolist() == [350] * 10
    # every digit lands in exactly one split: match rows back to the source by content
    source = {row.tobytes(): i for i, row in enumerate(x.reshape(len(x), -1))}
    assert len(source) == len(x)  # the 5,000 digits are distinct
    seen = [source[row.numpy().tobytes()] for split in (data.train, data.val, data.test) for row in split.flatten(1)]
    assert sorted(seen) == list(range(len(x)))
    labels = torch.cat([data.train_labels, data.val_labels, data.test_labels])
    assert torch.equal(labels, torch.as_tensor(y[seen]))


def test_mnist_split_is_random_not_by_position(mnist_cached):
    """The source is sorted by label: a positional split would put only 8s and 9s in the test set."""
    x, y = mnist_cached
    assert (np.diff(y) >= 0).all()  # sorted, as the docs say
    data = load("mnist", binarize=None)
    assert not torch.equal(data.test_labels, data.test_labels.sort().values)


def test_mnist_split_is_seeded_and_reproducible(mnist_cached):
    a = load("mnist", binarize=None, split_seed=0)
    b = load("mnist", binarize=None, split_seed=0)
    c = load("mnist", binarize=None, split_seed=1)
    for split in ("train", "val", "test", "train_labels", "test_labels"):
        assert torch.equal(getattr(a, split), getattr(b, split))
    assert not torch.equal(a.test, c.test)
    assert torch.bincount(c.test_labels, minlength=10).tolist() == [100] * 10


def test_dynamic_binarization_differs_by_epoch_and_is_reproducible(mnist_cached):
    grey = load("mnist", binarize=None)
    data = load("mnist", binarize="dynamic", seed=3)
    assert data.binarize == "dynamic" and torch.equal(data.train, grey.train)  # grey levels kept for training
    e0, e1 = data.train_epoch(0), data.train_epoch(1)
    assert set(e0.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(e0, e1)
    assert torch.equal(e0, data.train_epoch(0))  # same epoch, same draw
    assert torch.equal(e0, load("mnist", binarize="dynamic", seed=3).train_epoch(0))  # and across loads
    assert not torch.equal(e0, load("mnist", binarize="dynamic", seed=4).train_epoch(0))
    # x ~ Bernoulli(grey): the mean over pixels matches, within its binomial standard error
    p = grey.train.double()
    se = math.sqrt(float((p * (1 - p)).sum())) / p.numel()
    assert abs(float(e0.double().mean() - p.mean())) < 4 * se
    assert ((e0 == 1) <= (grey.train > 0)).all()  # a black pixel is never drawn white
    # validation and test are binarized once, with a fixed seed
    assert set(data.test.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(data.test, load("mnist", binarize="dynamic", seed=3).test)


def test_threshold_and_static_binarization(mnist_cached):
    grey = load("mnist", binarize=None)
    thr = load("mnist", binarize="threshold")
    assert torch.equal(thr.train, (grey.train > 0.5).float())
    assert torch.equal(thr.test, (grey.test > 0.5).float())
    assert torch.equal(thr.train_epoch(0), thr.train_epoch(5))
    static = load("mnist", binarize="static", seed=1)
    assert set(static.train.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(static.train_epoch(0), static.train_epoch(1))  # drawn once
    assert torch.equal(static.train, load("mnist", binarize="static", seed=1).train)
    assert not torch.equal(static.train, load("mnist", binarize="static", seed=2).train)
    assert not torch.equal(static.train, thr.train)  # a draw, not a threshold


def test_default_binarization_is_dynamic_for_digits_and_none_for_points(mnist_cached):
    assert load("mnist").binarize == "dynamic"
    ring = load("ring8", n=400)
    assert ring.binarize is None and ring.x_shape == (2,)


def test_digits_8x8():
    data = load("digits", binarize=None)
    assert data.x_shape == (1, 8, 8)
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert 0.0 <= float(data.train.min()) and float(data.train.max()) <= 1.0


@pytest.mark.parametrize("name, n_modes, std", [("ring8", 8, 0.02), ("grid25", 25, 0.05)])
def test_mixtures_put_points_near_their_modes(name, n_modes, std):
    data = load(name, n=2000)
    modes = torch.as_tensor(sources.MIXTURES[name][0]())
    assert len(modes) == n_modes
    x, labels = data.train, data.train_labels
    dist = (x - modes[labels]).norm(dim=1)
    # |x − mode|² / std² ~ χ²_2 (mean 2, sd 2): over 1,600 points the mean is 2 ± 0.05, so ±0.2 is 4 SE;
    # and P(χ²_2 > 55) = e^-27.5 per point, so no point lies that far from its own mode
    assert abs(float((dist**2).mean()) / std**2 - 2.0) < 0.2
    assert float((dist**2).max()) / std**2 < 55.0
    counts = torch.bincount(labels, minlength=n_modes).double()
    assert (counts > 0).all()


# -- the user's files -------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """An IDX file as MNIST distributes them: magic (0, 0, type, ndim), big-endian dims, data."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
             np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    (gzip.open if compress else open)(path, "wb").write(raw)
    return path


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_idx_round_trip(tmp_path, compress, dtype):
    rng = np.random.default_rng(0)
    array = (rng.random((7, 3, 4)) * 100).astype(dtype)
    path = write_idx(tmp_path / ("a.idx" + (".gz" if compress else "")), array, compress)
    back = sources.read_idx(path)
    assert back.shape == array.shape and back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def _digit_images(rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_directory_keeps_its_own_test_set(tmp_path, compress):
    rng = np.random.default_rng(1)
    train, test = _digit_images(rng, 40), _digit_images(rng, 12)
    train_y, test_y = rng.integers(0, 10, 40).astype(np.uint8), rng.integers(0, 10, 12).astype(np.uint8)
    gz = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{gz}", train, compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{gz}", train_y, compress)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{gz}", test, compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{gz}", test_y, compress)
    data = load(str(tmp_path), binarize=None, n_val=4)
    assert data.x_shape == (1, 8, 8)
    assert (len(data.train), len(data.val), len(data.test)) == (36, 4, 12)
    np.testing.assert_allclose(data.test.numpy()[:, 0], test / 255.0, rtol=1e-6)
    assert data.test_labels.tolist() == test_y.tolist()
    # the training and validation rows are the IDX training images, each once
    rows = sorted(tuple(r) for r in torch.cat([data.train, data.val]).flatten(1).mul(255).round().int().tolist())
    assert rows == sorted(tuple(r) for r in train.reshape(40, -1).astype(int).tolist())


def test_single_idx_file(tmp_path):
    images = _digit_images(np.random.default_rng(2), 30)
    data = load(str(write_idx(tmp_path / "images.idx", images)), binarize="threshold", n_val=3, n_test=3)
    assert (len(data.train), len(data.val), len(data.test)) == (24, 3, 3)
    assert data.x_shape == (1, 8, 8) and data.train_labels is None
    whole = torch.cat([data.train, data.val, data.test]).flatten(1).sum(1).sort().values
    assert torch.equal(whole, torch.as_tensor(images / 255.0 > 0.5).float().flatten(1).sum(1).sort().values)


def test_npz_with_x_and_y(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.random((50, 6)).astype(np.float32) * 4 - 2  # not images: kept as they are
    y = rng.integers(0, 3, 50)
    np.savez(tmp_path / "points.npz", x=x, y=y)
    data = load(str(tmp_path / "points.npz"), n_val=5, n_test=5)
    assert data.binarize is None and data.x_shape == (6,)
    both = torch.cat([data.train, data.val, data.test])
    assert sorted(both[:, 0].tolist()) == sorted(x[:, 0].tolist())
    labels = torch.cat([data.train_labels, data.val_labels, data.test_labels])
    by_row = {float(r[0]): int(lab) for r, lab in zip(both, labels)}
    assert all(by_row[float(np.float32(r[0]))] == lab for r, lab in zip(x, y))


def test_npz_with_its_own_test_split(tmp_path):
    rng = np.random.default_rng(4)
    x_train, x_test = _digit_images(rng, 20), _digit_images(rng, 6)
    np.savez(tmp_path / "d.npz", x_train=x_train, y_train=np.arange(20) % 10, x_test=x_test, y_test=np.arange(6))
    data = load(str(tmp_path / "d.npz"), binarize=None, n_val=2)
    assert (len(data.train), len(data.val), len(data.test)) == (18, 2, 6)
    np.testing.assert_allclose(data.test.numpy()[:, 0], x_test / 255.0, rtol=1e-6)
    assert data.test_labels.tolist() == list(range(6))


def test_npy_images_scaled_to_unit_interval(tmp_path):
    images = _digit_images(np.random.default_rng(5), 20)
    np.save(tmp_path / "d.npy", images)
    data = load(str(tmp_path / "d.npy"), binarize=None, n_val=2, n_test=2)
    assert data.x_shape == (1, 8, 8)
    assert float(data.train.max()) <= 1.0
    total = float(torch.cat([data.train, data.val, data.test]).sum())
    assert total == pytest.approx(images.sum() / 255.0, rel=1e-5)


def test_from_tensor():
    data = from_tensor(torch.arange(6.0).reshape(3, 2))
    assert isinstance(data, Dataset) and data.train.dtype == torch.float32
    assert len(data.val) == len(data.test) == 0 and data.x_shape == (2,)


# -- bad input ----------------------------------------------------------------------------------


def test_missing_path_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="no data set"):
        load(str(tmp_path / "nowhere.npz"))


def test_unknown_binarization_raises_user_error():
    with pytest.raises(UserError, match="binarization"):
        load("ring8", binarize="sometimes")


@pytest.mark.parametrize(
    "content, message",
    [(b"\x08\x03\x00\x00garbage", "not an IDX file"),  # bad magic
     (bytes([0, 0, 0x08, 3]) + struct.pack(">III", 10, 8, 8) + bytes(100), "truncated or corrupt"),
     (b"", "not an IDX file")],
    ids=["magic", "truncated", "empty"],
)
def test_corrupt_idx_raises_user_error(tmp_path, content, message):
    path = tmp_path / "broken.idx"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load(str(path))


def test_corrupt_gzipped_idx_raises_user_error(tmp_path):
    (tmp_path / "not-gzip.idx.gz").write_bytes(b"plain bytes, not gzip")
    with pytest.raises(UserError, match="cannot read"):
        load(str(tmp_path / "not-gzip.idx.gz"))
    whole = write_idx(tmp_path / "whole.idx.gz", _digit_images(np.random.default_rng(7), 50), compress=True)
    (tmp_path / "cut.idx.gz").write_bytes(whole.read_bytes()[:-40])  # a download cut short
    with pytest.raises(UserError, match="cannot read"):
        load(str(tmp_path / "cut.idx.gz"))


def test_idx_directory_without_test_images_raises_user_error(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", _digit_images(np.random.default_rng(6), 10))
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte"):
        load(str(tmp_path))


def test_npz_with_wrong_keys_raises_user_error(tmp_path):
    np.savez(tmp_path / "odd.npz", features=np.zeros((5, 2)), answers=np.zeros(5))
    with pytest.raises(UserError, match="name the examples 'x'"):
        load(str(tmp_path / "odd.npz"))


def test_labels_of_the_wrong_length_raise_user_error(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 3), dtype=np.float32), y=np.zeros(9))
    with pytest.raises(UserError, match="10 examples but 9 labels"):
        load(str(tmp_path / "d.npz"))


@pytest.mark.parametrize("name, content", [
    ("truncated.npz", None),  # the first half of a valid .npz
    ("garbage.npz", b"not a zip file at all" * 4),
    ("garbage.npy", b"not a numpy file" * 4),
    ("empty.npy", b""),
])
def test_unreadable_numpy_files_raise_user_error(tmp_path, name, content):
    if content is None:
        np.savez(tmp_path / "good.npz", x=np.zeros((50, 4), dtype=np.float32))
        content = (tmp_path / "good.npz").read_bytes()[:200]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match="cannot read"):
        load(str(tmp_path / name))


def test_npy_of_the_wrong_rank_raises_user_error(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(10, dtype=np.float32))
    with pytest.raises(UserError, match="expected examples shaped"):
        load(str(tmp_path / "flat.npy"))


def test_binarizing_values_outside_the_unit_interval_raises_user_error(tmp_path):
    np.save(tmp_path / "wide.npy", np.linspace(-3, 3, 40, dtype=np.float32).reshape(10, 4))
    with pytest.raises(UserError, match=r"values in \[0, 1\]"):
        load(str(tmp_path / "wide.npy"), binarize="static")


def test_holding_out_more_than_there_is_raises_user_error():
    with pytest.raises(UserError, match="cannot hold out"):
        load("ring8", n=20, n_val=10, n_test=10)
