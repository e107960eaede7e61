"""Pure statistics of randomized smoothing: counts in, decisions out.

No I/O, no torch, no provider: every function here is a deterministic function of vote
counts, computed in float64 with current SciPy APIs. The guarantees follow Cohen,
Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing" (ICML 2019).

Notation: the base classifier f maps an image to a label; the smoothed classifier is
g(x) = argmax_c P[f(x + δ) = c] with δ ~ N(0, σ² I) in [0, 1] pixel units.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Optional

from .errors import InvalidParameterError
from .validation import check_alpha, check_noise_sd

# scipy is imported on first use, so that ``import robust_api`` stays fast (scipy.stats alone
# takes about a second to import on a 2-core machine)


def _betaincinv(a: float, b: float, y: float) -> float:
    from scipy.special import betaincinv

    return betaincinv(a, b, y)


def _ndtri(p: float) -> float:
    from scipy.special import ndtri

    return ndtri(p)


def _binomtest(k: int, n: int, p: float):
    from scipy.stats import binomtest

    return binomtest(k, n, p)

__all__ = [
    "clopper_pearson_lower",
    "radius_from_p_lower",
    "top_label",
    "count_labels",
    "ranked_labels",
    "PredictOutcome",
    "CertifyOutcome",
    "predict_from_counts",
    "certify_from_counts",
    "max_certifiable_radius",
    "clopper_pearson_upper",
    "TOP2_ALPHA_SPLIT",
    "Top2Outcome",
    "certify_top2_from_counts",
]


def check_vote_count(value: int, name: str) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool) or int(value) < 0:
        raise InvalidParameterError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 − α) Clopper–Pearson lower confidence bound on a binomial proportion.

    Args:
        successes: k, the number of successes, 0 ≤ k ≤ trials.
        trials: n ≥ 1, the number of independent Bernoulli trials.
        alpha: α in (0, 1).

    Returns:
        p̲ in [0, 1] (float64) with P[p ≥ p̲] ≥ 1 − α for every true proportion p:
        ``Beta.ppf(α; k, n − k + 1)``, and 0 when k = 0. Equals statsmodels'
        ``proportion_confint(k, n, alpha=2α, method="beta")[0]``. Computed with the
        inverse regularized incomplete beta function (``scipy.special.betaincinv``, what
        ``scipy.stats.beta.ppf`` evaluates, without its ~30 µs of per-call overhead).
    """
    k = check_vote_count(successes, "successes")
    n = check_vote_count(trials, "trials")
    alpha = check_alpha(alpha)
    if n < 1:
        raise InvalidParameterError("trials must be >= 1 to bound a proportion")
    if k > n:
        raise InvalidParameterError(f"successes ({k}) cannot exceed trials ({n})")
    if k == 0:
        return 0.0
    return float(_betaincinv(k, n - k + 1, alpha))


def radius_from_p_lower(p_lower: float, noise_sd: float) -> float:
    """Certified L2 radius σ·Φ⁻¹(p̲) for a lower bound p̲ > 1/2 on the top class probability.

    Args:
        p_lower: p̲ in (1/2, 1].
        noise_sd: σ > 0, in [0, 1] pixel units.

    Returns:
        The radius in the same pixel units (float64; ``inf`` if p̲ = 1, which a finite
        Clopper–Pearson bound never returns). Raises for p̲ ≤ 1/2: that is an abstention.
    """
    if not (0.5 < p_lower <= 1.0):
        raise InvalidParameterError(f"p_lower must be in (0.5, 1] to give a radius, got {p_lower!r}")
    if not (noise_sd > 0 and math.isfinite(noise_sd)):
        raise InvalidParameterError(f"noise_sd must be > 0 and finite, got {noise_sd!r}")
    return float(noise_sd) * float(_ndtri(float(p_lower)))


def ranked_labels(counts: Mapping[Hashable, int]) -> list[Hashable]:
    """Labels with a positive count, most votes first, ties broken by the smaller ``str(label)``
    (the order :func:`top_label` uses; the runner-up of a selection vote is the second)."""
    return sorted((label for label, count in counts.items() if count > 0), key=lambda label: (-int(counts[label]), str(label)))


def count_labels(labels: Sequence[Optional[str]]) -> tuple[dict[str, int], int]:
    """(label → count, most first; failed samples) of votes in sample order (None = a failed
    sample, no vote for any class)."""
    votes = Counter(label for label in labels if label is not None)
    return dict(votes.most_common()), len(labels) - sum(votes.values())


def top_label(counts: Mapping[Hashable, int]) -> Optional[Hashable]:
    """The label with the most votes; ties broken deterministically by the smaller ``str(label)``.

    Args:
        counts: label → vote count (counts ≥ 0).

    Returns:
        The top label, or None when there is no label with a positive count.
        The tie-break depends only on the counts, so a guess made from selection votes
        stays independent of the estimation votes.
    """
    best = None
    best_key = None
    for label, count in counts.items():
        if count <= 0:
            continue
        key = (-int(count), str(label))
        if best_key is None or key < best_key:
            best, best_key = label, key
    return best


