"""The first sequential rule (a confidence sequence), kept to replay the logs it wrote (pure).

Logs of ``method="sequential"`` calls whose header has no ``"design"`` entry were written by
this rule; :func:`robust_api.offline.logged_rule` replays them with
:class:`ConfidenceSequenceRule`, so their certificates stay what they were. New calls use
:class:`robust_api.sequential.SequentialRule`, which never loses a certificate to Cohen's test.

The confidence sequence
-----------------------
Let X_i = 1 when the i-th estimation sample is a vote for the guessed class ĉ (a failed
query or any other label is 0), and p_A = P[f(x + δ) = ĉ]. For every candidate p the
one-sided beta-binomial mixture of likelihood ratios

    M_n(p) = ∫_p^1 Π_i q^{X_i} (1 − q)^{1 − X_i} π(q) dq / (π([p, 1]) · Π_i p^{X_i} (1 − p)^{1 − X_i}),

with π = Beta(a, b), is a non-negative supermartingale with M_0(p) = 1 whenever the X_i have
conditional mean ≤ p (each component with q ≥ p is). Ville's inequality gives
P[∃ n: M_n(p_A) ≥ 1/α] ≤ α, so L_n = inf{p : M_n(p) < 1/α} is a lower confidence bound that
holds *simultaneously for every n* (Robbins 1970; Howard, Ramdas, McAuliffe & Sekhon 2021):
the data may be looked at after every batch and the sampling stopped by any rule, and the
running maximum of L_n at the stopping time is still a (1 − α) lower bound on p_A.
Counting failed queries as 0 only lowers the conditional means, so the bound stays valid.

The default prior Beta(1, 0.1) puts most of its mass near q = 1, where cloud APIs with a good
denoiser live: with unanimous votes the sequence certifies a radius r after at most a few
percent more samples than the fixed-n minimum ⌈ln α / ln Φ(r/σ)⌉ (42 vs 40 and 311 vs 301 at
σ = 0.25, α = 0.001, r = 0.25 / 0.5), at the price of a slightly looser bound than a fixed-n
Clopper–Pearson bound when votes are split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from numbers import Real
from typing import Optional, Sequence

from .errors import InvalidParameterError
from .sequential import (
    RuleParameters,
    SequentialOutcome,
    check_prior,
    check_rule_parameters,
    infeasible_target,
    look_points,
    run_looks,
)
from .statistics import check_vote_count, radius_from_p_lower
from .validation import check_alpha, check_radius

__all__ = [
    "DEFAULT_PRIOR",
    "DEFAULT_GROWTH",
    "DEFAULT_FUTILITY_ALPHA",
    "DEFAULT_TOLERANCE_FRACTION",
    "cs_lower_bound",
    "cs_upper_bound",
    "first_certifying_n",
    "ConfidenceSequenceRule",
]

#: Beta(a, b) mixing prior of the confidence sequence.
DEFAULT_PRIOR = (1.0, 0.1)
#: Each look is at least this factor later than the previous one (at most ~10% overshoot).
DEFAULT_GROWTH = 1.1
#: Level of the optimistic upper bound used only to decide to stop early (never for the certificate).
DEFAULT_FUTILITY_ALPHA = 0.01
#: Default tolerance of the untargeted rule, as a fraction of σ.
DEFAULT_TOLERANCE_FRACTION = 0.1

_P_FLOOR = 1e-12


def _log_beta_sf(p: float, a: float, b: float) -> float:
    """log P[Beta(a, b) > p], through the regularized incomplete beta function's complement
    (``scipy.special.betaincc``: what ``scipy.stats.beta.logsf`` evaluates, to ~1e-14, at
    1/40 of its per-call cost; offline replays evaluate it thousands of times per call)."""
    from scipy.special import betaincc  # imported on first use: import robust_api stays fast

    survival = float(betaincc(a, b, p))
    return math.log(survival) if survival > 0.0 else -math.inf


def _log_mixture(p: float, successes: int, failures: int, a: float, b: float) -> float:
    """log M_n(p) for the one-sided Beta(a, b) mixture (see the module docstring)."""
    from scipy.special import betaln

    log_numerator = betaln(a + successes, b + failures) + _log_beta_sf(p, a + successes, b + failures)
    log_normalizer = betaln(a, b) + _log_beta_sf(p, a, b)
    log_likelihood = successes * math.log(p) + (failures * math.log1p(-p) if failures else 0.0)
    return float(log_numerator - log_normalizer - log_likelihood)


@lru_cache(maxsize=1 << 16)
def _lower(successes: int, trials: int, alpha: float, a: float, b: float) -> float:
    if successes == 0:
        return 0.0
    failures = trials - successes
    threshold = math.log(1.0 / alpha)
    high = successes / trials if failures else 1.0 - _P_FLOOR
    if _log_mixture(_P_FLOOR, successes, failures, a, b) < threshold:
        return 0.0
    if _log_mixture(high, successes, failures, a, b) >= threshold:
        return high
    from scipy.optimize import brentq

    # log M_n(p) decreases on (0, p̂] (checked in the tests), so the crossing is unique.
    return float(
        brentq(lambda p: _log_mixture(p, successes, failures, a, b) - threshold, _P_FLOOR, high, xtol=1e-13, rtol=1e-13)
    )


def _check_counts(successes: int, trials: int) -> tuple[int, int]:
    successes = check_vote_count(successes, "successes")
    trials = check_vote_count(trials, "trials")
    if trials < 1 or not 0 <= successes <= trials:
        raise InvalidParameterError(f"need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    return successes, trials


def cs_lower_bound(successes: int, trials: int, alpha: float, prior: Sequence[float] = DEFAULT_PRIOR) -> float:
    """Anytime-valid (1 − α) lower confidence bound on a Bernoulli mean after ``trials`` samples.

    Args:
        successes: k, votes for the guessed class among the first n samples, 0 ≤ k ≤ n.
        trials: n ≥ 1.
        alpha: α in (0, 1).
        prior: (a, b) of the Beta mixing prior.

    Returns:
        L_n in [0, 1) (float64). Guarantee: P[∃ n: p < L_n] ≤ α when the samples have
        conditional mean ≤ p given the past, so the bound may be read after every sample and
        at any data-dependent stopping time. L_n ≤ the fixed-n Clopper–Pearson bound.
    """
    successes, trials = _check_counts(successes, trials)
    a, b = check_prior(prior)
    return _lower(successes, trials, check_alpha(alpha), a, b)


def cs_upper_bound(successes: int, trials: int, alpha: float, prior: Sequence[float] = DEFAULT_PRIOR) -> float:
    """Anytime-valid (1 − α) upper confidence bound: 1 − the lower bound on the failure rate.

    Args and guarantee mirror :func:`cs_lower_bound` (P[∃ n: p > U_n] ≤ α). The SDK uses it
    only to stop early for futility, never to make a certificate.
    """
    successes, trials = _check_counts(successes, trials)
    a, b = check_prior(prior)
    return 1.0 - _lower(trials - successes, trials, check_alpha(alpha), a, b)


def first_certifying_n(p_target: float, alpha: float, prior: Sequence[float] = DEFAULT_PRIOR, limit: int = 10**8) -> Optional[int]:
    """The smallest n at which n unanimous votes give a lower bound ≥ ``p_target``.

    Args:
        p_target: in (0, 1). alpha: α in (0, 1). prior: the Beta mixing prior.
        limit: give up above this n.

    Returns:
        n ≥ 1, or None when even ``limit`` unanimous votes are not enough. The unanimous
        bound grows with n, so this is found by bisection.
    """
    alpha = check_alpha(alpha)
    a, b = check_prior(prior)
    if not 0.0 < p_target < 1.0:
        raise InvalidParameterError(f"p_target must be in (0, 1), got {p_target!r}")
    if _lower(limit, limit, alpha, a, b) < p_target:
        return None
    low, high = 0, 1
    while _lower(high, high, alpha, a, b) < p_target:
        low, high = high, high * 2
    high = min(high, limit)
    while high - low > 1:
        middle = (low + high) // 2
        if _lower(middle, middle, alpha, a, b) >= p_target:
            high = middle
        else:
            low = middle
    return high


def _radius(p_lower: float, noise_sd: float) -> float:
    return radius_from_p_lower(p_lower, noise_sd) if p_lower > 0.5 else 0.0


@dataclass(frozen=True)
class ConfidenceSequenceRule(RuleParameters):
    """When to look, when to stop, and what to certify, for one image (pure).

    Args:
        noise_sd: σ > 0 in [0, 1] pixel units.
        alpha: α in (0, 1): the certificate holds with probability ≥ 1 − α whatever the
            stopping time.
        budget: N ≥ 1, the most estimation samples this image may use.
        radius: target radius (> 0) or None. With a target the rule stops as soon as the
            target is certified ("certified") or out of reach within the budget at an
            optimistic vote rate ("futile"). Without one it stops when even an optimistic
            rate cannot raise the radius by more than ``tolerance`` by the budget ("settled").
        tolerance: radius tolerance of the untargeted rule (default 0.1·σ).
        growth: look spacing (> 1). futility_alpha: level of the optimistic upper bound.
        prior: Beta mixing prior of the confidence sequence.
    """

    futility_alpha: float = DEFAULT_FUTILITY_ALPHA
    prior: tuple[float, float] = DEFAULT_PRIOR

    def __post_init__(self) -> None:
        check_rule_parameters(self)
        object.__setattr__(self, "radius", check_radius(self.radius))
        tolerance = DEFAULT_TOLERANCE_FRACTION * self.noise_sd if self.tolerance is None else self.tolerance
        if isinstance(tolerance, bool) or not isinstance(tolerance, Real) or not (0 <= tolerance < math.inf):
            raise InvalidParameterError(f"tolerance must be a non-negative number, got {self.tolerance!r}")
        object.__setattr__(self, "tolerance", float(tolerance))
        if not (isinstance(self.growth, Real) and self.growth > 1 and math.isfinite(self.growth)):
            raise InvalidParameterError(f"growth must be a number > 1, got {self.growth!r}")

    # -- what the budget allows ------------------------------------------------------------
    def lower_bound(self, successes: int, trials: int) -> float:
        """The rule's anytime-valid lower bound after ``trials`` samples."""
        successes, trials = _check_counts(successes, trials)
        return _lower(successes, trials, self.alpha, *self.prior)

    def radius_at(self, successes: int, trials: int) -> float:
        """The radius the bound gives after ``trials`` samples with ``successes`` votes for ĉ."""
        return _radius(self.lower_bound(successes, trials), self.noise_sd)

    @property
    def ceiling(self) -> float:
        """The largest radius this budget can ever certify (all N votes for ĉ)."""
        return self.radius_at(self.budget, self.budget)

    @property
    def target_p(self) -> Optional[float]:
        """Φ(radius/σ): the lower bound needed to certify the target (None without a target)."""
        from scipy.special import ndtr

        return None if self.radius is None else float(ndtr(self.radius / self.noise_sd))

    def min_samples(self) -> Optional[int]:
        """Fewest estimation samples that can certify the target (unanimous votes); None if
        no target. May exceed the budget: see :meth:`check_feasible`."""
        if self.radius is None:
            return None
        if not self.target_p < 1.0:  # Φ(r/σ) rounds to 1: no sample size can certify r
            return None
        n = first_certifying_n(self.target_p, self.alpha, self.prior)
        # float safety: the reported radius must reach the target, not only the bound
        while n is not None and self.radius_at(n, n) < self.radius:
            n += 1
        return n

    def check_feasible(self) -> None:
        """Raise :class:`InvalidParameterError` when the target cannot be certified within the budget."""
        if self.radius is None:
            return
        needed = self.min_samples()
        if needed is None or needed > self.budget:
            raise infeasible_target(self, needed)

    def looks(self) -> list[int]:
        """The sample counts at which the rule looks: from where unanimous votes could first
        certify anything, spaced by ``growth``, ending at the budget; with a target, also exactly
        where unanimous votes first certify it. Looks before that can only stop for futility,
        which lets hopeless images stop early."""
        first = first_certifying_n(0.5 + 1e-9, self.alpha, self.prior) or self.budget
        points = look_points(min(first, self.budget), self.budget, self.growth)
        if self.radius is not None:
            needed = self.min_samples()
            if needed is not None and needed < self.budget:
                points = sorted(set(points) | {needed})
        return points

    # -- the rule --------------------------------------------------------------------------
    def _optimistic_radius_at_budget(self, successes: int, trials: int) -> float:
        p_high = 1.0 - _lower(trials - successes, trials, self.futility_alpha, *self.prior)
        remaining = self.budget - trials
        best_successes = min(self.budget, successes + math.ceil(p_high * remaining - 1e-12))
        return self.radius_at(best_successes, self.budget)

    def step(self, successes: int, trials: int, p_lower: float) -> tuple[float, Optional[str]]:
        """One look after ``trials`` samples with ``successes`` votes for ĉ.

        Args:
            successes, trials: the counts so far. p_lower: the running lower bound so far
                (0 before the first look).

        Returns:
            (the new running lower bound, a stop reason or None to go on).
        """
        p_lower = max(p_lower, self.lower_bound(successes, trials))
        radius = _radius(p_lower, self.noise_sd)
        if self.radius is not None and radius >= self.radius:
            return p_lower, "certified"
        if trials >= self.budget:
            return p_lower, "budget"
        best = self._optimistic_radius_at_budget(successes, trials)
        if self.radius is not None:
            return p_lower, ("futile" if best < self.radius else None)
        return p_lower, ("settled" if best - radius <= self.tolerance else None)

    def replay(self, votes: Sequence[bool]) -> SequentialOutcome:
        """Run the rule over votes in sample order (True = a vote for ĉ; failed queries False),
        as :meth:`robust_api.sequential.SequentialRule.replay` does. Guarantee: with probability
        ≥ 1 − α, p_A ≥ p_lower, for this stopping rule and any other."""
        p_lower, n, looks = 0.0, 0, 0

        def look(successes: int, trials: int) -> Optional[str]:
            nonlocal p_lower, n, looks
            n, looks = trials, looks + 1
            p_lower, reason = self.step(successes, trials, p_lower)
            return reason

        reason = run_looks(self.looks(), votes, look)
        return SequentialOutcome(
            certified=p_lower > 0.5,
            p_lower=p_lower,
            radius=_radius(p_lower, self.noise_sd),
            n=n,
            successes=int(sum(bool(vote) for vote in votes[:n])),
            stop_reason=reason,
            looks=looks,
        )
