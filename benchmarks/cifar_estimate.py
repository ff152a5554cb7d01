"""What Ho et al.'s CIFAR-10 figures (≤ 3.70 bits/dim, FID 3.17; Ho et al., 2020) would take on one H200.

Two U-Nets on 32x32x3 images, each counted (parameters; forward FLOPs per image with
``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per multiply-add of convolutions and
matrix products and ignores the cheap element-wise ops):

  ppgen    ppgen's ``UNetDenoiser`` as close to theirs as it allows: 128 channels, ``channel_mult`` (1, 2, 2, 2),
           a 512-wide time embedding, group norm with 32 groups, ``attention=True``. What it cannot do: one
           residual block per level on the way down and up (theirs: 2 down, 3 up), one attention block at the
           lowest resolution (4x4) after the middle block (theirs: at 16x16 after every residual block there, and
           res-attention-res in the middle), no dropout (theirs 0.1).
  ho2020   a transcription of their CIFAR-10 network (``diffusion_tf/models/unet.py``: ch 128, ch_mult (1, 2, 2,
           2), 2 residual blocks, attention at 16x16, dropout 0.1, 3x3-conv resampling), here only to count it:
           it has their 35.7M parameters.

The estimate: a training step costs 3x the forward FLOPs (forward + backward, the backward twice the forward)
at batch 128, 800k steps; FID needs 50k samples x 1000 denoiser passes. Time = FLOPs / sustained FLOP/s, with
the sustained rate assumed as a fraction of the H200's dense BF16 peak (989 TFLOP/s; TF32 494; a 32x32
convolutional U-Net with 128-512 channels reaches well under the peak), and cross-checked against their
reported 21 steps/s on a TPU v3-8 (4 chips, 123 BF16 TFLOP/s each): the utilization that implies, carried
to the H200's peak.

    python benchmarks/cifar_estimate.py                          # the table (CPU: counts FLOPs, a few seconds)
    python benchmarks/cifar_estimate.py --device cuda --steps 50 # plus N timed training steps and sampling

With ``--device cuda --steps N`` it times N real training steps (ppgen's DDPM pair, L_simple, T = 1000, Adam
2e-4, batch 128; ``--amp bf16`` under autocast) of the ppgen U-Net on data of CIFAR's shape made from the
bundled MNIST digits (padded to 32x32, three tinted channels: there is no CIFAR-10 on disk and no network;
the cost of a step does not depend on the pixels), and the forward passes of sampling at ``--sample-batch``,
and replaces the assumed throughput by the measured one.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ppgen.models.diffusion import DDPM  # noqa: E402
from ppgen.nn import UNetDenoiser  # noqa: E402

SHAPE = (3, 32, 32)
STEPS, BATCH, SAMPLES, SAMPLE_STEPS = 800_000, 128, 50_000, 1000
H200_PEAK = {"bf16": 989e12, "tf32": 494e12}  # dense tensor-core FLOP/s (SXM)
TPU_V3_8_PEAK, HO_STEPS_PER_S = 4 * 123e12, 21.0  # 4 chips x 123 BF16 TFLOP/s; Ho et al.'s reported speed


# -- a transcription of Ho et al.'s CIFAR-10 U-Net, to count it -------------------------------------------
class _HoResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, temb: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(32, c_in), nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.temb = nn.Linear(temb, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(32, c_out), nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.temb(F.silu(e))[:, :, None, None]
        return self.skip(x) + self.conv2(self.dropout(F.silu(self.norm2(h))))


class _HoAttention(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm, self.q, self.k, self.v, self.out = (nn.GroupNorm(32, c), *(nn.Conv2d(c, c, 1) for _ in range(4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = (f(h).flatten(2) for f in (self.q, self.k, self.v))
        w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(x.shape[1]), -1)
        return x + self.out((v @ w.transpose(1, 2)).reshape(x.shape))


class HoUNet(nn.Module):
    """Ho et al.'s CIFAR-10 U-Net (ch 128, ch_mult (1, 2, 2, 2), 2 res blocks, attention at 16x16, dropout 0.1)."""

    def __init__(self, ch: int = 128, mult=(1, 2, 2, 2), blocks: int = 2, attn=(16,), dropout: float = 0.1,
                 resolution: int = 32):
        super().__init__()
        self.ch, temb = ch, 4 * ch
        self.temb = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.inp = nn.Conv2d(3, ch, 3, 1, 1)
        self.down, chans, c, res = nn.ModuleList(), [ch], ch, resolution
        for level, m in enumerate(mult):
            for _ in range(blocks):
                self.down.append(nn.ModuleList([_HoResBlock(c, ch * m, temb, dropout)]
                                                + ([_HoAttention(ch * m)] if res in attn else [])))
                c = ch * m
                chans.append(c)
            if level < len(mult) - 1:
                self.down.append(nn.Conv2d(c, c, 3, 2, 1))
                chans.append(c)
                res //= 2
        self.mid = nn.ModuleList([_HoResBlock(c, c, temb, dropout), _HoAttention(c), _HoResBlock(c, c, temb, dropout)])
        self.up = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for _ in range(blocks + 1):
                self.up.append(nn.ModuleList([_HoResBlock(c + chans.pop(), ch * m, temb, dropout)]
                                             + ([_HoAttention(ch * m)] if res in attn else [])))
                c = ch * m
            if level > 0:
                self.up.append(nn.Conv2d(c, c, 3, 1, 1))
                res *= 2
        self.out = nn.Sequential(nn.GroupNorm(32, c), nn.SiLU(), nn.Conv2d(c, 3, 3, 1, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        half = self.ch // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / (half - 1))
        e = self.temb(torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], -1))
        hs = [self.inp(x)]
        for layer in self.down:
            if isinstance(layer, nn.Conv2d):
                hs.append(layer(hs[-1]))
            else:
                h = layer[0](hs[-1], e)
                hs.append(layer[1](h) if len(layer) > 1 else h)
        h = self.mid[2](self.mid[1](self.mid[0](hs[-1], e)), e)
        for layer in self.up:
            if isinstance(layer, nn.Conv2d):
                h = layer(F.interpolate(h, scale_factor=2.0, mode="nearest"))
            else:
                h = layer[0](torch.cat([h, hs.pop()], 1), e)
                h = layer[1](h) if len(layer) > 1 else h
        return self.out(h)


