"""The shape of the house (DESIGN.md): arrows one way, no import circles (lazy imports included), evaluation
without file I/O, the pair protocol asked, not probed.

Imports are read from the source with ``ast`` — every ``import`` statement, also those inside functions — so
a lazy import that closes a circle is caught as surely as a top-level one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent / "ppgen"

#: DESIGN.md's arrows, top to bottom: a module may import its own layer and the layers below it
LAYERS = [
    {"ppgen.cli", "ppgen.commands", "ppgen.demo", "ppgen", "ppgen.api", "ppgen.__main__"},
    {"ppgen.workflows", "ppgen.tracking"},
    {"ppgen.evaluation", "ppgen.diagnostics"},
    {"ppgen.inference"},
    {"ppgen.models"},
    {"ppgen.nn"},
    {"ppgen.sites", "ppgen.ppl"},
]
#: leaves anyone may use; they import only each other (``runs`` rebuilds pairs, so it may also use models)
LEAVES = {"ppgen.data": set(), "ppgen.plots": set(), "ppgen.errors": set(), "ppgen.declare": set(), "ppgen.progress": set(),
          "ppgen.runs": {"ppgen.models"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def resolve(target: str, known: set[str]) -> str:
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The ppgen modules ``name`` imports anywhere in its source (``from a import b``: a.b if it is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {resolve(alias.name, known) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else resolve(base, known))
    return {t for t in found if t.startswith("ppgen") and t != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def group_of(name: str) -> str:
    """The most specific layer group of a module (``ppgen`` itself is the package root only)."""
    groups = [g for layer in LAYERS for g in layer] + list(LEAVES)
    matches = [g for g in groups if name == g or (g != "ppgen" and name.startswith(g + "."))]
    if not matches:
        raise AssertionError(f"{name} belongs to no layer of DESIGN.md; add it to LAYERS or LEAVES")
    return max(matches, key=len)


def rank(group: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if group in layer)


def test_the_import_graph_reads_lazy_imports():
    edges = graph()
    assert "ppgen.diagnostics" in edges["ppgen.workflows.compare"]  # imported inside a function there
    assert "ppgen.inference.svi_jax" in edges["ppgen.inference.svi"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    assert cycles(graph()) == []


def test_arrows_point_one_way():
    wrong = []
    for name, targets in graph().items():
        source = group_of(name)
        for target in targets:
            dest = group_of(target)
            if dest == source or name.startswith(target + ".") or target.startswith(name + "."):
                continue
            if source in LEAVES:
                ok = dest in LEAVES or dest in LEAVES[source]
            elif dest in LEAVES:
                ok = True
            else:
                ok = rank(dest) >= rank(source)  # same layer: allowed (circles are caught above)
            if not ok:
                wrong.append(f"{name} -> {target}")
    assert wrong == []


FILE_IO = re.compile(r"\b(open\(|write_text|write_bytes|to_netcdf|\.mkdir\(|torch\.save|np\.save|runs\.)")


@pytest.mark.parametrize("path", sorted((ROOT / "evaluation").glob("*.py")), ids=lambda p: p.name)
def test_evaluation_does_no_run_directory_io(path):
    """Workflows read and write run directories; estimators take tensors and pairs. (The feature classifier's
    weight cache under ~/.cache is the one file evaluation keeps, in samples.py.)"""
    lines = [line for line in path.read_text().splitlines() if FILE_IO.search(line)]
    if path.name == "samples.py":
        lines = [line for line in lines if "mkdir" in line or "torch.save" in line]
        assert len(lines) <= 2
    else:
        assert lines == []


PROBE = re.compile(r"\b(getattr|hasattr)\((pair|cls|self\.pair|fit\.pair)\b")


@pytest.mark.parametrize("path", sorted(p for p in ROOT.rglob("*.py") if p.name != "base.py"),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_pairs_are_asked_through_the_protocol_not_probed(path):
    assert [line.strip() for line in path.read_text().splitlines() if PROBE.search(line)] == []


def test_weights_reach_jax_through_numpyro_not_through_module_attributes():
    """Issue 9: NumPyro param sites (``pyro.module`` on NumPyro) and ``handlers.substitute`` carry the weights; nothing
    sets a ``jax_params`` attribute on a torch module any more."""
    setters = re.compile(r"__setattr__\([^)]*jax_params|__delattr__\([^)]*jax_params")
    assert [str(p) for p in ROOT.rglob("*.py") if setters.search(p.read_text())] == []


def test_the_compiled_sampler_cache_is_bounded(monkeypatch):
    from ppgen.inference import mcmc

    made = []
    monkeypatch.setattr(mcmc, "_CACHE", type(mcmc._CACHE)())
    monkeypatch.setattr(mcmc, "CACHE_SIZE", 2)
    monkeypatch.setattr(mcmc, "_Sampler", lambda *a, **k: made.append(k) or object())

    class Pair:
        def config_dict(self):
            return {}

    for warmup in (1, 2, 3, 1):
        mcmc.sampler(Pair(), torch.zeros(1, 2), {}, warmup=warmup)
    assert len(mcmc._CACHE) == 2 and len(made) == 4  # warmup=1 was evicted by 3, so built again
    mcmc.sampler(Pair(), torch.zeros(1, 2), {}, warmup=1)
    assert len(made) == 4  # the most recent ones are reused


# -- no family knowledge in the shared layers ----------------------------------------------------------------------
#: the layers that work from the registry and the declared protocol only (DESIGN.md: "a family adds its own stage or
#: report through the protocol, never by name here"; "an engine never special-cases a model class or name")
SHARED = sorted([ROOT / "cli.py", *(ROOT / "commands").rglob("*.py"), *(ROOT / "workflows").rglob("*.py"),
                 *(ROOT / "inference").rglob("*.py"), *(ROOT / "evaluation").rglob("*.py")])


def family_names() -> tuple[set[str], set[str]]:
    """(the registered families' names, their pair and Config class names)."""
    from ppgen.models import REGISTRY

    return set(REGISTRY), {cls.__name__ for cls in REGISTRY.values()} | {cls.Config.__name__ for cls in REGISTRY.values()}


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef))]
    return {id(n.body[0].value) for n in nodes
            if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def _identifiers(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.alias):
        return [*node.name.split("."), *([node.asname] if node.asname else [])]
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.arg):
        return [node.arg]
    if isinstance(node, ast.keyword) and node.arg:
        return [node.arg]
    return []


