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

__all__ = ["LIST_PRICE_PER_1000_USD", "PRICE_SOURCES", "price_per_query", "price_table"]

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


def price_table(prices: Optional[Mapping[str, float]] = None) -> dict[str, float]:
    """USD per query for every known provider, with ``prices`` (USD per query) overriding defaults.

    Args:
        prices: provider name → USD per single query (≥ 0), or None.

    Returns:
        provider name → USD per query.
    """
    table = {name: per_1000 / 1000.0 for name, per_1000 in LIST_PRICE_PER_1000_USD.items()}
    for name, value in (prices or {}).items():
        if isinstance(value, bool) or not isinstance(value, Real) or not (0 <= float(value) < math.inf):
            raise InvalidParameterError(f"the price of {name!r} must be a non-negative number of USD per query, got {value!r}")
        table[str(name)] = float(value)
    return table


def price_per_query(provider: str, prices: Optional[Mapping[str, float]] = None) -> float:
    """USD per query of one provider (see :func:`price_table`); unknown names raise."""
    table = price_table(prices)
    if provider not in table:
        raise InvalidParameterError(
            f"no price for provider {provider!r}; known: {', '.join(sorted(table))}. Pass prices={{{provider!r}: USD}}"
        )
    return table[provider]