def ppgen_unet() -> UNetDenoiser:
    """ppgen's U-Net as close to Ho et al.'s CIFAR-10 network as it allows (module docs)."""
    return UNetDenoiser(SHAPE, channels=128, channel_mult=(1, 2, 2, 2), time_dim=512, groups=32, attention=True)


def forward_flops(net: nn.Module) -> int:
    """FLOPs of one forward pass per 32x32x3 image (batch 2, halved; CPU)."""
    x, t = torch.zeros((2, *SHAPE)), torch.full((2,), 500.0)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net.eval()(x, t)
    return counter.get_total_flops() // 2


def hours(flops: float, rate: float) -> float:
    return flops / rate / 3600


# -- measuring on a GPU -------------------------------------------------------------------------------------
def cifar_shaped(n: int, device: str) -> torch.Tensor:
    """n images (3, 32, 32) on the 256-level grid from the bundled MNIST digits: padded by 2, three tinted channels."""
    from ppgen.data import load

    digits = load("mnist", binarize=None).train[:n]
    x = F.pad(digits, (2, 2, 2, 2))
    tint = torch.tensor([1.0, 0.8, 0.6]).reshape(1, 3, 1, 1)
    return (torch.round(x * tint * 255) / 255).to(device)


def measure(args) -> dict:
    """Seconds per training step (ppgen's DDPM pair, L_simple) and denoiser forward passes per second (sampling)."""
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    pair = DDPM(SHAPE, likelihood="discretized", levels=256, timesteps=1000, objective="simple", denoiser="unet",
                channels=128, channel_mult=(1, 2, 2, 2), time_dim=512, attention=True)
    pair.denoiser = ppgen_unet()  # 32 groups, as theirs (DDPM's own U-Net uses 8)
    pair.to(args.device).train()
    data = cifar_shaped(args.data_size, args.device)
    opt = torch.optim.Adam(pair.parameters(), lr=2e-4)
    amp = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.amp == "bf16")

    def step(i: int) -> None:
        x = data[torch.randint(len(data), (args.batch,), device=data.device)]
        with amp:
            loss = pair.objective(x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    for i in range(args.warmup):
        step(i)
    sync()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i)
    sync()
    step_s = (time.perf_counter() - t0) / args.steps
    pair.eval()
    x = torch.randn((args.sample_batch, *SHAPE), device=args.device)
    t = torch.full((args.sample_batch,), 500.0, device=args.device)
    with torch.no_grad(), amp:
        for _ in range(2):
            pair.denoiser(x, t)
        sync()
        t0 = time.perf_counter()
        for _ in range(args.sample_passes):
            pair.denoiser(x, t)
        sync()
    passes_per_s = args.sample_batch * args.sample_passes / (time.perf_counter() - t0)
    return {"step_s": step_s, "passes_per_s": passes_per_s}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--utilization", type=float, nargs="+", default=[0.1, 0.2, 0.4],
                   help="assumed sustained fractions of the H200's dense BF16 peak")
    p.add_argument("--device", default="cpu", help="with --steps: where to time the training steps (cuda)")
    p.add_argument("--steps", type=int, default=0, help="time this many real training steps (0: only the table)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--batch", type=int, default=BATCH, help="batch of the timed training steps (theirs: 128)")
    p.add_argument("--amp", default="none", choices=["none", "bf16"], help="autocast to bfloat16 in the timed steps")
    p.add_argument("--sample-batch", type=int, default=1000, help="batch of the timed sampling passes")
    p.add_argument("--sample-passes", type=int, default=20, help="timed denoiser passes at that batch")
    p.add_argument("--data-size", type=int, default=3500, help="bundled digits made into CIFAR-shaped images")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    nets = {"ppgen": ppgen_unet(), "ho2020": HoUNet()}
    counts = {k: (sum(p.numel() for p in n.parameters()), forward_flops(n)) for k, n in nets.items()}
    print("| U-Net | params | forward GFLOPs / image | train FLOPs (800k x 128 x 3 fwd) | "
          "FID sampling FLOPs (50k x 1000 fwd) |")
    print("|---|---|---|---|---|")
    for k, (params, f) in counts.items():
        print(f"| {k} | {params / 1e6:.2f}M | {f / 1e9:.2f} | {STEPS * BATCH * 3 * f:.3e} | "
              f"{SAMPLES * SAMPLE_STEPS * f:.3e} |")
    f_ho = counts["ho2020"][1]
    tpu_util = HO_STEPS_PER_S * BATCH * 3 * f_ho / TPU_V3_8_PEAK
    print(f"\nHo et al.: 21 steps/s on a TPU v3-8 = {HO_STEPS_PER_S * BATCH * 3 * f_ho / 1e12:.0f} TFLOP/s sustained, "
          f"{tpu_util:.1%} of its {TPU_V3_8_PEAK / 1e12:.0f} BF16 TFLOP/s; their 800k steps: "
          f"{STEPS / HO_STEPS_PER_S / 3600:.1f} h there")
    rates = {f"{u:.0%} of H200 BF16 peak": u * H200_PEAK["bf16"] for u in args.utilization}
    rates[f"TPU v3-8's {tpu_util:.1%} of H200 BF16 peak"] = tpu_util * H200_PEAK["bf16"]
    rates[f"{args.utilization[0]:.0%} of H200 TF32 peak"] = args.utilization[0] * H200_PEAK["tf32"]
    if args.steps:
        m = measure(args)
        f_pp = counts["ppgen"][1]
        print(f"\nmeasured on {args.device} (ppgen U-Net, batch {args.batch}, amp {args.amp}, {args.steps} steps after "
              f"{args.warmup}): {m['step_s'] * 1e3:.1f} ms/step = {1 / m['step_s']:.1f} steps/s = "
              f"{args.batch * 3 * f_pp / m['step_s'] / 1e12:.1f} TFLOP/s; sampling {m['passes_per_s']:,.0f} denoiser "
              f"passes/s at batch {args.sample_batch} = {m['passes_per_s'] * f_pp / 1e12:.1f} TFLOP/s")
        rates["measured (ppgen U-Net FLOP/s, applied to both)"] = (args.batch * 3 * f_pp / m["step_s"], m["passes_per_s"] * f_pp)
    print("\n| sustained rate | assumed TFLOP/s (train, sample) | U-Net | 800k steps (h) | steps/s | "
          "50k samples x 1000 steps (h) |")
    print("|---|---|---|---|---|---|")
    for label, rate in rates.items():
        train_rate, sample_rate = rate if isinstance(rate, tuple) else (rate, rate)
        for k, (_, f) in counts.items():
            print(f"| {label} | {train_rate / 1e12:.0f}, {sample_rate / 1e12:.0f} | {k} | "
                  f"{hours(STEPS * BATCH * 3 * f, train_rate):.1f} | {train_rate / (BATCH * 3 * f):.1f} | "
                  f"{hours(SAMPLES * SAMPLE_STEPS * f, sample_rate):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
