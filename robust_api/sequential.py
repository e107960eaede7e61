"""Sequential certification that never loses to Cohen's fixed-N test (pure: votes in, decisions out).

No I/O. The online path (:mod:`robust_api.engine.looks`) and the offline replay of a log call
the same :meth:`SequentialRule.step`, so they cannot disagree.

The test
--------
Let X_i = 1 when the i-th estimation sample votes for the guessed class ĉ (a failed query or
any other label is 0), i.i.d. with mean p_A, and S_n = X_1 + … + X_n. To certify a target
radius r is to reject H₀: p_A ≤ p₀ = Φ(r/σ). With a cap of N samples, Cohen et al. reject when
S_N ≥ c, the smallest count whose Clopper–Pearson bound certifies r. The sequential test looks
at n_1 < n_2 < … < n_K = N and rejects

* at an early look n_j < N when the one-sided Beta(a, b) mixture likelihood ratio
  M(S_{n_j}, n_j) = ∫_{p₀}^1 q^S (1 − q)^{n − S} dπ(q) / (π[p₀, 1] · p₀^S (1 − p₀)^{n − S})
  reaches 1/λ (and S_{n_j} > p₀·n_j);
* at the last look n_K = N when S_N ≥ c: **Cohen's test on all N samples**.

Every path on which Cohen certifies is certified by the sequential test too (earlier or at
N), so it never loses a certificate to Cohen at the same cap. Its type-I error is
P_{p₀}[some early look rejects or S_N ≥ c], computed *exactly* by dynamic programming over the
binomial counts across the looks (:func:`rejection_dp`), and λ is the largest level with that
error ≤ α: the early looks spend exactly the room Cohen's discrete test leaves below α. The
rejection region only grows with the votes, so the error is largest at p_A = p₀; votes
counted against ĉ (failures) only make it smaller. Stopping for futility once no look can
reject any more (even if every remaining vote were for ĉ) changes no decision.

The certificate: an early stop certifies p_A > p₀ (radius r); reaching N with S_N ≥ c
certifies Cohen's Clopper–Pearson bound (radius ≥ r, a closed test: the bound for p' > p₀ is
Cohen's own fixed-N test, reached only after H₀ at p₀ is rejected). Otherwise ABSTAIN. A run
stopped before N by anything else (a shared budget, a lost connection) keeps only its early
rejections, which are a subset of the calibrated ones: still valid.

Without a target, the rule runs one such test per radius of the grid 0, t, 2t, … (t the
tolerance) up to what N can certify, all on the same looks, and certifies the largest grid
radius whose test and all smaller ones have rejected (fixed-sequence testing: each at level
α, valid without a union bound). It stops when the next grid radius is out of reach at an
optimistic vote rate ("settled"); that heuristic may stop short of what N samples would give,
so the untargeted rule is not promised never to lose to Cohen (Cohen stays the default there).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from functools import lru_cache
from numbers import Real
from typing import Callable, Optional, Sequence

import numpy as np

from .errors import InvalidParameterError
from .statistics import (
    certify_from_counts,
    check_vote_count,
    clopper_pearson_upper,
    max_certifiable_radius,
)
from .validation import check_alpha, check_noise_sd, check_sample_count

__all__ = [
    "DESIGN",
    "DEFAULT_PRIOR",
    "DEFAULT_GROWTH",
    "DEFAULT_FUTILITY_GROWTH",
    "DEFAULT_FUTILITY_ALPHA",
    "DEFAULT_TOLERANCE_FRACTION",
    "MAX_GRID_RADII",
    "STOP_REASONS",
    "look_points",
    "run_looks",
    "final_threshold",
    "rejection_dp",
    "SequentialTest",
    "calibrated_test",
    "LookState",
    "SequentialRule",
    "SequentialOutcome",
]

#: What the log records as ``params["design"]`` for this rule (logs without it were written by
#: the earlier confidence-sequence rule and replay with :mod:`robust_api.confidence_sequence`).
DESIGN = "calibrated"
#: Beta(a, b) mixing prior of the early looks' likelihood ratio.
DEFAULT_PRIOR = (0.5, 0.5)
#: Looks that can certify early are at least this factor apart (at most ~10% overshoot).
DEFAULT_GROWTH = 1.1
#: Looks that can only stop for futility (no α spent) are at least this factor apart.
DEFAULT_FUTILITY_GROWTH = 1.05
#: Level of the optimistic upper bound of the untargeted rule's "settled" stop (a heuristic:
#: it never enters a certificate).
DEFAULT_FUTILITY_ALPHA = 0.01
#: Default tolerance (grid step) of the untargeted rule, as a fraction of σ.
DEFAULT_TOLERANCE_FRACTION = 0.1
#: The untargeted rule tests at most this many grid radii (a smaller tolerance is refused).
MAX_GRID_RADII = 100

#: Why a sequential certification stopped.
STOP_REASONS = {
    "certified": "the target radius is certified at level alpha",
    "futile": "even if every remaining vote were for the guessed class, the target could not be certified",
    "settled": "more queries within the budget are not expected to certify the next radius of the grid",
    "budget": "the per-image budget N is spent",
    "ended": "the samples ran out before the rule stopped (a shared budget, an interrupted call, or an offline N)",
    "no_guess": "the selection step produced no class to certify (abstain without estimation queries)",
}

_DP_DIRECT_LIMIT = 2_000_000  # convolution sizes above this use the FFT
_CALIBRATION_MARGIN = 1e-9  # the calibrated error stays below α·(1 − margin) (float safety)


def look_points(first: int, budget: int, growth: float = DEFAULT_GROWTH) -> list[int]:
    """Sample counts ``first, ⌈first·growth⌉, …, budget`` (each at least one more than the
    previous; ``[budget]`` when first ≥ budget). Deterministic in its arguments."""
    if not growth > 1.0:
        raise InvalidParameterError(f"growth must be > 1, got {growth!r}")
    points = []
    n = max(1, int(first))
    while n < budget:
        points.append(n)
        n = max(n + 1, math.ceil(n * growth))
    points.append(int(budget))
    return points


def _target_p(radius: float, noise_sd: float) -> float:
    from scipy.special import ndtr

    return float(ndtr(radius / noise_sd))


def _cohen_certifies(successes: int, budget: int, noise_sd: float, alpha: float, radius: float) -> bool:
    """Whether Cohen's test (:func:`robust_api.statistics.certify_from_counts`) with
    ``successes`` of ``budget`` votes certifies ``radius``."""
    outcome = certify_from_counts(True, {True: successes}, budget, noise_sd, alpha)
    return outcome.label is not None and outcome.radius >= radius


def final_threshold(budget: int, noise_sd: float, alpha: float, radius: float) -> Optional[int]:
    """c: the fewest votes for ĉ out of ``budget`` with which Cohen's test certifies ``radius``.

    Args:
        budget: N ≥ 1. noise_sd: σ > 0. alpha: α in (0, 1). radius: r ≥ 0 (0: certify the
            label, p̲ > ½).

    Returns:
        c in [1, N], or None when even N votes of N cannot certify r. Found by bisection on
        the Clopper–Pearson bound, which grows with the count.
    """
    if not _cohen_certifies(budget, budget, noise_sd, alpha, radius):
        return None
    low, high = 0, budget  # low fails (0 votes never certify), high certifies
    while high - low > 1:
        middle = (low + high) // 2
        if _cohen_certifies(middle, budget, noise_sd, alpha, radius):
            high = middle
        else:
            low = middle
    return high


def _mixture_log_ratio(n: int, failures: np.ndarray, p0: float, prior: tuple[float, float]) -> np.ndarray:
    """log M(n − f, n) of the one-sided Beta(a, b) mixture against p₀, for each failure count f."""
    from scipy.special import betaincc, betaln

    a, b = prior
    successes = n - failures
    with np.errstate(divide="ignore"):
        numerator = betaln(a + successes, b + failures) + np.log(betaincc(a + successes, b + failures, p0))
        normalizer = betaln(a, b) + math.log(betaincc(a, b, p0))
    likelihood = successes * math.log(p0) + failures * math.log1p(-p0)
    return numerator - normalizer - likelihood


@lru_cache(maxsize=4096)
def _cached_log_ratio(n: int, most_failures: int, p0: float, prior: tuple[float, float]) -> np.ndarray:
    """:func:`_mixture_log_ratio` for failures 0 … min(most_failures, ⌈(1 − p₀)·n⌉) (more
    failures never reject: the mixture test needs S > p₀·n), cached (read-only)."""
    top = min(most_failures, int(math.ceil((1.0 - p0) * n)))
    ratio = _mixture_log_ratio(n, np.arange(top + 1), p0, prior)
    ratio.setflags(write=False)
    return ratio


def _allowed_failures(log_ratio: np.ndarray, n: int, p0: float, log_level: float) -> int:
    """The most failures with which an early look at n rejects at mixture level λ = exp(log_level) (−1: none)."""
    threshold = -log_level
    failures = np.arange(len(log_ratio))
    passes = (log_ratio >= threshold) & (n - failures > p0 * n)
    failing = np.flatnonzero(~passes)
    return int(failing[0]) - 1 if len(failing) else len(log_ratio) - 1


def _convolve(mass: np.ndarray, kernel: np.ndarray, keep: int) -> np.ndarray:
    """The first ``keep`` terms of mass ∗ kernel (FFT for large sizes, clipped at 0)."""
    keep = max(keep, 0)
    if len(mass) * len(kernel) > _DP_DIRECT_LIMIT:
        from scipy.signal import fftconvolve

        return np.clip(fftconvolve(mass, kernel)[:keep], 0.0, None)
    return np.convolve(mass, kernel)[:keep]


def _binomial_window(trials: int, q: float, limit: int) -> tuple[int, np.ndarray, float]:
    """(first count, pmf, mass left out) of Binomial(trials, q) on the counts within a few
    dozen standard deviations of the mean, up to ``limit`` (counts past ``limit`` never
    reject). The mass left out is what lies outside that window but not past ``limit``; the
    caller counts it as rejected, so the window can only make the error larger."""
    from scipy.stats import binom

    mean, spread = trials * q, 40.0 * math.sqrt(trials * q * (1.0 - q)) + 40.0
    first = max(0, int(mean - spread))
    last = min(limit, trials, int(math.ceil(mean + spread)))
    beyond_limit = float(binom.sf(limit, trials, q)) if limit < trials else 0.0
    if last < first:
        return first, np.zeros(0), max(1.0 - beyond_limit, 0.0)
    kernel = binom.pmf(np.arange(first, last + 1), trials, q)
    kernel.setflags(write=False)
    left_out = float(binom.cdf(first - 1, trials, q)) if first > 0 else 0.0
    if last < min(limit, trials):
        left_out += max(float(binom.sf(last, trials, q)) - beyond_limit, 0.0)
    return first, kernel, left_out


@lru_cache(maxsize=1024)
def _later_max(allowed: tuple[int, ...]) -> tuple[int, ...]:
    """Per look j, the most failures any look after j allows (−1 after the last)."""
    out, most = [], -1
    for a in reversed(allowed):
        out.append(most)
        most = max(most, a)
    return tuple(reversed(out))


@lru_cache(maxsize=16)
def _kernels(looks: tuple[int, ...], p: float, keep: int) -> tuple[tuple[int, np.ndarray, float], ...]:
    """Per look, the windowed pmf of the failures among the samples since the previous look
    (see :func:`_binomial_window`; read-only arrays, shared by every call)."""
    steps = np.diff((0,) + looks)
    return tuple(_binomial_window(int(step), 1.0 - p, keep - 1) for step in steps)


def rejection_dp(looks: Sequence[int], allowed: Sequence[int], p: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact stopping probabilities of a group-sequential test at vote probability ``p``.

    Args:
        looks: increasing sample counts n_1 < … < n_K (n_K is the cap).
        allowed: per look, the most failures (samples not for ĉ) with which it rejects
            (−1: that look cannot reject).
        p: the probability that a sample votes for ĉ, in [0, 1].

    Returns:
        (reject, stop): arrays of length K; reject[j] = P[the test first rejects at look j];
        stop[j] = P[it has not rejected and cannot any more after look j] (a futility stop
        there; at the last look, reaching N without rejecting). Sum of reject = the
        probability of certifying (the type-I error when p = p₀). Computed by dynamic
        programming over the failure count, cut at the most failures any later look allows
        (those paths can never reject) and to the window where the probabilities exceed
        ~1e-300; what the window leaves out (far below any α in use) is counted as rejected,
        so the sum errs upwards only. Cost O(K · W²) for a window of W counts (FFT above a
        size).
    """
    K = len(looks)
    later_max = _later_max(tuple(allowed))
    keep = max(allowed) + 1
    reject = np.zeros(K)
    stop = np.zeros(K)
    if keep <= 0:
        stop[0] = 1.0
        return reject, stop
    kernels = _kernels(tuple(looks), float(p), keep)
    offset, mass = 0, np.ones(1)  # mass[i] = P[failures = offset + i, still running]
    for j, (first, kernel, left_out) in enumerate(kernels):
        arriving = float(mass.sum())
        mass = _convolve(mass, kernel, keep - offset - first) if len(kernel) else np.zeros(0)
        offset += first
        # the kernel's negligible tails outside its window count as rejected (errs upwards only)
        reject[j] = arriving * left_out
        # what went past ``keep`` failures never rejects: a futility stop here
        stop[j] = max(arriving - reject[j] - float(mass.sum()), 0.0)
        if allowed[j] >= offset:
            reject[j] += float(mass[: allowed[j] - offset + 1].sum())
            mass[: allowed[j] - offset + 1] = 0.0
        cut = max(later_max[j] + 1 - offset, 0)
        stop[j] += float(mass[cut:].sum())
        mass = mass[:cut]
        nonzero = np.flatnonzero(mass > 1e-300)
        if len(nonzero) == 0:
            reject[j] += float(mass.sum())
            break
        # trim the negligible tails of the window, counting them as rejected (errs upwards only)
        reject[j] += float(mass[: nonzero[0]].sum() + mass[nonzero[-1] + 1:].sum())
        offset += int(nonzero[0])
        mass = mass[nonzero[0]: nonzero[-1] + 1]
    return reject, stop


