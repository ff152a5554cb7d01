r"""Sample quality: FID, KID, Inception Score and precision/recall in a learned feature space.

With features f (the penultimate layer of a classifier) of n real and m generated examples:

* FID (Heusel et al., 2017): ‖μ_r − μ_g‖² + tr(Σ_r + Σ_g − 2(Σ_r Σ_g)^{1/2}), the Fréchet
  distance between Gaussians fitted to the two feature sets — torchmetrics'
  ``FrechetInceptionDistance`` with a custom feature extractor.
* KID (Bińkowski et al., 2018): the unbiased MMD² with the cubic kernel
  k(a, b) = (aᵀb / d + 1)³, averaged over random subsets — torchmetrics'
  ``KernelInceptionDistance``; its expectation is 0 when both sets come from one distribution.
* IS (Salimans et al., 2016): exp E_x KL(p(y|x) ‖ p(y)) from the classifier's logits —
  torchmetrics' ``InceptionScore``; between 1 and the number of classes.
* Precision / recall (Kynkäänniemi et al., 2019): the real manifold is the union of balls
  around each real feature with radius its distance to its k-th nearest real neighbour
  (k = 3); precision = share of generated features inside it, recall = share of real
  features inside the generated manifold built the same way. torchmetrics has no such
  metric, hence the hand-written :func:`precision_recall` (exact k-NN, chunked).

The feature space is that of a small classifier ppgen trains on the data set's own labels
(:func:`feature_classifier`, offline, cached on disk by a fingerprint of the data and
settings; its test accuracy is reported beside the metrics), or of any network the user
passes (Inception-v3 where the user has its weights): ``classifier.features(x)`` gives the
features and ``classifier(x)`` the logits.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ppgen.errors import UserError
from ppgen.models.base import samples_from
from ppgen.progress import progress, track

METRICS = ("fid", "kid", "is", "pr")
_VERSION = 2


class _Given(nn.Module):
    """Identity 'extractor' so torchmetrics works on features computed once by ppgen."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f


