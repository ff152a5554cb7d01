r"""The learning-rate schedule ``lr_final``: lr_e = lr · lr_final^(e / (E − 1)) for epoch e of E, on both engines.

The exact check: a pair whose every step has the same gradient. Its one parameter a is the location of a Laplace
likelihood, a = 0 and every example x = 100, so the loss −Σ log Laplace(x | a, 1) has the gradient −B (B the batch)
while a < x. Adam's step with a gradient that never changes is exactly lr · g / (|g| + ε) for every step t
(m̂_t = g, v̂_t = g² after the bias corrections), so after E epochs of S steps a = S · Σ_e lr_e. The tolerance,
2e-4 relative, is float32's: the bias correction 1 − 0.999^t rounded to float32 is off by up to 6e-5 relative.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import ppgen
from ppgen.inference.options import OptionError, SVIOptions, lr_at
from ppgen.inference.svi_jax import step_size
from ppgen.models.base import GenerativeModel
from ppgen.ppl import dist
from ppgen.ppl import pyro as ppl_pyro


@dataclass(frozen=True)
class LaplaceConfig:
    x_shape: tuple[int, ...] = (1,)


class LaplaceLocation(GenerativeModel):
    """x_n ~ Laplace(a, 1) with the location a a ``pyro.param``; no latent variables (the guide is empty)."""

    name = "test_laplace_location"
    Config = LaplaceConfig
    latent_sites = ()

    def __init__(self):
        super().__init__(LaplaceConfig())

    def model(self, x):
        a = ppl_pyro.param("a", torch.tensor(0.0))
        with ppl_pyro.plate("data", x.shape[0]):
            ppl_pyro.sample("x", dist.Laplace(a, 1.0).expand([x.shape[0], 1]).to_event(1), obs=x)

    def guide(self, x):
        pass


def test_lr_at_falls_geometrically_from_lr_to_lr_times_lr_final():
    assert [lr_at(e, 3, 0.01, 0.25) for e in range(3)] == pytest.approx([0.01, 0.005, 0.0025], rel=1e-12)
    assert lr_at(5, 11, 1e-3, 0.1) == pytest.approx(1e-3 * 0.1**0.5, rel=1e-12)
    assert [lr_at(e, 4, 0.01, 1.0) for e in range(4)] == [0.01] * 4  # the default: constant
    assert lr_at(0, 1, 0.01, 0.1) == 0.01  # one epoch: lr


def test_the_jax_schedule_is_the_torch_engines_epoch_by_epoch():
    options = SVIOptions(epochs=4, lr=0.02, lr_final=0.1)
    schedule = step_size(options, steps=3)
    got = [float(schedule(i)) for i in range(12)]
    assert got == pytest.approx([lr_at(i // 3, 4, 0.02, 0.1) for i in range(12)], rel=1e-6)
    assert step_size(SVIOptions(epochs=4, lr=0.02), steps=3) == 0.02  # constant: a number, as before


@pytest.mark.parametrize("engine", ["torch", "jax"])
@pytest.mark.parametrize("lr_final", [1.0, 0.25])
def test_each_epoch_steps_by_its_learning_rate(engine, lr_final):
    x = torch.full((8, 1), 100.0)
    pair = LaplaceLocation()
    epochs, steps, lr = 3, 2, 0.01
    fit = ppgen.fit(pair, x, engine=engine, epochs=epochs, batch_size=4, lr=lr, lr_final=lr_final, seed=0,
                    progress=False)
    assert fit.options["engine"] == engine
    expected = steps * sum(lr_at(e, epochs, lr, lr_final) for e in range(epochs))  # 0.06 constant, 0.035 falling
    assert float(pair.param_value("a")) == pytest.approx(expected, rel=2e-4)


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan")])
def test_lr_final_outside_zero_to_one_is_refused(bad):
    with pytest.raises(OptionError, match="lr_final"):
        SVIOptions(lr_final=bad)
