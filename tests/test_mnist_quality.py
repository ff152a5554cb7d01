"""The sample-quality benchmark on full MNIST (benchmarks/mnist_quality.py): its CPU budget, the feature
classifier's cache, and the metrics pipeline on real digits where the answer is exact."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import pytest
import torch

import ppgen
from ppgen.data import load
from ppgen.evaluation import samples
from ppgen.models import VAE

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("mnist_quality", ROOT / "benchmarks" / "mnist_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits():
    return load("digits", binarize=None)


def fake_clock(step: float = 1.0):
    """A clock that reads 0, step, 2·step, ... on successive calls."""
    ticks = itertools.count()
    return lambda: step * next(ticks)


def test_the_watch_keeps_a_copy_at_each_budget_and_stops_at_the_last(bench):
    watch = bench.BudgetWatch([2.5, 4.0], fake_clock()).start()  # start reads 0; the end of chunk k reads k
    pair = torch.nn.Linear(1, 1)
    for k in (1, 2):
        watch.after_chunk(pair)
        assert not watch.snapshots, f"a snapshot before the first budget, at chunk {k}"
    watch.after_chunk(pair)
    assert [(s.budget, s.seconds, s.chunks) for s in watch.snapshots] == [(2.5, 3.0, 3)]
    assert watch.snapshots[0].pair is not pair  # a copy, not the training pair
    with pytest.raises(bench.BudgetReached):
        watch.after_chunk(pair)
    assert [(s.budget, s.seconds, s.chunks) for s in watch.snapshots] == [(2.5, 3.0, 3), (4.0, 4.0, 4)]


def test_one_chunk_past_two_budgets_keeps_both(bench):
    watch = bench.BudgetWatch([1.0, 2.0, 10.0], fake_clock(5.0)).start()
    watch.after_chunk(torch.nn.Linear(1, 1))
    assert [(s.budget, s.chunks) for s in watch.snapshots] == [(1.0, 1), (2.0, 1)]


def test_time_spent_scoring_a_snapshot_is_not_training_time(bench):
    now = [0.0]
    seen = []

    def score(snapshot):  # scoring takes 100 s of the clock
        seen.append((snapshot.budget, snapshot.seconds))
        now[0] += 100.0

    watch = bench.BudgetWatch([1.0, 3.0], lambda: now[0], on_snapshot=score).start()
    pair = torch.nn.Linear(1, 1)
    for _ in range(2):
        now[0] += 1.0
        watch.after_chunk(pair)
    assert seen == [(1.0, 1.0)] and watch.spent() == 2.0
    now[0] += 1.0
    with pytest.raises(bench.BudgetReached):
        watch.after_chunk(pair)
    assert seen == [(1.0, 1.0), (3.0, 3.0)] and watch.chunks == 3


@pytest.mark.parametrize("budgets", [[], [0.0], [4.0, 2.0]])
def test_budgets_must_be_positive_and_ascending(bench, budgets):
    with pytest.raises(ValueError, match="positive and ascending"):
        bench.BudgetWatch(budgets)


def test_a_family_stops_at_its_budget_and_says_the_epochs_reached(bench):
    """Through ppgen.fit: with the fake clock (1 s per chunk) the budgets 2.5 and 4 s stop training after exactly
    4 chunks of 100 digits; the 2.5 s snapshot holds exactly the weights of a 3-chunk fit."""
    data = load("digits", binarize="dynamic")
    chunks = bench.ChunkedEpochs(data, 100, seed=0)

    def fit(pair, d, **loop):
        return ppgen.fit(pair, d, backend="svi", engine="torch", batch_size=50, seed=0, progress=False,
                         callback=None, **loop)

    torch.manual_seed(0)
    pair = VAE(data.x_shape, z_dim=2, hidden=(16,))
    start = {k: v.clone() for k, v in pair.state_dict().items()}
    watch = bench.train_to_budgets(lambda d, **loop: fit(pair, d, **loop), chunks, [2.5, 4.0], fake_clock())
    assert watch.chunks == 4
    assert [(s.chunks, s.seconds) for s in watch.snapshots] == [(3, 3.0), (4, 4.0)]
    assert chunks.passes(4) == pytest.approx(400 / len(data.train))

    again = VAE(data.x_shape, z_dim=2, hidden=(16,))
    again.load_state_dict(start)
    fit(again, chunks, epochs=3)
    for name, value in again.state_dict().items():
        assert torch.equal(value, watch.snapshots[0].pair.state_dict()[name]), name


def test_the_ddpm_family_s_denoiser_can_represent_what_it_predicts(bench):
    """An MLP's linear output layer puts its 784 outputs in a subspace of dimension h = its last hidden size. An
    ε-prediction must reach every direction (ε ~ N(0, I) is isotropic: L_simple ≥ 784 − h per digit at every t,
    and x̂_0's error is that of ε̂ times √(1 − ᾱ_t)/√ᾱ_t, 152 at t = T), so with h < 784 the samples are noise; an
    x_0-prediction has the digits' few directions to reach."""
    pair = bench.FAMILIES["ddpm"].build()
    h, d = pair.denoiser.out.in_features, pair.denoiser.out.out_features
    assert d == 784
    assert pair.config.prediction == "x0" or h >= d, (pair.config.prediction, h)


def test_chunks_cover_each_pass_once_with_a_fresh_draw_per_pass(bench):
    data = load("digits", binarize="dynamic")
    chunks = bench.ChunkedEpochs(data, 300, seed=1)
    k = chunks.per_pass
    labels = torch.cat([chunks.train_epoch_inputs(e, ["y"])[0] for e in range(k)])
    rows = torch.cat([chunks._rows(e)[1] for e in range(k)])
    assert len(set(rows.tolist())) == k * 300  # no digit twice in a pass
    assert torch.equal(labels, data.train_labels[rows])  # the labels stay beside their digits
    first, second = chunks.train_epoch(0), chunks.train_epoch(k)  # chunk 0 of passes 0 and 1
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(first, second)


# -- the feature classifier's cache -----------------------------------------------------------------------------
def _cache_file(folder: Path) -> Path:
    (path,) = folder.iterdir()
    return path


def test_the_classifier_cache_is_written_whole_and_read_back(digits, tmp_path):
    _, accuracy = samples.feature_classifier(digits, epochs=1, cache_dir=tmp_path)
    path = _cache_file(tmp_path)  # no temporary file left beside it
    saved = torch.load(path, weights_only=True)
    assert saved["test_accuracy"] == accuracy
    _, again = samples.feature_classifier(digits, epochs=1, cache_dir=tmp_path)
    assert again == accuracy


def test_a_crash_while_writing_leaves_the_old_cache_intact(digits, tmp_path, monkeypatch):
    samples.feature_classifier(digits, epochs=1, cache_dir=tmp_path)
    path = _cache_file(tmp_path)
    before = path.read_bytes()

    def half_written(obj, target):
        Path(target).write_bytes(before[: len(before) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(samples, "_load_cached_classifier", lambda net, p: None)  # force a retrain and a write
    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(OSError, match="disk full"):
        samples.feature_classifier(digits, epochs=1, cache_dir=tmp_path)
    assert path.read_bytes() == before  # the cache file itself was never written in place


def test_two_writers_of_the_same_cache_do_not_collide(digits, tmp_path, monkeypatch):
    """Writer A has written its temporary file when writer B writes the whole cache: with one fixed temporary
    name, B's rename takes A's file away and A's rename fails; with a temporary file of its own each, both succeed,
    the cache holds a whole classifier and no temporary file is left."""
    real_save, targets = torch.save, []

    def save_then_let_another_writer_finish(obj, target):
        real_save(obj, target)
        targets.append(Path(target))
        if len(targets) == 1:  # A's file is written, not yet renamed: B trains and writes the cache meanwhile
            samples.feature_classifier(digits, epochs=1, cache_dir=tmp_path)

    monkeypatch.setattr(samples, "_load_cached_classifier", lambda net, p: None)  # both train and write
    monkeypatch.setattr(torch, "save", save_then_let_another_writer_finish)
    _, accuracy = samples.feature_classifier(digits, epochs=1, cache_dir=tmp_path)
    assert len(targets) == 2 and targets[0] != targets[1] and {t.parent for t in targets} == {tmp_path}
    assert torch.load(_cache_file(tmp_path), weights_only=True)["test_accuracy"] == accuracy


class _Payload:
    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Payload.ran = True
    return {}


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickled code"])
def test_a_damaged_cache_is_rebuilt_without_running_it(digits, tmp_path, damage):
    _, accuracy = samples.feature_classifier(digits, epochs=1, cache_dir=tmp_path)
    path = _cache_file(tmp_path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"not a torch file")
    else:
        import pickle

        path.write_bytes(pickle.dumps({"weights": _Payload(), "test_accuracy": 1.0}, protocol=2))
    _, rebuilt = samples.feature_classifier(digits, epochs=1, cache_dir=tmp_path)
    assert not _Payload.ran  # weights_only=True refused the payload
    assert rebuilt == accuracy  # trained again, with the same seed: the same classifier
    assert torch.load(path, weights_only=True)["test_accuracy"] == accuracy  # and cached again


# -- the metrics on real digits ---------------------------------------------------------------------------------
def test_a_set_scored_against_itself_has_fid_zero_and_precision_recall_one(bench, digits, tmp_path):
    scorer = bench.Scorer.build(digits, n_reference=400, seed=0, cache_dir=tmp_path)
    rows = torch.randperm(len(digits.train), generator=torch.Generator().manual_seed(0))[:400]
    same = scorer.score(digits.train[rows])
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    other = scorer.score(digits.test[:400])  # real digits, but others: a small positive FID
    assert 0 < other["fid"] < 1 and other["precision"] > 0.8


def test_records_survive_a_truncated_last_line(bench, tmp_path):
    path = tmp_path / "r.jsonl"
    for seed in (0, 1):
        bench.append_record(path, {"family": "vae", "seed": seed, "times": 1.0, "w": 15.0, "n": 10})
    with open(path, "a") as f:
        f.write('{"family": "vae", "se')
    records = bench.read_records(path)
    assert [r["seed"] for r in records] == [0, 1]
    assert bench.done(records, "vae", 1, [1.0], 15.0, 10) and not bench.done(records, "vae", 1, [1.0, 4.0], 15.0, 10)
