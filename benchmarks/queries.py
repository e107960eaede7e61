"""Queries per image vs certificates: Cohen's fixed N against the sequential rule at the same cap.

Three parts, each printing Markdown tables (python benchmarks/queries.py --part table|mix|fashion|all):

table   A classifier whose top-class probability p_A is known exactly: each estimation vote is
        for the class with probability p_A, independently (what a half-space classifier on one
        pixel gives, see docs/soundness.md). For p_A in {0.6, 0.8, 0.9, 0.95, 0.99, 0.999, 1}
        and target r in {0, 0.25, 0.5} (σ = 0.25, α = 0.001, cap N = 1000): the certified
        fraction (label right, radius ≥ r) and mean paid queries of
          - cohen N0=100 N=1000: Cohen et al.'s CERTIFY, 100 noisy selection votes;
          - cohen clean N=1000: the same with one clean selection query;
          - sequential: ``method="sequential", radius=r, N=1000`` (clean selection);
          - oracle: the fewest fixed n, chosen knowing p_A, at which Cohen's test certifies r
            with probability at least Cohen's at N = 1000 minus 0.01 (exact binomial; 1 query
            when that probability is below 0.01: the oracle gives up at once).
        Then the false-certificate rate at the boundary p_A = Φ(r/σ) (true radius = r) against
        the rule's exact type-I error.
mix     A mix of images: 60% with p_A in {0.99, 0.999, 1} (a third each), 40% with p_A uniform
        on [0, 0.99). Target r = 0.25 (and 0.5), cap N = 1000: certificates Cohen gets that the
        sequential rule does not, and mean paid queries as a fraction of Cohen's.
fashion End to end through RobustAPI: the bundled Fashion-MNIST classifier behind the shipped
        denoiser fashion-mnist-dncnn-0.25 (needs torch and the Debian dataset-fashion-mnist).

Every certificate in parts table and mix comes from ``robust_api.certification.certify_from_votes``,
the function the online and offline paths use; the votes are simulated. All methods of a trial
see the same estimation votes (common random numbers), so "lost" certificates are counted
pairwise, exactly.

Run:  python benchmarks/queries.py [--part all] [--trials 2000] [--mix-images 20000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import binom, norm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from robust_api.certification import certify_from_votes  # noqa: E402
from robust_api.sequential import SequentialRule, final_threshold  # noqa: E402

SIGMA = 0.25
ALPHA = 0.001
CAP = 1000
N0 = 100
P_VALUES = (0.6, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
RADII = (0.0, 0.25, 0.5)
METHODS = ("cohen N0=100 N=1000", "cohen clean N=1000", "sequential", "oracle")


def _labels(votes: np.ndarray) -> list[str]:
    return np.where(votes, "A", "B").tolist()


def _certified(cert, radius: float) -> bool:
    return cert.label == "A" and cert.radius >= radius


class Trial:
    """One simulated image: its selection and estimation votes, certified by every method."""

    def __init__(self, p_a: float, rng: np.random.Generator):
        self.selection = rng.random(N0) < p_a
        self.estimation = rng.random(CAP) < p_a

    def cohen(self, radius: float, clean: bool) -> tuple[bool, int]:
        if clean:
            selection = {"A": 1}  # the clean image is on the A side of the classifier
        else:
            votes = int(self.selection.sum())
            selection = {"A": votes, "B": N0 - votes}
        successes = int(self.estimation.sum())
        cert = certify_from_votes(selection, {"A": successes, "B": CAP - successes}, SIGMA, ALPHA)
        return _certified(cert, radius), (1 if clean else N0) + CAP

    def sequential(self, rule: SequentialRule, radius: float) -> tuple[bool, int, str]:
        cert = certify_from_votes({"A": 1}, _labels(self.estimation), SIGMA, ALPHA, method="sequential", rule=rule)
        return _certified(cert, radius), 1 + cert.n, cert.stop_reason


def oracle_queries(p_a: float, radius: float) -> tuple[float, int]:
    """(certified probability, paid queries) of the fixed-n oracle described in the docstring."""
    at_cap_threshold = final_threshold(CAP, SIGMA, ALPHA, radius)
    at_cap = float(binom.sf(at_cap_threshold - 1, CAP, p_a))
    if at_cap < 0.01:
        return 0.0, 1
    for n in range(1, CAP + 1):
        threshold = final_threshold(n, SIGMA, ALPHA, radius)
        if threshold is not None:
            chance = float(binom.sf(threshold - 1, n, p_a))
            if chance >= at_cap - 0.01:
                return chance, 1 + n
    return at_cap, 1 + CAP  # pragma: no cover - n = CAP always qualifies


def part_table(trials: int, seed: int) -> dict:
    rules = {r: SequentialRule(SIGMA, ALPHA, CAP, radius=r) for r in RADII}
    rows, worst = [], 0.0
    began = time.perf_counter()
    for radius in RADII:
        for p_a in P_VALUES:
            rng = np.random.default_rng([seed, int(p_a * 10_000), int(radius * 1000)])
            tally = {m: [0, 0] for m in METHODS}  # certified, queries
            for _ in range(trials):
                trial = Trial(p_a, rng)
                for name, clean in (("cohen N0=100 N=1000", False), ("cohen clean N=1000", True)):
                    ok, paid = trial.cohen(radius, clean)
                    tally[name][0] += ok
                    tally[name][1] += paid
                ok, paid, _ = trial.sequential(rules[radius], radius)
                tally["sequential"][0] += ok
                tally["sequential"][1] += paid
            chance, paid = oracle_queries(p_a, radius)
            row = {"r": radius, "p_a": p_a}
            for name in METHODS[:3]:
                row[name] = (tally[name][0] / trials, tally[name][1] / trials)
            row["oracle"] = (chance, paid)
            # sequential minus the better Cohen, in standard errors of the paired difference
            best_cohen = max(row[m][0] for m in METHODS[:2])
            difference = row["sequential"][0] - best_cohen
            spread = math.sqrt(max(best_cohen * (1 - best_cohen), 1e-12) / trials)
            worst = min(worst, difference / spread if difference < 0 else 0.0)
            rows.append(row)
    print(f"\n(table) p_A known exactly; sigma={SIGMA}, alpha={ALPHA}, cap N={CAP}, {trials} trials per cell "
          f"({time.perf_counter() - began:.0f} s)\n")
    print("| r | p_A | " + " | ".join(f"{m}: certified | {m}: queries" for m in METHODS) + " |")
    print("|---|---|" + "---|---|" * len(METHODS))
    for row in rows:
        cells = [f"{row['r']}", f"{row['p_a']}"]
        for name in METHODS:
            fraction, paid = row[name]
            cells += [f"{100 * fraction:.1f}%", f"{paid:.1f}"]
        print("| " + " | ".join(cells) + " |")
    print(f"\nworst shortfall of sequential below the better Cohen, in standard errors: {worst:.2f} "
          "(0 = never below)")
    boundary(trials * 10, seed)
    return {"rows": rows}


def boundary(trials: int, seed: int) -> None:
    """False certificates at p_A = Φ(r/σ): every certificate of radius ≥ r is false there
    (true radius = r, so this is the worst case of every p_A ≤ Φ(r/σ))."""
    print(f"\n(boundary) p_A = Phi(r/sigma), true radius = r: rate of certificates with radius >= r, "
          f"{trials} trials\n")
    print("| r | p_A | cohen N0=100 N=1000 | sequential | sequential exact type-I | alpha |")
    print("|---|---|---|---|---|---|")
    for radius in RADII:
        p_a = float(norm.cdf(radius / SIGMA))
        rule = SequentialRule(SIGMA, ALPHA, CAP, radius=radius)
        rng = np.random.default_rng([seed, 99, int(radius * 1000)])
        cohen = sequential = 0
        for _ in range(trials):
            trial = Trial(p_a, rng)
            cohen += trial.cohen(radius, clean=False)[0]
            sequential += trial.sequential(rule, radius)[0]
        exact = rule.tests()[0].type_one_error
        print(f"| {radius} | {p_a:.4f} | {cohen / trials:.5f} | {sequential / trials:.5f} | {exact:.6f} | {ALPHA} |")


def part_mix(images: int, seed: int) -> None:
    rng = np.random.default_rng([seed, 7])
    high = rng.random(images) < 0.6
    p_values = np.where(high, rng.choice([0.99, 0.999, 1.0], size=images), rng.uniform(0.0, 0.99, size=images))
    for radius in (0.25, 0.5):
        rule = SequentialRule(SIGMA, ALPHA, CAP, radius=radius)
        began = time.perf_counter()
        cohen_ok = cohen_clean_ok = seq_ok = lost = lost_clean = 0
        seq_paid = 0
        oracle_paid = 0.0
        stops: dict[str, int] = {}
        oracle_cache: dict[float, int] = {}
        for p_a in p_values:
            trial = Trial(float(p_a), rng)
            c_ok, _ = trial.cohen(radius, clean=False)
            cc_ok, _ = trial.cohen(radius, clean=True)
            s_ok, paid, reason = trial.sequential(rule, radius)
            cohen_ok += c_ok
            cohen_clean_ok += cc_ok
            seq_ok += s_ok
            lost += c_ok and not s_ok
            lost_clean += cc_ok and not s_ok
            seq_paid += paid
            stops[reason] = stops.get(reason, 0) + 1
            key = round(float(p_a), 3)
            if key not in oracle_cache:
                oracle_cache[key] = oracle_queries(key, radius)[1]
            oracle_paid += oracle_cache[key]
        seconds = time.perf_counter() - began
        cohen_paid, clean_paid = N0 + CAP, 1 + CAP
        print(f"\n(mix) {images} images, 60% p_A in {{0.99, 0.999, 1}}, 40% p_A ~ U[0, 0.99); r={radius}, "
              f"cap N={CAP}, sigma={SIGMA}, alpha={ALPHA} ({seconds:.0f} s)\n")
        print("| method | certified at r | certificates lost vs this method | mean paid queries | "
              "sequential / this method |")
        print("|---|---|---|---|---|")
        mean_seq = seq_paid / images
        print(f"| cohen N0=100 N=1000 | {cohen_ok} | {lost} | {cohen_paid} | {mean_seq / cohen_paid:.3f} |")
        print(f"| cohen clean N=1000 | {cohen_clean_ok} | {lost_clean} | {clean_paid} | {mean_seq / clean_paid:.3f} |")
        print(f"| sequential | {seq_ok} | - | {mean_seq:.1f} | 1 |")
        print(f"| oracle (fixed n knowing p_A; p_A rounded to 0.001) | - | - | {oracle_paid / images:.1f} | "
              f"{mean_seq / (oracle_paid / images):.2f} |")
        print(f"\noracle / cohen N0=100 N=1000 = {oracle_paid / images / cohen_paid:.3f}; sequential stop reasons: "
              + ", ".join(f"{k} {v}" for k, v in sorted(stops.items())))


def part_fashion(images: int) -> None:
    """Fashion-MNIST test images through the shipped σ=0.25 denoiser and the bundled classifier."""
    import tempfile

    from robust_api import ABSTAIN, RobustAPI
    from robust_api.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist
    from robust_api.query_logs.store import open_store

    pixels, labels = load_fashion_mnist("test")
    pixels, truths = pixels[:images], [FASHION_MNIST_CLASSES[i] for i in labels[:images]]
    methods = {
        "cohen N0=100 N=1000": dict(method="cohen", N0=100, N=1000),
        "cohen clean N=1000": dict(method="cohen", selection="clean", N=1000),
        "sequential r=0.25 N<=1000": dict(radius=0.25, N=1000),
        "sequential r=0.5 N<=1000": dict(radius=0.5, N=1000),
    }
    print(f"\n(fashion) Fashion-MNIST, fashion-mnist-dncnn-0.25, sigma={SIGMA}, alpha={ALPHA}, {images} test images\n")
    print("| method | mean paid queries | certified r=0.25 | certified r=0.5 |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        log = open_store(Path(folder) / "fashion.sqlite3")
        apis = [RobustAPI("local", denoiser="fashion-mnist-dncnn-0.25", log=log, seed=20_000 + i) for i in range(images)]
        for name, options in methods.items():
            certs = [api.certify(image, noise_sd=SIGMA, alpha=ALPHA, **options) for api, image in zip(apis, pixels)]
            paid = np.mean([c.samples for c in certs])
            at = [np.mean([c.label is not ABSTAIN and c.label == t and c.radius >= r for c, t in zip(certs, truths)])
                  for r in (0.25, 0.5)]
            print(f"| {name} | {paid:.1f} | {100 * at[0]:.1f}% | {100 * at[1]:.1f}% |", flush=True)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("table", "mix", "fashion", "all"), default="all")
    parser.add_argument("--trials", type=int, default=2000, help="trials per cell of the table")
    parser.add_argument("--mix-images", type=int, default=20_000)
    parser.add_argument("--images", type=int, default=200, help="Fashion-MNIST test images (part fashion)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.part in ("table", "all"):
        part_table(args.trials, args.seed)
    if args.part in ("mix", "all"):
        part_mix(args.mix_images, args.seed)
    if args.part in ("fashion", "all"):
        part_fashion(args.images)


if __name__ == "__main__":
    main()
