"""The ``ppgen`` subcommands, one module each: ``add(subparsers)`` adds its parser (with ``func=run``), ``run(args)``
does it and returns the exit code. :mod:`~ppgen.commands.stages` adds one subcommand per training stage a
registered family declares; a family never needs an edit here."""

from ppgen.commands import compare, data, evaluate, models, sample, stages, topics, train

#: the subcommands, in the order ``ppgen --help`` lists them
COMMANDS = [train, evaluate, sample, models, data, compare, stages, topics]