def _flat(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x.reshape(x.shape[0], -1).double()


def fid(real_features: torch.Tensor, fake_features: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (torchmetrics)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    r, f = _flat(real_features), _flat(fake_features)
    metric = FrechetInceptionDistance(feature=_Given(r.shape[1])).double()
    metric.update(r, real=True)
    metric.update(f, real=False)
    return float(metric.compute())


def kid(real_features: torch.Tensor, fake_features: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """KID mean and standard deviation over ``subsets`` random subsets (torchmetrics; seeded)."""
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    r, f = _flat(real_features), _flat(fake_features)
    size = min(subset_size, len(r), len(f))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_Given(r.shape[1]), subsets=subsets, subset_size=size)
    metric.update(r, real=True)
    metric.update(f, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """IS mean and standard deviation over ``splits`` (torchmetrics; seeded shuffle)."""
    import warnings

    from torchmetrics.image.inception import InceptionScore

    logits = _flat(logits)
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore", UserWarning)  # the feature-buffer note; std of a single split
        metric = InceptionScore(feature=_Given(logits.shape[1]), splits=splits)
        metric.update(logits)
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std) if splits > 1 else 0.0


def _kth_radius(a: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each row of ``a`` to its k-th nearest other row."""
    out = []
    for s in range(0, len(a), chunk):
        d = torch.cdist(a[s : s + chunk], a)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the 1st is the point itself (distance 0)
    return torch.cat(out)


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    out = []
    for s in range(0, len(points), chunk):
        d = torch.cdist(points[s : s + chunk], centres)
        out.append((d <= radii[None, :]).any(1))
    return torch.cat(out)


def precision_recall(real_features: torch.Tensor, fake_features: torch.Tensor, k: int = 3,
                     chunk: int = 1024) -> dict[str, float]:
    """Improved precision and recall of Kynkäänniemi et al. (2019) with k-NN balls (see module docs)."""
    r, f = _flat(real_features), _flat(fake_features)
    if min(len(r), len(f)) <= k:
        raise UserError(f"precision/recall with k={k} needs more than {k} real and generated examples")
    r_radius, f_radius = _kth_radius(r, k, chunk), _kth_radius(f, k, chunk)
    precision = _inside(f, r, r_radius, chunk).double().mean()
    recall = _inside(r, f, f_radius, chunk).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


# -- the feature classifier ------------------------------------------------------------------------
def _fingerprint(data, **settings) -> str:
    h = hashlib.sha256()
    for t in (data.train, data.train_labels, data.test, data.test_labels):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(sorted(settings.items())).encode())
    return h.hexdigest()[:20]


def _cache_dir(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("PPGEN_CACHE", Path.home() / ".cache" / "ppgen")) / "classifiers"


@torch.no_grad()
def accuracy(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    classifier.eval()
    hits = sum(int((classifier(x[s : s + batch]).argmax(-1) == y[s : s + batch]).sum()) for s in range(0, len(x), batch))
    return hits / len(x)


def feature_classifier(data, *, epochs: int = 8, num_features: int = 128, batch_size: int = 128, lr: float = 1e-3,
                       seed: int = 0, cache_dir: str | Path | None = None, use_cache: bool = True):
    """A :class:`~ppgen.nn.critics.FeatureClassifier` trained on ``data``'s labelled training split.

    Returns ``(classifier, test_accuracy)``. The trained weights are cached under
    ``cache_dir`` (default ``$PPGEN_CACHE/classifiers`` or ``~/.cache/ppgen/classifiers``),
    keyed by a hash of the data and these settings, and loaded with ``weights_only=True``.
    """
    from ppgen.nn.critics import FeatureClassifier

    if data.train_labels is None or data.test_labels is None or len(data.test) == 0:
        raise UserError(f"{data.name}: the feature classifier needs labelled training and test examples; pass your "
                        "own network (classifier=...) for unlabelled data")
    n_classes = int(max(data.train_labels.max(), data.test_labels.max())) + 1
    settings = dict(epochs=epochs, num_features=num_features, batch_size=batch_size, lr=lr, seed=seed, v=_VERSION)
    path = _cache_dir(cache_dir) / f"{data.name.replace('/', '_')}-{_fingerprint(data, **settings)}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureClassifier(data.x_shape, n_classes, num_features)
        cached = _load_cached_classifier(net, path) if use_cache else None
        if cached is not None:
            return net.eval(), cached
        _train_classifier(net, data.train.float(), data.train_labels.long(), epochs, batch_size, lr, seed)
        with torch.no_grad():
            net.feature_scale.fill_(embed(net, data.train.float())[0].pow(2).mean().sqrt().clamp_min(1e-8))
    acc = accuracy(net, data.test.float(), data.test_labels.long())
    if use_cache:
        _write_whole({"weights": net.state_dict(), "test_accuracy": acc}, path)
    return net.eval(), acc


def _write_whole(saved: dict, path: Path) -> None:
    """Saved to a temporary file of its own in ``path``'s folder, then renamed over ``path``: a reader sees
    the old file or the new one, never a part, and two processes writing the same cache at once do not collide."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save(saved, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_cached_classifier(net: nn.Module, path: Path) -> float | None:
    """Load the cached weights at ``path`` into ``net`` and return their test accuracy; None if there are none
    or the cache is damaged (truncated, not ours, another shape: only a cache, so the classifier is trained again)."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, weights_only=True)
        accuracy = float(saved["test_accuracy"])
        net.load_state_dict(saved["weights"])
    except Exception:
        return None
    return accuracy


def _train_classifier(net, x, y, epochs, batch_size, lr, seed) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    net.train()
    report = progress(epochs * math.ceil(len(x) / batch_size), "training the feature classifier (cached after)")
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), batch_size):
            idx = order[s : s + batch_size]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            report.update(1)
    report.close()
    net.eval()


@torch.no_grad()
def embed(classifier: nn.Module, x: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) of ``x`` under ``classifier``: ``classifier.features(x)`` and ``classifier(x)``."""
    classifier.eval()
    feats, logits = [], []
    for s in track(range(0, len(x), batch), f"classifier features of {len(x)} examples"):
        xb = x[s : s + batch].float()
        f = classifier.features(xb)
        feats.append(f)
        logits.append(classifier(xb))
    return torch.cat(feats), torch.cat(logits)


def sample_quality(samples, data, metrics: Sequence[str] = METRICS, *, n: int | None = None, classifier=None,
                   reference: torch.Tensor | None = None, seed: int = 0, cache_dir=None) -> dict:
    """FID, KID, IS and precision/recall of ``samples`` (a tensor, or a pair with ``generate``) against ``data``.

    The reference set is ``data.test`` (or ``reference``); ``n`` generated examples (default:
    as many as the reference). Without ``classifier`` ppgen's cached feature classifier is used
    and its test accuracy returned as ``classifier_accuracy``.
    """
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise UserError(f"unknown sample metric(s) {sorted(unknown)}; choose from {', '.join(METRICS)}")
    out: dict = {}
    if classifier is None:
        classifier, out["classifier_accuracy"] = feature_classifier(data, cache_dir=cache_dir)
    real = (data.test if reference is None else reference).float()
    n = n or len(real)
    if samples_from(samples):
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            samples = torch.cat([samples.generate(min(500, n - s)).detach().cpu()
                                 for s in track(range(0, n, 500), f"generating {n} samples")])
    samples = torch.as_tensor(samples).float()
    if tuple(samples.shape[1:]) != tuple(real.shape[1:]):
        raise UserError(f"samples are shaped {tuple(samples.shape[1:])} but the data {tuple(real.shape[1:])}")
    f_real, _ = embed(classifier, real)
    f_fake, logits = embed(classifier, samples)
    if "fid" in metrics:
        out["fid"] = fid(f_real, f_fake)
    if "kid" in metrics:
        out["kid"], out["kid_std"] = kid(f_real, f_fake, seed=seed)
    if "is" in metrics:
        out["is"], out["is_std"] = inception_score(logits, seed=seed)
    if "pr" in metrics:
        out.update(precision_recall(f_real, f_fake))
    out["n_real"], out["n_fake"] = len(real), len(samples)
    return out
