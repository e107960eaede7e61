"""What ``synchronous=FULL`` costs the SQLite query log: append throughput, FULL vs NORMAL.

The store commits each provider batch in one transaction (``SQLiteQueryLog.append``). In WAL
mode, ``synchronous=NORMAL`` syncs the write-ahead log only at checkpoints: a commit survives
a crash of the process but may be lost on power loss. ``synchronous=FULL`` (what the store
uses) syncs the WAL at every commit, so an ``append`` that returned survives power loss too.
The price is one ``fsync`` per batch. This script measures it on the disk that holds
``--dir``; run it where your logs live.

Run from the repository root::

    python benchmarks/log_durability.py                       # a temporary folder under ./
    python benchmarks/log_durability.py --dir /data/logs --commits 500

Prints one table: per batch size and mode, the median and 90th percentile milliseconds per
commit, commits per second and records per second (over ``--commits`` appends of one batch
each, after 20 warm-up appends), and FULL's slowdown over NORMAL.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from robust_api.query_logs import CallHeader, QueryRecord, SQLiteQueryLog  # noqa: E402

WARM_UP = 20


def _raw(index: int) -> dict:
    """A Google-like answer of 10 labels (about 1 kB of JSON, like the logs of the cloud providers)."""
    return {"labelAnnotations": [{"mid": f"/m/{index:05d}{k}", "description": f"label {k}", "score": 0.9 - k / 20,
                                  "topicality": 0.9 - k / 20} for k in range(10)]}


def measure(folder: Path, mode: str, batch: int, commits: int) -> list[float]:
    """Seconds per ``append`` of ``batch`` records, ``commits`` times, with ``synchronous=mode``."""
    log = SQLiteQueryLog(folder / f"{mode}-{batch}-{uuid.uuid4().hex[:8]}.sqlite3")
    log._conn.execute(f"PRAGMA synchronous={mode}")  # the store sets FULL; NORMAL is the comparison
    header = CallHeader(
        run_id=uuid.uuid4().hex, kind="certify", image_digest="0" * 64, image_shape=(28, 28, 1), provider="bench",
        model_version=None, denoiser_id=None, denoiser_digest=None, noise_sd=0.25, seed=0, params={},
        created=time.time(),
    )
    log.begin_call(header)
    times = []
    index = 0
    for number in range(WARM_UP + commits):
        records = [QueryRecord("estimation", index + k, "label 0", _raw(index + k), 0.1, 0.0015, time.time())
                   for k in range(batch)]
        index += batch
        began = time.perf_counter()
        log.append(header.run_id, records)
        if number >= WARM_UP:
            times.append(time.perf_counter() - began)
    log.finish_call(header.run_id, "complete")
    log.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write the logs (default: a temporary folder under ./)")
    parser.add_argument("--commits", type=int, default=200, help="appends measured per row (default 200)")
    parser.add_argument("--batches", default="1,16,100", help="records per append (default 1,16,100)")
    args = parser.parse_args()
    batches = [int(x) for x in args.batches.split(",")]
    with tempfile.TemporaryDirectory(prefix="log_durability_", dir=args.dir or Path.cwd()) as folder:
        rows, medians = [], {}
        for batch in batches:
            for mode in ("NORMAL", "FULL"):
                times = sorted(measure(Path(folder), mode, batch, args.commits))
                median = statistics.median(times)
                p90 = times[int(0.9 * (len(times) - 1))]
                medians[mode, batch] = median
                rows.append([batch, mode, f"{median * 1e3:.2f}", f"{p90 * 1e3:.2f}", f"{1 / median:,.0f}",
                             f"{batch / median:,.0f}"])
            rows[-1].append(f"{medians['FULL', batch] / medians['NORMAL', batch]:.1f}x")
        headers = ["records/append", "synchronous", "ms/commit (median)", "ms/commit (p90)", "commits/s", "records/s",
                   "FULL/NORMAL"]
        table = [headers] + [[str(c) for c in row] + [""] * (len(headers) - len(row)) for row in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
        print(f"SQLite query log, WAL mode, {args.commits} appends per row, logs in {folder}")
        for number, row in enumerate(table):
            print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
            if number == 0:
                print("  ".join("-" * width for width in widths))


if __name__ == "__main__":
    main()
