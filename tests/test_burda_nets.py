"""Burda et al. (2016)'s nets as declared options: the hidden-layer nonlinearity (``activation``) of the VAE and the
hierarchical VAE, their exact layer shapes, the same function in torch and lowered to JAX, and bad values refused."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ppgen.declare import OptionError
from ppgen.models import VAE, HierarchicalVAE
from ppgen.nn import GaussianMLP, MLPDecoder, MLPEncoder

pytestmark = pytest.mark.usefixtures("single_thread")
MNIST = (1, 28, 28)


def linear_shapes(module: torch.nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, torch.nn.Linear)]


def test_burda_one_layer_net_has_the_papers_shapes_and_parameter_count():
    pair = VAE(MNIST, z_dim=50, hidden=(200, 200), activation="tanh")
    assert linear_shapes(pair.encoder) == [(784, 200), (200, 200), (200, 50), (200, 50)]  # two heads: loc, scale
    assert linear_shapes(pair.decoder) == [(50, 200), (200, 200), (200, 784)]
    # 784-200-200-(2x50) encoder and 50-200-200-784 decoder, weights and biases
    want = (784 * 200 + 200) + (200 * 200 + 200) + 2 * (200 * 50 + 50) + (50 * 200 + 200) + (200 * 200 + 200) + \
        (200 * 784 + 784)
    assert sum(p.numel() for p in pair.parameters()) == want == 425_284


def test_burda_two_layer_net_has_the_papers_shapes():
    pair = HierarchicalVAE(MNIST, z_dims=(100, 50), hidden=((200, 200), (100, 100)), activation="tanh")
    assert [linear_shapes(e) for e in pair.encoders] == [[(784, 200), (200, 200), (200, 100), (200, 100)],
                                                         [(100, 100), (100, 100), (100, 50), (100, 50)]]
    assert linear_shapes(pair.prior_nets[0]) == [(50, 100), (100, 100), (100, 100), (100, 100)]
    assert linear_shapes(pair.decoder) == [(100, 200), (200, 200), (200, 784)]


def test_tanh_hidden_layers_compute_tanh_of_the_affine_maps():
    torch.manual_seed(0)
    enc = MLPEncoder(MNIST, 5, (7, 3), activation="tanh")
    x = torch.rand(4, *MNIST)
    h = x.flatten(1)
    for layer in enc.layers:
        h = torch.tanh(h @ layer.weight.T + layer.bias)
    torch.testing.assert_close(enc.features(x), h)
    softplus = MLPEncoder(MNIST, 5, (7, 3))
    softplus.load_state_dict(enc.state_dict())
    assert not torch.allclose(softplus.features(x), h)  # the option changes the function


@pytest.mark.parametrize("net", [
    lambda: MLPEncoder(MNIST, 5, (7, 3), activation="tanh"),
    lambda: MLPDecoder(5, MNIST, (3, 7), activation="tanh"),
    lambda: GaussianMLP(6, 4, (5, 5), activation="tanh"),
])
def test_tanh_networks_compute_the_same_in_torch_and_lowered_to_jax(net):
    torch.manual_seed(1)
    module = net()
    x = torch.randn(3, *(MNIST if isinstance(module, MLPEncoder) else (6,) if isinstance(module, GaussianMLP) else (5,)))
    with torch.no_grad():
        want = module(x)
    got = module(jnp.asarray(x.numpy()))
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        np.testing.assert_allclose(np.asarray(g), w.numpy(), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("family,kw", [(VAE, {}), (HierarchicalVAE, {"z_dims": (4, 2), "hidden": (8, 4)})])
def test_unknown_activation_is_refused_naming_the_option_and_the_choices(family, kw):
    with pytest.raises(OptionError, match=r"activation.*softplus, tanh"):
        family(MNIST, activation="relu", **kw)


def test_activation_applies_to_mlp_networks_only():
    with pytest.raises(OptionError, match="activation.*net='conv'"):
        VAE(MNIST, net="conv", activation="tanh")
