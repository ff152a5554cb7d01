"""Networks the models use; each can be lowered to a pure JAX function."""

from ppgen.nn.autoregressive import MaskedConv2d, PixelCNNDecoder
from ppgen.nn.average import WeightAverage
from ppgen.nn.denoisers import MLPDenoiser, TimeEmbedding, UNetDenoiser
from ppgen.nn.history import LossHistory
from ppgen.nn.lower import NotLowerable, jax_params, lower
from ppgen.nn.networks import (
    ConvDecoder,
    ConvEncoder,
    DeterministicMLP,
    GaussianMLP,
    MLPDecoder,
    MLPEncoder,
    Network,
)
from ppgen.nn.norm import BatchNorm

__all__ = ["BatchNorm", "MaskedConv2d", "PixelCNNDecoder", "MLPDenoiser", "TimeEmbedding", "UNetDenoiser", "ConvDecoder", "ConvEncoder", "DeterministicMLP", "GaussianMLP", "LossHistory", "MLPDecoder", "MLPEncoder", "Network", "NotLowerable", "jax_params", "lower", "WeightAverage"]
