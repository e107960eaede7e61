"""The budget cap on the wire under faults, for every cloud adapter and transport.

Each adapter talks through its official SDK client to its local emulator (backed by a fixed
two-label classifier), which answers a fraction of the requests with a server error (HTTP
5xx / gRPC UNAVAILABLE: billable and retried). One RobustAPI per run, ``max_queries=CAP``,
``predict(N)`` with batches of 4 (1 for one-image APIs), 2 requests in flight, fast backoff.
For each seed it prints, side by side:

  received    images the emulator received (every image of every request that reached its
              fault draw: what a service would bill), counted on the server's side;
  spent       ``api.spent.queries``: what the budget counted;
  log billed  the attempts the log's cost column accounts for (sum of cost_usd / price).

A hidden retry inside an SDK shows as received > spent; a log that loses billed attempts as
log billed < spent. The cap holds when max(received) <= CAP.

Run:  python benchmarks/budget_under_faults.py [--cap 24] [--n 16] [--fault-rate 0.5] [--seeds 5]
          [--variants google-rest,clarifai-grpc,...]
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "engine"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # the test doubles it imports

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

import test_budget_under_faults as setup  # noqa: E402  (the adapters and emulators as the tests build them)
from robust_api import RobustAPI  # noqa: E402
from robust_api.dispatch import RetryPolicy  # noqa: E402
from robust_api.emulators import emulate  # noqa: E402
from robust_api.errors import BudgetExceededError  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=int, default=24, help="max_queries")
    parser.add_argument("--n", type=int, default=16, help="queries of the predict call")
    parser.add_argument("--fault-rate", type=float, default=0.5, help="share of requests answered with a server error")
    parser.add_argument("--seeds", type=int, default=5, help="emulator fault seeds 0 .. seeds-1")
    parser.add_argument("--variants", default=",".join(sorted(setup.VARIANTS)))
    args = parser.parse_args()
    retry = RetryPolicy(max_attempts=6, initial_backoff_s=0.001, max_backoff_s=0.005)
    image = np.random.default_rng(0).random((28, 28)).astype(np.float32)
    print(f"max_queries={args.cap}, N={args.n}, server errors on {args.fault_rate:.0%} of requests, "
          f"seeds 0-{args.seeds - 1}\n")
    header = f"{'variant':20s} {'received':24s} {'spent':24s} {'log billed':24s} {'max received':>12s} {'cap holds':>9s}"
    print(header)
    print("-" * len(header))
    for variant in args.variants.split(","):
        name, protocol = setup.VARIANTS[variant]
        received, spent, logged = [], [], []
        for seed in range(args.seeds):
            with emulate(name, protocol=protocol, classifier=setup.two_labels,
                         faults={"server_error": args.fault_rate}, seed=seed) as endpoint:
                provider = setup.make(variant, endpoint)
                api = RobustAPI(provider, log=False, max_queries=args.cap, batch_size=min(4, provider.max_batch_size),
                                concurrency=2, retry=retry, rate_limit=math.inf)
                try:
                    api.predict(image, N=args.n, noise_sd=0.25)
                except BudgetExceededError:
                    pass  # retries used up the room: the call stopped on the cap
                finally:
                    api.close()
                received.append(endpoint.stats["images_received"])
            spent.append(api.spent.queries)
            logged.append(round(setup.billed_in_log(api)))
        holds = "yes" if max(received) <= args.cap else "NO"
        print(f"{variant:20s} {str(received):24s} {str(spent):24s} {str(logged):24s} {max(received):>12d} {holds:>9s}",
              flush=True)


if __name__ == "__main__":
    main()