@dataclass(frozen=True)
class SequentialTest:
    """One calibrated sequential test of H₀: p_A ≤ p₀ (see the module docstring).

    Attributes:
        radius: the target r ≥ 0. p0: Φ(r/σ). looks: n_1 < … < n_K = N.
        allowed: per look, the most failures with which it rejects (−1: none); the last is
            N − c, Cohen's test. level: λ of the early looks (0: no early rejection).
        final: c, the Cohen threshold at N.
        type_one_error: P_{p₀}[reject], exact (≤ α; computed by :func:`rejection_dp`).
    """

    radius: float
    p0: float
    looks: tuple[int, ...]
    allowed: tuple[int, ...]
    level: float
    final: int
    type_one_error: float

    def later_max(self, position: int) -> int:
        """The most failures any look after ``position`` (an index into looks) allows."""
        return _later_max(self.allowed)[position]

    def operating_characteristics(self, p: float) -> tuple[float, float]:
        """(P[certify], E[estimation samples used]) exactly, when each vote is for ĉ with
        probability ``p`` and the test runs alone (stops at rejection or futility, else at N)."""
        reject, stop = rejection_dp(self.looks, self.allowed, p)
        return float(reject.sum()), float(((reject + stop) * np.asarray(self.looks, dtype=float)).sum())


