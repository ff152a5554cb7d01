"""The GAN's MLP generator with batch normalization (the default for images).

Without it the MLP generator (z 64 → 256 → 512 → 784, NS loss, Adam 2e-4) collapsed onto one digit on full MNIST
in every setting tried (benchmarks/mnist_quality.py, docs/results.md), as a plain PyTorch loop of the same nets
did; with one batch-normalized hidden layer the plain loop's samples kept their spread. Here: where the
default turns it on, where the layers go, that old runs load unchanged, and that evaluation mode is a
deterministic function of z.
"""

from __future__ import annotations

import pytest
import torch

from ppgen.declare import OptionError
from ppgen.models import GAN
from ppgen.nn.critics import MLPGenerator


def test_on_for_images_off_for_points_and_refused_for_the_conv_generator():
    assert GAN(x_shape=(1, 28, 28), z_dim=8, hidden=(16, 32)).config.batch_norm == "on"
    assert GAN(x_shape=(2,)).config.batch_norm == "off"
    assert GAN(x_shape=(1, 28, 28), net="conv").config.batch_norm == "off"
    assert GAN(x_shape=(1, 28, 28), batch_norm=False).config.batch_norm == "off"
    with pytest.raises(OptionError, match="batch_norm"):
        GAN(x_shape=(1, 28, 28), net="conv", batch_norm="on")


def test_every_hidden_layer_after_the_first_is_normalized():
    gen = GAN(x_shape=(1, 28, 28), z_dim=8, hidden=(16, 32, 24)).generator
    assert {k: m.num_features for k, m in gen.norms.items()} == {"1": 32, "2": 24}
    plain = GAN(x_shape=(1, 28, 28), z_dim=8, hidden=(16, 32, 24), batch_norm="off").generator
    assert all(k.startswith("layers.") for k in plain.state_dict())  # the state dict runs written before had


def test_a_run_written_before_the_option_loads_without_batch_norm():
    old = GAN(x_shape=(1, 28, 28), z_dim=8, hidden=(16, 32), batch_norm="off")
    config = old.config_dict()
    del config["batch_norm"]
    loaded = GAN.from_config(config)
    assert loaded.config.batch_norm == "off"
    loaded.load_state_dict(old.state_dict())  # strict: the same keys


def test_evaluation_mode_maps_each_z_alone():
    torch.manual_seed(0)
    gen = MLPGenerator(4, (1, 6, 6), (8, 8), "sigmoid", batch_norm=True)
    gen(torch.randn(64, 4))  # one training-mode batch moves the running statistics
    gen.eval()
    z = torch.randn(10, 4)
    together = gen(z)
    alone = torch.cat([gen(z[i:i + 1]) for i in range(10)])
    torch.testing.assert_close(together, alone)


def test_the_gaussian_observation_wrapper_keeps_a_loaded_pairs_evaluation_mode():
    """AIS under Gaussian observations (``ppgen evaluate --ais N --sigma S``) wraps the loaded pair, which is in
    evaluation mode; the wrapper must not hand batch norm back to training mode (batches of one then fail)."""
    from ppgen.models.observation import GaussianObservation

    pair = GAN(x_shape=(1, 6, 6), z_dim=2, hidden=(8, 8)).eval()
    wrapped = GaussianObservation(pair, 0.1)
    assert not wrapped.training
    wrapped.train(wrapped.training)  # what an estimator that restores the mode it found does
    assert not pair.generator.training
