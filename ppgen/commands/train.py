"""``ppgen train MODEL``: train a pair by SVI or adversarially into a run directory (or continue one)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ppgen.commands import help_of
from ppgen.commands.args import add_flag, add_option_flags, choices_of, modes_line, non_negative, positive
from ppgen.errors import Terminated, UserError, interrupt_status
from ppgen.inference.options import AdversarialOptions, SVIOptions, cli_flags

#: the run's options that are not a family's (a family's config field of the same name is not offered twice)
TRAIN_KEYS = tuple(dict.fromkeys([f.name for _, f in cli_flags(SVIOptions) + cli_flags(AdversarialOptions)]
                                 + ["select", "backend"]))
#: options a resumed run takes from its config (only --epochs, the new total, may be given)
RESUME_ALLOWED = ("command", "func", "model", "model_keys", "resume", "epochs", "no_progress", "nproc", "argv", "log")
#: how many declaring families a model flag's help names (a field most families declare names none)
NAMED_FAMILIES = 4


DESCRIPTION = ("Train a model/guide pair by SVI (Pyro), or adversarially against a critic (--backend adversarial, the "
               "default of an implicit generator), and write a run directory: config.json, checkpoint.pt, model.pt, "
               "metrics.json, history.csv, train.log and pictures.")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help=help_of("train"),
                       description=DESCRIPTION + " `ppgen train MODEL --help` lists that family's flags only.",
                       add_help=False)
    fill(p)


class FamilyHelp(argparse.Action):
    """``-h``: after a family's name (``ppgen train vae --help``), the common flags and that family's own only."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from ppgen.models import REGISTRY

        family = str(getattr(namespace, "model", None) or "").lower()
        if family in REGISTRY:
            own = argparse.ArgumentParser(prog=f"{parser.prog} {family}", add_help=False,
                                          description=f"{DESCRIPTION} The flags of {family} and those every family "
                                                      "shares (`ppgen train --help`: every family's).")
            fill(own, family)
            parser = own
        parser.print_help()
        parser.exit()


def fill(p: argparse.ArgumentParser, family: str | None = None) -> None:
    """The flags of ``ppgen train``: all families' (``family`` None) or the common ones and ``family``'s own."""
    from ppgen.models import REGISTRY
    from ppgen.workflows import CLI_DEFAULTS

    p.add_argument("-h", "--help", action=FamilyHelp, help="show this help and exit (after MODEL: that family's "
                   "flags only)")
    if family is None:
        p.add_argument("model", help="model family (see `ppgen models`)")
    p.add_argument("--data", help="bundled name (see `ppgen data`) or a path: IDX folder/file, .npz, .npy "
                   "(default mnist)")
    p.add_argument("--out", type=Path, help="run directory to create (default runs/<model>)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in RUN (its config is reused; "
                   "--epochs sets the new total)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    m = p.add_argument_group("model (the flags come from the families' Config fields; see `ppgen models`)"
                             if family is None else f"model ({family}'s Config fields)")
    p.set_defaults(model_keys=add_model_flags(m, family))
    d = p.add_argument_group("data")
    d.add_argument("--binarize", choices=["dynamic", "static", "threshold", "none"],
                   help="binarization for Bernoulli likelihoods (default: dynamic for mnist/digits, none otherwise)")
    d.add_argument("--split-seed", type=non_negative, help="seed of the stratified train/val/test split (default 0)")
    d.add_argument("--inputs", type=column_names, metavar="NAMES", help="a CSV file's input columns, comma-separated "
                   "(e.g. y,dose): passed to the model beside x, not part of x (default: its y/labels/targets "
                   "column, if any)")
    d.add_argument("--labels", type=non_negative, metavar="N", help="semi-supervised: keep N labels of the training "
                   "split (a seeded random set balanced per class), the others missing; validation and test keep theirs")
    d.add_argument("--label-seed", type=non_negative, help="seed of the label set --labels keeps (default 0)")
    t = p.add_argument_group("training (SVI; the flags come from ppgen.inference.options.SVIOptions)")
    # a family's own help shows the training defaults it trains with (the topic models: 100 epochs)
    add_option_flags(t, SVIOptions, defaults={**CLI_DEFAULTS, **(REGISTRY[family].train_defaults if family else {})})
    t.add_argument("--select", choices=["best", "last"], help="keep the epoch of the best validation figure (the "
                   "validation ELBO; a topic model's validation NPMI) or the last (default: the family's, best for "
                   "most, last for the topic models)")
    adversarial_lr = AdversarialOptions.__dataclass_fields__["lr"].default
    adversarial = family is None or REGISTRY[family].default_backend == "adversarial"
    a = p.add_argument_group(f"adversarial (--backend adversarial; --lr sets both players' rates, default "
                             f"{adversarial_lr:g})" if adversarial else "backend")
    a.add_argument("--backend", choices=["svi", "adversarial"],
                   help="training backend (default: the family's own, svi for most)")
    if adversarial:
        add_option_flags(a, AdversarialOptions, skip={f.name for _, f in cli_flags(SVIOptions)}, defaults=CLI_DEFAULTS)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log", action="append", metavar="BACKEND[=WHERE]",
                   help="track the run: tensorboard (event files in RUN/tensorboard, or tensorboard=DIR) or mlflow (a "
                        "file store in RUN/mlruns, or mlflow=URI); per-epoch figures, options, sample grids, final "
                        "metrics. Repeatable. Needs pip install 'ppgen[track]'")
    p.add_argument("--nproc", type=positive, help="data-parallel: train in this many processes on this machine "
                   "(torch.distributed, as `torchrun --nproc-per-node N -m ppgen train ...`; --batch-size is the "
                   "whole batch, split between them)")
    p.set_defaults(func=run)


