"""Sample quality on full MNIST at equal CPU time: VAE, GAN, VQ-VAE (with its prior) and DDPM.

Every family is trained by ``ppgen.fit`` (the VQ-VAE's prior by ``fit_stage``, its second stage, as ``ppgen train
vqvae`` then ``ppgen train --stage prior`` do) on the 50,000 full-MNIST training digits (``--data mnist-full``:
dynamic binarization for the Bernoulli families, grey levels for the GAN) for a budget of **process CPU seconds**
(``time.process_time``: every thread of this process, so other jobs on a shared machine do not count), at
multiples of W (``--w``, CPU seconds; ``--budgets 1,4,30`` gives 1W, 4W, 30W). One training per family and seed
serves all its budgets: at the end of the first chunk whose clock reads past a budget, a copy of the pair is
kept (the snapshot) and training goes on to the next budget.

The loop's epochs are **chunks** of ``--chunk`` digits (1,000, a fiftieth of a pass; the VAE's 5,000), so a budget is met to within
one chunk even for a family whose full pass costs more than W; pass p is a fresh seeded permutation of the 50,000
digits (and, under dynamic binarization, a fresh Bernoulli draw of them, as ``Dataset.train_epoch(p)`` gives), cut
into ``50,000 // chunk`` chunks. "Epochs reached" is chunks × chunk / 50,000.

The VQ-VAE spends half of each budget on stage one (encoder, codebook, decoder) and the rest on its PixelCNN prior
over the 7×7 codes, fitted after stage one's snapshot on the same chunks.

Scores (:mod:`ppgen.evaluation.samples`: FID, KID, IS, improved precision/recall with k = 3) are taken in the
features of ppgen's feature classifier trained on the 50,000 grey-level training digits (``feature_classifier``,
cached on disk, test accuracy on the 10,000 test digits stated), ``--n`` generated images (Bernoulli families:
the pixel probabilities E[x | z]; DDPM: DDIM with ``--ddim`` steps, η = 0) against a seeded subset of
``--reference`` grey-level training digits. The floor: ``--n`` held-out grey-level test digits scored the same
way (what a perfect model would get at this N; FID is biased upwards at finite N).

Records go to a JSON-lines file (``--results``), one per (family, seed, budget), appended as each is scored; a
rerun skips every (family, seed) whose budgets are all there (resumable). ``report`` prints the table: family ×
budget, FID mean ± sd over seeds, KID, IS, precision, recall, epochs reached and CPU seconds.

    python benchmarks/mnist_quality.py train --seeds 1,2 --budgets 1,4 --w 10          # ~8 CPU-min
    python benchmarks/mnist_quality.py train --seeds 0 --budgets 1,4,30 --w 10         # ~25 CPU-min
    python benchmarks/mnist_quality.py report --figure docs/mnist_full_samples.png

(one training per family and seed serves all its budgets; separate commands per family run in parallel, each
process counting its own CPU seconds, and append to the same records).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ppgen  # noqa: E402
from ppgen.data import Dataset, load  # noqa: E402
from ppgen.evaluation.samples import embed, feature_classifier, fid, inception_score, kid, precision_recall  # noqa: E402
from ppgen.inference.stages import fit_stage  # noqa: E402
from ppgen.models import GAN, VAE  # noqa: E402
from ppgen.models.diffusion import DDPM  # noqa: E402
from ppgen.models.vqvae import VQVAE  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "mnist_quality.jsonl"
#: the feature classifier's settings on full MNIST (3 passes reach ≥ 0.99 test accuracy with its conv net)
CLASSIFIER_EPOCHS = 3


# -- the budget ------------------------------------------------------------------------------------------------
class BudgetReached(Exception):
    """The last budget was reached at the end of a chunk; the pair holds that chunk's weights."""


@dataclass
class Snapshot:
    """A copy of the pair taken at the end of the first chunk whose clock read at or past ``budget``."""

    budget: float
    pair: Any
    seconds: float
    chunks: int


