"""Quality of ppgen's SVI-trained VAE beside Pyro's tutorial loop.

Same architecture (784-400-50, softplus hidden units, Bernoulli), batch 256, Adam 1e-3,
30 epochs, on the bundled MNIST digits with the same seeded stratified split:

  pyro-tutorial   Pyro's VAE tutorial loop (benchmarks/_baselines.py), binarized at 0.5,
                  4,000 train / 1,000 test (the setting of the issue's ≈ −129 nats)
  ppgen           ppgen.fit(pair, data, backend="svi"), the same data
  ppgen-dynamic   ppgen with its default dynamic binarization (a fresh Bernoulli draw of the
                  grey levels every epoch), 4,000 train / 1,000 test; the test digits are the
                  same images binarized once with a fixed seed — a different test set from the
                  thresholded one, so compare its figures only with the next row
  ppgen-cli       what ``ppgen train vae --data mnist --z-dim 50 --epochs 30`` does: dynamic
                  binarization, 3,500 train / 500 validation / 1,000 test, and the weights of the
                  epoch with the best validation ELBO kept (early stopping by selection)

Every model is scored by the same functions (``ppgen.evaluation.elbo`` / ``iwae``; the
tutorial VAE has the ``model``/``guide`` they read): train ELBO on the training set,
test ELBO, test IWAE-K (K=1000), IWAE-K on 1,000 training digits, and the train − test
gaps. ELBOs average 10 draws of q per digit; ± is the standard error over digits; the
paired difference ppgen − pyro-tutorial is taken digit by digit on the shared test set.

    python benchmarks/vae_quality.py           # several minutes on 2 cores (IWAE-1000 dominates)
    python benchmarks/vae_quality.py --quick   # 3 epochs, K=50, 200 test digits
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _baselines as B  # noqa: E402

import ppgen  # noqa: E402
from ppgen.evaluation import elbo, iwae  # noqa: E402

BATCH, LR, Z, HIDDEN = 256, 1e-3, 50, 400
ROWS = ("pyro-tutorial", "ppgen", "ppgen-dynamic", "ppgen-cli")


def train_pyro_tutorial(data, epochs: int, seed: int):
    vae, svi = B.make_pyro_tutorial(Z, HIDDEN, LR, seed)
    loader = B.make_loader(data.train, BATCH, seed)
    history = []
    start = time.perf_counter()
    for epoch in range(epochs):
        loss, n = B.pyro_tutorial_epoch(svi, loader)
        history.append({"epoch": epoch + 1, "elbo": -loss / n, "wall": time.perf_counter() - start})
    return vae, history, None, "pyro-tutorial"


def train_ppgen(data, epochs: int, seed: int, monitor: str | None = None, engine: str = "auto"):
    torch.manual_seed(seed)  # initial weights, as `ppgen train` seeds them
    pair = ppgen.models.VAE(x_shape=data.x_shape, z_dim=Z, hidden=(HIDDEN,), likelihood="bernoulli")
    options = {} if monitor else {"callback": None}  # without a monitor, skip the per-epoch validation pass
    fit = ppgen.fit(pair, data, backend="svi", epochs=epochs, batch_size=BATCH, lr=LR, seed=seed,
                    progress=False, monitor=monitor, engine=engine, **options)
    if fit.stopped:
        print(f"  ppgen stopped: {fit.stopped}")
    return pair, fit.history, fit.state.best_epoch, fit.options["engine"]


def mean_se(v: torch.Tensor) -> tuple[float, float]:
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


def evaluate(pair, data, k: int, n_test: int | None, seed: int) -> tuple[dict, dict]:
    """Figures for one trained model, and the per-digit test IWAE (for paired differences)."""
    if hasattr(pair, "eval"):
        pair.eval()
    test = data.test[:n_test] if n_test else data.test
    train = data.train_epoch(0)
    sub = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: len(test)]]
    out: dict = {"n_train": len(data.train), "n_val": len(data.val), "n_test": len(test), "iwae_k": k}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        start = time.perf_counter()
        out["train_elbo"], out["train_elbo_se"] = mean_se(elbo(pair, train, num_samples=10))
        out["test_elbo"], out["test_elbo_se"] = mean_se(elbo(pair, test, num_samples=10))
        test_ll = iwae(pair, test, k=k)
        out["test_iwae"], out["test_iwae_se"] = mean_se(test_ll)
        out["train_iwae"], out["train_iwae_se"] = mean_se(iwae(pair, sub, k=k))
        out["eval_seconds"] = time.perf_counter() - start
    out["gap_elbo"] = out["train_elbo"] - out["test_elbo"]
    out["gap_iwae"] = out["train_iwae"] - out["test_iwae"]
    out["test_nll"] = -out["test_iwae"]
    return out, test_ll


def run(args) -> dict:
    epochs = args.epochs or (3 if args.quick else 30)
    k = args.k or (50 if args.quick else 1000)
    n_test = args.n_test or (200 if args.quick else None)
    print(f"784-{HIDDEN}-{Z} VAE, batch {BATCH}, Adam {LR}, {epochs} epochs, IWAE K={k}, ppgen engine={args.engine}; "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f} (the machine may be shared)")
    thr = ppgen.data.load("mnist", binarize="threshold", n_val=0)
    dyn = ppgen.data.load("mnist", n_val=0)
    cli = ppgen.data.load("mnist")
    results: dict = {"epochs": epochs, "iwae_k": k, "engine": args.engine, "seeds": {}}
    engine = args.engine
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        rows, per_digit = {}, {}
        jobs = [
            ("pyro-tutorial", thr, "threshold", lambda s: train_pyro_tutorial(thr, epochs, s)),
            ("ppgen", thr, "threshold", lambda s: train_ppgen(thr, epochs, s, engine=engine)),
            ("ppgen-dynamic", dyn, "dynamic", lambda s: train_ppgen(dyn, epochs, s, engine=engine)),
            ("ppgen-cli", cli, "dynamic", lambda s: train_ppgen(cli, epochs, s, monitor="val_elbo", engine=engine)),
        ]
        for name, data, binarize, train in jobs:
            if args.rows and name not in args.rows:
                continue
            start = time.perf_counter()
            model, history, best, used = train(seed)
            seconds = time.perf_counter() - start
            figures, per_digit[name] = evaluate(model, data, k, n_test, seed)
            figures.update(binarize=binarize, engine=used, train_seconds=seconds, best_epoch=best, history=history,
                           final_running_train_elbo=history[-1]["elbo"])
            rows[name] = figures
            print(f"  seed {seed} {name:<14} ({used}) trained {seconds:6.1f} s, evaluated {figures['eval_seconds']:6.1f} s: "
                  f"test ELBO {figures['test_elbo']:8.2f}  test IWAE {figures['test_iwae']:8.2f}", flush=True)
        if "ppgen" in per_digit and "pyro-tutorial" in per_digit:
            diff = per_digit["ppgen"] - per_digit["pyro-tutorial"]
            rows["paired_test_iwae_ppgen_minus_pyro"] = dict(zip(("mean", "se"), mean_se(diff)))
        results.setdefault("per_digit_test_iwae", {})[seed] = {n: v.tolist() for n, v in per_digit.items()}
        results["seeds"][seed] = rows
    return results


def print_table(results: dict) -> None:
    k = results["iwae_k"]
    head = (f"{'seed':<5}{'model':<15}{'binarize':<10}{'split':<15}{'train ELBO':>11}{'test ELBO':>16}"
            f"{f'test IWAE-{k}':>17}{f'train IWAE-{k}':>16}{'gap ELBO':>10}{'gap IWAE':>10}{'best ep':>8}  engine")
    print("\n" + head)
    for seed, rows in results["seeds"].items():
        for name, r in rows.items():
            if name.startswith("paired"):
                continue
            split = f"{r['n_train']}/{r['n_val']}/{r['n_test']}"
            print(f"{seed:<5}{name:<15}{r['binarize']:<10}{split:<15}{r['train_elbo']:>11.2f}"
                  f"{r['test_elbo']:>10.2f} ±{r['test_elbo_se']:4.2f}{r['test_iwae']:>11.2f} ±{r['test_iwae_se']:4.2f}"
                  f"{r['train_iwae']:>16.2f}{r['gap_elbo']:>10.2f}{r['gap_iwae']:>10.2f}"
                  f"{r['best_epoch'] if r['best_epoch'] else '-':>8}  {r.get('engine', '-')}")
        p = rows.get("paired_test_iwae_ppgen_minus_pyro")
        if p is None:
            continue
        print(f"{seed:<5}ppgen − pyro-tutorial, test IWAE-{k} per digit (same thresholded test set): "
              f"{p['mean']:+.2f} ± {p['se']:.2f} nats")
    print("ELBO: 10 draws of q per digit; ±: standard error over digits; gap = train − test; "
          "train IWAE on a random subset of training digits the size of the test set.")
    print("ppgen-dynamic / ppgen-cli are scored on a fixed stochastic binarization of the same test images: "
          "not comparable with the thresholded rows.")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 epochs, K=50, 200 test digits")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 30)")
    parser.add_argument("-k", type=int, default=None, help="IWAE particles (default 1000)")
    parser.add_argument("--seeds", type=int, default=1, help="number of training seeds (default 1)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first training seed (default 0)")
    parser.add_argument("--engine", choices=("auto", "torch", "jax"), default="auto",
                        help="ppgen's SVI engine for the ppgen rows (default auto, as ppgen.fit and `ppgen train`)")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=None, help="run only these rows (default all)")
    parser.add_argument("--n-test", type=int, default=None,
                        help="score the first N test digits (default all 1,000; 200 with --quick)")
    parser.add_argument("--json", default="runs/bench/vae_quality.json", help="where to write the figures")
    args = parser.parse_args(argv)
    results = run(args)
    print_table(results)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    main()
