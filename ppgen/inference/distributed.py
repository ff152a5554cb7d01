r"""Data-parallel training on ``torch.distributed``: N processes, each on its shard of every batch.

Launched by ``torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT] -m ppgen train ...``
(or ``ppgen train --nproc N`` on one machine, :func:`launch`), which set ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; the training loop joins the process group
(:func:`join`: gloo on CPUs, NCCL on GPUs, one GPU per local rank) and hands the engines a
:class:`Group`. What one step does, so that N processes on a batch of B train exactly as one
process on the whole batch:

* every rank draws the epoch's seeded permutation and takes rows ``[r·B/N, (r+1)·B/N)`` of each
  step's batch of B (``B`` must divide by N); the data is read whole by every process;
* after the backward pass the gradients of all parameters travel in **one** flat all-reduce
  (with the step's loss and a has-a-gradient flag per parameter): *summed* for an objective that
  sums over the data plate (SVI's ELBO: one process on B sums B terms, so the plate scaling is
  that of one process on the whole batch), *averaged* for one that is a batch mean (the
  adversarial losses). This is what Horovod's ``DistributedOptimizer`` does for Pyro (pyro-ppl
  issue 2570); ``DistributedDataParallel`` would overlap the reduction with the backward pass but
  needs the loss computed in a wrapped module's ``forward``, which Pyro's ELBOs (and ``RenyiELBO``'s
  inner backward) are not;
* the reduced loss decides a NaN stop, so every rank stops at the same step;
* at the start the ranks take rank 0's weights and buffers; at the end of every epoch floating-point
  buffers (batch-norm statistics) are averaged and the others (counters) and parameters without
  gradient are rank 0's. A network whose step changes state outside the gradients reduces its own
  batch statistics (:mod:`ppgen.nn.parallel`; the VQ-VAE's EMA codebook), exactly;
* the draws of the pair's sample sites are one process's, draw for draw (:class:`GlobalDraws`): every rank
  keeps a copy of the one-process torch stream (seeded by the epoch's seed) and, at each latent site of the
  data plate, draws from it what one process draws for the whole batch of B — the same call on the same
  shape, so the stream advances on every rank as it does in one process — and keeps its own B/N rows.
  A global site (outside the data plate) is drawn from it whole, the same on every rank. The noise of
  example i is therefore fixed by (run seed, epoch, step, i), whatever N. This covers the
  sites whose sampler fills its noise in one flat pass independent of the parameters (Normal,
  MultivariateNormal, LowRankMultivariateNormal, and Independent / masked / transformed versions of these:
  IAF guides; a point mass draws nothing); the batch dims left of the data plate may only be the ELBO's
  particle plate. Any other site (a Dirichlet, a Gamma's rejection sampler, a discrete site sampled, a
  plate outside the data plate) is drawn from the process's own stream, said once in one line: its
  processes then train as one process in distribution, not draw for draw. A family objective's draws
  (``ppgen.ppl.uniform`` / ``normal`` / ``randint``, one row per example: DDPM's timestep and noise) are
  drawn the same way, whole batch from the shared stream, own rows kept; so is a network's whole-batch
  draw (:func:`ppgen.nn.parallel.whole_batch_draws`: the VQ-VAE's restarts). Other randomness (dropout,
  HMC inside training) comes from the process's own stream, seeded apart from the shared one and from
  the other ranks'; one process interleaves such draws with the sites' in its one stream, so a pair that
  has them trains as one process in distribution only.

Only rank 0 writes (run directory, checkpoints, progress bar). A checkpoint holds no trace of N: a
run resumes with any number of processes. A lost peer (a killed rank, a broken link) stops the others
at their next collective with one line (:class:`PeerLost`), within ``PPGEN_DIST_TIMEOUT`` seconds
(default 300) at worst.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from pyro.poutine.messenger import Messenger
from torch import distributed as dist

from ppgen.errors import UserError
from ppgen.nn import parallel
from ppgen.ppl.routing import example_draws


class PeerLost(UserError):
    """Another process of a data-parallel run stopped (killed, crashed, unreachable)."""


def launched() -> int:
    """The number of processes a launcher (torchrun, ``--nproc``) started this one among (1: none)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")) or 0)


def is_writer() -> bool:
    """Whether this process writes files and progress (rank 0, or the only process)."""
    return int(os.environ.get("RANK", "0") or 0) == 0 if launched() > 1 else True


def rank_seed(seed: int, rank: int) -> int:
    """Torch's seed on rank ``rank`` for a step seeded ``seed``; rank 0's is ``seed`` itself."""
    return (seed + rank * 0x9E3779B97F4A7C15) % (2**63)


