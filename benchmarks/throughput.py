"""Throughput through each provider's emulator: the default concurrency vs one query at a time.

For every provider protocol, certify --images Fashion-MNIST test images (N0=20, N=100,
σ = 0.25, seed 0, no denoiser: the point is the network path) through the official SDK
client against the local emulator answering after --latency-ms:
  default:  RobustAPI(name, endpoint=...).certify_many(images, ...): the provider's default
            concurrency, batch size and rate limit;
  serial:   RobustAPI(name, endpoint=..., concurrency=1, batch_size=1): one image per
            request, one request at a time, images one after the other (the predecessor's way).
Both runs use the same seed, so their certificates must be identical (checked). The table
gives wall times, the speed-up, requests per second achieved vs the configured rate limit,
and how many requests the emulator — enforcing that same limit — had to throttle.

Run:  python benchmarks/throughput.py [--images 20] [--serial-images 20] [--latency-ms 100]
      [--providers google,google-grpc,aws,azure,clarifai,http]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from robust_api import RobustAPI  # noqa: E402
from robust_api.datasets import load_fashion_mnist  # noqa: E402
from robust_api.emulators import emulate  # noqa: E402
from robust_api.providers.base import provider_factory  # noqa: E402

# benchmark name -> (provider name, emulator protocol)
CONFIGS = {
    "google": ("google", "rest"),
    "google-grpc": ("google", "grpc"),
    "aws": ("aws", None),
    "azure": ("azure", None),
    "clarifai": ("clarifai", None),
    "http": ("http", None),
}
SIGMA = 0.25


def _credentials(monkey_env: dict) -> None:
    """Placeholder credentials for the emulators (never real ones)."""
    import os

    for key, value in monkey_env.items():
        os.environ.setdefault(key, value)


def _summary(cert) -> tuple:
    return (str(cert.label), round(cert.radius, 12), dict(cert.counts))


def _run(provider: str, endpoint: str, images: list, **options) -> tuple[float, list, object]:
    api = RobustAPI(provider, endpoint=endpoint, log=False, seed=0, resize="fit", progress=False, **options)
    began = time.perf_counter()
    certificates = api.certify_many(images, noise_sd=SIGMA, N0=20, N=100)
    elapsed = time.perf_counter() - began
    api.close()
    return elapsed, certificates, api


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--serial-images", type=int, default=20, help="images for the one-at-a-time run")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--providers", default=",".join(CONFIGS))
    args = parser.parse_args()
    _credentials({
        "AWS_ACCESS_KEY_ID": "emulator", "AWS_SECRET_ACCESS_KEY": "emulator", "AWS_DEFAULT_REGION": "us-east-1",
        "AZURE_COMPUTER_VISION_SUBSCRIPTION_KEY": "emulator", "CLARIFAI_PAT": "emulator",
    })
    test_images, _ = load_fashion_mnist("test")
    images = [np.asarray(image) for image in test_images[: args.images]]
    rows = []
    for name in args.providers.split(","):
        provider, protocol = CONFIGS[name]
        limit = provider_factory(provider).default_rate_limit
        with emulate(provider, protocol=protocol, latency_ms=args.latency_ms, rate_limit=limit) as endpoint:
            fast_s, fast, api = _run(provider, endpoint, images)
            requests = endpoint.stats["requests"]
            throttled = endpoint.stats["rate_limited"]
        with emulate(provider, protocol=protocol, latency_ms=args.latency_ms) as endpoint:
            serial_images = images[: args.serial_images]
            slow_s, slow, _ = _run(provider, endpoint, serial_images, concurrency=1, batch_size=1, rate_limit=math.inf)
        same = [_summary(c) for c in fast[: len(slow)]] == [_summary(c) for c in slow]
        per_image_slow = slow_s / len(slow)
        speedup = per_image_slow * len(fast) / fast_s
        rate = requests / fast_s
        rows.append([
            name, api.concurrency, api.provider.max_batch_size, f"{limit:g}/s" if limit else "none",
            requests, f"{fast_s:.1f}", f"{slow_s:.1f}" + ("" if len(slow) == len(fast) else f" ({len(slow)} img)"),
            f"{speedup:.1f}x", f"{rate:.1f}", f"{100 * rate / limit:.0f}%" if limit else "-", throttled,
            "yes" if same else "NO",
        ])
        print(f"{name}: done", file=sys.stderr, flush=True)
    headers = ["provider", "concurrency", "batch", "rate limit", "requests", "default s", "one-at-a-time s",
               "speed-up", "req/s", "of limit", "server throttles", "same certs"]
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    print(f"\n{len(images)} images, N0=20, N=100, sigma={SIGMA}, latency {args.latency_ms:g} ms per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
