"""Queries per image vs certificate quality: Cohen's fixed budgets against the query-efficient methods.

Side by side in one run, on
  (a) a half-space classifier on one pixel whose top-class probability p_A is known exactly
      (label "A" iff the noisy pixel < t; true radius t − x), for p_A in {0.6, 0.8, 0.9, 0.99, 1.0};
  (b) the bundled Fashion-MNIST classifier behind the shipped denoiser fashion-mnist-dncnn-0.25
      at σ = 0.25 on the first --images test images (ground truth: the true label),
and for each method: mean queries per image (selection + estimation samples the method used),
certified accuracy at r = 0.1, 0.25, 0.5 and the average certified radius (ACR).

Every method sees the same noise (common random numbers): each image has one seed and all
methods share one query log, so a sample index maps to the same noisy copy and the classifier
is run once per copy. Queries are counted per method as if it ran alone.

Run:  python benchmarks/queries.py [--images 200] [--runs 200] [--part a|b|all]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from robust_api import ABSTAIN, RobustAPI  # noqa: E402
from robust_api.analysis import average_certified_radius, certified_accuracy  # noqa: E402
from robust_api.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist  # noqa: E402
from robust_api.query_logs.store import open_store  # noqa: E402

SIGMA = 0.25
ALPHA = 0.001
RADII = (0.1, 0.25, 0.5)

#: name → certify keyword arguments. Each is run on every image with the image's seed.
METHODS = {
    "cohen N0=20 N=100": dict(method="cohen", N0=20, N=100),
    "cohen N0=100 N=1000": dict(method="cohen", N0=100, N=1000),
    "cohen clean N=1000": dict(method="cohen", selection="clean", N=1000),
    "top2 N0=100 N=1000": dict(method="top2", N0=100, N=1000),
    "sequential r=0.25 N<=1000": dict(method="sequential", radius=0.25, N=1000),
    "sequential r=0.5 N<=2000": dict(method="sequential", radius=0.5, N=2000),
    "sequential no target N<=1000": dict(method="sequential", N=1000),
}
REFERENCE = "cohen N0=100 N=1000"


def n_min(radius: float) -> int:
    """Fewest estimation queries that can certify ``radius`` (all votes correct, Cohen)."""
    return math.ceil(math.log(ALPHA) / math.log(norm.cdf(radius / SIGMA)))


def summarize(certificates, truths):
    labels = [c.label for c in certificates]
    radii = [c.radius for c in certificates]
    accuracy = certified_accuracy(labels, radii, truths, RADII)
    return {
        "queries": float(np.mean([c.samples for c in certificates])),
        **{r: accuracy[r] for r in RADII},
        "acr": average_certified_radius(labels, radii, truths),
    }


def table(title, rows, extra_headers=()):
    headers = ["method", "mean queries/image", *[f"cert. acc. r={r}" for r in RADII], "ACR", *extra_headers]
    lines = [f"\n{title}\n", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for name, row in rows:
        cells = [name, f"{row['queries']:.1f}", *[f"{100 * row[r]:.1f}%" for r in RADII], f"{row['acr']:.3f}"]
        cells += [str(row.get(h, "")) for h in extra_headers]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines), flush=True)


def part_a(runs: int) -> None:
    """Half-space classifier: p_A known exactly; the truth is "A" and the true radius t − x."""
    pixel = 0.25
    rows_by_method = {name: [] for name in METHODS}
    false_claims = {name: 0 for name in METHODS}
    for p_a in (0.6, 0.8, 0.9, 0.99, 1.0):
        threshold = 1.5 if p_a == 1.0 else pixel + SIGMA * float(norm.ppf(p_a))
        true_radius = math.inf if p_a == 1.0 else threshold - pixel

        def halfspace(batch, threshold=threshold):
            return np.where(batch[:, 0, 0, 0] < threshold, "A", "B").tolist()

        image = np.full((1, 1, 1), pixel, dtype=np.float32)
        with tempfile.TemporaryDirectory() as folder:
            log = open_store(Path(folder) / "a.sqlite3")
            for name, options in METHODS.items():
                certificates = []
                for run in range(runs):
                    api = RobustAPI(halfspace, log=log, seed=10_000 + run)
                    certificates.append(api.certify(image, noise_sd=SIGMA, alpha=ALPHA, **options))
                false_claims[name] += sum(c.label is not ABSTAIN and c.radius > true_radius for c in certificates)
                row = summarize(certificates, ["A"] * runs)
                row["p_A"] = p_a
                rows_by_method[name].append(row)
            log.close()
    for name, rows in rows_by_method.items():
        table_rows = [(f"p_A={row['p_A']}", row) for row in rows]
        table(f"(a) half-space, {name} ({runs} runs per p_A; radius above the true radius: {false_claims[name]})",
              table_rows)


def part_b(images: int, iss_per_image: int) -> None:
    """Fashion-MNIST test images through the shipped σ=0.25 denoiser and the bundled classifier."""
    pixels, labels = load_fashion_mnist("test")
    pixels, labels = pixels[:images], labels[:images]
    truths = [FASHION_MNIST_CLASSES[i] for i in labels]
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        log = open_store(Path(folder) / "b.sqlite3")
        apis = [RobustAPI("local", denoiser="fashion-mnist-dncnn-0.25", log=log, seed=20_000 + i) for i in range(images)]
        for name, options in METHODS.items():
            began = time.perf_counter()
            results[name] = [api.certify(image, noise_sd=SIGMA, alpha=ALPHA, **options) for api, image in zip(apis, pixels)]
            seconds[name] = time.perf_counter() - began
        began = time.perf_counter()
        iss_name = f"certify_batch shared {iss_per_image}/image"
        shared = RobustAPI("local", denoiser="fashion-mnist-dncnn-0.25", log=log, seed=30_000)
        results[iss_name] = shared.certify_batch(list(pixels), noise_sd=SIGMA, total_queries=iss_per_image * images,
                                                 alpha=ALPHA)
        seconds[iss_name] = time.perf_counter() - began
        log.close()
    rows = [(name, summarize(certs, truths)) for name, certs in results.items()]
    table(f"(b) Fashion-MNIST, fashion-mnist-dncnn-0.25, sigma={SIGMA}, alpha={ALPHA}, {images} test images", rows)

    # images whose top-class probability is at least 0.99 (estimated from Cohen's 1,000 estimation votes)
    reference = results[REFERENCE]
    high = [i for i, c in enumerate(reference) if c.guess is not None and c.counts.get(c.guess, 0) / c.n >= 0.99]
    print(f"\nimages with p_A >= 0.99 (Cohen N=1000 estimate): {len(high)} of {images}")
    print("| method | target r | n_min | mean estimation queries | mean total queries | ratio to n_min | certified at r |")
    print("|---|---|---|---|---|---|---|")
    for name, radius in (("sequential r=0.25 N<=1000", 0.25), ("sequential r=0.5 N<=2000", 0.5)):
        certs = [results[name][i] for i in high]
        estimation = float(np.mean([c.n for c in certs]))
        total = float(np.mean([c.samples for c in certs]))
        certified = np.mean([c.label is not ABSTAIN and c.radius >= radius for c in certs])
        print(f"| {name} | {radius} | {n_min(radius)} | {estimation:.1f} | {total:.1f} | "
              f"{total / n_min(radius):.2f} | {100 * certified:.1f}% |")
    stops = {}
    for name, certs in results.items():
        if certs[0].method == "sequential":
            counts = {}
            for c in certs:
                counts[c.stop_reason] = counts.get(c.stop_reason, 0) + 1
            stops[name] = counts
    print("\nstop reasons:", "; ".join(f"{name}: {counts}" for name, counts in stops.items()))
    print("wall seconds per method (later methods reuse earlier answers):",
          ", ".join(f"{name} {s:.0f}" for name, s in seconds.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="Fashion-MNIST test images (part b)")
    parser.add_argument("--runs", type=int, default=200, help="runs per p_A (part a)")
    parser.add_argument("--iss-per-image", type=int, default=120, help="certify_batch budget per image (part b)")
    parser.add_argument("--part", choices=("a", "b", "all"), default="all")
    args = parser.parse_args()
    if args.part in ("a", "all"):
        part_a(args.runs)
    if args.part in ("b", "all"):
        part_b(args.images, args.iss_per_image)


if __name__ == "__main__":
    main()
