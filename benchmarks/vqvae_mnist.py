"""VQ-VAE on the bundled MNIST: sample quality under both priors and the leaderboard row, one training.

Stage one is trained once, with the settings of the likelihood leaderboard (``likelihood_table.py``: its
``vqvae`` pair, K = 64 on a 7x7 grid, D = 16, 64 channels; SVI on the torch engine, Adam ``--lr``, batch
``--batch-size``, dynamically binarized training digits, seed ``--seed``). At every epoch count in
``--snapshots`` a copy of the pair is taken (training then resumes from the loop's checkpoint, bit-exact, so
the last snapshot is trained as ``likelihood_table.py --models vqvae --epochs N`` trains it; with the same torch
threads, the same pair) and:

1. its test bound under the uniform prior, and the sample quality of codes drawn uniformly → decoder;
2. its PixelCNN prior is fitted for as many epochs as stage one ran (the stage ``prior``, as ``likelihood_table.py``
   does), then its test bound (the leaderboard's NLL: −[log p(x|z_q) + log p_prior(k)], exact for every IWAE K
   with a point-mass guide) and the sample quality of codes from the learned prior → decoder.

Sample quality is scored as ``gan_mnist.py`` scores the VAE and GAN rows of the README: ``--n`` samples (the
decoder's pixel probabilities E[x | z_q]) against the 1,000 grey-level test digits in the features of
ppgen's offline classifier (:mod:`ppgen.evaluation.samples`): FID, KID, IS, precision and recall.

    python benchmarks/vqvae_mnist.py --snapshots 30,50 --out runs/vqvae_mnist.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from likelihood_table import MODELS  # noqa: E402

import ppgen  # noqa: E402
from ppgen import plots  # noqa: E402
from ppgen.data import load  # noqa: E402
from ppgen.evaluation import iwae  # noqa: E402
from ppgen.evaluation.samples import feature_classifier, sample_quality  # noqa: E402
from ppgen.inference.stages import fit_stage  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--snapshots", default="30,50", help="stage-one epoch counts at which to evaluate")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n", type=int, default=1000, help="generated samples per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/vqvae_mnist.json"))
    return p.parse_args(argv)


def bound(pair, x: torch.Tensor, seed: int) -> dict:
    """The test bound in nats (IWAE-K = ELBO for every K here; ``iwae`` uses one draw of the point mass)."""
    torch.manual_seed(seed)
    ll = iwae(pair, x, k=1000)
    log_px, log_pk = pair.log_bound_parts(x)
    return {"nll": -float(ll.mean()), "nll_se": float(ll.std() / math.sqrt(len(x))),
            "reconstruction_nll": -float(log_px.mean()), "prior_nll": -float(log_pk.mean())}


def snapshot(pair, data, grey, classifier, epochs: int, args, out_dir: Path) -> dict:
    """Both rows (uniform prior, learned prior) of a copy of ``pair`` after ``epochs`` of stage one."""
    pair = copy.deepcopy(pair).eval()
    x = data.test
    row: dict = {"epochs": epochs, **pair.codebook_stats(x)}
    row["uniform"] = bound(pair, x, args.seed)
    row["uniform"].update(sample_quality(pair, grey, n=args.n, classifier=classifier, seed=args.seed))
    start = time.perf_counter()
    history = fit_stage(pair, "prior", data, epochs=epochs, batch_size=args.batch_size, seed=args.seed).history
    pair.eval()
    row["prior_seconds"] = time.perf_counter() - start
    row["prior_val_nll"] = history[-1].get("val_prior_nll")
    row["learned"] = bound(pair, x, args.seed)
    start = time.perf_counter()
    row["learned"].update(sample_quality(pair, grey, n=args.n, classifier=classifier, seed=args.seed))
    row["learned"]["sampling_seconds"] = time.perf_counter() - start
    with torch.no_grad():
        torch.manual_seed(args.seed)
        plots.sample_grid(pair.generate(64), out_dir / f"vqvae_mnist_{epochs}_learned.png",
                          f"VQ-VAE, {epochs} epochs: codes from the PixelCNN prior")
    return row


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    snapshots = sorted(int(s) for s in args.snapshots.split(","))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grey = load("mnist", binarize=None, seed=args.seed)  # the reference: same split, grey levels
    classifier, accuracy = feature_classifier(grey)
    print(f"feature classifier: test accuracy {accuracy:.4f}", flush=True)
    torch.manual_seed(args.seed)  # as likelihood_table.py: seed, data, then the pair's initial weights
    data = load("mnist", binarize="dynamic", seed=args.seed)
    pair = MODELS["vqvae"](data.x_shape)
    print(data.describe(), f"| batch {args.batch_size}, Adam {args.lr}, threads {torch.get_num_threads()}", flush=True)
    result: dict = {"settings": {k: str(v) for k, v in vars(args).items()}, "classifier_accuracy": accuracy,
                    "rows": []}
    fit, start = None, time.perf_counter()
    for epochs in snapshots:
        fit = ppgen.fit(pair, data, backend="svi", epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                        seed=args.seed, engine="torch", progress=False,
                        resume=None if fit is None else fit.checkpoint())
        train_seconds = time.perf_counter() - start
        row = snapshot(pair, data, grey, classifier, epochs, args, args.out.parent)
        row["train_seconds"] = train_seconds
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        args.out.write_text(json.dumps(result, indent=1))
        start = time.perf_counter()
    print("\n| VQ-VAE (K 64, 7x7), epochs | prior | test bound (nats) | FID | KID×10³ | IS | precision | recall |")
    print("|---|---|---|---|---|---|---|---|")
    for row in result["rows"]:
        for prior in ("uniform", "learned"):
            r = row[prior]
            print(f"| {row['epochs']} | {prior} | {r['nll']:.2f} ± {r['nll_se']:.2f} | {r['fid']:.2f} | "
                  f"{1e3 * r['kid']:.0f} | {r['is']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