def own_seed(seed: int, group: Group) -> int:
    """The seed of this process's own torch stream in an epoch seeded ``seed``: ``seed`` itself when training alone;
    in a data-parallel run one per rank and none equal to ``seed``, which seeds the stream every rank shares for the
    sample sites (:class:`GlobalDraws`)."""
    return seed if group.world == 1 else rank_seed(seed, group.rank + 1)


@dataclass(frozen=True)
class Group:
    """This process's place in a data-parallel run (``world == 1``: training alone, every method a no-op)."""

    rank: int = 0
    world: int = 1

    def local_batch(self, batch: int) -> int:
        return batch // self.world

    def shard(self, x: torch.Tensor, order: torch.Tensor, step: int, batch: int) -> torch.Tensor:
        """This rank's rows of step ``step``'s batch of ``batch`` rows of ``x`` in ``order``."""
        size = batch // self.world
        start = step * batch + self.rank * size
        return x[order[start : start + size]]

    def reduce_step(self, params: Iterable[torch.nn.Parameter], values: list[float], *, mean: bool) -> list[float]:
        """Sum (or average, ``mean``) the gradients of ``params`` and the step's ``values`` over the ranks."""
        if self.world == 1:
            return values
        params = [p for p in params if p.requires_grad]
        if not params:
            return self.reduce_values(values, mean=mean)
        ref = params[0]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(ref.dtype)
                          for p in params]
                         + [torch.tensor([p.grad is not None for p in params], dtype=ref.dtype, device=ref.device),
                            torch.tensor(values, dtype=ref.dtype, device=ref.device)])
        _collective(dist.all_reduce, flat)
        if mean:
            flat /= self.world
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            offset += n
        has_grad = flat[offset : offset + len(params)]
        for p, flag in zip(params, has_grad.tolist(), strict=True):
            if flag == 0:
                p.grad = None
        return flat[offset + len(params) :].tolist()

    def reduce_values(self, values: list[float], *, mean: bool) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        _collective(dist.all_reduce, t)
        return (t / self.world if mean else t).tolist()

    def take_rank0(self, modules: Iterable[torch.nn.Module]) -> None:
        """Every rank takes rank 0's parameters and buffers (as DistributedDataParallel does at the start)."""
        if self.world == 1:
            return
        for module in modules:
            for t in list(module.parameters()) + list(module.buffers()):
                _collective(dist.broadcast, t.data, 0)

    def sync_buffers(self, modules: Iterable[torch.nn.Module]) -> None:
        """Floating-point buffers averaged over the ranks; other buffers and parameters without gradient: rank 0's."""
        if self.world == 1:
            return
        for module in modules:
            for t in module.buffers():
                if t.is_floating_point():
                    _collective(dist.all_reduce, t)
                    t /= self.world
                else:
                    _collective(dist.broadcast, t, 0)
            for p in module.parameters():
                if not p.requires_grad:
                    _collective(dist.broadcast, p.data, 0)


class ShardScale(Messenger):
    """Scale a shard's sites so that the sum over processes is one process's ELBO on the whole batch.

    Terms of the data plate at scale 1 (the plate is the shard) are the shard's own: kept. A site outside the
    data plate (a global latent) is counted by every process: scaled 1/N. A site in a subsampled data plate
    (``plate(size=num_data, subsample_size=b)``) carries Pyro's num_data/b, N times one process's num_data/B:
    scaled 1/N.
    """

    def __init__(self, world: int, data_plate: str):
        super().__init__()
        self.world, self.data_plate = world, data_plate

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample":
            return
        frame = next((f for f in msg["cond_indep_stack"] if f.name == self.data_plate), None)
        if frame is None or (frame.full_size is not None and frame.full_size != frame.size):
            msg["scale"] = msg["scale"] / self.world



#: the samplers that fill their noise in one flat pass, whatever their parameters: a draw of shape (N, ...) holds
#: the values one draw of shape (N·b, ...) holds, in the same order
FLAT_NOISE = (torch.distributions.Normal, torch.distributions.MultivariateNormal,
              torch.distributions.LowRankMultivariateNormal)
#: the particle plate of Pyro's vectorized ELBOs: its dim is a broadcast of the guide's parameters
PARTICLE_PLATE = "num_particles_vectorized"


def noise_kind(fn: torch.distributions.Distribution) -> str:
    """How a site's draws split over processes: ``"flat"`` (every leaf sampler in :data:`FLAT_NOISE`, under
    Independent / masked / transformed wrappers), ``"none"`` (a point mass: nothing drawn) or ``"own"`` (anything
    else: drawn per process)."""
    from pyro.distributions import Delta, MaskedDistribution

    if isinstance(fn, (torch.distributions.Independent, MaskedDistribution, torch.distributions.TransformedDistribution)):
        return noise_kind(fn.base_dist)
    if isinstance(fn, Delta):
        return "none"
    return "flat" if isinstance(fn, FLAT_NOISE) else "own"


