r"""The one training loop: every training engine (torch SVI, JAX SVI, adversarial) runs inside it.

An engine has NumPyro's functional shape (:class:`Engine`): ``init`` builds its state
from the pair, the data, the options and an optional checkpoint; ``epoch`` runs one
shuffled pass and returns the new state with that epoch's figures; ``snapshot`` /
``restore`` keep and bring back its weights; ``sync`` puts the current weights into
the pair's torch modules; ``checkpoint`` gives what a resume needs, as tensors and
plain values. The loop owns everything around it, once for all engines:

* seeding: epoch e reseeds torch's RNG with :func:`epoch_seed` (seed, e) and hands the
  engine that seed for its shuffle, so a run resumed from a checkpoint of epoch e is the
  uninterrupted run;
* the effective batch ``min(batch_size, n)`` and ``n // batch`` steps (drop-last: fixed
  shapes); figures per epoch are divided by the examples seen, ``steps × batch``;
* history rows (``epoch``, the engine's figures, ``seconds``, ``wall``, ``images_per_s``),
  the ``callback`` for held-out metrics, the best epoch by ``monitor``;
* a NaN or infinite loss or weight: the last good epoch's weights come back and
  ``fit.stopped`` says what happened and what to do;
* the progress report (stderr: a bar on a terminal, a line every ~10 s off one; :mod:`ppgen.progress`), and
  ``on_epoch_end(fit)``, where a run writes its checkpoint;
* data parallelism: under ``torchrun`` (or ``ppgen train --nproc N``) the loop joins the process
  group and hands the engine a :class:`~ppgen.inference.distributed.Group` in the plan: the engine
  takes ``plan.rows(order, step)`` (its shard of the step's batch) and reduces its gradients with
  ``plan.group.reduce_step``; the loop gives every process rank 0's weights at the start, its own
  torch seed (the epoch's seed itself is that of the stream the ranks share for the sample sites,
  :class:`~ppgen.inference.distributed.GlobalDraws`), and reduces buffers after every epoch
  (:mod:`ppgen.inference.distributed`). An engine without ``modules`` (the JAX engine) is single-process.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch

from ppgen.errors import UserError
from ppgen.inference import distributed
from ppgen.inference.distributed import Group
from ppgen.inference.fit import Fit, TrainState


class CannotRun(Exception):
    """An engine cannot run this pair with these options, found by its ``init`` (the message says why)."""


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (0-based) of a run seeded ``seed``."""
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**62)


@dataclass
class EpochPlan:
    """What the loop hands an engine for one epoch."""

    index: int  # 0-based
    epochs: int
    seed: int  # epoch_seed(run seed, index)
    x: torch.Tensor  # this epoch's training examples, on the device
    batch: int  # the whole batch of a step, over all processes
    steps: int
    tick: Callable[..., None] = lambda n=1, **postfix: None
    group: Group = field(default_factory=Group)  # data-parallel: this process's place (world 1: alone)
    inputs: tuple[torch.Tensor, ...] = ()  # the pair's input columns, row i beside x[i], on the device
    examples: int = 0  # the examples one step's loss stands for; 0: the batch

    def rows(self, order: torch.Tensor, step: int) -> torch.Tensor:
        """This process's rows of step ``step``'s batch in the epoch's ``order`` (all of them when alone)."""
        return self.group.shard(self.x, order, step, self.batch)

    def input_rows(self, order: torch.Tensor, step: int) -> tuple[torch.Tensor, ...]:
        """The input columns' rows beside :meth:`rows` (the same examples, in the same order)."""
        return tuple(self.group.shard(column, order, step, self.batch) for column in self.inputs)
    @property
    def step_examples(self) -> int:
        """The examples one step's loss stands for (:func:`examples_per_step`); an epoch's per-example figure is
        its summed loss over ``steps × step_examples``."""
        return self.examples or self.batch


@dataclass
class EpochResult:
    """An engine's figures for one epoch (already per example where they are sums), or why it stopped."""

    metrics: dict[str, float] = field(default_factory=dict)
    stop: str | None = None  # e.g. "loss became nan", "weights became NaN or infinite"
    stop_step: int | None = None  # 0-based step of the epoch where it happened, if known


