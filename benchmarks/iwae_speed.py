"""IWAE-1000 on 1,000 bundled MNIST digits: ppgen's estimator beside a hand-written torch loop, same networks.

The plain loop is Burda et al. (2016)'s estimator written out: per example, K draws z_k = μ(x) + σ(x) ε_k from
q(z|x) (the encoder run once per example), log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x), and
IWAE_K = log (1/K) Σ_k w_k by log-sum-exp; chunked over examples and draws within the same memory budget as
ppgen (8,000,000 floats), under ``torch.no_grad``. Both run the default VAE's networks (784-400-50, softplus
hidden units, Bernoulli logits): the plain loop calls ``pair.encoder`` and ``pair.decoder`` directly.

Rows, in one process, alternating (ABBA: the order swaps every round, so a trend in the machine's load falls on
both), each round giving a ratio plain seconds / ppgen seconds (> 1: ppgen is faster):

* ``ppgen`` — ``ppgen.evaluation.iwae(pair, x, k=1000)`` with the default ``engine="auto"`` (it compiles this
  job with JAX: :mod:`ppgen.evaluation.compiled`); steady state, the compiled function reused;
* ``ppgen (engine=torch)`` — the same call forced onto the torch path (``--no-torch-path`` leaves it out);
* ``plain torch`` — the loop above.

Compilation is counted apart and in the total: tracing, lowering and compiling the very function ``iwae`` calls
(JAX's ahead-of-time API), first with ppgen's persistent compilation cache pointed at an empty folder (cold),
then with JAX's in-memory caches cleared so that the executable is read back from that folder (warm, as a new
process would); the steady median plus each is set beside the plain loop's time. The load average is printed
at the start and the end; on a shared machine compare the ratios, not the seconds.

    python benchmarks/iwae_speed.py                 # IWAE-1000, 1,000 test digits, 3 rounds
    python benchmarks/iwae_speed.py --n 200 --k 100 --rounds 2   # a quick look
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.distributions import Normal
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ppgen  # noqa: E402
from ppgen.data import load  # noqa: E402

BUDGET = 8_000_000


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="test digits (at most 1,000 in the bundled set)")
    p.add_argument("--k", type=int, default=1000, help="importance samples per digit")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--epochs", type=int, default=2, help="epochs of training before timing (weights a VAE has)")
    p.add_argument("--engine", default="auto", choices=["auto", "jax", "torch"], help="the ppgen row's engine")
    p.add_argument("--no-torch-path", action="store_true", help="leave out ppgen's torch path row")
    return p.parse_args(argv)


@torch.no_grad()
def plain_iwae(encoder, decoder, x: torch.Tensor, k: int, budget: int = BUDGET) -> torch.Tensor:
    """IWAE_k per example of a Bernoulli-logit VAE with a N(0, I) prior, written out (Burda et al. 2016)."""
    d = math.prod(x.shape[1:])
    rows = max(1, budget // d)
    k_chunk = min(k, rows)
    per = max(1, rows // k_chunk)
    out = []
    for r in range(0, len(x), per):
        xb = x[r:r + per]
        loc, scale = encoder(xb)  # (B, Z), once per example
        flat = xb.reshape(1, len(xb), d)
        parts = []
        for s in range(0, k, k_chunk):
            kk = min(k_chunk, k - s)
            z = loc + scale * torch.randn((kk, *loc.shape))
            log_q = Normal(loc, scale).log_prob(z).sum(-1)
            log_prior = Normal(0.0, 1.0).log_prob(z).sum(-1)
            logits = decoder(z.reshape(-1, z.shape[-1])).reshape(kk, len(xb), d)
            log_lik = -F.binary_cross_entropy_with_logits(logits, flat.expand_as(logits), reduction="none").sum(-1)
            parts.append(torch.logsumexp(log_lik + log_prior - log_q, 0))
        out.append(torch.logsumexp(torch.stack(parts), 0) - math.log(k))
    return torch.cat(out)


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def compile_times(pair, x: torch.Tensor, k: int) -> dict:
    """Seconds to trace, lower and compile ppgen's jitted estimate (JAX's ahead-of-time API on the very function
    ``iwae`` calls) with an empty persistent cache, then again with JAX's in-memory caches cleared so that the
    executable is read back from the cache folder (what a new process does)."""
    import jax

    from ppgen.evaluation import compiled, likelihood
    from ppgen.inference import compile_cache

    folder = compile_cache.enable()
    k_chunk, rows = likelihood._budget(pair, k, BUDGET)
    (_, k_size), (_, row_size) = compiled.balanced(k, k_chunk), compiled.balanced(len(x), rows)
    args = (compiled.current_params(pair, compiled._probe(pair, x, ())), jax.random.PRNGKey(0), compiled._to_jax(x),
            ())
    out = {"cache": str(folder)}
    for name in ("cold", "warm"):
        jax.clear_caches()
        compiled._PAIRS.pop(pair, None)
        out[name], _ = timed(lambda: compiled._estimator(pair, "iwae", k, k_size, row_size).trace(*args).lower()
                             .compile())
    return out


def main(argv=None) -> int:
    args = parse(argv)
    # an empty compilation cache of its own, so that "cold" is cold (set before ppgen enables the cache)
    os.environ.setdefault("PPGEN_COMPILE_CACHE_DIR", tempfile.mkdtemp(prefix="ppgen-iwae-bench-"))
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    data = load("mnist", binarize="threshold", seed=0)
    x = data.test[: args.n].float()
    torch.manual_seed(0)
    pair = ppgen.models.VAE()
    if args.epochs:
        ppgen.fit(pair, data, backend="svi", epochs=args.epochs, progress=False)
    pair.eval()
    from ppgen.evaluation.likelihood import choose_engine

    engine = choose_engine(pair, x, args.k, engine=args.engine)
    print(f"IWAE-{args.k} on {len(x)} digits, default VAE {pair.config.hidden} z={pair.config.z_dim}; "
          f"engine {args.engine} -> {engine}; torch threads {args.threads}; load average {load_start[0]:.2f}", flush=True)
    first = compile_times(pair, x, args.k) if engine == "jax" else None
    if first:
        print(f"trace + compile: cold cache {first['cold']:.2f} s, warm cache {first['warm']:.2f} s", flush=True)
    if first:
        ppgen.evaluation.iwae(pair, x, k=args.k, engine=args.engine)  # the rounds' function, read from the cache
    rows = {"ppgen": lambda: ppgen.evaluation.iwae(pair, x, k=args.k, engine=args.engine),
            "plain torch": lambda: plain_iwae(pair.encoder, pair.decoder, x, args.k)}
    if not args.no_torch_path:
        rows["ppgen (engine=torch)"] = lambda: ppgen.evaluation.iwae(pair, x, k=args.k, engine="torch")
    seconds: dict[str, list[float]] = {name: [] for name in rows}
    means: dict[str, list[float]] = {name: [] for name in rows}
    for r in range(args.rounds):
        order = list(rows) if r % 2 == 0 else list(reversed(rows))
        for name in order:
            torch.manual_seed(100 + r)
            t, value = timed(rows[name])
            seconds[name].append(t)
            means[name].append(float(value.mean()))
        print(f"round {r + 1}: " + ", ".join(f"{n} {seconds[n][-1]:.2f} s" for n in rows), flush=True)
    plain = seconds["plain torch"]
    print(f"\n{'row':24s} {'median s':>9s} {'plain/row (median, range)':>30s} {'mean IWAE':>10s}")
    for name in rows:
        ratios = [p / s for p, s in zip(plain, seconds[name])]
        print(f"{name:24s} {statistics.median(seconds[name]):9.2f} {statistics.median(ratios):12.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f}) {statistics.mean(means[name]):>15.3f}")
    if first:
        steady, theirs = statistics.median(seconds["ppgen"]), statistics.median(plain)
        cold, warm = steady + first["cold"], steady + first["warm"]
        print(f"\nwith compilation (steady median + trace and compile): cold cache {cold:.2f} s, warm cache "
              f"{warm:.2f} s, beside plain torch {theirs:.2f} s: ratios {theirs / cold:.2f} cold, "
              f"{theirs / warm:.2f} warm")
    print(f"load average {load_start[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
