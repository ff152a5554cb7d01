"""The ``ppgen`` subcommands, one module each: ``add(subparsers)`` adds its parser (with ``func=run``), ``run(args)``
does it and returns the exit code. :mod:`~ppgen.commands.stages` adds one subcommand per training stage a
registered family declares; a family never needs an edit here.

:data:`COMMANDS` is the table ``ppgen --help`` is built from: each command's name, the line it shows and its module,
imported only when that command runs or shows its own help, so ``ppgen --help`` loads neither torch nor Pyro. The
stage subcommands' lines are read from the family modules' ``Stage(...)`` declarations without importing them
(:func:`ppgen.commands.stages.declared_lines`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Command:
    """A subcommand: its ``name``, the one-line ``help`` ``ppgen --help`` shows, and the name of its module.

    The stages' entry (``name`` ``"stages"``) stands for one subcommand per stage the families declare."""

    name: str
    help: str

    @property
    def module(self) -> str:
        return f"ppgen.commands.{self.name}"

    def load(self) -> ModuleType:
        """The module that adds the command's parser (``add``) and runs it (``run``)."""
        return importlib.import_module(self.module)

    def lines(self) -> dict[str, str]:
        """The subcommands the module adds -> the line ``ppgen --help`` shows for each (without importing it)."""
        if self.name == "stages":
            from ppgen.commands.stages import declared_lines

            return declared_lines()
        return {self.name: self.help}


#: the subcommands, in the order ``ppgen --help`` lists them
COMMANDS: tuple[Command, ...] = (
    Command("train", "train a model (SVI, or adversarially) and write a run directory"),
    Command("evaluate", "held-out ELBO, IWAE log-likelihood, KL per dimension, active units"),
    Command("sample", "draw from a trained model into a picture or .npy file"),
    Command("models", "list the model families"),
    Command("data", "list the bundled data sets"),
    Command("compare", "NUTS on p(z|x) beside the encoder's q(z|x): distances and the inference gap"),
    Command("stages", "one subcommand per training stage a family declares"),
    Command("topics", "a topic model's topics: top words and their coherence"),
)


def help_of(name: str) -> str:
    """The line ``ppgen --help`` shows for the command ``name`` (its parser is added with it)."""
    return next(command.help for command in COMMANDS if command.name == name)
