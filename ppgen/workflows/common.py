"""What several commands share: a run's data (loaded one way), the pair's device, quick ELBOs, mode coverage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ppgen import data as datasets
from ppgen import evaluation, runs
from ppgen.progress import heartbeat


def run_data(config: dict, grey_levels: bool = False) -> datasets.Dataset:
    """The data set of a run's ``config`` with the run's split and input columns (``data.inputs``: a CSV file's
    columns named by ``--inputs``; None: as the loader decides; ``data.labels``: keep that many training labels of
    ``data.label_column``, :func:`ppgen.data.keep_labels`); ``grey_levels``: without binarization (what
    generated examples are compared with: a Bernoulli pair's samples are its pixel probabilities, E[x|z])."""
    options = config.get("data", {})
    binarize = None if grey_levels else options.get("binarize", "default")
    inputs = options.get("inputs")
    data = datasets.load(options.get("name", "mnist"), binarize=binarize, seed=options.get("seed", 0),
                         split_seed=options.get("split_seed", 0), inputs=None if inputs is None else tuple(inputs))
    if options.get("labels") is not None:  # semi-supervised: keep that many training labels
        data = datasets.keep_labels(data, options["labels"], options.get("label_column", "y"),
                                    options.get("label_seed", 0))
    return data


def split_inputs(pair, data: datasets.Dataset, split: str, device: torch.device | None = None,
                 limit: int | None = None) -> tuple[torch.Tensor, ...]:
    """The pair's input columns (``pair.inputs``) of ``split``, row i beside example i, the first ``limit`` rows, on
    ``device``; ``()`` for a pair without inputs. The training split's are those beside ``train_epoch(0)``."""
    columns = data.train_epoch_inputs(0, pair.inputs) if split == "train" else data.inputs(split, pair.inputs)
    return tuple((c[:limit] if limit else c).to(device or c.device) for c in columns)


def metric_columns(pair, data: datasets.Dataset, split: str, device: torch.device | None = None,
                   limit: int | None = None) -> tuple[torch.Tensor, ...]:
    """The columns ``pair.family_metrics`` scores against (``pair.metric_inputs``) of ``split``, as
    :func:`split_inputs` gives a pair's inputs; ``()`` where the split lacks one of them."""
    names = pair.metric_inputs
    have = data.train_inputs if split == "train" else getattr(data, f"{split}_inputs")
    if not names or any(name not in have for name in names):
        return ()
    columns = data.train_epoch_inputs(0, names) if split == "train" else data.inputs(split, names)
    return tuple((c[:limit] if limit else c).to(device or c.device) for c in columns)


def check_split_inputs(pair, data: datasets.Dataset) -> None:
    """``pair.check_inputs`` on every non-empty split: a missing column or an entry the pair refuses is one line."""
    for split in ("train", "val", "test"):
        x = data.train_epoch(0) if split == "train" else getattr(data, split)
        if len(x) or split == "train":
            pair.check_inputs(x, split_inputs(pair, data, split), f"{data.name} {split} data")


def device_of(pair) -> torch.device:
    return next(pair.parameters()).device


def has_density(pair, x: torch.Tensor, inputs: tuple[torch.Tensor, ...] = (), guide: bool = True) -> bool:
    """Whether ELBO/IWAE apply: the pair has a guide and its observed site is not a Delta (an implicit generator).
    ``inputs``: the pair's input columns beside ``x``; ``guide=False``: whether p(x | z) is a density at all (AIS
    from the prior needs no guide)."""
    from pyro import poutine
    from pyro.distributions import Delta

    if guide and not pair.has_guide:
        return False
    with torch.no_grad():
        trace = poutine.trace(pair.model).get_trace(x, *inputs)
    observed = [s for s in trace.nodes.values() if s["type"] == "sample" and s["is_observed"]]
    return not any(isinstance(getattr(s["fn"], "base_dist", s["fn"]), Delta) for s in observed)


def quick_metrics(pair, data: datasets.Dataset, seed: int = 0) -> dict:
    """Single-sample ELBO on train/validation/test (seeded), each split with its input columns."""
    out: dict[str, Any] = {}
    pair.eval()
    with torch.random.fork_rng(devices=[]), heartbeat("ELBO on the train, validation and test splits"):
        torch.manual_seed(seed)
        for split in ("train", "val", "test"):
            x = data.train_epoch(0) if split == "train" else getattr(data, split)
            if len(x):
                device = device_of(pair)
                inputs = split_inputs(pair, data, split, device)
                out[f"{split}_elbo"] = float(evaluation.elbo(pair, x.to(device), inputs=inputs).mean())
    return out


#: the figures of mode coverage a run keeps (ring8/grid25)
MODE_KEYS = ("modes", "n_modes", "high_quality", "reverse_kl")


def mode_metrics(sampler, data_name: str, seed: int = 0) -> dict:
    """Mode coverage (modes captured, share of high-quality samples, reverse KL) of anything that generates, on
    ring8/grid25; else {}."""
    from ppgen.data.sources import MIXTURES
    from ppgen.evaluation.modes import evaluate_pair

    if data_name not in MIXTURES:
        return {}
    if isinstance(sampler, torch.nn.Module):
        sampler.eval()
    report = evaluate_pair(sampler, data_name, seed=seed)
    return {k: report[k] for k in MODE_KEYS}


def read_metrics(run_dir: Path) -> dict:
    """metrics.json of a run, or {} where it is missing or damaged."""
    try:
        metrics = json.loads((Path(run_dir) / runs.METRICS).read_text())
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}
