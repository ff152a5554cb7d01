"""One process of the data-parallel equivalence tests (tests/test_distributed.py), or the one-process reference.

``python tests/distributed_worker.py OUT`` trains a VQ-VAE by SVI (a deterministic objective and an EMA codebook
with restarts, so the shards' result can be compared exactly), a GAN adversarially (its latent a fixed
function of the batch, so no draw differs between shards) and a VAE on the bundled digits for one epoch (a
stochastic Normal guide: each rank draws one process's noise for its rows), and saves weights and history under
OUT, per rank.
RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT come from the environment (torchrun's variables).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import ppgen
from ppgen.models import GAN, VAE
from ppgen.models.vqvae import VQVAE

VQ = dict(codes=16, code_dim=4, downsample=1, channels=16, prior_channels=16, prior_layers=2)
SVI = dict(epochs=2, batch_size=32, lr=3e-3, engine="torch", progress=False)
VAE_OPTIONS = dict(x_shape=(1, 8, 8), z_dim=4, hidden=(32,))
VAE_FIT = dict(epochs=1, batch_size=64, lr=3e-3, engine="torch", progress=False)
ADVERSARIAL = dict(epochs=2, batch_size=64, loss="ns", x_draw="mean", lr_g=1e-3, lr_d=1e-3, progress=False)


def svi_data():
    data = ppgen.data.load("digits")
    return ppgen.data.from_tensor((data.train[:256] > 0.5).float())


def adversarial_data():
    g = torch.Generator().manual_seed(3)
    return ppgen.data.from_tensor(torch.randn(512, 2, generator=g) * torch.tensor([1.0, 0.3]))


def svi_gradients(rank: int, world: int) -> dict[str, torch.Tensor]:
    """The VQ-VAE objective's gradients at its initial weights: this rank's shard of 64 examples, summed over ranks."""
    from ppgen.inference.distributed import Group

    torch.manual_seed(0)
    pair = VQVAE((1, 8, 8), **VQ).eval()  # eval: no codebook update, the gradient alone
    x = svi_data().train
    group = Group(rank, world)
    pair.objective(group.shard(x, torch.arange(len(x)), 0, 64)).sum().backward()
    group.reduce_step(pair.parameters(), [0.0], mean=False)
    return {name: p.grad.clone() for name, p in pair.named_parameters() if p.grad is not None}


def train_svi() -> tuple[dict, list]:
    torch.manual_seed(0)
    pair = VQVAE((1, 8, 8), **VQ)
    fit = ppgen.fit(pair, svi_data(), **SVI)
    return pair.state_dict(), fit.history


def train_vae() -> tuple[dict, list]:
    """The digits VAE (Bernoulli likelihood, dynamic binarization, Normal guide), one epoch of 20 steps."""
    torch.manual_seed(0)
    pair = VAE(**VAE_OPTIONS)
    fit = ppgen.fit(pair, ppgen.data.load("digits"), **VAE_FIT)
    return pair.state_dict(), fit.history


def train_adversarial() -> tuple[dict, list]:
    torch.manual_seed(0)
    pair = GAN(x_shape=(2,), z_dim=2, hidden=(16, 16))
    fit = ppgen.fit(pair, adversarial_data(), backend="adversarial", critic_hidden=(16, 16), **ADVERSARIAL)
    return {"pair": pair.state_dict(), "critic": fit.critic.state_dict()}, fit.history


if __name__ == "__main__":
    out = Path(sys.argv[1])
    rank = os.environ.get("RANK", "0")
    from ppgen.inference import distributed

    group = distributed.join("cpu")
    torch.save(svi_gradients(group.rank, group.world), out / f"gradients-rank{rank}.pt")
    for kind, train in (("svi", train_svi), ("adversarial", train_adversarial), ("vae", train_vae)):
        weights, history = train()
        torch.save({"weights": weights, "history": history}, out / f"{kind}-rank{rank}.pt")
