"""Engine overhead, side by side: this working tree against an earlier revision of robust_api.

For each tree (the revision's ``robust_api/`` is extracted with ``git archive`` into a
temporary folder), a fresh Python process measures:
  - ``import robust_api`` and ``from robust_api import RobustAPI`` (wall seconds, in their own
    processes, so nothing is imported before),
  - µs per query of ``RobustAPI(trivial).certify`` on a 28×28 image with one large call
    (N0=100, N=20,000), with log=False and with the SQLite log: the per-query path,
  - µs per call of 300 small calls (N0=1, N=10, log=False): the per-call path (argument
    checks, call set-up, the result read back from the log),
  - µs per call of offline re-certification (``certify(logs)`` of a 120-query call).
The trees are measured alternately, ``--repeats`` times each, and the table gives medians.
The provider is a trivial callable (one label for every image), so what is measured is the
SDK itself: noise, batching, dispatch, log and statistics.

Run:  python benchmarks/engine_overhead.py [--baseline 0d2faff] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_MEASURE = r"""
import json, sys, tempfile, time
from pathlib import Path
tree = sys.argv[1]
import numpy as np
import robust_api
assert robust_api.__file__.startswith(tree), (robust_api.__file__, tree)
from robust_api import RobustAPI

def trivial(batch):
    return ["A"] * len(batch)

image = np.full((28, 28, 1), 0.3, np.float32)
out = {}
api = RobustAPI(trivial, log=False, batch_size=256, seed=0)
api.certify(image, noise_sd=0.25, N0=10, N=100)  # warm: scipy and the code paths loaded
began = time.perf_counter()
api.certify(image, noise_sd=0.25, N0=100, N=20_000)
out["query_memory_us"] = 1e6 * (time.perf_counter() - began) / 20_100
with tempfile.TemporaryDirectory() as folder:
    logged = RobustAPI(trivial, log=Path(folder) / "bench.sqlite3", batch_size=256, seed=0)
    logged.certify(image, noise_sd=0.25, N0=10, N=100)
    began = time.perf_counter()
    cert = logged.certify(image, noise_sd=0.25, N0=100, N=20_000, seed=1)
    out["query_sqlite_us"] = 1e6 * (time.perf_counter() - began) / 20_100
    logged.log.close()
began = time.perf_counter()
for seed in range(300):
    api.certify(image, noise_sd=0.25, N0=1, N=10, seed=seed)
out["small_call_us"] = 1e6 * (time.perf_counter() - began) / 300
small = api.certify(image, noise_sd=0.25, N0=20, N=100, seed=7).logs
offline = RobustAPI("local", online=False)
began = time.perf_counter()
for _ in range(300):
    offline.certify(small)
out["offline_call_us"] = 1e6 * (time.perf_counter() - began) / 300
print(json.dumps(out))
"""

ROWS = [
    ("import_s", "import robust_api (s)", 3),
    ("from_import_s", "from robust_api import RobustAPI (s)", 3),
    ("query_memory_us", "µs/query, one N=20,000 call, log=False", 2),
    ("query_sqlite_us", "µs/query, one N=20,000 call, SQLite log", 2),
    ("small_call_us", "µs/call, N0=1 N=10 calls, log=False", 0),
    ("offline_call_us", "µs/call, offline certify(logs), 120 queries", 0),
]


def _run(tree: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, cwd=tree)
    if done.returncode != 0:
        raise SystemExit(f"measuring {tree} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _import_time(tree: Path, statement: str) -> float:
    code = f"import time; began = time.perf_counter(); {statement}; print(time.perf_counter() - began)"
    return float(_run(tree, "-c", code).strip().splitlines()[-1])


def measure(tree: Path) -> dict:
    """One round of every measurement for the robust_api package in ``tree``."""
    result = json.loads(_run(tree, "-c", _MEASURE, str(tree)).strip().splitlines()[-1])
    result["import_s"] = _import_time(tree, "import robust_api")
    result["from_import_s"] = _import_time(tree, "from robust_api import RobustAPI")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="0d2faff", help="git revision to compare with (default: 0d2faff, "
                                                                 "the last commit before the engine redesign)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        baseline = Path(folder)
        archive = subprocess.run(["git", "archive", args.baseline, "robust_api"], cwd=ROOT, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        trees = {args.baseline: baseline, "this tree": ROOT}
        rounds = {name: [] for name in trees}
        for _ in range(args.repeats):
            for name, tree in trees.items():  # alternate, so that drift hits both alike
                rounds[name].append(measure(tree))
    names = list(trees)
    print(f"median of {args.repeats} alternating rounds; trivial callable provider, 28×28×1 image, batch 256")
    print(f"{'measure':<48}" + "".join(f"{name:>14}" for name in names) + f"{'change':>10}")
    for key, title, digits in ROWS:
        values = [statistics.median(r[key] for r in rounds[name]) for name in names]
        change = (values[1] - values[0]) / values[0] if values[0] else float("nan")
        print(f"{title:<48}" + "".join(f"{v:>14.{digits}f}" for v in values) + f"{change:>+10.0%}")


if __name__ == "__main__":
    main()
