"""Offline re-certification time for a log of a million queries (target: under 5 s).

Writes synthetic query logs through the SQLite store (the embedded default), with Google-like
raw responses of 10 labels each, then times, side by side in one run:

- ``robust_api.analyze(log)``: re-certifies every certify call and summarizes them. Fixed-N
  calls go through vote counts computed in SQL; sequential calls are replayed record by record.
- ``certify_from_log`` on every call of ``open_log(log)``: the per-call path of
  ``RobustAPI(online=False).certify(logs)``, which loads every record and raw response.
- ``robust_api.analyze`` on the JSONL export of the same log (parsed line by line in Python).

Run from the repository root::

    python benchmarks/offline.py                 # 10^6 queries: 8,334 Cohen calls of 120 queries
    python benchmarks/offline.py --queries 200000 --repeats 1   # a quick look

Prints one table (median wall seconds of ``--repeats`` runs) and checks that every path gives
the same certificates.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import robust_api  # noqa: E402
from robust_api.offline import CertifySettings, certify_from_log  # noqa: E402
from robust_api.query_logs import CallHeader, QueryRecord, SQLiteQueryLog, export_jsonl, open_log  # noqa: E402

LABELS = ["Trouser", "Dress", "Bag", "Coat", "Shirt", "Sneaker", "Sandal", "Pullover", "Ankle boot", "T-shirt/top"]


def _raw(top: str, rng: np.random.Generator) -> dict:
    """A Google-like labelAnnotations response with 10 labels, ``top`` first."""
    scores = np.sort(rng.uniform(0.5, 0.99, size=10))[::-1]
    names = [top] + [name for name in LABELS if name != top][:9]
    return {"labelAnnotations": [{"mid": f"/m/{i:05d}", "description": name, "score": round(float(score), 6),
                                  "topicality": round(float(score), 6)} for i, (name, score) in enumerate(zip(names, scores))]}


def write_log(path: Path, queries: int, method: str, seed: int = 0) -> int:
    """Write about ``queries`` queries of certify calls (Cohen N0=20/N=100, or sequential
    with up to 1,000 estimation samples); returns the number of queries written."""
    rng = np.random.default_rng(seed)
    log = SQLiteQueryLog(path)
    per_call = 120 if method == "cohen" else 1020
    calls = max(1, queries // per_call)
    written = 0
    for call in range(calls):
        if method == "cohen":
            settings = CertifySettings.online(0.25, 20, 100, 0.001, "cohen", "noise", None, None)
        else:
            settings = CertifySettings.online(0.25, 20, 1000, 0.001, "sequential", "noise", None, None)
        params = settings.params()
        header = CallHeader(
            run_id=uuid.uuid4().hex, kind="certify", image_digest=f"{call:064x}", image_shape=(28, 28, 1),
            provider="google:label_detection", model_version=None, denoiser_id="fashion-mnist-dncnn-0.25",
            denoiser_digest="0" * 64, noise_sd=0.25, seed=call, params=params, created=time.time(),
        )
        log.begin_call(header)
        p_top = rng.choice([0.6, 0.9, 0.99, 1.0])
        top = LABELS[call % len(LABELS)]
        records = []
        for phase, count in (("selection", 20), ("estimation", per_call - 20)):
            for index in range(count):
                if rng.random() < 0.01:
                    records.append(QueryRecord(phase, index, None, None, 0.1, 0.0015, time.time(), error="timeout"))
                    continue
                label = top if rng.random() < p_top else LABELS[rng.integers(len(LABELS))]
                records.append(QueryRecord(phase, index, label, _raw(label, rng), 0.1, 0.0015, time.time()))
        for start in range(0, len(records), 16):  # one transaction per provider batch, as online
            log.append(header.run_id, records[start:start + 16])
        log.finish_call(header.run_id, "complete")
        written += len(records)
    log.close()
    return written


def _timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _per_call(path: Path) -> dict:
    return {call.run_id: certify_from_log(call) for call in open_log(path)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1_000_000, help="queries per log (default 10^6)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path; the median is printed")
    parser.add_argument("--skip-sequential", action="store_true", help="time the Cohen log only")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for method in ("cohen",) + (() if args.skip_sequential else ("sequential",)):
            path = Path(scratch) / f"{method}.sqlite3"
            start = time.perf_counter()
            written = write_log(path, args.queries, method)
            print(f"wrote {written:,} {method} queries in {time.perf_counter() - start:.1f} s "
                  f"({path.stat().st_size / 2**20:.0f} MiB)", file=sys.stderr)
            analyzed_s, report = _timed(lambda: robust_api.analyze(path), args.repeats)
            per_call_s, certs = _timed(lambda: _per_call(path), args.repeats)
            jsonl = Path(scratch) / f"{method}.jsonl"
            export_jsonl(open_log(path), jsonl)
            jsonl_s, from_jsonl = _timed(lambda: robust_api.analyze(jsonl), args.repeats)
            same = all(
                (row.label, row.radius) == (None if certs[row.run_id].abstained else certs[row.run_id].label,
                                            certs[row.run_id].radius)
                for row in report.rows
            ) and [(r.label, r.radius) for r in report.rows] == [(r.label, r.radius) for r in from_jsonl.rows]
            rows.append((method, written, len(report.rows), analyzed_s, per_call_s, jsonl_s, same))
    print("| log | queries | calls | analyze (SQLite) s | certify_from_log per call s | analyze (JSONL) s | same certificates |")
    print("|---|---|---|---|---|---|---|")
    for method, written, calls, analyzed_s, per_call_s, jsonl_s, same in rows:
        print(f"| {method} | {written:,} | {calls:,} | **{analyzed_s:.2f}** | {per_call_s:.2f} | {jsonl_s:.2f} | "
              f"{'yes' if same else 'NO'} |")
    return 0 if all(row[-1] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
