"""``ppgen <stage> RUN``: one subcommand per training stage a registered family declares (``GenerativeModel.stages``),
built from the declaration: its name, help and description, and flags from
:class:`ppgen.inference.stages.StageOptions` with the stage's own defaults."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
from pathlib import Path

from ppgen.commands.args import add_option_flags


def add(sub: argparse._SubParsersAction) -> None:
    from ppgen.inference.stages import StageOptions
    from ppgen.workflows import declared_stages

    for name, declared in declared_stages().items():
        families = [family for family, _ in declared]
        stage = declared[0][1]
        p = sub.add_parser(name, help=stage.help, description=stage.description)
        p.add_argument("run", type=Path, help=f"a run directory written by `ppgen train` ({' or '.join(families)})")
        add_option_flags(p, StageOptions, defaults=stage.options)
        p.add_argument("--resume", action="store_true", help=f"continue from RUN/{name}_checkpoint.pt (--epochs: "
                       "the new total)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.set_defaults(func=run, stage=name)


def declared_lines() -> dict[str, str]:
    """Every stage the families declare -> its one-line help, without importing a family: the registered families'
    own declarations where :mod:`ppgen.models` is already loaded (a family defined in this process counts too),
    else :func:`scanned_lines` of the family modules' source (``ppgen --help`` lists the stages without torch)."""
    models = sys.modules.get("ppgen.models")
    if models is None:
        return scanned_lines()
    lines: dict[str, str] = {}
    for _, cls in sorted(models.REGISTRY.items()):  # the order of ppgen.workflows.declared_stages
        for stage in cls.stages:
            lines.setdefault(stage.name, stage.help)
    return lines


def scanned_lines() -> dict[str, str]:
    """The stages the modules of :mod:`ppgen.models` declare, read from their source without importing them: each
    ``Stage(name=..., help=...)`` call with both as plain strings. A test checks it against the registered families'
    stages, so a declaration this cannot read fails there."""
    folders = importlib.util.find_spec("ppgen.models").submodule_search_locations or []
    lines: dict[str, str] = {}
    for path in sorted(p for folder in folders for p in Path(folder).glob("*.py")):
        source = path.read_text(encoding="utf-8")
        if "Stage(" not in source:
            continue
        for node in ast.walk(ast.parse(source, str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Stage":
                given = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
                if isinstance(given.get("name"), str) and isinstance(given.get("help"), str):
                    lines.setdefault(given["name"], given["help"])
    return lines


def run(args: argparse.Namespace) -> int:
    from ppgen import workflows
    from ppgen.inference.options import cli_flags
    from ppgen.inference.stages import StageOptions

    options = {f.name: getattr(args, f.name) for _, f in cli_flags(StageOptions) if getattr(args, f.name) is not None}
    result = workflows.stage_run(args.run, args.stage, options, resume=args.resume,
                                 progress=False if args.no_progress else None)
    metric = workflows.declared_stages()[args.stage][0][1].metric
    shown = [f"{k} {result[k]:.2f}" for k in (metric, f"val_{metric}", "val_elbo", "test_elbo") if k in result]
    print(f"wrote {args.run}: " + ", ".join(shown))
    return 1 if result.get("stopped") else 0