def model_fields(only: str | None = None) -> dict[str, list[tuple[str, dataclasses.Field]]]:
    """Every field a registered family's ``Config`` declares (but the data's shape) -> (family, field) pairs; those
    of the family ``only`` where given."""
    from ppgen.models import REGISTRY

    fields: dict[str, list[tuple[str, dataclasses.Field]]] = {}
    for family, cls in sorted(REGISTRY.items()):
        if only is not None and family != only:
            continue
        for f in dataclasses.fields(cls.Config):
            if f.name != "x_shape" and f.name not in TRAIN_KEYS:
                fields.setdefault(f.name, []).append((family, f))
    return fields


def add_model_flags(group, family: str | None = None) -> tuple[str, ...]:
    """A flag for every option the registered families' ``Config`` fields declare, so a family's options need no edit
    here: the type from the annotation (int, float, str, bool, tuple of ints), the help from ``metadata["help"]``,
    the flag name from ``metadata["flag"]`` (else the field's name), and the choices, where every family declaring
    the field declares them (``metadata["choices"]`` or its check's ``choices``), their union."""
    fields = model_fields(family)
    for key, declared in fields.items():
        families = [name for name, _ in declared]
        first = declared[0][1]
        described = next((f for _, f in declared if f.metadata.get("help")), first)
        help_text = described.metadata.get("help", key.replace("_", " "))
        if len(families) <= NAMED_FAMILIES and family is None:
            help_text = f"{'/'.join(families)}: {help_text}"
        defaults = {_shown(f.default) for _, f in declared if f.default is not dataclasses.MISSING}
        help_text += f" (default {defaults.pop()})" if len(defaults) == 1 else " (default: the family's own)"
        each = [choices_of(f) for _, f in declared]
        choices = tuple(dict.fromkeys(c for cs in each for c in cs)) if all(each) else None
        grouped = [(name, f.metadata["check"].groups) for name, f in declared
                   if getattr(f.metadata.get("check"), "groups", None)]
        if grouped and not getattr(described.metadata.get("check"), "groups", None):
            help_text += f"; {'/'.join(name for name, _ in grouped)}: {grouped[0][1]}"
        flag = "--" + (first.metadata.get("flag") or key.replace("_", "-"))
        add_flag(group, flag, first, help_text.replace("%", "%%"), choices, groups=bool(grouped))
    return tuple(fields)


def _shown(value) -> str:
    """A default as its flag takes it: 400,200 for sizes, 400 200 for one group per stage."""
    if isinstance(value, tuple | list) and value and all(isinstance(v, tuple | list) for v in value):
        return " ".join(_shown(v) for v in value)
    return ",".join(str(v) for v in value) if isinstance(value, tuple | list) else str(value)