def _calibrate(looks: tuple[int, ...], rejecting: frozenset, p0: float, alpha: float, final_allowed: int,
               prior: tuple[float, float]) -> tuple[tuple[int, ...], float, float]:
    """(allowed failures per look, λ, exact type-I error) for the largest mixture level λ whose
    test errs ≤ α. Only the looks in ``rejecting`` may reject early (the others only stop for
    futility, spending nothing); early rejections never allow more failures than N − c."""
    early = looks[:-1]
    ratios = {n: _cached_log_ratio(n, min(n, final_allowed), p0, prior) for n in early if n in rejecting}

    def boundaries(log_level: Optional[float]) -> tuple[int, ...]:
        if log_level is None:
            return tuple([-1] * len(early)) + (final_allowed,)
        return tuple(_allowed_failures(ratios[n], n, p0, log_level) if n in ratios else -1 for n in early) + (final_allowed,)

    def error(allowed: tuple[int, ...]) -> float:
        return float(rejection_dp(looks, allowed, p0)[0].sum())

    limit = alpha * (1.0 - _CALIBRATION_MARGIN)
    cohen_only = boundaries(None)
    cohen_error = error(cohen_only)
    if cohen_error > limit or not ratios:
        return cohen_only, 0.0, cohen_error
    # bisection on log λ between a level at which no early look rejects and λ = 1
    low, high = -max(float(r[0]) for r in ratios.values()) - 1.0, 0.0
    low_allowed, low_error = cohen_only, cohen_error
    high_allowed = boundaries(high)
    high_error = error(high_allowed)
    if high_error <= limit:
        return high_allowed, 1.0, high_error
    while high - low > 1e-9:
        middle = 0.5 * (low + high)
        allowed = boundaries(middle)
        if allowed == low_allowed:
            low = middle
        elif allowed == high_allowed:
            high = middle
        else:
            middle_error = error(allowed)
            if middle_error <= limit:
                low, low_allowed, low_error = middle, allowed, middle_error
            else:
                high, high_allowed = middle, allowed
    if low_allowed == cohen_only:
        return cohen_only, 0.0, cohen_error
    return low_allowed, math.exp(low), low_error