@dataclass
class BudgetWatch:
    """Keeps a copy of the pair at each CPU budget in ``budgets`` (seconds, ascending) and stops training at the last.

    ``clock`` is ``time.process_time`` (process CPU seconds, every thread) unless a test passes a fake one.
    Call :meth:`start` before training and :meth:`after_chunk` at the end of every chunk (the loop's
    ``on_epoch_end``): a snapshot is kept for every budget the clock has passed and handed to ``on_snapshot``
    (scoring it; the clock's advance while it runs is not training time and is left out), and
    :class:`BudgetReached` is raised once the last budget is passed.
    """

    budgets: list[float]
    clock: Callable[[], float] = time.process_time
    on_snapshot: Callable[[Snapshot], None] | None = None
    snapshots: list[Snapshot] = field(default_factory=list)
    chunks: int = 0
    _start: float = 0.0
    _paused: float = 0.0

    def __post_init__(self) -> None:
        if not self.budgets or any(b <= 0 for b in self.budgets) or sorted(self.budgets) != list(self.budgets):
            raise ValueError(f"budgets must be positive and ascending, got {self.budgets}")

    def start(self) -> BudgetWatch:
        self._start = self.clock()
        return self

    def spent(self) -> float:
        """Training time so far: the clock's advance since :meth:`start`, less the time in ``on_snapshot``."""
        return self.clock() - self._start - self._paused

    def after_chunk(self, pair) -> None:
        self.chunks += 1
        spent = self.spent()
        while len(self.snapshots) < len(self.budgets) and spent >= self.budgets[len(self.snapshots)]:
            snapshot = Snapshot(self.budgets[len(self.snapshots)], copy.deepcopy(pair), spent, self.chunks)
            self.snapshots.append(snapshot)
            if self.on_snapshot is not None:
                paused = self.clock()
                with torch.random.fork_rng(devices=[]):
                    self.on_snapshot(snapshot)
                self._paused += self.clock() - paused
        if len(self.snapshots) == len(self.budgets):
            raise BudgetReached