@dataclass(frozen=True)
class PredictOutcome:
    """Result of :func:`predict_from_counts`.

    Attributes:
        label: the predicted label, or None for an abstention.
        p_value: two-sided binomial test p-value of n₁ out of n₁ + n₂ at p = ½.
    """

    label: Optional[Hashable]
    p_value: float


@dataclass(frozen=True)
class CertifyOutcome:
    """Result of :func:`certify_from_counts`.

    Attributes:
        label: the certified label ĉ, or None for an abstention.
        p_lower: p̲_A, the (1 − α) lower confidence bound on P[f(x+δ) = ĉ] (0 if no guess).
        radius: σ·Φ⁻¹(p̲_A) when p̲_A > ½, else 0.0 (pixel units of [0, 1] images).
    """

    label: Optional[Hashable]
    p_lower: float
    radius: float


def predict_from_counts(counts: Mapping[Hashable, int], alpha: float, n_errors: int = 0) -> PredictOutcome:
    """Cohen et al.'s PREDICT on the votes of n noisy samples.

    Args:
        counts: label → votes from n i.i.d. noisy samples (errors excluded).
        alpha: α in (0, 1).
        n_errors: samples whose query failed; they are added to the runner-up's count n₂,
            which can only make the test more conservative.

    Returns:
        The top label if the two-sided binomial test of n₁ out of n₁ + n₂ at p = ½ has
        p-value ≤ α, else an abstention (label None). Guarantee: the returned label differs
        from the smoothed classifier g(x) with probability at most α.
    """
    alpha = check_alpha(alpha)
    n_errors = check_vote_count(n_errors, "n_errors")
    first = top_label(counts)
    if first is None:
        return PredictOutcome(label=None, p_value=1.0)
    n1 = int(counts[first])
    n2 = max((int(c) for lab, c in counts.items() if lab != first), default=0) + n_errors
    p_value = float(_binomtest(n1, n1 + n2, 0.5).pvalue)
    return PredictOutcome(label=first if p_value <= alpha else None, p_value=p_value)


def certify_from_counts(
    guess: Optional[Hashable],
    estimation_counts: Mapping[Hashable, int],
    n_estimation: int,
    noise_sd: float,
    alpha: float,
) -> CertifyOutcome:
    """Cohen et al.'s CERTIFY, estimation step, on the votes of n fresh noisy samples.

    Args:
        guess: ĉ, the guessed top class, chosen from data independent of the estimation
            samples (Cohen's n₀ selection samples, or one clean query). None abstains.
        estimation_counts: label → votes of the n estimation samples. Failed samples are
            not in it: they count against ĉ through ``n_estimation``.
        n_estimation: n ≥ 1, the number of estimation samples, failed ones included.
        noise_sd: σ > 0 in [0, 1] pixel units.
        alpha: α in (0, 1).

    Returns:
        With n_A = votes for ĉ and p̲_A = ``clopper_pearson_lower(n_A, n, α)``: if p̲_A > ½,
        (ĉ, p̲_A, σ·Φ⁻¹(p̲_A)); else an abstention (None, p̲_A, 0.0).
        Guarantee: with probability ≥ 1 − α over the estimation noise, if a label is
        returned then g(x + e) = ĉ for every ‖e‖₂ < radius.
    """
    n = check_vote_count(n_estimation, "n_estimation")
    if n < 1:
        raise InvalidParameterError("certification needs at least one estimation sample (N >= 1)")
    noise_sd = check_noise_sd(noise_sd, allow_zero=False)
    alpha = check_alpha(alpha)
    total = sum(int(c) for c in estimation_counts.values())
    if total > n:
        raise InvalidParameterError(f"estimation counts sum to {total}, more than n_estimation={n}")
    if guess is None:
        return CertifyOutcome(label=None, p_lower=0.0, radius=0.0)
    n_a = int(estimation_counts.get(guess, 0))
    p_lower = clopper_pearson_lower(n_a, n, alpha)
    if p_lower <= 0.5:
        return CertifyOutcome(label=None, p_lower=p_lower, radius=0.0)
    return CertifyOutcome(label=guess, p_lower=p_lower, radius=radius_from_p_lower(p_lower, noise_sd))


def max_certifiable_radius(n_estimation: int, noise_sd: float, alpha: float) -> float:
    """The largest radius n estimation samples can ever certify: σ·Φ⁻¹(α^{1/n}) (all votes for ĉ).

    Args:
        n_estimation: n ≥ 1. noise_sd: σ > 0. alpha: α in (0, 1).

    Returns:
        The ceiling in pixel units (0.0 when even n unanimous votes cannot beat ½).
    """
    p_lower = clopper_pearson_lower(n_estimation, n_estimation, alpha)
    return radius_from_p_lower(p_lower, noise_sd) if p_lower > 0.5 else 0.0