def _unanimous_first(p0: float, level: float, prior: tuple[float, float], budget: int) -> int:
    """The fewest samples at which unanimous votes reject at mixture level ``level`` (budget if none)."""
    if level <= 0.0:
        return budget
    threshold = math.log(1.0 / level)
    low, high = 0, 1
    while high < budget and _mixture_log_ratio(high, np.zeros(1, dtype=int), p0, prior)[0] < threshold:
        low, high = high, min(2 * high, budget)
    if _mixture_log_ratio(high, np.zeros(1, dtype=int), p0, prior)[0] < threshold:
        return budget
    while high - low > 1:
        middle = (low + high) // 2
        if _mixture_log_ratio(middle, np.zeros(1, dtype=int), p0, prior)[0] >= threshold:
            high = middle
        else:
            low = middle
    return high


@lru_cache(maxsize=512)
def calibrated_test(noise_sd: float, alpha: float, budget: int, radius: float, growth: float = DEFAULT_GROWTH,
                    futility_growth: Optional[float] = DEFAULT_FUTILITY_GROWTH,
                    prior: tuple[float, float] = DEFAULT_PRIOR, first: Optional[int] = None) -> Optional[SequentialTest]:
    """The calibrated test for target ``radius`` with cap ``budget`` (None if N cannot certify it).

    Args:
        noise_sd: σ > 0. alpha: α in (0, 1). budget: N ≥ 1. radius: r ≥ 0.
        growth: spacing of the looks that may reject early. futility_growth: spacing of the
            looks that only stop for futility, from the first count at which futility is
            possible (None: none). prior: the mixture's Beta prior.
        first: the first look that may reject (None: where unanimous votes first reject at
            the calibrated level).

    Returns:
        A :class:`SequentialTest` whose exact type-I error is ≤ α, deterministic in its arguments.
    """
    final = final_threshold(budget, noise_sd, alpha, radius)
    if final is None:
        return None
    p0 = _target_p(radius, noise_sd)
    final_allowed = budget - final

    def calibrate(start: int):
        rejecting = frozenset(look_points(start, budget, growth)[:-1])
        points = set(rejecting) | {budget}
        if futility_growth is not None:
            points |= set(look_points(final_allowed + 1, budget, futility_growth))
        looks = tuple(sorted(points))
        return (looks, *_calibrate(looks, rejecting, p0, alpha, final_allowed, prior))

    if first is not None:
        looks, allowed, level, error = calibrate(first)
    else:
        # the first look that may reject: where unanimous votes reject at the calibrated λ.
        # Starting from where they would at λ = α, move it later until they do (each move
        # leaves fewer looks, so λ can only grow and the loop ends).
        start = _unanimous_first(p0, alpha, prior, budget)
        while True:
            looks, allowed, level, error = calibrate(start)
            refined = _unanimous_first(p0, level, prior, budget)
            if refined <= start or start >= budget:
                break
            start = refined
    return SequentialTest(radius, p0, looks, allowed, level, final, error)


