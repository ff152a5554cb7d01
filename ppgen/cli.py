"""The ``ppgen`` command: train, evaluate and sample deep generative models.

Every subcommand has ``--help``. A user mistake (a missing file, data of the
wrong shape, NaNs, non-binary data under a Bernoulli likelihood, an unknown
model) ends with one line on stderr and exit code 2; nothing half-written is left.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from ppgen.errors import UserError
from ppgen.inference.options import AdversarialOptions, OptionError, SVIOptions, cli_flags, flag_of
from ppgen.models.vae import NETS as VAE_NETS

EPILOG = """examples:
  ppgen train vae --data mnist --z-dim 50 --epochs 30 --out runs/vae
  ppgen evaluate runs/vae --iwae 1000
  ppgen sample runs/vae -n 64 --out samples.png
  ppgen compare runs/vae --points 16 --chains 4
  ppgen train vae --resume runs/vae --epochs 40
  ppgen train gan --data ring8 --loss ns --epochs 50 --out runs/gan ; ppgen evaluate runs/gan --fid
  ppgen train vqvae --data digits --codes 16 --downsample 1 --out runs/vq ; ppgen prior runs/vq
  ppgen models ; ppgen data"""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line: ``ppgen train: error: ... (see ppgen train --help)``, exit 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "whole number"
    return parse


#: argparse types: whole numbers >= 1 (counts) and >= 0 (seeds, optional counts where 0 means off)
positive = _int_at_least(1)
non_negative = _int_at_least(0)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 400 or 512,256, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return values


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (SVI, or adversarially) and write a run directory",
                       description="Train a model/guide pair by SVI (Pyro), or adversarially against a critic "
                                   "(--backend adversarial, the default for gan), and write a run directory: "
                                   "config.json, checkpoint.pt, model.pt, metrics.json, history.csv and pictures.")
    p.add_argument("model", help="model family (see `ppgen models`), e.g. vae")
    p.add_argument("--data", help="bundled name (see `ppgen data`) or a path: IDX folder/file, .npz, .npy "
                   "(default mnist)")
    p.add_argument("--out", type=Path, help="run directory to create (default runs/<model>)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in RUN (its config is reused; "
                   "--epochs sets the new total)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    m = p.add_argument_group("model")
    m.add_argument("--z-dim", type=int, help="latent dimensions (default 50)")
    m.add_argument("--hidden", type=_ints, help="hidden layer sizes, comma separated (default 400)")
    m.add_argument("--z-dims", type=_ints, help="dlgm/hvae/lvae: latent sizes per layer, bottom first, e.g. 50,20 "
                   "(with --hidden giving one hidden size per layer, e.g. 400,200)")
    m.add_argument("--net", choices=list(VAE_NETS), help="encoder/decoder networks (default mlp; pixelcnn: an "
                   "autoregressive decoder p(x|z) = prod_i p(x_i | x_<i, z) with an MLP encoder)")
    m.add_argument("--likelihood", choices=["bernoulli", "cbernoulli", "gaussian", "discretized"],
                   help="p(x|z) (default bernoulli; discretized: ddpm's decoder for grey levels)")
    m.add_argument("--skip", action="store_true", default=None, help="Skip-VAE decoder: z enters every layer")
    m.add_argument("--encoder", action="store_true", default=None, help="gan: add an encoder q(z|x) (BiGAN/ALI)")
    p.set_defaults(model_keys=MODEL_KEYS + _add_family_flags(m))
    d = p.add_argument_group("data")
    d.add_argument("--binarize", choices=["dynamic", "static", "threshold", "none"],
                   help="binarization for Bernoulli likelihoods (default: dynamic for mnist/digits, none otherwise)")
    d.add_argument("--split-seed", type=non_negative, help="seed of the stratified train/val/test split (default 0)")
    t = p.add_argument_group("training (SVI; the flags come from ppgen.inference.options.SVIOptions)")
    _add_option_flags(t, SVIOptions, skip=())
    t.add_argument("--select", choices=["best", "last"], help="keep the best-validation epoch (default) or the last")
    a = p.add_argument_group("adversarial (--backend adversarial; --lr sets both players' rates, default 2e-4)")
    a.add_argument("--backend", choices=["svi", "adversarial"],
                   help="training backend (default: adversarial for gan, svi for the other families)")
    _add_option_flags(a, AdversarialOptions, skip={f.name for _, f in cli_flags(SVIOptions)})
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--nproc", type=positive, help="data-parallel: train in this many processes on this machine "
                   "(torch.distributed, as `torchrun --nproc-per-node N -m ppgen train ...`; --batch-size is the "
                   "whole batch, split between them)")
    p.set_defaults(func=_train)


MODEL_KEYS = ("z_dim", "z_dims", "hidden", "net", "likelihood", "skip", "encoder")


def _add_family_flags(group) -> tuple[str, ...]:
    """A flag for every option a registered family's ``Config`` declares beyond the flags above, so a new family's
    options need no edit here: the type comes from the annotation (int, float, str, bool, tuple of ints), the help
    from the field's ``metadata["help"]`` and the flag name from ``metadata["flag"]`` (else the field's name)."""
    import dataclasses

    from ppgen.models import REGISTRY

    added: dict[str, list[str]] = {}
    kinds: dict[str, tuple[str, dataclasses.Field]] = {}
    for name, cls in sorted(REGISTRY.items()):
        for f in dataclasses.fields(cls.Config):
            if f.name == "x_shape" or f.name in MODEL_KEYS:
                continue
            added.setdefault(f.name, []).append(name)
            kinds.setdefault(f.name, (f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str"), f))
    for key, families in added.items():
        kind, f = kinds[key]
        flag = "--" + f.metadata.get("flag", key.replace("_", "-"))
        help_text = f"{'/'.join(families)}: {f.metadata.get('help', key.replace('_', ' '))} (default {f.default})"
        if kind == "bool":
            group.add_argument(flag, dest=key, action="store_true", default=None, help=help_text)
        elif kind.startswith("tuple"):
            group.add_argument(flag, dest=key, type=_ints, help=help_text)
        else:
            choices = f.metadata.get("choices")
            group.add_argument(flag, dest=key, type={"int": int, "float": float}.get(kind, str), choices=choices,
                               help=help_text)
    return tuple(added)
TRAIN_KEYS = tuple(dict.fromkeys([f.name for _, f in cli_flags(SVIOptions) + cli_flags(AdversarialOptions)]
                                 + ["select", "backend"]))


def _add_option_flags(group, cls, skip) -> None:
    """One flag per option the dataclass exposes: its type, choices and help come from the declaration."""
    from ppgen.workflows import CLI_DEFAULTS

    for flag, f in cli_flags(cls):
        if f.name in skip:
            continue
        default = CLI_DEFAULTS.get(f.name, f.default)
        help_text = f.metadata["help"] if default is None or default is False else f"{f.metadata['help']} (default {default})"
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
        choices = getattr(f.metadata["check"], "choices", None)
        if kind == "bool":
            group.add_argument(f"--{flag}", dest=f.name, action="store_true", default=None, help=help_text)
        elif kind.startswith("tuple"):
            group.add_argument(f"--{flag}", dest=f.name, type=_ints, help=help_text)
        else:
            parse = {"int": int, "float": float}.get(kind, str)
            group.add_argument(f"--{flag}", dest=f.name, type=parse, choices=choices, help=help_text)


#: options a resumed run takes from its config (only --epochs, the new total, may be given)
RESUME_ALLOWED = ("command", "func", "model", "model_keys", "resume", "epochs", "no_progress", "nproc", "argv")


def _train(args) -> int:
    from ppgen import workflows
    from ppgen.inference import distributed

    if args.nproc and args.nproc > 1 and distributed.launched() == 1:
        return distributed.launch(args.nproc, _without_nproc(args.argv))
    progress = False if args.no_progress else None
    if args.resume is not None:
        config = _resume_config(args)
        out = args.resume
    else:
        config = _new_config(args)
        out = args.out or Path("runs") / args.model.lower()
    try:
        metrics = workflows.train_run(config, out, resume=args.resume is not None, overwrite=args.overwrite,
                                      progress=progress)
    except distributed.PeerLost as err:
        raise distributed.PeerLost(f"{err}; continue with `ppgen train {args.model} --resume {out}`") from None
    except KeyboardInterrupt:
        if distributed.is_writer():
            print(_interrupted_message(args.model, out), file=sys.stderr)
        return 130
    finally:
        distributed.leave()
    if not distributed.is_writer():
        return 1 if metrics.get("stopped") else 0
    shown = [f"{k} {v:.2f}" for k, v in metrics.items() if k.endswith("_elbo") and v is not None]
    if "modes" in metrics:
        shown.append(_modes_line(metrics))
    shown += [f"{label} {metrics[k]:.4f}" for k, label in (("loss_d", "critic loss"), ("loss_g", "generator loss"))
              if k in metrics and not shown]
    print(f"wrote {out}: " + ", ".join(shown))
    return 1 if metrics.get("stopped") else 0


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line less its ``--nproc N`` (each launched process is one of the N)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _resume_config(args) -> dict:
    """The run's own config with the new --epochs; any other option is refused (it would be ignored)."""
    from ppgen import runs

    given = sorted(k for k, v in vars(args).items() if k not in RESUME_ALLOWED and v not in (None, False))
    if given:
        names = ", ".join("--" + k.replace("_", "-").replace("num-particles", "particles") for k in given)
        raise UserError(f"--resume continues the run with its own options; drop {names} (only --epochs, the new "
                        "total, may change)")
    config = runs.open_run(args.resume)
    if config["model"] != args.model.lower():
        raise UserError(f"{args.resume} holds a {config['model']} run, not {args.model}; name the same model")
    if args.epochs is not None:
        config["train"]["epochs"] = args.epochs
    return config