def draw_rows(fn: torch.distributions.Distribution, position: int, group: Group) -> torch.Tensor:
    """Rows ``[r·b, (r+1)·b)`` along batch dim ``position`` (counted from the left) of what ``fn`` with that dim
    grown ``group.world``-fold draws, ``r`` this rank, ``b`` that dim's size in ``fn`` — from torch's current stream,
    consuming it as the whole draw does.

    A leaf is expanded to ``(N,) + batch_shape`` and drawn in one call: the flat noise of that draw is the flat noise
    of the whole batch's. Its row ``n·L + l`` of the ``(N·L, b, ...)`` view (``L`` the product of the dims left of
    ``position``) holds the noise one process puts at left index ``m = n·L + l`` as ``(m // N, (m % N)·b + j)``; so
    rows ``r, r + N, ...`` are this rank's for every left index, with the parameters of ``l`` in place of those of
    ``m // N`` — the same wherever the left dims are broadcasts (the particle plate), which the caller checks.
    Transforms and wrappers act on this rank's rows alone, as they act on each row of the whole draw.
    """
    from pyro.distributions import MaskedDistribution

    if isinstance(fn, (torch.distributions.Independent, MaskedDistribution)):
        return draw_rows(fn.base_dist, position, group)
    if isinstance(fn, torch.distributions.TransformedDistribution):
        x = draw_rows(fn.base_dist, position, group)
        for transform in fn.transforms:
            x = transform(x)
        return x
    grown = fn.expand(torch.Size((group.world,)) + fn.batch_shape)
    value = grown.rsample() if grown.has_rsample else grown.sample()
    left = math.prod(fn.batch_shape[:position])
    rows = value.reshape((group.world * left,) + value.shape[1 + position:])[group.rank :: group.world]
    return rows.reshape(fn.batch_shape + fn.event_shape)


class GlobalDraws(Messenger):
    """Draw each latent site of the data plate as one process draws it for the whole batch, and keep this rank's rows.

    Used as a context around a step's ELBO on every rank of a data-parallel run (it sits outside the ELBO's own
    handlers, so it sees each site as finally shaped, particle plate included, and leaves alone a value that replay,
    enumeration or conditioning has set). The draws come from a :class:`~ppgen.nn.parallel.SharedStream` seeded
    with the epoch's seed, which one process uses as its only stream: see the module docs for which sites are
    covered; the others are drawn from the process's own stream, said once (on rank 0) per site. While it is
    entered, a network's own whole-batch draws (:func:`ppgen.nn.parallel.whole_batch_draws`) use that stream too.
    """

    def __init__(self, group: Group, data_plate: str, seed: int, device: torch.device | str = "cpu"):
        super().__init__()
        self.group, self.data_plate = group, data_plate
        self.stream = parallel.SharedStream(seed, device)

    def __enter__(self) -> GlobalDraws:
        parallel.share_stream(self.stream)  # a network's whole-batch draws (the VQ-VAE's restarts) come from it too
        self._examples = example_draws(self.example_rows)  # and a family objective's per-example draws
        self._examples.__enter__()
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        parallel.share_stream(None)
        self._examples.__exit__(None, None, None)
        super().__exit__(*exc)

    def example_rows(self, draw, shape: tuple[int, ...]) -> torch.Tensor:
        """This rank's rows of ``draw`` for the whole batch (``shape[0]`` rows here, N times that in all), drawn
        from the shared stream as one process draws them."""
        n = shape[0]
        with self.stream:
            whole = draw((n * self.group.world,) + tuple(shape[1:]))
        return whole[self.group.rank * n : (self.group.rank + 1) * n]

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or msg["is_observed"] or msg["value"] is not None or msg["done"]:
            return
        frame = next((f for f in msg["cond_indep_stack"] if f.name == self.data_plate), None)
        fn = msg["fn"]
        if frame is None:  # a global site: every rank draws what one process draws, from its copy of the stream
            with self.stream:
                msg["value"] = fn(*msg["args"], **msg["kwargs"])
            return
        kind = noise_kind(fn)
        if kind == "none":
            return
        position = len(fn.batch_shape) + frame.dim if frame.dim is not None else -1
        outside = {f.dim for f in msg["cond_indep_stack"] if f.name == PARTICLE_PLATE}
        broadcast_left = all(size == 1 or i - len(fn.batch_shape) in outside
                             for i, size in enumerate(fn.batch_shape[:max(position, 0)]))
        if kind == "own" or position < 0 or fn.batch_shape[position] != frame.size or not broadcast_left:
            self._notice(msg["name"], fn)
            return
        with self.stream, torch.set_grad_enabled(torch.is_grad_enabled() and fn.has_rsample):
            msg["value"] = draw_rows(fn, position, self.group)

    def _notice(self, name: str, fn) -> None:
        if self.group.rank == 0 and name not in _NOTICED:
            _NOTICED.add(name)
            print(f"ppgen: site '{name}' ({type(fn).__name__}) is drawn by each of the {self.group.world} processes "
                  "from its own stream: they train as one process in distribution, not draw for draw",
                  file=sys.stderr)


