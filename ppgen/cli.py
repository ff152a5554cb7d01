"""The ``ppgen`` command: train, evaluate and sample deep generative models.

Every subcommand (:mod:`ppgen.commands`, one module each) has ``--help``. A user mistake (a missing file, data of
the wrong shape, NaNs, non-binary data under a Bernoulli likelihood, an unknown model) ends with one line on
stderr and exit code 2; nothing half-written is left.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import signal
import sys
import threading
import warnings

from ppgen.commands import COMMANDS
from ppgen.declare import OptionError
from ppgen.errors import Terminated, UserError, interrupt_status

EPILOG = """examples (MODEL: a family of `ppgen models`; RUN: a run directory):
  ppgen train MODEL --data mnist --z-dim 50 --epochs 30 --out runs/a
  ppgen evaluate runs/a --iwae 1000
  ppgen sample runs/a -n 64 --out samples.png
  ppgen compare runs/a --points 16 --chains 4
  ppgen train MODEL --resume runs/a --epochs 40
  ppgen train MODEL --data ring8 --backend adversarial --loss ns --epochs 50 --out runs/b ; ppgen evaluate runs/b --fid
  ppgen models ; ppgen data"""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line: ``ppgen train: error: ... (see ppgen train --help)``, exit 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def installed_version() -> str:
    """ppgen's version as installed (the package metadata); the source's ``__version__`` where it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ppgen")
    except PackageNotFoundError:
        from ppgen import __version__

        return __version__


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``ppgen`` parser with every subcommand's flags; given the command line ``argv``, only the command it names
    gets its flags (and imports its module): the others are listed by their line of :data:`COMMANDS`, so
    ``ppgen --help`` and ``ppgen data`` load neither torch nor Pyro."""
    parser = ArgumentParser(prog="ppgen", description="Deep generative models as probabilistic programs: "
                                     "Pyro model/guide pairs trained by SVI and checked by NUTS.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    named = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for command in COMMANDS:
        lines = command.lines()
        if named is None or named in lines:
            command.load().add(sub)
        else:
            for name, line in lines.items():
                sub.add_parser(name, help=line, add_help=False)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; unknown options are reported by the subcommand's parser (``ppgen train: error: ...``)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        commands = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
        (commands.get(getattr(args, "command", None)) or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _shown(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, tuple | list) else str(value)


def _terminate(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM handled as Ctrl-C while a command runs: it raises :class:`~ppgen.errors.Terminated`, so a run keeps its
    last checkpoint, prints one line and exits 143 (a KeyboardInterrupt, exit 130)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _freeze_at_exit() -> None:
    """Spare the process the garbage collector's passes over every object when it ends (registered once).

    At exit Python tears the modules down with full cyclic collections, and with torch, JAX, NumPyro and Pyro
    loaded each pass walks about half a million objects: ~1 s after the last line on a 2-core machine. Freezing the
    objects (:func:`gc.freeze`) in an exit hook skips those passes; objects are still freed by reference count
    and the other exit hooks still run, so nothing written is lost (ppgen closes its files as it writes).
    """
    global _FREEZE_REGISTERED
    if not _FREEZE_REGISTERED:
        atexit.register(gc.freeze)
        _FREEZE_REGISTERED = True


_FREEZE_REGISTERED = False


def main(argv: list[str] | None = None) -> int:
    _freeze_at_exit()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = _parse(parser, argv)  # a mistake: one line and SystemExit(2), as argparse does
    args.argv = argv
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings(), sigterm_as_interrupt():
            # Pyro warns on a NaN loss; the training loop stops there and ppgen reports it on one line
            warnings.filterwarnings("ignore", message="Encountered NaN")
            return args.func(args)
    except OptionError as err:  # the library names the option; the command names its flag
        from ppgen.inference.options import flag_of

        fix = "; use " + " ".join(f"{flag_of(k)} {_shown(v)}" for k, v in err.fix.items()) if err.fix else ""
        print(f"ppgen: error: {flag_of(err.option)} {_shown(err.value)}: {err.problem}{fix} "
              f"(see ppgen {args.command} --help)", file=sys.stderr)
        return 2
    except UserError as err:
        print(f"ppgen: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt as err:
        print(f"ppgen: {'terminated (SIGTERM)' if isinstance(err, Terminated) else 'interrupted'}", file=sys.stderr)
        return interrupt_status(err)


if __name__ == "__main__":
    sys.exit(main())
