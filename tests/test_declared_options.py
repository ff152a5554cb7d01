"""Config is the only declaration: every family's options are declared once, with default, check and help.

For every family of the package: the ``Config`` round-trips through JSON; every field carries a help text and a
check (and string fields their choices, from which the CLI's flags come); ``Family(**{field: default})`` is
``Family()``; a bad value (NaN, a negative size, an unknown choice) raises a one-line :class:`OptionError` that
names the field; no family's ``__init__`` lists a default. Run directories written before the declarations load to
the very same config.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from dataclasses import dataclass
from typing import Any

import pytest

from ppgen.declare import OptionError, option, sizes, validate
from ppgen.inference.options import flag_of
from ppgen.models import REGISTRY, GenerativeModel

#: the package's own families (test modules register theirs in the same registry while they run)
FAMILIES = sorted((cls for cls in REGISTRY.values() if cls.__module__.startswith("ppgen.models.")),
                  key=lambda cls: cls.name)
FIELDS = [(cls, f) for cls in FAMILIES for f in dataclasses.fields(cls.Config)]


def family_id(v: Any) -> str:
    return v.name if isinstance(v, type) else getattr(v, "name", "")


def test_every_family_of_the_package_is_covered():
    assert {cls.name for cls in FAMILIES} >= {"vae", "ddpm", "vqvae", "gan", "nade", "ppca", "factor_analysis",
                                              "dlgm", "hvae", "lvae", "prodlda", "dirvae", "gpvae"}


@pytest.mark.parametrize("cls", FAMILIES, ids=family_id)
def test_config_round_trips_through_json(cls):
    pair = cls()
    written = json.loads(json.dumps(pair.config_dict()))
    again = cls.from_config(written)
    assert again.config == pair.config and again.config_dict() == written
    assert cls.Config(**written) == pair.config  # lists from JSON become the declared tuples


@pytest.mark.parametrize("cls,f", FIELDS, ids=lambda v: getattr(v, "name", "") if not isinstance(v, type) else v.name)
def test_every_field_is_declared_with_help_and_check(cls, f):
    assert isinstance(f.metadata.get("help"), str) and f.metadata["help"].strip(), f"{cls.name}.{f.name}: no help"
    assert callable(f.metadata.get("check")), f"{cls.name}.{f.name}: no check"
    assert f.metadata["check"](f.default) is None, f"{cls.name}.{f.name}: its default fails its own check"
    assert "--" not in f.metadata["help"], f"{cls.name}.{f.name}: the help names a flag"
    if isinstance(f.default, str) and not getattr(f.metadata["check"], "free_text", False):
        # the CLI offers a string option's choices (a name such as a data column is free text)
        assert f.default in f.metadata["choices"] == f.metadata["check"].choices


@pytest.mark.parametrize("cls", FAMILIES, ids=family_id)
def test_giving_each_default_is_the_same_as_giving_nothing(cls):
    plain = cls().config
    for f in dataclasses.fields(cls.Config):
        assert cls(**{f.name: f.default}).config == plain, f.name
    assert cls(**{f.name: f.default for f in dataclasses.fields(cls.Config)}).config == plain
    assert cls(plain).config is plain  # a built config is taken as it is


def _negative(value: Any) -> Any:
    """``value`` with its first whole number replaced by −1 (a size, a count, a shape entry)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return -1
    if isinstance(value, tuple):
        for i, item in enumerate(value):
            bad = _negative(item)
            if bad is not None:
                return value[:i] + (bad,) + value[i + 1:]
    return None


def bad_values(f: dataclasses.Field) -> list[Any]:
    """NaN for every field; −1 in a number or a size; an unknown choice; a word for a switch."""
    out: list[Any] = [math.nan]
    negative = _negative(f.default)
    if negative is not None:
        out.append(negative)
    if f.metadata.get("choices") or (isinstance(f.default, str) and not getattr(f.metadata["check"], "free_text",
                                                                                False)):
        out.append("no-such-choice")
    elif isinstance(f.default, str):  # free text (a column's name): the empty name
        out.append("")
    if isinstance(f.default, bool):
        out.append("yes")
    return out


