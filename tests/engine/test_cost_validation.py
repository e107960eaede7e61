"""Per-query costs are checked where they are given, before any query: NaN, infinite,
negative, non-numeric and absurd (> $1 per query, unless allow_high_cost=True) prices get an
InvalidParameterError that states the valid range.

Before the fix, ``cost_per_query_usd=float("nan")`` on a callable provider (or a NaN price on
a user's own Provider) was accepted, every comparison with ``max_cost_usd`` was then False so
the dollar cap never tripped, and NaN flowed into the log and every report; 1500.0 (a price
per 1,000 queries typed as a price per query) was accepted everywhere.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from doubles import FakeProvider
from robust_api import RobustAPI, plan
from robust_api.dispatch import Dispatcher
from robust_api.errors import InvalidParameterError
from robust_api.pricing import MAX_COST_PER_QUERY_USD, check_cost_per_query, price_per_query, price_table
from robust_api.providers.callable import CallableProvider

BAD = [float("nan"), math.inf, -math.inf, -0.001, 10**400, np.float64("nan"), "0.001", True, None, [0.001]]
ABSURD = [1.5, 75.0, 1.0000001]  # above $1, within the $100 that allow_high_cost admits


def constant(batch):
    return ["cat"] * len(batch)


def PricedProvider(price, allow_high_cost=False):
    """A user's own provider class with a price attribute (the shared FakeProvider)."""
    return FakeProvider(lambda image: "cat", identity="test:priced", price=price, allow_high_cost=allow_high_cost)


@pytest.mark.parametrize("value", BAD + ABSURD, ids=repr)
def test_bad_costs_are_refused_with_the_valid_range(value):
    with pytest.raises(InvalidParameterError, match=r"\[0, 1\]|\$1 sanity bound"):
        check_cost_per_query(value)
    with pytest.raises(InvalidParameterError):
        CallableProvider(constant, cost_per_query_usd=value)
    with pytest.raises(InvalidParameterError):
        RobustAPI(constant, log=False, cost_per_query_usd=value)
    with pytest.raises(InvalidParameterError):
        price_table({"google": value})
    with pytest.raises(InvalidParameterError):
        plan(noise_sd=0.25, radius=0.25, prices={"google": value})


@pytest.mark.parametrize("value", ABSURD)
def test_a_high_cost_needs_allow_high_cost(value):
    with pytest.raises(InvalidParameterError, match="allow_high_cost=True") as info:
        CallableProvider(constant, cost_per_query_usd=value)
    assert f"{value / 1000:g}" in str(info.value)  # the likely intended price per query
    assert CallableProvider(constant, cost_per_query_usd=value, allow_high_cost=True).cost_per_query_usd == value
    assert price_per_query("google", {"google": value}, allow_high_cost=True) == value
    assert plan(noise_sd=0.25, radius=0.25, provider="google", prices={"google": value},
                allow_high_cost=True).method("cohen").cost_per_image_usd["google"] > 0
    with pytest.raises(InvalidParameterError):  # the bound is lifted, finiteness is not
        CallableProvider(constant, cost_per_query_usd=math.nan, allow_high_cost=True)


@pytest.mark.parametrize("value", [100.01, 1500.0, 1e300])
def test_allow_high_cost_stops_at_what_a_log_may_hold(value):
    # a price the analysis would read back as invalid (records.MAX_LOGGED_COST_USD) is refused up front
    with pytest.raises(InvalidParameterError, match=r"above \$100"):
        CallableProvider(constant, cost_per_query_usd=value, allow_high_cost=True)
    with pytest.raises(InvalidParameterError, match=r"above \$100"):
        price_table({"google": value}, allow_high_cost=True)


def test_valid_costs_are_kept():
    for value in (0, 0.0, 0.0015, MAX_COST_PER_QUERY_USD, np.float32(0.001)):
        assert check_cost_per_query(value) == pytest.approx(float(value))
    with pytest.raises(InvalidParameterError):
        check_cost_per_query(0.001, allow_high_cost="yes")


@pytest.mark.parametrize("price", [math.nan, -1.0, math.inf, 2.0])
def test_a_providers_own_bad_price_is_refused_before_any_query(price):
    provider = PricedProvider(price)
    with pytest.raises(InvalidParameterError, match="test:priced"):
        RobustAPI(provider, log=False)
    with pytest.raises(InvalidParameterError):
        Dispatcher(provider)
    assert provider.images_sent == 0


def test_a_providers_own_high_price_with_allow_high_cost_is_used():
    provider = PricedProvider(2.0, allow_high_cost=True)
    api = RobustAPI(provider, log=False, max_cost_usd=5.0)
    api.predict(np.zeros((4, 4), np.float32), N=2, noise_sd=0.25)
    assert api.spent.cost_usd == pytest.approx(4.0) and provider.images_sent == 2


@pytest.mark.parametrize("value", [math.nan, -0.5, 3.0])
def test_cloud_adapters_refuse_bad_costs_at_construction(value):
    pytest.importorskip("requests")
    from robust_api.providers.http import HTTPProvider

    with pytest.raises(InvalidParameterError, match="cost_per_query_usd"):
        HTTPProvider("http://127.0.0.1:9/p", cost_per_query_usd=value)
