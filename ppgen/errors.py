"""User-facing errors: the CLI prints their message on one line and exits with 2."""


class UserError(ValueError):
    """A mistake in the user's input (data, options, paths), with what to do about it."""


class TrainingDiverged(RuntimeError):
    """The objective became NaN or infinite; the last good state was kept."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler, ``timeout``, a container stop) received: handled as Ctrl-C (a run keeps its last
    checkpoint), but the process exits with 143 (128 + 15, what a shell reports for SIGTERM) instead of 130."""


def interrupt_status(err: KeyboardInterrupt) -> int:
    """The conventional exit status of an interrupted command: 143 after SIGTERM, 130 after SIGINT (128 + signal)."""
    return 143 if isinstance(err, Terminated) else 130
