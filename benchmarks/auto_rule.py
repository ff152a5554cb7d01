"""When does compiling for JAX pay? The measurement behind ``engine="auto"``'s rule for small jobs.

``ppgen.fit`` of a VAE on the torch engine and on the JAX engine (cold compilation cache: an empty folder each run;
warm: a folder filled by an untimed run first), each in a fresh process, timed from the call to the trained pair
(imports and data loading excluded), for 1, 10 and 100 epochs, in two settings:

* ``digits``: a 64-128-8 VAE on scikit-learn's 8x8 digits (1,257 training examples, batch 256: 4 full batches an epoch);
* ``mnist``: the 784-400-50 VAE of ``ppgen train vae`` on the bundled MNIST (3,500 training examples, batch 256:
  13 full batches an epoch).

Each (setting, engine) row is fitted by least squares as ``seconds = fixed + steps * per_step``; the JAX engine's
extra fixed cost (tracing, lowering, compiling) divided by what it saves per step is the number of steps below which
the torch engine finishes first; the table of which engine finished first at each size brackets the rule.
:data:`ppgen.inference.svi.AUTO_TORCH_BELOW_STEPS` is set from these figures, taken with torch's and XLA's own
thread pools (the default) and with one thread each (``--threads 1``: fitted on the process's CPU seconds, which a
loaded machine does not stretch).

    nice -n 10 python benchmarks/auto_rule.py                  # two rounds: ~10 minutes on a quiet 2-core machine
    nice -n 10 python benchmarks/auto_rule.py --rounds 1 --threads 1   # one thread each: a loaded machine
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
CHILD_ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
SETTINGS = ("digits", "mnist")


def child(setting: str, engine: str, epochs: int) -> None:
    """One timed fit; prints a JSON line: seconds of the call (wall and the process's CPU), steps taken, weights."""
    import numpy as np

    import ppgen
    from ppgen.inference.options import SVIOptions
    from ppgen.inference.svi import total_steps
    from ppgen.models import VAE

    np.seterr(all="ignore")
    if setting == "digits":
        data, pair = ppgen.data.load("digits", binarize="dynamic"), VAE(x_shape=(1, 8, 8), z_dim=8, hidden=(128,))
    else:
        data, pair = ppgen.data.load("mnist"), VAE()
    start, cpu = time.perf_counter(), time.process_time()
    fit = ppgen.fit(pair, data, epochs=epochs, engine=engine, progress=False, announce=lambda m: None)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "steps": total_steps(data, SVIOptions(epochs=epochs)),
                      "engine": fit.options["engine"],
                      "weights": sum(p.numel() for p in pair.parameters()), "n_train": len(data.train)}))


def thread_env(threads: int | None) -> dict[str, str]:
    """Environment variables that hold torch and XLA to ``threads`` threads (``None``: their own defaults). On a
    loaded machine a process's threads spin against each other and the other processes (a 3 ms torch step can take
    100 ms); one thread each keeps both engines' figures what a core gives them."""
    if threads is None:
        return {}
    flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" if threads == 1 else ""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()}


def timed(setting: str, engine: str, epochs: int, cache: Path, threads: int | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", setting, engine, str(epochs)], cwd=ROOT, check=True,
                         env={**os.environ, **CHILD_ENV, **thread_env(threads), "PPGEN_COMPILE_CACHE_DIR": str(cache)},
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def line_fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares ``seconds = fixed + steps * per_step`` -> (fixed, per_step)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 10, 100], help="epochs of the digits rows")
    parser.add_argument("--mnist-epochs", type=int, nargs="+", default=[1, 10, 30], help="epochs of the mnist rows")
    parser.add_argument("--threads", type=int, help="threads of torch and XLA in each fit (default: their own)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--json", default="runs/bench/auto_rule.json")
    parser.add_argument("--child", nargs=3, metavar=("SETTING", "ENGINE", "EPOCHS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return {}
    results: dict = {"load_average_before": os.getloadavg(), "threads": args.threads, "rows": []}
    kinds = ("torch", "jax-cold", "jax-warm")
    with tempfile.TemporaryDirectory(prefix="ppgen-auto-") as tmp:
        warm = Path(tmp) / "warm"
        for setting in args.settings:
            timed(setting, "jax", 1, warm, args.threads)  # fills the warm cache for this shape (untimed)
        for r in range(args.rounds):
            for setting in args.settings:
                for epochs in (args.epochs if setting == "digits" else args.mnist_epochs):
                    for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                        cache = warm if kind == "jax-warm" else Path(tmp) / f"cold-{setting}-{epochs}-{kind}-{r}"
                        row = timed(setting, kind.split("-")[0], epochs, cache, args.threads)
                        row.update(setting=setting, kind=kind, epochs=epochs, round=r)
                        results["rows"].append(row)
                        print(f"{setting:6s} {kind:8s} {epochs:4d} epochs ({row['steps']:5d} steps): "
                              f"{row['seconds']:7.2f} s, CPU {row['cpu_seconds']:7.2f} s", flush=True)
    # with one thread each, a fit's CPU seconds are its seconds on a quiet core, whatever else the machine runs
    clock = "cpu_seconds" if args.threads == 1 else "seconds"
    results["fitted_on"] = clock
    summary = {}
    for setting in args.settings:
        for kind in kinds:
            points = [(r["steps"], r[clock]) for r in results["rows"] if r["setting"] == setting and r["kind"] == kind]
            fixed, per_step = line_fit(points)
            summary[f"{setting} {kind}"] = {"fixed_s": fixed, "per_step_ms": 1e3 * per_step}
        torch_row = summary[f"{setting} torch"]
        for cache in ("cold", "warm"):
            jax_row = summary[f"{setting} jax-{cache}"]
            saved = torch_row["per_step_ms"] - jax_row["per_step_ms"]
            extra = jax_row["fixed_s"] - torch_row["fixed_s"]
            jax_row["break_even_steps"] = 1e3 * extra / saved if saved > 0 else float("inf")
    print(f"fitted on {clock}")
    for setting in args.settings:  # which engine finished first at each size (the rule's bracket)
        for steps in sorted({r["steps"] for r in results["rows"] if r["setting"] == setting}):
            at = {kind: statistics.median(r[clock] for r in results["rows"] if r["setting"] == setting
                                          and r["kind"] == kind and r["steps"] == steps) for kind in kinds}
            print(f"{setting:6s} {steps:5d} steps: " + ", ".join(f"{k} {v:.2f} s" for k, v in at.items())
                  + f"; first: {min(at, key=at.get)}")
    for name, row in summary.items():
        extra = f"; torch quicker below {row['break_even_steps']:.0f} steps" if "break_even_steps" in row else ""
        print(f"{name:16s} fixed {row['fixed_s']:5.2f} s, {row['per_step_ms']:6.2f} ms a step{extra}")
    results["summary"] = summary
    results["load_average_after"] = os.getloadavg()
    print(f"load average before {results['load_average_before']}, after {results['load_average_after']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