class ChunkedEpochs(Dataset):
    """``full``'s training digits served ``size`` at a time: the loop's epoch ``e`` is chunk ``e mod k`` of pass
    ``e // k`` (k = n // size), pass p being ``full.train_epoch(p)`` (a fresh binarization under dynamic binarization)
    in a seeded permutation of its own. No validation split (the budget runs need none)."""

    def __init__(self, full: Dataset, size: int, seed: int = 0):
        n = len(full.train)
        if not 0 < size <= n:
            raise ValueError(f"chunk size must be in 1..{n}, got {size}")
        super().__init__(name=full.name, train=full.train[:size], val=full.val[:0], test=full.test,
                         train_labels=None if full.train_labels is None else full.train_labels[:size],
                         test_labels=full.test_labels, binarize=full.binarize, seed=full.seed,
                         train_inputs={k: v[:size] for k, v in full.train_inputs.items()},
                         val_inputs={k: v[:0] for k, v in full.val_inputs.items()}, test_inputs=full.test_inputs)
        self.full, self.size, self.per_pass, self.order_seed = full, size, n // size, seed
        self._pass: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def _rows(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        p, i = divmod(epoch, self.per_pass)
        if self._pass is None or self._pass[0] != p:
            order = torch.randperm(len(self.full.train), generator=torch.Generator().manual_seed(
                1_000_003 * self.order_seed + p))
            self._pass = (p, self.full.train_epoch(p), order)
        _, x, order = self._pass
        return x, order[i * self.size:(i + 1) * self.size]

    def train_epoch(self, epoch: int) -> torch.Tensor:
        x, rows = self._rows(epoch)
        return x[rows]

    def train_epoch_inputs(self, epoch: int, names) -> tuple[torch.Tensor, ...]:
        _, rows = self._rows(epoch)
        return tuple(c[rows] for c in self.full.inputs("train", names))

    def passes(self, chunks: int) -> float:
        """Passes over the full training set that ``chunks`` chunks make."""
        return chunks * self.size / len(self.full.train)


def train_to_budgets(fit: Callable[..., Any], data: ChunkedEpochs, budgets: list[float],
                     clock: Callable[[], float] = time.process_time, max_chunks: int = 10**7,
                     on_snapshot: Callable[[Snapshot], None] | None = None) -> BudgetWatch:
    """Run ``fit(data, epochs=max_chunks, on_epoch_end=...)`` (``ppgen.fit`` or ``fit_stage`` with the pair and its
    options bound) until the last of ``budgets`` CPU seconds; the watch holds a snapshot per budget, each handed
    to ``on_snapshot`` as it is taken."""
    watch = BudgetWatch(list(budgets), clock, on_snapshot).start()
    try:
        result = fit(data, epochs=max_chunks, on_epoch_end=lambda f: watch.after_chunk(f.pair))
    except BudgetReached:
        return watch
    if getattr(result, "stopped", None):
        raise RuntimeError(f"training stopped before its budget: {result.stopped}")
    raise RuntimeError(f"{max_chunks} chunks ran before the budget of {budgets[-1]:g} CPU s")


# -- the families ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """How a family is built and trained: its data (Bernoulli families on dynamically binarized digits, the GAN
    on grey levels), its pair, and the ``ppgen.fit`` call with its usual settings."""

    about: str
    grey: bool
    build: Callable[[], Any]
    fit: Callable[..., Any]
    chunk: int = 1000  # digits per loop epoch: the budget's granularity (a chunk's fixed cost is paid per chunk)


def _svi(**options) -> Callable[..., Any]:
    def fit(pair, data, seed: int, **loop) -> Any:
        return ppgen.fit(pair, data, backend="svi", seed=seed, progress=False, callback=None, **options, **loop)
    return fit


def _adversarial(**options) -> Callable[..., Any]:
    def fit(pair, data, seed: int, **loop) -> Any:
        return ppgen.fit(pair, data, backend="adversarial", seed=seed, progress=False, **options, **loop)
    return fit


FAMILIES: dict[str, Family] = {
    "vae": Family("VAE 784-400-50, Bernoulli, SVI (engine auto), batch 250, Adam 1e-3", False,
                  lambda: VAE((1, 28, 28), z_dim=50, hidden=(400,)), _svi(batch_size=250, lr=1e-3), chunk=5000),
    "gan": Family("GAN, MLP generator 64-256-512-784 (batch norm on the 512 layer), MLP critic 512-256, NS loss, "
                  "batch 50, Adam 2e-4", True,
                  lambda: GAN(x_shape=(1, 28, 28), z_dim=64, hidden=(256, 512)),
                  _adversarial(loss="ns", batch_size=50, lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999), critic_net="mlp",
                               critic_hidden=(512, 256))),
    "vqvae": Family("VQ-VAE, K = 64 codes on 7x7, D = 16, 64 channels, batch 100, Adam 1e-3; PixelCNN prior", False,
                    lambda: VQVAE((1, 28, 28), codes=64, code_dim=16, downsample=2, channels=64),
                    _svi(batch_size=100, lr=1e-3)),
    # x_0-prediction: an ε-predicting MLP with 512 < 784 units before its linear output layer puts ε̂ in a
    # 512-dimensional subspace, so L_simple ≥ 784 − 512 = 272 per digit at every t, and x̂_0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t
    # carries that error × 152 at t = T: its samples were noise (mean pixel 0.48) after 45 epochs
    "ddpm": Family("DDPM, MLP denoiser 512-512, T = 1000 linear, L_simple on x0 (x0-prediction), batch 100, "
                   "Adam 1e-3; DDIM, eta 0", False,
                   lambda: DDPM(denoiser="mlp", hidden=(512, 512), timesteps=1000, objective="simple",
                                prediction="x0"),
                   _svi(batch_size=100, lr=1e-3, engine="torch")),
}


def _gan_variant(about: str, hidden: tuple[int, ...] = (256, 512), z_dim: int = 64, batch_norm: str = "off",
                 **options) -> Family:
    settings = dict(loss="ns", batch_size=50, lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999), critic_net="mlp",
                    critic_hidden=(512, 256))
    return Family(about, True, lambda: GAN(x_shape=(1, 28, 28), z_dim=z_dim, hidden=hidden, batch_norm=batch_norm),
                  _adversarial(**{**settings, **options}))


#: the GAN row's settings varied one at a time (``--families gan-nobn,...``; not in the table's default rows): the
#: screen that found what kept the MLP GAN from collapsing onto one digit on full MNIST (batch norm in the generator)
GAN_VARIANTS: dict[str, Family] = {
    "gan-nobn": _gan_variant("GAN as the row without batch norm (the generator before it was the default)"),
    "gan-pack2": _gan_variant("GAN as gan-nobn, PacGAN critic over pairs (pack 2)", pack=2),
    "gan-lsgan": _gan_variant("GAN as gan-nobn, least-squares loss", loss="lsgan"),
    "gan-big": _gan_variant("GAN as gan-nobn, MLP generator 100-256-512-1024-784, batch 64", hidden=(256, 512, 1024),
                            z_dim=100, batch_size=64),
}
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
#: the share of each budget a family with a second stage spends on its first
STAGE_ONE_SHARE = {"vqvae": 0.5}


def fit_prior(snapshot: Snapshot, data: ChunkedEpochs, budget: float, seed: int, device: str = "cpu",
              clock: Callable[[], float] = time.process_time) -> Snapshot:
    """Fit the VQ-VAE's PixelCNN prior on ``snapshot``'s pair for the rest of ``budget`` (its stage two)."""
    rest = max(budget - snapshot.seconds, 1e-9)
    watch = train_to_budgets(
        lambda d, **loop: fit_stage(snapshot.pair, "prior", d, batch_size=100, seed=seed, device=device, **loop), data, [rest], clock)
    done = watch.snapshots[0]
    done.pair.eval()
    return Snapshot(budget, done.pair, snapshot.seconds + done.seconds, snapshot.chunks + done.chunks)


# -- scoring -------------------------------------------------------------------------------------------------
@dataclass
class Scorer:
    """The classifier and the reference features, computed once; :meth:`score` gives a sample set's figures."""

    classifier: Any
    accuracy: float
    reference: torch.Tensor
    seed: int = 0

    @classmethod
    def build(cls, grey: Dataset, n_reference: int, seed: int = 0, cache_dir=None) -> Scorer:
        classifier, accuracy = feature_classifier(grey, epochs=CLASSIFIER_EPOCHS, cache_dir=cache_dir)
        rows = torch.randperm(len(grey.train), generator=torch.Generator().manual_seed(seed))[:n_reference]
        features, _ = embed(classifier, grey.train[rows].float())
        return cls(classifier, accuracy, features, seed)

    def score(self, images: torch.Tensor) -> dict[str, float]:
        features, logits = embed(self.classifier, images.float())
        out: dict[str, float] = {"fid": fid(self.reference, features)}
        out["kid"], out["kid_std"] = kid(self.reference, features, seed=self.seed)
        out["is"], out["is_std"] = inception_score(logits, seed=self.seed)
        out.update(precision_recall(self.reference, features))
        out["n_fake"], out["n_real"] = len(images), len(self.reference)
        return out


