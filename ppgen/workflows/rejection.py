"""Density-ratio rejection sampling of a run (``--rejection`` of ``ppgen sample`` / ``evaluate``): the ratio
classifier, trained once and cached in the run directory, and its report."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ppgen import runs
from ppgen.errors import UserError
from ppgen.workflows.common import mode_metrics, run_data
from ppgen.workflows.evaluate import evaluate_run_samples

#: the cached classifier in a run directory
REJECTION = "rejection.pt"


def ratio_sampler(run_dir: Path, steps: int | None = None, quantile: float = 0.999, seed: int = 0,
                  progress: bool | None = None):
    """The run's pair corrected by density-ratio rejection sampling (:mod:`ppgen.inference.rejection`).

    The classifier, an MLP (a convolutional one costs ~6x more per step on a CPU), is trained for
    ``steps`` (default 10,000 on vectors, 2,000 on images: ~2 min on a 2-core CPU for MNIST)
    against the run's grey-level training data and cached in
    ``rejection.pt`` (keyed by the model weights' digest, ``steps`` and ``seed``); the bound
    M is recomputed for ``quantile`` on every call.
    """
    from ppgen.inference.rejection import fit_ratio_sampler
    from ppgen.nn.critics import critic_for

    run_dir = Path(run_dir)
    pair = runs.load_pair(run_dir)
    data = run_data(runs.read_config(run_dir), grey_levels=True)
    steps = steps or (2_000 if len(pair.x_shape) == 3 else 10_000)
    weights_file, _ = runs.selected_weights(run_dir)  # model.pt, or the checkpoint of a run not finished
    digest = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    key = {"model_sha256": digest, "steps": steps, "seed": seed}
    classifier = None
    cache = run_dir / REJECTION
    if cache.exists():
        try:
            saved = runs.load_torch(cache)
        except UserError:  # a damaged cache is only a cache: train the classifier again
            saved = {}
        if isinstance(saved, dict) and saved.get("key") == key:
            classifier = critic_for(pair.x_shape, net="mlp")
            classifier.load_state_dict(saved["classifier"])
    sampler = fit_ratio_sampler(pair, data, steps=steps, net="mlp", quantile=quantile, seed=seed, progress=progress,
                                classifier=classifier)
    if classifier is None:
        runs.save_torch(cache, {"key": key, "classifier": sampler.classifier.state_dict()})
    return sampler


def evaluate_rejection(run_dir: Path, metrics: list[str], steps: int | None = None, quantile: float = 0.999,
                       n: int | None = None, seed: int = 0, progress: bool | None = None) -> dict:
    """The classifier's held-out report, acceptance rate, mode coverage (ring8/grid25) and ``metrics``
    (fid/kid/is/pr) of the run's pair corrected by density-ratio rejection."""
    sampler = ratio_sampler(run_dir, steps=steps, quantile=quantile, seed=seed, progress=progress)
    out = dict(sampler.report)
    out.update(mode_metrics(sampler, runs.read_config(run_dir).get("data", {}).get("name"), seed=seed))
    if metrics:
        out["sample_quality"] = evaluate_run_samples(run_dir, metrics, n=n, seed=seed, sampler=sampler)
    return out
