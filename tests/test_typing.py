"""The public surface type-checks: `mypy --strict` on ppgen.api (fit, save, load), ppgen.tracking and
ppgen.progress finds nothing (slow: a cold mypy cache reads torch's annotations, about 2 minutes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TYPED = ["ppgen/api.py", "ppgen/tracking.py", "ppgen/progress.py"]


@pytest.mark.slow
def test_the_public_api_passes_mypy_strict():
    pytest.importorskip("mypy")
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", *TYPED],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("Success: no issues found in 3 source files")
