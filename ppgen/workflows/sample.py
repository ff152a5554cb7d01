"""``ppgen sample``: draws from a run's pair (or the pair corrected by rejection, or sampling in fewer steps) into a
picture or a .npy file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ppgen import plots, runs
from ppgen.errors import UserError
from ppgen.workflows.rejection import ratio_sampler


def sample_run(run_dir: Path, n: int, out: Path, seed: int = 0, steps: int | None = None,
               rejection: dict | None = None) -> None:
    """``n`` draws of the run's pair into ``out`` (.png: a grid; .npy: the array). ``steps``: sample in that many
    steps (a pair that samples in steps, ``pair.samples_in_steps``); ``rejection``: the options of
    :func:`ratio_sampler` (steps, quantile, seed), drawing from the pair corrected by rejection."""
    runs.check_output_file(out, (".png", ".npy"))
    sampler = ratio_sampler(run_dir, **rejection) if rejection is not None else runs.load_pair(run_dir)
    if steps is not None:
        if rejection is not None or not sampler.samples_in_steps:
            raise UserError(f"--steps applies to a pair that samples in steps ({', '.join(steps_families())}), "
                            "without --rejection")
        sampler = sampler.in_steps(steps)
    torch.manual_seed(seed)
    with torch.no_grad():
        x = sampler.generate(n)
    if out.suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, x.numpy())
        runs.atomic_write_bytes(out, buffer.getvalue())
    else:
        plots.sample_grid(x, out, f"{n} samples from {run_dir}")


def steps_families() -> list[str]:
    """The registered families that sample in a chosen number of steps."""
    from ppgen import models

    return sorted(name for name, cls in models.REGISTRY.items() if cls.sample_steps_option is not None)