def _new_config(args) -> dict:
    from ppgen import models, workflows

    model_options = {k: getattr(args, k) for k in args.model_keys if getattr(args, k) is not None}
    fields = set(models.get(args.model).Config.__dataclass_fields__)
    unsupported = sorted(set(model_options) - fields)
    if unsupported:
        raise UserError(f"{args.model} has no option(s) {', '.join('--' + k.replace('_', '-') for k in unsupported)}")
    binarize = {"none": None, None: "default"}.get(args.binarize, args.binarize)
    data_options = {"name": args.data or "mnist", "binarize": binarize, "seed": args.seed or 0,
                    "split_seed": args.split_seed or 0}
    train_options = {k: getattr(args, k) for k in TRAIN_KEYS if getattr(args, k, None) is not None}
    return workflows.make_config(args.model, model_options, data_options, train_options)


def _interrupted_message(model: str, out: Path) -> str:
    """What to do after Ctrl-C, as the run directory now stands."""
    from ppgen import runs

    if runs.is_run_dir(out) and (out / runs.CHECKPOINT).exists():
        return f"ppgen: interrupted; continue with `ppgen train {model} --resume {out}`"
    return f"ppgen: interrupted before the first checkpoint; nothing was written to {out} (start the run again)"


def _modes_line(m: dict) -> str:
    return (f"modes {m['modes']}/{m['n_modes']}, high quality {100 * m['high_quality']:.1f}%, "
            f"reverse KL {m['reverse_kl']:.3f}")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="held-out ELBO, IWAE log-likelihood, KL per dimension, active units",
                       description="Evaluate a trained run on held-out data: ELBO, the IWAE-K estimate of log p(x) "
                                   "(and bits/dim), KL per latent dimension, active units and I(x; z).")
    p.add_argument("run", type=Path, help="run directory written by `ppgen train`")
    p.add_argument("--iwae", type=positive, default=1000, metavar="K", help="importance samples per example (default 1000; one for a point-mass guide such as "
                        "the VQ-VAE's, whose IWAE-K equals its ELBO for every K)")
    p.add_argument("--ais", type=positive, metavar="N", help="also AIS with N intermediate distributions (e.g. 1000)")
    p.add_argument("--ais-chains", type=positive, default=16, metavar="C", help="AIS chains per example (default 16)")
    p.add_argument("--bdmc", type=non_negative, default=0, metavar="M",
                   help="with --ais: BDMC bounds on M examples simulated from the model (default off)")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--limit", type=positive, help="evaluate only the first N examples")
    p.add_argument("--seed", type=non_negative, default=0)
    q = p.add_argument_group("sample quality (features of a classifier ppgen trains on the data set and caches)")
    q.add_argument("--fid", action="store_true", help="Fréchet distance of generated vs test examples")
    q.add_argument("--kid", action="store_true", help="kernel (MMD) distance, unbiased")
    q.add_argument("--is", dest="inception", action="store_true", help="Inception Score of the classifier's labels")
    q.add_argument("--pr", action="store_true", help="precision and recall (Kynkäänniemi et al., 2019)")
    q.add_argument("--samples", type=positive, metavar="N", help="generated examples to score (default: as many as test)")
    _add_rejection(p)
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    from ppgen import workflows

    if args.rejection:
        _check_rejection(args)
    result = workflows.evaluate_run(args.run, iwae_k=args.iwae, split=args.split, limit=args.limit, seed=args.seed,
                                    ais_steps=args.ais, ais_chains=args.ais_chains, bdmc_points=args.bdmc)
    wanted = [m for m, on in (("fid", args.fid), ("kid", args.kid), ("is", args.inception), ("pr", args.pr)) if on]
    if wanted:
        from ppgen.workflows import evaluate_run_samples

        result["sample_quality"] = evaluate_run_samples(args.run, wanted, n=args.samples, seed=args.seed)
    if args.rejection:
        result["rejection"] = workflows.evaluate_rejection(args.run, wanted, steps=args.rejection_steps,
                                                           quantile=args.quantile, n=args.samples, seed=args.seed)
    _write_result(Path(args.run) / f"evaluation_{args.split}.json", result)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    k = args.iwae
    print(f"{args.run} on {result['n']} {args.split} examples ({result['seconds']} s)")
    if "modes" in result:
        print("  mode coverage       " + _modes_line(result) + " (2,500 samples)")
    if "note" in result:
        print(f"  {result['note']}")
    if "elbo" in result:
        print(f"  ELBO                {result['elbo']:10.2f} ± {result['elbo_se']:.2f} nats")
    if f"iwae_{k}" in result:
        print(f"  IWAE-{k:<14d}{result[f'iwae_{k}']:10.2f} ± {result[f'iwae_{k}_se']:.2f} nats"
              f"   ({result['bits_per_dim']:.4f} bits/dim)")
    if "iwae_note" in result:
        print(f"  ({result['iwae_note']})")
    if "perplexity" in result:
        print(f"  perplexity (counts) {result['perplexity']:10.1f} (ELBO)" + (
            f"   {result[f'perplexity_iwae_{k}']:.1f} (IWAE-{k})" if f"perplexity_iwae_{k}" in result else "")
            + f"   over {result['words']:.0f} words")
        print(f"  perplexity (words)  {result['perplexity_sequence']:10.1f} (ELBO)" + (
            f"   {result[f'perplexity_sequence_iwae_{k}']:.1f} (IWAE-{k})"
            if f"perplexity_sequence_iwae_{k}" in result else "") + "   word sequence: without log(N!/Π x!)")
        print(f"  topics              NPMI {result['npmi']:.3f} (top 10 words, {args.split} documents);"
              f" diversity {result['diversity']:.3f} (top 25)")
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
        print("  " + _quality_line(result["sample_quality"]))
    if "family_metrics" in result:
        print("  " + ", ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in result["family_metrics"].items()))
    if "rejection" in result:
        r = result["rejection"]
        print(f"  with rejection sampling (ratio classifier: held-out accuracy {r.get('classifier_accuracy', 0):.3f},"
              f" log loss {r.get('classifier_log_loss', float('nan')):.3f}; accepts {100 * r['accept_rate']:.1f}%)")
        if "modes" in r:
            print("    mode coverage     " + _modes_line(r) + " (2,500 samples)")
        if "sample_quality" in r:
            print("    " + _quality_line(r["sample_quality"]))
    return 0


def _write_result(path: Path, result: dict) -> None:
    """Write ``result`` as JSON; if the folder is not writable, warn (the result is still printed)."""
    from ppgen import runs

    try:
        runs.write_json(path, result)
    except OSError as err:
        print(f"ppgen: warning: could not write {path} ({err.strerror or err}); the result is printed only",
              file=sys.stderr)


def _quality_line(q: dict) -> str:
    shown = [f"{label} {q[key]:.4g}" for key, label in (("fid", "FID"), ("kid", "KID"), ("is", "IS"),
                                                        ("precision", "precision"), ("recall", "recall")) if key in q]
    return (f"samples ({q['n_fake']} vs {q['n_real']} test; classifier accuracy "
            f"{q.get('classifier_accuracy', float('nan')):.3f}): " + ", ".join(shown))


def _add_rejection(p) -> None:
    r = p.add_argument_group("density-ratio rejection sampling (Azadi et al., 2019): a classifier of data vs "
                             "samples estimates log p_data/p_model; samples are kept with probability exp(D - M)")
    r.add_argument("--rejection", action="store_true", help="correct the samples by rejection (classifier cached "
                   "in the run directory as rejection.pt)")
    r.add_argument("--rejection-steps", type=positive, metavar="N",
                   help="training steps of the ratio classifier (default 10000 on vectors, 2000 on images)")
    r.add_argument("--quantile", type=float, default=0.999, metavar="Q",
                   help="bound M = this quantile of the classifier's logits on samples (default 0.999): 1 is "
                        "exact rejection for the estimated ratio but may accept almost nothing; lower accepts more")


def _check_rejection(args) -> None:
    if (args.rejection_steps is not None and args.rejection_steps < 1) or not 0 < args.quantile <= 1:
        raise UserError("--rejection-steps must be at least 1 and --quantile in (0, 1]")


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="draw from a trained model into a picture or .npy file",
                       description="Draw x from p(z) p(x|z) of a trained run (the likelihood's mean at each z).")
    p.add_argument("run", type=Path, help="run directory written by `ppgen train`")
    p.add_argument("-n", type=positive, default=64, help="number of samples (default 64)")
    p.add_argument("--out", type=Path, default=Path("samples.png"), help=".png (a grid) or .npy (the array)")
    p.add_argument("--seed", type=non_negative, default=0)
    p.add_argument("--steps", type=positive, metavar="S", help="ddpm: sample by DDIM with S steps (at most T)")
    _add_rejection(p)
    p.set_defaults(func=_sample)


