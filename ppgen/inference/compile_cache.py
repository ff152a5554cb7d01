"""A persistent compilation cache for what ppgen compiles with JAX (the SVI engine's epoch, NUTS, estimators).

XLA compiles a jitted function the first time a process calls it with new shapes; for a small model that is
most of a short run (about a second for an SVI epoch on a 2-core machine). JAX can keep the compiled
executables on disk (its *persistent compilation cache*), so the next process with the same model, shapes and
JAX version loads them instead. ppgen switches it on before its engines compile anything, in the user's cache
folder:

* Linux and the like: ``$XDG_CACHE_HOME/ppgen/jax``, else ``~/.cache/ppgen/jax``;
* macOS: ``~/Library/Caches/ppgen/jax``;
* Windows: ``%LOCALAPPDATA%\\ppgen\\jax``.

``PPGEN_COMPILE_CACHE_DIR`` names another folder; ``PPGEN_NO_COMPILE_CACHE=1`` turns the cache off (so does a
``jax_compilation_cache_dir`` the user set already: theirs is kept). The folder is bounded
(:data:`MAX_BYTES`, least recently used entries go first), and JAX then takes a file lock around each read
and write, so concurrent processes share it safely. A cache that cannot be used never fails a run: a folder
that cannot be created or written leaves the cache off, and JAX turns a failed read or write (a full disk)
into a warning and compiles as if there were no cache.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

#: set to 1 (or true/yes) to compile afresh every run
DISABLE_VARIABLE = "PPGEN_NO_COMPILE_CACHE"
#: a folder to use instead of the platform's cache folder
DIR_VARIABLE = "PPGEN_COMPILE_CACHE_DIR"
#: the cache's size bound: beyond it JAX evicts the least recently used executables
MAX_BYTES = 1 << 30
#: compilations quicker than this are not written (reading a file back costs about as much)
MIN_COMPILE_SECONDS = 0.1

_state: dict[str, Path | None] = {}


def default_dir() -> Path:
    """The platform's per-user cache folder for ppgen's compiled executables."""
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache")
    return base / "ppgen" / "jax"


def disabled() -> bool:
    """Whether ``PPGEN_NO_COMPILE_CACHE`` turns the cache off."""
    return os.environ.get(DISABLE_VARIABLE, "").strip().lower() in {"1", "true", "yes", "on"}


def cache_dir() -> Path:
    """The folder the cache uses: ``PPGEN_COMPILE_CACHE_DIR`` or :func:`default_dir`."""
    chosen = os.environ.get(DIR_VARIABLE)
    return Path(chosen).expanduser() if chosen else default_dir()


def _writable(folder: Path) -> bool:
    """Whether ``folder`` exists (or can be made) and a file can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return False
    return True


def enable() -> Path | None:
    """Switch JAX's persistent compilation cache on (once per process); the folder, or None if it stays off.

    Call before compiling. Off when ``PPGEN_NO_COMPILE_CACHE`` is set, when the user already chose a
    ``jax_compilation_cache_dir`` (theirs is used), or when the folder cannot be written.
    """
    if "dir" in _state:
        return _state["dir"]
    import jax

    folder = None
    if not disabled() and not jax.config.jax_compilation_cache_dir:
        wanted = cache_dir()
        if _writable(wanted):
            folder = wanted
            jax.config.update("jax_compilation_cache_dir", str(folder))
            jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # any size
    _state["dir"] = folder
    return folder
