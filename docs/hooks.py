"""MkDocs hook: the pages whose content the code already declares, made from it at build time (never written twice).

A page asks for a generated block with an HTML comment on a line of its own:

* ``<!-- ppgen:family NAME -->``: the family's math (its module docstring), its options (the ``Config`` fields
  declared with :func:`ppgen.declare.option`: flag, default, help, choices) and its notebook;
* ``<!-- ppgen:options BACKEND -->``: a training backend's declared options (``ppgen.fit(..., backend=BACKEND)``);
* ``<!-- ppgen:cli -->``: every ``ppgen`` subcommand's ``--help``, from the parsers of :mod:`ppgen.cli`.

An unknown NAME or BACKEND fails the build (a page can not silently lose its reference).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import sys
from pathlib import Path

MARKER = re.compile(r"^<!-- ppgen:(family|options|cli)(?: ([\w-]+))? -->$", re.MULTILINE)

#: the worked example of each family that has one (notebooks/, rendered under notebooks/ in the site)
NOTEBOOKS = {
    "vae": ["quickstart", "posterior_collapse"],
    "ddpm": ["diffusion"],
    "prodlda": ["topics"],
    "dirvae": ["topics"],
    "gpvae": ["gp_decoder"],
    "vqvae": ["vqvae"],
}


def _ppgen():
    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:  # build from the checkout being documented
        sys.path.insert(0, str(root))
    import ppgen.models  # noqa: F401  (registers every family)

    return sys.modules["ppgen"]


def rest_to_markdown(text: str) -> str:
    """A docstring's reST touches as Markdown: roles become code, ``x::`` introduces an indented (code) block."""
    text = re.sub(r":(?:class|func|meth|mod|data|attr|obj):`~?([^`]+)`", r"`\1`", text)
    text = re.sub(r"::$", ":", text, flags=re.MULTILINE)
    return text


def shown(value) -> str:
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


def options_table(cls: type, skip: tuple[str, ...] = ()) -> str:
    """One row per declared option of the dataclass ``cls``: Python name, ``ppgen`` flag, default, help."""
    rows = ["| option | flag | default | what it sets |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = f"`--{f.metadata.get('flag') or f.name.replace('_', '-')}`" if f.metadata.get("cli", True) else "—"
        choices = f.metadata.get("choices") or getattr(f.metadata.get("check"), "choices", None)
        help_text = f.metadata["help"].replace("|", "\\|")
        if choices and not all(str(c) in help_text for c in choices):
            help_text += " (" + ", ".join(f"`{c}`" for c in choices) + ")"
        rows.append(f"| `{f.name}` | {flag} | `{shown(default)}` | {help_text} |")
    return "\n".join(rows)


def family_block(name: str) -> str:
    ppgen = _ppgen()
    cls = ppgen.models.get(name)
    doc = sys.modules[cls.__module__].__doc__ or ""
    parts = [
        f"`ppgen.models.{cls.__name__}` · `ppgen train {name}` · source `{cls.__module__.replace('.', '/')}.py`",
        "## The model\n\n" + rest_to_markdown(doc.strip()),
        "## Options\n\n"
        f"`{cls.__name__}(**options)` from Python, `ppgen train {name} --FLAG VALUE` from the command line "
        "(`x_shape` comes from the data). The training options (epochs, learning rate, engine, ...) are on the "
        "[training options](../reference/options.md) page.\n\n" + options_table(cls.Config, skip=("x_shape",)),
    ]
    books = NOTEBOOKS.get(name, [])
    if books:
        links = ", ".join(f"[`notebooks/{b}.ipynb`](../notebooks/{b}.ipynb)" for b in books)
        parts.append(f"## Worked example\n\n{links} (executed by the test suite).")
    return "\n\n".join(parts)


def backend_options_block(backend: str) -> str:
    ppgen = _ppgen()
    from ppgen.inference.fit import OPTIONS

    if backend not in OPTIONS:
        raise KeyError(f"no declared options for backend {backend!r} (declared: {', '.join(sorted(OPTIONS))})")
    cls = OPTIONS[backend]
    del ppgen
    return (f"`ppgen.fit(pair, data, backend=\"{backend}\", **options)` or `options={cls.__name__}(...)` "
            f"(`{cls.__module__}.{cls.__name__}`); `ppgen train` takes the flags.\n\n" + options_table(cls))


def cli_block() -> str:
    _ppgen()
    import argparse

    from ppgen.cli import build_parser

    os.environ["COLUMNS"] = "110"  # argparse wraps to the terminal's width: fix it for a reproducible page
    parser = build_parser()
    sections = ["## ppgen\n\n```text\n" + parser.format_help() + "```"]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        with contextlib.redirect_stdout(io.StringIO()):
            text = sub.format_help()
        sections.append(f"## ppgen {name}\n\n```text\n{text}```")
    return "\n\n".join(sections)


def expand(markdown: str) -> str:
    def one(match: re.Match) -> str:
        kind, arg = match.group(1), match.group(2)
        if kind == "family":
            return family_block(arg)
        if kind == "options":
            return backend_options_block(arg)
        return cli_block()

    return MARKER.sub(one, markdown)


#: what a docstring's reST role looks like once Markdown has made its target code: ``:class:<code>~x.Y</code>``
ROLE_HTML = re.compile(r":(?:class|func|meth|mod|data|attr|obj):<code>~?")


def on_page_markdown(markdown: str, page, config, files) -> str:  # MkDocs' hook
    return expand(markdown)


def on_page_content(html: str, page, config, files) -> str:  # MkDocs' hook: the API pages' docstrings
    return ROLE_HTML.sub("<code>", html)
