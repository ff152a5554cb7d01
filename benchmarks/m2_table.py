"""M2's test accuracy with few labels on MNIST, beside Pyro's ss-vae tutorial and a classifier on the labels alone.

For each label count and each of ``--sets`` random class-balanced label sets (``ppgen.data.keep_labels``, seeds 0, 1,
...), M2 is trained with each ``--y-guide`` (default: y enumerated) with the family's training defaults (Pyro's ss-vae
example's: hidden 500, z 50, batch 200, Adam at 4.2e-4, β1 0.9, 50 epochs, 46 × −log q(y|x) per labelled example;
and ppgen's: at least 10% labelled rows in every batch, ``--labelled-share``) on
``--data`` (default the full MNIST, 50,000 / 10,000 / 10,000, dynamically binarized) and scored by the accuracy of
argmax q(y|x) on the test split, at the epoch of the best validation accuracy (as Pyro's example reports it) and at
the last; every epoch's validation and test accuracy is printed (the curve). Beside it, the same classifier network
trained on the labels alone. One row per (labels, method): mean ± sd over the sets, beside the tutorial's (Pyro's
ss-vae tutorial, y enumerated with the auxiliary loss, 5 label sets: 0.9319 / 0.9437 / 0.9487 / 0.9582 at 100 / 600
/ 1000 / 3000 labels; the classifier alone 0.7712 / 0.8716 / 0.8863 / 0.9108).

    nice -n 10 python benchmarks/m2_table.py                      # the whole 4 x 5 table (a GPU: benchmarks/gpu.sh)
    nice -n 10 python benchmarks/m2_table.py --labels 100 --sets 1 --epochs 10 --json m2.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import ppgen
from ppgen import data as datasets
from ppgen.models.m2 import M2, Classifier

#: Pyro's ss-vae tutorial (enumeration + auxiliary loss; classifier on the labels alone), mean over 5 label sets
TUTORIAL = {100: (0.9319, 0.7712), 600: (0.9437, 0.8716), 1000: (0.9487, 0.8863), 3000: (0.9582, 0.9108)}


def labels_only(data: datasets.Dataset, hidden: int, device: str, steps: int = 500) -> float:
    """Test accuracy of the M2 classifier network trained on the labelled training examples alone (full-batch Adam,
    each step a fresh binarization of those digits)."""
    torch.manual_seed(0)
    y = data.train_inputs["y"].to(device)
    known = y >= 0
    x = data.train.to(device)[known]
    net = Classifier(data.x_shape, 10, (hidden,)).to(device)
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.bernoulli(x)), y[known]).backward()
        opt.step()
    with torch.no_grad():
        return float((net(data.test.to(device)).argmax(-1) == data.test_inputs["y"].to(device)).float().mean())


def accuracy(pair: M2, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.cat([pair.classify(x[r:r + 2000]) for r in range(0, len(x), 2000)]).eq(y).float().mean())


def train_m2(data: datasets.Dataset, guide: str, args, tag: str) -> dict:
    """Train M2, printing each epoch's validation and test accuracy; the test accuracy at the best validation epoch
    and at the last, with the epochs and seconds."""
    torch.manual_seed(0)
    pair = M2(x_shape=data.x_shape, y_guide=guide, precision=args.precision,
              **{k: v for k, v in (("hidden", args.hidden), ("z_dim", args.z_dim), ("alpha", args.alpha),
                                            ("labelled_share", args.labelled_share),
                                            ("labelled_batches", args.labelled_batches),
                                            ("grey_levels", args.grey_levels or None))
                 if v is not None})
    if args.init == "pyro":
        from m2_recipe import pyro_init  # benchmarks/ beside this script

        pyro_init(pair)
    val, test = (data.val.to(args.device), data.val_inputs["y"].to(args.device)), \
        (data.test.to(args.device), data.test_inputs["y"].to(args.device))
    curve = []
    start = time.perf_counter()

    def per_epoch(fit) -> dict:
        pair.eval()
        curve.append((accuracy(pair, *val), accuracy(pair, *test)))
        pair.train()
        print(f"    {tag} epoch {len(curve)}: val {curve[-1][0]:.4f} test {curve[-1][1]:.4f} "
              f"({time.perf_counter() - start:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
        return {}

    defaults = M2.train_defaults
    ppgen.fit(pair, data, backend="svi", engine="torch", epochs=args.epochs or defaults["epochs"],
              batch_size=args.batch or defaults["batch_size"], lr=args.lr or defaults["lr"], seed=0,
              device=args.device, progress=False, announce=lambda message: None, callback=per_epoch)
    best = max(range(len(curve)), key=lambda e: curve[e][0])
    return {"best_val_test": curve[best][1], "best_epoch": best + 1, "last_test": curve[-1][1],
            "epochs": len(curve), "seconds": time.perf_counter() - start, "curve": curve}


def summary(values: list[float]) -> str:
    sd = f"{statistics.stdev(values):.4f}" if len(values) > 1 else "- (one set)"
    return f"{statistics.mean(values):.4f} ± {sd}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist-full")
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000])
    parser.add_argument("--sets", type=int, default=5, help="random label sets per count")
    parser.add_argument("--first-set", type=int, default=0, help="seed of the first label set")
    parser.add_argument("--guides", nargs="+", default=["enumerate"], help="enumerate, sample, relaxed")
    parser.add_argument("--epochs", type=int, default=None, help="default: the family's (50)")
    parser.add_argument("--batch", type=int, default=None, help="default: the family's (200)")
    parser.add_argument("--lr", type=float, default=None, help="default: the family's (4.2e-4)")
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--z-dim", type=int, default=None)
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--labelled-share", type=float, default=None, help="default: the family's (0.1)")
    parser.add_argument("--labelled-batches", default=None, help="mixed or apart; default: the family's")
    parser.add_argument("--grey-levels", action="store_true", help="grey pixels in the networks and as the "
                        "Bernoulli targets (the data not binarized; the bound then no log-likelihood)")
    parser.add_argument("--init", default="torch", help="torch, or pyro: the hidden layers N(0, 0.001^2) as in "
                        "Pyro's ss-vae example")
    parser.add_argument("--precision", default="float32", help="float32 or bfloat16 (the networks' products)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-baseline", action="store_true", help="skip the classifier on the labels alone")
    parser.add_argument("--json", default=None, help="write every run's figures here as they come")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    full = datasets.load(args.data, binarize=None) if args.grey_levels else datasets.load(args.data)
    print(f"{full.describe()}; M2 {args.precision}, {torch.get_num_threads()} thread(s), device {args.device}",
          flush=True)
    runs, rows = [], []
    for count in args.labels:
        results: dict[str, list[float]] = {}
        for s in range(args.first_set, args.first_set + args.sets):
            data = datasets.keep_labels(full, count, seed=s)
            if not args.no_baseline:
                results.setdefault("labels alone", []).append(labels_only(data, args.hidden or 500, args.device))
                print(f"  labels {count} set {s} labels alone: {results['labels alone'][-1]:.4f}", flush=True)
            for guide in args.guides:
                run = {"labels": count, "set": s, "guide": guide, **train_m2(data, guide, args, f"{count}/{s}/{guide}")}
                runs.append(run)
                results.setdefault(guide, []).append(run["best_val_test"])
                results.setdefault(f"{guide} (last)", []).append(run["last_test"])
                print(f"  labels {count} set {s} {guide}: test {run['best_val_test']:.4f} at the best validation "
                      f"epoch {run['best_epoch']} of {run['epochs']}, last {run['last_test']:.4f} "
                      f"({run['seconds']:.0f} s)", flush=True)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump({"args": vars(args), "runs": runs}, f)
        tutorial = TUTORIAL.get(count) if args.data == "mnist-full" else None  # theirs: the full MNIST
        for name, values in results.items():
            theirs = "" if tutorial is None or name.endswith("(last)") or name not in ("enumerate", "labels alone") \
                else f"   tutorial {tutorial[0] if name == 'enumerate' else tutorial[1]:.4f}"
            rows.append({"labels": count, "method": name, "mean": statistics.mean(values),
                         "sd": statistics.stdev(values) if len(values) > 1 else None, "sets": len(values)})
            print(f"labels {count:5d}  {name:18s} {summary(values)} ({len(values)} set(s)){theirs}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
