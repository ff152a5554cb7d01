r"""A family's training stage (:class:`ppgen.models.base.Stage`) as an engine of the one training loop.

A stage fits one part of a trained pair, ``stage.module(pair)``, with the rest fixed: by Adam on the mean
per-example loss

    L(θ) = (1/B) Σ_b  stage.loss(pair, e_b),    e = stage.examples(pair, x),

over minibatches of the examples ``e`` the stage derives from the training data ``x`` (a VQ-VAE's prior: the
codes k(x), loss −log p_θ(k)). Epoch ``i`` derives them from ``data.train_epoch(i)`` (a fresh binarization
under dynamic binarization gives fresh codes). The loop (:func:`ppgen.inference.loop.run`) supplies what every
engine gets: seeding, the NaN stop with the last good weights, history rows, the best epoch, checkpoints and
resume; the validation figure ``val_<metric>`` is the same loss on the validation split's examples.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ppgen.errors import UserError
from ppgen.inference.fit import Fit
from ppgen.inference.loop import Engine, EpochPlan, EpochResult, run
from ppgen.inference.options import device_name, option, positive_float, positive_int, seed_int


@dataclass(frozen=True)
class StageOptions:
    """Options of a stage's training (a stage's own defaults, ``Stage.options``, replace these)."""

    epochs: int = option(20, positive_int, "passes over the training examples (the new total when resuming)")
    batch_size: int = option(64, positive_int, "examples per step (at most the training set)")
    lr: float = option(1e-3, positive_float, "Adam learning rate")
    seed: int = option(0, seed_int, "random seed of shuffling")
    device: str = option("cpu", device_name, "cpu, cuda or cuda:N", cli=False)

    def __post_init__(self) -> None:
        from ppgen.inference.options import validate

        validate(self)


def stage_named(pair, name: str):
    """The stage ``name`` that ``pair``'s family declares, or a one-line UserError."""
    for stage in type(pair).stages:
        if stage.name == name:
            return stage
    raise UserError(f"{pair.who} has no stage {name!r}" + (f"; its stages: {', '.join(s.name for s in type(pair).stages)}"
                                                          if type(pair).stages else ""))


def stage_options(stage, values: dict[str, Any]) -> StageOptions:
    """The validated options of ``stage``: its own defaults, then ``values``."""
    from ppgen.inference.options import make

    return make(StageOptions, {**stage.options, **values})