@dataclass(frozen=True)
class Engine:
    """A training engine in NumPyro's functional shape (see the module docs)."""

    name: str
    init: Callable[[Any, Any, Any, dict | None], Any]
    epoch: Callable[[Any, EpochPlan], tuple[Any, EpochResult]]
    snapshot: Callable[[Any], Any]
    restore: Callable[[Any, Any], Any]
    sync: Callable[[Any], None]
    checkpoint: Callable[[Any], dict]
    advice: str = "Lower the learning rate (--lr) or check the data"
    #: the torch modules a data-parallel run keeps equal across processes (weights and buffers); none: the
    #: engine runs in one process only
    modules: Callable[[Any], list] = lambda state: []


def examples_per_step(pair, x: torch.Tensor, batch: int, inputs: tuple[torch.Tensor, ...] = ()) -> int:
    """The examples one step's loss stands for: the data plate's full size N when the model subsamples it
    (``pyro.plate("data", N, subsample_size=B)``: its terms are scaled by N/B, so the loss estimates the
    objective of all N examples), else the ``batch``. From one trace of the model at ``x`` (the RNG untouched)."""
    from pyro import poutine

    from ppgen import sites

    devices = [x.device] if x.is_cuda else []
    was_training = pair.training
    pair.eval()  # a look, not a step: batch norm's running statistics must not move (resume stays bit-exact)
    try:
        with torch.random.fork_rng(devices=devices), pyro.validation_enabled(False), torch.no_grad(), \
                warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not registered in the param store.*")  # frozen weights
            where = sites.layout(poutine.trace(pair.model).get_trace(x, *inputs), pair.data_plate)
    except UserError:  # no site in the data plate: nothing is scaled
        return batch
    finally:
        pair.train(was_training)
    return where.full_size if where.full_size != where.examples else batch


def batching(n: int, batch_size: int) -> tuple[int, int]:
    """(batch, steps) of an epoch over ``n`` examples: the batch is at most ``n``; the last partial batch is
    dropped (fixed shapes, as the baselines do)."""
    batch = max(1, min(batch_size, n))
    return batch, max(1, n // batch)


def objective_row(pair, loss_per_example: float) -> dict[str, float]:
    """An SVI epoch's figure: ``elbo`` (minus the loss) for the ELBO objectives; ``objective`` (the loss itself) for
    a pair trained on its own estimator, which need not be an ELBO (DDPM's L_simple, a VQ-VAE's commitment terms)."""
    return {"objective": loss_per_example} if pair.has_objective else {"elbo": -loss_per_example}


def progress_bar(total: int, desc: str, enabled: bool | None):
    """The progress report of ``total`` steps on stderr (:func:`ppgen.progress.progress`; silent when ``enabled`` is
    false)."""
    from ppgen.progress import progress

    return progress(total, desc, enabled)


def check_torch_device(device: str) -> torch.device:
    """The torch device for ``device`` ('cpu', 'cuda', 'cuda:N'), refused in one line when it is not there.

    Under a data-parallel launcher ``cuda`` is this process's GPU, ``cuda:LOCAL_RANK``."""
    device = distributed.device_of(device)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} asked for but no CUDA GPU is visible; use --device cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible; use cuda:0")
    return torch.device(device)


def state_from_checkpoint(checkpoint: dict) -> TrainState:
    """The loop state of a checkpoint (also of one written before the engines had their own state)."""
    saved = dict(checkpoint["state"])
    if "engine" not in saved:  # checkpoints of ppgen <= 0.1: the engine's entries sat beside the loop's
        loop_keys = {"epoch", "best_epoch", "best_score", "best"}
        saved = {**{k: v for k, v in saved.items() if k in loop_keys},
                 "engine": {k: v for k, v in saved.items() if k not in loop_keys}}
    names = {f.name for f in dataclasses.fields(TrainState)}
    return TrainState(**{k: v for k, v in saved.items() if k in names})


def initial_state(engine: Engine, pair, data, options: Any, resume: dict | None = None) -> Any:
    """``engine``'s initial state for ``pair`` in training mode (batch statistics in batch norm, whatever an
    evaluation left; on a fresh start, what the pair fixes from its training data): what :func:`run` starts from; a
    backend that tries engines in turn calls it itself."""
    pair.train()
    if resume is None:
        pair.initialize_from_data(data.train)
    return engine.init(pair, data, options, resume)


