"""What ``import ppgen`` and ``ppgen --help`` load: the slow libraries wait until a command needs them.

Each check runs in a fresh interpreter (this test process has long since imported everything) and reads its
``sys.modules`` afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: imported only by the commands that use them (statistics, diagnostics, figures, the JAX engine)
HEAVY = ["scipy.stats", "arviz", "matplotlib", "jax", "numpyro"]


def loaded_after(code: str) -> set[str]:
    """The modules of :data:`HEAVY` (and torch, pyro) a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    modules = set(json.loads(out.strip().splitlines()[-1]))
    return {name for name in HEAVY + ["torch", "pyro"] if name in modules}


def test_import_ppgen_loads_no_heavy_library():
    assert loaded_after("import ppgen") == set()


@pytest.mark.parametrize("argv", [[], ["--help"]])
def test_help_loads_neither_torch_nor_pyro(argv):
    code = ("import contextlib, io\nfrom ppgen.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n    main({argv!r})")
    assert loaded_after(code) == set()


def test_the_quick_help_is_the_full_parsers_help(monkeypatch):
    """``ppgen --help`` in a fresh process lists the commands from their table and the stages from the family
    modules' source; the parser with every command's flags (each module's own ``add``, the stages the registered
    families declare) shows the same page, so neither list can drift from what it stands for."""
    from ppgen.cli import build_parser
    from ppgen.commands.stages import scanned_lines
    from ppgen.workflows import declared_stages

    code = "import contextlib, sys\nfrom ppgen.cli import main\nwith contextlib.suppress(SystemExit):\n    main(['--help'])"
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to this width in both
    quick = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert quick == build_parser().format_help()
    assert scanned_lines() == {name: pairs[0][1].help for name, pairs in declared_stages().items()}
    assert "prior" in scanned_lines()  # the VQ-VAE's stage two: the scan finds a declaration


def test_public_names_load_on_first_use():
    code = ("import ppgen\nfrom ppgen import fit, load, models\n"
            "assert callable(fit) and callable(load) and ppgen.fit is fit and 'vae' in models.REGISTRY\n"
            "assert ppgen.inference.Fit and ppgen.data.load and ppgen.evaluation.iwae\n"
            "assert set(ppgen.__all__) <= set(dir(ppgen))")
    assert {"torch", "pyro"} <= loaded_after(code)


def test_unknown_attribute_is_an_attribute_error():
    import ppgen

    with pytest.raises(AttributeError, match="no_such_name"):
        ppgen.no_such_name  # noqa: B018


def test_the_command_skips_the_collectors_passes_at_exit():
    # an exit hook registered before main() runs after main's (hooks run last-in first-out): the objects are frozen
    code = ("import atexit, contextlib, gc, io\n"
            "atexit.register(lambda: print('frozen', gc.get_freeze_count()))\n"
            "from ppgen.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    main(['data'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert int(out.split()[-1]) > 1000
