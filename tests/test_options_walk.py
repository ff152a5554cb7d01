"""Every declared option, walked with values it must refuse: NaN, ±inf, out of its range, of the wrong type.

Two paths, both exhaustive over the declarations (every field of every registered family's ``Config``, of the SVI,
adversarial and stage options):

* the declaration's own validation (``Config(**{field: bad})`` and :func:`ppgen.declare.check_values`, which
  ``ppgen train`` runs before reading any data): an :class:`OptionError` naming the field, every bad value;
* the ``ppgen train`` command line, in-process (``run_cli``): for every flag and every family that declares it,
  NaN / ±inf for a number, a fraction for a whole number, an unknown word for a choice, a zero size for a list:
  exit 2, one line on stderr naming the flag as typed, nothing written.

And: an option cannot be declared without a check (or with a default its check refuses), and a field declared
otherwise makes ``validate`` fail loudly.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from support import run_cli

from ppgen import declare
from ppgen.declare import OptionError, check_values, option, positive_float, validate
from ppgen.inference.options import AdversarialOptions, SVIOptions, cli_flags
from ppgen.inference.stages import StageOptions
from ppgen.models import REGISTRY

FAMILIES = sorted((cls for cls in REGISTRY.values() if cls.__module__.startswith("ppgen.models.")),
                  key=lambda cls: cls.name)
#: every options dataclass: the families' configs and the engines' options
DECLARED = [(cls.name, cls.Config) for cls in FAMILIES] + [
    ("svi", SVIOptions), ("adversarial", AdversarialOptions), ("stage", StageOptions)]
FIELDS = [(owner, cls, f) for owner, cls in DECLARED for f in dataclasses.fields(cls)]
#: checks with an upper bound too: a value past it is out of range
BOUNDED = {declare.probability, declare.decay_rate, declare.fraction, declare.adam_betas}


def _kind(f: dataclasses.Field) -> str:
    default = f.default
    if isinstance(default, bool) or f.metadata["check"] is declare.boolean:
        return "bool"
    if isinstance(default, int) or (default is None and "int" in str(f.type) and "tuple" not in str(f.type)):
        return "int"
    if isinstance(default, float) or (default is None and "float" in str(f.type)):
        return "float"
    if isinstance(default, tuple) or (default is None and "tuple" in str(f.type)):
        return "tuple"
    return "str"


def bad_values(f: dataclasses.Field) -> list[Any]:
    """NaN and ±inf (also inside a list), out of range, and of the wrong type, for the field's kind."""
    out: list[Any] = [math.nan, math.inf, -math.inf]
    kind = _kind(f)
    if kind in ("int", "float"):
        out += [-1, "0.5", True]
        if kind == "int":
            out += [2.5]
        if f.metadata["check"] in BOUNDED:
            out += [1.0, 1.5]
    elif kind == "tuple":
        nested = isinstance(f.default, tuple) and f.default and isinstance(f.default[0], tuple)
        out += ["400", (0,), (2.5,), (math.nan,), ((math.inf,),) if nested else (math.inf, 1)]
        if f.metadata["check"] is declare.adam_betas:
            out += [(0.5, 1.0), (0.5,)]
    elif kind == "bool":
        out += ["yes", 1, None]
    else:
        out += [7, ""] + ([None] if f.default is not None else []) + (
            ["no-such-choice"] if f.metadata.get("choices") else [])
    return out


@pytest.mark.parametrize("owner,cls,f", FIELDS, ids=[f"{o}.{f.name}" for o, _, f in FIELDS])
def test_every_declared_option_refuses_nan_inf_out_of_range_and_wrong_types(owner, cls, f):
    assert callable(f.metadata.get("check")), f"{owner}.{f.name} has no check"
    for bad in bad_values(f):
        for attempt in (cls, lambda **given: check_values(cls, given)):
            with pytest.raises(OptionError) as err:
                attempt(**{f.name: bad})
            assert err.value.option == f.name, (owner, f.name, bad, str(err.value))
            assert "\n" not in str(err.value)