def run(engine: Engine, pair, data, options: Any, *, backend: str, resume: dict | None = None,
        progress: bool | None = None, callback: Callable[[Fit], dict | None] | None = None,
        on_epoch_end: Callable[[Fit], None] | None = None, extra_options: dict | None = None,
        state: Any = None) -> Fit:
    """Train ``pair`` on ``data`` with ``engine`` for ``options.epochs`` epochs (in total, counting a resume),
    from ``state`` (built by :func:`initial_state`) or from a new one."""
    from ppgen.inference.options import as_dict

    batch, steps = batching(len(data.train), options.batch_size)
    group = distributed.join(options.device)
    if group.world > 1:
        distributed.check_batch(batch, group)
    state = initial_state(engine, pair, data, options, resume) if state is None else state
    if group.world > 1:
        if not engine.modules(state):
            raise UserError(f"the {engine.name} engine trains in one process only; start it without torchrun")
        group.take_rank0(engine.modules(state))
    fit = Fit(pair=pair, backend=backend, options={**as_dict(options), **(extra_options or {}),
                                                   "engine": engine.name})
    if resume is not None:
        fit.history = list(resume["history"])
        fit.state = state_from_checkpoint(resume)
    fit.state.engine = engine.checkpoint(state)
    monitor = getattr(options, "monitor", None)
    show = progress is not False and group.rank == 0
    wall = fit.history[-1]["wall"] if fit.history else 0.0
    device = next(iter(pair.parameters()), torch.empty(0)).device
    last_good = engine.snapshot(state)
    examples = (examples_per_step(pair, data.train_epoch(0)[:batch].to(device), batch,
                                  tuple(c[:batch].to(device) for c in data.train_epoch_inputs(0, pair.inputs)))
                if backend == "svi" else 0)
    with pyro.validation_enabled(False):
        for index in range(fit.state.epoch, options.epochs):
            seed = epoch_seed(options.seed, index)
            torch.manual_seed(distributed.own_seed(seed, group))
            start = time.perf_counter()
            bar = progress_bar(steps, f"epoch {index + 1}/{options.epochs}", show)

            def tick(count: int = 1, bar=bar, **postfix) -> None:
                bar.update(count)
                if postfix:
                    bar.set_postfix(**postfix)

            plan = EpochPlan(index=index, epochs=options.epochs, seed=seed, x=data.train_epoch(index).to(device),
                             batch=batch, steps=steps, tick=tick, group=group, examples=examples,
                             inputs=tuple(c.to(device) for c in data.train_epoch_inputs(index, pair.inputs)))
            try:
                state, result = engine.epoch(state, plan)
            except distributed.PeerLost as err:
                bar.close()
                raise distributed.PeerLost(f"{err} in epoch {index + 1}; the checkpoint of epoch {fit.state.epoch} "
                                           "is intact: resume from it (with any number of processes)") from None
            bar.close()
            group.sync_buffers(engine.modules(state))
            if result.stop is not None:
                state = engine.restore(state, last_good)
                engine.sync(state)
                where = (f"at epoch {index + 1}, step {result.stop_step + 1}" if result.stop_step is not None
                         else f"in epoch {index + 1}")
                fit.stopped = f"{result.stop} {where}; restored the weights of epoch {index}. {engine.advice}"
                return fit
            seconds = time.perf_counter() - start
            wall += seconds
            row = {"epoch": index + 1, **result.metrics, "seconds": seconds, "wall": wall,
                   "images_per_s": steps * batch / seconds}  # all processes together
            last_good = engine.snapshot(state)
            fit.state.epoch = index + 1
            if callback is not None or on_epoch_end is not None or monitor is not None:
                engine.sync(state)
                fit.state.engine = engine.checkpoint(state)
            fit.history.append(row)
            if callback is not None:
                row.update(callback(fit) or {})
            _keep_best(fit, row, monitor)
            if on_epoch_end is not None:
                on_epoch_end(fit)
    engine.sync(state)
    fit.state.engine = engine.checkpoint(state)
    return fit


def _keep_best(fit: Fit, row: dict, monitor: str | None) -> None:
    if monitor is None or monitor not in row:
        return
    if fit.state.best_score is None or row[monitor] > fit.state.best_score:
        fit.state.best_score = row[monitor]
        fit.state.best_epoch = row["epoch"]
        fit.state.best = copy.deepcopy(fit.pair.state_dict())


def restore_best(fit: Fit) -> Fit:
    """Load the weights of the best monitored epoch, if one was kept."""
    if isinstance(fit.state, TrainState) and fit.state.best is not None:
        fit.pair.load_state_dict(fit.state.best)
    return fit
