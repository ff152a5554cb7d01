"""``ppgen evaluate RUN``: held-out ELBO, IWAE-K (and AIS) log-likelihood, collapse figures, a pair's own figures,
sample quality, and the same after rejection sampling."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ppgen.commands import help_of
from ppgen.commands.args import (
    add_rejection,
    check_rejection,
    modes_line,
    non_negative,
    positive,
    quality_line,
    write_result,
)


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help=help_of("evaluate"),
                       description="Evaluate a trained run on held-out data: ELBO, the IWAE-K estimate of log p(x) "
                                   "(and bits/dim), KL per latent dimension, active units and I(x; z).")
    p.add_argument("run", type=Path, help="run directory written by `ppgen train`")
    p.add_argument("--iwae", type=positive, default=1000, metavar="K", help="importance samples per example (default 1000; one for a point-mass guide, whose "
                        "IWAE-K equals its ELBO for every K)")
    p.add_argument("--ais", type=positive, metavar="N", help="also AIS with N intermediate distributions (e.g. 1000)")
    p.add_argument("--ais-chains", type=positive, default=16, metavar="C", help="AIS chains per example (default 16)")
    p.add_argument("--bdmc", type=non_negative, default=0, metavar="M",
                   help="with --ais: BDMC bounds on M examples simulated from the model (default off)")
    p.add_argument("--sigma", type=sigma_value, metavar="S|fit",
                   help="with --ais: the likelihood under a Gaussian observation model N(x; E[x|z], S² I) (a GAN's "
                        "generator, a VAE's decoder mean; Wu et al. 2017), on grey levels dequantized; 'fit': the S "
                        "that maximizes the AIS estimate on validation examples")
    p.add_argument("--sigma-points", type=positive, default=100, metavar="M",
                   help="with --sigma fit: validation examples S is fitted on (default 100)")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--limit", type=positive, help="evaluate only the first N examples")
    p.add_argument("--seed", type=non_negative, default=0)
    q = p.add_argument_group("sample quality (features of a classifier ppgen trains on the data set and caches)")
    q.add_argument("--fid", action="store_true", help="Fréchet distance of generated vs test examples")
    q.add_argument("--kid", action="store_true", help="kernel (MMD) distance, unbiased")
    q.add_argument("--is", dest="inception", action="store_true", help="Inception Score of the classifier's labels")
    q.add_argument("--pr", action="store_true", help="precision and recall (Kynkäänniemi et al., 2019)")
    q.add_argument("--samples", type=positive, metavar="N", help="generated examples to score (default: as many as test)")
    add_rejection(p)
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=run)


def sigma_value(text: str) -> float | str:
    """``fit`` or a positive number (the observation scale)."""
    if text == "fit":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number or 'fit', got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from ppgen import runs, workflows

    if args.rejection:
        check_rejection(args)
    result = workflows.evaluate_run(args.run, iwae_k=args.iwae, split=args.split, limit=args.limit, seed=args.seed,
                                    ais_steps=args.ais, ais_chains=args.ais_chains, bdmc_points=args.bdmc,
                                    sigma=args.sigma, sigma_points=args.sigma_points)
    wanted = [m for m, on in (("fid", args.fid), ("kid", args.kid), ("is", args.inception), ("pr", args.pr)) if on]
    if wanted:
        result["sample_quality"] = workflows.evaluate_run_samples(args.run, wanted, n=args.samples, seed=args.seed)
    if args.rejection:
        result["rejection"] = workflows.evaluate_rejection(args.run, wanted, steps=args.rejection_steps,
                                                           quantile=args.quantile, n=args.samples, seed=args.seed)
    write_result(Path(args.run) / f"evaluation_{args.split}.json", result)
    note = runs.unfinished_note(args.run)  # the weights came from the checkpoint: say so, and how to finish
    if note:
        print(note, file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    k = args.iwae
    print(f"{args.run} on {result['n']} {args.split} examples ({result['seconds']} s)")
    if "modes" in result:
        print("  mode coverage       " + modes_line(result) + " (2,500 samples)")
    if "note" in result:
        print(f"  {result['note']}")
    if "sigma" in result:
        fitted = result.get("sigma_fit")
        print(f"  Gaussian observations, sigma {result['sigma']:.4g}" + (
            f" (fitted on {fitted['points']} validation examples, ± {100 * fitted['se_log_sigma']:.1f}%)"
            if fitted else "") + f"; data {result['data_convention']}")
    if "elbo" in result:
        print(f"  ELBO                {result['elbo']:10.2f} ± {result['elbo_se']:.2f} nats")
    if f"iwae_{k}" in result:
        print(f"  IWAE-{k:<14d}{result[f'iwae_{k}']:10.2f} ± {result[f'iwae_{k}_se']:.2f} nats"
              f"   ({result['bits_per_dim']:.4f} bits/dim)")
    if "iwae_note" in result:
        print(f"  ({result['iwae_note']})")
    if "likelihood_note" in result:
        print(f"  ({result['likelihood_note']})")
    if "perplexity" in result:
        print(f"  perplexity (counts) {result['perplexity']:10.1f} (ELBO)" + (
            f"   {result[f'perplexity_iwae_{k}']:.1f} (IWAE-{k})" if f"perplexity_iwae_{k}" in result else "")
            + f"   over {result['words']:.0f} words")
        print(f"  perplexity (words)  {result['perplexity_sequence']:10.1f} (ELBO)" + (
            f"   {result[f'perplexity_sequence_iwae_{k}']:.1f} (IWAE-{k})"
            if f"perplexity_sequence_iwae_{k}" in result else "") + "   word sequence: without log(N!/Π x!)")
        if "perplexity_unigram" in result:
            print(f"  per-word perplexity {result['perplexity_iwae_bound']:10.1f} (IWAE-{k}: an upper bound)   "
                  f"{result['perplexity_completion']:.1f} (document completion: an estimate)   "
                  f"{result['perplexity_unigram']:.1f} (unigram baseline, exact)")
        print(f"  topics              NPMI {result['npmi']:.3f}, C_V {result['c_v']:.3f}, UMass {result['umass']:.3f}"
              f" (top 10 words, on the {result['coherence_reference']}); diversity {result['diversity']:.3f} "
              f"(top 25), inverted RBO {result['inverted_rbo']:.3f}")
    if f"ais_{args.ais}" in result:
        a = args.ais
        print(f"  AIS-{a:<15d}{result[f'ais_{a}']:10.2f} ± {result[f'ais_{a}_se']:.2f} nats"
              f"   ({result['ais_bits_per_dim']:.4f} bits/dim; {args.ais_chains} chains, {result['ais_seconds']} s)")
    if "bdmc_gap" in result:
        print(f"  BDMC ({result['bdmc_points']} simulated) lower {result['bdmc_lower']:.2f}  upper "
              f"{result['bdmc_upper']:.2f}  gap {result['bdmc_gap']:.2f} nats")
    if "ais_note" in result:
        print(f"  AIS: {result['ais_note']}")
    if "active_units" in result:
        print(f"  KL(q‖p) total       {result['kl_total']:10.2f} nats; active units {result['active_units']}"
              f"/{len(result['kl_per_dim'])}; I(x;z) {result['mutual_information']:.2f} nats")
        print("  KL per dimension    " + " ".join(f"{v:.2f}" for v in result["kl_per_dim"]))
    if "sample_quality" in result:
        print("  " + quality_line(result["sample_quality"]))
    if "family_metrics" in result:
        print("  " + ", ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in result["family_metrics"].items()))
    if "rejection" in result:
        r = result["rejection"]
        print(f"  with rejection sampling (ratio classifier: held-out accuracy {r.get('classifier_accuracy', 0):.3f},"
              f" log loss {r.get('classifier_log_loss', float('nan')):.3f}; accepts {100 * r['accept_rate']:.1f}%)")
        if "modes" in r:
            print("    mode coverage     " + modes_line(r) + " (2,500 samples)")
        if "sample_quality" in r:
            print("    " + quality_line(r["sample_quality"]))
    return 0
