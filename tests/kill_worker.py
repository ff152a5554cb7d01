"""A ``ppgen`` command that kills itself with a real signal at a chosen moment of a run (tests/test_lifecycle.py).

``python tests/kill_worker.py MOMENT SIGNAL ARGS...`` runs ``ppgen ARGS`` and sends itself SIGNAL (KILL or TERM)

* ``first-epoch``: in the middle of the first epoch, before any checkpoint;
* ``mid-epoch``: in the middle of epoch 2 (the torch engines tick every step; the JAX engine ticks once for its
  compiled epoch, so there the moment is after epoch 2's steps, before its checkpoint);
* ``checkpoint-write``: while the checkpoint of epoch 2 is written, half its bytes in the temporary file;
* ``after-last-epoch``: once the last epoch's checkpoint is written, before model.pt;
* ``final-evaluation``: in the final stage, model.pt written, while the pictures are drawn (metrics.json not yet).

A stage command (``ppgen prior RUN``) has the moments ``after-last-epoch`` (its last epoch's checkpoint written, the
run's model.pt not) and ``final-evaluation`` (model.pt written, samples.png not).

The patches only decide *when*; the signal is real, so what is left on disk is what a killed process leaves.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's ppgen, not an installed one

from ppgen import runs  # noqa: E402
from ppgen.inference import loop  # noqa: E402

MOMENTS = ("first-epoch", "mid-epoch", "checkpoint-write", "after-last-epoch", "final-evaluation")


def die(how: signal.Signals) -> None:
    """Send ``how`` to this process: SIGKILL ends it here; SIGTERM's handler (ppgen.cli) raises here."""
    os.kill(os.getpid(), how)


def kill_in_epoch(epoch: int, how: signal.Signals) -> None:
    """Die at the middle step of ``epoch`` (counted by the loop's progress ticks)."""
    real = loop.progress_bar

    def progress_bar(total: int, desc: str, enabled: bool):
        bar = real(total, desc, enabled)
        if not desc.startswith(f"epoch {epoch}/"):
            return bar
        update = bar.update
        done = [0]

        def counted(count: int = 1) -> None:
            update(count)
            done[0] += count
            if done[0] >= max(1, total // 2):
                die(how)

        bar.update = counted
        return bar

    loop.progress_bar = progress_bar


def kill_in_checkpoint_write(number: int, how: signal.Signals) -> None:
    """Die while writing the ``number``-th checkpoint.pt: half its bytes in the temporary file, nothing renamed."""
    real = runs.atomic_write_bytes
    seen = [0]

    def atomic_write_bytes(path: Path, payload: bytes) -> None:
        if Path(path).name == runs.CHECKPOINT:
            seen[0] += 1
            if seen[0] == number:
                partial = Path(path).parent / f".{runs.CHECKPOINT}.k1ll3d.tmp"
                partial.write_bytes(payload[: len(payload) // 2])
                die(how)
        real(path, payload)

    runs.atomic_write_bytes = atomic_write_bytes


def kill_before_writing(name: str, how: signal.Signals) -> None:
    """Die just before the first write of the run file ``name`` (model.pt)."""
    real = runs.save_torch

    def save_torch(path: Path, obj) -> None:
        if Path(path).name == name:
            die(how)
        real(path, obj)

    runs.save_torch = save_torch


def kill_in_pictures(how: signal.Signals) -> None:
    """Die while the final stage draws the pictures (``ppgen train``) or the samples (a stage)."""
    from ppgen import plots

    def sample_grid(*args, **kwargs) -> None:
        die(how)

    plots.sample_grid = sample_grid


def arm(moment: str, how: signal.Signals) -> None:
    if moment == "first-epoch":
        kill_in_epoch(1, how)
    elif moment == "mid-epoch":
        kill_in_epoch(2, how)
    elif moment == "checkpoint-write":
        kill_in_checkpoint_write(2, how)
    elif moment == "after-last-epoch":
        kill_before_writing(runs.MODEL, how)
    elif moment == "final-evaluation":
        kill_in_pictures(how)
    else:
        raise SystemExit(f"unknown moment {moment!r}; one of {', '.join(MOMENTS)}")


if __name__ == "__main__":
    from ppgen.cli import main

    arm(sys.argv[1], getattr(signal, f"SIG{sys.argv[2]}"))
    sys.exit(main(sys.argv[3:]))
