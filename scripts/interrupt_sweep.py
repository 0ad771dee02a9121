"""Ctrl-C sweep on the real trainer: the demo study interrupted at fixed instants, then resumed.

    .venv/bin/python scripts/interrupt_sweep.py [--at 1.5 3 5 ...] [--workers 2]

Copies the demo spec into a temporary folder with a small synthetic data set, and for each
instant starts `study run --workers 2 --trials N --subset 0.05 --epochs 1` in its own process
group, sends SIGINT to the whole group (as a terminal does) after that many seconds, and
records the exit code and whether a traceback was printed. The same command then resumes to
N finished trials; each instant adds 2 trials to N. Prints one line per instant and a summary.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--at", type=float, nargs="+", default=[1.5, 3, 5, 5.5, 6, 6.5, 7, 8, 9, 10])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="signtune-sweep-"))
    (work / "studies" / "demo").mkdir(parents=True)
    shutil.copytree(ROOT / "search_spaces", work / "search_spaces")
    spec = (ROOT / "studies" / "demo" / "study.yaml").read_text()
    spec = spec.replace("n_train: 3000", "n_train: 400").replace("n_val: 300", "n_val: 60")
    (work / "studies" / "demo" / "study.yaml").write_text(spec)
    env = {**os.environ, "COLUMNS": "200"}
    trials = 2
    base = [sys.executable, "-m", "signtune", "run", "--workers", str(args.workers)]
    base += ["--subset", "0.05", "--epochs", "1"]
    subprocess.run([*base, "--trials", str(trials)], cwd=work, env=env, capture_output=True, check=True)
    tracebacks = 0
    for at in args.at:
        trials += 2
        proc = subprocess.Popen(
            [*base, "--trials", str(trials)],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        time.sleep(at)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=300)
        count = (out + err).count("Traceback")
        tracebacks += count
        again = subprocess.run([*base, "--trials", str(trials)], cwd=work, env=env, capture_output=True, text=True)
        print(
            f"SIGINT at {at:>4}s: exit {proc.returncode}, tracebacks {count}; "
            f"resume exit {again.returncode}, tracebacks {(again.stdout + again.stderr).count('Traceback')}",
            flush=True,
        )
        if again.returncode != 0:
            print(again.stderr[-2000:])
    print(f"{len(args.at)} instants, {tracebacks} tracebacks; study in {work}")
    return 1 if tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())
