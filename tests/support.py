"""Shared test helpers (imported by the test modules; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import io
import math

import torch

import ppgen
from ppgen.data import Dataset
from ppgen.models import PPCA, VAE

#: the points and NUTS settings shared by the diagnostics and amortization tests (one compiled sampler)
POINTS = [1, 3, 5, 6]
NUTS_OPTIONS = dict(points=POINTS, chains=4, warmup=200, samples=500, seed=0)
#: a small VQ-VAE on the 8x8 digits: its options, and the same as ``ppgen train vqvae`` flags
VQVAE_SMALL = dict(codes=16, code_dim=4, downsample=1, channels=16, prior_channels=16, prior_layers=2)
VQVAE_FLAGS = ["--data", "digits", "--codes", "16", "--code-dim", "4", "--downsample", "1", "--channels", "16",
               "--prior-channels", "16", "--prior-layers", "2", "--batch-size", "64", "--no-progress"]


def known_ppca(guide_at_posterior: bool = True) -> PPCA:
    """A fixed PPCA (d=5, k=2, σ=0.5), with the guide set to the exact posterior by default."""
    g = torch.Generator().manual_seed(1234)
    pair = PPCA(x_shape=(5,), z_dim=2)
    pair.set_params(torch.randn(5, 2, generator=g) * 1.5, torch.randn(5, generator=g), 0.5)
    return pair.set_guide_to_posterior() if guide_at_posterior else pair


def tiny_vae(seed: int = 0, **kw) -> VAE:
    """A 12-pixel Bernoulli VAE (z 3, hidden 16) with seeded initial weights."""
    torch.manual_seed(seed)
    return VAE(x_shape=(12,), z_dim=3, hidden=(16,), **kw)


def binary(n: int, d: int = 12, seed: int = 0) -> torch.Tensor:
    """n seeded binary vectors with unequal pixel means."""
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, d, generator=g) ** 2, generator=g)


def grey_dataset(n: int = 256, seed: int = 0) -> Dataset:
    """Grey levels with correlated pixels, dynamically binarized, with a validation split."""
    g = torch.Generator().manual_seed(seed)
    x = torch.sigmoid(torch.randn(n + 64, 2, generator=g) @ torch.randn(2, 12, generator=g) * 2)
    return Dataset(name="grey", train=x[:n], val=(x[n:] > 0.5).float(), test=x[:0], binarize="dynamic", seed=seed)


def resume_at_epoch_two(data: Dataset, options: dict):
    """An uninterrupted run of ``tiny_vae(seed=0)`` and a fresh pair resumed from its epoch-2 checkpoint,
    saved the way a run directory does (serialized, loaded back weights-only).

    Returns (whole, resumed, resumed_pair, checkpoint).
    """
    saved = {}

    def keep_epoch_two(fit):
        if fit.state["epoch"] == 2:
            buffer = io.BytesIO()
            torch.save(fit.checkpoint(), buffer)
            saved["bytes"] = buffer.getvalue()

    whole = ppgen.fit(tiny_vae(seed=0), data, on_epoch_end=keep_epoch_two, **options)
    checkpoint = torch.load(io.BytesIO(saved["bytes"]), weights_only=True)
    resumed_pair = tiny_vae(seed=99)  # a fresh process would build the pair with other weights
    resumed = ppgen.fit(resumed_pair, data, resume=checkpoint, **options)
    return whole, resumed, resumed_pair, checkpoint


def assert_same_run(whole, resumed, resumed_pair, checkpoint, compared) -> None:
    """The resumed run's history (``compared`` columns) and final weights equal the uninterrupted run's,
    and it really trained: its weights left the checkpoint's."""
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(whole.history, resumed.history):
        assert {k: a[k] for k in compared} == {k: b[k] for k in compared}
    for name, value in whole.pair.state_dict().items():
        assert torch.equal(value, resumed_pair.state_dict()[name]), name
    assert any(not torch.equal(v, checkpoint["model"][k]) for k, v in resumed_pair.state_dict().items())


#: loadings with near-parallel columns: PPCA with σ = 0.5 then has posterior correlation −0.95 (any x)
CORRELATED_W = torch.tensor([[1.0, 0.9], [1.0, 1.1], [0.8, 0.9], [1.2, 1.0], [1.0, 1.0]])


def correlated_ppca(guide: str = "exact") -> PPCA:
    """PPCA (d=5, k=2, σ=0.5) whose posterior is strongly correlated; ``guide="exact"`` sets q(z|x) to the
    posterior, ``"mean-field"`` to the mean-field Gaussian closest in KL(q ‖ p): the exact mean, variances
    1/Λ_ii (Λ the posterior precision), no correlation — what mean-field SVI converges to."""
    pair = PPCA(x_shape=(5,), z_dim=2).set_params(CORRELATED_W, torch.zeros(5), 0.5)
    return pair.set_guide_to_mean_field() if guide == "mean-field" else pair.set_guide_to_posterior()


def run_cli(*args) -> int:
    """``ppgen ARGS`` in-process (paths and numbers as strings); argparse's exit (SystemExit) becomes the exit code."""
    from ppgen.cli import main

    try:
        return main([str(a) for a in args])
    except SystemExit as exit_:
        return int(exit_.code)


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    """The mean of ``values`` (all elements) and its standard error, in float64."""
    values = values.double().flatten()
    return float(values.mean()), float(values.std(unbiased=True) / math.sqrt(values.numel()))
