"""Progress off a terminal: plain lines on stderr (what, how far, ETA) at a set interval; silence when asked."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time

from support import run_cli

from ppgen import progress

FAST = ["--data", "digits", "--z-dim", "4", "--hidden", "32", "--batch-size", "64", "--no-progress"]


def test_lines_say_what_how_far_and_how_long(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    stream = io.StringIO()  # not a terminal
    report = progress.progress(4, "AIS (2 points, 4 steps)", stream=stream)
    for _ in range(4):
        report.update(1)
    report.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("ppgen: AIS (2 points, 4 steps): 1/4 (25%), 0 s, about ")
    assert lines[3].startswith("ppgen: AIS (2 points, 4 steps): 4/4 (100%)")
    assert lines[-1].startswith("ppgen: AIS (2 points, 4 steps): done, 4 steps in ") and len(lines) == 5


def test_lines_wait_for_the_interval_and_can_be_silenced(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "3600")
    stream = io.StringIO()
    report = progress.progress(1000, "quick work", stream=stream)
    for _ in range(1000):
        report.update(1)
    report.close()
    assert stream.getvalue() == ""  # shorter than the interval: nothing, not even a closing line
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    monkeypatch.setenv(progress.SWITCH_ENV, "0")
    silent = progress.progress(3, "off", stream=stream)
    silent.update(3)
    silent.close()
    assert stream.getvalue() == "" and isinstance(silent, progress.Silent)


def test_heartbeat_reports_work_that_cannot_count(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.05")
    stream = io.StringIO()
    with progress.heartbeat("NUTS on NumPyro", stream=stream):
        time.sleep(0.3)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 3 and all(re.match(r"ppgen: NUTS on NumPyro: (running, \d+ s|done in \d+ s)$", line)
                                   for line in lines)
    assert lines[-1].startswith("ppgen: NUTS on NumPyro: done in")


def test_evaluate_with_ais_reports_progress_on_a_pipe(tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "vae", *FAST, "--epochs", "1", "--out", run) == 0
    env = {**os.environ, "MPLBACKEND": "Agg", progress.INTERVAL_ENV: "0"}
    done = subprocess.run([sys.executable, "-m", "ppgen.cli", "evaluate", str(run), "--iwae", "5", "--ais", "20",
                           "--ais-chains", "2", "--bdmc", "2", "--limit", "8"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    ais = [line for line in lines if line.startswith("ppgen: AIS (8 points, 20 steps): ")]
    assert ais and re.search(r"\d+/\d+ \(\d+%\), \d+ s, about \d+ s left", ais[0])
    assert any(line.startswith("ppgen: BDMC reverse chains (2 points, 20 steps): ") for line in lines)
    assert any(line.startswith("ppgen: IWAE-5 on 8 examples: ") for line in lines)
    assert "\r" not in done.stderr  # no terminal bar redrawn in a log
