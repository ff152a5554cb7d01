"""Declared options: a dataclass field that carries its default, its check, its help text and its CLI flag.

Both kinds of options are declared this way: the training options of :mod:`ppgen.inference.options` and every
model family's ``Config`` (:mod:`ppgen.models`). One declaration serves everyone who needs the option::

    z_dim: int = option(50, positive_int, "latent dimensions")

* the default (``Config()``), the only place it is written;
* the check, a function of the value returning what is wrong (one clause, e.g. "must be a positive whole
  number") or None; :func:`validate` runs every field's check from the dataclass's ``__post_init__`` and raises
  :class:`OptionError`, which names the *option* (``z_dim``), never a CLI flag;
* ``metadata["help"]``, ``metadata["flag"]`` (only where the flag is not the field's name with dashes) and
  ``metadata["choices"]`` (a check built by :func:`one_of` also carries them as ``check.choices``), from which the
  ``ppgen`` command derives its flags;
* ``metadata["absent"]``: the value a run written before the field existed had (read when such a run loads).

A check may also carry ``check.convert``: how a value given in another accepted form (a list from JSON, a numpy
integer, True for "on") becomes the declared form; :func:`validate` applies it before checking. A NaN or infinite
number is refused by every float check (a NaN option would be written to config.json as null).

This module is a leaf: models and inference both import it, it imports only :mod:`ppgen.errors`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Callable
from dataclasses import MISSING, field
from typing import Any

from ppgen.errors import UserError

#: a check: the value -> what is wrong with it (one clause), or None
Check = Callable[[Any], "str | None"]

SWITCH = ("on", "off")


class OptionError(UserError):
    """A bad option value; ``option`` is its name, ``problem`` what is wrong and what to do.

    ``fix``: other options' values that make it right (``{"engine": "torch"}``), said after the problem as
    ``engine='torch'`` here and as flags (``--engine torch``) by the ``ppgen`` command.
    """

    def __init__(self, option: str, value: Any, problem: str, fix: dict[str, Any] | None = None):
        self.option, self.value, self.problem, self.fix = option, value, problem, dict(fix or {})
        said = "; use " + ", ".join(f"{k}={v!r}" for k, v in self.fix.items()) if self.fix else ""
        super().__init__(f"option {option}={value!r}: {problem}{said}")


# -- conversions: the declared form of a value given in another accepted form (unchanged if none applies) ---------
def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def as_int(v: Any) -> Any:
    """A numpy or other integral number as a Python int."""
    return int(v) if _is_int(v) else v


def as_float(v: Any) -> Any:
    """A real number (an int, a numpy float) as a Python float."""
    return float(v) if _is_number(v) else v


def as_sizes(v: Any) -> Any:
    """A list (JSON), tuple or ``torch.Size`` of whole numbers as a tuple of ints; one int as a 1-tuple."""
    if _is_int(v):
        return (int(v),)
    if isinstance(v, tuple | list) and all(_is_int(s) for s in v):
        return tuple(int(s) for s in v)
    return v


def as_switch(v: Any) -> Any:
    """True / False as "on" / "off"."""
    return ("on" if v else "off") if isinstance(v, bool) else v


def with_convert(check: Check, convert: Callable[[Any], Any]) -> Check:
    """``check``, carrying ``convert`` (applied by :func:`validate` before the check)."""
    check.convert = convert  # type: ignore[attr-defined]
    return check


# -- checks: each returns what is wrong, or None ---------------------------------------------------------------
def positive_int(v: Any) -> str | None:
    return None if _is_int(v) and v >= 1 else "must be a positive whole number (1 or more)"


def nonnegative_int(v: Any) -> str | None:
    return None if _is_int(v) and v >= 0 else "must be a whole number, 0 or more"


def whole_at_least(least: int, unit: str = "") -> Check:
    """A whole number ``least`` or more; ``unit`` names what it counts in the message ("at least 2 codes")."""
    said = f"must be a whole number, at least {least}" + (f" {unit}" if unit else "")

    def check(v: Any) -> str | None:
        return None if _is_int(v) and v >= least else said

    return with_convert(check, as_int)


def probability(v: Any) -> str | None:
    return None if _is_number(v) and 0 < v < 1 else "must be a number strictly between 0 and 1"


def seed_int(v: Any) -> str | None:
    return None if _is_int(v) and 0 <= v < 2**63 else "must be a whole number, 0 or more"


def positive_float(v: Any) -> str | None:
    return None if _is_number(v) and math.isfinite(v) and v > 0 else "must be a positive finite number"


def nonnegative_float(v: Any) -> str | None:
    return None if _is_number(v) and math.isfinite(v) and v >= 0 else "must be a finite number, 0 or more"


def decay_rate(v: Any) -> str | None:
    return None if _is_number(v) and 0 <= v < 1 else "must be a number in [0, 1)"


def share_of_one(v: Any) -> str | None:
    """A factor in (0, 1] (1: unchanged)."""
    return None if _is_number(v) and 0 < v <= 1 else "must be a number in (0, 1]"


def fraction(v: Any) -> str | None:
    """A share in [0, 1) (a dropout rate, a moving average's decay)."""
    return decay_rate(v)


for _check in (positive_int, nonnegative_int, seed_int):
    with_convert(_check, as_int)
for _check in (probability, positive_float, nonnegative_float, decay_rate, fraction):
    with_convert(_check, as_float)


def one_of(choices: tuple[str, ...], what: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else f"unknown {what}; choose one of {', '.join(choices)}"

    check.choices = choices  # type: ignore[attr-defined]  # the CLI offers them
    return check


def on_off(v: Any) -> str | None:
    """A switch: "on" or "off" (True and False are taken for them)."""
    return None if v in SWITCH else "must be on or off"


on_off.choices = SWITCH  # type: ignore[attr-defined]
with_convert(on_off, as_switch)


def auto_switch(v: Any) -> str | None:
    """A switch whose default (None) the options resolve from the others: "on", "off" or None."""
    return None if v is None else on_off(v)


auto_switch.choices = SWITCH  # type: ignore[attr-defined]
with_convert(auto_switch, as_switch)


def device_name(v: Any) -> str | None:
    if isinstance(v, str) and re.fullmatch(r"cpu|cuda(:\d+)?", v):
        return None
    return "use cpu, cuda or cuda:N (lower case)"


def sizes(v: Any) -> str | None:
    """One or more positive whole numbers (layer sizes such as 400 or 512,256)."""
    if isinstance(v, tuple) and v and all(_is_int(s) and s >= 1 for s in v):
        return None
    return "must be one or more positive whole numbers such as 400 or 512,256"


with_convert(sizes, as_sizes)


def shape(v: Any) -> str | None:
    """The shape of one example: one or more positive whole numbers, e.g. (1, 28, 28)."""
    if isinstance(v, tuple) and v and all(_is_int(s) and s >= 1 for s in v):
        return None
    return "must be the shape of one example: positive whole numbers such as (1, 28, 28)"


with_convert(shape, as_sizes)


def optional_sizes(v: Any) -> str | None:
    if v is None or (isinstance(v, tuple | list) and v and all(_is_int(h) and h >= 1 for h in v)):
        return None
    return "must be positive layer sizes such as 128,128"


def optional_name(v: Any) -> str | None:
    return None if v is None or (isinstance(v, str) and v) else "must be a metric name such as val_elbo, or None"


def adam_betas(v: Any) -> str | None:
    ok = isinstance(v, tuple | list) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v)
    return None if ok else "must be two numbers in [0, 1)"


def column_name(v: Any) -> str | None:
    """A data set's column name: free text (no list of choices), not empty."""
    return None if isinstance(v, str) and v else "must name one of the data set's columns (e.g. y)"


column_name.free_text = True  # a string option without choices: the CLI offers none


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


# -- the declaration -------------------------------------------------------------------------------------------
#: the SVI engines an option runs on unless its declaration says otherwise (:func:`supported`)
ALL_ENGINES = ("torch", "jax")


def option(default: Any, check: Check, help: str, flag: str | None = None, cli: bool = True,
           absent: Any = MISSING) -> Any:
    """A declared option (a dataclass field): its default, check, help text and CLI flag (``cli=False``: none).

    ``flag`` is stored only where it differs from the field's name with dashes; ``absent`` is the value of a
    run written before the option existed (:meth:`ppgen.models.base.GenerativeModel.from_config` reads it).
    The check is required and the default must pass it (a ``TypeError`` when the class is defined otherwise):
    an option cannot be declared unchecked.
    """
    if not callable(check):
        raise TypeError(f"option(default={default!r}, ...): the check must be a function of the value returning "
                        f"what is wrong or None, got {check!r}")
    if not isinstance(help, str) or not help.strip():
        raise TypeError(f"option(default={default!r}, ...): give a help text")
    convert = getattr(check, "convert", None)
    problem = check(convert(default) if convert is not None else default)
    if problem:
        raise TypeError(f"option(default={default!r}, ...): the default fails its own check ({problem})")
    metadata: dict[str, Any] = {"check": check, "help": help, "cli": cli}
    if flag is not None:
        metadata["flag"] = flag
    if getattr(check, "choices", None) is not None:
        metadata["choices"] = check.choices
    if absent is not MISSING:
        metadata["absent"] = absent
    return field(default=default, metadata=metadata)


def non_finite(value: Any) -> bool:
    """Whether ``value`` is, or holds (a tuple or list, nested), a NaN or infinite real number."""
    if isinstance(value, tuple | list):
        return any(non_finite(v) for v in value)
    return _is_number(value) and not math.isfinite(value)


def validate(options: Any) -> None:
    """Bring every field of a (frozen) options dataclass to its declared form and check it; raise
    :class:`OptionError` for the first bad one. Call it first in the dataclass's ``__post_init__``.

    Every field must have been declared by :func:`option` (a ``TypeError`` otherwise: a field without a check is
    a programming error, never a silently accepted value), and whatever a field's check says, a NaN or infinite
    number is refused (config.json would store it as null)."""
    for f in dataclasses.fields(options):
        check = f.metadata.get("check")
        if not callable(check):
            raise TypeError(f"{type(options).__name__}.{f.name} is not declared with ppgen.declare.option(...): "
                            "every option needs a check")
        value = getattr(options, f.name)
        if non_finite(value):
            raise OptionError(f.name, value, "must be a finite number (not NaN or infinite)")
        convert = getattr(check, "convert", None)
        if convert is not None:
            converted = convert(value)
            if converted is not value:
                object.__setattr__(options, f.name, converted)
                value = converted
        problem = check(value)
        if problem:
            raise OptionError(f.name, value, problem)


def check_values(cls: type, values: dict[str, Any]) -> None:
    """Check each of ``values`` by its declaration in the options dataclass ``cls`` (its own check; the checks
    involving several fields wait for the whole dataclass), so a bad value is refused before any work; a name
    ``cls`` does not declare with :func:`option` is left to the dataclass."""
    declared = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in values.items():
        f = declared.get(name)
        check = f.metadata.get("check") if f is not None else None
        if check is None:  # not declared by option() (a user's plain dataclass): the dataclass checks it, or not
            continue
        convert = getattr(check, "convert", None)
        value = convert(value) if convert is not None else value
        problem = "must be a finite number (not NaN or infinite)" if non_finite(value) else check(value)
        if problem:
            raise OptionError(name, value, problem)


def cli_flags(cls: type) -> list[tuple[str, dataclasses.Field]]:
    """(flag, field) of every option the ``ppgen`` command exposes, in declaration order."""
    return [(f.metadata.get("flag") or f.name.replace("_", "-"), f) for f in dataclasses.fields(cls)
            if f.metadata.get("cli", True)]


# -- what runs an option: engines, processes ---------------------------------------------------------------------
def supported(declared: Any, *, engines: tuple[str, ...] = ALL_ENGINES, feature: str | None = None,
              why: str | None = None, one_process: str | None = None, shapes_elbo: bool = False,
              active: Callable[[Any], bool] | None = None) -> Any:
    """A declared option (:func:`option`) with what runs it, read by :func:`unsupported` (and, for training
    options, :func:`ppgen.inference.options.one_process_only` and ``elbo_options_in_use``).

    ``engines``: the SVI engines that can run it when it is in use; ``feature`` names what it turns on and ``why``
    says why the other engines cannot. It is in use when ``active(value)`` is true, by default when its value is not
    its default (a switch that is on by default passes ``active=lambda v: v == "on"``). ``one_process``: why it
    cannot be split over data-parallel processes (None: it can). ``shapes_elbo``: it shapes the ELBO, so a pair
    trained on its own objective leaves it at its default. A training option or a family's ``Config`` field may be
    declared this way.
    """
    metadata = {**declared.metadata, "engines": engines, "feature": feature, "why": why, "one_process": one_process,
                "shapes_elbo": shapes_elbo, "active": active}
    return field(default=declared.default, metadata=metadata)


def in_use(options: Any, f: dataclasses.Field) -> bool:
    """Whether the option ``f`` of ``options`` is in use: its declared ``active(value)``, else not its default."""
    value = getattr(options, f.name)
    active = f.metadata.get("active")
    return bool(active(value)) if active is not None else value != f.default


def unsupported(options: Any, engine: str) -> list[tuple[str, str]]:
    """(option, reason) for every option of the options dataclass in use that ``engine`` cannot run, e.g.
    ``("free_bits", "free bits needs engine='torch' because NumPyro has no free-bits ELBO")``."""
    out = []
    for f in dataclasses.fields(options):
        engines = f.metadata.get("engines", ALL_ENGINES)
        if engine not in engines and in_use(options, f):
            needs = " or ".join(f"'{e}'" for e in engines)
            out.append((f.name, f"{f.metadata['feature']} needs engine={needs} because {f.metadata['why']}"))
    return out


def refuse_unsupported(options: Any, engine: str) -> None:
    """Raise :class:`OptionError` naming the first option of ``options`` in use that ``engine`` cannot run, with the
    engine that can as the fix (the ``ppgen`` command says ``--engine torch``)."""
    for f in dataclasses.fields(options):
        engines = f.metadata.get("engines", ALL_ENGINES)
        if engine not in engines and in_use(options, f):
            [(_, reason)] = [(n, r) for n, r in unsupported(options, engine) if n == f.name]
            raise OptionError(f.name, getattr(options, f.name), reason, fix={"engine": engines[0]})