@pytest.mark.parametrize("cls,f", FIELDS, ids=lambda v: getattr(v, "name", "") if not isinstance(v, type) else v.name)
def test_a_bad_value_is_a_one_line_option_error_naming_the_field(cls, f):
    for bad in bad_values(f):
        with pytest.raises(OptionError) as err:
            cls(**{f.name: bad})
        assert err.value.option == f.name, (bad, str(err.value))
        message = str(err.value)
        assert message.startswith(f"option {f.name}=") and "\n" not in message and "--" not in message, message


@pytest.mark.parametrize("cls", FAMILIES, ids=family_id)
def test_no_family_repeats_its_defaults_in_its_constructor(cls):
    for klass in cls.__mro__:
        if "__init__" in vars(klass) and issubclass(klass, GenerativeModel):
            parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]
            assert all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters), (klass, parameters)


@pytest.mark.parametrize("cls", FAMILIES, ids=family_id)
def test_cross_field_checks_also_name_an_option(cls):
    """Every check that involves two fields (the layer lists chain, DDIM steps at most T, ...) raises OptionError."""
    cases = {
        "vae": [({"flows": 1, "committed_rate": 0.5}, "committed_rate"), ({"x_shape": (4,), "net": "conv"}, "net")],
        "ddpm": [({"timesteps": 5, "sample_steps": 6}, "sample_steps"), ({"variance": "learned"}, "variance"),
                 ({"timestep_sampling": "importance"}, "timestep_sampling"), ({"attention": True}, "attention")],
        "vqvae": [({"x_shape": (4,)}, "x_shape"), ({"x_shape": (1, 28, 28), "downsample": 3}, "downsample")],
        "gan": [({"x_shape": (1, 6, 6), "net": "conv"}, "net")],
        "ppca": [({"x_shape": (2,), "z_dim": 3}, "z_dim"), ({"x_shape": (1, 2, 2)}, "x_shape")],
        "factor_analysis": [({"x_shape": (3,), "z_dim": 3}, "z_dim"), ({"x_shape": (1, 2, 2)}, "x_shape")],
        "gpvae": [({"inducing": 50, "num_data": 40}, "inducing")],
        "dlgm": [({"z_dims": (8, 4), "hidden": ((32,), (16,), (8,))}, "hidden")],
        "hvae": [({"z_dims": (8,), "hidden": (32,)}, "z_dims"), ({"z_dims": (8, 4), "hidden": (32,)}, "hidden")],
        "lvae": [({"z_dims": (8,), "hidden": (32,)}, "z_dims"), ({"z_dims": (8, 4), "hidden": (32,)}, "hidden")],
    }
    for options, name in cases.get(cls.name, []):
        with pytest.raises(OptionError) as err:
            cls(**options)
        assert err.value.option == name and "\n" not in str(err.value) and "--" not in str(err.value)


def test_other_accepted_forms_become_the_declared_form():
    import numpy as np

    vae = REGISTRY["vae"](x_shape=[1, 8, 8], z_dim=np.int64(4), hidden=[16])
    assert vae.config.x_shape == (1, 8, 8) and type(vae.config.z_dim) is int and vae.config.hidden == (16,)
    assert REGISTRY["prodlda"](x_shape=30, batch_norm=False).config.batch_norm == "off"
    assert REGISTRY["nade"](x_shape=(4,), hidden=(7,)).config.hidden == 7  # the CLI's --hidden 7
    assert REGISTRY["hvae"](x_shape=(4,), z_dims=(3, 2), hidden=(8, 4)).config.hidden == ((8,), (4,))
    assert REGISTRY["gan"](x_shape=(1, 8, 8)).config.output == "sigmoid"  # by data shape, stored resolved
    assert REGISTRY["gan"]().config.output == "identity"


