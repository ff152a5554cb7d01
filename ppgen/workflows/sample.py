"""``ppgen sample``: draws from a run's pair (or the pair corrected by rejection, or sampling in fewer steps) into a
picture or a .npy file."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ppgen import plots, runs
from ppgen.errors import UserError
from ppgen.workflows.rejection import ratio_sampler


def sample_run(run_dir: Path, n: int, out: Path, seed: int = 0, steps: int | None = None,
               rejection: dict | None = None, labels: int | Sequence[int] | None = None) -> None:
    """``n`` draws of the run's pair into ``out`` (.png: a grid; .npy: the array). ``steps``: sample in that many
    steps (a pair that samples in steps, ``pair.samples_in_steps``); ``rejection``: the options of
    :func:`ratio_sampler` (steps, quantile, seed), drawing from the pair corrected by rejection; ``labels``:
    conditional generation x ~ p(x | y) of a pair with input columns (``pair.generate(n, labels)``: one label for
    all n draws, or n labels)."""
    runs.check_output_file(out, (".png", ".npy"))
    if labels is not None:
        if rejection is not None or steps is not None:
            raise UserError("--label draws from the pair itself: drop --rejection and --steps")
        _check_labels(runs.load_pair(run_dir), run_dir)
    sampler = ratio_sampler(run_dir, **rejection) if rejection is not None else runs.load_pair(run_dir)
    if steps is not None:
        if rejection is not None or not sampler.samples_in_steps:
            raise UserError(f"--steps applies to a pair that samples in steps ({', '.join(steps_families())}), "
                            "without --rejection")
        sampler = sampler.in_steps(steps)
    torch.manual_seed(seed)
    with torch.no_grad():
        x = sampler.generate(n) if labels is None else sampler.generate(n, labels)
    if out.suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, x.numpy())
        runs.atomic_write_bytes(out, buffer.getvalue())
    else:
        given = "" if labels is None else f" given label {labels}" if isinstance(labels, int) else " given labels"
        plots.sample_grid(x, out, f"{n} samples from {run_dir}{given}")


def _check_labels(pair, run_dir: Path) -> None:
    """``--label`` needs a pair with input columns whose ``generate(n, labels)`` takes them."""
    import inspect

    if not pair.inputs:
        raise UserError(f"--label needs a pair that generates given an input column (a label); {run_dir} holds a "
                        f"{pair.name or type(pair).__name__} that takes no input columns: drop --label")
    parameters = inspect.signature(pair.generate).parameters.values()
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    if len(positional) < 2:
        raise UserError(f"{pair.who} takes input columns ({', '.join(pair.inputs)}) but its generate(n) takes no "
                        "labels: give it generate(n, labels) to sample given them, or drop --label")


def steps_families() -> list[str]:
    """The registered families that sample in a chosen number of steps."""
    from ppgen import models

    return sorted(name for name, cls in models.REGISTRY.items() if cls.sample_steps_option is not None)