def generate(pair, n: int, seed: int, ddim_steps: int) -> torch.Tensor:
    """``n`` images from ``pair`` (in chunks of 500; DDPM by DDIM with ``ddim_steps``, η = 0), seeded."""
    pair.eval()
    chunks = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for s in range(0, n, 500):
            m = min(500, n - s)
            chunks.append(pair.sample_ddim(m, ddim_steps, eta=0.0) if isinstance(pair, DDPM) else pair.generate(m))
    return torch.cat(chunks).detach().cpu().reshape(n, 1, 28, 28).clamp(0, 1)


# -- the records -----------------------------------------------------------------------------------------------
def read_records(path: Path) -> list[dict]:
    """The JSON-lines records at ``path`` (none if it is absent); a truncated last line (a killed run) is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_record(path: Path, record: dict) -> None:
    """Append one record as one line, flushed and synced (a crash leaves at most a truncated last line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def done(records: Iterable[dict], family: str, seed: int, budgets: list[float], w: float, n: int) -> bool:
    have = {r["times"] for r in records if r.get("family") == family and r.get("seed") == seed
            and r.get("w") == w and r.get("n") == n}
    return all(b in have for b in budgets)


# -- commands ------------------------------------------------------------------------------------------------
def run_family(name: str, seed: int, args, binary: Dataset, grey: Dataset, scorer: Scorer) -> None:
    """Train family ``name`` with ``seed`` to the last budget; score and record each budget's snapshot as it is
    taken (a budget recorded already is skipped; scoring time is not training time)."""
    family = {**FAMILIES, **GAN_VARIANTS}[name]
    chunk = args.chunk or family.chunk
    data = ChunkedEpochs(grey if family.grey else binary, chunk, seed)
    share = STAGE_ONE_SHARE.get(name, 1.0)
    clock = CLOCKS[args.clock]
    times_of = {share * t * args.w: t for t in args.budgets}
    recorded = {r["times"] for r in read_records(args.results) if (r.get("family"), r.get("seed"), r.get("w"),
                                                                   r.get("n")) == (name, seed, args.w, args.n)}

    def record(stage_one: Snapshot) -> None:
        times = times_of[stage_one.budget]
        if times in recorded:
            return
        snap = fit_prior(stage_one, data, times * args.w, seed, args.device, clock) if share < 1.0 else stage_one
        cpu = time.process_time()
        images = generate(snap.pair, args.n, seed, args.ddim)
        figures = scorer.score(images)
        entry = {"family": name, "about": family.about, "seed": seed, "times": times, "w": args.w, "n": args.n,
                 "clock": args.clock, "device": args.device,
                 "budget_cpu_s": times * args.w, "cpu_s": snap.seconds, "chunks": snap.chunks, "chunk": chunk,
                 "epochs": data.passes(stage_one.chunks),
                 "prior_epochs": data.passes(snap.chunks - stage_one.chunks) if share < 1.0 else None,
                 "stage_one_cpu_s": stage_one.seconds, "score_cpu_s": time.process_time() - cpu,
                 "load": os.getloadavg()[0], "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                 "classifier_accuracy": scorer.accuracy, "reference": len(scorer.reference),
                 "ddim_steps": args.ddim if name == "ddpm" else None, **figures}
        append_record(args.results, entry)
        if args.grids:
            grid = args.grids / f"{name}_seed{seed}_{times:g}W.pt"
            grid.parent.mkdir(parents=True, exist_ok=True)
            torch.save(images[:64].clone(), grid)
        print(f"  {name} {times:g}W seed {seed}: FID {figures['fid']:.2f}  KID {figures['kid']:.4f}  IS "
              f"{figures['is']:.2f}  P {figures['precision']:.3f}  R {figures['recall']:.3f}  "
              f"({entry['epochs']:.2f} epochs, {snap.seconds:.0f} CPU s, load {entry['load']:.1f})", flush=True)

    torch.manual_seed(seed)
    pair = family.build()
    wall = time.perf_counter()
    watch = train_to_budgets(lambda d, **loop: family.fit(pair, d, seed, device=args.device, **loop), data,
                             sorted(times_of), clock, on_snapshot=record)
    print(f"{name} seed {seed}: {watch.chunks} chunks ({data.passes(watch.chunks):.2f} epochs), "
          f"{watch.spent():.0f} CPU s of training, {time.perf_counter() - wall:.0f} wall s with scoring, load "
          f"{os.getloadavg()[0]:.1f}", flush=True)


def floor(args, grey: Dataset, scorer: Scorer) -> None:
    """The real-data row: ``--n`` held-out test digits against the training reference."""
    if any(r.get("family") == "real" and r.get("n") == args.n for r in read_records(args.results)):
        return
    rows = torch.randperm(len(grey.test), generator=torch.Generator().manual_seed(0))[:args.n]
    figures = scorer.score(grey.test[rows])
    append_record(args.results, {"family": "real", "about": "held-out test digits (the floor)", "seed": 0,
                                 "times": 0, "w": args.w, "n": args.n, "cpu_s": 0.0, "epochs": None,
                                 "classifier_accuracy": scorer.accuracy, "reference": len(scorer.reference),
                                 "load": os.getloadavg()[0], **figures})
    print(f"real test digits: FID {figures['fid']:.2f}  P {figures['precision']:.3f}  R {figures['recall']:.3f}",
          flush=True)


def train(args) -> int:
    torch.set_num_threads(args.threads)
    unknown = [f for f in args.families if f not in FAMILIES and f not in GAN_VARIANTS]
    if unknown:
        raise SystemExit(f"--families: unknown {', '.join(unknown)}; choose from {', '.join([*FAMILIES, *GAN_VARIANTS])}")
    grey = load("mnist-full", binarize=None)
    binary = load("mnist-full", binarize="dynamic")
    scorer = Scorer.build(grey, args.reference)
    print(f"feature classifier: test accuracy {scorer.accuracy:.4f} on {len(grey.test):,} test digits; reference "
          f"{len(scorer.reference):,} training digits; W = {args.w:g} CPU s; threads {args.threads}; load "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    floor(args, grey, scorer)
    for seed in args.seeds:
        for name in args.families:
            if done(read_records(args.results), name, seed, args.budgets, args.w, args.n):
                print(f"{name} seed {seed}: recorded already", flush=True)
                continue
            run_family(name, seed, args, binary, grey, scorer)
    return 0


def mean_sd(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else float("nan")
    return m, sd


def table(records: list[dict]) -> str:
    """Family × budget: FID mean ± sd over seeds, KID, IS, precision, recall (means), epochs reached, CPU s."""
    lines = ["| family | budget | seeds | FID | KID×10³ | IS | precision | recall | epochs reached | CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in records:  # runs with another W, N or clock are other rows
        groups.setdefault((r["family"], r["times"], r["w"], r["n"], r.get("clock", "cpu")), []).append(r)
    settings = {key[2:] for key in groups if key[0] != "real"}
    order = ["real", *FAMILIES, *GAN_VARIANTS]

    def cell(rows: list[dict], key: str, scale: float = 1.0, digits: int = 2) -> str:
        m, sd = mean_sd([scale * r[key] for r in rows])
        return f"{m:.{digits}f}" + ("" if math.isnan(sd) else f" ± {sd:.{digits}f}")

    for (family, times, w, n, clock), rows in sorted(
            groups.items(), key=lambda g: (order.index(g[0][0]) if g[0][0] in order else len(order), g[0][1:])):
        budget = "—" if family == "real" else f"{times:g}W"
        if len(settings) > 1:
            budget += f" (W = {w:g} {clock} s, N = {n})" if family != "real" else f" (N = {n})"
        epochs = "—" if rows[0]["epochs"] is None else f"{mean_sd([r['epochs'] for r in rows])[0]:.2f}"
        if rows[0].get("prior_epochs") is not None:
            epochs += f" + prior {mean_sd([r['prior_epochs'] for r in rows])[0]:.2f}"
        lines.append(f"| {family} | {budget} | {len(rows)} | {cell(rows, 'fid')} | {cell(rows, 'kid', 1e3, 1)} | "
                     f"{cell(rows, 'is')} | {cell(rows, 'precision', digits=3)} | {cell(rows, 'recall', digits=3)} | "
                     f"{epochs} | {mean_sd([r['cpu_s'] for r in rows])[0]:.0f} |")
    return "\n".join(lines)


def figure(grids: Path, records: list[dict], path: Path) -> None:
    """A grid of 64 samples per family (seed 0) at the largest budget recorded for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best: dict[str, dict] = {}
    for r in records:
        if r["family"] in FAMILIES and r["seed"] == 0 and r["times"] >= best.get(r["family"], {}).get("times", -1):
            best[r["family"]] = r
    names = [f for f in FAMILIES if f in best]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.6))
    for ax, name in zip(axes if len(names) > 1 else [axes], names):
        r = best[name]
        images = torch.load(grids / f"{name}_seed0_{r['times']:g}W.pt", weights_only=True)
        tiles = images[:64, 0].reshape(8, 8, 28, 28).permute(0, 2, 1, 3).reshape(8 * 28, 8 * 28)
        ax.imshow(tiles.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{name}, {r['times']:g}W ({r['cpu_s']:.0f} CPU s)\nFID {r['fid']:.1f}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")


def report(args) -> int:
    records = read_records(args.results)
    text = table(records)
    print(text)
    if records:
        first = records[0]
        print(f"\nFeature classifier test accuracy {first['classifier_accuracy']:.4f}; reference "
              f"{first['reference']:,} training digits; {first['n']:,} samples per row; W = {first['w']:g} CPU s.")
    if args.figure:
        figure(args.grids, records, args.figure)
        print(f"wrote {args.figure}")
    return 0


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train, snapshot at each budget, score and append the records")
    t.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    t.add_argument("--seeds", default="0,1,2")
    t.add_argument("--budgets", default="1,4", help="multiples of W, ascending (e.g. 1,4,30)")
    t.add_argument("--w", type=float, default=10.0, help="W, in process CPU seconds")
    t.add_argument("--chunk", type=int, default=0, help="digits per loop epoch, the budget's granularity (0: the "
                   "family's: 5,000 for the VAE, whose chunk costs ~0.25 CPU s, 1,000 for the others)")
    t.add_argument("--n", type=int, default=2000, help="generated images per row (and test digits in the floor)")
    t.add_argument("--reference", type=int, default=10000, help="training digits in the reference set")
    t.add_argument("--ddim", type=int, default=50, help="DDPM's DDIM steps")
    t.add_argument("--threads", type=int, default=1, help="torch threads")
    t.add_argument("--device", default="cpu", help="cpu (cuda: see benchmarks/gpu.sh)")
    t.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="the budget's clock: process CPU seconds (a shared CPU machine) or wall seconds (a GPU)")
    for q in (t, sub.add_parser("report", help="the table (and the sample-grid figure) from the records")):
        q.add_argument("--results", type=Path, default=RESULTS)
        q.add_argument("--grids", type=Path, default=Path("runs/mnist_quality"), help="where the 64-image grids go")
    sub.choices["report"].add_argument("--figure", type=Path, default=None)
    args = p.parse_args(argv)
    if args.command == "train":
        args.families = args.families.split(",")
        args.seeds = [int(s) for s in args.seeds.split(",")]
        args.budgets = [float(b) for b in args.budgets.split(",")]
    return args


def main(argv=None) -> int:
    args = parse(argv)
    return {"train": train, "report": report}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