# -- the command line: every flag of `ppgen train`, for every family that declares it -------------------------
def _flag_cases() -> list[tuple[str, str, str]]:
    """(family, flag, bad text): each model flag with each family declaring it, each training flag with the VAE
    (SVI) and each adversarial flag with the GAN."""
    cases = []
    for cls in FAMILIES:
        for flag, f in cli_flags(cls.Config):
            if f.name != "x_shape" and f.name not in {g.name for _, g in cli_flags(SVIOptions)}:
                cases += [(cls.name, "--" + flag, text) for text in _bad_texts(f)]
    svi = {f.name for _, f in cli_flags(SVIOptions)}
    cases += [("vae", "--" + flag, text) for flag, f in cli_flags(SVIOptions) for text in _bad_texts(f)]
    cases += [("gan", "--" + flag, text) for flag, f in cli_flags(AdversarialOptions) if f.name not in svi
              for text in _bad_texts(f)]
    cases += [("gan", "--lr", "nan"), ("gan", "--epochs", "0"), ("gan", "--batch-size", "-3")]
    return cases


def _bad_texts(f: dataclasses.Field) -> list[str]:
    kind = _kind(f)
    if kind == "float":
        return ["nan", "inf", "-inf", "-1"] + (["1.5"] if f.metadata["check"] in BOUNDED else [])
    if kind == "int":
        return ["2.5", "-1", "nan"]
    if kind == "tuple":
        return ["0", "a,b"]
    if kind == "bool":
        return []  # a switch flag takes no value
    return ["no-such-choice"] if f.metadata.get("choices") else [""]


CASES = _flag_cases()


def test_the_cli_walk_covers_every_flag_of_every_family():
    walked = {(family, flag) for family, flag, _ in CASES}
    for cls in FAMILIES:
        for flag, f in cli_flags(cls.Config):
            if f.name != "x_shape" and _kind(f) != "bool" and f.name not in {g.name for _, g in cli_flags(SVIOptions)}:
                assert (cls.name, "--" + flag) in walked
    assert {flag for _, flag, _ in CASES} >= {"--lr", "--particles", "--beta", "--free-bits", "--mcmc-accept",
                                              "--eta", "--restart-below", "--dropout", "--n-critic", "--pack"}


@pytest.mark.parametrize("family,flag,text", CASES, ids=[f"{fam}{fl}={t}" for fam, fl, t in CASES])
def test_every_bad_flag_is_one_line_naming_it_and_nothing_is_written(tmp_path, capsys, monkeypatch, family, flag,
                                                                      text):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    code = run_cli("train", family, "--data", "digits", "--epochs", "1", "--no-progress", "--out", out,
                   f"{flag}={text}")
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and "Traceback" not in err, err
    assert os.listdir(tmp_path) == []


# -- an option cannot be declared unchecked -------------------------------------------------------------------
def test_an_option_cannot_be_declared_without_a_working_check():
    with pytest.raises(TypeError, match="check"):
        option(1.0, None, "a learning rate")
    with pytest.raises(TypeError, match="fails its own check"):
        option(-1.0, positive_float, "a learning rate")
    with pytest.raises(TypeError, match="help"):
        option(1.0, positive_float, "")

    @dataclass(frozen=True)
    class Sneaked:
        lr: float = option(1.0, positive_float, "a learning rate")
        eta: float = field(default=0.0)  # declared without option(): no check

        def __post_init__(self) -> None:
            validate(self)

    with pytest.raises(TypeError, match="Sneaked.eta is not declared with ppgen.declare.option"):
        Sneaked()


def test_a_non_finite_number_is_refused_whatever_the_check_says():
    anything = declare.with_convert(lambda v: None, declare.as_float)  # a check that lets everything through

    @dataclass(frozen=True)
    class Lenient:
        eta: float = option(0.0, anything, "a weight")

        def __post_init__(self) -> None:
            validate(self)

    for bad in (math.nan, math.inf, -math.inf, (1.0, math.nan)):
        with pytest.raises(OptionError, match="finite") as err:
            Lenient(eta=bad)
        assert err.value.option == "eta"
    assert Lenient(eta=1e300).eta == 1e300
