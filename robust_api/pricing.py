"""List prices of the cloud vision APIs, per image query (pure data, overridable).

Prices change and differ by region, tier and volume: these are defaults for planning and for
the cost column of the query log, not quotes. Pass your own with ``prices={"google": 0.0015}``
(USD per query) wherever a price table is taken.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real
from typing import Optional

from .errors import InvalidParameterError
from .query_logs.records import MAX_LOGGED_COST_USD

__all__ = [
    "LIST_PRICE_PER_1000_USD",
    "MAX_COST_PER_QUERY_USD",
    "MAX_HIGH_COST_PER_QUERY_USD",
    "PRICE_SOURCES",
    "check_cost_per_query",
    "price_per_query",
    "price_table",
]

#: The highest price per query (USD) accepted without ``allow_high_cost=True``. List prices
#: are $0.001–0.0015 per query; a value above $1 is most often a price per 1,000 queries
#: entered as a price per query (1,000 times the real cost in every report and cap).
MAX_COST_PER_QUERY_USD = 1.0

#: The highest price per query accepted even with ``allow_high_cost=True``: the analysis reads a
#: logged cost above it as invalid (``query_logs.records.MAX_LOGGED_COST_USD``), so no price the
#: SDK accepts can turn into an "unknown" total later.
MAX_HIGH_COST_PER_QUERY_USD = MAX_LOGGED_COST_USD

#: USD per 1,000 label-detection queries (one image each), at the first paid volume tier.
LIST_PRICE_PER_1000_USD: dict[str, float] = {
    "google": 1.50,
    "aws": 1.00,
    "azure": 1.00,
    "clarifai": 1.20,
    "local": 0.0,
    "http": 0.0,
}

#: Where each default comes from, and how sure it is.
PRICE_SOURCES: dict[str, str] = {
    "google": "cloud.google.com/vision/pricing: LABEL_DETECTION $1.50 per 1,000 units from 1,001 to 5M per month "
    "(first 1,000 free, $1.00 above 5M)",
    "aws": "unverified: Rekognition DetectLabels (Group 2) $1.00 per 1,000 images for the first 1M per month in us-east-1",
    "azure": "unverified: Computer Vision S1 tag/analyze about $1.00 per 1,000 transactions",
    "clarifai": "unreliable (third-party, 2018): pre-built models $1.20 per 1,000 operations",
    "local": "a local model costs no fee",
    "http": "a self-hosted model server: no fee by default (pass cost_per_query_usd= to record your own)",
}


def check_cost_per_query(value: object, what: str = "cost_per_query_usd", *, allow_high_cost: bool = False) -> float:
    """``value`` as a price per query in USD, or a typed error saying the valid range.

    Args:
        value: a real number (not a bool): finite, ≥ 0 and, unless ``allow_high_cost``, at
            most :data:`MAX_COST_PER_QUERY_USD` ($1).
        what: the option's name, for the message.
        allow_high_cost: accept a price above $1 (a query that really costs that much), up
            to :data:`MAX_HIGH_COST_PER_QUERY_USD` ($100).

    Returns:
        the price as a float in [0, $1] (or [0, $100] with ``allow_high_cost``).

    Raises:
        InvalidParameterError: not a number, NaN, infinite, negative, or above $1 without
            ``allow_high_cost=True``.
    """
    if not isinstance(allow_high_cost, bool):
        raise InvalidParameterError(f"allow_high_cost must be True or False, got {type(allow_high_cost).__name__}")
    valid = f"a finite number of USD per query in [0, {MAX_COST_PER_QUERY_USD:g}]"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidParameterError(f"{what} must be {valid}, got {type(value).__name__}")
    try:
        price = float(value)
    except (OverflowError, ValueError):
        price = math.inf
    if not math.isfinite(price) or price < 0:
        raise InvalidParameterError(f"{what} must be {valid}, got {value!r}")
    if price > MAX_HIGH_COST_PER_QUERY_USD:
        raise InvalidParameterError(
            f"{what}={price:g} USD per query is above ${MAX_HIGH_COST_PER_QUERY_USD:g}, the most a logged query may cost "
            f"(a log holding it could not be analysed). If {price:g} is the price per 1,000 queries, pass {price / 1000:g}"
        )
    if price > MAX_COST_PER_QUERY_USD and not allow_high_cost:
        raise InvalidParameterError(
            f"{what}={price:g} USD per query is above the ${MAX_COST_PER_QUERY_USD:g} sanity bound (list prices are "
            f"$0.001-0.0015 per query). If {price:g} is the price per 1,000 queries, pass {price / 1000:g}; if one "
            "query really costs that much, pass allow_high_cost=True"
        )
    return price


def price_table(prices: Optional[Mapping[str, float]] = None, *, allow_high_cost: bool = False) -> dict[str, float]:
    """USD per query for every known provider, with ``prices`` (USD per query) overriding defaults.

    Args:
        prices: provider name → USD per single query, each checked by
            :func:`check_cost_per_query` (finite, in [0, $1]), or None.
        allow_high_cost: accept prices above $1 per query.

    Returns:
        provider name → USD per query.

    Raises:
        InvalidParameterError: ``prices`` is not a mapping, or a price is out of range.
    """
    if prices is not None and not isinstance(prices, Mapping):
        raise InvalidParameterError(f"prices must be a mapping provider name -> USD per query, got {type(prices).__name__}")
    table = {name: per_1000 / 1000.0 for name, per_1000 in LIST_PRICE_PER_1000_USD.items()}
    for name, value in (prices or {}).items():
        table[str(name)] = check_cost_per_query(value, f"the price of {str(name)!r}", allow_high_cost=allow_high_cost)
    return table


def price_per_query(provider: str, prices: Optional[Mapping[str, float]] = None, *,
                    allow_high_cost: bool = False) -> float:
    """USD per query of one provider (see :func:`price_table`); unknown names raise."""
    table = price_table(prices, allow_high_cost=allow_high_cost)
    if provider not in table:
        raise InvalidParameterError(
            f"no price for provider {provider!r}; known: {', '.join(sorted(table))}. Pass prices={{{provider!r}: USD}}"
        )
    return table[provider]
