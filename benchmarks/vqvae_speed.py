"""VQ-VAE training speed (issue 13): ppgen's training step beside a plain PyTorch VQ-VAE loop; the prior likewise.

Stage one. ppgen: ``ppgen.fit(VQVAE(...), data, engine="torch")`` — the one training loop, the pair's
``objective`` (straight-through, commitment, EMA codebook with restarts as buffers), Adam. Plain: the loop
of the reference implementations (the paper's; Sonnet's and the common PyTorch ports'), written out here:
the *same* encoder/decoder modules (deep copies of ppgen's, so the same weights), a codebook with the same
EMA update and restarts, the loss rec + β‖z_e − sg(e)‖², minibatches indexed from an in-memory tensor
shuffled by ``randperm``, the same batch size and ``torch.optim.Adam``.

Stage two. ppgen: :func:`ppgen.models.vqvae.fit_prior`; plain: the same PixelCNN in a hand-written loop, on
codes extracted once. Throughput counts the training steps; ``fit_prior`` by default also re-encodes the codes
of each epoch's fresh binarization, whose time is reported beside it (``extract_seconds`` per epoch).

Throughput is images (grids) per second over whole epochs after a warm-up epoch; the two loops alternate
``--repeats`` times and the median of each is reported, so both see the same machine load.

    python benchmarks/vqvae_speed.py --data digits --downsample 1
    python benchmarks/vqvae_speed.py --data mnist --downsample 2 --codes 64
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch.nn import functional as F

import ppgen
from ppgen.data import load
from ppgen.models.vqvae import VQVAE, fit_prior


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits")
    p.add_argument("--codes", type=int, default=64)
    p.add_argument("--code-dim", type=int, default=16)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--downsample", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per repeat (after one warm-up epoch)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prior-epochs", type=int, default=2)
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


def main(argv=None) -> int:
    args = parse(argv)
    data = load(args.data, binarize="dynamic", seed=args.seed)
    print(data.describe(), f"| K {args.codes}, D {args.code_dim}, channels {args.channels}, downsample "
          f"{args.downsample}, batch {args.batch_size}, torch threads {torch.get_num_threads()}", flush=True)
    torch.manual_seed(args.seed)
    pair = VQVAE(data.x_shape, codes=args.codes, code_dim=args.code_dim, channels=args.channels,
                 downsample=args.downsample)
    plain = PlainVQVAE(pair)
    x = data.train_epoch(0)
    plain_epoch(plain, x, args.batch_size, 0)  # warm-up
    ours, theirs = [], []
    for r in range(args.repeats):
        pair_r = copy.deepcopy(pair)
        fit = ppgen.fit(pair_r, data, epochs=args.epochs + 1, batch_size=args.batch_size, engine="torch",
                        progress=False, seed=args.seed + r)
        ours += [row["images_per_s"] for row in fit.history[1:]]
        theirs += [plain_epoch(plain, x, args.batch_size, r * 100 + e) for e in range(args.epochs)]
    a, b = statistics.median(ours), statistics.median(theirs)
    result = {"ppgen_images_per_s": a, "plain_images_per_s": b, "ratio": a / b}
    print(f"stage one: ppgen {a:.0f} img/s, plain PyTorch {b:.0f} img/s, ratio {a / b:.3f}", flush=True)

    pair_r.eval()
    codes = pair_r.codes(x)
    net = copy.deepcopy(pair_r.prior_net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    plain_prior_epoch(net, opt, codes, args.batch_size, 0)  # warm-up
    ours, theirs, extract = [], [], []
    for r in range(args.repeats):
        trial = copy.deepcopy(pair_r)
        rows = fit_prior(trial, data, epochs=args.prior_epochs, batch_size=args.batch_size, seed=r)
        ours += [row["grids_per_s"] for row in rows]
        extract += [row["extract_seconds"] for row in rows]
        theirs += [plain_prior_epoch(net, opt, codes, args.batch_size, r * 100 + e) for e in range(args.prior_epochs)]
    a, b = statistics.median(ours), statistics.median(theirs)
    result.update(ppgen_prior_grids_per_s=a, plain_prior_grids_per_s=b, prior_ratio=a / b,
                  extract_seconds_per_epoch=statistics.median(extract))
    print(f"stage two (prior): ppgen {a:.0f} grids/s, plain PyTorch {b:.0f} grids/s, ratio {a / b:.3f}; re-encoding "
          f"an epoch's codes {statistics.median(extract):.2f} s")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
