"""Write constraints.txt: the exact installed version of every package ppgen needs (all extras), recursively.

Run from the repository root with the tested environment's Python (`make constraints`). A local version label
(torch's ``+cpu``) is dropped so that the file also constrains the same release from another index.
"""

from __future__ import annotations

import configparser
import re
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(setup_cfg: Path) -> list[str]:
    """ppgen's own requirements as setup.cfg declares them: install_requires and every extra."""
    config = configparser.ConfigParser()
    config.read(setup_cfg)
    texts = config["options"]["install_requires"].splitlines()
    texts += [t for extra in config["options.extras_require"].values() for t in extra.splitlines()]
    return [t.strip() for t in texts if t.strip() and not t.strip().startswith("#")]


def closure(roots: list[str]) -> dict[str, str]:
    """Every installed distribution the requirements ``roots`` need, and theirs (their extras as asked), by name."""
    found: dict[str, str] = {}
    todo: list[tuple[list[str], set[str]]] = [(roots, set())]
    while todo:
        texts, extras = todo.pop()
        for text in texts:
            req = Requirement(text)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker and not any(req.marker.evaluate(env) for env in envs):
                continue
            key = canonical(req.name)
            try:
                version = distribution(req.name).version
            except PackageNotFoundError:
                continue  # an optional dependency this environment does not have
            if key not in found:
                found[key] = version.split("+")[0]
                todo.append((distribution(req.name).requires or [], set(req.extras)))
            elif req.extras:
                todo.append((distribution(req.name).requires or [], set(req.extras)))
    return found


if __name__ == "__main__":
    pins = closure(declared(Path("setup.cfg")))
    head = ("# The tested environment: exact versions of ppgen's dependencies (all extras), from the venv the\n"
            "# suite passed in. `make install` installs with -c constraints.txt; `make constraints` rewrites it.\n")
    Path(sys.argv[1] if len(sys.argv) > 1 else "constraints.txt").write_text(
        head + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins)))
