"""The persistent compilation cache (ppgen.inference.compile_cache): where it lives, that a second process reads
what the first wrote, that it can be turned off, and that a cache that cannot be written never fails a run.

JAX's cache is process-wide state, so each check runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ppgen.inference import compile_cache

ROOT = Path(__file__).resolve().parent.parent

#: enable the cache, compile one function (written whatever its compile time), report the folder and cache hits
PROBE = """
import json, warnings
import jax, jax.numpy as jnp
from jax import monitoring
from ppgen.inference import compile_cache
hits = []
monitoring.register_event_listener(lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
folder = compile_cache.enable()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    value = float(jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T)(jnp.ones((7, 5))).sum())
print(json.dumps({"folder": folder and str(folder), "value": value, "hits": len(hits),
                  "warnings": [str(w.message)[:80] for w in caught]}))
"""


def probe(**env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if k not in (compile_cache.DIR_VARIABLE,
                                                                      compile_cache.DISABLE_VARIABLE)}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=environment | env, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


#: the probe's sum exactly: 7x7 entries, each a sum of 5 terms sin(1) cos(1)
EXACT = 7 * 7 * 5 * math.sin(1.0) * math.cos(1.0)


def test_second_process_reads_what_the_first_wrote(tmp_path):
    first = probe(PPGEN_COMPILE_CACHE_DIR=str(tmp_path))
    assert first["folder"] == str(tmp_path) and first["hits"] == 0
    assert any(p.name.endswith("-cache") for p in tmp_path.iterdir())
    second = probe(PPGEN_COMPILE_CACHE_DIR=str(tmp_path))
    assert second["hits"] >= 1 and second["value"] == first["value"] == pytest.approx(EXACT, rel=1e-5)


def test_turned_off_by_the_environment(tmp_path):
    result = probe(PPGEN_COMPILE_CACHE_DIR=str(tmp_path / "c"), PPGEN_NO_COMPILE_CACHE="1")
    assert result["folder"] is None and not (tmp_path / "c").exists()


def test_a_folder_that_cannot_be_made_leaves_it_off(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    result = probe(PPGEN_COMPILE_CACHE_DIR=str(tmp_path / "file" / "jax"))
    assert result["folder"] is None and result["value"] == pytest.approx(EXACT, rel=1e-5)


def test_a_failed_write_is_a_warning_not_a_failure(tmp_path):
    # the folder is usable when the cache is switched on, then becomes a file (writes fail as on a full disk)
    folder = tmp_path / "jax"
    code = PROBE.replace("folder = compile_cache.enable()\n", "folder = compile_cache.enable()\nimport shutil\n"
                         f"shutil.rmtree({str(folder)!r}); open({str(folder)!r}, 'w').close()\n")
    environment = {k: v for k, v in os.environ.items() if k != compile_cache.DISABLE_VARIABLE}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env=environment | {compile_cache.DIR_VARIABLE: str(folder)}).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["value"] == pytest.approx(EXACT, rel=1e-5)
    assert any("persistent compilation cache" in w for w in result["warnings"])


@pytest.mark.parametrize("platform, env, expected", [
    ("linux", {"XDG_CACHE_HOME": "/xdg"}, "/xdg/ppgen/jax"),
    ("linux", {}, "~/.cache/ppgen/jax"),
    ("darwin", {}, "~/Library/Caches/ppgen/jax"),
    ("win32", {"LOCALAPPDATA": "/local"}, "/local/ppgen/jax"),
])
def test_platform_folder(monkeypatch, platform, env, expected):
    monkeypatch.setattr(sys, "platform", platform)
    for name in ("XDG_CACHE_HOME", "LOCALAPPDATA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert compile_cache.default_dir() == Path(expected).expanduser()