def _sample(args) -> int:
    import numpy as np
    import torch

    from ppgen import plots, runs

    runs.check_output_file(args.out, (".png", ".npy"))
    if args.rejection:
        from ppgen.workflows import ratio_sampler

        _check_rejection(args)
        pair = ratio_sampler(args.run, steps=args.rejection_steps, quantile=args.quantile, seed=args.seed)
    else:
        pair = runs.load_pair(args.run)
    if args.steps is not None:
        pair = _with_sample_steps(pair, args.steps, args.rejection)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        x = pair.generate(args.n)
    if args.out.suffix == ".npy":
        runs.atomic_write_bytes(args.out, _npy_bytes(np, x.numpy()))
    else:
        plots.sample_grid(x, args.out, f"{args.n} samples from {args.run}")
    print(f"wrote {args.out}")
    return 0


def _with_sample_steps(pair, steps: int, rejection: bool):
    """The run's pair rebuilt to sample by DDIM in ``steps`` steps (a family whose config has ``sample_steps``)."""
    config = pair.config_dict() if not rejection else {}
    if "sample_steps" not in config:
        raise UserError("--steps applies to a family that samples in steps (ddpm), without --rejection")
    faster = type(pair).from_config({**config, "sample_steps": steps, "sampler": "ddim"})
    faster.load_state_dict(pair.state_dict())
    return faster.eval()


