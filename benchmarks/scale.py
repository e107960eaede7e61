"""Scale-out: one process against a local Ray cluster of 2 workers, under one quota.

The black box is ``robust_api``'s simulated API (``RobustAPI("simulated", ...)``): a fixed
latency per request, and optionally CPU work per image that holds the GIL (as a local model or
denoiser does). Every request's send time is recorded by the process that sent it, so the
table shows the request rate the provider saw, all workers together: the most requests in any
1-second window (sliding, starting at each request) against the quota. Two workloads:

- ``quota``: a remote API with 50 ms latency and a 100 requests/s quota. One process with 16
  requests in flight can send 320/s, so the quota is the bottleneck: Ray cannot go faster,
  and must not go over it.
- ``cpu``: no quota, 2 ms of GIL-holding CPU per image (a small model on the CPU). One process
  runs it on one core; 2 workers run it on two.

Each configuration runs in a fresh subprocess (its peak resident memory is its own); the Ray
runs start a local cluster (``ray.init(num_cpus=2)``), whose start-up is included in the wall
time and shown apart. Peak memory per worker is each Ray worker process's own peak RSS.

Run:  python benchmarks/scale.py [--images 48] [--N 90]   (needs pip install 'robust-api[ray]')
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = {
    "quota": {"latency_s": 0.05, "busy_s": 0.0, "rate_limit": 100.0},
    "cpu": {"latency_s": 0.0, "busy_s": 0.002, "rate_limit": None},
}


def images(count: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return [np.kron(rng.random((2, 2, 3)), np.ones((16, 16, 1))).astype(np.float32) for _ in range(count)]


def one_run(workload: str, engine: str, count: int, n0: int, n: int, scratch: str) -> dict:
    """Run one configuration in this process; return its measurements."""
    import numpy as np

    import robust_api
    from robust_api.providers.simulated import read_send_times

    spec = WORKLOADS[workload]
    record = Path(scratch) / "requests"
    record.mkdir()
    options = dict(latency_s=spec["latency_s"], busy_s=spec["busy_s"], record_dir=str(record))
    rate = spec["rate_limit"]
    startup = 0.0
    if engine == "ray":
        import ray

        began = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        startup = time.perf_counter() - began
    api = robust_api.RobustAPI("simulated", log=Path(scratch) / "log.sqlite3", rate_limit=rate,
                               concurrency=16 if engine == "local" else 8, **options)
    began = time.perf_counter()
    extra = {"engine": "ray", "workers": 2} if engine == "ray" else {}
    results = api.certify_many(images(count), 0.25, n0, n, 0.001, seed=0, **extra)
    wall = time.perf_counter() - began
    times = read_send_times(str(record))
    ends = np.searchsorted(times, times + 1.0, side="left")
    peak_window = int((ends - np.arange(len(times))).max()) if len(times) else 0
    if engine == "ray":
        workers = [worker.get("peak_rss_mb", float("nan")) for worker in api.last_run.workers]
        ray.shutdown()
    else:
        workers = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]
    return {
        "queries": int(len(times)), "wall_s": wall + startup, "startup_s": startup,
        "rate": len(times) / (times[-1] - times[0]) if len(times) > 1 else 0.0, "peak_window": peak_window,
        "quota": rate, "peak_rss_mb": workers, "certified": sum(1 for r in results if not r.abstained),
        "labels": [r.label if not r.abstained else None for r in results],
        "radii": [round(r.radius, 6) for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--N0", type=int, default=10)
    parser.add_argument("--N", type=int, default=90)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: run one configuration
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as scratch:
            print(json.dumps(one_run(args.one[0], args.one[1], args.images, args.N0, args.N, scratch)))
        return
    rows = []
    for workload in WORKLOADS:
        measured = {}
        for engine in ("local", "ray"):
            out = subprocess.run([sys.executable, __file__, "--one", workload, engine, "--images", str(args.images),
                                  "--N0", str(args.N0), "--N", str(args.N)], capture_output=True, text=True, check=True)
            measured[engine] = json.loads(out.stdout.strip().splitlines()[-1])
        same = measured["local"]["labels"] == measured["ray"]["labels"] and \
            measured["local"]["radii"] == measured["ray"]["radii"]
        for engine, m in measured.items():
            quota = "none" if m["quota"] is None else f"{m['quota']:g}/s"
            rss = " / ".join(f"{mb:.0f}" for mb in m["peak_rss_mb"])
            rows.append(
                f"| {workload} | {'1 process' if engine == 'local' else 'Ray, 2 workers'} | {m['queries']} | "
                f"{m['wall_s']:.1f} ({m['startup_s']:.1f}) | {m['queries'] / m['wall_s']:.0f} | {m['rate']:.1f} | "
                f"{m['peak_window']} | {quota} | {rss} | {m['certified']}/{args.images} | {'yes' if same else 'NO'} |"
            )
    print(f"{args.images} images, N0={args.N0}, N={args.N}, sigma=0.25, seed 0; "
          f"{sys.platform}, {resource.getpagesize()}-byte pages\n")
    print("| workload | engine | queries | wall s (Ray start-up) | queries/s overall | requests/s while sending | "
          "most requests in any 1 s | quota | peak RSS per worker, MB | certified | same certificates |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