_NOTICED: set[str] = set()


def _collective(op, *args) -> None:
    try:
        op(*args)
    except (RuntimeError, dist.DistError) as err:  # gloo/NCCL: a peer closed its connection or timed out
        first = re.sub(r"^\[[^\]]*\]\s*", "", str(err).strip().splitlines()[0]).split(". ")[0][:120] or type(err).__name__
        raise PeerLost(f"process {dist.get_rank()} of {dist.get_world_size()} lost a peer of the data-parallel run "
                       f"({first}); stopped") from None


def join(device: str) -> Group:
    """Join the process group a launcher set up (no-op when training alone, or when already joined)."""
    world = launched()
    if world == 1:
        return Group()
    if not dist.is_available():
        raise UserError("this torch has no torch.distributed; train with one process")
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            if not torch.cuda.is_available():
                raise UserError(f"--device {device} under torchrun but no CUDA GPU is visible; use --device cpu")
            torch.cuda.set_device(local_rank())
        timeout = datetime.timedelta(seconds=float(os.environ.get("PPGEN_DIST_TIMEOUT", "300")))
        try:
            dist.init_process_group(backend, timeout=timeout)
        except (RuntimeError, ValueError, dist.DistError) as err:
            raise UserError(f"could not join the data-parallel run ({str(err).splitlines()[0][:160]}); check "
                            "MASTER_ADDR/MASTER_PORT (torchrun sets them) and that every process started") from None
    return Group(rank=dist.get_rank(), world=dist.get_world_size())


def leave() -> None:
    """Leave the process group (at the end of a launched run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(batch: int, group: Group) -> None:
    if batch % group.world:
        raise UserError(f"a batch of {batch} does not split over {group.world} processes; give --batch-size a "
                        f"multiple of {group.world}")


def device_of(device: str) -> str:
    """Under a launcher, ``cuda`` means this process's GPU, ``cuda:LOCAL_RANK``."""
    if launched() > 1 and device == "cuda":
        return f"cuda:{local_rank()}"
    return device


# -- the one-machine launcher ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or ``taskset``'s share), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _meminfo_bytes(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def resident_bytes() -> int | None:
    """This process's resident memory (Linux ``/proc/self/statm``), None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def check_nproc(nproc: int) -> None:
    """Refuse, in one line, more data-parallel processes than the machine runs side by side: one per usable core
    (each process computes; more only wait on each other), and no more than the available memory holds at this
    process's size (each one imports the same libraries before it reads any data: a lower bound of its need)."""
    cores = usable_cores()
    if nproc > cores:
        raise UserError(f"--nproc {nproc}: this machine gives this process {cores} core{'s' * (cores != 1)}, and "
                        f"each training process needs one; use --nproc {cores} or fewer")
    available, size = _meminfo_bytes("MemAvailable"), resident_bytes()
    if available and size and nproc * size > available:
        fits = max(1, available // size)
        raise UserError(f"--nproc {nproc}: {available / 2**30:.1f} GiB of memory is available and each process "
                        f"takes at least {size / 2**20:.0f} MiB before it reads the data; use --nproc {fits} or "
                        "fewer")


def launch(nproc: int, argv: list[str], grace_s: float = 30.0) -> int:
    """Run ``python -m ppgen ARGV`` in ``nproc`` processes on this machine, as torchrun does; their exit code.

    When one process fails, the others stop at their next collective with their own line; any still
    running after ``grace_s`` seconds are terminated.
    """
    check_nproc(nproc)
    env = {**os.environ, "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # as torchrun: no oversubscription
    procs = [subprocess.Popen([sys.executable, "-m", "ppgen", *argv],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(nproc)]
    failed_at = None
    try:
        while any(p.poll() is None for p in procs):
            if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                _stop(procs, grace_s)
            time.sleep(0.05)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: each process keeps what it has and ends
        _stop(procs, grace_s)
        raise
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c != 0), 0)


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM to the processes still running (each ends as after Ctrl-C); SIGKILL to any still running
    ``grace_s`` seconds later (one blocked in a collective cannot run its handler)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in procs:
        if p.poll() is None:
            p.kill()


__all__ = ["GlobalDraws", "Group", "PeerLost", "ShardScale", "check_batch", "device_of", "draw_rows",
           "is_writer", "join", "launch", "launched", "leave", "noise_kind", "own_seed", "rank_seed"]
