"""Time to read a predecessor pickle (``load_legacy_pickle``): honest files, and hostile ones.

Honest files are dicts ``{"ground_truth": [answer], "pred": [answer] * n}`` with realistic AWS
and Clarifai answers, pickled at protocols 2 (as Python 2 wrote them) and 4. Hostile files
are built to hang or exhaust a loader: dict keys with one hash value (ints k·(2⁶¹ − 1)), a
set of such ints, a dict key that is a tuple nested 200,000 deep, a memo index of 2³¹, and a
FIFO. Each hostile file is loaded in a child interpreter with a timeout, so a hang is reported
as such instead of stopping the run.

Run from the repository root::

    python benchmarks/legacy_import.py               # 5 repeats
    python benchmarks/legacy_import.py --repeats 1

Prints one table: the file, its size, and the median wall milliseconds of the load (honest)
or the error and the child's wall seconds (hostile, including the interpreter's start).
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from robust_api.query_logs.legacy import load_legacy_pickle  # noqa: E402


def aws_answer(label: str) -> list:
    return [
        {"Name": label, "Confidence": 97.31,
         "Instances": [{"BoundingBox": {"Width": 0.61, "Height": 0.82, "Left": 0.2, "Top": 0.1}, "Confidence": 93.4}],
         "Parents": [{"Name": "Animal"}, {"Name": "Mammal"}]},
        {"Name": "Pet", "Confidence": 91.0, "Instances": [], "Parents": [{"Name": "Animal"}]},
    ]


def clarifai_answer(label: str) -> dict:
    concepts = [{"id": f"ai_{label}", "name": label, "value": 0.991, "app_id": "main"},
                {"id": "ai_mammal", "name": "mammal", "value": 0.97, "app_id": "main"}]
    return {"status": {"code": 10000, "description": "Ok", "req_id": "9f1b"},
            "outputs": [{"id": "c4e2", "status": {"code": 10000, "description": "Ok"},
                         "created_at": "2020-02-11T18:03:22.512Z",
                         "model": {"id": "aaa03c23b3724a16a56b629203edc62c", "name": "general"},
                         "data": {"concepts": concepts}}]}


def _long1(value: int) -> bytes:
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def hostile_files(folder: Path) -> dict[str, Path]:
    keys = [k * (2**61 - 1) for k in range(1, 200_001)]
    files = {
        "dict of 200,000 colliding int keys": b"\x80\x02}(" + b"".join(_long1(k) + b"N" for k in keys) + b"u.",
        "set of 200,000 colliding ints": b"\x80\x04\x8f(" + b"".join(_long1(k) for k in keys) + b"\x90.",
        "dict key: tuple nested 200,000 deep": b"\x80\x02}" + b")" + b"\x85" * 200_000 + b"Ns.",
        "memo index 2**31 (11 bytes)": b"\x80\x02N" + b"r" + struct.pack("<I", 2**31) + b".",
    }
    paths = {}
    for number, (name, blob) in enumerate(files.items()):
        paths[name] = folder / f"pred_hist_{number}.pkl"
        paths[name].write_bytes(blob)
    if hasattr(os, "mkfifo"):
        paths["FIFO"] = folder / "pred_hist_fifo.pkl"
        os.mkfifo(paths["FIFO"])
    return paths


CHILD = """
import sys
from robust_api.query_logs.legacy import load_legacy_pickle
try:
    load_legacy_pickle(sys.argv[1])
    print("loaded")
except Exception as exc:
    print(type(exc).__name__)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a hostile file may take")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for api, build in (("aws", aws_answer), ("clarifai", clarifai_answer)):
            for n in (120, 1000):
                for protocol in (2, 4):
                    path = folder / f"{api}_{n}_{protocol}.pkl"
                    answers = [build("cat") for _ in range(n)]  # distinct objects, as unpickled answers are
                    path.write_bytes(pickle.dumps({"ground_truth": [build("cat")], "pred": answers}, protocol=protocol))
                    times = []
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        load_legacy_pickle(path)
                        times.append(time.perf_counter() - start)
                    rows.append((f"honest {api}, {n} answers, protocol {protocol}", f"{path.stat().st_size:,}",
                                 "loaded", f"{statistics.median(times) * 1e3:.1f} ms"))
        baseline = folder / "baseline.pkl"
        baseline.write_bytes(pickle.dumps({"ground_truth": [[]], "pred": [[]]}))
        for name, path in [("(baseline: an empty valid file, i.e. the child's start)", baseline)] + list(
                hostile_files(folder).items()):
            start = time.perf_counter()
            try:
                done = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True,
                                      timeout=args.timeout, cwd=ROOT)
                outcome = done.stdout.strip() or f"died ({done.returncode})"
            except subprocess.TimeoutExpired:
                outcome = f"still running after {args.timeout:g} s"
            size = "-" if name == "FIFO" else f"{path.stat().st_size:,}"
            rows.append((name if path is baseline else f"hostile: {name}", size, outcome,
                         f"{time.perf_counter() - start:.2f} s (child)"))
    headers = ("file", "bytes", "outcome", "time")
    widths = [max(len(str(row[i])) for row in rows + [headers]) for i in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