def clopper_pearson_upper(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 − α) Clopper–Pearson upper confidence bound on a binomial proportion.

    Args:
        successes: k, 0 ≤ k ≤ trials. trials: n ≥ 1. alpha: α in (0, 1).

    Returns:
        p̄ in [0, 1] with P[p ≤ p̄] ≥ 1 − α: ``1 − clopper_pearson_lower(n − k, n, α)``
        (1 when k = n).
    """
    k = check_vote_count(successes, "successes")
    n = check_vote_count(trials, "trials")
    if k > n:
        raise InvalidParameterError(f"successes ({k}) cannot exceed trials ({n})")
    return 1.0 - clopper_pearson_lower(n - k, n, alpha)


#: How the top-2 bound splits α: p̲_A, p̄_B (the runner-up) and p̄ of everything else.
TOP2_ALPHA_SPLIT = (0.5, 0.25, 0.25)


@dataclass(frozen=True)
class Top2Outcome:
    """Result of :func:`certify_top2_from_counts`.

    Attributes:
        label: the certified label ĉ_A, or None for an abstention.
        p_lower: p̲_A, lower bound on P[f(x+δ) = ĉ_A] at level α·split[0].
        p_upper: p̄, upper bound on the largest probability of any other outcome.
        radius: σ/2·(Φ⁻¹(p̲_A) − Φ⁻¹(p̄)) when p̲_A > p̄, else 0.0.
    """

    label: Optional[Hashable]
    p_lower: float
    p_upper: float
    radius: float


def certify_top2_from_counts(
    guess: Optional[Hashable],
    runner_up: Optional[Hashable],
    estimation_counts: Mapping[Hashable, int],
    n_estimation: int,
    noise_sd: float,
    alpha: float,
    alpha_split: tuple[float, float, float] = TOP2_ALPHA_SPLIT,
) -> Top2Outcome:
    """CERTIFY with a lower bound on p_A and an upper bound on every other class (top-2 bound).

    Cohen et al.'s Theorem 1 in its general form: if p_A ≥ p̲_A and max_{c ≠ A} p_c ≤ p̄ then
    g(x + e) = A for ‖e‖₂ < σ/2·(Φ⁻¹(p̲_A) − Φ⁻¹(p̄)). It helps when votes are split over many
    labels (open-vocabulary APIs); with unanimous votes plain :func:`certify_from_counts` is
    better. The vocabulary need not be known: any class other than A and B (failed queries
    included) has probability at most p_rest = 1 − p_A − p_B, so
    p̄ = min(max(p̄_B, p̄_rest), 1 − p̲_A) bounds them all.

    Args:
        guess, runner_up: ĉ_A and ĉ_B, chosen from data independent of the estimation samples
            (the top two selection labels; runner_up may be None: then p̄ = p̄_rest).
        estimation_counts: label → votes of the n estimation samples (failed ones excluded).
        n_estimation: n ≥ 1, failed samples included.
        noise_sd: σ > 0. alpha: α in (0, 1).
        alpha_split: fractions of α for p̲_A, p̄_B and p̄_rest (positive, summing to 1).

    Returns:
        A :class:`Top2Outcome`. Guarantee: with probability ≥ 1 − α (Bonferroni over the three
        one-sided Clopper–Pearson bounds) a returned label is g's answer within ``radius``.
    """
    n = check_vote_count(n_estimation, "n_estimation")
    if n < 1:
        raise InvalidParameterError("certification needs at least one estimation sample (N >= 1)")
    noise_sd = check_noise_sd(noise_sd, allow_zero=False)
    alpha = check_alpha(alpha)
    if len(alpha_split) != 3 or any(not (f > 0) for f in alpha_split) or abs(sum(alpha_split) - 1.0) > 1e-9:
        raise InvalidParameterError(f"alpha_split must be three positive fractions summing to 1, got {alpha_split!r}")
    total = sum(int(c) for c in estimation_counts.values())
    if total > n:
        raise InvalidParameterError(f"estimation counts sum to {total}, more than n_estimation={n}")
    if guess is None:
        return Top2Outcome(label=None, p_lower=0.0, p_upper=1.0, radius=0.0)
    if runner_up == guess:
        raise InvalidParameterError("runner_up must differ from guess")
    n_a = int(estimation_counts.get(guess, 0))
    n_b = int(estimation_counts.get(runner_up, 0)) if runner_up is not None else 0
    split_a, split_b, split_rest = alpha_split
    if runner_up is None:
        split_rest += split_b
    p_lower = clopper_pearson_lower(n_a, n, alpha * split_a)
    p_upper = clopper_pearson_upper(n - n_a - n_b, n, alpha * split_rest)
    if runner_up is not None:
        p_upper = max(p_upper, clopper_pearson_upper(n_b, n, alpha * split_b))
    p_upper = min(p_upper, 1.0 - p_lower)
    if p_lower <= p_upper or p_lower <= 0.0:
        return Top2Outcome(label=None, p_lower=p_lower, p_upper=p_upper, radius=0.0)
    radius = 0.5 * noise_sd * (float(_ndtri(p_lower)) - float(_ndtri(p_upper)))
    return Top2Outcome(label=guess, p_lower=p_lower, p_upper=p_upper, radius=radius)
