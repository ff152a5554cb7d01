"""VQ-VAE training speed: ppgen's training step beside a plain PyTorch VQ-VAE loop; the prior likewise.

Stage one. ppgen: ``ppgen.fit(VQVAE(...), data, engine="torch")`` — the one training loop, the pair's
``objective`` (straight-through, commitment, EMA codebook with restarts as buffers), Adam. Plain: the loop
of the reference implementations (the paper's; Sonnet's and the common PyTorch ports'), written out here:
the *same* encoder/decoder modules (deep copies of ppgen's, so the same weights), a codebook with the same
EMA update and restarts, the loss rec + β‖z_e − sg(e)‖², minibatches indexed from an in-memory tensor
shuffled by ``randperm``, the same batch size and ``torch.optim.Adam``.

Stage two. ppgen: the stage ``prior`` (:func:`ppgen.inference.stages.fit_stage`, the one training loop); plain: the same PixelCNN in a hand-written loop, on
codes extracted once. Throughput counts the training steps; the stage also re-encodes the codes
of each epoch's fresh binarization, whose time is reported beside it (``extract_seconds`` per epoch).

Throughput is images (grids) per second over whole epochs after a warm-up epoch of each. The two loops alternate
epoch by epoch in one process, ``--repeats`` rounds, the order swapped every round, so both see the same machine
load; each round gives a ratio ppgen / plain, and the median ratio is reported with its quartiles, range and a
bootstrap 95% interval.

    python benchmarks/vqvae_speed.py --data digits --downsample 1
    python benchmarks/vqvae_speed.py --data mnist --downsample 2 --codes 64
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import ppgen
from ppgen.data import load
from ppgen.inference.stages import fit_stage
from ppgen.models.vqvae import VQVAE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _baselines import spread  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits")
    p.add_argument("--codes", type=int, default=64)
    p.add_argument("--code-dim", type=int, default=16)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--downsample", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=40, help="alternating rounds (one epoch of each loop per round)")
    p.add_argument("--prior-repeats", type=int, default=20, help="rounds for the prior (0: skip stage two)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (one: the shared 2-core machine)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


class PlainVQVAE:
    """The reference loop's pieces, by hand: encoder, decoder, codebook tensors and the EMA statistics."""

    def __init__(self, pair: VQVAE):
        self.enc, self.dec = copy.deepcopy(pair.encoder), copy.deepcopy(pair.decoder)
        self.embed = pair.quantizer.embed.detach().clone()
        self.count = torch.zeros(len(self.embed))
        self.total = torch.zeros_like(self.embed)
        self.steps, self.decay, self.beta, self.restart = 0, pair.config.decay, pair.config.commitment, \
            pair.config.restart_below
        self.opt = torch.optim.Adam(list(self.enc.parameters()) + list(self.dec.parameters()), lr=1e-3)

    def step(self, x: torch.Tensor) -> float:
        z = self.enc(x)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        with torch.no_grad():
            d = (flat ** 2).sum(1, keepdim=True) - 2 * flat @ self.embed.T + (self.embed ** 2).sum(1)
            idx = d.argmin(1)
        quant = F.embedding(idx, self.embed).reshape(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        logits = self.dec(z + (quant - z).detach())
        loss = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") + \
            self.beta * ((z - quant.detach()) ** 2).sum()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            one_hot = F.one_hot(idx, len(self.embed)).float()
            g = self.decay
            self.count.mul_(g).add_(one_hot.sum(0), alpha=1 - g)
            self.total.mul_(g).add_(one_hot.T @ flat.detach(), alpha=1 - g)
            self.steps += 1
            live = self.count > 1e-30
            self.embed[live] = self.total[live] / self.count[live, None]
            dead = (self.count / (1 - g ** self.steps) < self.restart).nonzero().squeeze(-1)
            if len(dead):
                self.embed[dead] = flat.detach()[torch.randint(len(flat), (len(dead),))]
        return loss.item()


def plain_epoch(model: PlainVQVAE, x: torch.Tensor, batch: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    steps = len(x) // batch
    start = time.perf_counter()
    for s in range(steps):
        model.step(x[order[s * batch:(s + 1) * batch]])
    return steps * batch / (time.perf_counter() - start)


def plain_prior_epoch(net, opt, codes: torch.Tensor, batch: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(codes), generator=g)
    steps = len(codes) // batch
    start = time.perf_counter()
    for s in range(steps):
        loss = -net.log_prob(codes[order[s * batch:(s + 1) * batch]]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def describe(name: str, unit: str, ours: list[float], theirs: list[float], ratios: list[float]) -> dict:
    s = spread(ratios)
    print(f"{name}: ppgen {statistics.median(ours):.0f} {unit}, plain PyTorch {statistics.median(theirs):.0f} {unit} "
          f"(medians); ratio per round: median {s['median']:.3f}, quartiles {s['q1']:.3f}–{s['q3']:.3f}, range "
          f"{s['min']:.3f}–{s['max']:.3f}, bootstrap 95% interval of the median {s['ci95'][0]:.3f}–{s['ci95'][1]:.3f} "
          f"({s['rounds']} rounds)", flush=True)
    return {"ppgen": statistics.median(ours), "plain": statistics.median(theirs), "ratio": s}


def stage_one(pair: VQVAE, data, x: torch.Tensor, args) -> tuple[dict, VQVAE]:
    """Alternate one ppgen epoch (the loop's own images/s: ``ppgen.fit`` resumed from its checkpoint, one more epoch)
    and one plain epoch, ``--repeats`` rounds, the order swapped every round (ABBA) so a trend in the machine's load
    falls on both alike; each round gives a ratio."""
    plain = PlainVQVAE(pair)
    plain_epoch(plain, x, args.batch_size, 0)  # warm-up
    options = dict(batch_size=args.batch_size, lr=1e-3, engine="torch", progress=False, seed=args.seed)
    fit = ppgen.fit(pair, data, epochs=1, **options)  # warm-up
    ours, theirs, ratios = [], [], []
    for r in range(args.repeats):
        def step_ours(fit=fit):
            return ppgen.fit(pair, data, epochs=fit.state.epoch + 1, resume=fit.checkpoint(), **options)

        if r % 2 == 0:
            fit = step_ours()
            b = plain_epoch(plain, x, args.batch_size, r)
        else:
            b = plain_epoch(plain, x, args.batch_size, r)
            fit = step_ours()
        a = fit.history[-1]["images_per_s"]
        ours.append(a)
        theirs.append(b)
        ratios.append(a / b)
    return describe("stage one", "img/s", ours, theirs, ratios), pair


def stage_two(pair: VQVAE, data, x: torch.Tensor, args) -> dict:
    """The prior likewise: one epoch of the stage ``prior`` (its grids/s over the training steps) beside one plain epoch on
    the same codes, alternating; the re-encoding of fresh codes is timed apart."""
    pair.eval()
    codes = pair.codes(x)
    net = copy.deepcopy(pair.prior_net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    plain_prior_epoch(net, opt, codes, args.batch_size, 0)  # warm-up
    ours, theirs, ratios, extract = [], [], [], []
    trial = copy.deepcopy(pair)
    for r in range(args.repeats):
        def step_ours(r=r):
            return fit_stage(trial, "prior", data, epochs=1, batch_size=args.batch_size, seed=r).history[0]

        if r % 2 == 0:
            row = step_ours()
            b = plain_prior_epoch(net, opt, codes, args.batch_size, r)
        else:
            b = plain_prior_epoch(net, opt, codes, args.batch_size, r)
            row = step_ours()
        ours.append(row["examples_per_s"])
        theirs.append(b)
        ratios.append(row["examples_per_s"] / b)
        extract.append(row["extract_seconds"])
    result = describe("stage two (prior)", "grids/s", ours, theirs, ratios)
    result["extract_seconds_per_epoch"] = statistics.median(extract)
    print(f"  (the stage also re-encodes each epoch's fresh codes: {statistics.median(extract):.2f} s per epoch, "
          "outside the timed steps)")
    return result


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    data = load(args.data, binarize="dynamic", seed=args.seed)
    print(data.describe(), f"| K {args.codes}, D {args.code_dim}, channels {args.channels}, downsample "
          f"{args.downsample}, batch {args.batch_size}, torch threads {torch.get_num_threads()}, {args.repeats} "
          "alternating rounds", flush=True)
    torch.manual_seed(args.seed)
    pair = VQVAE(data.x_shape, codes=args.codes, code_dim=args.code_dim, channels=args.channels,
                 downsample=args.downsample)
    x = data.train_epoch(0)
    result = {"stage_one": None, "stage_two": None}
    result["stage_one"], pair = stage_one(pair, data, x, args)
    if args.prior_repeats:
        args.repeats = args.prior_repeats
        result["stage_two"] = stage_two(pair, data, x, args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