class StageExamples:
    """The stage's examples of a data set, as the loop reads data: ``train`` (its length), ``train_epoch(i)``."""

    def __init__(self, pair, stage, data):
        self.pair, self.stage, self.data = pair, stage, data
        self.train = data.train
        self.seconds = 0.0  # how long the last ``train_epoch`` took to derive its examples
        self._derived: tuple[torch.Tensor, torch.Tensor] | None = None  # (data, examples) of the last epoch

    def examples(self, x: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
        """``stage.examples`` of ``x`` with the pair in evaluation mode and no gradient (the pair is fixed), ``chunk``
        examples at a time (the VQ-VAE's encoder on all 50,000 full-MNIST digits at once needs > 5 GB)."""
        was_training = self.pair.training
        self.pair.eval()
        try:
            with torch.no_grad():
                weight = next(self.pair.parameters(), None)
                x = x.to(weight.device if weight is not None else "cpu")
                return torch.cat([self.stage.examples(self.pair, x[i:i + chunk]) for i in range(0, len(x), chunk)])
        finally:
            self.pair.train(was_training)

    def train_epoch(self, index: int) -> torch.Tensor:
        """The examples of epoch ``index``'s training data (derived again only where those data changed: a fresh
        binarization gives fresh examples, fixed data keep theirs; the pair is fixed during the stage)."""
        start = time.perf_counter()
        x = self.data.train_epoch(index)
        if self._derived is None or self._derived[0] is not x:
            self._derived = (x, self.examples(x))
        self.seconds = time.perf_counter() - start
        return self._derived[1]

    def train_epoch_inputs(self, index: int, names: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
        """No input columns: a stage fits a module on examples derived from x alone."""
        return ()


@dataclass
class StageState:
    """The engine's state: the pair, the module being fitted and its optimizer."""

    pair: Any
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer


def stage_engine(stage) -> Engine:
    """The engine that fits ``stage.module(pair)`` by Adam on the stage's mean loss (module docs)."""

    def init(pair, data, options: StageOptions, resume: dict | None) -> StageState:
        module = stage.module(pair)
        optimizer = torch.optim.Adam(module.parameters(), lr=options.lr)
        saved = (resume or {}).get("state", {}).get("engine", {})
        if "optimizer" in saved:
            optimizer.load_state_dict(saved["optimizer"])
        return StageState(pair, module, optimizer)

    def epoch(state: StageState, plan: EpochPlan) -> tuple[StageState, EpochResult]:
        order = torch.randperm(len(plan.x), generator=torch.Generator().manual_seed(plan.seed)).to(plan.x.device)
        state.module.train()
        total = 0.0
        start = time.perf_counter()
        for step in range(plan.steps):
            batch = plan.rows(order, step)
            state.optimizer.zero_grad(set_to_none=True)
            loss = stage.loss(state.pair, batch).mean()
            value = float(loss.detach())
            if not math.isfinite(value):
                return state, EpochResult(stop=f"{stage.metric} became {value}", stop_step=step)
            loss.backward()
            state.optimizer.step()
            total += value * len(batch)
            plan.tick()
        state.module.eval()
        seconds = time.perf_counter() - start
        return state, EpochResult(metrics={stage.metric: total / (plan.steps * plan.batch),
                                           "examples_per_s": plan.steps * plan.batch / seconds})

    def restore(state: StageState, snapshot: dict) -> StageState:
        state.module.load_state_dict(snapshot)
        return state

    return Engine(name=f"stage {stage.name}", init=init, epoch=epoch,
                  snapshot=lambda state: copy.deepcopy(state.module.state_dict()), restore=restore,
                  sync=lambda state: None, checkpoint=lambda state: {"optimizer": state.optimizer.state_dict()},
                  advice="Lower the learning rate (--lr)")


def validation_loss(stage, examples: StageExamples) -> Callable[[Fit], dict]:
    """The callback that adds ``val_<metric>``, the stage's mean loss on the validation split's examples, and
    ``extract_seconds``, the time the epoch took to derive its training examples (``examples_per_s`` counts the
    training steps only)."""
    val = examples.examples(examples.data.val) if len(examples.data.val) else None

    def callback(fit: Fit) -> dict:
        row = {"extract_seconds": examples.seconds}
        if val is not None:
            stage.module(fit.pair).eval()
            with torch.no_grad():
                row[f"val_{stage.metric}"] = float(stage.loss(fit.pair, val).mean())
        return row

    return callback


def fit_stage(pair, name: str, data, *, resume: dict | None = None, progress: bool | None = False,
              on_epoch_end: Callable[[Fit], None] | None = None, **options: Any) -> Fit:
    """Fit the stage ``name`` of ``pair`` on the :class:`~ppgen.data.Dataset` (or tensor) ``data`` (options: epochs,
    batch_size, lr, seed; the stage's own defaults otherwise), then make the pair use it; one history row per
    epoch (``<metric>``, ``val_<metric>`` where there is validation data, ``examples_per_s`` over the training
    steps, ``extract_seconds`` deriving the epoch's examples, the loop's timings).

    Refused in one line where the stage cannot run yet (``stage.ready``). A NaN or infinite loss stops it with the
    last good epoch's weights (``fit.stopped`` says so); the pair then uses those.
    """
    from ppgen.data import Dataset, from_tensor

    if not isinstance(data, Dataset):  # a tensor of training examples
        data = from_tensor(torch.as_tensor(data))
    stage = stage_named(pair, name)
    problem = stage.ready(pair)
    if problem:
        raise UserError(problem)
    opts = stage_options(stage, options)
    examples = StageExamples(pair, stage, data)
    was_training = pair.training
    fit = run(stage_engine(stage), pair, examples, opts, backend=f"stage:{stage.name}", resume=resume,
              progress=progress, callback=validation_loss(stage, examples), on_epoch_end=on_epoch_end)
    if fit.history:
        stage.finish(pair)
    pair.train(was_training)
    return fit
