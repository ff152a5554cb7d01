"""Training recipes of the neural topic models, screened as ``ppgen train`` runs them (benchmarks/topics.py's
``neural``: the command's own path), scored as ``ppgen evaluate`` does: NPMI and C_V of the top-10 words on the whole
training corpus, diversity (top 25), the per-word IWAE-20 bound on the test documents beside the unigram baseline,
and the mean KL(q(z | x) ‖ p(z)) per training document (near 0: the topic proportions collapsed onto the prior).

    python benchmarks/topics_recipes.py --corpus speeches --topics 20 --seeds 0 --recipes default background
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from topics import neural

import ppgen

#: name -> (model options, training options), flags of ``ppgen train`` beside the family's defaults
RECIPES: dict[str, tuple[dict, dict]] = {
    "default": ({}, {}),
    "background": ({"background": "on"}, {}),
    "bg-batch64": ({"background": "on"}, {"batch_size": 64}),
    "bg-batch64-lr2e-3": ({"background": "on"}, {"batch_size": 64, "lr": 2e-3}),
    "bg-anneal20": ({"background": "on"}, {"anneal_epochs": 20.0}),
    "bg-anneal50": ({"background": "on"}, {"anneal_epochs": 50.0}),
    "bg-nobn": ({"background": "on", "batch_norm": "off"}, {}),
    "bg-paper": ({"background": "on", "dropout": 0.6}, {"batch_size": 200, "lr": 2e-3, "adam_beta1": 0.99}),
    "bg-alpha0.1": ({"background": "on", "alpha": 0.1}, {}),
    "bg-alpha0.3": ({"background": "on", "alpha": 0.3}, {}),
    "bg-hidden200": ({"background": "on", "hidden": (200, 200)}, {}),
    "bg-dropout0": ({"background": "on", "dropout": 0.0}, {}),
    "batch64": ({}, {"batch_size": 64}),
    "batch32": ({}, {"batch_size": 32}),
    "batch16": ({}, {"batch_size": 16}),
    "batch32-anneal20": ({}, {"batch_size": 32, "anneal_epochs": 20.0}),
    "bg-batch32": ({"background": "on"}, {"batch_size": 32}),
    "batch64-lr3e-3": ({}, {"batch_size": 64, "lr": 3e-3}),
    "batch64-ep200": ({}, {"batch_size": 64, "epochs": 200}),
    "batch64-anneal20": ({}, {"batch_size": 64, "anneal_epochs": 20.0}),
    "batch64-dropout0": ({"dropout": 0.0}, {"batch_size": 64}),
    "anneal20": ({}, {"anneal_epochs": 20.0}),
    "final0.1": ({}, {"lr_final": 0.1}),
    "lr3e-3-final0.1": ({}, {"lr": 3e-3, "lr_final": 0.1}),
    "ep300": ({}, {"epochs": 300}),
    "ep300-final0.1": ({}, {"epochs": 300, "lr_final": 0.1}),
    "ep1000-final0.1": ({}, {"epochs": 1000, "lr_final": 0.1}),
    "batch16-ep300-final0.1": ({}, {"batch_size": 16, "epochs": 300, "lr_final": 0.1}),
    "bg-final0.1": ({"background": "on"}, {"lr_final": 0.1}),
}


def mean_kl(run_dir: Path) -> float:
    """Mean over the training documents of KL(q(z | x) ‖ p(z)) (ProdLDA: Gaussians in closed form; the
    Dirichlet-VAE: Dirichlets in closed form), the networks in evaluation mode."""
    pair = ppgen.load(run_dir)
    data = ppgen.data.load(json.loads((run_dir / "config.json").read_text())["data"]["name"])
    x = data.train[: len(data.train)]
    pair.eval()
    with torch.no_grad():
        if pair.name == "prodlda":
            loc, scale = pair.encode(x)
            q = torch.distributions.Normal(loc, scale)
            p = torch.distributions.Normal(torch.zeros_like(loc), pair.prior_scale())
            return float(torch.distributions.kl_divergence(q, p).sum(-1).mean())
        conc = pair.encoder(x)
        q = torch.distributions.Dirichlet(conc)
        p = torch.distributions.Dirichlet(torch.full_like(conc, pair.config.alpha))
        return float(torch.distributions.kl_divergence(q, p).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="speeches")
    parser.add_argument("--models", nargs="+", default=["prodlda"])
    parser.add_argument("--topics", type=int, nargs="+", default=[20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--epochs", type=int, help="default: ppgen train's (100)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-recipes"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="append each result here as it comes (one JSON object a line)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for k in args.topics:
        for seed in args.seeds:
            for model in args.models:
                for recipe in args.recipes:
                    model_options, train_options = RECIPES[recipe]
                    start = time.perf_counter()
                    r = neural(model, args.corpus, k, seed, args.workdir, args.epochs, model_options, train_options,
                               tag=f"-{recipe}")
                    r["kl_per_document"] = mean_kl(args.workdir / f"{args.corpus}-{model}-{k}-{seed}-{recipe}")
                    r.update(corpus=args.corpus, model=model, topics=k, seed=seed, recipe=recipe,
                             wall=time.perf_counter() - start)
                    print(f"{args.corpus} K={k} seed={seed} {model} {recipe:20s} NPMI {r['npmi']:.3f} C_V {r['c_v']:.3f} "
                          f"div {r['diversity']:.3f} bound {r['perplexity_bound']:.0f} unigram "
                          f"{r['perplexity_unigram']:.0f} KL/doc {r['kl_per_document']:.1f} {r['seconds']:.0f} s",
                          flush=True)
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