@dataclass(frozen=True)
class LookState:
    """Where a sequential certification stands after its looks so far.

    Attributes:
        n, successes: samples looked at and votes for ĉ among them.
        looks: looks made. rejected: indices of the tests that have rejected (targeted: {0}).
        certified: whether a radius is certified. p_lower: the lower bound on p_A it rests on
            (0.0 before any rejection). radius: the certified radius (0.0 if none).
    """

    n: int = 0
    successes: int = 0
    looks: int = 0
    rejected: frozenset = field(default_factory=frozenset)
    certified: bool = False
    p_lower: float = 0.0
    radius: float = 0.0


@dataclass(frozen=True)
class SequentialOutcome:
    """The result of a sequential certification (see :meth:`SequentialRule.replay`).

    Attributes:
        certified: True when ĉ is certified at ``radius`` (≥ 0).
        p_lower: the lower bound on p_A the certificate rests on (0.0 when not certified).
        radius: the certified radius: the tested grid radius or target r after an early
            rejection (p_A > Φ(r/σ) exactly), σ·Φ⁻¹(p_lower) after Cohen's test at N; 0.0
            when not certified.
        n: estimation samples used (the last look). successes: votes for ĉ among them.
        stop_reason: a key of :data:`STOP_REASONS`. looks: the number of looks made.
    """

    certified: bool
    p_lower: float
    radius: float
    n: int
    successes: int
    stop_reason: str
    looks: int


def check_prior(prior: Sequence[float]) -> tuple[float, float]:
    """A Beta prior: a pair (a, b) of positive finite numbers, as floats."""
    try:
        a, b = (float(v) for v in prior)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"prior must be a pair (a, b) of positive numbers, got {prior!r}") from None
    if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
        raise InvalidParameterError(f"prior must be a pair (a, b) of positive numbers, got {prior!r}")
    return a, b


def check_rule_parameters(rule) -> None:
    """Check and normalise, in place, the parameters every sequential rule (a frozen dataclass)
    shares: noise_sd, alpha, budget, futility_alpha and prior."""
    object.__setattr__(rule, "noise_sd", check_noise_sd(rule.noise_sd, allow_zero=False))
    object.__setattr__(rule, "alpha", check_alpha(rule.alpha))
    object.__setattr__(rule, "budget", check_sample_count(rule.budget, "N"))
    object.__setattr__(rule, "futility_alpha", check_alpha(rule.futility_alpha))
    object.__setattr__(rule, "prior", check_prior(rule.prior))