def run(args: argparse.Namespace) -> int:
    from ppgen import workflows
    from ppgen.inference import distributed

    if args.nproc and args.nproc > 1 and distributed.launched() == 1:
        return distributed.launch(args.nproc, without_nproc(args.argv))
    progress = False if args.no_progress else None
    if args.resume is not None:
        config = _resume_config(args)
        out = args.resume
    else:
        config = _new_config(args)
        out = args.out or Path("runs") / args.model.lower()
    try:
        metrics = workflows.train_run(config, out, resume=args.resume is not None, overwrite=args.overwrite,
                                      progress=progress, track=tuple(args.log or ()))
    except distributed.PeerLost as err:
        raise distributed.PeerLost(f"{err}; continue with `ppgen train {args.model} --resume {out}`") from None
    except KeyboardInterrupt as err:
        if distributed.is_writer():
            print(interrupted_message(args.model, out, terminated=isinstance(err, Terminated)), file=sys.stderr)
        return interrupt_status(err)
    finally:
        distributed.leave()
    if not distributed.is_writer():
        return 1 if metrics.get("stopped") else 0
    if early_warning(metrics):
        print(early_warning(metrics), file=sys.stderr)
    print(f"wrote {out}: " + ", ".join(result_line(metrics)) + kept_line(metrics))
    return 1 if metrics.get("stopped") else 0


def kept_line(metrics: dict) -> str:
    """Which epoch's weights the run kept, and why (the end of the final line)."""
    if "kept_epoch" not in metrics:
        return ""
    score = f" {metrics['kept_score']:.4g}" if metrics.get("kept_score") is not None else ""
    return f"; kept epoch {metrics['kept_epoch']} of {metrics['epochs']}: {metrics['kept_by']}{score}"


def early_warning(metrics: dict) -> str | None:
    """A warning when the kept epoch is in the first 10% of training (rounded up to a whole epoch), not the last."""
    kept, epochs = metrics.get("kept_epoch"), metrics.get("epochs")
    if kept is None or not epochs or kept >= epochs or kept > -(-epochs // 10):
        return None
    return (f"warning: the kept weights are from epoch {kept} of {epochs}, in the first 10% of training "
            f"({metrics['kept_by']}): that figure peaked early; train longer or with a lower --lr, or keep the "
            "last epoch with --select last")


def result_line(metrics: dict) -> list[str]:
    """What ``ppgen train`` prints of a run's metrics: the ELBOs, mode coverage; else the players' last losses."""
    shown = [f"{k} {v:.2f}" for k, v in metrics.items() if k.endswith("_elbo") and v is not None]
    if "modes" in metrics:
        shown.append(modes_line(metrics))
    shown += [f"{label} {metrics[k]:.4f}" for k, label in (("loss_d", "critic loss"), ("loss_g", "generator loss"))
              if k in metrics and not shown]
    return shown


def without_nproc(argv: list[str]) -> list[str]:
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
                    "split_seed": args.split_seed or 0, "inputs": args.inputs}
    if args.labels is not None:
        data_options.update(labels=args.labels, label_seed=args.label_seed or 0,
                            label_column=model_options.get("label_column", "y"))
    elif args.label_seed is not None:
        raise UserError("--label-seed chooses the label set of --labels: give --labels N too")
    train_options = {k: getattr(args, k) for k in TRAIN_KEYS if getattr(args, k, None) is not None}
    return workflows.make_config(args.model, model_options, data_options, train_options)


def column_names(text: str) -> list[str]:
    """``--inputs``: comma-separated column names, each non-empty and named once."""
    names = [name.strip() for name in text.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct column names separated by commas such as y,dose, got "
                                         f"{text!r}")
    return names


def interrupted_message(model: str, out: Path, terminated: bool = False) -> str:
    """What to do after Ctrl-C (or SIGTERM, ``terminated``), as the run directory now stands."""
    from ppgen import runs

    what = "terminated (SIGTERM)" if terminated else "interrupted"
    if runs.is_run_dir(out) and (out / runs.CHECKPOINT).exists():
        return f"ppgen: {what}; continue with `ppgen train {model} --resume {out}`"
    return f"ppgen: {what} before the first checkpoint; nothing was written to {out} (start the run again)"