# -- run directories written before the declarations --------------------------------------------------------------
#: the keyword calls, and the ``model_config`` the version before the declarations wrote for them (config.json)
OPTIONS = {
    "cvae": {"x_shape": (1, 8, 8), "z_dim": 3, "likelihood": "gaussian", "hidden": (16,), "classes": 4,
             "label_column": "digit"},
    "ddpm": dict(x_shape=(1, 8, 8), likelihood="discretized", hidden=(32,), timesteps=7, schedule="cosine",
                 variance="learned", objective="hybrid", sampler="ddim", sample_steps=3, denoiser="unet", channels=8,
                 attention=True, levels=16, ema=0.999),
    "dirvae": dict(x_shape=(30,), topics=3, hidden=(8,), alpha=0.5, dropout=0.0, batch_norm=False, decoder="mixture"),
    "dlgm": dict(x_shape=(4,), z_dims=(3,), hidden=((),), likelihood="gaussian"),
    "factor_analysis": dict(x_shape=(6,), z_dim=2),
    "gan": dict(x_shape=(1, 8, 8), z_dim=4, hidden=(16,), net="conv", encoder=True, noise=0.1),
    "gmvae": dict(x_shape=(1, 8, 8), z_dim=3, likelihood="cbernoulli", hidden=(16,), components=4, label_column="d"),
    "gpvae": dict(x_shape=(5,), z_dim=1, inducing=8, kernel="linear", hidden=(8,), likelihood="gaussian", num_data=40),
    "hvae": dict(x_shape=(1, 6, 6), z_dims=(5, 3), hidden=(16, 8), skip=True),
    "lvae": dict(x_shape=(1, 6, 6), z_dims=(5, 3, 2), hidden=((16,), (8,), (8,)), likelihood="cbernoulli",
                 batch_norm="off", batch_norm_top_down=True),
    "m2": dict(x_shape=(1, 8, 8), z_dim=3, hidden=(16,), classes=4, alpha=0.5, y_guide="relaxed", temperature=0.3),
    "nade": dict(x_shape=(1, 4, 4), hidden=[7]),
    "ppca": dict(x_shape=3, z_dim=3),
    "prodlda": dict(x_shape=(30,), topics=4, alpha=0.7, batch_norm="off", background="off"),
    "vae": dict(x_shape=(1, 8, 8), z_dim=4, likelihood="gaussian", hidden=(16, 8), net="pixelcnn", skip=True,
                ar_channels=4, ar_layers=1),
    "vqvae": dict(x_shape=(1, 8, 8), codes=8, code_dim=4, downsample=1, channels=8, likelihood="cbernoulli",
                  commitment=0.5, codebook="loss", decay=0.9, restart_below=0.0, prior_channels=8, prior_layers=1),
}
WRITTEN = {
    "cvae": {"x_shape": [1, 8, 8], "z_dim": 3, "likelihood": "gaussian", "hidden": [16], "classes": 4,
             "label_column": "digit"},
    "ddpm": {"x_shape": [1, 8, 8], "likelihood": "discretized", "hidden": [32], "timesteps": 7, "schedule": "cosine",
             "prediction": "eps", "variance": "learned", "objective": "hybrid", "vlb_weight": 0.001,
             "sampler": "ddim", "sample_steps": 3, "eta": 0.0, "denoiser": "unet", "time_dim": 64, "channels": 8,
             "channel_mult": [1, 2], "attention": True, "levels": 16, "timestep_sampling": "uniform", "ema": 0.999},
    "dirvae": {"x_shape": [30], "topics": 3, "hidden": [8], "alpha": 0.5, "dropout": 0.0, "batch_norm": "off",
               "decoder": "mixture", "background": "off"},
    "dlgm": {"x_shape": [4], "z_dims": [3], "hidden": [[]], "likelihood": "gaussian", "skip": False},
    "factor_analysis": {"x_shape": [6], "z_dim": 2},
    "gan": {"x_shape": [1, 8, 8], "z_dim": 4, "hidden": [16], "net": "conv", "output": "sigmoid", "batch_norm": "off", "encoder": True,
            "noise": 0.1},
    "gmvae": {"x_shape": [1, 8, 8], "z_dim": 3, "likelihood": "cbernoulli", "hidden": [16], "components": 4,
              "label_column": "d"},
    "gpvae": {"x_shape": [5], "z_dim": 1, "inducing": 8, "kernel": "linear", "hidden": [8], "likelihood": "gaussian",
              "num_data": 40},
    "hvae": {"x_shape": [1, 6, 6], "z_dims": [5, 3], "hidden": [[16], [8]], "likelihood": "bernoulli", "skip": True,
             "activation": "softplus"},
    "lvae": {"x_shape": [1, 6, 6], "z_dims": [5, 3, 2], "hidden": [[16], [8], [8]], "likelihood": "cbernoulli",
             "skip": False, "batch_norm": "off", "batch_norm_top_down": "on"},
    "m2": {"x_shape": [1, 8, 8], "z_dim": 3, "likelihood": "bernoulli", "hidden": [16], "classes": 4,
           "label_column": "y", "alpha": 0.5, "y_guide": "relaxed", "temperature": 0.3, "labelled_share": 0.1,
           "labelled_batches": "mixed", "grey_levels": False, "precision": "float32"},
    "nade": {"x_shape": [1, 4, 4], "hidden": 7},
    "ppca": {"x_shape": [3], "z_dim": 3},
    "prodlda": {"x_shape": [30], "topics": 4, "hidden": [100, 100], "alpha": 0.7, "dropout": 0.2, "batch_norm": "off",
                "decoder": "poe", "background": "off"},
    "vae": {"x_shape": [1, 8, 8], "z_dim": 4, "likelihood": "gaussian", "hidden": [16, 8], "activation": "softplus",
            "net": "pixelcnn",
            "skip": True, "flows": 0, "ar_channels": 4, "ar_layers": 1, "committed_rate": 0.0},
    "vqvae": {"x_shape": [1, 8, 8], "codes": 8, "code_dim": 4, "downsample": 1, "channels": 8,
              "likelihood": "cbernoulli", "commitment": 0.5, "codebook": "loss", "decay": 0.9, "restart_below": 0.0,
              "prior_channels": 8, "prior_layers": 1},
}


