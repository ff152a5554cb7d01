"""Progress of long work, wherever it runs: a bar on a terminal, a line every ~10 s off one.

Every loop that can run longer than a few seconds (training epochs, AIS and BDMC, FID's feature
passes, NUTS, ancestral and DDPM/DDIM sampling, a VQ-VAE prior's pixels) counts its steps with
:func:`progress` (or wraps its iterable in :func:`track`). Where the report goes follows stderr:

* a terminal: a tqdm bar that erases itself when done (shown after 2 s: quick work shows none);
* a Jupyter kernel with ipywidgets installed: tqdm's notebook bar, after 2 s (without ipywidgets, the plain lines
  below, never tqdm's "IProgress not found" warning);
* anything else (a pipe, a job log, a file): one plain line every :func:`interval` seconds,
  ``ppgen: AIS: 120/500 (24%), 31 s, about 98 s left``, and a closing line when at least one was printed.

``PPGEN_PROGRESS_INTERVAL`` sets the seconds between lines (default 10); ``PPGEN_PROGRESS=0`` silences
every report (as ``--no-progress`` does for one command). Work that cannot count its steps (one compiled
NumPyro call) runs inside :func:`heartbeat`: the same lines, saying how long it has run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

#: environment variables: seconds between plain lines; "0" to silence all progress
INTERVAL_ENV = "PPGEN_PROGRESS_INTERVAL"
SWITCH_ENV = "PPGEN_PROGRESS"
DEFAULT_INTERVAL = 10.0
#: work of fewer steps gets no bar, only the plain line if it outlasts the interval
MIN_STEPS_FOR_BAR = 2
#: seconds before a bar appears (terminal and notebook): quick work leaves no trace in a notebook's outputs
BAR_DELAY = 2.0


def interval() -> float:
    """Seconds between two plain progress lines (``PPGEN_PROGRESS_INTERVAL``, default 10)."""
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    return get is not None and type(get()).__name__ == "ZMQInteractiveShell"


def _has_widgets() -> bool:
    try:
        import ipywidgets  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return False
    return True


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Lines:
    """The plain report: a line on ``stream`` every ``every`` seconds (what, how far, elapsed, ETA)."""

    def __init__(self, total: int | None, what: str, stream: TextIO, every: float) -> None:
        self.total, self.what, self.stream, self.every = total, what, stream, every
        self.n = 0
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.printed = 0

    def line(self, now: float) -> str:
        elapsed = now - self.start
        if self.total:
            left = elapsed * (self.total - self.n) / self.n if self.n else float("nan")
            eta = f", about {_duration(left)} left" if 0 < self.n < self.total else ""
            text = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%), {_duration(elapsed)}{eta}"
        else:
            text = f"{self.n} done, {_duration(elapsed)}"
        return f"ppgen: {self.what}: {text}" + (f" ({self.postfix})" if self.postfix else "")

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self._write(self.line(now))
            self.last = now

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())

    def set_description(self, what: str) -> None:
        self.what = what

    def close(self) -> None:
        if self.printed:
            steps = f", {self.n} step{'' if self.n == 1 else 's'}" if self.n else ""
            self._write(f"ppgen: {self.what}: done{steps} in {_duration(time.monotonic() - self.start)}")
            self.printed = 0

    def _write(self, text: str) -> None:
        try:
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed pipe: the work goes on without its report
            return
        self.printed += 1


class Silent:
    """No report (progress off)."""

    def update(self, n: int = 1) -> None:
        return None

    def set_postfix(self, **values: Any) -> None:
        return None

    def set_description(self, what: str) -> None:
        return None

    def close(self) -> None:
        return None


class _Bar:
    """A tqdm bar behind the same four calls."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_postfix(self, **values: Any) -> None:
        self.bar.set_postfix(**values)

    def set_description(self, what: str) -> None:
        self.bar.set_description(what)

    def close(self) -> None:
        self.bar.close()


Report = Lines | Silent | _Bar


def progress(total: int | None, what: str, enabled: bool | None = None, stream: TextIO | None = None) -> Report:
    """A progress report of ``total`` steps (None: unknown) of the work ``what``: ``.update(n)``,
    ``.set_postfix(**figures)``, ``.close()``; see the module docs for where it goes.

    ``enabled``: None shows it (False silences it, as does ``PPGEN_PROGRESS=0``); True is the same as None.
    """
    if enabled is False or os.environ.get(SWITCH_ENV, "1") == "0":
        return Silent()
    stream = sys.stderr if stream is None else stream
    if total is not None and total < MIN_STEPS_FOR_BAR:  # one step: no bar, a line if it outlasts the interval
        return Lines(total, what, stream, interval())
    if _in_notebook() and stream is sys.stderr and _has_widgets():
        from tqdm.notebook import tqdm as notebook_tqdm  # type: ignore[import-untyped]

        return _Bar(notebook_tqdm(total=total, desc=what, leave=False, delay=BAR_DELAY))
    if _isatty(stream):
        from tqdm import tqdm  # type: ignore[import-untyped]

        return _Bar(tqdm(total=total, desc=what, leave=False, mininterval=0.5, file=stream, delay=BAR_DELAY))
    return Lines(total, what, stream, interval())


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def track(items: Iterable[T], what: str, total: int | None = None, enabled: bool | None = None) -> Iterator[T]:
    """``items``, one by one, counted in a :func:`progress` report (``total``: their number, if ``len`` fails)."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    report = progress(total, what, enabled)
    try:
        for item in items:
            yield item
            report.update(1)
    finally:
        report.close()


@contextlib.contextmanager
def heartbeat(what: str, enabled: bool | None = None, stream: TextIO | None = None) -> Iterator[None]:
    """While the block runs, a line every :func:`interval` seconds saying that ``what`` is still running and for how
    long (off a terminal; on one, tqdm's elapsed-time counter), for work whose steps cannot be counted."""
    if enabled is False or os.environ.get(SWITCH_ENV, "1") == "0":
        yield
        return
    stream = sys.stderr if stream is None else stream
    # off a terminal (a notebook too: no widget updated from the beating thread) the plain lines
    report = progress(None, what, True, stream) if _isatty(stream) else Lines(None, what, stream, interval())
    stop = threading.Event()
    every = report.every if isinstance(report, Lines) else 0.5

    def beat() -> None:
        while not stop.wait(every):
            if isinstance(report, Lines):
                report._write(f"ppgen: {what}: running, {_duration(time.monotonic() - report.start)}")
            elif isinstance(report, _Bar):
                report.bar.refresh()

    thread = threading.Thread(target=beat, name="ppgen-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        report.close()