def _npy_bytes(np, array) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _add_listings(sub) -> None:
    sub.add_parser("models", help="list the model families", description="List the model families, one per line."
                   ).set_defaults(func=_models)
    sub.add_parser("data", help="list the bundled data sets", description="List the bundled data sets, one per line; "
                   "any path to IDX files, .npz or .npy also works as --data.").set_defaults(func=_data)


def _models(args) -> int:
    from ppgen import models

    for name, line in models.describe().items():
        print(f"{name:14s} {line}")
    return 0


def _data(args) -> int:
    from ppgen import data

    for name, line in data.describe().items():
        print(f"{name:14s} {line}")
    print(f"{'<path>':14s} your own data: a folder of MNIST IDX files, an IDX file, .npz (x, y) or .npy")
    print(f"{'<text path>':14s} your own corpus: FILE.csv (column text) or FILE.csv:COLUMN, or a folder of "
          ".txt files (UTF-8), as word counts")
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="NUTS on p(z|x) beside the encoder's q(z|x): distances and the inference gap",
                       description="Sample p(z | x, θ) with NUTS (NumPyro; the trained decoder fixed) for test "
                                   "points, compare it with the encoder's q(z | x) (KL, W2, interval coverage, PSIS "
                                   "k-hat) and split log p(x) - ELBO into approximation and amortization gaps "
                                   "(Cremer et al., 2018). Writes compare.nc (ArviZ), compare.json and pictures.")
    p.add_argument("run", type=Path, help="run directory written by `ppgen train`")
    p.add_argument("--points", type=int, default=16, help="the first N points of the split (default 16)")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--chains", type=int, default=4, help="NUTS chains per point (default 4)")
    p.add_argument("--warmup", type=int, default=500, help="NUTS warmup iterations (default 500)")
    p.add_argument("--samples", type=int, default=1000, help="NUTS draws per chain (default 1000)")
    p.add_argument("--steps", type=int, default=1000, help="Adam steps of the per-point Gaussian q* (default 1000)")
    p.add_argument("--iwae", type=int, default=5000, metavar="K", help="importance samples for log p(x) (default 5000)")
    p.add_argument("--out", type=Path, help="output directory (default RUN/compare)")
    p.add_argument("--seed", type=non_negative, default=0)
    p.set_defaults(func=_compare)


