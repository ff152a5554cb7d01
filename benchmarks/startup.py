"""Time to first result: ppgen against the plain Pyro script it replaces, whole processes and short fits.

Three parts, each a set of paired runs in alternating order (one pair per round; the table gives the median and
the spread of the per-round ratios, ppgen / Pyro: below 1 ppgen is quicker):

(a) whole processes: ``ppgen train vae --epochs E`` on the bundled MNIST (it also prints a validation ELBO every
    epoch, writes the run and evaluates the test set) against :file:`_plain_pyro_vae.py`, a plain Pyro script
    that trains the same 784-400-50 VAE (batch 256, Adam 1e-3, dynamic binarization) for E epochs and evaluates
    the test ELBO once. ppgen runs with a cold compilation cache (an empty folder each round) and a warm one
    (a folder filled by an untimed run first).
(b) ``ppgen.fit`` of a 64-128-8 VAE on scikit-learn's 8x8 digits for 1, 10 and 100 epochs against a plain Pyro
    loop over the same networks (warm compilation cache). Each is timed inside a fresh process from the call
    to the trained pair, so ppgen's tracing and compiling count and the imports do not.
(c) ``import ppgen``, ``ppgen --help``, ``ppgen train --help`` and ``ppgen train vae --help`` as whole processes,
    beside ``import torch`` and a bare ``python -c pass`` for scale (the load average before and after printed).

    nice -n 10 python benchmarks/startup.py                    # the full set: tens of minutes on 2 cores
    nice -n 10 python benchmarks/startup.py --rounds 2 --train-epochs 5 --fit-epochs 1 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


#: the children import this checkout's ppgen
CHILD_ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def wall(command: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds a whole process takes, from start to exit (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env={**os.environ, **CHILD_ENV, **(env or {})}, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def child_seconds(command: list[str], env: dict[str, str]) -> float:
    """The seconds a child process measured itself (its last line of output)."""
    out = subprocess.run(command, cwd=ROOT, env={**os.environ, **CHILD_ENV, **env}, check=True, capture_output=True,
                         text=True).stdout
    return float(out.strip().splitlines()[-1])


def summary(ppgen: list[float], plain: list[float]) -> dict:
    ratios = [a / b for a, b in zip(ppgen, plain, strict=True)]
    return {"ppgen_s": statistics.median(ppgen), "plain_s": statistics.median(plain),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def part_a(rounds: int, epochs: int, work: Path) -> dict:
    py = sys.executable
    warm_dir = work / "warm-cache"
    train = [py, "-m", "ppgen", "train", "vae", "--epochs", str(epochs), "--no-progress"]
    wall(train + ["--out", str(work / "a-fill")], {"PPGEN_COMPILE_CACHE_DIR": str(warm_dir)})  # fills the cache
    times: dict[str, list[float]] = {"cold": [], "warm": [], "pyro": []}
    for r in range(rounds):
        order = ["cold", "pyro", "warm"] if r % 2 == 0 else ["warm", "pyro", "cold"]
        for kind in order:
            out = str(work / f"a-{kind}-{r}")
            if kind == "pyro":
                times[kind].append(wall([py, str(HERE / "_plain_pyro_vae.py"), "--epochs", str(epochs)]))
            else:
                cache = warm_dir if kind == "warm" else work / f"cold-cache-{r}"
                times[kind].append(wall(train + ["--out", out], {"PPGEN_COMPILE_CACHE_DIR": str(cache)}))
    return {"cold": summary(times["cold"], times["pyro"]), "warm": summary(times["warm"], times["pyro"]),
            "raw": times}


def part_b(rounds: int, epochs_list: list[int], work: Path) -> dict:
    py = sys.executable
    env = {"PPGEN_COMPILE_CACHE_DIR": str(work / "b-cache")}
    results = {}
    for epochs in epochs_list:
        fit = [py, str(HERE / "_plain_pyro_vae.py"), "--digits-fit", "--epochs", str(epochs)]
        child_seconds(fit + ["--ppgen"], env)  # fills the cache for this shape
        times: dict[str, list[float]] = {"ppgen": [], "pyro": []}
        for r in range(rounds):
            for kind in (["ppgen", "pyro"] if r % 2 == 0 else ["pyro", "ppgen"]):
                times[kind].append(child_seconds(fit + (["--ppgen"] if kind == "ppgen" else []), env))
        results[str(epochs)] = {**summary(times["ppgen"], times["pyro"]), "raw": times}
    return results


def part_c(rounds: int) -> dict:
    py = sys.executable
    commands = {"import ppgen": [py, "-c", "import ppgen"], "ppgen --help": [py, "-m", "ppgen", "--help"],
                "ppgen train --help": [py, "-m", "ppgen", "train", "--help"],
                "ppgen train vae --help": [py, "-m", "ppgen", "train", "vae", "--help"],
                "import torch": [py, "-c", "import torch"], "python": [py, "-c", "pass"]}
    times: dict[str, list[float]] = {name: [] for name in commands}
    load = [os.getloadavg()]
    for r in range(rounds):
        for name in (list(commands) if r % 2 == 0 else list(commands)[::-1]):
            times[name].append(wall(commands[name]))
    load.append(os.getloadavg())
    rows = {name: {"median_s": statistics.median(t), "min_s": min(t), "raw": t} for name, t in times.items()}
    return {**rows, "load_average": load}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds per row (default 3)")
    parser.add_argument("--train-epochs", type=int, default=30, help="epochs of part (a) (default 30)")
    parser.add_argument("--fit-epochs", type=int, nargs="+", default=[1, 10, 100], help="epochs of part (b)")
    parser.add_argument("--parts", default="abc", help="which parts to run (default abc)")
    parser.add_argument("--json", default="runs/bench/startup.json", help="where to write the figures")
    args = parser.parse_args(argv)
    results: dict = {"load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="ppgen-startup-") as tmp:
        work = Path(tmp)
        if "c" in args.parts:
            results["c"] = part_c(max(args.rounds, 5))
            for name, row in results["c"].items():
                if name != "load_average":
                    print(f"(c) {name:22s} median {row['median_s']:.2f} s  best {row['min_s']:.2f} s", flush=True)
            print(f"(c) load average before and after: {results['c']['load_average']}", flush=True)
        if "b" in args.parts:
            results["b"] = part_b(args.rounds, args.fit_epochs, work)
            for epochs, row in results["b"].items():
                print(f"(b) ppgen.fit digits VAE {epochs:>3s} epochs: {row['ppgen_s']:.2f} s vs Pyro loop "
                      f"{row['plain_s']:.2f} s: ratio {row['ratio_median']:.2f} "
                      f"({row['ratio_min']:.2f}-{row['ratio_max']:.2f})", flush=True)
        if "a" in args.parts:
            results["a"] = part_a(args.rounds, args.train_epochs, work)
            for kind in ("cold", "warm"):
                row = results["a"][kind]
                print(f"(a) ppgen train vae --epochs {args.train_epochs} ({kind} cache): {row['ppgen_s']:.1f} s vs "
                      f"plain Pyro script {row['plain_s']:.1f} s: ratio {row['ratio_median']:.2f} "
                      f"({row['ratio_min']:.2f}-{row['ratio_max']:.2f})", flush=True)
    results["load_average_after"] = os.getloadavg()
    print(f"load average before {results['load_average_before']}, after {results['load_average_after']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
