"""Budget planning: how many queries a radius needs, what a budget can certify, what it costs (pure).

``plan(noise_sd=0.25, radius=0.5, alpha=0.001)`` answers, per certification method, the
fewest queries that can certify the radius, the largest radius a budget can ever certify,
and the dollars per image for each provider's list price.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Real
from typing import Optional

from .errors import InvalidParameterError
from .offline import DEFAULT_N0, METHODS, SELECTIONS
from .pricing import price_per_query, price_table
from .statistics import certify_from_counts, certify_top2_from_counts
from .validation import check_alpha, check_noise_sd, check_radius, check_sample_count

__all__ = ["plan", "BudgetPlan", "MethodPlan"]

_SEARCH_LIMIT = 10**7


@dataclass(frozen=True)
class MethodPlan:
    """What one certification method needs and can do.

    Attributes:
        method, selection: the method and how its class is chosen.
        selection_queries: queries spent choosing the class (N0, or 1 for a clean query).
        estimation_queries: fewest estimation queries that certify ``radius`` when a fraction
            ``vote_rate`` of the votes goes to the class (None without a radius, or when
            more than 10⁷ would be needed).
        total_queries: selection + estimation (None like estimation_queries).
        ceiling: the largest radius N estimation queries can ever certify (all votes for
            the class); None when no N was given.
        cost_per_image_usd: provider → dollars per image for total_queries (or for
            selection + N when no radius was given).
    """

    method: str
    selection: str
    selection_queries: int
    estimation_queries: Optional[int]
    total_queries: Optional[int]
    ceiling: Optional[float]
    cost_per_image_usd: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BudgetPlan:
    """The answer of :func:`plan`: the question and one :class:`MethodPlan` per method."""

    noise_sd: float
    alpha: float
    radius: Optional[float]
    N: Optional[int]
    vote_rate: float
    methods: tuple[MethodPlan, ...]

    def method(self, name: str) -> MethodPlan:
        """The plan of one method ("cohen", "top2", "sequential")."""
        for item in self.methods:
            if item.method == name:
                return item
        raise KeyError(name)


def _radius_fn(method: str, noise_sd: float, alpha: float):
    """(successes, n) → the radius a fixed-N test certifies with ĉ's votes = successes. The
    sequential method's cap plans like Cohen's: with cap N it certifies whenever Cohen's test
    with N samples would (usually stopping earlier)."""
    if method == "top2":
        return lambda k, n: certify_top2_from_counts("A", None, {"A": k}, n, noise_sd, alpha).radius
    return lambda k, n: certify_from_counts("A", {"A": k}, n, noise_sd, alpha).radius


def _fewest_queries(radius_at, radius: float, vote_rate: float) -> Optional[int]:
    """Smallest n with radius_at(⌊vote_rate·n⌋, n) ≥ radius.

    Bisection finds where the radius, which grows with n up to rounding, first reaches the
    target; a downward scan then finds smaller n that reach it through the rounding of
    ⌊vote_rate·n⌋ (none are below the unanimous minimum, where the scan stops)."""
    def reaches(n: int) -> bool:
        return radius_at(math.floor(vote_rate * n + 1e-9), n) >= radius

    high = 1
    while not reaches(high):
        if high >= _SEARCH_LIMIT:
            return None
        high = min(high * 2, _SEARCH_LIMIT)
    low = high // 2
    while high - low > 1:
        middle = (low + high) // 2
        if reaches(middle):
            high = middle
        else:
            low = middle
    if vote_rate >= 1.0:
        return high
    floor = _fewest_queries(radius_at, radius, 1.0) or 1
    return next(n for n in range(floor, high + 1) if reaches(n))


def plan(
    noise_sd: float,
    radius: Optional[float] = None,
    alpha: float = 0.001,
    provider: Optional[str] = None,
    *,
    N: Optional[int] = None,
    N0: int = DEFAULT_N0,
    method: Optional[str] = None,
    selection: Optional[str] = None,
    vote_rate: float = 1.0,
    prices: Optional[Mapping[str, float]] = None,
    allow_high_cost: bool = False,
) -> BudgetPlan:
    """Plan a certification budget before spending it.

    Args:
        noise_sd: σ > 0 in [0, 1] pixel units.
        radius: the L2 radius to certify (pixel units of [0, 1] images), or None.
        alpha: α in (0, 1).
        provider: one provider name for the cost column (default: every provider with a price).
        N: an estimation budget: the plan then reports the largest radius it can certify.
        N0: noisy selection samples (methods with selection "noise").
        method: one of "cohen", "top2", "sequential" (default: all three).
        selection: "noise" or "clean" (default: noise for cohen/top2, clean for sequential).
        vote_rate: the fraction of votes for the class, in (0.5, 1]: 1.0 gives the absolute
            minimum ⌈ln α / ln Φ(r/σ)⌉ (Cohen); real images need more.
        prices: USD per query overrides (see :mod:`robust_api.pricing`): each finite, in
            [0, $1] (checked before anything is computed).
        allow_high_cost: accept override prices above $1 per query.

    Returns:
        A :class:`BudgetPlan`. The numbers are exact for the methods as implemented: with
        ⌊vote_rate·n⌋ votes for the class, no n below ``estimation_queries`` certifies
        ``radius`` (at vote rates below 1 a few larger n may fall short by rounding), and no
        method can exceed ``ceiling`` with N. For the sequential method these are the
        numbers of Cohen's test at the cap: with cap N it certifies on every vote sequence on
        which Cohen's test with N samples does, so ``estimation_queries`` is the smallest cap
        that can certify ``radius``; with a larger cap and clear votes it stops well before it.
    """
    noise_sd = check_noise_sd(noise_sd, allow_zero=False)
    alpha = check_alpha(alpha)
    radius = check_radius(radius)
    if N is not None:
        N = check_sample_count(N, "N")
    N0 = check_sample_count(N0, "N0")
    if isinstance(vote_rate, bool) or not isinstance(vote_rate, Real) or not 0.5 < vote_rate <= 1.0:
        raise InvalidParameterError(f"vote_rate must be in (0.5, 1], got {vote_rate!r}")
    if method is not None and method not in METHODS:
        raise InvalidParameterError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if selection is not None and selection not in SELECTIONS:
        raise InvalidParameterError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    if provider is not None:
        table = {provider: price_per_query(provider, prices, allow_high_cost=allow_high_cost)}
    else:
        table = {name: price for name, price in price_table(prices, allow_high_cost=allow_high_cost).items() if price > 0}
    plans = []
    for name in (method,) if method else METHODS:
        chosen = selection or ("clean" if name == "sequential" else "noise")
        selection_queries = 1 if chosen == "clean" else N0
        radius_at = _radius_fn(name, noise_sd, alpha)
        estimation = None if radius is None else _fewest_queries(radius_at, radius, float(vote_rate))
        total = None if estimation is None else selection_queries + estimation
        ceiling = None if N is None else radius_at(N, N)
        priced = total if total is not None else (selection_queries + N if N is not None else None)
        costs = {} if priced is None else {p: priced * price for p, price in table.items()}
        plans.append(MethodPlan(name, chosen, selection_queries, estimation, total, ceiling, costs))
    return BudgetPlan(noise_sd, alpha, radius, N, float(vote_rate), tuple(plans))
