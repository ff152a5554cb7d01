"""Pictures: sample grids, reconstructions beside inputs, loss curves, latent scatter plots, SBC rank histograms."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    import io

    from ppgen.runs import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def tile(images: torch.Tensor, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> one (rows*H, cols*W[, C]) array."""
    x = images.detach().cpu().float().clamp(0, 1).numpy()
    n, c, h, w = x.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    canvas = np.ones((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, ncol)
        canvas[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = x[i]
    return canvas[0] if c == 1 else canvas.transpose(1, 2, 0)


def sample_grid(samples: torch.Tensor, path: Path, title: str = "samples") -> Path:
    """Images as a grid, or 2-D points as a scatter plot."""
    plt = _plt()
    if samples.ndim == 2:
        fig, ax = plt.subplots(figsize=(4, 4))
        pts = samples.detach().cpu().numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        ax.set_aspect("equal")
    else:
        fig, ax = plt.subplots(figsize=(6, 6))
        ax.imshow(tile(samples), cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    ax.set_title(title)
    return _save(fig, path)


def style_transfer(x: torch.Tensor, styles: torch.Tensor, path: Path, title: str | None = None) -> Path:
    """Analogies (Kingma et al. 2014, Fig. 1): each row an input image (first column), then the images decoded from
    its style z under every class y (``styles``: (rows, classes, *image shape))."""
    plt = _plt()
    rows, classes = styles.shape[:2]
    grid = torch.cat([x[:rows].unsqueeze(1), styles], 1).reshape(rows * (classes + 1), *x.shape[1:])
    fig, ax = plt.subplots(figsize=(0.6 * (classes + 1), 0.6 * rows + 0.5))
    ax.imshow(tile(grid.detach().cpu(), ncol=classes + 1), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title or "input, then its style z decoded under y = 0, 1, ...")
    ax.axis("off")
    return _save(fig, path)


def reconstructions(x: torch.Tensor, recon: torch.Tensor, path: Path, n: int = 16) -> Path:
    """Inputs (top row of each pair) above their reconstructions."""
    plt = _plt()
    x, recon = x[:n], recon[:n]
    pairs = torch.stack([x, recon], 1).reshape(-1, *x.shape[1:])  # x0, r0, x1, r1, ...
    rows = torch.cat([pairs[0::2], pairs[1::2]], 0) if x.ndim == 4 else pairs
    fig, ax = plt.subplots(figsize=(8, 1.4))
    ax.imshow(tile(rows, ncol=len(x)), cmap="gray", vmin=0, vmax=1)
    ax.set_title("inputs (top) and reconstructions E[x | z = mean of q(z|x)] (bottom)")
    ax.axis("off")
    return _save(fig, path)


def loss_curve(history: list[dict], path: Path) -> Path:
    """Training objective and validation ELBO per epoch (critic and generator losses for adversarial runs)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    epochs = [row["epoch"] for row in history]
    if "loss_d" in history[0]:
        ax.plot(epochs, [row["loss_d"] for row in history], label="critic loss")
        ax.plot(epochs, [row["loss_g"] for row in history], label="generator loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss per example")
        ax.legend()
        ax.grid(alpha=0.3)
        return _save(fig, path)
    if "elbo" in history[0]:
        ax.plot(epochs, [row["elbo"] for row in history], label="train objective (ELBO)")
    else:  # a family's own objective (a loss, not an ELBO): on its own axis
        ax.plot(epochs, [-row["objective"] for row in history], label="minus the train objective (own estimator)")
    if any("val_elbo" in row for row in history):
        ax.plot([r["epoch"] for r in history if "val_elbo" in r], [r["val_elbo"] for r in history if "val_elbo" in r],
                label="validation ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per example")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def latent_scatter(z: torch.Tensor, labels: torch.Tensor | None, path: Path) -> Path:
    """Posterior means in 2-D (first two principal components when z has more than two dimensions)."""
    plt = _plt()
    pts = z.detach().cpu().numpy()
    title = "posterior means"
    if pts.shape[1] > 2:
        from sklearn.decomposition import PCA

        pts = PCA(2, random_state=0).fit_transform(pts)
        title += " (PCA)"
    elif pts.shape[1] == 1:
        pts = np.concatenate([pts, np.zeros_like(pts)], 1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    if labels is None:  # no colours, so no colour map (matplotlib warns about an unused cmap)
        ax.scatter(pts[:, 0], pts[:, 1], s=4)
    else:
        sc = ax.scatter(pts[:, 0], pts[:, 1], c=labels.cpu().numpy(), s=4, cmap="tab10")
        fig.colorbar(sc, ax=ax, label="label")
    ax.set_title(title)
    return _save(fig, path)


def sbc_histograms(rows: dict[str, tuple[np.ndarray, list[str], np.ndarray]], draws: int, path: Path,
                   bins: int = 10) -> Path:
    """SBC rank histograms (Talts et al. 2018): one row per guide, one panel per test quantity.

    ``rows`` maps a guide's label to (ranks (N, m) in 0..``draws``, the m quantity names, their χ² p-values).
    The grey band is the central 99% of a bin's count under uniform ranks (binomial).
    """
    from scipy import stats

    plt = _plt()
    ncol = max(len(names) for _, names, _ in rows.values())
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.3 * ncol, 1.9 * len(rows)), squeeze=False)
    for i, (label, (ranks, names, pvalues)) in enumerate(rows.items()):
        n = len(ranks)
        share = np.histogram(np.arange(draws + 1), bins=bins, range=(0, draws + 1))[0] / (draws + 1)
        low, high = stats.binom.ppf(0.005, n, share.mean()), stats.binom.ppf(0.995, n, share.mean())
        for j, ax in enumerate(axes[i]):
            if j >= len(names):
                ax.axis("off")
                continue
            ax.axhspan(low, high, color="0.85")
            ax.hist(ranks[:, j], bins=bins, range=(0, draws + 1), color="C0" if pvalues[j] > 0.01 else "C3")
            ax.set_title(f"{names[j]}  p={pvalues[j]:.2g}", fontsize=8)
            ax.set_yticks([])
            ax.set_xticks([0, draws])
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def kl_per_dim_bars(kl: dict[str, list[float]], path: Path, ncol: int = 4) -> Path:
    """One bar chart per model of KL(q(z_j|x) ‖ p(z_j)) per latent dimension, dimensions sorted by KL (collapse)."""
    plt = _plt()
    names = list(kl)
    ncol = min(ncol, len(names))
    nrow = -(-len(names) // ncol)
    top = max(max(v) for v in kl.values()) if names else 1.0
    fig, axes = plt.subplots(nrow, ncol, figsize=(3 * ncol, 2.3 * nrow), squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names):
        values = sorted(kl[name], reverse=True)
        ax.bar(range(len(values)), values, color="tab:blue")
        ax.set_title(f"{name}\nKL {sum(values):.2f} nats", fontsize=9)
        ax.set_ylim(0, top * 1.05 + 1e-6)
        ax.set_xlabel("latent dim (sorted)", fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes[0][0].set_ylabel("KL per dim (nats)")
    fig.tight_layout()
    return _save(fig, path)
