"""Shared fixtures: seeds, a cached copy of the bundled MNIST digits, a known PPCA model."""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile

import numpy as np
import pyro
import pytest
import torch

# JAX's compiled executables go to a folder of this session, never the user's cache (ppgen.inference.compile_cache)
os.environ["PPGEN_COMPILE_CACHE_DIR"] = tempfile.mkdtemp(prefix="ppgen-test-jax-cache-")
atexit.register(shutil.rmtree, os.environ["PPGEN_COMPILE_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state and an empty Pyro parameter store."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(autouse=True)
def progress_lines_off(monkeypatch):
    """No progress line on a test's stderr (tests/test_progress.py sets its own interval): several tests check that
    an error is the only line, and a loaded machine can stretch their work past the 10 s between lines. The
    reports still run; they never reach the interval."""
    monkeypatch.setenv("PPGEN_PROGRESS_INTERVAL", "1e9")


@pytest.fixture(autouse=True)
def single_thread():
    """Run torch on one thread (every test: autouse): the tiny models of these tests gain nothing from more, and on a
    loaded 2-core machine intra-op threads spinning against each other made a 3 ms SVI step 100 ms."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def auto_at_any_size(monkeypatch):
    """``engine="auto"`` as it decides for a job of any size: the small-job rule (a job of fewer steps than
    ``AUTO_TORCH_BELOW_STEPS`` goes to torch first; tests/test_auto_rule.py) left out, so a test's tiny fit still
    reaches what it checks: JAX chosen for a pair that lowers, or the fall back to torch after the JAX trial."""
    from ppgen.inference import svi

    monkeypatch.setattr(svi, "AUTO_TORCH_BELOW_STEPS", 0)


@pytest.fixture(scope="session")
def mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 bundled digits, read once per session (reading them takes seconds)."""
    from ppgen.data import sources

    return sources.mnist_bundled()


@pytest.fixture
def mnist_cached(monkeypatch, mnist_arrays):
    """Make ``ppgen.data.load("mnist")`` use the session's copy (it still splits and binarizes)."""
    from ppgen.data import sources

    x, y = mnist_arrays
    monkeypatch.setattr(sources, "mnist_bundled", lambda: (x.copy(), y.copy()))
    return x, y


@pytest.fixture
def ppca_truth() -> dict:
    """A known PPCA model, d = 5, k = 2: W, mu, sigma as float32 tensors."""
    g = torch.Generator().manual_seed(1234)
    W = torch.randn(5, 2, generator=g) * 1.5
    mu = torch.randn(5, generator=g)
    return {"W": W, "mu": mu, "sigma": 0.5, "d": 5, "k": 2}


def ppca_sample(truth: dict, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` draws of x = W z + mu + sigma * eps."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, truth["k"], generator=g)
    eps = torch.randn(n, truth["d"], generator=g)
    return z @ truth["W"].T + truth["mu"] + truth["sigma"] * eps


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    """Sample mean and its standard error."""
    values = values.double().flatten()
    return float(values.mean()), float(values.std(unbiased=True) / math.sqrt(values.numel()))
