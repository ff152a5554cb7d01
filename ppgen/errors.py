"""User-facing errors: the CLI prints their message on one line and exits with 2."""


class UserError(ValueError):
    """A mistake in the user's input (data, options, paths), with what to do about it."""


class TrainingDiverged(RuntimeError):
    """The objective became NaN or infinite; the last good state was kept."""
