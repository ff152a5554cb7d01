"""The GPLVM papers' figure on the 8x8 digits — 1-nearest-neighbour classification error in a 2-D latent
space (Lawrence 2005; Titsias & Lawrence 2010 report it on oil flow) — and held-out log-likelihood, for PCA, PPCA,
a VAE tuned on the validation split and the GP decoder (``gpvae``), all on the same split (1,257 / 180 / 360) of
the grey levels in [0, 1] (not binarized), Gaussian likelihoods throughout.

    PYTHONPATH=. MPLBACKEND=Agg python benchmarks/gp_decoder.py --epochs 300 --out gp_decoder.png

* 1-NN is fitted on the training split's latents (encoder means; PPCA: the exact posterior means) and scored on
  the test split's.
* The VAE is tuned: hidden sizes x learning rates, each trained ``--epochs`` epochs; the configuration with the
  best validation ELBO is kept (the test split is not looked at).
* Held-out log-likelihood per test example (nats): PPCA exact (``PPCA.log_marginal`` with the maximum-likelihood
  W, μ, σ²); the VAE's IWAE_K; the GP decoder's IWAE_K over the latents with q(u) fixed. The GP's per-example
  log weight carries −KL(q(u) ‖ p(u))/N (its share of the training-set bound); the held-out figure adds it back:
  log ∫ p(z) exp(E_{q(u)} E_{p(f | u, z)} log p(y | f)) dz ≤ log E_{q(u)} p(y | u), the test point's predictive
  density under the decoder's variational posterior q(u) (Jensen, twice) — as the VAE's and PPCA's figures are
  the predictive densities under their point-estimated decoders. Both are printed.
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
from ppgen.evaluation import iwae
from ppgen.models.gpvae import GPVAE
from ppgen.models.ppca import PPCA


def one_nn_error(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray) -> float:
    """Fraction of test points whose nearest training latent has another label."""
    return float(1 - KNeighborsClassifier(n_neighbors=1).fit(train, y_train).score(test, y_test))


def encoded(pair, data) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        return tuple(pair.encode(x)[0].numpy() for x in (data.train, data.test))


def held_out_iwae(pair, x: torch.Tensor, k: int, seed: int) -> float:
    torch.manual_seed(seed)
    with torch.no_grad():
        return float(iwae(pair.eval(), x, k=k).mean())


def gp_decoder(data, args) -> dict:
    torch.manual_seed(args.seed)
    pyro.set_rng_seed(args.seed)
    pair = GPVAE(data.x_shape, 2, args.inducing, args.kernel, (128,), "gaussian", num_data=len(data.train))
    start = time.perf_counter()
    fit = ppgen.fit(pair, data, engine="torch", epochs=args.epochs, batch_size=128, lr=args.lr, seed=args.seed,
                    progress=False)
    seconds = time.perf_counter() - start
    bound = held_out_iwae(pair, data.test, args.k, args.seed)
    with torch.no_grad():
        kl_share = float(pair.kl_u()) / len(data.train)
    return {"latents": encoded(pair, data), "iwae": bound, "predictive": bound + kl_share, "seconds": seconds,
            "val_elbo": fit.history[-1].get("val_elbo")}


def tuned_vae(data, args) -> dict:
    """A VAE with a 2-D latent space, tuned on the validation ELBO over hidden sizes and learning rates."""
    trials = []
    for hidden in ((128,), (256, 256)):
        for lr in (1e-3, 3e-3):
            torch.manual_seed(args.seed)
            pair = ppgen.models.get("vae")(data.x_shape, 2, "gaussian", hidden)
            fit = ppgen.fit(pair, data, engine="torch", epochs=args.epochs, batch_size=128, lr=lr, seed=args.seed,
                            progress=False)
            trials.append((fit.history[-1]["val_elbo"], hidden, lr, pair))
            print(f"VAE hidden={hidden} lr={lr}: validation ELBO {trials[-1][0]:.2f}", flush=True)
    val, hidden, lr, pair = max(trials, key=lambda t: t[0])
    return {"latents": encoded(pair, data), "iwae": held_out_iwae(pair, data.test, args.k, args.seed),
            "chosen": {"hidden": hidden, "lr": lr, "val_elbo": val}}


def ppca(data) -> dict:
    flat = {k: getattr(data, k).flatten(1) for k in ("train", "test")}
    pair = PPCA((flat["train"].shape[1],), 2).fit_exact(flat["train"])
    with torch.no_grad():
        latents = tuple(pair.posterior(flat[k]).mean.numpy() for k in ("train", "test"))
        return {"latents": latents, "exact": float(pair.log_marginal(flat["test"]).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--inducing", type=int, default=64)
    parser.add_argument("--kernel", default="rbf")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--k", type=int, default=1000, help="IWAE samples for the held-out log-likelihood")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="gp_decoder.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = ppgen.data.load("digits", binarize=None)
    flat = {k: getattr(data, k).flatten(1).numpy() for k in ("train", "test")}
    labels = {k: np.asarray(getattr(data, f"{k}_labels")) for k in ("train", "test")}
    pca = PCA(2, random_state=args.seed).fit(flat["train"])
    rows = {"PCA": {"latents": (pca.transform(flat["train"]), pca.transform(flat["test"]))}, "PPCA": ppca(data)}
    rows["VAE (tuned)"] = tuned_vae(data, args)
    rows[f"GP decoder ({args.kernel}, M={args.inducing})"] = gp_decoder(data, args)
    for row in rows.values():
        tr, te = row.pop("latents")
        row["one_nn_error"] = one_nn_error(tr, labels["train"], te, labels["test"])
        row["_test"] = te
    print(f"{'model':28s} {'1-NN error':>10s} {'held-out log-lik (nats/example)':>34s}")
    for name, row in rows.items():
        ll = (f"{row['exact']:.2f} (exact)" if "exact" in row else
              f"{row['predictive']:.2f} (IWAE_{args.k}; {row['iwae']:.2f} with -KL/N)" if "predictive" in row else
              f"{row['iwae']:.2f} (IWAE_{args.k})" if "iwae" in row else "-")
        print(f"{name:28s} {row['one_nn_error']:10.3f} {ll:>34s}")
    print(json.dumps({name: {k: v for k, v in row.items() if k != "_test"} for name, row in rows.items()},
                     indent=1, default=str))
    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 4.5))
    for ax, (name, row) in zip(axes, rows.items()):
        points = ax.scatter(row["_test"][:, 0], row["_test"][:, 1], c=labels["test"], cmap="tab10", s=8)
        ax.set_title(f"{name}: 1-NN error {row['one_nn_error']:.3f}")
    fig.colorbar(points, ax=axes, label="digit")
    fig.savefig(args.out, dpi=100)


if __name__ == "__main__":
    main()