def family_mentions(source: str, names: set[str], classes: set[str]) -> list[str]:
    """Where ``source`` names a family: an identifier that is, or has as an ``_``-separated part, a family's name
    (any case) or class name (``VAE_NETS``, ``from ppgen.models.vqvae import ...``, ``isinstance(p, VQVAE)``), or a
    string literal with a family's name as a word (``== "vqvae"``, ``"ppgen train prodlda"``). Docstrings and
    comments are documentation and may cite a family as an example; a class name inside a message is prose
    ("a VQ-VAE's codes") and is not matched, the lower-case name a user types is."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        for ident in _identifiers(node):
            parts = ident.split("_")
            spans = {"_".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)}
            hit = sorted(s for s in spans if s.lower() in names or s in classes)
            if hit:
                found.append(f"line {node.lineno}: identifier {ident}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            words = set(re.findall(r"[A-Za-z0-9_]+", node.value))
            hit = sorted(words & names)
            if hit:
                found.append(f"line {node.lineno}: string {node.value[:60]!r} names {', '.join(hit)}")
    return found


def test_the_family_check_finds_names_and_classes():
    names, classes = {"vqvae", "factor_analysis"}, {"VQVAE", "VQVAEConfig"}
    source = ('"""Docstrings may cite vqvae."""\nfrom ppgen.models.vqvae import PRIOR\nVQVAE_NETS = 1\n'
              'def f(pair):\n    """vqvae"""\n    # vqvae in a comment\n    return pair.name == "vqvae" or '
              'isinstance(pair, VQVAE) or f"train factor_analysis {pair}"\nok = "a VQ-VAE\'s codes", "vqvaes"\n')
    found = family_mentions(source, names, classes)
    assert [line.split(":")[0] for line in found] == ["line 2", "line 3", "line 7", "line 7", "line 7"], found


@pytest.mark.parametrize("path", SHARED, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_family_is_named_in_the_shared_layers(path):
    """The shared layers know families only through the registry and the protocol: a family with its own options,
    command, stage or report is one file (``ppgen/models/<family>.py``)."""
    names, classes = family_names()
    assert family_mentions(path.read_text(), names, classes) == []
