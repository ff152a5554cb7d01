"""Every ppgen network computes the same function in torch and, lowered, in JAX.

Float32 on both sides; differences come from operation order only, so the
outputs agree to ~1e-5 absolute for activations of order one.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from ppgen.models.ppca import LinearGaussianDecoder, LinearGaussianEncoder
from ppgen.nn import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, Network, NotLowerable, lower

ATOL = 2e-5
pytestmark = pytest.mark.usefixtures("single_thread")


def _outputs(out) -> list[np.ndarray]:
    outs = out if isinstance(out, tuple) else (out,)
    return [np.asarray(o.detach().numpy() if isinstance(o, torch.Tensor) else o) for o in outs]


def assert_same_in_torch_and_jax(net: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        want = _outputs(net(x))
    got = _outputs(net(jnp.asarray(x.numpy())))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, atol=ATOL, rtol=1e-5)
    return want


def _randomize(net: nn.Module, seed: int) -> nn.Module:
    """Weights away from their initialization (and non-zero log-scales) so every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return net


NETWORKS = {
    "mlp-encoder": (lambda: MLPEncoder((1, 6, 6), 3, hidden=(16, 12)), (1, 6, 6)),
    "mlp-encoder-flat": (lambda: MLPEncoder((10,), 4, hidden=(8,)), (10,)),
    "mlp-decoder": (lambda: MLPDecoder(3, (1, 6, 6), hidden=(12, 16)), (3,)),
    "mlp-decoder-skip": (lambda: MLPDecoder(3, (1, 6, 6), hidden=(12, 16), skip=True), (3,)),
    "mlp-decoder-gaussian": (lambda: MLPDecoder(3, (1, 6, 6), hidden=(12,), n_params=2), (3,)),
    "mlp-decoder-skip-gaussian": (lambda: MLPDecoder(3, (2, 4, 4), hidden=(8, 8), skip=True, n_params=2), (3,)),
    "conv-encoder": (lambda: ConvEncoder((1, 8, 8), 3, hidden=(16,), channels=4), (1, 8, 8)),
    "conv-encoder-rgb": (lambda: ConvEncoder((3, 8, 12), 2, hidden=(8,), channels=4), (3, 8, 12)),
    "conv-decoder": (lambda: ConvDecoder(3, (1, 8, 8), hidden=(16,), channels=4), (3,)),
    "conv-decoder-skip-gaussian": (
        lambda: ConvDecoder(3, (2, 8, 12), hidden=(16,), channels=4, skip=True, n_params=2), (3,)
    ),
    "ppca-decoder": (lambda: LinearGaussianDecoder(2, 5), (2,)),
    "ppca-encoder": (lambda: LinearGaussianEncoder(5, 2), (5,)),
}


@pytest.mark.parametrize("lead", [(4,), (2, 1, 3)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_torch_and_jax_agree_with_leading_batch_dims(name, lead):
    make, in_shape = NETWORKS[name]
    torch.manual_seed(0)
    net = _randomize(make(), seed=1)
    x = torch.rand((*lead, *in_shape)) if len(in_shape) == 3 else torch.randn((*lead, *in_shape))
    want = assert_same_in_torch_and_jax(net, x)
    assert want[0].shape[: len(lead)] == lead


def test_batched_call_equals_per_example_calls():
    """Leading dims are batch dims: no mixing across examples (conv reshapes them away and back)."""
    torch.manual_seed(0)
    net = _randomize(ConvDecoder(3, (1, 8, 8), hidden=(16,), channels=4, skip=True), seed=2)
    z = torch.randn(2, 3, 3)
    with torch.no_grad():
        whole = net(z)
        for i in range(2):
            for j in range(3):
                torch.testing.assert_close(whole[i, j], net(z[i, j]), atol=1e-6, rtol=1e-6)


def test_jax_call_uses_current_weights():
    """A JAX call after a torch update sees the new weights (nothing is cached but the graph)."""
    torch.manual_seed(0)
    net = MLPDecoder(2, (4,), hidden=(8,))
    z = torch.randn(3, 2)
    before = np.asarray(net(jnp.asarray(z.numpy())))
    with torch.no_grad():
        net.layers[-1].bias.add_(1.0)
    after = np.asarray(net(jnp.asarray(z.numpy())))
    np.testing.assert_allclose(after - before, 1.0, atol=1e-5)
    assert_same_in_torch_and_jax(net, z)


def test_ppca_encoder_lowering_keeps_the_triangular_factor():
    torch.manual_seed(0)
    net = _randomize(LinearGaussianEncoder(4, 3), seed=3)
    loc, tril = net(jnp.asarray(torch.randn(5, 4).numpy()))
    tril = np.asarray(tril)
    assert np.allclose(np.triu(tril, 1), 0.0)
    assert (np.diag(tril) > 0).all()


class _Sine(Network):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def forward(self, x):
        return torch.atan(self.linear(x))


class _BatchNormed(Network):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(3)

    def forward(self, x):
        return self.norm(x)


class _AbsMethod(Network):
    def forward(self, x):
        return x.abs()


class _Branchy(Network):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return x
        return -x


def test_unsupported_function_raises_naming_it():
    with pytest.raises(NotLowerable, match="function atan"):  # (sin and cos have rules: the time embedding)
        lower(_Sine())


def test_unsupported_layer_raises_naming_it():
    with pytest.raises(NotLowerable, match="BatchNorm1d"):
        lower(_BatchNormed())


def test_unsupported_tensor_method_raises_naming_it():
    net = _AbsMethod()
    assert torch.equal(net(torch.tensor([-1.0, 2.0])), torch.tensor([1.0, 2.0]))  # torch still works
    with pytest.raises(NotLowerable, match=r"\.abs\(\)"):
        net(jnp.asarray([-1.0, 2.0]))


def test_untraceable_module_raises_not_lowerable():
    with pytest.raises(NotLowerable, match="_Branchy"):
        lower(_Branchy())
