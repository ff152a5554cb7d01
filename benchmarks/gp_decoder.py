"""Issue 14: 1-nearest-neighbour classification error in a 2-D latent space on the 8x8 digits (Lawrence 2005;
Titsias & Lawrence 2010 report it on oil flow): the GP decoder (``gpvae``, encoder means) against
PCA and a VAE (encoder means), both latent models trained with the same epochs, batch size and learning rate.

    PYTHONPATH=. MPLBACKEND=Agg python benchmarks/gp_decoder.py --epochs 30 --out gp_decoder.png

1-NN is fitted on the training split's latents and scored on the test split's (grey levels, not binarized).
"""

from __future__ import annotations

import argparse
import json
import time

import matplotlib.pyplot as plt
import numpy as np
import pyro
import torch
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsClassifier

import ppgen
from ppgen.models.gpvae import GPVAE


def one_nn_error(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray) -> float:
    """Fraction of test points whose nearest training latent has another label."""
    return float(1 - KNeighborsClassifier(n_neighbors=1).fit(train, y_train).score(test, y_test))


def gp_latents(data, args) -> tuple[np.ndarray, np.ndarray, dict]:
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    pair = GPVAE(data.x_shape, 2, args.inducing, args.kernel, (128,), "gaussian", num_data=len(data.train))
    start = time.perf_counter()
    fit = ppgen.fit(pair, data, engine="torch", epochs=args.epochs, batch_size=128, lr=args.lr, seed=args.seed,
                    progress=False)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        train, test = (pair.encode(x)[0].numpy() for x in (data.train, data.test))
    return train, test, {"seconds": seconds, "val_elbo": fit.history[-1]["val_elbo"]}


def vae_latents(data, args) -> tuple[np.ndarray, np.ndarray]:
    """The same comparison for a VAE with a 2-D latent space (Gaussian likelihood on grey levels)."""
    torch.manual_seed(args.seed)
    pair = ppgen.models.get("vae")(data.x_shape, 2, "gaussian", (128,))
    ppgen.fit(pair, data, epochs=args.epochs, batch_size=128, lr=args.lr, seed=args.seed, progress=False)
    with torch.no_grad():
        return tuple(pair.encode(x)[0].numpy() for x in (data.train, data.test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--inducing", type=int, default=64)
    parser.add_argument("--kernel", default="rbf")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="gp_decoder.png")
    args = parser.parse_args()
    data = ppgen.data.load("digits", binarize=None)
    flat = {k: getattr(data, k).flatten(1).numpy() for k in ("train", "test")}
    labels = {k: np.asarray(getattr(data, f"{k}_labels")) for k in ("train", "test")}
    pca = PCA(2, random_state=args.seed).fit(flat["train"])
    latents = {"PCA": (pca.transform(flat["train"]), pca.transform(flat["test"]))}
    gp_train, gp_test, info = gp_latents(data, args)
    latents["VAE"] = vae_latents(data, args)
    latents[f"GP decoder ({args.kernel}, M={args.inducing})"] = (gp_train, gp_test)
    errors = {name: one_nn_error(tr, labels["train"], te, labels["test"]) for name, (tr, te) in latents.items()}
    print(json.dumps({"one_nn_error": errors, **info, "epochs": args.epochs}, indent=1))
    fig, axes = plt.subplots(1, len(latents), figsize=(5 * len(latents), 4.5))
    for ax, (name, (_, test)) in zip(axes, latents.items()):
        points = ax.scatter(test[:, 0], test[:, 1], c=labels["test"], cmap="tab10", s=8)
        ax.set_title(f"{name}: 1-NN error {errors[name]:.3f}")
    fig.colorbar(points, ax=axes, label="digit")
    fig.savefig(args.out, dpi=100)


if __name__ == "__main__":
    main()