def infeasible_target(rule, needed: Optional[int]) -> InvalidParameterError:
    """The error for a target ``rule.radius`` that the cap cannot reach (``needed``: the
    smallest cap that can, or None when none practical can)."""
    more = "an impractical number of" if needed is None else f"at least N={needed}"
    return InvalidParameterError(
        f"radius={rule.radius:g} at noise_sd={rule.noise_sd:g}, alpha={rule.alpha:g} needs {more} "
        f"estimation queries even if every vote is for the guessed class; N={rule.budget} can certify at "
        f"most {rule.ceiling:.4f}. Raise N, lower the radius, raise noise_sd or alpha "
        "(robust_api.plan shows the trade-offs)."
    )


def _check_tolerance(tolerance, noise_sd: float) -> float:
    value = DEFAULT_TOLERANCE_FRACTION * noise_sd if tolerance is None else tolerance
    if isinstance(value, bool) or not isinstance(value, Real) or not (0 < value < math.inf):
        raise InvalidParameterError(f"tolerance must be a positive number (a radius step), got {tolerance!r}")
    return float(value)


def _check_target(radius) -> Optional[float]:
    if radius is None:
        return None
    if isinstance(radius, bool) or not isinstance(radius, Real) or not 0 <= float(radius) < math.inf:
        raise InvalidParameterError(f"radius must be a non-negative number or None, got {radius!r}")
    return float(radius)


@dataclass(frozen=True)
class RuleParameters:
    """The parameters every sequential rule starts with (σ, α, the cap N, target, tolerance,
    look spacing); each rule adds its own and checks them all in ``__post_init__``."""

    noise_sd: float
    alpha: float
    budget: int
    radius: Optional[float] = None
    tolerance: Optional[float] = None
    growth: float = DEFAULT_GROWTH


