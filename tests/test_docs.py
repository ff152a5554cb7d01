"""The documentation: every public name has an API entry, every family a page, the generated blocks come from the
code, the README stays a front page, and (slow) the site builds with ``mkdocs build --strict``."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import ppgen
import ppgen.models
from ppgen.commands import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API_PAGE = DOCS / "reference" / "api.md"
#: modules whose ``__all__`` is public beside ``ppgen.__all__`` (what a pair is written against)
ALSO_PUBLIC = ("ppgen.ppl", "ppgen.nn")


def families() -> dict:
    """ppgen's own families (a test module that defines one registers it too, for the rest of the session)."""
    return {name: cls for name, cls in ppgen.models.REGISTRY.items() if cls.__module__.startswith("ppgen.models.")}


def load_hooks():
    spec = importlib.util.spec_from_file_location("ppgen_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def public_names() -> set[str]:
    """Dotted names of the public API: ppgen's own exports (a module stands for its ``__all__``), the families."""
    names: set[str] = set()
    modules = [m for m in ppgen.__all__ if inspect.ismodule(getattr(ppgen, m))]
    for name in ppgen.__all__:
        if name not in modules:
            names.add(f"ppgen.{name}")
    for module_name in [f"ppgen.{m}" for m in modules] + list(ALSO_PUBLIC):
        module = importlib.import_module(module_name)
        names.update(f"{module_name}.{n}" for n in module.__all__ if not inspect.ismodule(getattr(module, n)))
    names.update(f"ppgen.models.{cls.__name__}" for cls in families().values())
    return names


def documented(page: Path) -> set[str]:
    """The identifiers of a page's mkdocstrings blocks (``::: ppgen.x.y``), with the names they are exported as."""
    found = set()
    for ident in re.findall(r"^::: ([\w.]+)$", page.read_text(), re.MULTILINE):
        found.add(ident)
        obj = resolve(ident)
        for module_name in {"ppgen", "ppgen.models"} | {n.rsplit(".", 1)[0] for n in public_names()}:
            module = importlib.import_module(module_name)
            for exported in getattr(module, "__all__", []) + ([c.__name__ for c in families().values()]
                                                                if module_name == "ppgen.models" else []):
                if getattr(module, exported, None) is obj and obj is not None:
                    found.add(f"{module_name}.{exported}")
    return found


def resolve(ident: str):
    module_name, _, attr = ident.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def test_every_public_name_has_an_api_entry():
    missing = public_names() - documented(API_PAGE)
    assert not missing, f"add a `::: NAME` entry to docs/reference/api.md for: {sorted(missing)}"


def test_every_api_entry_names_something_that_exists():
    for ident in re.findall(r"^::: ([\w.]+)$", API_PAGE.read_text(), re.MULTILINE):
        resolve(ident)  # AttributeError / ImportError names the stale entry


def test_every_family_has_a_page_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for name in families():
        page = DOCS / "families" / f"{name}.md"
        assert f"<!-- ppgen:family {name} -->" in page.read_text(), page
        assert f"families/{name}.md" in nav, name


def test_every_page_of_the_navigation_exists():
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:", 1)[1]
    pages = re.findall(r"([\w/]+\.(?:md|ipynb))", nav)
    assert len(pages) >= 25
    for page in pages:
        assert (DOCS / page).is_file(), page


def test_a_family_block_is_its_docstring_and_every_declared_option():
    hooks = load_hooks()
    for name, cls in families().items():
        block = hooks.family_block(name)
        first_line = sys.modules[cls.__module__].__doc__.strip().splitlines()[0]
        assert first_line.split("(")[0].strip() in block, name
        for f in dataclasses.fields(cls.Config):
            if f.name == "x_shape" or "help" not in f.metadata:
                continue
            assert f"| `{f.name}` |" in block, (name, f.name)
            if f.metadata.get("cli", True):
                assert f"`--{f.metadata.get('flag') or f.name.replace('_', '-')}`" in block, (name, f.name)
    with pytest.raises(Exception, match="nosuch"):
        hooks.family_block("nosuch")


def test_backend_options_and_cli_blocks_come_from_the_code():
    from ppgen.inference.options import SVIOptions

    hooks = load_hooks()
    svi = hooks.backend_options_block("svi")
    for f in dataclasses.fields(SVIOptions):
        assert f"| `{f.name}` |" in svi, f.name
    with pytest.raises(KeyError):
        hooks.backend_options_block("nosuch")
    cli = hooks.cli_block()
    for command in COMMANDS:
        assert f"## ppgen {command.name}\n" in cli or command.name == "stages", command.name
    assert "## ppgen prior\n" in cli  # a stage the VQ-VAE declares
    assert "--version" in cli
    assert hooks.expand("a\n<!-- ppgen:cli -->\nb").startswith("a\n## ppgen\n")


def test_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert readme.index("make demo") < readme.index("make test") < 400  # the two commands first
    python = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert len(python.strip().splitlines()) <= 10
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), link


def test_nothing_a_user_reads_names_an_issue():
    pattern = re.compile(r"\bissues? #?\d+", re.IGNORECASE)
    texts = [ROOT / "README.md", *DOCS.rglob("*.md"), ROOT / "benchmarks" / "README.md",
             *(ROOT / "benchmarks").glob("*.py")]  # a benchmark's docstring is its --help
    for path in texts:
        if "notebooks" in path.parts:
            continue
        assert not pattern.search(path.read_text()), path


def test_the_readme_python_example_only_calls_what_exists():
    readme = (ROOT / "README.md").read_text()
    python = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    for dotted in set(re.findall(r"\bppgen(?:\.\w+)+", python)):
        obj = ppgen
        for part in dotted.split(".")[1:]:
            obj = getattr(obj, part)  # AttributeError names a call the example makes up


def inventory(site: Path) -> set[str]:
    """The names in a built site's ``objects.inv`` (Sphinx inventory v2: four header lines, then zlib)."""
    raw = (site / "objects.inv").read_bytes()
    body = zlib.decompress(raw.split(b"\n", 4)[4]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines()}


@pytest.mark.slow
def test_site_builds_strict_and_renders_every_public_name(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ,
                                                                          "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rendered = inventory(tmp_path / "site")
    entries = set(re.findall(r"^::: ([\w.]+)$", API_PAGE.read_text(), re.MULTILINE))
    assert entries <= rendered, sorted(entries - rendered)
    for name in families():
        assert (tmp_path / "site" / "families" / name / "index.html").is_file()
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "ppgen evaluate" in cli and "--iwae" in cli
