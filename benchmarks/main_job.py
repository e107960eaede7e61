"""The README's main job, timed end to end as a user runs it: wall, user and system seconds.

It runs the command of the README's first screen (30 Fashion-MNIST images, the bundled CNN
behind the shipped DnCNN at σ = 0.25, N0 = 20, N = 100, α = 0.001, ``--seed 0``) in a fresh
process, with a fresh log each time, so nothing is reused and every run sends 3,630 queries.
``--baseline DIR`` also times another checkout of robust-api (e.g. a ``git worktree`` of an
older commit), alternating the two so that both see the same machine; the table puts them side
by side. The last column checks that each run printed the README's numbers.

Run:  python benchmarks/main_job.py [--runs 3] [--baseline /tmp/old-checkout]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ARGS = ["certify", *[str(p) for p in sorted((REPO / "examples" / "images").glob("*.png"))], "--provider", "local",
        "--denoiser", "fashion-mnist-dncnn-0.25", "--noise-sd", "0.25", "--N0", "20", "--N", "100", "--alpha", "0.001",
        "--seed", "0"]
EXPECTED = "28/30 certified (not abstaining), 27 of them with the clean image's label"


def run_once(source: Path, scratch: Path) -> tuple[float, float, float, bool]:
    """(wall, user, sys seconds, printed the README's numbers) of one run of the job from ``source``."""
    env = {**os.environ, "PYTHONPATH": str(source), "ROBUST_API_HOME": str(scratch / "home")}
    log = scratch / "log.sqlite3"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "robust_api", *ARGS, "--log", str(log)], env=env, cwd=scratch,
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for path in scratch.glob("log.sqlite3*"):
        path.unlink()
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, EXPECTED in done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each checkout (default 3)")
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to time side by side")
    args = parser.parse_args()
    sources = [("this checkout", REPO)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        for run in range(args.runs):
            for name, source in sources:  # alternated, so both see the same machine
                rows.append((name, run + 1, *run_once(source, scratch)))
    print(f"{'checkout':<14} {'run':>3} {'wall s':>7} {'user s':>7} {'sys s':>6}  README numbers")
    for name, run, wall, user, system, ok in rows:
        print(f"{name:<14} {run:>3} {wall:>7.2f} {user:>7.2f} {system:>6.2f}  {'yes' if ok else 'NO'}")
    for name, _ in sources:
        walls = sorted(row[2] for row in rows if row[0] == name)
        print(f"{name}: wall {walls[0]:.2f}–{walls[-1]:.2f} s over {len(walls)} runs ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