@dataclass(frozen=True)
class SequentialRule(RuleParameters):
    """When to look, when to stop, and what to certify, for one image (pure).

    Args:
        noise_sd: σ > 0 in [0, 1] pixel units.
        alpha: α in (0, 1): the certificate holds with probability ≥ 1 − α, whatever stops
            the run (the rule, a shared budget, an interruption).
        budget: N ≥ 1, the most estimation samples this image may use (the cap).
        radius: target r ≥ 0 (0: certify the label) or None. With a target the rule
            certifies r or more, or abstains; it certifies on every vote sequence on which
            Cohen's test with N samples certifies r (never loses to it), usually with far
            fewer samples. Without one it certifies the largest grid radius it can.
        tolerance: the untargeted rule's grid step (default 0.1·σ; > 0).
        growth, futility_growth: look spacing (in [1.01, 10]) of the looks that may certify and of
            those that only stop for futility. prior: the Beta prior of the early looks'
            mixture test. futility_alpha: level of the optimistic bound of the untargeted
            "settled" stop (a heuristic that never enters a certificate).
    """

    futility_growth: float = DEFAULT_FUTILITY_GROWTH
    prior: tuple[float, float] = DEFAULT_PRIOR
    futility_alpha: float = DEFAULT_FUTILITY_ALPHA

    def __post_init__(self) -> None:
        check_rule_parameters(self)
        object.__setattr__(self, "radius", _check_target(self.radius))
        object.__setattr__(self, "tolerance", _check_tolerance(self.tolerance, self.noise_sd))
        for name in ("growth", "futility_growth"):
            value = getattr(self, name)
            # at least 1% apart: bounds the number of looks (and the work of calibrating them)
            if isinstance(value, bool) or not (isinstance(value, Real) and 1.01 <= value <= 10):
                raise InvalidParameterError(f"{name} must be a number in [1.01, 10], got {value!r}")
            object.__setattr__(self, name, float(value))

    # -- the tests -------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[float, ...]:
        """The radii the rule tests: (r,) with a target; else 0, t, 2t, … up to the ceiling."""
        if self.radius is not None:
            return (self.radius,)
        return _grid(self.noise_sd, self.alpha, self.budget, self.tolerance)

    def tests(self) -> tuple[SequentialTest, ...]:
        """The calibrated tests, one per radius of :attr:`grid`, on the same looks."""
        return _tests(self.noise_sd, self.alpha, self.budget, self.radius, self.tolerance if self.radius is None else None,
                      self.growth, self.futility_growth, self.prior)

    def looks(self) -> list[int]:
        """The sample counts at which the rule looks at the votes (the last is N)."""
        return list(self._looks())

    def _looks(self) -> tuple[int, ...]:
        tests = self.tests()
        return tests[0].looks if tests else (self.budget,)

    def next_gain(self, state: LookState, rate: float) -> tuple[int, float]:
        """If the votes went on at ``rate`` (in [0, 1]): (samples after ``state.n`` until the
        rule would certify a larger radius, the radius gained), or (0, 0.0) if it would not
        within N. Only a planning heuristic (certify_batch's allocation); never a certificate."""
        tests = self.tests()
        if self.radius is not None:
            if state.certified or not tests:
                return 0, 0.0
            following, gain = tests[0], tests[0].radius if tests[0].radius > 0 else self.tolerance
        else:
            level = _chain_level(state.rejected)
            if level + 1 >= len(tests):
                return 0, 0.0
            following = tests[level + 1]
            gain = following.radius - (tests[level].radius if level >= 0 else 0.0)
            gain = gain if gain > 0 else self.tolerance
        looks = np.asarray(following.looks)
        start = bisect.bisect_right(following.looks, state.n)
        ahead = looks[start:] - state.n
        failures = (state.n - state.successes) + np.minimum(np.rint((1.0 - rate) * ahead), ahead)
        hits = np.flatnonzero(failures <= np.asarray(following.allowed[start:]))
        return (int(ahead[hits[0]]), float(gain)) if len(hits) else (0, 0.0)

    @property
    def ceiling(self) -> float:
        """The largest radius this rule can certify: Cohen's ceiling with a target, the top
        of the grid without."""
        if self.radius is not None:
            return max_certifiable_radius(self.budget, self.noise_sd, self.alpha)
        grid = self.grid
        return grid[-1] if grid else 0.0

    @property
    def target_p(self) -> Optional[float]:
        """Φ(radius/σ): p_A must exceed it for the target to hold (None without a target)."""
        return None if self.radius is None else _target_p(self.radius, self.noise_sd)

    def min_samples(self) -> Optional[int]:
        """The smallest cap N with which the target can be certified at all (unanimous
        votes; Cohen's n_min); None without a target or when no N below 10⁸ can."""
        if self.radius is None:
            return None
        p0 = self.target_p
        if not p0 < 1.0:
            return None
        n = max(1, math.ceil(math.log(self.alpha) / math.log(p0)) - 1)  # p₀ ≥ ½
        limit = 10**8
        while n <= limit and final_threshold(n, self.noise_sd, self.alpha, self.radius) is None:
            n += 1
        return n if n <= limit else None

    def check_feasible(self) -> None:
        """Raise :class:`InvalidParameterError` when the target cannot be certified within the budget."""
        if self.radius is None:
            self.grid  # refuses a tolerance that would need too many tests
            return
        if final_threshold(self.budget, self.noise_sd, self.alpha, self.radius) is not None:
            return
        raise infeasible_target(self, self.min_samples())

    def params(self) -> dict:
        """What a log's header records to replay this rule."""
        return {"design": DESIGN, "radius": self.radius, "tolerance": self.tolerance, "growth": self.growth,
                "futility_growth": self.futility_growth, "prior": list(self.prior),
                "futility_alpha": self.futility_alpha}

    # -- the rule --------------------------------------------------------------------------
    def start(self) -> LookState:
        """The state before the first look."""
        return LookState()

    def step(self, state: LookState, successes: int, trials: int) -> tuple[LookState, Optional[str]]:
        """One look after ``trials`` samples (one of :meth:`looks`) with ``successes`` votes for ĉ.

        Returns:
            (the new state, a stop reason or None to go on).
        """
        successes = check_vote_count(successes, "successes")
        looks = self._looks()
        position = bisect.bisect_left(looks, trials)
        if position == len(looks) or looks[position] != trials or successes > trials:
            raise InvalidParameterError(f"{successes}/{trials}: the rule only looks at {list(looks)} samples")
        tests = self.tests()
        failures = trials - successes
        rejected = set(state.rejected)
        for index, test in enumerate(tests):
            if index not in rejected and failures <= test.allowed[position]:
                rejected.add(index)
        last = trials == self.budget
        state = LookState(trials, successes, state.looks + 1, frozenset(rejected))
        if self.radius is not None:
            return self._step_targeted(state, tests[0] if tests else None, position, last)
        return self._step_untargeted(state, tests, position, last)

    def _step_targeted(self, state: LookState, test: Optional[SequentialTest], position: int,
                       last: bool) -> tuple[LookState, Optional[str]]:
        if 0 in state.rejected:
            if last:  # Cohen's own certificate at N (its radius ≥ r: S_N ≥ c)
                cohen = certify_from_counts(True, {True: state.successes}, state.n, self.noise_sd, self.alpha)
                return _with(state, cohen.p_lower, cohen.radius), "certified"
            return _with(state, test.p0, test.radius), "certified"  # p_A > p₀: radius r exactly
        if last:
            return state, "budget"
        if test is None or state.n - state.successes > test.later_max(position):
            return state, "futile"
        return state, None

    def _step_untargeted(self, state: LookState, tests: tuple[SequentialTest, ...], position: int,
                         last: bool) -> tuple[LookState, Optional[str]]:
        level = _chain_level(state.rejected)
        if level >= 0:
            state = _with(state, tests[level].p0, tests[level].radius)
        if last:
            return state, "budget"
        if level + 1 >= len(tests):
            return state, "settled"
        following = tests[level + 1]
        failures = state.n - state.successes
        if failures > following.later_max(position):
            return state, "settled"
        p_high = _upper(state.successes, state.n, self.futility_alpha)
        remaining = self.budget - state.n
        best_failures = failures + math.floor((1.0 - p_high) * remaining + 1e-9)
        if best_failures > following.allowed[-1]:
            return state, "settled"
        return state, None

    def replay(self, votes: Sequence[bool]) -> SequentialOutcome:
        """Run the rule over votes in sample order (True = a vote for ĉ).

        Args:
            votes: the estimation samples in sample-index order; failed queries are False.
                Samples beyond the stopping look are ignored; if they run out first the
                outcome stops with reason "ended" at the last complete look.

        Returns:
            A :class:`SequentialOutcome`. Guarantee: with probability ≥ 1 − α over the
            estimation noise, a certified ĉ is the smoothed classifier's prediction within L2
            ``radius`` of the image (p_A ≥ p_lower), whatever stopped the run.
        """
        state = self.start()

        def look(successes: int, n: int) -> Optional[str]:
            nonlocal state
            state, reason = self.step(state, successes, n)
            return reason

        reason = run_looks(self.looks(), votes, look)
        return SequentialOutcome(
            certified=state.certified, p_lower=state.p_lower, radius=state.radius,
            n=state.n, successes=state.successes, stop_reason=reason, looks=state.looks,
        )