def _compare(args) -> int:
    from ppgen import runs
    from ppgen.workflows import compare_run

    if args.points < 1 or args.chains < 1 or args.samples < 1 or args.warmup < 0 or args.steps < 0 or args.iwae < 1:
        raise UserError("--points, --chains, --samples and --iwae must be at least 1, --warmup and --steps at least 0")
    pair = runs.load_pair(args.run)
    if not pair.has_guide:
        raise UserError(f"{args.run} holds a {pair.name} without a guide q(z|x); compare needs an encoder to compare "
                        "with NUTS (train a vae, or gan --encoder)")
    runs.check_output_dir(args.out if args.out is not None else args.run / "compare")
    compare_run(args.run, args.out, points=args.points, chains=args.chains, warmup=args.warmup,
                samples=args.samples, split=args.split, steps=args.steps, iwae_k=args.iwae, seed=args.seed)
    return 0


def _shown(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, tuple | list) else str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="ppgen", description="Deep generative models as probabilistic programs: "
                                     "Pyro model/guide pairs trained by SVI and checked by NUTS.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _add_prior(sub) -> None:
    p = sub.add_parser("prior", help="vqvae stage two: fit an autoregressive prior (PixelCNN) over a run's codes",
                       description="Fit the PixelCNN prior of a trained VQ-VAE run by maximum likelihood on the codes "
                                   "of its training data; the run then samples codes from it and its bound is "
                                   "log p(x|z_q) + log p_prior(z_q). Rewrites model.pt, samples.png and the "
                                   "checkpoint (a later `ppgen train --resume RUN` keeps training with the "
                                   "prior), adds prior_history.csv and metrics.json's \"prior\".")
    p.add_argument("run", type=Path, help="a vqvae run directory written by `ppgen train vqvae`")
    p.add_argument("--epochs", type=positive, default=20, help="passes over the training codes (default 20)")
    p.add_argument("--batch-size", type=positive, default=64, help="grids per step (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=non_negative, default=0)
    p.set_defaults(func=_prior)


def _prior(args) -> int:
    from ppgen.workflows import fit_prior_run

    if not args.lr > 0:
        raise UserError(f"--lr must be positive, got {args.lr}")
    prior = fit_prior_run(args.run, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    shown = [f"{k} {prior[k]:.2f}" for k in ("prior_nll", "val_prior_nll", "val_elbo", "test_elbo") if k in prior]
    print(f"wrote {args.run}: " + ", ".join(shown))
    return 0


#: each adds one subcommand; other modules append theirs here
COMMANDS = [_add_train, _add_evaluate, _add_sample, _add_listings, _add_compare, _add_prior]


def _add_topics(sub) -> None:
    p = sub.add_parser("topics", help="a topic model's topics: top words and NPMI coherence",
                       description="Print each topic's top words with its NPMI coherence (document co-occurrence "
                                   "on the run's held-out documents, or on --reference), best first; write "
                                   "topics.json and topics.png into the run directory.")
    p.add_argument("run", type=Path, help="run directory written by `ppgen train prodlda|dirvae`")
    p.add_argument("--words", type=positive, default=10, help="top words per topic (default 10)")
    p.add_argument("--split", choices=["test", "val", "train"], default="test",
                   help="reference documents for NPMI (default test)")
    p.add_argument("--reference", help="another reference corpus for NPMI: news, FILE.csv[:COLUMN] or a .txt folder")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=_topics)


def _topics(args) -> int:
    from ppgen.workflows import topics_run

    result = topics_run(args.run, n=args.words, split=args.split, reference=args.reference)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.run}: {len(result['topics'])} topics; mean NPMI {result['npmi']:.3f} on {result['documents']} "
          f"documents ({result['reference']}); diversity {result['diversity']:.3f}")
    for row in result["topics"]:
        print(f"  {row['topic']:3d}  {row['npmi']:6.3f}  {' '.join(row['words'])}")
    return 0


COMMANDS.append(_add_topics)


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; unknown options are reported by the subcommand's parser (``ppgen train: error: ...``)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        commands = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
        (commands.get(getattr(args, "command", None)) or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)  # a mistake: one line and SystemExit(2), as argparse does
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            # Pyro warns on a NaN loss; the training loop stops there and ppgen reports it on one line
            warnings.filterwarnings("ignore", message="Encountered NaN")
            return args.func(args)
    except OptionError as err:  # the library names the option; the command names its flag
        print(f"ppgen: error: {flag_of(err.option)} {_shown(err.value)}: {err.problem} "
              f"(see ppgen {args.command} --help)", file=sys.stderr)
        return 2
    except UserError as err:
        print(f"ppgen: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("ppgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
