"""Per-query overhead of the SDK with a trivial callable provider, with and without the query log.

Prints a table: for each image size, µs per query of
  - the provider alone (the callable on pre-made batches: the floor),
  - noise generation alone (the counter-based sampler),
  - RobustAPI.certify with log=False (in-memory record keeping),
  - RobustAPI.certify with the SQLite log (the default),
and the µs per query the SQLite log adds over log=False (target: <= 20 µs).

Run:  python benchmarks/overhead.py [--n 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from robust_api import RobustAPI  # noqa: E402
from robust_api.images import image_digest  # noqa: E402
from robust_api.noise import NoiseSampler  # noqa: E402

BATCH = 256


def trivial(batch):
    return ["A"] * len(batch)


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="estimation samples per certification")
    parser.add_argument("--n0", type=int, default=100, help="selection samples per certification")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    total = args.n + args.n0
    rows = []
    for shape in [(1, 1, 1), (28, 28, 1)]:
        image = np.full(shape, 0.3, dtype=np.float32)
        batches = [np.zeros((BATCH,) + shape, np.float32)] * (total // BATCH + 1)

        def provider_only():
            for b in batches:
                trivial(b)

        sampler = NoiseSampler(image, image_digest(image), 1, "estimation", 0.25)

        def noise_only():
            for start in range(0, total, BATCH):
                sampler.noisy(start, min(start + BATCH, total))

        memory_api = RobustAPI(trivial, log=False, batch_size=BATCH)

        def with_memory():
            memory_api.certify(image, noise_sd=0.25, N0=args.n0, N=args.n)

        with tempfile.TemporaryDirectory() as folder:
            sqlite_api = RobustAPI(trivial, log=Path(folder) / "bench.sqlite3", batch_size=BATCH)

            def with_sqlite():
                sqlite_api.certify(image, noise_sd=0.25, N0=args.n0, N=args.n)

            results = {
                "provider alone": best_of(args.repeats, provider_only),
                "noise alone": best_of(args.repeats, noise_only),
                "RobustAPI, log=False": best_of(args.repeats, with_memory),
                "RobustAPI, SQLite log": best_of(args.repeats, with_sqlite),
            }
            sqlite_api.log.close()
        for name, (best, median) in results.items():
            rows.append(("x".join(map(str, shape)), name, 1e6 * best / total, 1e6 * median / total))
        added = 1e6 * (results["RobustAPI, SQLite log"][0] - results["RobustAPI, log=False"][0]) / total
        rows.append(("x".join(map(str, shape)), "=> added by the SQLite log", added, float("nan")))

    print(f"queries per certification: {total} (N0={args.n0}, N={args.n}), batch {BATCH}, best/median of {args.repeats}")
    print(f"{'image':<8} {'configuration':<28} {'µs/query best':>14} {'µs/query median':>16}")
    for shape, name, best, median in rows:
        median_text = "" if median != median else f"{median:16.2f}"
        print(f"{shape:<8} {name:<28} {best:14.2f} {median_text:>16}")


if __name__ == "__main__":
    main()