@pytest.mark.parametrize("cls", FAMILIES, ids=family_id)
def test_configs_written_before_load_and_the_same_calls_write_them_again(cls):
    assert cls.from_config(WRITTEN[cls.name]).config_dict() == WRITTEN[cls.name]
    assert cls(**OPTIONS[cls.name]).config_dict() == WRITTEN[cls.name]


def test_a_field_added_later_takes_its_absent_value_for_older_runs():
    before = {k: v for k, v in WRITTEN["lvae"].items() if k not in ("batch_norm",)}  # written before batch_norm
    assert REGISTRY["lvae"].from_config(before).config.batch_norm == "off"
    assert REGISTRY["lvae"]().config.batch_norm == "on"  # new runs get the declared default


# -- the CLI's flag for an option -----------------------------------------------------------------------------------
def test_flag_of_knows_training_and_model_options(monkeypatch):
    @dataclass(frozen=True)
    class FlaggedConfig:
        x_shape: tuple[int, ...] = option((2,), sizes, "shape", cli=False)
        layer_widths: tuple[int, ...] = option((8,), sizes, "hidden widths", flag="widths")

        def __post_init__(self) -> None:
            validate(self)

    class Flagged(GenerativeModel):  # no name: not registered by defining it
        Config = FlaggedConfig

    monkeypatch.setitem(REGISTRY, "test_flagged", Flagged)
    assert flag_of("layer_widths") == "--widths"  # a model option whose flag differs from its name
    assert flag_of("num_particles") == "--particles"  # a training option's
    assert flag_of("z_dim") == "--z-dim"
    with pytest.raises(OptionError) as err:
        Flagged(layer_widths=(0,))
    assert err.value.option == "layer_widths"