def run_looks(looks: Sequence[int], votes: Sequence[bool], look: Callable[[int, int], Optional[str]]) -> str:
    """Call ``look(successes, n)`` at each look n (increasing) over votes in sample order until it
    returns a stop reason; return it, or "ended" when the votes run out before the next look.
    The replay loop of every sequential rule (the last look, N, always stops)."""
    prefix = np.concatenate(([0], np.cumsum(np.asarray(votes, dtype=bool), dtype=np.int64)))
    for n in looks:
        if n >= len(prefix):
            return "ended"
        reason = look(int(prefix[n]), n)
        if reason is not None:
            return reason
    return "budget"  # pragma: no cover - the last look is the budget, which always stops


def _chain_level(rejected: frozenset) -> int:
    """The largest g such that the tests 0 … g have all rejected (−1: not even test 0)."""
    level = -1
    while level + 1 in rejected:
        level += 1
    return level


def _with(state: LookState, p_lower: float, radius: float) -> LookState:
    """``state`` with a certificate: p_A ≥ ``p_lower``, radius ``radius``."""
    return LookState(state.n, state.successes, state.looks, state.rejected, True, p_lower, radius)


@lru_cache(maxsize=256)
def _grid(noise_sd: float, alpha: float, budget: int, tolerance: float) -> tuple[float, ...]:
    top = max_certifiable_radius(budget, noise_sd, alpha)
    steps = int(math.floor(top / tolerance + 1e-9))
    if steps + 1 > MAX_GRID_RADII:
        raise InvalidParameterError(
            f"tolerance={tolerance:g} would test {steps + 1} radii up to {top:.4f} (N={budget}); "
            f"use tolerance >= {top / (MAX_GRID_RADII - 1):.4g} or give a target radius"
        )
    radii = (round(g * tolerance, 12) for g in range(steps + 1))
    return tuple(r for r in radii if final_threshold(budget, noise_sd, alpha, r) is not None)


@lru_cache(maxsize=1 << 16)
def _upper(successes: int, trials: int, alpha: float) -> float:
    return clopper_pearson_upper(successes, trials, alpha)


@lru_cache(maxsize=256)
def _tests(noise_sd: float, alpha: float, budget: int, radius: Optional[float], tolerance: Optional[float],
           growth: float, futility_growth: float, prior: tuple[float, float]) -> tuple[SequentialTest, ...]:
    if radius is not None:
        test = calibrated_test(noise_sd, alpha, budget, radius, growth, futility_growth, prior)
        return () if test is None else (test,)
    grid = SequentialRule(noise_sd, alpha, budget, tolerance=tolerance).grid
    if not grid:
        return ()
    # one schedule for all: from where unanimous votes first certify the label at level α
    first = _unanimous_first(0.5, alpha, prior, budget)
    return tuple(calibrated_test(noise_sd, alpha, budget, r, growth, None, prior, first) for r in grid)
